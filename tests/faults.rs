//! Faults in commands and clients, after OpenSSH's regression suite (stderr-after-eof.sh,
//! broken-pipe.sh, yes-head.sh): children that close stdout and run on, fork daemons that hold
//! the pipes, die by signals or do not exist; clients that stop reading, are killed mid-output
//! or lose their own stdout. Each is reported correctly, and afterwards the server has no zombie
//! children and no leaked file descriptors.

mod util;

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rcmd::protocol::ExitStatus;
use util::raw::{RawClient, load_secret};
use util::*;

const WAIT: Duration = Duration::from_secs(20);

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A server with its idle descriptor count measured after a warm-up command.
struct Watched {
    server: TestServer,
    secret: Vec<u8>,
    idle_fds: usize,
}

impl Watched {
    fn start(extra: &[&str]) -> Watched {
        let server = TestServer::start(extra);
        let secret = load_secret(&server.secret.path);
        assert!(server.run("true").status.success());
        let pid = server.pid();
        // Counted once the warm-up connection is closed, or a leak of one descriptor would
        // hide in the count.
        server.wait_for_log(": disconnected", WAIT);
        let idle_fds = fd_count(pid);
        Watched {
            server,
            secret,
            idle_fds,
        }
    }

    /// No zombies, no children left, and the descriptor count back to idle.
    #[track_caller]
    fn assert_clean(&self) {
        let pid = self.server.pid();
        assert!(
            eventually(WAIT, || zombie_children(pid).is_empty()),
            "zombie children: {:?}",
            zombie_children(pid)
        );
        assert!(
            eventually(WAIT, || child_pids(pid).is_empty()),
            "children left: {:?}",
            child_pids(pid)
        );
        assert!(
            eventually(WAIT, || fd_count(pid) <= self.idle_fds),
            "descriptors: {} open, {} when idle; {:?}",
            fd_count(pid),
            self.idle_fds,
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|dir| dir
                    .flatten()
                    .map(|e| std::fs::read_link(e.path()).unwrap_or_default())
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        );
    }
}

/// Processes running `program` whose command line holds `marker`.
fn programs_matching(program: &str, marker: &str) -> Vec<u32> {
    let prefix = format!("{program}\0");
    processes_matching(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.starts_with(prefix.as_bytes()))
        })
        .collect()
}

#[test]
fn stderr_after_stdout_is_closed_arrives_complete() {
    // OpenSSH's stderr-after-eof.sh and stderr-data.sh: the child closes stdout first, then
    // writes a lot to stderr and runs on; every byte arrives, and the exit status after it.
    let watched = Watched::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = dir.path().join("data");
    std::fs::write(&path, &data).unwrap();
    let output = watched.server.run(&format!(
        "echo first; exec >&-; sleep 0.5; cat {} >&2; sleep 0.5; exit 3",
        path.display()
    ));
    assert_eq!(stdout_of(&output), "first\n");
    assert_eq!(output.stderr.len(), data.len());
    assert_eq!(sha256_hex(&output.stderr), sha256_hex(&data));
    assert_eq!(output.status.code(), Some(3));
    // And the other way round: stderr closed, stdout runs on.
    let output = watched.server.run(&format!(
        "echo err >&2; exec 2>&-; sleep 0.5; cat {}; exit 4",
        path.display()
    ));
    assert_eq!(stderr_of(&output), "err\n");
    assert_eq!(sha256_hex(&output.stdout), sha256_hex(&data));
    assert_eq!(output.status.code(), Some(4));
    watched.assert_clean();
}

