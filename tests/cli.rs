//! The command line and the protocol's edges: help texts, version mismatches, the listen
//! backlog.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcmd::auth;
use rcmd::protocol::message::{Bytes32, PROTOCOL_NAME};
use rcmd::protocol::{ErrorCode, Frame, FrameDecoder, FrameEncoder, Message, PROTOCOL_VERSION};
use util::*;

#[test]
fn every_subcommand_has_help() {
    for subcommand in ["serve", "connect", "run", "keygen", "demo"] {
        let output = Command::new(rcmd_bin())
            .args([subcommand, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{subcommand} --help");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage: rcmd"), "{subcommand}: {text}");
        assert!(text.contains("--secret-file"), "{subcommand}: {text}");
        if subcommand == "run" {
            // Scripts branch on them, as on ssh's: the help says what each means.
            for status in ["124", "141", "255", "128+N"] {
                assert!(text.contains(status), "run --help lacks {status}: {text}");
            }
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    // Bounded waits: a server that wrongly accepted its options would run until killed.
    let serve = |args: &[&str]| {
        let mut command = Command::new(rcmd_bin());
        command.arg("serve").args(args).stdin(Stdio::null());
        output_within(command, Duration::from_secs(30))
    };
    let output = serve(&["--listen", "not-an-address"]);
    assert_eq!(output.status.code(), Some(2));
    let output = serve(&["--encoding", "klingon", "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown encoding \"klingon\""));
    // Limits where 0 would make the server useless are refused, not quietly raised to 1.
    for option in [
        "--max-connections",
        "--max-handshakes",
        "--handshake-timeout",
        "--max-command-len",
    ] {
        let output = serve(&[option, "0", "--listen", "127.0.0.1:0"]);
        assert_eq!(output.status.code(), Some(2), "{option}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("must be at least 1"),
            "{option}: {output:?}"
        );
    }
}

fn read_frame(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Frame {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.next_frame().expect("valid frame") {
            return frame;
        }
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "connection closed before a frame arrived");
        decoder.feed(&buf[..n]);
    }
}

#[test]
fn a_client_of_another_version_is_told_so() {
    let server = TestServer::start(&[]);
    let secret = std::fs::read_to_string(&server.secret.path).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = FrameDecoder::default();
    let Message::Hello { nonce, version, .. } = read_frame(&mut stream, &mut decoder).message
    else {
        panic!("expected hello")
    };
    assert_eq!(version, PROTOCOL_VERSION);
    let client_nonce = auth::new_nonce();
    let proof = auth::proof(
        secret.trim().as_bytes(),
        auth::Role::Client,
        &nonce.0,
        &client_nonce,
    );
    let auth = Message::Auth {
        version: PROTOCOL_VERSION + 1,
        nonce: Bytes32(client_nonce),
        proof: Bytes32(proof),
    };
    let mut bytes = Vec::new();
    FrameEncoder::new().encode(&auth, b"", &mut bytes);
    stream.write_all(&bytes).unwrap();
    match read_frame(&mut stream, &mut decoder).message {
        Message::Error {
            code,
            message,
            fatal,
            ..
        } => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(fatal);
            assert!(
                message.contains(&format!("version {PROTOCOL_VERSION}")),
                "{message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A fake server on 127.0.0.1:0 that accepts one client and hands its stream to `serve`, on a
/// thread of its own; reads on the stream give up after 20 s.
fn fake_server<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        serve(stream)
    });
    (addr, server)
}

/// A server's first frame: `hello` in protocol `version`.
fn hello_frame(version: u32) -> Vec<u8> {
    let hello = Message::Hello {
        protocol: PROTOCOL_NAME.into(),
        version,
        nonce: Bytes32(auth::new_nonce()),
    };
    let mut bytes = Vec::new();
    FrameEncoder::new().encode(&hello, b"", &mut bytes);
    bytes
}

#[test]
fn a_server_of_another_version_is_reported_clearly() {
    let (addr, fake_server) = fake_server(|mut stream| {
        stream.write_all(&hello_frame(99)).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        rest
    });
    let stderr = client_failure_against(addr);
    assert!(
        stderr.contains("protocol version mismatch: the server speaks version 99"),
        "{stderr}"
    );
    // The client said why before leaving, in a frame the old server can read.
    let said = fake_server.join().unwrap();
    let mut decoder = FrameDecoder::default();
    decoder.feed(&said);
    let frame = decoder.next_frame().unwrap().expect("an error frame");
    assert!(matches!(
        frame.message,
        Message::Error {
            code: ErrorCode::VersionMismatch,
            ..
        }
    ));
}

/// A listener that accepts and never speaks (a stuck server, or a service that waits for the
/// client to talk first) is reported as silent, not as speaking another protocol.
#[test]
fn a_server_that_never_answers_is_reported_as_silent() {
    let (addr, silent_server) = fake_server(|mut stream| {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let stderr = client_failure_against(addr);
    assert!(
        stderr.contains("the server did not answer the handshake within 10 s"),
        "{stderr}"
    );
    assert!(!stderr.contains("does not speak"), "{stderr}");
    assert!(!stderr.contains("--framing none"), "{stderr}");
    silent_server.join().unwrap();
}

/// A server that trickles its `hello`, a byte a second (each read well within the timeout), is
/// given up at the handshake's deadline, not after a timeout per read.
#[test]
fn a_server_that_trickles_its_hello_is_given_up_at_the_deadline() {
    let (addr, trickler) = fake_server(|mut stream| {
        // At most 30 s; stops when the client has gone.
        for byte in hello_frame(PROTOCOL_VERSION).iter().take(30) {
            if stream.write_all(std::slice::from_ref(byte)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let started = std::time::Instant::now();
    let stderr = client_failure_against(addr);
    let took = started.elapsed();
    assert!(
        stderr.contains("the server did not answer the handshake within 10 s"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
    trickler.join().unwrap();
}

/// Mutual authentication: a server that answers `auth` with a `welcome` whose proof it could
/// not compute (it does not know the secret) never gets a command. The client leaves with 255
/// and says why, having sent nothing after its `auth`.
#[test]
fn an_impostor_server_that_cannot_prove_the_secret_gets_no_command() {
    let (addr, impostor) = fake_server(|mut stream| {
        stream.write_all(&hello_frame(PROTOCOL_VERSION)).unwrap();
        let mut out = Vec::new();
        let mut decoder = FrameDecoder::default();
        let auth_frame = read_frame(&mut stream, &mut decoder);
        assert!(matches!(auth_frame.message, Message::Auth { .. }));
        // A proof made up: without the secret there is no other kind.
        out.clear();
        let welcome = Message::Welcome {
            proof: Bytes32(auth::new_nonce()),
        };
        FrameEncoder::new().encode(&welcome, b"", &mut out);
        stream.write_all(&out).unwrap();
        // Everything the client sends from here on, until it closes.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (decoder.buffered(), rest)
    });
    let stderr = client_failure_against(addr);
    assert!(
        stderr.contains("the server could not prove it knows the secret"),
        "{stderr}"
    );
    let (buffered, after_welcome) = impostor.join().unwrap();
    assert_eq!(
        (buffered, after_welcome.len()),
        (0, 0),
        "the client sent something after auth: {after_welcome:?}"
    );
}

#[test]
fn something_that_is_not_an_rcmd_server_is_reported_clearly() {
    let (addr, _server) = fake_server(|mut stream| {
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        std::thread::sleep(Duration::from_secs(2));
    });
    let stderr = client_failure_against(addr);
    assert!(
        stderr.contains("does not speak the rcmd protocol"),
        "{stderr}"
    );
}

/// Fifty clients that connect while the server is not accepting all complete their TCP
/// handshake at once: the kernel does that for the listen backlog. The tutorial's backlog of 5
/// leaves the rest with dropped SYNs, and `connect` times out. All are greeted once the server
/// resumes.
#[test]
fn fifty_clients_arriving_at_once_all_get_in() {
    let server = TestServer::start(&[]);
    signal(server.pid(), "STOP");
    let connected: Vec<_> = (0..50)
        .map(|i| {
            TcpStream::connect_timeout(&server.addr, Duration::from_millis(1500)).unwrap_or_else(
                |e| panic!("client {i} could not connect while the server was busy: {e}"),
            )
        })
        .collect();
    signal(server.pid(), "CONT");
    for mut stream in connected {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let hello = read_frame(&mut stream, &mut FrameDecoder::default());
        assert!(matches!(hello.message, Message::Hello { .. }));
    }
}

#[test]
fn the_server_listens_on_ipv6_too() {
    // Only where the machine has IPv6 loopback at all.
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let server = TestServer::start(&["--listen", "[::1]:0"]);
    assert!(server.addr.is_ipv6());
    let output = server.run("echo over ipv6");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "over ipv6\n");
}

/// `rcmd run ADDR -- true` with a fresh secret against a fake server, which must fail as a
/// client failure (255): returns what the client said on stderr.
#[track_caller]
fn client_failure_against(addr: std::net::SocketAddr) -> String {
    let secret = SecretFile::new();
    let mut command = Command::new(rcmd_bin());
    command
        .args(["run", &addr.to_string(), "--secret-file"])
        .arg(&secret.path)
        .args(["--", "true"])
        .stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    stderr
}

#[test]
fn a_script_through_connect_ends_with_255_when_its_last_command_did_not_run() {
    let server = TestServer::start(&["--max-command-len", "100"]);
    let too_long = format!("echo {}", "a".repeat(200));
    // `true` first: the refusal must not leave the status of the command before it.
    let output = at_the_prompt(&server, &format!("true\n{too_long}\n"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("limit"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn exit_with_a_status_ends_a_connect_script_there() {
    let server = TestServer::start(&[]);
    let output = at_the_prompt(&server, "echo before\nexit 4\necho after\n");
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(output.stdout, b"before\n");
}

/// `exit` as scripts write it stops the script with the status a shell would leave with; sent
/// to the server instead, it would only end that line's shell and the script would go on.
#[test]
fn exit_written_as_scripts_write_it_stops_a_connect_script() {
    let server = TestServer::start(&[]);
    for (exit, status) in [
        ("exit 3 # done", 3),
        ("exit $?", 1),
        ("exit \"5\"", 5),
        ("exit 6;", 6),
        ("quit 7", 7),
    ] {
        let output = at_the_prompt(&server, &format!("false\n{exit}\necho after\n"));
        assert_eq!(output.status.code(), Some(status), "{exit}: {output:?}");
        assert!(output.stdout.is_empty(), "{exit}: {output:?}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn an_unwritable_stderr_does_not_turn_an_error_into_a_panic() {
    let secret = SecretFile::new();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    // A connection failure, whose message cannot be written.
    let status = run_where_nothing_listens(&secret)
        .stderr(full())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(255), "a panic exits 101");
    // The same for a line on stdout.
    let status = Command::new(rcmd_bin())
        .args(["keygen", "--force", "--secret-file"])
        .arg(&secret.path)
        .stdout(full())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Runs a client that finds no secret file and returns the commands its message suggests (the
/// texts between backquotes), in order.
fn missing_secret_hint(mut client: Command) -> Vec<String> {
    client.stdin(Stdio::null());
    let output = output_within(client, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let commands: Vec<String> = stderr
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!commands.is_empty(), "no command in the hint: {stderr}");
    commands
}

#[test]
fn a_named_secret_file_in_a_missing_directory_is_refused_not_made_up() {
    // As `ssh-keygen -f` fails: a typo in a path must not create directories and a secret.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("no-such-dir").join("secret");
    for (args, env) in [
        (
            vec!["keygen", "--secret-file", typo.to_str().unwrap()],
            None,
        ),
        (vec!["keygen"], Some(&typo)),
        (vec!["demo", "--secret-file", typo.to_str().unwrap()], None),
    ] {
        let mut command = Command::new(rcmd_bin());
        command.args(&args).stdin(Stdio::null());
        if let Some(path) = env {
            command.env("RCMD_SECRET_FILE", path);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("its directory does not exist"), "{stderr}");
        assert!(!dir.path().join("no-such-dir").exists(), "{args:?}");
    }
    // The default location, even when named (the hint for a missing secret names it), is
    // created whole: following the hint works on a fresh machine.
    let config = dir.path().join("fresh-config");
    let mut run = Command::new(rcmd_bin());
    run.args(["run", "127.0.0.1:1", "--", "true"])
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("RCMD_SECRET_FILE");
    let hint = missing_secret_hint(run);
    assert_eq!(hint.len(), 1, "{hint:?}");
    let hint = &hint[0];
    let path = hint
        .strip_prefix("rcmd keygen --secret-file ")
        .unwrap_or_else(|| panic!("{hint}"));
    // Quoted if it has blanks, as a shell would take it.
    let path = path
        .strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .unwrap_or(path);
    let status = Command::new(rcmd_bin())
        .args(["keygen", "--secret-file", path])
        .env("XDG_CONFIG_HOME", &config)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{hint}");
    assert!(config.join("rcmd").join("secret").is_file());
    // A named path in a directory that does not exist: the hint makes the directory first,
    // and followed to the letter by a shell, it works.
    let elsewhere = dir.path().join("new dir").join("secret");
    let mut run = Command::new(rcmd_bin());
    run.args(["run", "127.0.0.1:1", "--secret-file"])
        .arg(&elsewhere)
        .args(["--", "true"]);
    let hint = missing_secret_hint(run);
    assert_eq!(hint.len(), 2, "{hint:?}");
    assert!(hint[0].starts_with("mkdir -p "), "{hint:?}");
    assert!(hint[1].starts_with("rcmd keygen "), "{hint:?}");
    for step in &hint {
        let step = step.replacen("rcmd ", &format!("{} ", rcmd_bin()), 1);
        let status = Command::new("sh")
            .args(["-c", &step])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{step}");
    }
    assert!(elsewhere.is_file(), "{hint:?}");
    // An existing directory is fine.
    let named = dir.path().join("secret");
    let status = Command::new(rcmd_bin())
        .args(["keygen", "--secret-file"])
        .arg(&named)
        .status()
        .unwrap();
    assert!(status.success() && named.is_file());
}

#[test]
fn an_empty_command_is_a_usage_error_found_before_connecting() {
    // Nothing listens on port 1: had it connected first, this would be 255.
    let output = Command::new(rcmd_bin())
        .args(["run", "127.0.0.1:1", "--", "  "])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("the command is empty"));
}

#[test]
fn a_connection_error_names_the_port_it_tried() {
    let secret = SecretFile::new();
    let output = Command::new(rcmd_bin())
        .args(["run", "localhost:1", "--secret-file"])
        .arg(&secret.path)
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    // `localhost` resolves to 127.0.0.1 or ::1; either way the message shows what was tried.
    assert!(
        stderr.contains("cannot connect to localhost:1 (") && stderr.contains(":1)"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn a_client_warning_reads_like_its_other_messages() {
    use std::os::unix::fs::PermissionsExt;
    let secret = SecretFile::new();
    std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = run_where_nothing_listens(&secret).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("rcmd: warning: secret file ") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert_eq!(output.status.code(), Some(255));
}

/// `rcmd run 127.0.0.1:1 -- true`: nothing listens on port 1, so it fails to connect.
fn run_where_nothing_listens(secret: &SecretFile) -> Command {
    let mut command = Command::new(rcmd_bin());
    command
        .args(["run", "127.0.0.1:1", "--secret-file"])
        .arg(&secret.path)
        .args(["--", "true"])
        .stdin(Stdio::null());
    command
}

#[test]
fn the_server_logs_each_command_on_one_line_it_cannot_forge() {
    let server = TestServer::start(&[]);
    // A newline in the command must not start a log line of the command's own making.
    let output = server.run("echo one; : '\n[2026-01-01T00:00:00.000Z INFO  forged] line'");
    assert!(output.status.success(), "{output:?}");
    server.wait_for_log("finished", Duration::from_secs(10));
    let log = server.log();
    let started = log
        .lines()
        .find(|line| line.contains(": command 1 (pid "))
        .unwrap_or_else(|| panic!("no start line in:\n{log}"));
    // `[<RFC 3339 time, milliseconds> INFO  <target>] <peer>: command 1 (pid N): "<command>"`
    let (time, rest) = started[1..].split_once(' ').unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{started}"
    );
    assert!(
        rest.starts_with("INFO  rcmd::server::connection::command] 127.0.0.1:"),
        "{started}"
    );
    assert!(
        started.ends_with(r#": "echo one; : '\n[2026-01-01T00:00:00.000Z INFO  forged] line'""#),
        "{started}"
    );
    assert!(
        !log.lines().any(|line| line.starts_with("[2026-01-01")),
        "{log}"
    );
}

#[test]
fn run_takes_the_command_after_the_address_without_dashes_as_ssh_does() {
    let server = TestServer::start(&[]);
    let mut command = Command::new(rcmd_bin());
    command
        .args(["run", "--secret-file"])
        .arg(&server.secret.path)
        .arg(server.addr.to_string())
        // Options among the command's words are the command's, not rcmd's.
        .args(["echo", "a", "--stats", "-x"])
        .stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(60));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "a --stats -x\n");
    assert!(output.stderr.is_empty(), "{output:?}");
    assert_eq!(output.status.code(), Some(0));
}

#[cfg(unix)]
#[test]
fn run_with_no_stdin_leaves_stdin_to_the_loop_around_it() {
    let server = TestServer::start(&[]);
    // The classic `ssh` pitfall: without -n the first command is given the rest of the loop's
    // input (here `cat` reads it all), and the loop ends after one line.
    let loop_over_lines = |flag: &str| {
        let script = format!(
            "printf 'one\\ntwo\\nthree\\n' | while read word; do \
             '{rcmd}' run {flag} --secret-file '{secret}' {addr} \"echo $word; cat >/dev/null\" || exit 9; done",
            rcmd = rcmd_bin(),
            secret = server.secret.path.display(),
            addr = server.addr,
        );
        let mut command = Command::new("/bin/sh");
        command.args(["-c", &script]).stdin(Stdio::null());
        let output = output_within(command, Duration::from_secs(60));
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(loop_over_lines("-n"), "one\ntwo\nthree\n");
    assert_eq!(loop_over_lines(""), "one\n");
}

/// Every session's end is in the server's log at `info` (as sshd's "Disconnected from"), and so
/// is each command a shutdown kills.
#[cfg(unix)]
#[test]
fn the_server_log_records_how_sessions_end() {
    let mut server = TestServer::start(&["--command-timeout", "60"]);
    assert!(server.run("true").status.success());
    server.wait_for_log(": disconnected", Duration::from_secs(10));
    let mut command = server.client("run");
    command
        .args(["--", "sleep 30"])
        .stdin(Stdio::null())
        .stderr(Stdio::null()); // "server error (shutdown)", expected
    let mut client = command.spawn().unwrap();
    server.wait_for_log("): \"sleep 30\"", Duration::from_secs(10));
    assert_eq!(server.terminate().code(), Some(0));
    let _ = client.wait();
    let log = server.log();
    assert!(
        log.lines()
            .any(|line| line.contains("INFO ") && line.ends_with(": disconnected")),
        "{log}"
    );
    assert!(
        log.contains(": command 1 killed: the server is shutting down"),
        "{log}"
    );
}

/// A client that goes away mid-command leaves two lines, as every other ending does: how the
/// command ended, and how the connection did.
#[cfg(unix)]
#[test]
fn the_server_log_records_a_command_whose_client_left() {
    let server = TestServer::start(&[]);
    let mut client = server
        .client("run")
        .args(["--", "sleep 30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_log("): \"sleep 30\"", Duration::from_secs(10));
    client.kill().unwrap();
    let _ = client.wait();
    server.wait_for_log(
        ": command 1 killed: the client left",
        Duration::from_secs(10),
    );
    let log = server.log();
    let killed = log.find(": command 1 killed: the client left").unwrap();
    let after = &log[killed..];
    assert!(
        after.contains(": disconnected\n") || after.contains(": connection lost: "),
        "{log}"
    );
}

/// A script through `connect`: a line that is not UTF-8 is reported and skipped, not the end of
/// the script; `exit WORD` with a word that is no number ends it with 2, as in a shell.
#[cfg(unix)]
#[test]
fn a_connect_script_skips_a_line_that_is_not_utf8_and_stops_at_a_bad_exit() {
    let server = TestServer::start(&[]);
    let script = |lines: &str| {
        let mut command = Command::new("/bin/sh");
        command.args([
            "-c",
            &format!(
                "printf '{lines}' | '{}' connect {} --secret-file '{}'",
                rcmd_bin(),
                server.addr,
                server.secret.path.display()
            ),
        ]);
        output_within(command, Duration::from_secs(60))
    };
    let output = script(r"echo before\necho caf\351\necho after\n");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "before\nafter\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 2 is not valid UTF-8; not run"),
        "{stderr}"
    );
    assert_eq!(output.status.code(), Some(0));
    let output = script(r"echo before\nexit abc\necho never\n");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "before\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exit: Illegal number: abc"), "{stderr}");
    assert_eq!(output.status.code(), Some(2));
}

/// Ctrl-C while a script's command runs interrupts the command and ends the script, as it
/// would end a shell running it.
#[cfg(unix)]
#[test]
fn ctrl_c_during_a_connect_script_ends_the_script() {
    let server = TestServer::start(&[]);
    let mut command = server.client("connect");
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = command.spawn().unwrap();
    let stdout = read_in_background(client.stdout.take().unwrap());
    let _stderr = read_in_background(client.stderr.take().unwrap());
    let marker = unique_sleep_marker();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(format!("sleep 30 {marker}\necho never\n").as_bytes())
        .unwrap();
    // Signalled once `sleep` runs: `sh -c` catches SIGINT until it execs the command, and one
    // that lands just before the exec is lost with the shell's handler (the same locally).
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));
    signal(client.id(), "INT");
    let status = wait_within(&mut client, Duration::from_secs(20)).expect("still running");
    assert_eq!(status.code(), Some(130));
    assert_eq!(String::from_utf8_lossy(&stdout.join().unwrap()), "");
}

/// "Two terminals on one machine work with no set-up": a server started with no secret named
/// anywhere makes the per-user default one and serves.
#[test]
fn serve_on_a_fresh_machine_creates_the_default_secret_and_serves() {
    let config = tempfile::tempdir().unwrap();
    let secret = config.path().join("rcmd").join("secret");
    let mut server = Command::new(rcmd_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("RCMD_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written whole: 64 hex digits (waited for, not only the file, so that the server is not
    // stopped between creating the file and writing it).
    let written = || std::fs::read_to_string(&secret).is_ok_and(|s| s.trim().len() == 64);
    let created = eventually(Duration::from_secs(10), written);
    let still_serving = matches!(server.try_wait(), Ok(None));
    signal(server.id(), "TERM");
    let output = server.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(created, "no default secret was created: {stderr}");
    assert!(still_serving, "the server did not stay up: {stderr}");
}

/// The server's side of one authenticated session, for a fake server that scripts what the
/// server says after the handshake.
struct FakeSession {
    stream: TcpStream,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
}

impl FakeSession {
    /// Runs the server's half of the handshake (docs/protocol.md §6.1) with `secret`; from
    /// then on frames are tagged and verified as a real server's.
    fn accept(mut stream: TcpStream, secret: &[u8]) -> FakeSession {
        let server_nonce = auth::new_nonce();
        let hello = Message::Hello {
            protocol: PROTOCOL_NAME.into(),
            version: PROTOCOL_VERSION,
            nonce: Bytes32(server_nonce),
        };
        let mut bytes = Vec::new();
        FrameEncoder::new().encode(&hello, b"", &mut bytes);
        stream.write_all(&bytes).unwrap();
        let mut decoder = FrameDecoder::default();
        let Message::Auth { nonce, .. } = read_frame(&mut stream, &mut decoder).message else {
            panic!("expected auth");
        };
        let client_nonce = nonce.0;
        let proof = auth::proof(secret, auth::Role::Server, &server_nonce, &client_nonce);
        let welcome = Message::Welcome {
            proof: Bytes32(proof),
        };
        bytes.clear();
        FrameEncoder::new().encode(&welcome, b"", &mut bytes);
        stream.write_all(&bytes).unwrap();
        let keys = auth::SessionKeys::derive(secret, &server_nonce, &client_nonce);
        let mut encoder = FrameEncoder::new();
        encoder.start_tagging(auth::FrameMac::new(&keys.server_to_client));
        decoder.start_verifying(auth::FrameMac::new(&keys.client_to_server));
        FakeSession {
            stream,
            decoder,
            encoder,
        }
    }

    fn read(&mut self) -> Frame {
        read_frame(&mut self.stream, &mut self.decoder)
    }

    fn send(&mut self, message: &Message, body: &[u8]) {
        let mut bytes = Vec::new();
        self.encoder.encode(message, body, &mut bytes);
        self.stream.write_all(&bytes).unwrap();
    }

    /// Reads the client's `exec` and returns its id.
    fn read_exec(&mut self) -> u32 {
        match self.read().message {
            Message::Exec { id, .. } => id,
            other => panic!("expected exec, got {other:?}"),
        }
    }

    fn exit(&mut self, id: u32, code: i32) {
        let exit = Message::Exit {
            id,
            status: rcmd::protocol::ExitStatus::Exited { code },
            duration_ms: 0,
        };
        self.send(&exit, b"");
    }

    /// Waits for the client to close the connection.
    fn until_closed(mut self) {
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
    }
}

/// A fake server that authenticates with `secret` and then runs `serve`.
fn fake_rcmd_server<T: Send + 'static>(
    secret: &SecretFile,
    serve: impl FnOnce(&mut FakeSession) -> T + Send + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<T>) {
    let secret = rcmd::secret::load(&secret.path).unwrap();
    fake_server(move |stream| {
        let mut session = FakeSession::accept(stream, &secret);
        let result = serve(&mut session);
        session.until_closed();
        result
    })
}

/// `rcmd SUBCOMMAND ADDR --secret-file SECRET` for a fake server.
fn client_of(subcommand: &str, addr: std::net::SocketAddr, secret: &SecretFile) -> Command {
    let mut command = Command::new(rcmd_bin());
    command
        .args([subcommand, &addr.to_string(), "--secret-file"])
        .arg(&secret.path);
    command
}

/// Frames about another command (leftovers of an earlier one, docs/protocol.md §5.13) are
/// ignored: its output is not printed, its exit does not end the running command, its refusal
/// does not refuse it.
#[test]
fn frames_about_another_command_are_ignored_not_taken_for_the_running_ones() {
    let secret = SecretFile::new();
    let (addr, server) = fake_rcmd_server(&secret, |session| {
        let id = session.read_exec();
        let earlier = id.wrapping_add(1000);
        session.send(&Message::Stdout { id: earlier }, b"earlier stdout\n");
        session.send(&Message::Stderr { id: earlier }, b"earlier stderr\n");
        session.send(
            &Message::StdinAck {
                id: earlier,
                bytes: 1,
            },
            b"",
        );
        let refusal = Message::command_error(earlier, ErrorCode::Busy, "earlier refusal");
        session.send(&refusal, b"");
        session.exit(earlier, 9);
        session.send(&Message::Stdout { id }, b"own stdout\n");
        session.send(&Message::Stderr { id }, b"own stderr\n");
        session.exit(id, 3);
    });
    let mut command = client_of("run", addr, &secret);
    command.args(["--", "true"]).stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(30));
    let stderr = stderr_of(&output);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "own stdout\n");
    assert!(stderr.contains("own stderr\n"), "{stderr}");
    assert!(!stderr.contains("earlier"), "{stderr}");
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    server.join().unwrap();
}

/// The stdin window (docs/protocol.md §7.3) is widened only by the running command's own
/// `stdin_ack`: an acknowledgement for another command does not let the client send more.
#[test]
fn only_the_running_commands_acknowledgements_widen_the_stdin_window() {
    use rcmd::protocol::message::STDIN_WINDOW;
    let secret = SecretFile::new();
    let (addr, server) = fake_rcmd_server(&secret, |session| {
        let id = session.read_exec();
        // The command does not read yet: the client fills the window and waits.
        let (mut sent, mut frames) = (0, 0);
        while sent < STDIN_WINDOW {
            match session.read() {
                Frame {
                    message: Message::Stdin { id: of },
                    body,
                } if of == id => (sent, frames) = (sent + body.len(), frames + 1),
                other => panic!("expected stdin, got {other:?}"),
            }
        }
        // In frames as large as the reads of the pipe, not byte by byte.
        assert!(frames <= 1024, "{frames} frames for {sent} bytes");
        let ack = |id, bytes| Message::StdinAck { id, bytes };
        session.send(&ack(id.wrapping_add(1000), STDIN_WINDOW as u64), b"");
        session.send(&ack(id, 1), b"");
        // One byte acknowledged, so one byte more may come, and no more.
        let next = match session.read() {
            Frame {
                message: Message::Stdin { id: of },
                body,
            } if of == id => body.len(),
            other => panic!("expected stdin, got {other:?}"),
        };
        session.exit(id, 0);
        (sent, next)
    });
    let mut command = client_of("run", addr, &secret);
    command
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = command.spawn().unwrap();
    let mut stdin = client.stdin.take().unwrap();
    // More than the window; the client leaves before taking it all.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&vec![b'x'; 4 * STDIN_WINDOW]);
    });
    let stderr = read_in_background(client.stderr.take().unwrap());
    let _stdout = read_in_background(client.stdout.take().unwrap());
    let status = wait_within(&mut client, Duration::from_secs(30)).unwrap_or_else(|| {
        let _ = client.kill();
        panic!("the client did not finish");
    });
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    assert_eq!(server.join().unwrap(), (STDIN_WINDOW, 1), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    writer.join().unwrap();
}

/// A command of exactly the largest frame body (1 MiB) fits in one frame, so the client sends
/// it; only a longer one is refused before it is sent (see `limits.rs`).
#[test]
fn a_command_of_exactly_the_largest_body_is_sent() {
    use rcmd::protocol::frame::MAX_BODY_LEN;
    let secret = SecretFile::new();
    let (addr, server) = fake_rcmd_server(&secret, |session| {
        let exec = session.read();
        let Message::Exec { id, .. } = exec.message else {
            panic!("expected exec, got {:?}", exec.message);
        };
        session.exit(id, 0);
        exec.body.len()
    });
    let mut command = client_of("run", addr, &secret);
    // Arguments of at most 128 KiB each (the kernel's limit for one), joined with spaces.
    let mut words = vec![":".to_owned()];
    let mut length = 1;
    while length < MAX_BODY_LEN {
        let word_len = (MAX_BODY_LEN - length - 1).min(100_000);
        words.push("y".repeat(word_len));
        length += 1 + word_len;
    }
    assert_eq!(length, MAX_BODY_LEN);
    command.arg("--").args(&words).stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(server.join().unwrap(), MAX_BODY_LEN);
}

/// Each command of a session gets a fresh id, 1, 2, 3, ... (docs/protocol.md §7.8): with a
/// reused one, frames still in flight for an earlier command would be taken for the next one's.
#[test]
fn each_command_of_a_session_gets_a_fresh_id() {
    let secret = SecretFile::new();
    let (addr, server) = fake_rcmd_server(&secret, |session| {
        let ids: Vec<u32> = (0..3)
            .map(|_| {
                let id = session.read_exec();
                session.exit(id, 0);
                id
            })
            .collect();
        ids
    });
    let output = typed_into(client_of("connect", addr, &secret), "one\ntwo\nthree\n");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(server.join().unwrap(), [1, 2, 3]);
}
