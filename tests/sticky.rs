//! Sticky packets, end to end: the real `rcmd` binary as unframed server and client over
//! loopback shows both effects every time, and the framed protocol shows neither.
//!
//! Every assertion is deterministic. The unframed client waits until an answer starts to
//! arrive and then `--read-delay-ms` more before its one read, so:
//! - type 1: an output longer than `--recv-size` always comes back cut at exactly that size,
//!   and the next command's read always starts with the rest;
//! - type 2: the server's two writes (stderr, then stdout) are always both waiting, so they
//!   come back in one read.

mod util;

use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// A generous wait before each unframed read: the answers here are a few bytes to a few KiB
/// on loopback, so they are complete long before it ends, even on a loaded machine.
const READ_DELAY_MS: &str = "500";

/// Longest any single step may take before the test fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What `seq 1 400` prints: 1492 bytes, well over one 1024-byte read.
fn seq_400() -> Vec<u8> {
    (1..=400)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Starts `rcmd serve --framing none` on 127.0.0.1:0 with `extra` arguments.
fn unframed_server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--framing", "none"];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// Runs `rcmd connect --framing none` against `server`, feeding it `script` on stdin.
fn unframed_connect(server: &TestServer, extra: &[&str], script: &str) -> Output {
    let mut command = server.client("connect");
    command
        .args(["--framing", "none", "--read-delay-ms", READ_DELAY_MS])
        .args(extra)
        .stdin(stdin_from(script));
    output_within(command, STEP_TIMEOUT)
}

/// A stdin made of `text` (a file, so the client reads it at its own pace).
fn stdin_from(text: &str) -> Stdio {
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(text.as_bytes()).expect("write script");
    file.rewind().expect("rewind script");
    Stdio::from(file)
}

/// Splits the unframed client's output into its reads. Each read is printed as
/// `[read N: B bytes]`, a newline, exactly B bytes, and a newline if those did not end in one.
#[track_caller]
fn reads_of(output: &Output) -> Vec<Vec<u8>> {
    assert!(
        output.status.success(),
        "client failed: {:?}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rest = &output.stdout[..];
    let mut reads = Vec::new();
    while !rest.is_empty() {
        let line_end = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("a header line");
        let header = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let expected_prefix = format!("[read {}: ", reads.len() + 1);
        let len: usize = header
            .strip_prefix(&expected_prefix)
            .and_then(|h| h.strip_suffix(" bytes]"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad read header {header:?}"));
        let body = &rest[line_end + 1..line_end + 1 + len];
        rest = &rest[line_end + 1 + len..];
        if !body.ends_with(b"\n") {
            rest = rest.strip_prefix(b"\n").expect("newline after a read");
        }
        reads.push(body.to_vec());
    }
    reads
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn unframed_type_1_long_output_is_cut_at_recv_size_and_its_rest_answers_the_next_command() {
    let server = unframed_server(&[]);
    let output = unframed_connect(&server, &[], "seq 1 400\necho hello\n");
    let reads = reads_of(&output);
    let expected = seq_400();
    assert_eq!(reads.len(), 2);
    // The one read took exactly 1024 bytes of the 1492...
    assert_eq!(reads[0], expected[..1024]);
    // ...and the "answer" to `echo hello` starts with the other 468.
    assert!(
        reads[1].starts_with(&expected[1024..]),
        "second read: {:?}",
        text(&reads[1])
    );
}

#[test]
fn unframed_recv_size_sets_where_the_cut_falls() {
    let server = unframed_server(&[]);
    let output = unframed_connect(
        &server,
        &["--recv-size", "10"],
        "echo 0123456789abcdef\necho x\n",
    );
    let reads = reads_of(&output);
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0], b"0123456789");
    assert!(reads[1].starts_with(b"abcdef\n"), "{:?}", text(&reads[1]));
}

#[test]
fn unframed_type_2_stderr_and_stdout_writes_arrive_in_one_read() {
    let server = unframed_server(&[]);
    let output = unframed_connect(&server, &[], "echo out; echo err >&2\n");
    // Two writes, one read, and nothing in the bytes to say where the first ended.
    assert_eq!(reads_of(&output), vec![b"err\nout\n".to_vec()]);
}

#[test]
fn unframed_type_2_happens_with_tcp_nodelay_too() {
    // Turning Nagle's algorithm off is not a cure: the merge happens in the receive buffer.
    let server = unframed_server(&["--nodelay"]);
    let output = unframed_connect(&server, &[], "echo out; echo err >&2\n");
    assert_eq!(reads_of(&output), vec![b"err\nout\n".to_vec()]);
}

#[test]
fn unframed_server_warns_that_it_is_a_demonstration() {
    let server = unframed_server(&[]);
    server.wait_for_log("DEMONSTRATION", Duration::from_secs(10));
}

#[test]
fn framed_mode_gives_each_command_exactly_its_own_output() {
    let server = TestServer::start(&[]);
    for _ in 0..3 {
        let long = server.run("seq 1 400");
        assert!(long.status.success());
        assert_eq!(long.stdout, seq_400());
        let short = server.run("echo hello");
        assert_eq!(short.stdout, b"hello\n");
        let both = server.run("echo out; echo err >&2");
        assert_eq!(both.stdout, b"out\n");
        assert_eq!(both.stderr, b"err\n");
    }
}

#[test]
fn framed_connect_runs_the_same_sequence_without_shifting() {
    // The unframed type 1 sequence on one framed connection: nothing is left over.
    let server = TestServer::start(&[]);
    let mut command = server.client("connect");
    command.stdin(stdin_from("seq 1 400\necho hello\n"));
    let output = output_within(command, STEP_TIMEOUT);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut expected = seq_400();
    expected.extend_from_slice(b"hello\n");
    assert_eq!(output.stdout, expected);
}

#[test]
fn unframed_connect_leaves_with_the_status_exit_gives() {
    let server = unframed_server(&[]);
    let output = unframed_connect(&server, &[], "echo hi\nexit 3\necho never\n");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "[read 1: 3 bytes]\nhi\n");
    let output = unframed_connect(&server, &[], "exit abc\n");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("Illegal number: abc"));
}

/// Switching back to framed mode without restarting the unframed server: the framed client
/// says what to do instead of only that the server is not rcmd.
#[test]
fn a_framed_client_at_an_unframed_server_is_told_to_use_framing_none() {
    let server = unframed_server(&[]);
    let output = output_within(
        {
            let mut run = server.client("run");
            run.args(["--", "true"]).stdin(Stdio::null());
            run
        },
        STEP_TIMEOUT,
    );
    assert_eq!(output.status.code(), Some(255));
    assert!(
        text(&output.stderr).contains("connect with `--framing none` too"),
        "{}",
        text(&output.stderr)
    );
}

/// Runs `rcmd ARGS` expecting a usage error: exit 2, nothing on stdout (so no server
/// listened). Returns its stderr.
#[track_caller]
fn usage_error(args: &[&str]) -> String {
    let mut command = Command::new(rcmd_bin());
    command.args(args).stdin(Stdio::null());
    let output = output_within(command, STEP_TIMEOUT);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?}: it listened");
    stderr
}