#[test]
fn a_daemon_holding_the_pipes_does_not_hold_up_the_exit() {
    let watched = Watched::start(&[]);
    let marker = unique_sleep_marker();
    // The daemon leaves the command's process group and session (so the server cannot and
    // must not kill it) but keeps stdout and stderr open.
    let started = Instant::now();
    let output = watched
        .server
        .run(&format!("setsid sleep 300 {marker} & echo started; exit 6"));
    let took = started.elapsed();
    assert_eq!(stdout_of(&output), "started\n");
    assert_eq!(output.status.code(), Some(6));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // (It may take a moment to get from `setsid` to `sleep`.)
    assert!(
        eventually(Duration::from_secs(5), || sleeps_matching(&marker).len()
            == 1),
        "the daemon should live on"
    );
    // A daemon that keeps writing: the command still ends, and the server stops reading it.
    let chatty = unique_marker("chatty");
    let started = Instant::now();
    let output = watched.server.run(&format!(
        "setsid sh -c ': {chatty}; while :; do echo spam; sleep 0.001; done' & sleep 0.3; echo done"
    ));
    assert!(stdout_of(&output).ends_with("done\n") || stdout_of(&output).contains("done\n"));
    assert!(output.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    // The server keeps no descriptors for the daemons' pipes and has no zombies.
    watched.assert_clean();
    for pid in processes_matching(&chatty)
        .into_iter()
        .chain(sleeps_matching(&marker))
    {
        signal(pid, "KILL");
    }
}

#[test]
fn commands_killed_by_signals_report_the_signal() {
    let watched = Watched::start(&[]);
    for (signal_name, number) in [("KILL", 9), ("SEGV", 11), ("INT", 2), ("HUP", 1)] {
        let output = watched.server.run(&format!("kill -{signal_name} $$"));
        assert_eq!(output.status.code(), Some(128 + number), "SIG{signal_name}");
    }
    // Killed from outside, by someone else, while running.
    let marker = unique_sleep_marker();
    let mut client = watched.server.client("run");
    client
        .arg("--")
        .arg(format!("exec sleep 300 {marker}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = client.spawn().unwrap();
    assert!(eventually(WAIT, || !sleeps_matching(&marker).is_empty()));
    signal(sleeps_matching(&marker)[0], "KILL");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(137), "{}", stderr_of(&output));
    // The exit message says signaled, with the number.
    let mut raw = RawClient::authenticated(watched.server.addr, &watched.secret);
    let (_, _, status) = raw.run("kill -TERM $$", None);
    assert_eq!(status, ExitStatus::Signaled { signal: 15 });
    drop(raw);
    watched.assert_clean();
}

#[test]
fn a_command_that_does_not_exist_is_127_with_the_shells_message() {
    let watched = Watched::start(&[]);
    let output = watched.server.run("no-such-command-rcmd-test --flag");
    assert_eq!(output.status.code(), Some(127));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("no-such-command-rcmd-test") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    // Found but not executable: 126.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    let output = watched.server.run(&script.display().to_string());
    assert_eq!(output.status.code(), Some(126), "{}", stderr_of(&output));
    // The session goes on after a failed command.
    let mut raw = RawClient::authenticated(watched.server.addr, &watched.secret);
    let (_, err, status) = raw.run("/no/such/path/cmd", None);
    assert_eq!(status, ExitStatus::Exited { code: 127 });
    assert!(!err.is_empty());
    let (out, _, _) = raw.run("echo next", None);
    assert_eq!(out, b"next\n");
    drop(raw);
    watched.assert_clean();
}

#[test]
fn a_client_that_stops_reading_costs_bounded_memory_and_its_command_dies_with_it() {
    let watched = Watched::start(&[]);
    let pid = watched.server.pid();
    let before = rss_kib(pid);
    let marker = unique_marker("yes");
    let mut client = RawClient::authenticated(watched.server.addr, &watched.secret);
    client.exec_bytes(format!("yes {marker}").as_bytes(), None);
    assert!(eventually(WAIT, || !programs_matching("yes", &marker).is_empty()));
    // Read nothing for a while: `yes` writes as fast as it can, the socket fills up.
    let mut peak = before;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        peak = peak.max(rss_kib(pid));
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("server RSS {before} KiB before, {peak} KiB at most while the client did not read");
    assert!(
        peak < before + 16 * 1024,
        "server RSS grew from {before} KiB to {peak} KiB while the client did not read"
    );
    // `yes` is blocked, not killed: the connection is alive.
    assert!(!programs_matching("yes", &marker).is_empty());
    // The client goes away without reading: `yes` is killed.
    drop(client);
    assert!(
        eventually(Duration::from_secs(10), || programs_matching(
            "yes", &marker
        )
        .is_empty()),
        "yes survived its client"
    );
    watched.assert_clean();
}

#[test]
fn a_client_killed_mid_output_takes_its_command_with_it() {
    let watched = Watched::start(&[]);
    let marker = unique_marker("mid-output");
    let mut client = watched.server.client("run");
    client
        .arg("--")
        .arg(format!("yes {marker}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = client.spawn().unwrap();
    // Take some output, so the kill lands mid-stream.
    let mut first = vec![0u8; 64 * 1024];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains(&marker));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || programs_matching(
            "yes", &marker
        )
        .is_empty()),
        "yes survived its client"
    );
    watched.server.wait_for_log("killed: the client left", WAIT);
    watched.assert_clean();
}

/// A client whose connection is reset (a crashed host, a firewall, `SO_LINGER` 0) rather than
/// closed: the reset comes as a read error, not an end of file, and must end the session and
/// its command just the same, with the reason in the log, not leave both to the idle timeout.
#[test]
fn a_reset_connection_takes_its_command_with_it() {
    let watched = Watched::start(&[]);
    let mut client = RawClient::authenticated(watched.server.addr, &watched.secret);
    let marker = unique_sleep_marker();
    let id = client.exec_bytes(format!("echo started; sleep 300 {marker}").as_bytes(), None);
    client.read_stdout_until(id, "started", WAIT);
    assert!(eventually(WAIT, || !sleeps_matching(&marker).is_empty()));
    socket2::SockRef::from(&client.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // closing with a zero linger time sends RST
    assert!(
        eventually(Duration::from_secs(10), || sleeps_matching(&marker)
            .is_empty()),
        "the command survived its reset connection"
    );
    watched.server.wait_for_log("connection lost: ", WAIT);
    watched.assert_clean();
}

/// OpenSSH's broken-pipe.sh: `ssh host echo foo | true` must end quietly (not hang, crash or
/// complain). rcmd then ends as a local program would: killed by SIGPIPE if it still had
/// output to write, which `set -o pipefail` sees; `echo foo` may have been written before the
/// reader left, and then succeeds.
#[cfg(unix)]
#[test]
fn a_broken_pipe_on_the_clients_stdout_is_a_clean_exit() {
    use std::os::unix::process::ExitStatusExt;
    let watched = Watched::start(&[]);
    for command in ["echo foo", "seq 1 1000000", "yes"] {
        let mut client = watched.server.client("run");
        client
            .arg("--")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = client.spawn().unwrap();
        // Read a little (or nothing), then close our end of the pipe.
        let mut stdout = child.stdout.take().unwrap();
        if command != "echo foo" {
            let mut some = [0u8; 100];
            stdout.read_exact(&mut some).unwrap();
        }
        drop(stdout);
        let stderr = read_in_background(child.stderr.take().unwrap());
        let status = wait_within(&mut child, WAIT).expect("client did not exit");
        let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
        let cut_short = status.signal() == Some(libc::SIGPIPE);
        let whole = command == "echo foo" && status.success();
        assert!(cut_short || whole, "{command}: {status:?} {stderr}");
        assert!(stderr.is_empty(), "{command}: {stderr}");
    }
    watched.assert_clean();
}

/// A burst of clients that each left output and input queued must not leave the server holding
/// that memory once they are gone: the allocator keeps what is freed, so the server hands it
/// back after a burst (`malloc_trim`, glibc). Without that, 600 streaming clients left 140 MiB
/// in a server with no clients.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_burst_of_stalled_streams_leaves_no_memory_behind() {
    const CLIENTS: usize = 100;
    let watched = Watched::start(&[]);
    let pid = watched.server.pid();
    let before = rss_kib(pid);
    let clients: Vec<RawClient> = (0..CLIENTS)
        .map(|_| {
            let mut client = RawClient::authenticated(watched.server.addr, &watched.secret);
            // Output it does not read, and input the command does not read: both queue.
            let id = client.exec_with_stdin("yes");
            for _ in 0..3 {
                client.send_stdin(id, &[b'x'; 60 * 1024]).unwrap();
            }
            client
        })
        .collect();
    // None of them reads: once the kernel's socket buffers are full, each connection's queue
    // fills up to its limit.
    let grown = eventually(WAIT, || rss_kib(pid) > before + 8 * 1024);
    let peak = rss_kib(pid);
    assert!(
        grown,
        "the burst did not take memory ({before} -> {peak} KiB)"
    );
    drop(clients);
    let released = eventually(WAIT, || rss_kib(pid) < before + 2 * 1024);
    let after = rss_kib(pid);
    eprintln!("server RSS {before} KiB before, {peak} KiB in the burst, {after} KiB after");
    assert!(
        released,
        "the server kept {after} KiB after the burst ({before} before)"
    );
    watched.assert_clean();
}

#[test]
fn many_connections_with_commands_leave_no_zombies_and_no_leaked_descriptors() {
    // The test-sized version of scripts/fd-leak-check.sh (10,000 connections).
    const CONNECTIONS: usize = 500;
    const THREADS: usize = 8;
    let watched = Watched::start(&[]);
    let pid = watched.server.pid();
    let rss_before = rss_kib(pid);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let next = next.clone();
            let (addr, secret) = (watched.server.addr, watched.secret.clone());
            thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= CONNECTIONS {
                        return;
                    }
                    let mut client = RawClient::authenticated(addr, &secret);
                    match n % 6 {
                        0 => {
                            let (out, _, status) = client.run(&format!("echo {n}"), None);
                            assert_eq!(out, format!("{n}\n").as_bytes());
                            assert_eq!(status, ExitStatus::Exited { code: 0 });
                        }
                        1 => {
                            let (_, _, status) = client.run("exit 3", None);
                            assert_eq!(status, ExitStatus::Exited { code: 3 });
                        }
                        2 => {
                            let (_, _, status) = client.run("kill -9 $$", None);
                            assert_eq!(status, ExitStatus::Signaled { signal: 9 });
                        }
                        3 => {
                            let (_, err, status) = client.run("no-such-command-rcmd", None);
                            assert_eq!(status, ExitStatus::Exited { code: 127 });
                            assert!(!err.is_empty());
                        }
                        4 => {
                            // Leave mid-command: the server kills it.
                            client.exec_bytes(b"sleep 30", None);
                            thread::sleep(Duration::from_millis(5));
                        }
                        _ => {
                            // Several commands on one connection, with output both ways.
                            for _ in 0..3 {
                                let (out, err, _) = client.run("echo o; echo e >&2", None);
                                assert_eq!((out, err), (b"o\n".to_vec(), b"e\n".to_vec()));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a client failed");
    }
    watched.assert_clean();
    let rss_after = rss_kib(pid);
    eprintln!(
        "{CONNECTIONS} connections: fds {} (idle {}), RSS {rss_before} -> {rss_after} KiB",
        fd_count(pid),
        watched.idle_fds
    );
    assert!(rss_after < rss_before + 32 * 1024);
}

/// A peer that vanishes without a FIN (powered off, cable pulled) is noticed only if something
/// probes the silence: both ends turn TCP keepalive on (`src/tcp.rs`). Checked where Linux
/// shows it, the timer of each end's socket in /proc/net/tcp while a command runs in silence:
/// the keepalive timer, due about 60 s after the last packet (a delayed ACK, the other timer
/// of that kind, is due within a fraction of a second).
#[cfg(target_os = "linux")]
#[test]
fn both_ends_of_a_silent_command_keep_probing_each_other() {
    let server = TestServer::start(&[]);
    let mut command = server.client("run");
    command
        .args(["--", "sleep 60"]) // killed at the end; long enough for a loaded host
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut client = command.spawn().unwrap();
    server.wait_for_log("command 1 (pid", WAIT);
    let port = server.addr.port();
    let keepalive = |timer: Option<SocketTimer>| {
        timer.is_some_and(|t| t.kind == 2 && t.due_in > Duration::from_secs(30))
    };
    let (mut server_end, mut client_end) = (None, None);
    let both_probing = eventually(Duration::from_secs(3), || {
        for socket in established_sockets() {
            if socket.local_port == port {
                server_end = Some(socket.timer);
            } else if socket.remote_port == port {
                client_end = Some(socket.timer);
            }
        }
        keepalive(server_end) && keepalive(client_end)
    });
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        both_probing,
        "timers: server end {server_end:?}, client end {client_end:?}"
    );
}

#[cfg(target_os = "linux")]
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    timer: SocketTimer,
}

/// `tr:tm->when` of /proc/net/tcp: which timer is pending (0 none, 1 retransmit, 2 keepalive or
/// delayed ACK, 3 TIME_WAIT, 4 zero-window probe) and when it is due.
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy)]
struct SocketTimer {
    kind: u8,
    due_in: Duration,
}

