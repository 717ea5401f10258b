#!/usr/bin/env python3
"""How much of the remote-latency gap is waking halted vCPUs, and how much is server CPU.

    python3 scripts/latency-wakeups.py [--rounds 30] [--n 200]

An experiment behind docs/benchmarks.md ("Latency"), not part of the benchmark itself. It
times, in interleaved rounds, the same three loops as `bench.sh`'s latency section (rcmd's
`Session::run("true")` on a live connection, a local `/bin/sh -c true`, and the bare TCP remote
spawn of `loadgen bare-server`), each round twice: once as the machine is, and once with one
busy loop per CPU at `SCHED_IDLE` priority. Any real task preempts such a loop at once, but
while it runs the vCPU never halts, so a wake-up no longer has to bring a halted vCPU back
(on a VM without a cpuidle driver, halting is a VM exit and waking costs the host a
reschedule). It also reports the CPU time each server spent per command, from /proc.

Loopback only (servers on 127.0.0.1:0), bounded by --rounds and --n; every process it starts
is stopped at the end. Build first: `cargo build --release --examples`.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    """bench.py's helpers (servers, loadgen, /proc CPU times), so both measure alike."""
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "scripts/bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def start_spinners():
    """One busy loop per CPU, pinned there, at the lowest scheduling class."""
    return [subprocess.Popen(["taskset", "-c", str(cpu), "chrt", "--idle", "0",
                              "sh", "-c", "while :; do :; done"])
            for cpu in range(os.cpu_count() or 1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="rounds per mode (default 30)")
    ap.add_argument("--n", type=int, default=200, help="commands per loop per round")
    args = ap.parse_args()

    b = load_bench()
    bench = b.bench_for_experiments()
    server = bench.server()
    bare = b.start([bench.loadgen, "bare-server"], stdout=subprocess.PIPE,
                   stdin=subprocess.DEVNULL)
    bare_addr = bare.stdout.readline().decode().strip()

    modes = ("as is", "spinners")
    samples = {mode: {"local": [], "bare": [], "rcmd": []} for mode in modes}
    server_cpu = {"rcmd": 0.0, "bare": 0.0}

    def timed(mode, name, pid, argv):
        before = b.cpu_secs(pid) if pid else 0.0
        samples[mode][name] += bench.lg(*argv)["samples_us"]
        if pid:
            server_cpu[name] += b.cpu_secs(pid) - before

    try:
        for r in range(args.rounds):
            # Alternate which mode goes first, so drift does not favour either.
            for mode in modes if r % 2 == 0 else reversed(modes):
                spinners = start_spinners() if mode == "spinners" else []
                try:
                    timed(mode, "rcmd", server.pid,
                          ["rtt", *bench.target_args(server), "--n", args.n])
                    timed(mode, "local", None, ["spawn", "--n", args.n])
                    timed(mode, "bare", bare.pid, ["bare-rtt", "--addr", bare_addr, "--n", args.n])
                finally:
                    for spinner in spinners:
                        spinner.kill()
                        spinner.wait()
    finally:
        b.stop(bare)
        b.stop(server)

    print(f"{args.rounds} interleaved rounds of {args.n} per loop and mode; medians:")
    for mode in modes:
        m = {k: statistics.median(v) for k, v in samples[mode].items()}
        print(f"  {mode:9} local {m['local']:5.0f} us | bare {m['bare']:5.0f} us "
              f"({m['bare'] / m['local']:.2f}x local) | rcmd {m['rcmd']:5.0f} us "
              f"({m['rcmd'] / m['local']:.2f}x local, {m['rcmd'] / m['bare']:.2f}x bare)")
    # loadgen warms up with 50 commands before each timed loop; they cost CPU too.
    commands = 2 * args.rounds * (args.n + 50)
    print("  server CPU per command (user + system): " + ", ".join(
        f"{name} {secs / commands * 1e6:.0f} us" for name, secs in server_cpu.items()))


if __name__ == "__main__":
    main()
