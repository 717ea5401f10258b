//! Helpers shared by the integration tests: start the real `rcmd` binary as a server on
//! 127.0.0.1:0, run clients against it, and look at processes and files afterwards.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn rcmd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rcmd")
}

/// Whether `python3` runs here (tests that use it skip without it; `.ci/run` installs it).
pub fn python3_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A secret file in a temporary directory that lives as long as the value.
pub struct SecretFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl SecretFile {
    pub fn new() -> SecretFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        let status = Command::new(rcmd_bin())
            .args(["keygen", "--secret-file"])
            .arg(&path)
            .stdout(Stdio::null())
            .status()
            .expect("run keygen");
        assert!(status.success());
        SecretFile { dir, path }
    }

    /// A file holding a different secret.
    pub fn other() -> SecretFile {
        SecretFile::new()
    }
}

/// A running `rcmd serve`, killed (and its log kept) when dropped.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub secret: SecretFile,
    log: Arc<Mutex<String>>,
}

impl TestServer {
    /// Takes a started `rcmd serve`: reads the address from its first line of output and
    /// collects its log in the background.
    fn attach(mut child: Child, secret: SecretFile) -> TestServer {
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first_line)
            .expect("server output");
        let addr = first_line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"))
            .parse()
            .expect("address");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        TestServer {
            child,
            addr,
            secret,
            log,
        }
    }

    /// Starts `rcmd serve --listen 127.0.0.1:0` with a fresh secret and `extra` arguments.
    pub fn start(extra: &[&str]) -> TestServer {
        let secret = SecretFile::new();
        TestServer::start_with(secret, extra)
    }

    pub fn start_with(secret: SecretFile, extra: &[&str]) -> TestServer {
        TestServer::start_configured(secret, extra, |_| {})
    }

    /// [`Self::start_with`], letting `configure` change the server's environment or directory
    /// first.
    pub fn start_configured(
        secret: SecretFile,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> TestServer {
        let mut command = Command::new(rcmd_bin());
        die_with_the_test(&mut command);
        configure(&mut command);
        command.arg("serve");
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let child = command
            .arg("--secret-file")
            .arg(&secret.path)
            .args(extra)
            .env("RUST_LOG", "debug")
            // The tests read the log's plain layout, whatever the developer's shell asks for.
            .env_remove("RUST_LOG_STYLE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        TestServer::attach(child, secret)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`, up to `timeout`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "server never logged {needle:?}; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `rcmd` client command aimed at this server (subcommand first, e.g. "run").
    pub fn client(&self, subcommand: &str) -> Command {
        let mut command = Command::new(rcmd_bin());
        command
            .arg(subcommand)
            .arg(self.addr.to_string())
            .arg("--secret-file")
            .arg(&self.secret.path);
        command
    }

    /// Runs `rcmd run ADDR -- shell_command` with empty stdin and waits (at most 60 s).
    pub fn run(&self, shell_command: &str) -> Output {
        let mut command = self.client("run");
        command.arg("--").arg(shell_command).stdin(Stdio::null());
        output_within(command, Duration::from_secs(60))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends the signal `name` (as `kill -NAME`) and waits for the exit status.
    #[track_caller]
    pub fn stop_with(&mut self, name: &str) -> ExitStatus {
        signal(self.child.id(), name);
        wait_within(&mut self.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("server did not stop after SIG{name}"))
    }
}

impl Drop for TestServer {
    /// Stops the server as an operator would, with SIGTERM, so that it kills its commands'
    /// process groups on the way out; a SIGKILL would leave a running command (a test's
    /// `sleep 60`) behind, reparented to init. SIGKILL only if it does not stop in time.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            if wait_within(&mut self.child, Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Ties a test server's life to the test that started it: if the test process is killed (a
/// harness's timeout, `cargo mutants` ending a test that hung), the server is killed too rather
/// than left running, orphaned, with no one to stop it. (A mutant that made the loop spin left
/// seven such servers burning a core between them through a whole mutation run.) The signal
/// comes when the thread that started the server ends: each test's own thread, which outlives
/// its `TestServer` anyway. `sh -c 'exec rcmd ...'` keeps it across the `exec`.
pub fn die_with_the_test(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory shared with the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// What a piped child wrote to stderr, read to the end (after it has exited, or it waits).
pub fn stderr_of_child(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

/// A finished command's stderr, as text.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `command` to completion, killing it if it takes longer than `timeout`.
#[track_caller]
pub fn output_within(command: Command, timeout: Duration) -> Output {
    run_within(command, None, timeout)
}

/// Runs `command` with `script` as its stdin (a pipe) and waits for it, at most 60 s.
#[track_caller]
pub fn typed_into(command: Command, script: &str) -> Output {
    run_within(command, Some(script.as_bytes()), Duration::from_secs(60))
}

#[track_caller]
fn run_within(mut command: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn client");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    if let Some(input) = input {
        // Dropped at the end of the statement: the client sees the end of its input.
        let _ = child.stdin.take().unwrap().write_all(input);
    }
    let status = wait_within(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{command:?} did not finish within {timeout:?}");
    });
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Types `script` at `rcmd connect`'s prompt (its stdin a pipe, so no prompts are shown) and
/// waits for it to finish.
#[track_caller]
pub fn at_the_prompt(server: &TestServer, script: &str) -> Output {
    typed_into(server.client("connect"), script)
}

pub fn read_in_background(mut source: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        bytes
    })
}

/// Waits for `child` up to `timeout`; `None` if it is still running.
pub fn wait_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal by name with `kill(1)`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Pids of `sleep` processes whose command line contains `marker` (from
/// [`unique_sleep_marker`]); the clients whose arguments hold the marker too are not counted.
pub fn sleeps_matching(marker: &str) -> Vec<u32> {
    processes_matching(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(b"sleep\0"))
        })
        .collect()
}

/// Waits for a demo (a client and its server in one process) to end, and checks that it died
/// of `signal` and that no `sleep` carrying `marker`, started at its prompt, outlived it.
#[cfg(unix)]
#[track_caller]
pub fn assert_demo_died_of(demo: &mut Child, signal: i32, marker: &str) {
    use std::os::unix::process::ExitStatusExt;
    let status = wait_within(demo, Duration::from_secs(10)).expect("the demo went on");
    assert_eq!(status.signal(), Some(signal), "{status:?}");
    assert!(
        eventually(Duration::from_secs(10), || sleeps_matching(marker)
            .is_empty()),
        "the demo's command outlived it"
    );
}

/// Pids of processes whose command line contains `marker`.
pub fn processes_matching(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

/// The fields of `/proc/<pid>/stat` the tests look at.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub pid: u32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// CPU time used so far, user and system, all threads, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        pid,
        // Fields counted from 1 as in proc(5); `rest` starts at field 3.
        state: fields.first()?.chars().next()?,
        ppid: number(4)? as u32,
        pgrp: number(5)? as u32,
        cpu_ticks: number(14)? + number(15)?, // utime + stime
    })
}

