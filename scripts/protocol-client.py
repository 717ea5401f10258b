#!/usr/bin/env python3
"""An independent client for the rcmd wire protocol, version 2, written from
docs/protocol.md alone (standard library only).

    protocol-client.py run --connect HOST:PORT --secret-file F [--timeout SECS] -- COMMAND...
    protocol-client.py self-test --rcmd PATH/TO/rcmd

`run` behaves like `rcmd run` (§11): the command's stdout/stderr are streamed to ours, our
stdin is forwarded when it is not a terminal (flow-controlled, §7.3), Ctrl-C sends INT (twice)
then KILL (§7.5), and we exit with the command's status (128+N if signaled, 124 if timed out,
255 if rcmd itself failed).

`self-test` starts `rcmd serve` on 127.0.0.1 port 0 and checks the server against this client.

Why it exists: docs/protocol.md promises that a compatible client can be written in another
language from it alone. This one was, without reading the Rust sources, and `cargo test` runs
its self-test (tests/conformance.rs), so the specification and the server cannot drift apart
unnoticed. Python has no BLAKE3 in its standard library, hence the small one below: slow, but
frames are small (output comes in pieces of at most 64 KiB, about three times that once
transcoded; a command is at most 1 MiB).
"""

import argparse
import hashlib
import hmac
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

# --------------------------------------------------------------------------------------------
# BLAKE3 (hash mode only, 32-byte output), compact pure Python.
# --------------------------------------------------------------------------------------------

B3_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
         0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
B3_PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
M32 = 0xFFFFFFFF


def _b3_compress(cv, block, counter, block_len, flags):
    """The BLAKE3 compression function; returns the first 8 output words (a chaining value)."""
    m = list(struct.unpack("<16I", block))
    v = cv + B3_IV[:4] + [counter & M32, (counter >> 32) & M32, block_len, flags]
    for rnd in range(7):
        for a, b, c, d, x, y in ((0, 4, 8, 12, 0, 1), (1, 5, 9, 13, 2, 3),
                                 (2, 6, 10, 14, 4, 5), (3, 7, 11, 15, 6, 7),
                                 (0, 5, 10, 15, 8, 9), (1, 6, 11, 12, 10, 11),
                                 (2, 7, 8, 13, 12, 13), (3, 4, 9, 14, 14, 15)):
            va, vb, vc, vd = v[a], v[b], v[c], v[d]
            va = (va + vb + m[x]) & M32
            vd ^= va; vd = ((vd >> 16) | (vd << 16)) & M32
            vc = (vc + vd) & M32
            vb ^= vc; vb = ((vb >> 12) | (vb << 20)) & M32
            va = (va + vb + m[y]) & M32
            vd ^= va; vd = ((vd >> 8) | (vd << 24)) & M32
            vc = (vc + vd) & M32
            vb ^= vc; vb = ((vb >> 7) | (vb << 25)) & M32
            v[a], v[b], v[c], v[d] = va, vb, vc, vd
        if rnd < 6:
            m = [m[i] for i in B3_PERM]
    return [v[i] ^ v[i + 8] for i in range(8)]