#[test]
fn insecure_no_auth_is_refused_off_loopback_before_binding() {
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine: binding it would fail with a
    // different error, so getting the loopback refusal proves the check comes first.
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:9999"] {
        let args = ["serve", "--framing", "none", "--insecure-no-auth"];
        let stderr = usage_error(&[&args[..], &["--listen", listen]].concat());
        assert!(stderr.contains("loopback"), "{listen}: {stderr}");
        assert!(!stderr.contains("cannot listen"), "{listen}: {stderr}");
    }
}

#[test]
fn unframed_only_flags_are_refused_with_framing_length() {
    let serve = usage_error(&["serve", "--insecure-no-auth", "--listen", "127.0.0.1:0"]);
    assert!(serve.contains("--framing none"), "{serve}");
    let connect = usage_error(&["connect", "127.0.0.1:9", "--insecure-no-auth"]);
    assert!(connect.contains("--framing none"), "{connect}");
    // A bad read size is a usage error before anything connects, in either framing.
    for framing in ["length", "none"] {
        let args = [
            "connect",
            "127.0.0.1:9",
            "--framing",
            framing,
            "--recv-size",
            "0",
        ];
        let stderr = usage_error(&args);
        assert!(
            stderr.contains("--recv-size must be between 1 and"),
            "{framing}: {stderr}"
        );
    }
}

