//! Stdin flow control and control frames that must always get through.

mod util;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use rcmd::protocol::message::STDIN_WINDOW;
use rcmd::protocol::{ErrorCode, ExitStatus, Message, SignalName};
use util::raw::RawClient;
use util::*;

/// How long a test waits for a frame or a command's end before it fails.
const WAIT: Duration = Duration::from_secs(20);

/// A command that never reads its stdin, with more stdin than the window waiting: Ctrl-C
/// still reaches it, because the server never stops reading the connection.
#[test]
fn ctrl_c_gets_through_to_a_command_that_reads_no_stdin() {
    let server = TestServer::start(&[]);
    let (mut child, marker) = run_remote_sleep(&server, "", Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        // 4 MiB, far more than the window: the client blocks after STDIN_WINDOW bytes.
        let _ = stdin.write_all(&vec![b'x'; 4 << 20]);
    });
    std::thread::sleep(Duration::from_millis(300)); // let the window fill
    signal(child.id(), "INT");
    let status =
        wait_within(&mut child, Duration::from_secs(10)).expect("client did not end after Ctrl-C");
    assert_eq!(status.code(), Some(130));
    assert!(eventually(Duration::from_secs(2), || sleeps_matching(
        &marker
    )
    .is_empty()));
    drop(feeder);
}

/// The same command, and the client killed: the server sees the disconnect and kills it.
#[test]
fn a_client_leaving_with_unread_stdin_pending_kills_the_command() {
    let server = TestServer::start(&[]);
    let (mut child, marker) = run_remote_sleep(&server, "", Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&vec![b'x'; 4 << 20]);
    });
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(eventually(Duration::from_secs(2), || sleeps_matching(
        &marker
    )
    .is_empty()));
}

#[test]
fn stdin_beyond_the_window_is_a_flow_control_error() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let id = client.exec_full(b"sleep 5", true, None);
    let chunk = vec![b'x'; 64 * 1024];
    // The command reads nothing, but its stdin pipe absorbs up to a pipe buffer (64 KiB to
    // 1 MiB) first: send well beyond window and pipe together, ignoring acknowledgements.
    for _ in 0..(STDIN_WINDOW + (1 << 20)) / chunk.len() + 4 {
        if client.send(&Message::Stdin { id }, &chunk).is_err() {
            break;
        }
    }
    client.expect_fatal(ErrorCode::FlowControl, Duration::from_secs(10));
    // The server is fine.
    assert!(server.run("true").status.success());
}

#[test]
fn stdin_is_acknowledged_as_the_command_consumes_it() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let id = client.exec_full(b"wc -c", true, None);
    // Three windows' worth, sent only as acknowledgements allow.
    let total = 3 * STDIN_WINDOW;
    let (mut sent, mut acked, mut stdout) = (0usize, 0usize, Vec::new());
    let chunk = vec![b'y'; 32 * 1024];
    while acked < total {
        while sent < total && sent - acked + chunk.len() <= STDIN_WINDOW {
            client.send(&Message::Stdin { id }, &chunk).unwrap();
            sent += chunk.len();
        }
        match client
            .read_frame(Duration::from_secs(10))
            .expect("a frame")
            .message
        {
            Message::StdinAck { id: of, bytes } if of == id => acked += bytes as usize,
            other => panic!("expected stdin_ack, got {other:?}"),
        }
    }
    assert_eq!(acked, total);
    client.send(&Message::StdinClose { id }, b"").unwrap();
    let (out, _, status) = client.collect(id, Duration::from_secs(10));
    stdout.extend(out);
    assert_eq!(String::from_utf8(stdout).unwrap().trim(), total.to_string());
    assert_eq!(status, ExitStatus::Exited { code: 0 });
}

/// A timeout too large to represent is no timeout, not a crash of the whole server.
#[test]
fn an_absurd_timeout_does_not_crash_the_server() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let id = client.exec_full(b"echo ok", false, Some(u64::MAX));
    let (out, _, status) = client.collect(id, Duration::from_secs(10));
    assert_eq!(out, b"ok\n");
    assert_eq!(status, ExitStatus::Exited { code: 0 });
    assert!(server.run("true").status.success());
}

