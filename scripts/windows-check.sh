#!/usr/bin/env bash
# windows-check.sh: build rcmd for Windows on Debian/Ubuntu x86_64 and test it under Wine.
#
#   scripts/windows-check.sh          everything below, in order (what .ci/run calls)
#   scripts/windows-check.sh setup    install packages, locales and the Wine prefix (idempotent)
#   scripts/windows-check.sh build    build the Windows rcmd.exe (release)
#   scripts/windows-check.sh test     run the library's unit tests as Windows programs under Wine
#   scripts/windows-check.sh e2e      rcmd.exe serves under Wine; the Linux client checks that
#                                     Chinese from `cmd` (code page 936) arrives as UTF-8
#   scripts/windows-check.sh env      print the environment used, as `export` lines
#
# How: Debian's rustc-web, cargo-web and rust-web-src (1.96) build the Windows standard library
# from source (-Zbuild-std, allowed on a stable compiler by RUSTC_BOOTSTRAP=1), MinGW links,
# Wine 8 runs. Target x86_64-win7-windows-gnu: the std of x86_64-pc-windows-gnu needs
# ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks. Wine runs with
# LC_ALL=zh_CN.UTF-8, so its code pages are 936 (GBK) and `cmd` writes GBK to pipes, as on a
# Chinese Windows. Needs root to install packages (apt-get) unless they are installed already;
# needs no terminal and no display. Builds into target/windows. See docs/windows.md.
#
# Overridable: RCMD_WINEPREFIX (default /tmp/rcmd-wine), RCMD_WINDOWS_CARGO_HOME (default
# ~/.cargo-windows), RCMD_WINDOWS_TARGET_DIR (default target/windows), RCMD_WINDOWS_PROFILE
# (default release, for the .exe and the unit tests alike, so std is built once; or dev).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TARGET=x86_64-win7-windows-gnu
PACKAGES="rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine64 wine locales procps"
MIN_RUSTC=1.88 # encoding_rs 0.8.44 needs 1.88; Debian's older 1.85 also lacks rsbegin.o
PROFILE=${RCMD_WINDOWS_PROFILE:-release}
TARGET_DIR=${RCMD_WINDOWS_TARGET_DIR:-$ROOT/target/windows}
# The Linux toolchain of the caller (rustup's, in CI), for the Linux client; saved before
# `setup_env` puts Debian's first on PATH.
LINUX_CARGO=$(command -v cargo || true)
LINUX_PATH=$PATH

