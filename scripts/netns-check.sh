#!/usr/bin/env bash
# Network-fault check: rcmd over a real (virtual) network instead of loopback. Two network
# namespaces joined by a veth pair (MTU 1500), a server in one and clients in the other, then:
#
#   1. basic: echo, 10 MiB of output and 1 MiB of stdin checked by SHA-256, exit codes, stderr
#      kept apart; the round trip of `true`; the same with 50 ms of delay on the client's side
#   2. corruption, duplication and reordering on the link while MiBs stream both ways: no
#      transfer may ever deliver a wrong byte (SHA-256 and prefix compared); a corruption TCP's
#      checksum misses must end as rcmd's `integrity` error. Also checksum-neutral corruption
#      (two 16-bit words of a segment's payload swapped: TCP cannot see it, only the frame tag can)
#   3. cable pulled (every packet dropped, both ways, no FIN or RST) while a silent command runs:
#      the server must log the connection lost and kill the command's whole tree (README: about
#      2 minutes, keepalive 60 s + 6 x 10 s), and the client must exit 255 with a message
#   4. the same while output streams to the client (data in flight: TCP_USER_TIMEOUT, 2 minutes);
#      on the veth (a peer on the same link: ARP fails) and on the userspace wire, if there is one
#      (point to point, no ARP: a peer behind a router)
#   5. only the server's packets dropped while a silent command runs: the client, whose probes go
#      unanswered, must give up (exit 255) within the same bound
#
# Each of 3-5 measures the seconds from the cut to the server's log line, to the command's end and
# to the client's exit, and fails past 180 s (200 s for 4), or if the client exits other than 255,
# silently, or with a message that blames the handshake.
#
#   sudo bash scripts/netns-check.sh              all checks, about 10 minutes
#   sudo bash scripts/netns-check.sh --quick      checks 1 and 2 only, under a minute
#   sudo bash scripts/netns-check.sh --only 3,5   the named checks
#   RCMD_BIN=/path/to/rcmd sudo -E bash scripts/netns-check.sh   (else: cargo build --release here)
#
# Needs root, iproute2 (`ip`, `tc`). Delay and corruption use `tc netem` where the kernel has it;
# where it does not (no sch_netem), they go through a userspace wire (python3 and /dev/net/tun: two
# tun devices whose packets a small relay carries, delays, corrupts, duplicates, reorders; it also
# makes the checksum-neutral corruption, which netem cannot). The cable is cut at the receiving
# end: each veth end's ingress redirected to an ifb device that drops every packet (the comment
# above cut_link says why not in the sender's own qdisc). The client's message on a lost connection must not blame
# the handshake. Everything it starts is killed by PID, both namespaces are deleted and the
# temporary directory removed on any exit. Not part of CI.
set -euo pipefail

QUICK=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY="${2:?--only needs a list such as 3,5}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "netns-check: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "[netns-check] $*"; }
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

wanted() {
    local n="$1"
    if [ -n "$ONLY" ]; then [[ ",$ONLY," == *",$n,"* ]]; return; fi
    [ "$QUICK" = 0 ] || [ "$n" -le 2 ]
}

if [ "$(id -u)" != 0 ]; then
    echo "netns-check: must run as root (it creates network namespaces and qdiscs); try: sudo -E bash $0" >&2
    exit 2
fi
for tool in ip tc sha256sum pgrep timeout awk; do
    command -v "$tool" >/dev/null || { echo "netns-check: $tool not found" >&2; exit 2; }
done

if [ -n "${RCMD_BIN:-}" ]; then
    BIN="$RCMD_BIN"
else
    cd "$(dirname "$0")/.."
    say "building the release binary (cargo build --release)"
    cargo build --release --quiet
    BIN="$PWD/target/release/rcmd"
fi
[ -x "$BIN" ] || { echo "netns-check: $BIN is not an executable" >&2; exit 2; }
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# --- the network -----------------------------------------------------------------------------

NS_S="rcmd-srv-$$"
NS_C="rcmd-cli-$$"
VS="rvs$$"              # veth end in the server namespace
VC="rvc$$"              # veth end in the client namespace
TS="rts$$"              # tun of the userspace wire, server side
TC="rtc$$"              # tun of the userspace wire, client side
NET="10.231.$(( $$ % 200 + 20 ))"   # namespaces are private: no clash with the host's routes
PORT=7022
SRV="$NET.1:$PORT"      # over the veth
WSRV="$NET.5:$PORT"     # over the userspace wire