/// The CPU time a process has used so far (all its threads, user and system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = proc_stat(pid).expect("process exists").cpu_ticks;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / per_second as f64
}

/// Every process on the machine, as far as it could be read.
pub fn all_processes() -> Vec<ProcStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// Children of `parent` that are zombies (exited, not reaped).
pub fn zombie_children(parent: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == parent && p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A unique marker for file names, so tests running in parallel never see each other's files.
pub fn unique_marker(name: &str) -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("rcmdtest{}x{}x{name}", std::process::id(), n)
}

/// A unique duration for `sleep` (GNU sleep adds up its arguments), so `sleep 300 MARKER`
/// can be found among all processes by its command line: the marker is a tiny fraction of a
/// second that no other process will have.
pub fn unique_sleep_marker() -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("0.000{}{}7", std::process::id(), n)
}

/// SHA-256 of `bytes`, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A TCP proxy on 127.0.0.1:0 that forwards one connection to `target` and XORs `mask` into
/// the byte at `offset` of one direction, counted from the first byte after the first frame
/// (the client's `auth`, or the server's `hello`), so offset 0 is the first tagged frame's
/// first byte once the handshake is over... for the client direction. Returns its address.
pub struct TamperingProxy {
    pub addr: SocketAddr,
}

/// Which direction a [`TamperingProxy`] corrupts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl TamperingProxy {
    /// Corrupts the byte at `offset` past the handshake frames of `direction`: for the client
    /// direction, past the `auth` frame; for the server direction, past `hello` and `welcome`.
    pub fn start(
        target: SocketAddr,
        direction: Direction,
        offset: usize,
        mask: u8,
    ) -> TamperingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect(target) else {
                return;
            };
            let handshake_frames = match direction {
                Direction::ClientToServer => 1,
                Direction::ServerToClient => 2,
            };
            let pump = |from: TcpStream, to: TcpStream, tamper: Option<(usize, usize, u8)>| {
                thread::spawn(move || copy_tampering(from, to, tamper))
            };
            let (c2s, s2c) = match direction {
                Direction::ClientToServer => (Some((handshake_frames, offset, mask)), None),
                Direction::ServerToClient => (None, Some((handshake_frames, offset, mask))),
            };
            let a = pump(
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                c2s,
            );
            let b = pump(server, client, s2c);
            let _ = a.join();
            let _ = b.join();
        });
        TamperingProxy { addr }
    }
}