#[test]
fn framed_only_limits_are_refused_with_framing_none() {
    for (flag, value) in [
        ("--command-timeout", "5"),
        ("--max-handshakes", "1"),
        ("--max-command-len", "5"),
    ] {
        let stderr = usage_error(&[
            "serve",
            "--framing",
            "none",
            "--listen",
            "127.0.0.1:0",
            flag,
            value,
        ]);
        assert!(
            stderr.contains(&format!("{flag} is not supported with --framing none")),
            "{flag}: {stderr}"
        );
    }
}

/// Runs the framed `rcmd connect` against `server` with `--recv-size` and `--read-delay-ms`
/// (so it shows its reads on stderr), feeding it `script`.
fn traced_connect(server: &TestServer, recv_size: &str, script: &str) -> Output {
    let mut command = server.client("connect");
    command
        .args(["--recv-size", recv_size, "--read-delay-ms", READ_DELAY_MS])
        .stdin(stdin_from(script));
    let output = output_within(command, STEP_TIMEOUT);
    assert!(
        output.status.success(),
        "client failed: {:?}\nstderr: {}",
        output.status,
        text(&output.stderr)
    );
    output
}

/// The `[read N: ...]` and `[frame: ...]` lines of a traced client's stderr.
fn trace_lines(output: &Output) -> Vec<String> {
    text(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("[read ") || line.starts_with("[frame: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn framed_reads_cut_as_short_as_unframed_ones_still_give_whole_answers() {
    let server = TestServer::start(&[]);
    // 10-byte reads: every frame (its prefix, header, body and tag) takes several.
    let output = traced_connect(&server, "10", "seq 1 400\necho hello\n");
    let mut expected = seq_400();
    expected.extend_from_slice(b"hello\n");
    assert_eq!(output.stdout, expected, "each answer whole, in order");

    let lines = trace_lines(&output);
    let reads: Vec<&String> = lines.iter().filter(|l| l.starts_with("[read ")).collect();
    for (number, line) in reads.iter().enumerate() {
        let bytes: usize = line
            .strip_prefix(&format!("[read {}: ", number + 1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("read {} is {line:?}", number + 1));
        assert!((1..=10).contains(&bytes), "{line}");
    }
    // 1492 bytes of output alone need 150 reads of 10; the frames around them more.
    assert!(reads.len() > 150, "{} reads", reads.len());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the next frame is 1563 bytes") && l.contains("read again")),
        "a read that ended inside the stdout frame: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("too few to know")),
        "a read that ended inside a length prefix or header: {lines:#?}"
    );
    let frames: Vec<&String> = lines.iter().filter(|l| l.starts_with("[frame: ")).collect();
    assert_eq!(frames.len(), 4, "stdout and exit, twice: {frames:#?}");
    assert!(frames[0].starts_with("[frame: stdout, 1492-byte body, 1563 bytes on the wire"));
    assert!(frames[1].starts_with("[frame: exit, "));
    assert!(frames[2].starts_with("[frame: stdout, 6-byte body, "));
}

#[test]
fn framed_reads_that_merge_frames_still_give_each_stream_its_own_bytes() {
    let server = TestServer::start(&[]);
    let output = traced_connect(&server, "1024", "echo out; echo err >&2\n");
    assert_eq!(output.stdout, b"out\n");
    assert!(text(&output.stderr).contains("err\n"));
    let lines = trace_lines(&output);
    // One read took all three frames (stdout, stderr, exit) at once, as the unframed reads
    // took both writes; the decoder split them.
    assert!(lines[0].starts_with("[read 1: "), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("[read 2")),
        "{lines:#?}"
    );
    let frames: Vec<&String> = lines.iter().filter(|l| l.starts_with("[frame: ")).collect();
    assert_eq!(frames.len(), 3, "{lines:#?}");
    assert!(
        frames[0].starts_with("[frame: stdout, 4-byte body") && frames[0].contains("already in")
    );
    assert!(
        frames[1].starts_with("[frame: stderr, 4-byte body") && frames[1].contains("already in")
    );
    assert!(
        frames[2].starts_with("[frame: exit") && frames[2].contains("nothing buffered after it")
    );
}

#[test]
fn unframed_connect_with_insecure_no_auth_talks_to_an_insecure_server() {
    let server = unframed_server(&["--insecure-no-auth"]);
    let output = unframed_connect(&server, &["--insecure-no-auth"], "echo hi\n");
    assert_eq!(reads_of(&output), vec![b"hi\n".to_vec()]);
}

/// The classic Python tutorial client, in Rust: no handshake, `send(cmd)`, then one
/// `recv(1024)` after a short `time.sleep` (which is what makes the results certain).
struct TutorialClient {
    socket: TcpStream,
}

impl TutorialClient {
    fn connect(addr: SocketAddr) -> TutorialClient {
        let socket = TcpStream::connect(addr).expect("connect");
        socket
            .set_read_timeout(Some(STEP_TIMEOUT))
            .expect("read timeout");
        TutorialClient { socket }
    }

    /// `s.send(cmd.encode())`, then waits for the answer to start and for the read delay,
    /// then `s.recv(1024)` once.
    fn send_and_recv(&mut self, command: &[u8]) -> Vec<u8> {
        self.socket.write_all(command).expect("send");
        let mut probe = [0u8; 1];
        let started = Instant::now();
        while self.socket.peek(&mut probe).expect("peek") == 0 {
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "server closed the connection"
            );
        }
        thread::sleep(Duration::from_millis(500));
        let mut buf = [0u8; 1024];
        let n = self.socket.read(&mut buf).expect("recv");
        buf[..n].to_vec()
    }
}