/// The established IPv4 TCP sockets of this network namespace, from /proc/net/tcp
/// (`sl local rem st tx:rx tr:when ...`; ports in hex, `when` in clock ticks of 1/100 s).
#[cfg(target_os = "linux")]
fn established_sockets() -> Vec<TcpSocket> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"01") {
                return None; // not ESTABLISHED
            }
            let (kind, when) = fields.get(5)?.split_once(':')?;
            let timer = SocketTimer {
                kind: u8::from_str_radix(kind, 16).ok()?,
                due_in: Duration::from_millis(10 * u64::from_str_radix(when, 16).ok()?),
            };
            Some(TcpSocket {
                local_port: port(fields[1])?,
                remote_port: port(fields[2])?,
                timer,
            })
        })
        .collect()
}

/// Fills the command's stdout pipe, enlarged to 1 MiB (if allowed), while the client reads nothing (so the
/// server, its outbound buffer full, reads nothing either), reports on stderr how many bytes
/// it wrote, and exits with all of that pipe unread.
const FILL_A_LARGE_PIPE_AND_EXIT: &str = r#"python3 - <<'EOF'
import fcntl, os, struct, sys, termios, time
try:
    size = fcntl.fcntl(1, 1031, 1 << 20)  # F_SETPIPE_SZ