T="$(mktemp -d /tmp/rcmd-netns.XXXXXX)"
LOG="$T/server.log"
SECRET="$T/secret"
SERVER_PID=""
WIRE_PID=""
CLIENT_PIDS=()
COMMAND_PIDS=()
CREATED_NS=()
FAILURES=0
SUMMARY=()

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in ${CLIENT_PIDS[@]+"${CLIENT_PIDS[@]}"} ${COMMAND_PIDS[@]+"${COMMAND_PIDS[@]}"}; do
        kill -KILL "$pid" 2>/dev/null
    done
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
    if [ -n "$WIRE_PID" ]; then kill -TERM "$WIRE_PID" 2>/dev/null; fi
    wait 2>/dev/null
    for ns in ${CREATED_NS[@]+"${CREATED_NS[@]}"}; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

record() {   # record pass|fail|info NAME TEXT
    local verdict="$1" name="$2" text="$3"
    if [ "$verdict" = fail ]; then FAILURES=$((FAILURES + 1)); fi
    SUMMARY+=("$(printf '%-4s %-34s %s' "$verdict" "$name" "$text")")
    say "$verdict: $name: $text"
}

say "namespaces $NS_S (server, $NET.1) and $NS_C (client, $NET.2), veth $VS <-> $VC; temp dir $T"
ip netns add "$NS_S"; CREATED_NS+=("$NS_S")
ip netns add "$NS_C"; CREATED_NS+=("$NS_C")
ip link add "$VS" type veth peer name "$VC"
ip link set "$VS" netns "$NS_S"
ip link set "$VC" netns "$NS_C"
ip -n "$NS_S" addr add "$NET.1/30" dev "$VS"
ip -n "$NS_C" addr add "$NET.2/30" dev "$VC"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$VS" mtu 1500 up
ip -n "$NS_C" link set "$VC" mtu 1500 up
# No segmentation offloads: packets on the veth are the size a real 1500-byte link carries, so
# a fault hits one ordinary segment and not a 64 KiB super-packet.
if command -v ethtool >/dev/null; then
    ip netns exec "$NS_S" ethtool -K "$VS" tso off gso off gro off >/dev/null 2>&1 || true
    ip netns exec "$NS_C" ethtool -K "$VC" tso off gso off gro off >/dev/null 2>&1 || true
fi

HAVE_NETEM=0
if ip netns exec "$NS_C" tc qdisc add dev "$VC" root netem delay 1ms 2>/dev/null; then
    ip netns exec "$NS_C" tc qdisc del dev "$VC" root
    HAVE_NETEM=1
    say "tc netem: available"
else
    say "tc netem: NOT available in this kernel (no sch_netem); delay and corruption go through the userspace wire"
fi

# The userspace wire: two tun devices, one per namespace, and a relay between them that applies
# the faults named in its control file (re-read when it changes). Point-to-point $NET.5 <-> .6.
WIRE_CTL="$T/wire.conf"
WIRE_STATS="$T/wire.stats"
cat >"$T/wire.py" <<'PY'
import ctypes, fcntl, heapq, os, random, select, signal, struct, sys, time
ns_s, tun_s, ns_c, tun_c, ctl, stats_path, ready = sys.argv[1:8]
libc = ctypes.CDLL(None, use_errno=True)
def open_tun(ns, name):
    for d in ("/run/netns", "/var/run/netns"):
        if os.path.exists(f"{d}/{ns}"):
            nsfd = os.open(f"{d}/{ns}", os.O_RDONLY)
            break
    if libc.setns(nsfd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns " + ns)
    os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
    return fd
fs = open_tun(ns_s, tun_s)
fc = open_tun(ns_c, tun_c)
cfg, mtime, last_check = {}, None, 0.0
st = dict(c2s=0, s2c=0, dropped=0, corrupted=0, swapped=0, duplicated=0, reordered=0)
def write_stats():
    tmp = stats_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(f"{k}={v}" for k, v in st.items()) + "\n")
    os.replace(tmp, stats_path)
def stop(*_):
    write_stats(); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
def reload():
    global cfg, mtime
    try:
        m = os.stat(ctl).st_mtime_ns
    except FileNotFoundError:
        return
    if m == mtime:
        return
    mtime, new = m, {}
    for line in open(ctl):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            new[k] = float(v)
    cfg = new
    for k in st:
        st[k] = 0
