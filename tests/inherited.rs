//! What `rcmd run` inherits from whoever started it, and must cope with as ssh and local
//! programs do: stdin or stdout left non-blocking by a parent, a stderr that cannot be
//! written, SIGINT ignored by a non-interactive shell.
#![cfg(unix)]

mod util;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use util::*;

/// A pipe, (read end, write end), with `O_NONBLOCK` set on the end `nonblocking` names. The
/// flag belongs to the open file, so the client that inherits that end sees it too.
fn pipe_nonblocking_at(nonblocking: End) -> (File, File) {
    let (reader, writer) = std::io::pipe().unwrap();
    let (reader, writer) = (
        File::from(OwnedFd::from(reader)),
        File::from(OwnedFd::from(writer)),
    );
    let fd = match nonblocking {
        End::Read => reader.as_raw_fd(),
        End::Write => writer.as_raw_fd(),
    };
    // SAFETY: F_GETFL and F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK), 0);
    }
    (reader, writer)
}

enum End {
    Read,
    Write,
}

#[test]
fn a_nonblocking_stdin_is_waited_for_not_taken_for_its_end() {
    let server = TestServer::start(&[]);
    let (reader, mut writer) = pipe_nonblocking_at(End::Read);
    let mut client = server.client("run");
    client
        .args(["--", "wc -c"])
        .stdin(reader)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = client.spawn().unwrap();
    // Only the client holds the read end now: should it stop reading, the writes below fail
    // instead of waiting for ever.
    drop(client);
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    // Data that arrives later than the client's first read, and in two parts: each pause
    // makes a read of the non-blocking pipe fail with "would block".
    for _ in 0..2 {
        thread::sleep(Duration::from_millis(300));
        let _ = writer.write_all(&vec![b'x'; 100_000]);
    }
    drop(writer);
    let status = wait_within(&mut child, Duration::from_secs(30)).expect("client ended");
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&stdout.join().unwrap()).trim(),
        "200000",
        "every byte of stdin reached the command"
    );
}