/// Copies `from` to `to`; if `tamper` is `(skip_frames, offset, mask)`, skips that many
/// untagged frames (reading their length prefixes) and flips bits at `offset` after them.
fn copy_tampering(mut from: TcpStream, mut to: TcpStream, tamper: Option<(usize, usize, u8)>) {
    let mut seen = Vec::new();
    let mut target: Option<usize> = None;
    let mut done = tamper.is_none();
    let mut buf = [0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let start = seen.len();
        seen.extend_from_slice(&buf[..n]);
        if let (false, Some((skip, offset, _))) = (done, tamper)
            && target.is_none()
        {
            // Walk `skip` untagged handshake frames: u32 prefix + header, no body.
            let mut position = 0;
            let mut complete = true;
            for _ in 0..skip {
                if seen.len() < position + 4 {
                    complete = false;
                    break;
                }
                let len =
                    u32::from_be_bytes(seen[position..position + 4].try_into().unwrap()) as usize;
                position += 4 + len;
            }
            if complete {
                target = Some(position + offset);
            }
        }
        let chunk = &mut buf[..n];
        if let (false, Some(at), Some((_, _, mask))) = (done, target, tamper)
            && at >= start
            && at < start + n
        {
            chunk[at - start] ^= mask;
            done = true;
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Asserts the path does not exist.
#[track_caller]
pub fn assert_absent(path: &Path) {
    assert!(
        !path.exists(),
        "{} exists: a command ran that must not have",
        path.display()
    );
}

/// Asserts that `server` never started a command touching any of `markers`. Not a sleep and a
/// look: the server starts and logs commands in order on one thread, so once a command sent
/// now has been logged, any command wrongly accepted before it has been logged too.
#[track_caller]
pub fn assert_never_ran(server: &TestServer, markers: &[PathBuf]) {
    let sentinel = unique_marker("sentinel");
    let output = server.run(&format!("echo {sentinel}"));
    assert!(output.status.success(), "{}", stderr_of(&output));
    server.wait_for_log(&sentinel, Duration::from_secs(10));
    let log = server.log();
    for marker in markers {
        let name = marker.display().to_string();
        assert!(
            !log.contains(&name),
            "the server started a command with {name}"
        );
        assert_absent(marker);
    }
}

/// A client command like [`TestServer::client`] but with another secret file.
pub fn output_command(server: &TestServer, subcommand: &str, secret: &Path) -> Command {
    let mut command = Command::new(rcmd_bin());
    command
        .arg(subcommand)
        .arg(server.addr.to_string())
        .arg("--secret-file")
        .arg(secret);
    command
}

pub mod raw;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, ...); 0 if unreadable.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(field)?.strip_prefix(':')?;
                value.split_whitespace().next()?.parse().ok()
            })
        })
        .unwrap_or(0)
}

/// Resident memory of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// Children of `parent` (any state), from `/proc/*/stat`.
pub fn child_pids(parent: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == parent)
        .map(|p| p.pid)
        .collect()
}

/// Raises this process's soft open-file limit to at least `wanted` (up to the hard limit), so a
/// test can hold many sockets. Returns the soft limit in force afterwards. (`rlim_t` is unsigned
/// on Linux and signed on the BSDs.)
pub fn raise_nofile_limit(wanted: libc::rlim_t) -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

impl TestServer {
    /// Like [`TestServer::start`], but the server is started by `sh -c '<shell_prefix>; exec
    /// rcmd serve ...'`, e.g. to lower its resource limits with `ulimit`.
    pub fn start_in_shell(shell_prefix: &str, extra: &[&str]) -> TestServer {
        let secret = SecretFile::new();
        let mut script = format!(
            "{shell_prefix}; exec '{}' serve --listen 127.0.0.1:0 --secret-file '{}'",
            rcmd_bin(),
            secret.path.display()
        );
        for arg in extra {
            script.push_str(&format!(" '{arg}'"));
        }
        let mut command = Command::new("sh");
        die_with_the_test(&mut command);
        let child = command
            .arg("-c")
            .arg(&script)
            .env("RUST_LOG", "debug")
            // The tests read the log's plain layout, whatever the developer's shell asks for.
            .env_remove("RUST_LOG_STYLE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        TestServer::attach(child, secret)
    }
}

/// Starts `rcmd run -- "sleep 300 MARKER<rest>"` against `server`, with `stdin` as its stdin
/// and stdout and stderr piped, and waits until the remote `sleep` runs. Returns the client
/// and the marker (for [`sleeps_matching`]).
#[track_caller]
pub fn run_remote_sleep(server: &TestServer, rest: &str, stdin: Stdio) -> (Child, String) {
    let marker = unique_sleep_marker();
    let mut client = server.client("run");
    client.arg("--").arg(format!("sleep 300 {marker}{rest}"));
    client
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = client.spawn().expect("start client");
    let started = eventually(Duration::from_secs(10), || {
        !sleeps_matching(&marker).is_empty()
    });
    assert!(started, "the remote command never started");
    (child, marker)
}