def swap_words(p):
    # Swap two different 16-bit words of the TCP payload: the ones'-complement sum, and so the
    # TCP checksum, stays the same. The IP header is not touched.
    if len(p) < 40 or p[0] >> 4 != 4 or p[9] != 6:
        return False
    ihl = (p[0] & 15) * 4
    total = struct.unpack_from("!H", p, 2)[0]
    start = ihl + (p[ihl + 12] >> 4) * 4
    words = (min(total, len(p)) - start) // 2
    if words < 2:
        return False
    for _ in range(16):
        i, j = random.sample(range(words), 2)
        a, b = start + 2 * i, start + 2 * j
        if p[a:a + 2] != p[b:b + 2]:
            p[a:a + 2], p[b:b + 2] = p[b:b + 2], p[a:a + 2]
            return True
    return False
heap, seq = [], 0
def handle(pkt, direction, out):
    global seq
    st[direction] += 1
    c = cfg.get
    if random.random() < c("drop", 0):
        st["dropped"] += 1; return
    pkt = bytearray(pkt)
    if random.random() < c("corrupt", 0):
        i = random.randrange(len(pkt)); pkt[i] ^= 1 << random.randrange(8); st["corrupted"] += 1
    if random.random() < c("swap", 0) and swap_words(pkt):
        st["swapped"] += 1
    delay = c(direction + "_delay", 0)
    if random.random() < c("reorder", 0):
        delay += 0.004; st["reordered"] += 1
    copies = 2 if random.random() < c("duplicate", 0) else 1
    st["duplicated"] += copies - 1
    for _ in range(copies):
        if delay <= 0:
            try: os.write(out, pkt)
            except OSError: pass
        else:
            seq += 1; heapq.heappush(heap, (time.monotonic() + delay, seq, out, bytes(pkt)))
open(ready, "w").close()
last_stats = 0.0
while True:
    now = time.monotonic()
    if now - last_check > 0.05:
        reload(); last_check = now
    if now - last_stats > 0.5:
        write_stats(); last_stats = now
    timeout = 0.05 if not heap else max(0.0, min(0.05, heap[0][0] - now))
    r, _, _ = select.select([fs, fc], [], [], timeout)
    for fd in r:
        for _ in range(64):
            try:
                pkt = os.read(fd, 65536)
            except BlockingIOError:
                break
            if fd == fc: handle(pkt, "c2s", fs)
            else: handle(pkt, "s2c", fc)
    now = time.monotonic()
    while heap and heap[0][0] <= now:
        _, _, out, pkt = heapq.heappop(heap)
        try: os.write(out, pkt)
        except OSError: pass
PY

HAVE_WIRE=0
wire_set() {   # wire_set key=value ... : the wire's faults from now on (none: a clean wire)
    printf '%s\n' "$@" >"$WIRE_CTL.tmp"
    mv "$WIRE_CTL.tmp" "$WIRE_CTL"
    sleep 0.3   # the relay re-reads its file every 50 ms
}
if command -v python3 >/dev/null && [ -c /dev/net/tun ]; then
    : >"$WIRE_CTL"
    python3 "$T/wire.py" "$NS_S" "$TS" "$NS_C" "$TC" "$WIRE_CTL" "$WIRE_STATS" "$T/wire.ready" \
        2>"$T/wire.err" &
    WIRE_PID=$!
    for _ in $(seq 50); do [ -e "$T/wire.ready" ] && break; sleep 0.1; done
    if [ -e "$T/wire.ready" ]; then
        ip -n "$NS_S" addr add "$NET.5" peer "$NET.6" dev "$TS"
        ip -n "$NS_C" addr add "$NET.6" peer "$NET.5" dev "$TC"
        ip -n "$NS_S" link set "$TS" mtu 1500 up
        ip -n "$NS_C" link set "$TC" mtu 1500 up
        HAVE_WIRE=1
        say "userspace wire: $TS ($NET.5) <-> $TC ($NET.6), relay pid $WIRE_PID"
    else
        say "userspace wire: could not start ($(tr '\n' ' ' <"$T/wire.err"))"
    fi
else
    say "userspace wire: needs python3 and /dev/net/tun; not available"
fi