log() { echo "[windows-check] $*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

setup_env() {
    # Debian's toolchain first on PATH: rustup's cargo would otherwise win, and it has no
    # Windows std and cannot build one.
    export PATH=/usr/bin:/bin:/usr/sbin:/sbin
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo
    export RUSTC_BOOTSTRAP=1
    unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_BUILD_TARGET \
        CARGO_ENCODED_RUSTFLAGS RUSTFLAGS RUSTDOCFLAGS CARGO_BUILD_RUSTC CARGO_TARGET_DIR
    # A cargo home of its own: no waiting on the package cache lock of a parallel Linux build.
    export CARGO_HOME=${RCMD_WINDOWS_CARGO_HOME:-${HOME:-/root}/.cargo-windows}
    export CARGO_TERM_COLOR=never
    export CARGO_TARGET_X86_64_WIN7_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
    export CARGO_TARGET_X86_64_WIN7_WINDOWS_GNU_RUNNER=wine
    export WINEPREFIX=${RCMD_WINEPREFIX:-/tmp/rcmd-wine}
    export WINEDEBUG=-all # also silences the "wine32 is missing" hint
    export WINEARCH=win64
    export WINEDLLOVERRIDES="mscoree,mshtml=" # no Mono/Gecko install prompts
    export DEBIAN_FRONTEND=noninteractive
    unset DISPLAY WAYLAND_DISPLAY
    # Chinese code pages in Wine: GetOEMCP() = GetACP() = 936 and `cmd` writes GBK.
    if locale -a 2>/dev/null | grep -qix 'zh_CN.utf8'; then export LC_ALL=zh_CN.UTF-8; fi
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

cmd_setup() {
    setup_env
    local missing="" p
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        log "installing:$missing"
        [ "$(id -u)" = 0 ] || die "need root to install:$missing"
        command -v apt-get >/dev/null || die "no apt-get: install$missing yourself"
        export DEBIAN_FRONTEND=noninteractive # no debconf questions: CI has no terminal
        apt-get update -qq </dev/null
        # One call, so that rust-web-src matches rustc-web exactly.
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $PACKAGES </dev/null >/dev/null
    fi
    local rustc cargo
    rustc=$(/usr/bin/rustc --version | awk '{print $2}')
    cargo=$(/usr/bin/cargo --version | awk '{print $2}')
    version_ge "$rustc" "$MIN_RUSTC" || die "Debian's rustc $rustc is older than $MIN_RUSTC"
    [ "$rustc" = "$cargo" ] || log "warning: rustc $rustc and cargo $cargo differ"
    [ -d /usr/lib/rustlib/src/rust/library/std ] || die "rust-web-src is missing"

    if ! locale -a 2>/dev/null | grep -qix 'zh_CN.utf8'; then
        log "generating the zh_CN.UTF-8 locale"
        localedef -i zh_CN -f UTF-8 zh_CN.UTF-8 || die "localedef zh_CN.UTF-8"
    fi
    export LC_ALL=zh_CN.UTF-8

    if [ ! -f "$WINEPREFIX/system.reg" ]; then
        log "creating the Wine prefix $WINEPREFIX"
        mkdir -p "$(dirname "$WINEPREFIX")"
        wineboot -i </dev/null >/dev/null 2>&1 || true
        wineserver -w
        [ -f "$WINEPREFIX/system.reg" ] || die "wineboot did not create $WINEPREFIX"
    fi
    log "ready: rustc $rustc, $(wine --version), prefix $WINEPREFIX, LC_ALL=$LC_ALL"
}

windows_cargo() { # windows_cargo SUBCOMMAND ARGS...: Debian's cargo for the Windows target
    local profile=()
    [ "$PROFILE" = dev ] || profile=(--profile "$PROFILE")
    # std,test: what `cargo test` builds anyway. Naming `test` for `build` too gives the
    # standard library, and so every dependency, the same identity in both: built once.
    CARGO_TARGET_DIR=$TARGET_DIR /usr/bin/cargo "$1" -Zbuild-std=std,test --target "$TARGET" \
        "${profile[@]}" "${@:2}" </dev/null
}

exe_path() {
    local dir=$PROFILE
    [ "$PROFILE" = dev ] && dir=debug
    echo "$TARGET_DIR/$TARGET/$dir/rcmd.exe"
}

cmd_build() {
    log "building rcmd.exe ($PROFILE)"
    # With the examples, which may use dev-dependencies, cargo resolves the dependencies'
    # features as for the unit tests, so `test` can reuse them.
    windows_cargo build --bin rcmd --examples
    log "built $(exe_path)"
}

cmd_test() {
    log "running the unit tests under Wine ($PROFILE)"
    # RCMD_EXPECT_OEMCP: the platform tests check that Wine really has code page 936.
    RCMD_EXPECT_OEMCP=936 windows_cargo test --lib
}

# The end-to-end check: the Windows server under Wine, the Linux client.
SERVER_PID=""
E2E_DIR=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    [ -z "$E2E_DIR" ] || rm -rf "$E2E_DIR"
}

# expect NAME EXPECTED_EXIT EXPECTED_STDOUT EXPECTED_STDERR CMD: run CMD on the server with the
# Linux client and compare exit code, stdout and stderr byte for byte (printf formats).
expect() {
    local name=$1 code=$2 out=$3 err=$4 cmd=$5 got=0
    # stdin: the caller's (a here-string for the stdin check), else empty.
    "$CLIENT" run "$ADDR" --secret-file "$E2E_DIR/secret" -- "$cmd" \
        >"$E2E_DIR/stdout" 2>"$E2E_DIR/stderr" || got=$?
    # shellcheck disable=SC2059
    printf "$out" >"$E2E_DIR/want-stdout"
    # shellcheck disable=SC2059
    printf "$err" >"$E2E_DIR/want-stderr"
    local ok=1
    [ "$got" = "$code" ] || { log "$name: exit code $got, expected $code"; ok=0; }
    cmp -s "$E2E_DIR/stdout" "$E2E_DIR/want-stdout" || { log "$name: stdout differs"; ok=0; }
    cmp -s "$E2E_DIR/stderr" "$E2E_DIR/want-stderr" || { log "$name: stderr differs"; ok=0; }
    if [ "$ok" = 0 ]; then
        log "command: $cmd"
        for f in stdout want-stdout stderr want-stderr; do
            log "$f:"
            od -c "$E2E_DIR/$f" | head -20 >&2
        done
        log "server log:"
        tail -20 "$E2E_DIR/server.log" >&2
        die "$name"
    fi
    log "ok: $name"
    sed 's/^/    | /' "$E2E_DIR/stdout" >&2
    [ ! -s "$E2E_DIR/stderr" ] || sed 's/^/    |2 /' "$E2E_DIR/stderr" >&2
}

cmd_e2e() {
    exec </dev/null # no stdin for the client unless a check gives one
    # The Linux client, built with the caller's toolchain (in CI already built by `cargo test`).
    log "building the Linux client"
    if [ -n "$LINUX_CARGO" ]; then
        (PATH=$LINUX_PATH && unset CARGO RUSTC RUSTDOC RUSTC_BOOTSTRAP CARGO_HOME &&
            "$LINUX_CARGO" build --quiet --bin rcmd </dev/null)
        CLIENT=$ROOT/target/debug/rcmd
    else
        CARGO_TARGET_DIR=$TARGET_DIR /usr/bin/cargo build --quiet --bin rcmd </dev/null
        CLIENT=$TARGET_DIR/debug/rcmd
    fi
    [ -x "$CLIENT" ] || die "no Linux client at $CLIENT"
    local exe
    exe=$(exe_path)
    [ -f "$exe" ] || die "no $exe: run the build step first"

    trap cleanup EXIT
    E2E_DIR=$(mktemp -d /tmp/rcmd-windows-e2e.XXXXXX)
    "$CLIENT" keygen --secret-file "$E2E_DIR/secret" >/dev/null 2>&1
    # A folder with a Chinese name holding a file with a Chinese name, for `dir`.
    mkdir "$E2E_DIR/目录"
    printf 'hello\r\n' >"$E2E_DIR/目录/测试文件.txt"
    local win_dir win_secret
    win_dir=$(winepath -w "$E2E_DIR/目录")        # Z:\tmp\rcmd-windows-e2e.XXXXXX\目录
    win_secret=$(winepath -w "$E2E_DIR/secret")
    # --workdir: a command's start directory, given as a Windows path.
    log "starting rcmd.exe serve under Wine"
    # /usr/bin/wine execs the loader: $! is the Windows program's own process.
    wine "$exe" serve --listen 127.0.0.1:0 --secret-file "$win_secret" --workdir "$win_dir" \
        </dev/null >"$E2E_DIR/server.out" 2>"$E2E_DIR/server.log" &
    SERVER_PID=$!
    ADDR=""
    for _ in $(seq 600); do
        ADDR=$(sed -n 's/^listening on //p' "$E2E_DIR/server.out" | tr -d '\r')
        [ -z "$ADDR" ] || break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$E2E_DIR/server.log" >&2; die "the server exited"; }
        sleep 0.1
    done
    [ -n "$ADDR" ] || { cat "$E2E_DIR/server.log" >&2; die "the server did not say where it listens"; }
    log "rcmd.exe (pid $SERVER_PID) listens on $ADDR: $(head -n1 "$E2E_DIR/server.log")"

    # `cmd` writes GBK (c4 e3 ba c3 for 你好); the client must get UTF-8.
    expect "echo 你好 arrives as UTF-8" 0 '你好\r\n' '' 'echo 你好'
    # `dir` of a folder with a Chinese name holding 测试文件.txt: dir's own Chinese text
    # (驱动器, 目录) is GBK from cmd too. Checked by lines, as sizes and dates vary.
    expect_dir "$win_dir"
    expect "stderr separate and decoded, exit code 3" 3 'out\r\n' '错误\r\n' \
        'echo out& echo 错误>&2& exit 3'
    # `auto` is per line: a program writing UTF-8 (here cmd itself after chcp 65001) in the
    # same command as GBK output comes out right too.
    expect "GBK and UTF-8 lines in one command" 0 '你好\r\n你好\r\n' '' \
        'echo 你好& chcp 65001 >nul& echo 你好'
    expect "the working directory" 0 '测试文件.txt\r\n' '' 'dir /b'
    expect_unknown_command
    expect_cd_as_cmd_reads_it "$(winepath -w "$E2E_DIR")"
    expect_cd_home
    expect "stdin reaches the command" 0 'got abc\r\n' '' 'set /p LINE=& call echo got %LINE%' \
        <<<'abc'
    expect_timeout
    expect_shutdown_on_ctrl_c

    cleanup
    SERVER_PID=""
    E2E_DIR=""
    trap - EXIT
    log "end-to-end check passed"
}

expect_dir() {
    local win_dir=$1 got=0
    "$CLIENT" run "$ADDR" --secret-file "$E2E_DIR/secret" -- "dir \"$win_dir\"" \
        >"$E2E_DIR/stdout" 2>"$E2E_DIR/stderr" </dev/null || got=$?
    local fail=""
    [ "$got" = 0 ] || fail="exit code $got"
    grep -q ' 测试文件\.txt' "$E2E_DIR/stdout" || fail="$fail; no 测试文件.txt"
    grep -qF "$win_dir" "$E2E_DIR/stdout" || fail="$fail; no $win_dir"
    check_utf8 "$E2E_DIR/stdout" || fail="$fail; not clean UTF-8"
    if [ -n "$fail" ]; then
        od -c "$E2E_DIR/stdout" | head -40 >&2
        die "dir: ${fail#; }"
    fi
    log "ok: dir of a Chinese folder"
    sed 's/^/    | /' "$E2E_DIR/stdout" >&2
}

# cmd's message for an unknown command is GBK on stderr (its wording varies between Windows
# and Wine versions), and its code 9009 is more than an exit code can hold locally: 1.
expect_unknown_command() {
    local got=0
    "$CLIENT" run "$ADDR" --secret-file "$E2E_DIR/secret" -- nosuchcommand \
        >"$E2E_DIR/stdout" 2>"$E2E_DIR/stderr" </dev/null || got=$?
    local fail=""
    [ "$got" = 1 ] || fail="exit code $got, expected 1"
    [ ! -s "$E2E_DIR/stdout" ] || fail="$fail; output on stdout"
    grep -q 'nosuchcommand' "$E2E_DIR/stderr" || fail="$fail; no message on stderr"
    grep -qP '[\x{4e00}-\x{9fff}]' "$E2E_DIR/stderr" || fail="$fail; no Chinese in the message"
    check_utf8 "$E2E_DIR/stderr" || fail="$fail; not clean UTF-8"
    if [ -n "$fail" ]; then
        od -c "$E2E_DIR/stderr" | head -20 >&2
        die "unknown command: ${fail#; }"
    fi
    log "ok: an unknown command: cmd's Chinese error message on stderr"
    sed 's/^/    |2 /' "$E2E_DIR/stderr" >&2
}

# The prompt's `cd` as a Windows administrator types it: `cd..` climbs (no blank needed, as in
# cmd), `cd` alone shows the directory, and `cd %TEMP%`, which only cmd could expand and where
# it would not last, is refused with the reason.
expect_cd_as_cmd_reads_it() {
    local parent=$1 got=0
    printf 'cd..\ncd\ncd %%TEMP%%\ncd\n' | "$CLIENT" connect "$ADDR" --secret-file "$E2E_DIR/secret" \
        >"$E2E_DIR/stdout" 2>"$E2E_DIR/stderr" || got=$?
    local fail=""
    [ "$got" = 0 ] || fail="exit code $got"
    [ "$(cat "$E2E_DIR/stdout")" = "$(printf '%s\r\n%s\r' "$parent" "$parent")" ] ||
        fail="$fail; stdout is not the parent directory twice"
    grep -q 'cd: a variable (%NAME%) needs the shell' "$E2E_DIR/stderr" ||
        fail="$fail; no refusal of cd %TEMP%"
    if [ -n "$fail" ]; then
        od -c "$E2E_DIR/stdout" | head -20 >&2
        cat "$E2E_DIR/stderr" >&2
        die "cd: ${fail#; }"
    fi
    log "ok: cd.. climbs, cd shows the directory, cd %TEMP% is refused"
}

# `cd ~\DIR` at a Windows prompt is DIR in the home directory (%USERPROFILE%), as `cd ~/DIR`
# is on Unix: `cd ~\.` then `cd` shows the same path as `echo %USERPROFILE%`.
expect_cd_home() {
    local got=0
    printf 'cd ~\\.\ncd\necho %%USERPROFILE%%\n' |
        "$CLIENT" connect "$ADDR" --secret-file "$E2E_DIR/secret" \
            >"$E2E_DIR/stdout" 2>"$E2E_DIR/stderr" || got=$?
    local shown home
    shown=$(sed -n 1p "$E2E_DIR/stdout" | tr -d '\r')
    home=$(sed -n 2p "$E2E_DIR/stdout" | tr -d '\r')
    if [ "$got" != 0 ] || [ -z "$home" ] || [ "$shown" != "$home" ]; then
        od -c "$E2E_DIR/stdout" | head -20 >&2
        cat "$E2E_DIR/stderr" >&2
        die "cd ~\\.: exit code $got, showed '$shown', home '$home'"
    fi
    log "ok: cd ~\\. goes to the home directory ($home)"
}

# Valid UTF-8 and no U+FFFD (what a wrong decoding would leave).
check_utf8() {
    iconv -f UTF-8 -t UTF-8 "$1" >/dev/null 2>&1 && ! grep -q $'\xef\xbf\xbd' "$1"
}

expect_timeout() {
    local got=0 started=$SECONDS
    "$CLIENT" run "$ADDR" --secret-file "$E2E_DIR/secret" --timeout 1 -- \
        'ping -n 60 127.0.0.1 | more' >/dev/null 2>"$E2E_DIR/stderr" </dev/null || got=$?
    [ "$got" = 124 ] || die "timeout: exit code $got, expected 124"
    [ $((SECONDS - started)) -lt 15 ] || die "timeout: the command was not killed in time"
    log "ok: --timeout 1 kills the process tree (exit code 124)"
}

# Wine turns SIGINT into a console Ctrl-C event: the server stops gracefully and the command it
# was running dies with its Job Object.
expect_shutdown_on_ctrl_c() {
    local marker='ping -n 4321 127.0.0.1' i
    "$CLIENT" run "$ADDR" --secret-file "$E2E_DIR/secret" -- "$marker | more" \
        >/dev/null 2>&1 </dev/null &
    local client=$!
    for i in $(seq 200); do
        grep -q "$marker" "$E2E_DIR/server.log" && break
        sleep 0.1
    done
    grep -q "$marker" "$E2E_DIR/server.log" || die "Ctrl-C: the command did not start"
    # Wine shows a Windows process's command line as its Linux one.
    for i in $(seq 100); do
        pgrep -f "^$marker" >/dev/null && break
        sleep 0.1
    done
    pgrep -f "^$marker" >/dev/null || die "Ctrl-C: cannot see the command's ping"
    kill -INT "$SERVER_PID"
    for i in $(seq 150); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    ! kill -0 "$SERVER_PID" 2>/dev/null || die "Ctrl-C: the server still runs after 15 s"
    wait "$SERVER_PID" || die "Ctrl-C: the server exited with status $?"
    SERVER_PID=""
    grep -q 'received a console control event' "$E2E_DIR/server.log" ||
        die "Ctrl-C: not logged as a console control event"
    grep -q 'shut down' "$E2E_DIR/server.log" || die "Ctrl-C: no graceful shutdown"
    wait "$client" || true
    for i in $(seq 50); do
        pgrep -f "^$marker" >/dev/null || break
        sleep 0.1
    done
    ! pgrep -f "^$marker" >/dev/null || die "Ctrl-C: the command's ping still runs"
    log "ok: Ctrl-C stops the server gracefully and kills the running command"
}

cmd_env() {
    setup_env
    export -p | sed 's/^declare -x /export /' |
        grep -E ' (PATH|RUSTC|RUSTDOC|CARGO|RUSTC_BOOTSTRAP|CARGO_HOME|CARGO_TARGET_[A-Z0-9_]+|WINE[A-Z]*|LC_ALL)='
}

timed() { # timed STEP: run cmd_STEP and log how long it took
    local started=$SECONDS
    "cmd_$1"
    log "$1: $((SECONDS - started)) s"
}

main() {
    local step=${1:-all}
    case "$step" in
    setup) cmd_setup ;;
    build | test | e2e) cmd_setup && "cmd_$step" ;;
    env) cmd_env ;;
    all)
        local started=$SECONDS
        timed setup
        timed build
        timed test
        timed e2e
        log "all Windows checks passed in $((SECONDS - started)) s"
        ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown step $step (setup, build, test, e2e, env, or nothing for all)" ;;
    esac
}

main "$@"