/// A command that stopped itself still ends on Ctrl-C (INT) or TERM: the server continues
/// the group after delivering them, as bash's `kill` does for a stopped job.
#[cfg(unix)]
#[test]
fn a_stopped_command_ends_on_int_and_term() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    for (signal, number) in [(SignalName::Int, 2), (SignalName::Term, 15)] {
        let marker = unique_marker("stopped");
        let command = format!(": {marker}; kill -STOP $$; echo resumed");
        let id = client.exec_full(command.as_bytes(), false, None);
        assert!(
            eventually(Duration::from_secs(10), || processes_matching(&marker)
                .into_iter()
                .any(|pid| proc_stat(pid).is_some_and(|stat| stat.state == 'T'))),
            "the command did not stop"
        );
        client.send_signal(id, signal).unwrap();
        let (out, _, status) = client.collect(id, Duration::from_secs(10));
        assert_eq!(status, ExitStatus::Signaled { signal: number });
        assert_eq!(out, b"", "it must end, not resume");
    }
}

/// A `signal` for a command is delivered even while a lot of its output waits for the client.
#[test]
fn a_signal_gets_through_while_output_is_backed_up() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let id = client.exec_full(b"yes", false, None);
    std::thread::sleep(Duration::from_millis(500)); // read nothing: the server's buffer fills
    client.send_signal(id, SignalName::Kill).unwrap();
    let (_, _, status) = client.collect(id, Duration::from_secs(20));
    assert_eq!(status, ExitStatus::Signaled { signal: 9 });
}

/// A client whose command's output is backed up to the server's soft limit, and that also has
/// a reply waiting (a refused second `exec`), is still read: only a client whose unread
/// replies pile up to twice that limit is not, so its `signal` gets through at once.
#[test]
fn a_signal_gets_through_behind_backed_up_output_and_a_reply() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let marker = unique_marker("backedup");
    let id = client.exec_full(format!("yes {marker}").as_bytes(), false, None);
    assert!(
        eventually(WAIT, || !processes_matching(&marker).is_empty()),
        "the command did not start"
    );
    std::thread::sleep(Duration::from_millis(500)); // read nothing: the server's buffer fills
    client.exec_bytes(b"true", None); // refused as busy: one more reply queued
    std::thread::sleep(Duration::from_millis(200)); // read on its own, before the signal
    client.send_signal(id, SignalName::Kill).unwrap();
    assert!(
        eventually(WAIT, || processes_matching(&marker).is_empty()),
        "the signal waited for the client to read its output"
    );
}

/// Output that backed up while the client read nothing all arrives once it reads: draining
/// the queue below its limit resumes reading the command's pipes, though no new readiness
/// event comes for them (the command is blocked on a full pipe).
#[test]
fn output_held_back_for_a_client_that_did_not_read_all_arrives() {
    // No deadline of the connection's falls within the test to drive it again by chance.
    let server = TestServer::start(&["--handshake-timeout", "3600"]);
    let mut client = RawClient::authenticated_to(&server);
    let id = client.exec_bytes(b"yes | head -c 8000000", None);
    std::thread::sleep(Duration::from_millis(500)); // read nothing: the server's buffer fills
    let (out, err, status) = client.collect(id, WAIT);
    assert_eq!(out.len(), 8_000_000);
    assert!(out.chunks(2).all(|pair| pair == b"y\n"));
    assert_eq!(err, b"");
    assert_eq!(status, ExitStatus::Exited { code: 0 });
}

/// A shell command that waits until `path` exists, so that a test can send it frames while
/// it surely still runs.
fn wait_for_file(path: &std::path::Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done", path.display())
}

/// Stdin for a command that has no stdin pipe (`exec` said `stdin: false`, or the client
/// already sent `stdin_close`) is acknowledged as consumed and dropped: the client's window is
/// not left used up, and the command never sees the bytes.
#[test]
fn stdin_a_command_has_no_pipe_for_is_acknowledged_and_dropped() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let command = format!("{}; cat; echo end", wait_for_file(&go));
    let id = client.exec_full(command.as_bytes(), false, None);
    client.send_stdin(id, b"lost").unwrap();
    client.expect_stdin_ack(id, 4, WAIT);
    std::fs::write(&go, b"").unwrap();
    let (out, _, status) = client.collect(id, WAIT);
    assert_eq!(out, b"end\n", "cat reads /dev/null, not the stdin sent");
    assert_eq!(status, ExitStatus::Exited { code: 0 });

    // With a pipe: what follows `stdin_close` (in the same write, so handled together) is
    // acknowledged too, and dropped.
    let id = client.exec_full(b"cat", true, None);
    let mut frames = client.encode(&Message::Stdin { id }, b"kept");
    frames.extend(client.encode(&Message::StdinClose { id }, b""));
    frames.extend(client.encode(&Message::Stdin { id }, b"late"));
    client.send_raw(&frames).unwrap();
    let (out, _, status) = client.collect(id, WAIT);
    assert_eq!(String::from_utf8_lossy(&out), "kept");
    assert_eq!(status, ExitStatus::Exited { code: 0 });
}