# Cutting the veth: packets are dropped silently (no FIN, no RST, no ICMP), as with a pulled
# cable or a peer powered off. They must be dropped after they left the sender's stack: a drop in
# the sender's own qdisc (tbf, or a veth whose peer is down) is reported back to its TCP as local
# congestion, which then retries every 500 ms without backing off and, for zero-window probes,
# gives up after tcp_retries2 (15) of them, about 8 s: not what a pulled cable does. So the
# preferred cut redirects everything arriving at a veth end to an ifb device whose tbf bucket is
# smaller than any packet (the receiver's door is shut); `netem loss 100%` on the sender's side
# also works (netem reports its losses as sent); a tbf on the sender's side is the last resort.
IFB_S="ris$$"
IFB_C="ric$$"
CUT_MODE=tbf
if ip -n "$NS_S" link add "$IFB_S" type ifb 2>/dev/null && ip -n "$NS_C" link add "$IFB_C" type ifb 2>/dev/null &&
    ip -n "$NS_S" link set "$IFB_S" up && ip -n "$NS_C" link set "$IFB_C" up &&
    ip netns exec "$NS_S" tc qdisc add dev "$IFB_S" root tbf rate 8bit burst 10 limit 10 2>/dev/null &&
    ip netns exec "$NS_C" tc qdisc add dev "$IFB_C" root tbf rate 8bit burst 10 limit 10 2>/dev/null; then
    CUT_MODE=ifb
    CUT_HOW="ingress redirected to an ifb that drops every packet"
elif [ "$HAVE_NETEM" = 1 ]; then
    CUT_MODE=netem
    CUT_HOW="tc netem loss 100% on the sender's side"
else
    CUT_HOW="tc tbf dropping every packet on the sender's side (WARNING: TCP sees these as local drops and may give up early)"
fi
say "cutting the cable with: $CUT_HOW"
cut_link() {   # cut_link both|server|wire: drop the packets of both ends, only the server's, or all on the wire
    if [ "$1" = wire ]; then
        wire_set drop=1
    elif [ "$CUT_MODE" = ifb ]; then
        drop_arriving "$NS_C" "$VC" "$IFB_C"
        if [ "$1" = both ]; then drop_arriving "$NS_S" "$VS" "$IFB_S"; fi
    else
        drop_leaving "$NS_S" "$VS"
        if [ "$1" = both ]; then drop_leaving "$NS_C" "$VC"; fi
    fi
}
drop_arriving() {   # drop_arriving NS DEV IFB
    ip netns exec "$1" tc qdisc add dev "$2" handle ffff: ingress
    ip netns exec "$1" tc filter add dev "$2" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev "$3"
}
drop_leaving() {    # drop_leaving NS DEV
    if [ "$CUT_MODE" = netem ]; then
        ip netns exec "$1" tc qdisc replace dev "$2" root netem loss 100%
    else
        ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate 8bit burst 10 limit 10
    fi
}
heal() {
    local q
    if [ "$HAVE_WIRE" = 1 ]; then wire_set; fi
    for q in root ingress; do
        ip netns exec "$NS_S" tc qdisc del dev "$VS" "$q" 2>/dev/null || true
        ip netns exec "$NS_C" tc qdisc del dev "$VC" "$q" 2>/dev/null || true
    done
    # ARP failed during the cut; a FAILED entry would refuse the next connection at once
    # ("No route to host") until it expires.
    ip -n "$NS_S" neigh flush dev "$VS" 2>/dev/null || true
    ip -n "$NS_C" neigh flush dev "$VC" 2>/dev/null || true
}
dropped_count() {   # packets dropped so far by the cut (ifb mode: since the start)
    {
        ip netns exec "$NS_S" tc -s qdisc show dev "$VS"; ip netns exec "$NS_C" tc -s qdisc show dev "$VC"
        if [ "$CUT_MODE" = ifb ]; then
            ip netns exec "$NS_S" tc -s qdisc show dev "$IFB_S"; ip netns exec "$NS_C" tc -s qdisc show dev "$IFB_C"
        fi
    } | awk '/dropped/ { sub(",", "", $7); n += $7 } END { print n + 0 }'
}
wire_dropped() {
    sed -n 's/.*dropped=\([0-9]*\).*/\1/p' "$WIRE_STATS" 2>/dev/null || echo 0
}

# --- the server ------------------------------------------------------------------------------

"$BIN" keygen --secret-file "$SECRET" >/dev/null
mkdir -p "$T/home" "$T/work"
head -c 10485760 /dev/urandom >"$T/work/blob"
SHA_10M="$(sha256sum <"$T/work/blob" | cut -d' ' -f1)"
SHA_4M="$(head -c 4194304 "$T/work/blob" | sha256sum | cut -d' ' -f1)"
SHA_1M="$(head -c 1048576 "$T/work/blob" | sha256sum | cut -d' ' -f1)"

# 0.0.0.0 in a namespace of its own: reachable only over the veth ($NET.1) and the wire ($NET.5).
ip netns exec "$NS_S" env HOME="$T/home" "$BIN" serve --listen "0.0.0.0:$PORT" \
    --secret-file "$SECRET" --workdir "$T/work" >"$LOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "serving on" "$LOG" 2>/dev/null && break; sleep 0.1; done