#[test]
fn a_classic_tutorial_client_sees_both_effects_without_a_handshake() {
    let server = unframed_server(&["--insecure-no-auth"]);
    let mut client = TutorialClient::connect(server.addr);
    // Commands from nc carry a newline; the tutorial client sends none. Both work.
    assert_eq!(client.send_and_recv(b"echo hello\n"), b"hello\n");
    let expected = seq_400();
    assert_eq!(client.send_and_recv(b"seq 1 400"), expected[..1024]);
    assert!(
        client
            .send_and_recv(b"echo x")
            .starts_with(&expected[1024..])
    );
    let mut fresh = TutorialClient::connect(server.addr);
    assert_eq!(
        fresh.send_and_recv(b"echo out; echo err >&2"),
        b"err\nout\n"
    );
}

#[test]
fn unframed_server_closes_on_a_wrong_proof_and_survives_bad_clients() {
    let server = unframed_server(&[]);
    // A wrong proof: the nonce arrives, 32 wrong bytes go back, the server hangs up.
    let mut wrong = TcpStream::connect(server.addr).unwrap();
    wrong.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut nonce = [0u8; 32];
    wrong.read_exact(&mut nonce).unwrap();
    wrong.write_all(&[0u8; 32]).unwrap();
    let mut rest = Vec::new();
    let _ = wrong.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "the server answered a wrong proof: {rest:?}"
    );
    server.wait_for_log("authentication failed", Duration::from_secs(10));
    assert!(
        server
            .log()
            .contains(&wrong.local_addr().unwrap().to_string()),
        "the warning names the peer"
    );
    // Half a proof, then gone; and a client that connects and leaves at once.
    let mut half = TcpStream::connect(server.addr).unwrap();
    half.read_exact(&mut nonce).unwrap();
    half.write_all(b"short").unwrap();
    drop(half);
    drop(TcpStream::connect(server.addr).unwrap());
    server.wait_for_log("during the handshake", Duration::from_secs(10));
    // The server is still serving.
    let output = unframed_connect(&server, &[], "echo still here\n");
    assert_eq!(reads_of(&output), vec![b"still here\n".to_vec()]);
}