#[test]
fn a_nonblocking_stdout_is_waited_for() {
    let server = TestServer::start(&[]);
    let (mut reader, writer) = pipe_nonblocking_at(End::Write);
    let mut client = server.client("run");
    client
        .args(["--", "head -c 2000000 /dev/zero"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let mut child = client.spawn().unwrap();
    // Drop the test's copy of the write end, so that the read below ends with the client.
    drop(client);
    // A slow reader: the pipe fills, and the client's writes would block.
    thread::sleep(Duration::from_millis(300));
    let mut received = Vec::new();
    reader.read_to_end(&mut received).unwrap();
    let status = wait_within(&mut child, Duration::from_secs(30)).expect("client ended");
    let stderr = stderr_of_child(&mut child);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(received.len(), 2_000_000);
}

#[cfg(target_os = "linux")]
#[test]
fn a_stderr_that_cannot_be_written_does_not_stop_the_command() {
    let server = TestServer::start(&[]);
    let full = File::options().write(true).open("/dev/full").unwrap();
    let mut client = server.client("run");
    client
        .args(["--", "echo warning >&2; sleep 0.2; echo done; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(full);
    let mut child = client.spawn().unwrap();
    let stdout = read_in_background(child.stdout.take().unwrap());
    let status = wait_within(&mut child, Duration::from_secs(30)).expect("client ended");
    // As `sh -c '...' 2>/dev/full` locally, and as ssh: the command goes on to its end.
    assert_eq!(String::from_utf8_lossy(&stdout.join().unwrap()), "done\n");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn sigint_ignored_by_the_parent_stays_ignored() {
    let server = TestServer::start(&[]);
    let mut client = server.client("run");
    client
        .args(["--", "echo started; sleep 1; echo survived"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // What a non-interactive shell does for a background job, and `trap '' INT`.
    // SAFETY: `signal` is async-signal-safe, as a `pre_exec` closure must be.
    unsafe {
        client.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = client.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    signal(child.id(), "INT");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = wait_within(&mut child, Duration::from_secs(30)).expect("client ended");
    assert_eq!(rest, "survived\n", "the remote command was interrupted");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_nonblocking_stderr_gets_the_commands_errors_and_rcmds_own_lines() {
    let server = TestServer::start(&[]);
    let (mut reader, writer) = pipe_nonblocking_at(End::Write);
    let mut client = server.client("run");
    client
        .args(["--stats", "--", "head -c 65536 /dev/zero >&2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer);
    let mut child = client.spawn().unwrap();
    drop(client);
    // The command's stderr fills the pipe exactly (64 KiB, Linux's default pipe size, set
    // here to be sure), and nobody reads it for a while: the `--stats` line that follows
    // finds the pipe full.
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 65536);
    }
    thread::sleep(Duration::from_millis(500));
    let mut received = Vec::new();
    reader.read_to_end(&mut received).unwrap();
    let status = wait_within(&mut child, Duration::from_secs(30)).expect("client ended");
    assert_eq!(status.code(), Some(0));
    let zeros = received.iter().take_while(|&&byte| byte == 0).count();
    assert_eq!(zeros, 65536, "the command's stderr, whole");
    let own = String::from_utf8_lossy(&received[zeros..]);
    assert!(
        own.starts_with("rcmd: received 0 bytes of stdout and 65536 of stderr"),
        "{own:?}"
    );
}

/// A stderr whose reader has gone (`rcmd run host cmd 2>&1 | head` after `head` left, or a
/// log pipe that closed) ends the client as SIGPIPE ends a local program, as a closed stdout
/// does: only other failures of stderr are outlived (above).
#[test]
fn a_stderr_whose_reader_left_ends_the_client_as_sigpipe_would() {
    use std::os::unix::process::ExitStatusExt;
    let server = TestServer::start(&[]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut client = server.client("run");
    client
        .args(["--", "echo warning >&2; echo after; exit 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer);
    let mut child = client.spawn().unwrap();
    drop(client);
    let status = wait_within(&mut child, Duration::from_secs(30)).expect("client ended");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
}

/// A stdin that fails to read (here a directory: `EISDIR`) ends the command's input, with a
/// line saying why, as `cat` would; the client neither spins on the error nor hangs.
#[test]
fn a_stdin_that_cannot_be_read_ends_the_commands_input_with_a_message() {
    let server = TestServer::start(&[]);
    let mut client = server.client("run");
    client
        .args(["--", "wc -c; echo end"])
        .stdin(File::open("/").unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = output_within(client, Duration::from_secs(30));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("rcmd: cannot read stdin: ")
            && stderr.ends_with("; the command's input ends here\n"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "end"]
    );
}

/// Ctrl-C while the client waits for a slow reader of a non-blocking stdout: the signal
/// interrupts that wait (`poll` is never restarted), which is no reason to give up on the output.
/// As with a blocking stdout (`core.rs`), the client waits for the command's own end, here a
/// trap that exits 3, and delivers all its output.
#[test]
fn ctrl_c_while_waiting_for_a_slow_reader_of_a_nonblocking_stdout_loses_nothing() {
    let server = TestServer::start(&[]);
    let (mut reader, writer) = pipe_nonblocking_at(End::Write);
    let mut client = server.client("run");
    client
        .args([
            "--",
            "trap 'echo caught; exit 3' INT; dd if=/dev/zero bs=65536 count=3 2>/dev/null; sleep 30",
        ])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped());
    let mut child = client.spawn().unwrap();
    drop(client);
    // 5 KiB every quarter second: the client's writes find the pipe full, and it waits.
    let slow_reader = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 5120];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            thread::sleep(Duration::from_millis(250));
        }
        got
    });
    thread::sleep(Duration::from_secs(1));
    signal(child.id(), "INT");
    let status = wait_within(&mut child, Duration::from_secs(60)).expect("client ended");
    let stderr = stderr_of_child(&mut child);
    let got = slow_reader.join().unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert_eq!(got.len(), 3 * 65536 + "caught\n".len(), "{stderr}");
    assert!(got.ends_with(b"caught\n"));
}