/// Frames naming another command id (an earlier command's, or one never used) do not touch the
/// running command: a `signal` does not kill it, `stdin` and `stdin_close` do not reach it.
#[test]
fn frames_for_another_command_id_do_not_reach_the_running_command() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let command = format!("{}; wc -c", wait_for_file(&go));
    let id = client.exec_full(command.as_bytes(), true, None);
    let other = id + 100;
    client.send_signal(other, SignalName::Kill).unwrap();
    client
        .send(&Message::Stdin { id: other }, b"other")
        .unwrap();
    client
        .send(&Message::StdinClose { id: other }, b"")
        .unwrap();
    client.send(&Message::Stdin { id }, b"mine").unwrap();
    client.expect_stdin_ack(id, 4, WAIT);
    std::fs::write(&go, b"").unwrap();
    client.send(&Message::StdinClose { id }, b"").unwrap();
    let (out, _, status) = client.collect(id, WAIT);
    assert_eq!(status, ExitStatus::Exited { code: 0 });
    assert_eq!(String::from_utf8_lossy(&out).trim(), "4");
}

/// Stdin for a command that has closed its stdin cannot be written (the pipe is broken): it is
/// dropped, as a local pipe would drop it, and acknowledged as consumed, so that the client's
/// window is not left used up while the command runs on.
#[test]
fn stdin_for_a_command_that_closed_its_stdin_is_acknowledged_and_dropped() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let dir = tempfile::tempdir().unwrap();
    let (closed, go) = (dir.path().join("closed"), dir.path().join("go"));
    let command = format!(
        "exec 0<&-; touch {}; {}; echo end",
        closed.display(),
        wait_for_file(&go)
    );
    let id = client.exec_full(command.as_bytes(), true, None);
    assert!(
        eventually(WAIT, || closed.exists()),
        "the command did not start"
    );
    client.send_stdin(id, b"nowhere").unwrap();
    client.expect_stdin_ack(id, 7, WAIT);
    // And what comes after it too (the pipe is closed now).
    client.send_stdin(id, b"more").unwrap();
    client.expect_stdin_ack(id, 4, WAIT);
    std::fs::write(&go, b"").unwrap();
    let (out, _, status) = client.collect(id, WAIT);
    assert_eq!(out, b"end\n");
    assert_eq!(status, ExitStatus::Exited { code: 0 });
}

/// A server with nothing to do sleeps in `poll`, whether its client waits at the prompt or its
/// command runs quietly with stdin open. A loop that kept finding progress where there is none
/// (a connection driven again and again without an event) would still answer every other test
/// correctly, only burning a core all the while: so the server's CPU time is measured. Waiting
/// costs it milliseconds; a loop spinning through these three seconds costs a tenth of a second
/// even on a machine busy enough to give it a fifth of a core (0.2-0.5 s measured so).
#[test]
fn a_server_waiting_for_its_client_or_a_command_uses_no_cpu() {
    let server = TestServer::start(&[]);
    let mut client = RawClient::authenticated_to(&server);
    let before = cpu_seconds(server.pid());
    std::thread::sleep(Duration::from_secs(1)); // at the prompt
    let id = client.exec_full(b"sleep 2; echo done", true, None);
    let (out, _, status) = client.collect(id, WAIT);
    assert_eq!(
        (out.as_slice(), status),
        (&b"done\n"[..], ExitStatus::Exited { code: 0 })
    );
    let used = cpu_seconds(server.pid()) - before;
    assert!(
        used < 0.1,
        "the server used {used:.2} s of CPU while waiting for 3 s"
    );
}