def _b3_chunk(data, counter, root):
    """Chaining value of one chunk (<= 1024 bytes); with root=True, the root output words."""
    cv = B3_IV[:]
    nblocks = max(1, (len(data) + 63) // 64)
    for i in range(nblocks):
        block = data[64 * i: 64 * i + 64]
        flags = (CHUNK_START if i == 0 else 0) | (CHUNK_END if i == nblocks - 1 else 0)
        if root and i == nblocks - 1:
            flags |= ROOT
        cv = _b3_compress(cv, block.ljust(64, b"\0"), counter, len(block), flags)
    return cv


def _b3_subtree(data, first_chunk, root):
    nchunks = max(1, (len(data) + 1023) // 1024)
    if nchunks == 1:
        return _b3_chunk(data, first_chunk, root)
    left_chunks = 1 << ((nchunks - 1).bit_length() - 1)   # largest power of 2 < nchunks
    split = left_chunks * 1024
    left = _b3_subtree(data[:split], first_chunk, False)
    right = _b3_subtree(data[split:], first_chunk + left_chunks, False)
    block = struct.pack("<16I", *(left + right))
    return _b3_compress(B3_IV[:], block, 0, 64, PARENT | (ROOT if root else 0))


def blake3(data):
    """BLAKE3(data), 32 bytes (the default output length, enough for this protocol)."""
    return struct.pack("<8I", *_b3_subtree(bytes(data), 0, True))


# --------------------------------------------------------------------------------------------
# Protocol constants and cryptography (§4.5, §6.2, §6.3, §4.4)
# --------------------------------------------------------------------------------------------

PROTOCOL, VERSION = "rcmd", 2
MAX_HEADER_LEN, MAX_BODY_LEN = 16384, 1048576
MAX_CHUNK, STDIN_WINDOW = 65536, 262144
TAG_LEN = 32
TYPES = {"hello", "auth", "welcome", "exec", "stdin", "stdin_close", "stdin_ack", "signal",
         "stdout", "stderr", "exit", "error"}
BODY_TYPES = {"exec", "stdin", "stdout", "stderr"}


def hmac256(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def proofs_and_keys(secret, ns, nc):
    """Returns (Pc, Ps, K_c2s, K_s2c)."""
    return tuple(hmac256(secret, label + ns + nc) for label in (
        b"rcmd v2 client proof", b"rcmd v2 server proof",
        b"rcmd v2 key client to server", b"rcmd v2 key server to client"))


def frame_tag(key, seq, frame_bytes):
    return hmac256(key, struct.pack(">Q", seq) + blake3(frame_bytes))


def encode_header(msg, body_len):
    """Compact JSON, `type` first and `len` last, like the reference encoder (§4.2)."""
    h = {"type": msg["type"]}
    h.update((k, v) for k, v in msg.items() if k not in ("type", "len"))
    h["len"] = body_len
    return json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_frame(msg, body=b""):
    """Untagged frame bytes: prefix ‖ header ‖ body (§4.1)."""
    header = encode_header(msg, len(body))
    return struct.pack(">I", len(header)) + header + body


def read_secret(path):
    """§6.4: the file's text with leading/trailing ASCII whitespace removed, used as bytes."""
    with open(path, "rb") as f:
        secret = f.read().strip(b" \t\n\r\x0c")
    if len(secret) < 16:
        raise ProtocolError("secret in %s is shorter than 16 bytes" % path)
    return secret


def is_hex32(value):
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdefABCDEF" for c in value))


class ProtocolError(Exception):
    pass


class ConnectionLost(ProtocolError):
    pass


class RemoteError(ProtocolError):
    """An `error` frame received from the server."""

    def __init__(self, msg):
        self.msg = msg
        self.code = msg.get("code")
        super().__init__("%s: %s" % (self.code, msg.get("message")))


# --------------------------------------------------------------------------------------------
# A connection: framing, tags, handshake
# --------------------------------------------------------------------------------------------

class Connection:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.k_c2s = self.k_s2c = None        # set once the handshake is done
        self.send_seq = self.recv_seq = 0
        self.send_lock = threading.Lock()     # a frame's seq and its bytes go out together

    # -- receiving --

    def _fill(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(max(65536, n - len(self.buf)))
            if not data:
                raise ConnectionLost("connection closed by the server")
            self.buf += data

    def _take(self, n):
        self._fill(n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_frame(self):
        """Reads one frame; returns (message dict, body). Verifies the tag after the handshake."""
        prefix = self._take(4)
        (hlen,) = struct.unpack(">I", prefix)
        if hlen == 0 or hlen > MAX_HEADER_LEN:
            raise ProtocolError("header_too_large: header length %d" % hlen)
        header = self._take(hlen)
        try:
            msg = json.loads(header.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError("bad_header: %s" % e)
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ProtocolError("bad_header: %r" % header)
        if msg["type"] not in TYPES:
            raise ProtocolError("unknown_type: %r" % msg["type"])
        blen = msg.get("len", 0)              # absent means 0; null is not accepted
        if not isinstance(blen, int) or isinstance(blen, bool) or blen < 0:
            raise ProtocolError("bad_header: len %r" % (blen,))
        if blen > MAX_BODY_LEN:
            raise ProtocolError("body_too_large: %d" % blen)
        if blen and msg["type"] not in BODY_TYPES:
            raise ProtocolError("bad_header: body on %s" % msg["type"])
        body = self._take(blen)
        if self.k_s2c is not None:
            tag = self._take(TAG_LEN)
            expect = frame_tag(self.k_s2c, self.recv_seq, prefix + header + body)
            if not hmac.compare_digest(tag, expect):
                raise ProtocolError("integrity: bad tag on server frame seq %d" % self.recv_seq)
            self.recv_seq += 1
        return msg, body

    # -- sending --

    def send_raw(self, data):
        self.sock.sendall(data)

    def build(self, msg, body=b""):
        """The bytes of one frame, tagged if the handshake is done (consumes a send seq)."""
        frame = encode_frame(msg, body)
        if self.k_c2s is not None:
            frame += frame_tag(self.k_c2s, self.send_seq, frame)
            self.send_seq += 1
        return frame

    def send(self, msg, body=b""):
        with self.send_lock:
            self.sock.sendall(self.build(msg, body))

    # -- handshake (§6) --

    def handshake(self, secret, version=VERSION):
        msg, _ = self.recv_frame()
        if msg["type"] == "error":
            raise RemoteError(msg)
        if msg["type"] != "hello" or msg.get("protocol") != PROTOCOL:
            raise ProtocolError("the server does not speak the rcmd protocol")
        if msg.get("version") != VERSION:
            # §3: do not send auth; send an untagged fatal version_mismatch, then close.
            try:
                self.send({"type": "error", "code": "version_mismatch",
                           "message": "client speaks version %d" % VERSION, "fatal": True})
            finally:
                self.close()
            raise ProtocolError("version_mismatch: server speaks %r" % msg.get("version"))
        if not is_hex32(msg.get("nonce")):
            raise ProtocolError("bad_header: hello nonce")
        ns, nc = bytes.fromhex(msg["nonce"]), os.urandom(32)
        pc, ps, k_c2s, k_s2c = proofs_and_keys(secret, ns, nc)
        self.send({"type": "auth", "version": version, "nonce": nc.hex(), "proof": pc.hex()})
        msg, _ = self.recv_frame()
        if msg["type"] == "error":
            raise RemoteError(msg)
        if msg["type"] != "welcome" or not is_hex32(msg.get("proof")):
            raise ProtocolError("unexpected %r in answer to auth" % msg["type"])
        if not hmac.compare_digest(bytes.fromhex(msg["proof"]), ps):
            self.close()
            raise ProtocolError("authentication failed: the server could not prove it knows "
                                "the secret")
        self.k_c2s, self.k_s2c = k_c2s, k_s2c

    def at_eof(self):
        """True if the peer has closed (end-of-stream or reset) with nothing more to read."""
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # `with Connection(...) as c:` closes it at the end of the block, whatever happens.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Running one command (§7)
# --------------------------------------------------------------------------------------------

class Result:
    def __init__(self):
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit = None          # the exit message
        self.error = None         # a non-fatal refusal error message
        self.frames = []          # (type, body length) of every frame for this id

    def status(self):
        """Client exit status, §11."""
        if self.exit is None:
            return 255
        reason = self.exit["reason"]
        if reason == "exited":
            code = self.exit.get("code")
            return code if isinstance(code, int) and 0 <= code <= 255 else 1
        if reason == "signaled":
            return 128 + self.exit["signal"]
        return 124        # timed_out


def run_command(conn, cmd_id, command, stdin=None, timeout_secs=None,
                on_stdout=None, on_stderr=None):
    """Sends exec, forwards `stdin` (bytes, a binary file object, or None), collects output.

    Returns a Result. Raises RemoteError on a fatal server error, ConnectionLost on EOF."""
    msg = {"type": "exec", "id": cmd_id, "stdin": stdin is not None}
    if timeout_secs:
        msg["timeout_secs"] = timeout_secs
    conn.send(msg, command.encode("utf-8"))
    res = Result()
    window = threading.Condition()
    state = {"unacked": 0, "done": False}

    def feed():
        """Sends stdin in chunks of <= 64 KiB, never more than STDIN_WINDOW unacknowledged."""
        src = stdin if hasattr(stdin, "read") else None
        pos = 0
        try:
            while True:
                with window:
                    while state["unacked"] >= STDIN_WINDOW and not state["done"]:
                        window.wait()
                    if state["done"]:
                        return
                    room = min(MAX_CHUNK, STDIN_WINDOW - state["unacked"])
                if src is not None:
                    data = os.read(src.fileno(), room) if hasattr(src, "fileno") else src.read(room)
                else:
                    data = stdin[pos:pos + room]
                    pos += len(data)
                with window:
                    if state["done"]:
                        return          # exit arrived: stop sending stdin (§7.3)
                    state["unacked"] += len(data)
                # Sent outside the window lock, so that acks keep being processed meanwhile.
                if not data:
                    conn.send({"type": "stdin_close", "id": cmd_id})
                    return
                conn.send({"type": "stdin", "id": cmd_id}, data)
        except OSError:
            pass        # the connection ended; the main loop reports it

    feeder = None
    if stdin is not None:
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    try:
        while True:
            m, body = conn.recv_frame()
            t = m["type"]
            if t == "error" and m.get("fatal"):
                raise RemoteError(m)
            if t in ("stdout", "stderr", "exit", "stdin_ack", "error"):
                if m.get("id") != cmd_id:
                    continue      # leftovers of an earlier command (§5.13)
            else:
                raise ProtocolError("unexpected %r frame from the server" % t)
            res.frames.append((t, len(body)))
            if t == "stdout":
                res.stdout += body
                if on_stdout:
                    on_stdout(body)
            elif t == "stderr":
                res.stderr += body
                if on_stderr:
                    on_stderr(body)
            elif t == "stdin_ack":
                with window:
                    state["unacked"] -= m["bytes"]
                    window.notify_all()
            elif t == "error":
                res.error = m
                return res
            else:
                if m.get("reason") not in ("exited", "signaled", "timed_out"):
                    raise ProtocolError("bad exit reason %r" % m.get("reason"))
                res.exit = m
                return res
    finally:
        with window:
            state["done"] = True
            window.notify_all()
        # A stdin thread blocked on reading our own stdin may linger; it is a daemon thread
        # and sends nothing once `done` is set.


# --------------------------------------------------------------------------------------------
# `run`
# --------------------------------------------------------------------------------------------

def die_with_parent():
    """Run in the self-test's server before it starts: on Linux the server is killed when this
    script dies, rather than left running if the script itself is killed (a test's timeout)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def parse_addr(addr):
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, 9999       # §2: the reference client uses port 9999 when none is given
    return host.strip("[]"), int(port)


def cmd_run(args):
    command = " ".join(args.command)
    if not command:
        print("protocol-client: no command given", file=sys.stderr)
        return 2
    def failed(e):
        # §11: a connection or protocol failure is 255, as with ssh.
        what = "server error %s" % e if isinstance(e, RemoteError) else str(e)
        print("protocol-client: %s" % what, file=sys.stderr)
        return 255

    try:
        secret = read_secret(args.secret_file)
        host, port = parse_addr(args.connect)
        conn = Connection(host, port, timeout=10.0)   # 10 s per handshake step, like rcmd
        conn.handshake(secret)
        conn.sock.settimeout(args.io_timeout)         # None: wait indefinitely (§6.1)
    except (OSError, ProtocolError, RemoteError) as e:
        return failed(e)

    forward = None if args.no_stdin or sys.stdin.isatty() else sys.stdin.buffer
    presses = [0]
    cmd_id = 1

    def on_sigint(signum, frame):
        # §7.5: INT on the first and second Ctrl-C, KILL from the third on.
        presses[0] += 1
        sig = "INT" if presses[0] <= 2 else "KILL"
        threading.Thread(target=lambda: _quiet(conn.send, {"type": "signal", "id": cmd_id,
                                                           "signal": sig}),
                         daemon=True).start()

    def write_out(stream):
        def w(data):
            stream.write(data)
            stream.flush()
        return w

    try:
        old = signal.signal(signal.SIGINT, on_sigint)
        try:
            res = run_command(conn, cmd_id, command, stdin=forward, timeout_secs=args.timeout,
                              on_stdout=write_out(sys.stdout.buffer),
                              on_stderr=write_out(sys.stderr.buffer))
        finally:
            signal.signal(signal.SIGINT, old)
    except BrokenPipeError:
        conn.close()          # §11: our reader went away -> 0, the server kills the command
        try:
            sys.stdout = None
        except Exception:
            pass
        os._exit(0)
    except (OSError, ProtocolError, RemoteError) as e:
        return failed(e)
    finally:
        conn.close()
    if res.error is not None:
        print("protocol-client: command refused: %s: %s"
              % (res.error.get("code"), res.error.get("message")), file=sys.stderr)
        return 255
    if res.exit["reason"] == "timed_out":
        print("protocol-client: command timed out", file=sys.stderr)
    return res.status()


def _quiet(fn, *a):
    try:
        fn(*a)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# `self-test`
# --------------------------------------------------------------------------------------------

class SelfTest:
    def __init__(self, rcmd):
        self.rcmd = os.path.abspath(rcmd)
        self.failures = 0
        self.count = 0
        self.tmp = tempfile.mkdtemp(prefix="rcmd-protocol-client-")
        self.secret_file = os.path.join(self.tmp, "secret")
        self.server = None

    def check(self, name, fn):
        self.count += 1
        t0 = time.monotonic()
        try:
            detail = fn()
            print("PASS  %-58s %s" % (name, detail or ""), flush=True)
        except Exception as e:    # noqa: BLE001 - report every failure as a FAIL line
            self.failures += 1
            print("FAIL  %-58s %s: %s" % (name, type(e).__name__, e), flush=True)
        if time.monotonic() - t0 > 15:
            print("      (slow: %.1f s)" % (time.monotonic() - t0))

    # -- helpers --

    def start_server(self):
        subprocess.run([self.rcmd, "keygen", "--secret-file", self.secret_file], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        self.server_log = open(os.path.join(self.tmp, "server.log"), "wb")
        self.server = subprocess.Popen(
            [self.rcmd, "serve", "--listen", "127.0.0.1:0", "--secret-file", self.secret_file,
             "--workdir", self.tmp],
            stdout=subprocess.PIPE, stderr=self.server_log, preexec_fn=die_with_parent)
        # README: the first line on stdout is "listening on ADDR".
        line = self._readline_with_timeout(self.server.stdout, 10).decode().strip()
        addr = line.split()[-1]
        host, port = parse_addr(addr)
        self.host, self.port = host, port
        self.secret = read_secret(self.secret_file)
        return "server pid %d, first line %r" % (self.server.pid, line)

    @staticmethod
    def _readline_with_timeout(f, secs):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("l", f.readline()), daemon=True)
        t.start()
        t.join(secs)
        if "l" not in out:
            raise TimeoutError("server printed no address within %d s" % secs)
        return out["l"]

    def stop_server(self):
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=6)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.server:
            self.server.stdout.close()
            self.server_log.close()

    def server_alive(self):
        assert self.server.poll() is None, "server exited with %r" % self.server.returncode

    def connect(self, auth=True, secret=None):
        c = Connection(self.host, self.port, timeout=10.0)
        if auth:
            c.handshake(secret or self.secret)
        return c

    def run1(self, command, **kw):
        with self.connect() as c:
            return run_command(c, 1, command, **kw)

    def expect_fatal_then_eof(self, c, code):
        """Reads until a fatal error arrives; asserts its code; then expects end-of-stream."""
        while True:
            m, _ = c.recv_frame()
            if m["type"] == "error":
                break
        assert m.get("fatal") is True, "error not fatal: %r" % m
        assert m.get("code") == code, "expected %s, got %r" % (code, m)
        assert "id" not in m or m["id"] is None, "fatal error carries an id: %r" % m
        assert c.at_eof(), "bytes after the fatal error"
        return m

    def cli(self, command, stdin=b"", secret_file=None, extra=()):
        p = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "run", "--connect",
             "%s:%d" % (self.host, self.port), "--secret-file", secret_file or self.secret_file,
             *extra, "--", command],
            input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        return p

    # -- the checks --

    def run_all(self):
        self.check("blake3 known vectors (empty, abc)", self.t_blake3)
        self.check("spec §13/§14 test vectors (proofs, keys, tags, frame)", self.t_vectors)
        self.check("start server on 127.0.0.1:0", self.start_server)
        try:
            self.check("echo output exact", self.t_echo)
            self.check("stdout and stderr kept apart", self.t_apart)
            self.check("exit codes 0, 3, 255 passed on (library)", self.t_exit_codes)
            self.check("exit codes 0, 3, 255 passed on (run CLI)", self.t_exit_codes_cli)
            self.check("wrong secret refused: untagged fatal auth_failed", self.t_wrong_secret)
            self.check("wrong secret: run CLI exits 255", self.t_wrong_secret_cli)
            self.check("impostor welcome proof detected by client", self.t_bad_server_proof)
            self.check("auth version 1 -> version_mismatch", self.t_version_mismatch)
            self.check("~200 KB output byte-exact (sha256), multi-chunk tags", self.t_big_output)
            self.check("several KB stdin round-trips (cat, wc -c)", self.t_stdin)
            self.check("stdin via run CLI (printf | sort)", self.t_stdin_cli)
            self.check("600 KB stdin through the 256 KiB window", self.t_stdin_window)
            self.check("two commands on one connection (+ cd builtin)", self.t_two_commands)
            self.check("exec while running -> non-fatal busy", self.t_busy)
            self.check("empty command -> non-fatal empty_command", self.t_empty)
            self.check("signal INT -> signaled 2 (status 130)", self.t_signal)
            self.check("timeout_secs -> timed_out (status 124)", self.t_timeout)
            self.check("flipped tag bit -> tagged fatal integrity, EOF", self.t_flip_tag)
            self.check("flipped body bit -> tagged fatal integrity", self.t_flip_body)
            self.check("replayed frame -> integrity", self.t_replay)
            self.check("bad JSON after handshake -> integrity", self.t_bad_json_after)
            self.check("H=0 after handshake -> header_too_large", self.t_h0_after)
            self.check("len 2 MiB after handshake -> body_too_large at once",
                       self.t_body_too_large)
            self.check("one 300 KiB stdin frame -> fatal flow_control", self.t_flow_control)
            self.check("malformed header before handshake -> bad_header", self.t_bad_pre)
            self.check("exec before handshake -> unexpected_message", self.t_exec_pre)
            self.check("header length 4 GiB before handshake -> header_too_large",
                       self.t_huge_prefix_pre)
            self.check("server alive and fresh connection works", self.t_alive)
        finally:
            self.stop_server()
        print("%s: %d/%d checks passed" % ("PASS" if not self.failures else "FAIL",
                                           self.count - self.failures, self.count))
        if self.failures:
            print("(server log and secret kept in %s)" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return 0 if self.failures == 0 else 1

    def t_blake3(self):
        assert blake3(b"").hex() == \
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        assert blake3(b"abc").hex() == \
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        # §13's BLAKE3-only vectors: one chunk, one byte over, a tree of 100 chunks.
        for n, digest in [
                (1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"),
                (1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"),
                (102400, "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085")]:
            assert blake3(bytes(i % 251 for i in range(n))).hex() == digest, n

    def t_vectors(self):
        s = b"0123456789abcdef0123456789abcdef"
        pc, ps, kc, ks = proofs_and_keys(s, b"\x01" * 32, b"\x02" * 32)
        assert pc.hex() == "79af0c308a4150b234b50ac46ca8ad9f8e86d71bf08cd321f5ddfe1ed77f35f8"
        assert ps.hex() == "f09606d6058e6526ed97efd2247a9ce30fa76aec9ba06c014c59c1232059a5ed"
        assert kc.hex() == "dee26d3ede02a6adf1246c8f059afa98a5aa7fe22e2ccc18cfd9dad1179d54fe"
        assert ks.hex() == "65e6de2297ecbb74152deb5d5b64a0645bb7fd7dc942ba882bb1dc021f4f3dff"
        f = encode_frame({"type": "exec", "id": 1, "stdin": False}, b"echo hi")
        assert blake3(f).hex() == \
            "9c5c8deb50f9979da14a6d97b65a43c251f0bd17ee9125fa57f4bf86de28cd1e"
        full = f + frame_tag(kc, 0, f)
        assert full.hex() == (
            "0000002c7b2274797065223a2265786563222c226964223a312c22737464696e"
            "223a66616c73652c226c656e223a377d6563686f2068692a72e1bc9d3fbfc79f"
            "795ee69cc31708d83b5e163b3f5713a23cd92435701e55")
        so = encode_frame({"type": "stdout", "id": 1}, b"hi\n")
        assert frame_tag(ks, 0, so).hex() == \
            "f21482ffc2a499e3ddb75e617841dca9c5f10ea296f96c8f8b2a53fb8a4e22a5"
        ex = encode_frame({"type": "exit", "id": 1, "reason": "exited", "code": 0,
                           "duration_ms": 3})
        assert frame_tag(ks, 1, ex).hex() == \
            "95290977aa343d4302e25b7706552023c0a05e075134fc5db1941017b2015d53"
        auth = encode_frame({"type": "auth", "version": 2, "nonce": "02" * 32,
                             "proof": pc.hex()})
        assert len(auth) == 189 and len(full) == 87 and len(so) + 32 == 71 \
            and len(ex) + 32 == 109
        # Three BLAKE3 chunks: the tree mode (§13, the last vector).
        long = encode_frame({"type": "stdout", "id": 1}, bytes(i % 251 for i in range(3000)))
        assert len(long) == 3039
        assert blake3(long).hex() == \
            "3481496923c0920c6a954e714c0cb3fb71e601041a377d0161bf77796afb1a05"
        assert frame_tag(ks, 2, long).hex() == \
            "d1da343d7014428f6f2aab1d549f00fbde6e192947c965d27b3566cac13c9a0a"

    def t_echo(self):
        r = self.run1("echo hello")
        assert bytes(r.stdout) == b"hello\n", r.stdout
        assert bytes(r.stderr) == b"", r.stderr
        assert r.exit["reason"] == "exited" and r.exit["code"] == 0, r.exit
        assert isinstance(r.exit.get("duration_ms"), int)
        return "exit %r" % r.exit

    def t_apart(self):
        r = self.run1("echo out; echo err >&2; printf 'more out'; printf 'more err' >&2")
        assert bytes(r.stdout) == b"out\nmore out", r.stdout
        assert bytes(r.stderr) == b"err\nmore err", r.stderr
        assert r.status() == 0

    def t_exit_codes(self):
        for code in (0, 3, 255):
            r = self.run1("exit %d" % code)
            assert r.exit["reason"] == "exited" and r.exit["code"] == code, r.exit
            assert r.status() == code

    def t_exit_codes_cli(self):
        got = {}
        for code in (0, 3, 255):
            p = self.cli("echo x; exit %d" % code)
            got[code] = p.returncode
            assert p.returncode == code, (code, p.returncode, p.stderr)
            assert p.stdout == b"x\n", p.stdout
        return "statuses %r" % got

    def t_wrong_secret(self):
        c = self.connect(auth=False)
        try:
            c.handshake(b"this-is-not-the-right-secret-0123456789")
            raise AssertionError("handshake with a wrong secret succeeded")
        except RemoteError as e:
            assert e.code == "auth_failed" and e.msg.get("fatal") is True, e.msg
            assert c.k_s2c is None     # it was read untagged (we would have failed otherwise)
            assert c.at_eof(), "connection not closed after auth_failed"
            return "got %r" % e.msg
        finally:
            c.close()

    def t_wrong_secret_cli(self):
        bad = os.path.join(self.tmp, "bad-secret")
        with open(bad, "w") as f:
            f.write("00" * 32 + "\n")
        p = self.cli("echo should-not-run", secret_file=bad)
        assert p.returncode == 255, (p.returncode, p.stderr)
        assert p.stdout == b"", p.stdout
        return p.stderr.decode().strip()

    def t_bad_server_proof(self):
        """A fake server whose welcome.proof is wrong: the client must refuse it."""
        lsn = socket.socket()
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(1)
        port = lsn.getsockname()[1]

        def fake():
            s, _ = lsn.accept()
            s.sendall(encode_frame({"type": "hello", "protocol": "rcmd", "version": 2,
                                    "nonce": "11" * 32}))
            s.settimeout(5)
            try:
                s.recv(4096)
                s.sendall(encode_frame({"type": "welcome", "proof": "ab" * 32}))
                s.recv(4096)     # anything the client sends after this would be a command
            except OSError:
                pass
            s.close()
        t = threading.Thread(target=fake, daemon=True)
        t.start()
        c = Connection("127.0.0.1", port, timeout=5)
        try:
            c.handshake(self.secret)
            raise AssertionError("accepted an impostor's welcome")
        except ProtocolError as e:
            assert "could not prove" in str(e), e
        finally:
            c.close()
            lsn.close()
            t.join(5)

    def t_version_mismatch(self):
        c = self.connect(auth=False)
        try:
            c.handshake(self.secret, version=1)
            raise AssertionError("version 1 accepted")
        except RemoteError as e:
            assert e.code == "version_mismatch" and e.msg["fatal"] is True, e.msg
            return "got %r" % e.msg
        finally:
            c.close()

    def t_big_output(self):
        n = 40000   # `seq 1 40000` is 228,894 bytes
        expect = "".join("%d\n" % i for i in range(1, n + 1)).encode()
        r = self.run1("seq 1 %d" % n)
        got = hashlib.sha256(bytes(r.stdout)).hexdigest()
        assert len(r.stdout) == len(expect), (len(r.stdout), len(expect))
        assert got == hashlib.sha256(expect).hexdigest()
        assert r.status() == 0
        sizes = [n for t, n in r.frames if t == "stdout"]
        assert max(sizes) > 1024, sizes
        return "%d bytes in %d stdout frames (largest %d), sha256 %s..." % (
            len(r.stdout), len(sizes), max(sizes), got[:16])

    def t_stdin(self):
        data = os.urandom(6000) + bytes(range(256)) * 8
        r = self.run1("cat", stdin=data)
        assert bytes(r.stdout) == data, (len(r.stdout), len(data))
        r = self.run1("wc -c", stdin=data)
        assert r.stdout.strip() == str(len(data)).encode(), r.stdout
        acks = [t for t, _ in r.frames if t == "stdin_ack"]
        return "%d bytes, %d stdin_ack frames on wc -c" % (len(data), len(acks))

    def t_stdin_cli(self):
        p = self.cli("sort", stdin=b"b\na\nc\n")
        assert p.returncode == 0 and p.stdout == b"a\nb\nc\n", (p.returncode, p.stdout, p.stderr)

    def t_stdin_window(self):
        data = os.urandom(600 * 1024)
        r = self.run1("sha256sum", stdin=data)
        assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), r.stdout
        acked = sum(1 for t, _ in r.frames if t == "stdin_ack")
        return "%d stdin_ack frames" % acked

    def t_two_commands(self):
        with self.connect() as c:
            r1 = run_command(c, 1, "echo first")
            r2 = run_command(c, 2, "cd /")
            r3 = run_command(c, 3, "pwd; echo second >&2; exit 7")
            assert bytes(r1.stdout) == b"first\n" and r1.status() == 0
            assert r2.status() == 0 and not r2.stdout and not r2.stderr, (r2.exit, r2.stderr)
            assert bytes(r3.stdout) == b"/\n" and bytes(r3.stderr) == b"second\n", r3.stdout
            assert r3.status() == 7
            return "send seq now %d, recv seq %d" % (c.send_seq, c.recv_seq)

    def t_busy(self):
        with self.connect() as c:
            c.send({"type": "exec", "id": 1, "stdin": False}, b"sleep 0.5; echo done")
            r2 = run_command(c, 2, "echo too-early")
            assert r2.error is not None and r2.error["code"] == "busy", r2.error
            assert r2.error["fatal"] is False and r2.error["id"] == 2
            # the first command is unaffected: read its frames
            out = b""
            while True:
                m, body = c.recv_frame()
                if m["type"] == "stdout":
                    out += body
                if m["type"] == "exit":
                    break
            assert m["id"] == 1 and m["code"] == 0 and out == b"done\n", (m, out)
            r3 = run_command(c, 3, "echo after")
            assert bytes(r3.stdout) == b"after\n"

    def t_empty(self):
        with self.connect() as c:
            r = run_command(c, 1, "   ")
            assert r.error and r.error["code"] == "empty_command" and not r.error["fatal"]
            r = run_command(c, 2, "echo ok")
            assert bytes(r.stdout) == b"ok\n"

    def t_signal(self):
        with self.connect() as c:
            c.send({"type": "exec", "id": 1, "stdin": False}, b"echo ready; sleep 10")
            m, body = c.recv_frame()
            assert m["type"] == "stdout" and body == b"ready\n", (m, body)
            c.send({"type": "signal", "id": 1, "signal": "INT"})
            # `sh -c` catches SIGINT while it runs and then execs `sleep`: a SIGINT that lands in
            # between is taken by the shell's handler and lost with it at the exec, so the
            # sleep runs on. A user would press Ctrl-C again; so does this test, once a second.
            for _ in range(10):
                if c.buf or select.select([c.sock], [], [], 1.0)[0]:
                    break
                c.send({"type": "signal", "id": 1, "signal": "INT"})
            m, _ = c.recv_frame()
            assert m["type"] == "exit", m
            r = Result()
            r.exit = m
            assert m["reason"] == "signaled" and m["signal"] == 2, m
            assert r.status() == 130
            return "exit %r" % m

    def t_timeout(self):
        r = self.run1("sleep 5", timeout_secs=1)
        assert r.exit["reason"] == "timed_out", r.exit
        assert "code" not in r.exit and "signal" not in r.exit
        assert r.status() == 124
        return "duration_ms %d" % r.exit["duration_ms"]

    def _tampered(self, mutate, expect="integrity", commands_first=1):
        with self.connect() as c:
            for i in range(commands_first):       # advance both sequence numbers first
                r = run_command(c, i + 1, "echo warmup")
                assert bytes(r.stdout) == b"warmup\n"
            frame = c.build({"type": "exec", "id": 9, "stdin": False}, b"echo tampered > x")
            c.send_raw(mutate(frame, c))
            m = self.expect_fatal_then_eof(c, expect)
            self.server_alive()
            assert not os.path.exists(os.path.join(self.tmp, "x")), "tampered exec ran"
            return "got %s (read as seq %d, tag verified)" % (m["code"], c.recv_seq - 1)

    def t_flip_tag(self):
        return self._tampered(lambda f, c: f[:-1] + bytes([f[-1] ^ 0x01]))

    def t_flip_body(self):
        return self._tampered(lambda f, c: f[:-40] + bytes([f[-40] ^ 0x20]) + f[-39:])

    def t_replay(self):
        with self.connect() as c:
            frame = c.build({"type": "exec", "id": 1, "stdin": False}, b"echo once")
            c.send_raw(frame)
            m, body = c.recv_frame()
            assert body == b"once\n", body
            m, _ = c.recv_frame()
            assert m["type"] == "exit"
            c.send_raw(frame)                   # same bytes, but the server expects seq 1
            return "got %s" % self.expect_fatal_then_eof(c, "integrity")["code"]

    def t_bad_json_after(self):
        def mutate(frame, c):
            header = b'{"type":"exec",'             # not JSON; correctly tagged
            f = struct.pack(">I", len(header)) + header
            c.send_seq -= 1                          # replace the built frame
            return f + frame_tag(c.k_c2s, c.send_seq, f)
        return self._tampered(mutate)

    def t_h0_after(self):
        return self._tampered(lambda f, c: b"\0\0\0\0", expect="header_too_large")

    def t_body_too_large(self):
        def mutate(frame, c):                   # only a header claiming a 2 MiB body
            header = b'{"type":"stdin","id":9,"len":2097152}'
            return struct.pack(">I", len(header)) + header
        return self._tampered(mutate, expect="body_too_large")

    def t_flow_control(self):
        with self.connect() as c:
            c.send({"type": "exec", "id": 1, "stdin": True}, b"cat >/dev/null")
            c.send({"type": "stdin", "id": 1}, b"x" * (300 * 1024))
            m = self.expect_fatal_then_eof(c, "flow_control")
            self.server_alive()
            return "got %s" % m["code"]

    def _pre(self, data, expect):
        with self.connect(auth=False) as c:
            m, _ = c.recv_frame()
            assert m["type"] == "hello", m
            c.send_raw(data)
            m = self.expect_fatal_then_eof(c, expect)
            self.server_alive()
            return "got %s: %s" % (m["code"], m.get("message"))

    def t_bad_pre(self):
        header = b'{"type":"auth"} '               # trailing whitespace inside the header
        return self._pre(struct.pack(">I", len(header)) + header, "bad_header")

    def t_exec_pre(self):
        return self._pre(encode_frame({"type": "exec", "id": 1, "stdin": False}, b"id"),
                         "unexpected_message")

    def t_huge_prefix_pre(self):
        return self._pre(b"\xff\xff\xff\xff", "header_too_large")

    def t_alive(self):
        self.server_alive()
        r = self.run1("echo still here")
        assert bytes(r.stdout) == b"still here\n" and r.status() == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one command on a server")
    r.add_argument("--connect", required=True, metavar="HOST:PORT")
    r.add_argument("--secret-file", required=True)
    r.add_argument("--timeout", type=int, default=None, help="ask the server to kill the "
                   "command after SECS (exec.timeout_secs)")
    r.add_argument("--no-stdin", action="store_true", help="do not forward our stdin")
    r.add_argument("--io-timeout", type=float, default=None,
                   help="socket timeout after the handshake (default: wait indefinitely)")
    r.add_argument("command", nargs=argparse.REMAINDER)
    t = sub.add_parser("self-test", help="start `rcmd serve` and check it against this client")
    t.add_argument("--rcmd", required=True)
    args = ap.parse_args()
    if args.cmd == "run":
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        try:
            sys.exit(cmd_run(args))
        except KeyboardInterrupt:         # Ctrl-C while no command runs (§11)
            sys.exit(130)
    test = SelfTest(args.rcmd)

    # Generous: the whole test suite may be running beside it on two cores.
    limit = 180

    def overtime():
        print("FAIL  self-test took over %d s; stopping" % limit, flush=True)
        if test.server and test.server.poll() is None:
            test.server.kill()
        os._exit(1)
    deadline = threading.Timer(limit, overtime)
    deadline.daemon = True
    deadline.start()
    sys.exit(test.run_all())


if __name__ == "__main__":
    main()