grep -q "serving on" "$LOG" || { say "the server did not start:"; cat "$LOG"; exit 1; }
say "server pid $SERVER_PID in $NS_S: $(grep -m1 'serving on' "$LOG" | sed 's/^\[[^]]*\] //')"

run_on() {   # run_on ADDR ARGS... : rcmd run from the client namespace, bounded to 120 s
    local addr="$1"; shift
    timeout -k 5 120 ip netns exec "$NS_C" "$BIN" run --secret-file "$SECRET" "$addr" "$@"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

round_trip_ms() {   # median of 7 runs of `true` (each a new connection: TCP, handshake, command)
    local addr="$1" i t0
    for i in 1 2 3 4 5 6 7; do
        t0=$(now_ms)
        run_on "$addr" -n -- true >/dev/null 2>&1 || { echo -1; return; }
        echo $(( $(now_ms) - t0 ))
    done | median
}

basic_suite() {   # basic_suite ADDR LABEL: exactness checks; records one line, 0 if all passed
    local addr="$1" label="$2" bad=() out rc sha t0 ms
    out="$(run_on "$addr" -n -- echo hello across the veth 2>&1)" || bad+=("echo exit $?")
    [ "$out" = "hello across the veth" ] || bad+=("echo gave '$out'")
    t0=$(now_ms)
    sha="$(run_on "$addr" -n -- head -c 10485760 blob | sha256sum | cut -d' ' -f1)"
    ms=$(( $(now_ms) - t0 ))
    [ "$sha" = "$SHA_10M" ] || bad+=("10 MiB sha256 differs")
    sha="$(head -c 1048576 "$T/work/blob" | run_on "$addr" -- sha256sum | cut -d' ' -f1)"
    [ "$sha" = "$SHA_1M" ] || bad+=("1 MiB stdin sha256 differs")
    for code in 0 1 3 42 255; do
        set +e; run_on "$addr" -n -- "exit $code" >/dev/null 2>&1; rc=$?; set -e
        [ "$rc" = "$code" ] || bad+=("exit $code gave $rc")
    done
    set +e
    run_on "$addr" -n -- 'echo to-out; echo to-err >&2; echo more-out; exit 7' >"$T/b.out" 2>"$T/b.err"
    rc=$?; set -e
    [ "$rc" = 7 ] && [ "$(cat "$T/b.out")" = "$(printf 'to-out\nmore-out')" ] &&
        [ "$(cat "$T/b.err")" = "to-err" ] ||
        bad+=("stderr separation: rc $rc, stdout '$(tr '\n' '|' <"$T/b.out")', stderr '$(tr '\n' '|' <"$T/b.err")'")
    if [ ${#bad[@]} = 0 ]; then
        record pass "1 basic ($label)" "echo, 10 MiB out (sha256 ok, ${ms} ms), 1 MiB stdin (sha256 ok), exits 0 1 3 42 255, stdout/stderr apart"
    else
        record fail "1 basic ($label)" "$(IFS=';'; echo "${bad[*]}")"
    fi
}

# --- 1. basic --------------------------------------------------------------------------------

if wanted 1; then
    say "check 1: basics over the veth (MTU $(ip -n "$NS_C" -o link show "$VC" | sed -n 's/.* mtu \([0-9]*\).*/\1/p'))"
    basic_suite "$SRV" "veth"
    RTT0=$(round_trip_ms "$SRV")
    record info "1 round trip, veth" "rcmd run -- true: median ${RTT0} ms of 7 (each: ip netns exec, TCP connect, handshake, command)"
    if [ "$HAVE_NETEM" = 1 ]; then
        ip netns exec "$NS_C" tc qdisc add dev "$VC" root netem delay 50ms
        DADDR="$SRV"; DHOW="tc netem delay 50ms on $VC"
    elif [ "$HAVE_WIRE" = 1 ]; then
        RTTW=$(round_trip_ms "$WSRV")
        record info "1 round trip, wire, no delay" "median ${RTTW} ms of 7 (the userspace relay's own cost)"
        wire_set c2s_delay=0.05
        DADDR="$WSRV"; DHOW="userspace wire, 50 ms on client->server"
    else
        DADDR=""
    fi
    if [ -n "$DADDR" ]; then
        say "check 1: with 50 ms of delay ($DHOW)"
        RTT50=$(round_trip_ms "$DADDR")
        basic_suite "$DADDR" "50 ms delay"
        base=$RTT0; [ "$HAVE_NETEM" = 1 ] || base=$RTTW
        record info "1 round trip, 50 ms delay" "median ${RTT50} ms of 7: +$((RTT50 - base)) ms = $(awk -v d=$((RTT50 - base)) 'BEGIN { printf "%.1f", d / 50 }') round trips of 50 ms"
        if [ "$HAVE_NETEM" = 1 ]; then ip netns exec "$NS_C" tc qdisc del dev "$VC" root; else wire_set; fi
    else
        record fail "1 delay" "neither netem nor the userspace wire available"
    fi
fi

# --- 2. corruption, duplication, reordering --------------------------------------------------

transfers() {   # transfers ADDR LABEL COUNT CAP_SECS: streams both ways, classifies each
    local addr="$1" label="$2" count="$3" cap="$4" start i rc sha size
    local exact=0 integrity=0 wrong=0 other=0 details=() log0
    log0=$(stat -c %s "$LOG")
    start=$(now_ms)
    for i in $(seq "$count"); do
        if [ $(( $(now_ms) - start )) -gt $((cap * 1000)) ]; then break; fi
        set +e
        if [ $((i % 2)) = 1 ]; then      # 4 MiB of output to the client
            timeout -k 5 60 ip netns exec "$NS_C" "$BIN" run --secret-file "$SECRET" "$addr" \
                -n -- head -c 4194304 blob >"$T/t.out" 2>"$T/t.err"
            rc=$?; set -e
            sha="$(sha256sum <"$T/t.out" | cut -d' ' -f1)"
            size=$(stat -c %s "$T/t.out")
            if [ "$rc" = 0 ] && [ "$sha" = "$SHA_4M" ]; then exact=$((exact + 1)); continue; fi
            # Whatever arrived must be a prefix of the right bytes.
            if [ "$size" -gt 4194304 ] || ! cmp -s -n "$size" "$T/t.out" "$T/work/blob"; then
                wrong=$((wrong + 1)); details+=("#$i out: WRONG BYTES (rc $rc, $size bytes)"); continue
            fi
        else                              # 4 MiB of stdin to the command
            head -c 4194304 "$T/work/blob" >"$T/t.in"
            timeout -k 5 60 ip netns exec "$NS_C" "$BIN" run --secret-file "$SECRET" "$addr" \
                -- sha256sum <"$T/t.in" >"$T/t.out" 2>"$T/t.err"
            rc=$?; set -e
            sha="$(cut -d' ' -f1 <"$T/t.out")"
            if [ "$rc" = 0 ] && [ "$sha" = "$SHA_4M" ]; then exact=$((exact + 1)); continue; fi
            if [ -n "$sha" ] && [ "$sha" != "$SHA_4M" ]; then
                wrong=$((wrong + 1)); details+=("#$i in: THE COMMAND GOT WRONG BYTES (rc $rc)"); continue
            fi
        fi
        if [ "$rc" = 255 ] && grep -qi integrity "$T/t.err"; then
            integrity=$((integrity + 1)); details+=("#$i: $(tail -n1 "$T/t.err")")
        else
            other=$((other + 1)); details+=("#$i: rc $rc: $(tail -n1 "$T/t.err" 2>/dev/null)")
        fi
    done
    local n=$((exact + integrity + wrong + other)) secs_used
    secs_used=$(secs $(( $(now_ms) - start )))
    local srv_integrity
    srv_integrity=$(tail -c +"$((log0 + 1))" "$LOG" | grep -ci integrity || true)
    local stats=""
    sleep 0.7   # the relay writes its counts every 0.5 s
    [ -f "$WIRE_STATS" ] && [[ "$label" == *wire* ]] && stats="; wire: $(cat "$WIRE_STATS")"
    local text="$n transfers of 4 MiB in ${secs_used} s: exact $exact, integrity error $integrity, wrong bytes $wrong, other $other; server log lines naming integrity: $srv_integrity$stats"
    for d in ${details[@]+"${details[@]}"}; do say "  $d"; done
    if [ "$wrong" -gt 0 ] || [ "$other" -gt 0 ] || [ "$n" = 0 ]; then
        record fail "2 $label" "$text"
    else
        record pass "2 $label" "$text"
    fi
    LAST_INTEGRITY=$integrity
}

if wanted 2; then
    if [ "$HAVE_NETEM" = 1 ]; then
        say "check 2: netem corrupt 2% duplicate 1% reorder 25% (delay 1ms) on both veth ends"
        for end in "$NS_S $VS" "$NS_C $VC"; do
            set -- $end
            ip netns exec "$1" tc qdisc add dev "$2" root netem corrupt 2% duplicate 1% reorder 25% delay 1ms
        done
        transfers "$SRV" "netem corrupt/dup/reorder" 16 90
        heal
    elif [ "$HAVE_WIRE" = 1 ]; then
        say "check 2: wire corrupt 2% (one bit, as netem) duplicate 1% reorder 5% both ways"
        wire_set corrupt=0.02 duplicate=0.01 reorder=0.05
        transfers "$WSRV" "wire corrupt/dup/reorder" 16 90
        wire_set
    else
        record fail "2 corruption" "neither netem nor the userspace wire available"
    fi
    if [ "$HAVE_WIRE" = 1 ]; then
        # One segment in 3,000 (about one per 4 MiB transfer) with two payload words swapped:
        # TCP's checksum cannot see it, so it reaches rcmd's decoder, whose tag must refuse it.
        say "check 2: wire with checksum-neutral corruption (1 segment in 3000: two payload words swapped)"
        wire_set swap=0.000333
        transfers "$WSRV" "wire checksum-neutral" 16 90
        wire_set
        if [ "$LAST_INTEGRITY" = 0 ]; then
            say "  (no transfer was hit this time: the swap is random)"
        fi
    else
        record info "2 checksum-neutral" "skipped: needs the userspace wire"
    fi
fi

# --- 3-5. the cable pulled -------------------------------------------------------------------

# Finds, in the server namespace only, the processes whose whole command line is $1.
srv_pids() {
    local ns_pids
    ns_pids=" $(ip netns pids "$NS_S" | tr '\n' ' ') "
    for pid in $(pgrep -f -x -- "$1" || true); do
        [[ "$ns_pids" == *" $pid "* ]] && echo "$pid"
    done
    return 0
}

log_ms() {   # the time of a server log line, in ms since the epoch
    date -d "$(sed -n 's/^\[\([^ ]*\) .*/\1/p' <<<"$1")" +%s%3N
}

# cable_check N NAME CUT COMMAND PATTERN... : starts `rcmd run -- COMMAND` in the client
# namespace, waits until the processes PATTERN... run in the server's, cuts the link (CUT: both,
# server), and measures until the server's log says the connection is gone, the processes are
# gone and the client has exited.
cable_check() {
    local n="$1" name="$2" how="$3" limit="$4" command="$5"; shift 5
    local patterns=("$@") pids=() p t0 peer log0 client rc addr="$SRV" count=dropped_count
    if [ "$how" = wire ]; then addr="$WSRV"; count=wire_dropped; fi
    say "check $n: $name"
    local tries=0
    until run_on "$addr" -n -- true >/dev/null 2>&1; do   # the link is back after the last cut
        tries=$((tries + 1))
        if [ "$tries" -ge 10 ]; then record fail "$n $name" "no command gets through before the cut"; return; fi
        sleep 1
    done
    log0=$(stat -c %s "$LOG")
    ip netns exec "$NS_C" "$BIN" run --secret-file "$SECRET" "$addr" -n -- "$command" \
        >/dev/null 2>"$T/c$n.err" &
    client=$!; CLIENT_PIDS+=("$client")
    for _ in $(seq 100); do
        pids=()
        for p in "${patterns[@]}"; do pids+=($(srv_pids "$p")); done
        [ ${#pids[@]} -ge ${#patterns[@]} ] && break
        sleep 0.1
    done
    if [ ${#pids[@]} -lt ${#patterns[@]} ]; then
        record fail "$n $name" "the command did not start: $(tail -c +"$((log0 + 1))" "$LOG" | tail -n 3 | tr '\n' ' ') $(cat "$T/c$n.err")"
        kill -KILL "$client" 2>/dev/null || true
        return
    fi
    COMMAND_PIDS+=("${pids[@]}")
    peer="$(tail -c +"$((log0 + 1))" "$LOG" | grep -F -- "$command" | grep -m1 -o '^\[[^]]*\] [^ ]*: command' | sed 's/^\[[^]]*\] //; s/: command$//')"
    sleep 3   # the connection is quiet, or the output is streaming
    local dropped0
    dropped0=$($count)
    cut_link "$how"
    t0=$(now_ms)
    [ "$how" != wire ] || dropped0=0
    say "  cut ($how) at $(date -u +%T); server processes ${pids[*]}, client pid $client, peer $peer; README: about 120 s; waiting up to $limit s"
    local t_log="" t_gone="" t_client="" line="" killed="" alive last_say=0 el
    while :; do
        el=$(( $(now_ms) - t0 ))
        if [ -z "$t_log" ]; then
            line="$(tail -c +"$((log0 + 1))" "$LOG" | grep -F -- "$peer: " | grep -m1 -E ': (connection lost|disconnected)' || true)"
            if [ -n "$line" ]; then
                t_log=$(( $(log_ms "$line") - t0 ))
                killed="$(tail -c +"$((log0 + 1))" "$LOG" | grep -F -- "$peer: command" | grep -m1 -E 'killed|ended' || true)"
                say "  server log after $(secs "$t_log") s: ${line#*] }"
                [ -z "$killed" ] || say "  server log: ${killed#*] }"
            fi
        fi
        if [ -z "$t_gone" ]; then
            alive=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
            if [ "$alive" = 0 ]; then t_gone=$el; say "  command processes gone after $(secs "$t_gone") s"; fi
        fi
        if [ -z "$t_client" ] && ! kill -0 "$client" 2>/dev/null; then
            set +e; wait "$client"; rc=$?; set -e
            t_client=$el
            say "  client exited $rc after $(secs "$t_client") s: $(tail -n1 "$T/c$n.err")"
        fi
        if [ -n "$t_log" ] && [ -n "$t_gone" ] && [ -n "$t_client" ]; then break; fi
        if [ "$el" -gt $((limit * 1000)) ]; then break; fi
        if [ $((el / 30000)) -gt "$last_say" ]; then
            last_say=$((el / 30000)); say "  ... $((el / 1000)) s, $(( $($count) - dropped0 )) packets dropped so far"
        fi
        sleep 0.5
    done
    local dropped
    dropped=$(( $($count) - dropped0 ))
    [ "$how" != wire ] || dropped=$($count)   # the wire's counts start again at each change
    heal
    local bad=() text
    text="server log $( [ -n "$t_log" ] && echo "$(secs "$t_log") s" || echo "none in $limit s"), command gone $( [ -n "$t_gone" ] && echo "$(secs "$t_gone") s" || echo "NOT in $limit s"), client exit $( [ -n "$t_client" ] && echo "$rc after $(secs "$t_client") s" || echo "NOT in $limit s"); $dropped packets dropped"
    [ -n "$t_gone" ] || bad+=(command)
    [ -n "$t_log" ] || bad+=(log)
    if [ -z "$t_client" ]; then bad+=(client); elif [ "$rc" != 255 ]; then bad+=("client exit $rc"); fi
    [ -z "$t_client" ] || [ -s "$T/c$n.err" ] || bad+=("client said nothing")
    # The handshake was over minutes before: a message about it misleads whoever reads it.
    if [ -n "$t_client" ] && grep -qi handshake "$T/c$n.err"; then
        bad+=("client's message blames the handshake, which was long over")
    fi
    if [ ${#bad[@]} = 0 ]; then record pass "$n $name" "$text"; else record fail "$n $name" "$text [failed: ${bad[*]}]"; fi
    kill -KILL "$client" 2>/dev/null || true
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

M="$$"
if wanted 3; then
    # Two sleeps, one in the background: the whole tree must go.
    cable_check 3 "cable pulled, silent command" both 180 \
        "sleep 999.${M}31 & sleep 999.${M}32; wait" "sleep 999.${M}31" "sleep 999.${M}32"
fi
if wanted 4; then
    cable_check 4 "cable pulled, output streaming" both 200 \
        "yes rcmd-netns-${M}-stream" "yes rcmd-netns-${M}-stream"
fi
if wanted 4 && [ "$HAVE_WIRE" = 1 ]; then
    # The same over the point-to-point wire: no ARP, so no "host unreachable" of the sender's own
    # making, as for a peer behind a router.
    cable_check 4w "cable pulled, output streaming, wire" wire 200 \
        "yes rcmd-netns-${M}-wire" "yes rcmd-netns-${M}-wire"
fi
if wanted 5; then
    cable_check 5 "server's packets dropped (client's view)" server 180 \
        "sleep 999.${M}5" "sleep 999.${M}5"
fi

# --- summary ---------------------------------------------------------------------------------

echo
say "summary (binary $BIN; netem $( [ "$HAVE_NETEM" = 1 ] && echo yes || echo no); wire $( [ "$HAVE_WIRE" = 1 ] && echo yes || echo no))"
for line in "${SUMMARY[@]}"; do say "  $line"; done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    say "  server still running: pid $SERVER_PID, children: $(pgrep -P "$SERVER_PID" | wc -l)"
else
    say "  SERVER DIED"; FAILURES=$((FAILURES + 1))
fi
if [ "$FAILURES" -gt 0 ]; then
    say "FAILED: $FAILURES check(s)"
    exit 1
fi
say "all checks passed"
