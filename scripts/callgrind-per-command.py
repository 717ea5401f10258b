#!/usr/bin/env python3
"""User-space instructions per command of rcmd's server and of a bare TCP spawner, by callgrind.

    python3 scripts/callgrind-per-command.py [--few 100] [--many 600]

An experiment behind docs/benchmarks.md ("Latency"), not part of the benchmark. Timings on this
machine drift by more than the differences they should show; instruction counts do not. Each
server (`rcmd serve`, and `loadgen bare-server`: one byte in, `/bin/sh -c true`, one byte out)
runs under `valgrind --tool=callgrind` twice, once for --few and once for --many round trips
of `true` on one connection (plus loadgen's 50 warm-up commands each time); the difference of
the two totals divided by the difference in commands is the cost of one command, start-up and
shutdown cancelled out. Only the server process is counted (not `sh`), and only user space
(callgrind cannot see the kernel). The functions that make up rcmd's share are printed from
the larger run.

Loopback only (127.0.0.1:0), bounded by the counts; both servers are stopped at the end.
Needs valgrind (`apt-get install valgrind`) and `cargo build --release --examples`.
"""

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALGRIND = ["valgrind", "--tool=callgrind", "--trace-children=no"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "scripts/bench.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def annotate(path, inclusive=False):
    argv = ["callgrind_annotate"] + (["--inclusive=yes"] if inclusive else []) + [path]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def total_instructions(path):
    match = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", annotate(path))
    return int(match.group(1).replace(",", ""))


def measure(bench, name, commands, outdir):
    """Runs one server under callgrind for `commands` round trips; its instruction total."""
    out = os.path.join(outdir, f"{name}-{commands}.callgrind")
    log = open(os.path.join(outdir, f"{name}-{commands}.log"), "w")
    if name == "rcmd":
        argv = [bench.rcmd, "serve", "--listen", "127.0.0.1:0", "--secret-file", bench.secret]
    else:
        argv = [bench.loadgen, "bare-server"]
    server = subprocess.Popen(VALGRIND + [f"--callgrind-out-file={out}"] + argv,
                              stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    try:
        addr = server.stdout.readline().decode().split()[-1]  # "listening on A" or "A"
        if name == "rcmd":
            bench.lg("rtt", "--addr", addr, "--secret-file", bench.secret, "--n", commands)
        else:
            bench.lg("bare-rtt", "--addr", addr, "--n", commands)
    finally:
        # Callgrind writes its profile when the program ends, by SIGTERM too.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    return out, total_instructions(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--few", type=int, default=100)
    ap.add_argument("--many", type=int, default=600)
    args = ap.parse_args()
    if args.many <= args.few:
        ap.error("--many must be larger than --few")

    b = load_bench()
    bench = b.bench_for_experiments()
    outdir = tempfile.mkdtemp(prefix="rcmd-callgrind-")
    per_command = {}
    for name in ("rcmd", "bare"):
        _, few = measure(bench, name, args.few, outdir)
        many_path, many = measure(bench, name, args.many, outdir)
        per_command[name] = (many - few) / (args.many - args.few)
        print(f"{name}: {per_command[name]:,.0f} user-space instructions per command")
    print(f"rcmd's server executes {per_command['rcmd'] - per_command['bare']:,.0f} more per "
          f"command than the bare one. Largest inclusive costs in rcmd's --many run "
          f"(profiles in {outdir}):")
    lines = annotate(os.path.join(outdir, f"rcmd-{args.many}.callgrind"),
                     inclusive=True).splitlines()
    shown = 0
    for line in lines:
        if re.match(r"\s*[\d,]+ \(\s*[\d.]+%\)\s+\S", line) and "rcmd::" in line or \
                "env_logger" in line or "sha2::" in line or "serde_json" in line:
            print("  " + line.strip()[:150])
            shown += 1
            if shown == 25:
                break


if __name__ == "__main__":
    main()