/// The handshake timeout bounds the whole handshake, not each read: a client trickling its
/// proof a byte at a time, each byte within the timeout, is still cut off at the deadline.
#[test]
fn unframed_handshake_timeout_bounds_a_trickled_proof() {
    let server = unframed_server(&["--handshake-timeout", "1"]);
    let mut client = TcpStream::connect(server.addr).unwrap();
    let mut nonce = [0u8; 32];
    client.read_exact(&mut nonce).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    // One byte every 0.3 s, until the server hangs up: 32 bytes would take 9.6 s, with every
    // read well within the 1 s timeout; the deadline for the whole handshake is 1 s.
    let hung_up = loop {
        if sent == 32 || client.write_all(&[0]).is_err() {
            break false;
        }
        sent += 1;
        // Waits 0.3 s for the server to close (a read of 0) or reset.
        match client.read(&mut [0u8; 1]) {
            Ok(0) => break true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            _ => {}
        }
    };
    assert!(
        hung_up,
        "still open after {sent} bytes, {:?}",
        started.elapsed()
    );
    assert!(
        sent < 16,
        "cut off only after {sent} bytes, {:?}",
        started.elapsed()
    );
    server.wait_for_log(
        "did not answer the challenge in time",
        Duration::from_secs(5),
    );
}

#[test]
fn unframed_client_with_another_secret_is_told_it_was_rejected() {
    let server = unframed_server(&[]);
    let other = SecretFile::other();
    let mut command = Command::new(rcmd_bin());
    command
        .args(["connect", "--framing", "none"])
        .arg(server.addr.to_string())
        .arg("--secret-file")
        .arg(&other.path)
        .stdin(stdin_from("echo hi\n"));
    let output = output_within(command, STEP_TIMEOUT);
    assert_eq!(output.status.code(), Some(255));
    assert!(output.stdout.is_empty());
    assert!(
        text(&output.stderr).contains("different secret"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn unframed_client_refuses_a_framed_server() {
    let server = TestServer::start(&[]);
    let mut command = server.client("connect");
    command
        .args(["--framing", "none"])
        .stdin(stdin_from("echo hi\n"));
    let output = output_within(command, STEP_TIMEOUT);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        text(&output.stderr).contains("without --framing none"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn demo_sticky_runs_both_modes_and_explains_both_effects() {
    let mut command = Command::new(rcmd_bin());
    command.args(["demo", "sticky"]).stdin(Stdio::null());
    let output = output_within(command, STEP_TIMEOUT);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    for expected in [
        "type 1: the receiver takes less than was sent",
        "read 1 returned 1024 bytes",
        "left 468 in the socket's receive buffer",
        "type 2: the sender's small writes merge",
        r#""err\n""#,
        r#""out\n""#,
        "FRAMED",
        "[read 1: 1024 bytes; the next frame is 1563 bytes, 1024 of them in: read again]",
        "[frame: stdout, 1492-byte body, 1563 bytes on the wire",
        "1492 bytes of stdout and 0 of stderr, complete",
        "The fix",
    ] {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}