except OSError:
    size = fcntl.fcntl(1, 1032)  # F_GETPIPE_SZ: not allowed to enlarge it
os.set_blocking(1, False)
chunk = b"x" * 65536
total = 0
while True:
    try:
        total += os.write(1, chunk)
        continue
    except BlockingIOError:
        pass
    time.sleep(0.1)
    queued = struct.unpack("i", fcntl.ioctl(1, termios.FIONREAD, b"\0" * 4))[0]
    if queued > size // 2:
        break
sys.stderr.write("%d %d\n" % (total, queued))
EOF"#;

/// A command that exits with more of its output still in its pipe than one read takes (a pipe
/// it enlarged, while the client was slow): the rest is its own output, not a background
/// process's, and all of it arrives.
#[test]
fn output_still_in_a_large_pipe_when_the_command_exits_arrives_complete() {
    if !python3_available() {
        eprintln!("skipped: no python3 to enlarge the command's pipe");
        return;
    }
    let watched = Watched::start(&[]);
    let mut client = RawClient::authenticated(watched.server.addr, &watched.secret);
    let id = client.exec_bytes(FILL_A_LARGE_PIPE_AND_EXIT.as_bytes(), None);
    // Read nothing until the server has seen the command's process exit. (The warm-up
    // command of `Watched::start` has the same id: its line comes first.)
    let started = format!("command {id} (pid ");
    watched.server.wait_for_log("F_SETPIPE_SZ", WAIT);
    let log = watched.server.log();
    let pid: u32 = log[log.rfind(&started).unwrap() + started.len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // (Or, should the server have read the whole pipe after all, until it has reaped the
    // process itself, which it does not log.)
    let exited = format!("pid {pid} exited: ");
    assert!(
        eventually(Duration::from_secs(60), || {
            let log = watched.server.log();
            log.contains(&exited)
                || log
                    .lines()
                    .any(|line| line.contains("finished") && line.contains("F_SETPIPE_SZ"))
        }),
        "the command did not end; log:\n{}",
        watched.server.log()
    );
    let (out, err, status) = client.collect(id, Duration::from_secs(60));
    assert_eq!(status, ExitStatus::Exited { code: 0 }, "{err:?}");
    let report = String::from_utf8(err).unwrap();
    let mut numbers = report
        .split_whitespace()
        .map(|n| n.parse::<usize>().unwrap());
    let (written, left_in_pipe) = (numbers.next().unwrap(), numbers.next().unwrap());
    if left_in_pipe <= 64 * 1024 {
        eprintln!("the pipe could not be enlarged: no more than one read was left in it");
    }
    assert_eq!(
        out.len(),
        written,
        "{left_in_pipe} bytes were left in the pipe"
    );
    assert!(out.iter().all(|&b| b == b'x'));
    drop(client);
    watched.assert_clean();
}
