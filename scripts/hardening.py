#!/usr/bin/env python3
"""Soak and resource-leak checks for rcmd (issue 5). Called by scripts/soak.sh and
scripts/fd-leak-check.sh, which build the release binary first.

  hardening.py soak      many clients, mixed commands, for a bounded time; every output checked
  hardening.py fd-check  N connections with commands, then: no zombies, no children, no leaked fds

Both start their own `rcmd serve` on 127.0.0.1:0 (loopback only), drive it with the real `rcmd run`
client, are bounded in count and time, stop the server by its PID, print a report and a Markdown
fragment for docs/hardening.md, and exit non-zero if any output was wrong or anything leaked.
"""

import argparse
import datetime
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid):
    """(children, zombie children) of pid, from /proc/*/stat."""
    found, zombies = [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(") ", 1)[-1].split()
        if len(rest) > 1 and rest[1] == str(pid):
            found.append(int(entry))
            if rest[0] == "Z":
                zombies.append(int(entry))
    return found, zombies


# ------------------------------------------------------------------ server and client


class Server:
    """`rcmd serve` on 127.0.0.1:0 with a fresh secret, stopped by PID."""

    def __init__(self, rcmd, workdir, extra=()):
        self.rcmd = rcmd
        self.secret = os.path.join(workdir, "secret")
        subprocess.run(
            [rcmd, "keygen", "--secret-file", self.secret],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.log_path = os.path.join(workdir, "server.log")
        self.log_file = open(self.log_path, "w")
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [rcmd, "serve", "--listen", "127.0.0.1:0", "--secret-file", self.secret,
             "--workdir", workdir, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=env,
        )
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise SystemExit(f"server did not start: {line!r}")
        self.addr = line[len("listening on "):]
        self.pid = self.proc.pid

    def client(self, command, timeout=None):
        argv = [self.rcmd, "run", self.addr, "--secret-file", self.secret]
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        return argv + ["--", command]

    def run(self, command, stdin=b"", timeout=None, limit=60):
        """(exit code, stdout, stderr) of `rcmd run`; code None if it had to be killed."""
        try:
            done = subprocess.run(
                self.client(command, timeout), input=stdin, capture_output=True, timeout=limit
            )
            return done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as e:
            return None, e.stdout or b"", e.stderr or b""

    def settle(self, want_fds, seconds=15):
        """Waits until the server has no children and at most want_fds descriptors."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            kids, _ = children(self.pid)
            if not kids and fd_count(self.pid) <= want_fds:
                return
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


class Monitor(threading.Thread):
    """Samples the server's RSS and descriptor count every 200 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.max_fds = 0
        self.max_rss = 0
        self.running = True

    def run(self):
        while self.running:
            self.max_fds = max(self.max_fds, fd_count(self.pid))
            self.max_rss = max(self.max_rss, proc_status_kib(self.pid, "VmRSS"))
            time.sleep(0.2)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.commands = 0
        self.bytes_verified = 0
        self.errors = []
        self.kinds = {}

    def ok(self, kind, verified=0):
        with self.lock:
            self.commands += 1
            self.bytes_verified += verified
            self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def fail(self, kind, why):
        with self.lock:
            self.commands += 1
            self.errors.append(f"{kind}: {why}")
            if len(self.errors) <= 20:
                log(f"ERROR {kind}: {why}")


def sha(data):
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ commands


class Commands:
    """The mixed commands, each run and checked."""

    def __init__(self, server, workdir, tally):
        self.server = server
        self.tally = tally
        rng = random.Random(5)
        self.big = rng.randbytes(1_000_000)
        self.big_path = os.path.join(workdir, "big.bin")
        with open(self.big_path, "wb") as f:
            f.write(self.big)
        self.big_sha = sha(self.big)
        self.stdin_data = rng.randbytes(256 * 1024)

    def check(self, kind, ok, why, verified=0):
        if ok:
            self.tally.ok(kind, verified)
        else:
            self.tally.fail(kind, why)

    def echo(self, n):
        token = f"token-{n}"
        code, out, err = self.server.run(f"echo {token}")
        self.check("echo", code == 0 and out == f"{token}\n".encode(),
                   f"code {code} out {out[:80]!r} err {err[:200]!r}", len(out))

    def big_output(self, n):
        code, out, err = self.server.run(f"cat {self.big_path}")
        self.check("1 MB output", code == 0 and sha(out) == self.big_sha,
                   f"code {code}, {len(out)} bytes, err {err[:200]!r}", len(out))

    def stdin_round_trip(self, n):
        code, out, err = self.server.run("cat", stdin=self.stdin_data)
        self.check("stdin round trip", code == 0 and sha(out) == sha(self.stdin_data),
                   f"code {code}, {len(out)} bytes, err {err[:200]!r}", len(out))

    def exit_code(self, n):
        want = n % 256
        code, out, err = self.server.run(f"echo out; echo err >&2; exit {want}")
        self.check("exit code", code == want and out == b"out\n" and err == b"err\n",
                   f"code {code} (want {want}) out {out!r} err {err[:200]!r}", len(out) + len(err))

    def signal(self, n):
        code, _, err = self.server.run("kill -KILL $$")
        self.check("signal", code == 137, f"code {code} err {err[:200]!r}")

    def not_found(self, n):
        code, _, err = self.server.run("no-such-command-rcmd-soak")
        self.check("not found", code == 127 and b"not found" in err, f"code {code} err {err!r}")

    def timeout(self, n):
        code, _, err = self.server.run("sleep 30", timeout=1)
        self.check("timeout", code == 124 and b"timed out" in err, f"code {code} err {err!r}")

    def client_killed(self, n):
        """A client killed mid-command: the server must kill the command and reap it."""
        proc = subprocess.Popen(self.server.client(f"echo started; sleep 30; echo {n}"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        first = proc.stdout.readline()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        self.check("client killed", first == b"started\n", f"first line {first!r}")


# ------------------------------------------------------------------ soak


def soak(args, rcmd, workdir):
    server = Server(rcmd, workdir, ["--command-timeout", "60"])
    tally = Tally()
    commands = Commands(server, workdir, tally)
    # Weighted mix: mostly small commands, a steady share of large verified transfers.
    mix = ([commands.echo] * 6 + [commands.exit_code] * 3 + [commands.big_output] * 2
           + [commands.stdin_round_trip] * 2 + [commands.signal, commands.not_found,
                                                commands.client_killed, commands.timeout])
    server.run("true")
    time.sleep(0.3)
    fds_start = fd_count(server.pid)
    rss_start = proc_status_kib(server.pid, "VmRSS")
    monitor = Monitor(server.pid)
    monitor.start()
    started = time.monotonic()
    deadline = started + args.duration
    counter = iter(range(args.max_commands))
    counter_lock = threading.Lock()

    def worker(index):
        rng = random.Random(index)
        while time.monotonic() < deadline:
            with counter_lock:
                n = next(counter, None)
            if n is None:
                return
            rng.choice(mix)(n)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    last_report = started
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            log(f"  {last_report - started:5.0f} s: {tally.commands} commands, "
                f"{tally.bytes_verified / 1e6:.0f} MB verified, {len(tally.errors)} errors, "
                f"fds {fd_count(server.pid)}, RSS {proc_status_kib(server.pid, 'VmRSS')} KiB")
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    server.settle(fds_start)
    monitor.running = False
    fds_end = fd_count(server.pid)
    kids, zombies = children(server.pid)
    peak = proc_status_kib(server.pid, "VmHWM")
    rss_end = proc_status_kib(server.pid, "VmRSS")
    server.stop()

    leaked = fds_end > fds_start or kids or zombies
    lines = [
        f"- date: {datetime.date.today().isoformat()}; command: `bash scripts/soak.sh "
        f"--duration {args.duration} --clients {args.clients}`; machine: {os.cpu_count()} cores",
        f"- ran {elapsed:.0f} s with {args.clients} concurrent clients: **{tally.commands} commands**, "
        f"{tally.commands / elapsed:.0f}/s",
        f"- mix: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items())),
        f"- **bytes verified by SHA-256 (or exact comparison): {tally.bytes_verified:,}**",
        f"- **errors: {len(tally.errors)}**",
        f"- server RSS: {rss_start} KiB at the start, {rss_end} KiB at the end, "
        f"**peak (VmHWM) {peak} KiB**",
        f"- server fds: **{fds_start} at the start, {fds_end} at the end** "
        f"(peak {monitor.max_fds} during the run); children at the end {len(kids)}, "
        f"zombies {len(zombies)}",
    ]
    print("\n".join(lines))
    if tally.errors:
        print("first errors:\n  " + "\n  ".join(tally.errors[:10]))
    if tally.errors or leaked:
        log("FAILED: wrong output or leaked resources (server log: " + server.log_path + ")")
        return 1
    return 0


# ------------------------------------------------------------------ fd check


def fd_check(args, rcmd, workdir):
    server = Server(rcmd, workdir, ["--command-timeout", "60"])
    tally = Tally()
    commands = Commands(server, workdir, tally)
    mix = [commands.echo, commands.exit_code, commands.signal, commands.not_found,
           commands.echo, commands.exit_code, commands.echo, commands.exit_code,
           commands.echo, commands.client_killed]
    server.run("true")
    time.sleep(0.3)
    fds_before = fd_count(server.pid)
    kids_before, zombies_before = children(server.pid)
    rss_before = proc_status_kib(server.pid, "VmRSS")
    monitor = Monitor(server.pid)
    monitor.start()
    started = time.monotonic()
    deadline = started + args.max_seconds
    counter = iter(range(args.connections))
    counter_lock = threading.Lock()

    def worker():
        while time.monotonic() < deadline:
            with counter_lock:
                n = next(counter, None)
            if n is None:
                return
            mix[n % len(mix)](n)

    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    last_report = started
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if time.monotonic() - last_report >= 10:
            last_report = time.monotonic()
            log(f"  {tally.commands} connections, fds {fd_count(server.pid)}")
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    server.settle(fds_before)
    monitor.running = False
    fds_after = fd_count(server.pid)
    kids_after, zombies_after = children(server.pid)
    rss_after = proc_status_kib(server.pid, "VmRSS")
    server.stop()

    complete = tally.commands == args.connections
    lines = [
        f"- date: {datetime.date.today().isoformat()}; command: `bash scripts/fd-leak-check.sh "
        f"--connections {args.connections} --clients {args.clients}`",
        f"- **{tally.commands} connections** (one `rcmd run` each) in {elapsed:.0f} s with "
        f"{args.clients} at a time; mix: "
        + ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items())),
        f"- errors: {len(tally.errors)}",
        f"- server fds: **{fds_before} before, {fds_after} after** (peak {monitor.max_fds})",
        f"- server children: {len(kids_before)} before, **{len(kids_after)} after**; zombies: "
        f"{len(zombies_before)} before, **{len(zombies_after)} after**",
        f"- server RSS: {rss_before} KiB before, {rss_after} KiB after "
        f"(peak sampled {monitor.max_rss} KiB)",
    ]
    print("\n".join(lines))
    if tally.errors:
        print("first errors:\n  " + "\n  ".join(tally.errors[:10]))
    if tally.errors or fds_after > fds_before or kids_after or zombies_after or not complete:
        log("FAILED (server log: " + server.log_path + ")")
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rcmd", default=os.path.join(ROOT, "target", "release", "rcmd"))
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("soak", help="mixed commands from many clients for a bounded time")
    p.add_argument("--duration", type=int, default=120, help="seconds (at most 3600)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (at most 256)")
    p.add_argument("--max-commands", type=int, default=1_000_000)
    p = sub.add_parser("fd-check", help="N connections with commands, then count leaks")
    p.add_argument("--connections", type=int, default=10_000, help="at most 100000")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (at most 256)")
    p.add_argument("--max-seconds", type=int, default=1200, help="stop early after this long")
    args = parser.parse_args()
    if not os.access(args.rcmd, os.X_OK):
        raise SystemExit(f"{args.rcmd} not found: run `cargo build --release` first")
    if args.mode == "soak":
        args.duration = max(1, min(args.duration, 3600))
        args.clients = max(1, min(args.clients, 256))
    else:
        args.connections = max(1, min(args.connections, 100_000))
        args.clients = max(1, min(args.clients, 256))
    with tempfile.TemporaryDirectory(prefix="rcmd-hardening-") as workdir:
        code = (soak if args.mode == "soak" else fd_check)(args, args.rcmd, workdir)
    sys.exit(code)


if __name__ == "__main__":
    main()
