//! What an operator sees of a running server: its start-up log, SIGHUP re-reading the secret,
//! and the secret files it refuses to serve with.

#![cfg(unix)]

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use util::*;

const WAIT: Duration = Duration::from_secs(10);

/// The start-up lines reach the log at once, not when the first client connects: after a
/// restart, `journalctl` shows the server serving (and any warning about its secret) before
/// anyone has used it.
#[test]
fn the_start_up_lines_are_logged_before_any_client_connects() {
    let server = TestServer::start(&[]);
    server.wait_for_log("serving on 127.0.0.1:", WAIT);
}

/// SIGHUP re-reads the secret file, as `sshd` re-reads its configuration: a rotated secret
/// takes effect without a restart, the old one no longer authenticates, and a session that
/// authenticated before the rotation goes on.
#[test]
fn sighup_puts_a_rotated_secret_in_use() {
    let mut server = TestServer::start(&[]);
    let old = server.secret.dir.path().join("old-secret");
    fs::copy(&server.secret.path, &old).unwrap();
    // A session open across the rotation: `connect` reading commands from a pipe.
    let mut session = server
        .client("connect")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut session_input = session.stdin.take().unwrap();
    let session_output = read_in_background(session.stdout.take().unwrap());
    writeln_to(&mut session_input, "echo before");
    server.wait_for_log("): \"echo before\"", WAIT);

    keygen_over(&server.secret.path);
    signal(server.pid(), "HUP");
    server.wait_for_log("new secret from", WAIT);

    let with_old = run_with_secret(&server, &old, "echo old");
    assert_eq!(with_old.status.code(), Some(255));
    assert!(
        stderr_of(&with_old).contains("authentication failed"),
        "{}",
        stderr_of(&with_old)
    );
    let with_new = run_with_secret(&server, &server.secret.path, "echo new");
    assert_eq!(String::from_utf8_lossy(&with_new.stdout), "new\n");

    writeln_to(&mut session_input, "echo after");
    drop(session_input);
    assert_eq!(
        wait_within(&mut session, WAIT).and_then(|s| s.code()),
        Some(0)
    );
    assert_eq!(
        String::from_utf8_lossy(&session_output.join().unwrap()),
        "before\nafter\n"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

/// SIGHUP with the secret file as it was says so, rather than announcing a new secret that is
/// not: the operator reading the log after a rotation needs to know whether it took.
#[test]
fn sighup_with_the_secret_unchanged_says_it_is_unchanged() {
    let server = TestServer::start(&[]);
    signal(server.pid(), "HUP");
    server.wait_for_log("is unchanged", WAIT);
    assert!(!server.log().contains("new secret"), "{}", server.log());
    let output = server.run("echo still");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "still\n");
}

/// A secret file that cannot be used at SIGHUP time (here, too short) leaves the old secret in
/// use, and says so; the server goes on.
#[test]
fn sighup_keeps_the_old_secret_when_the_file_is_unusable() {
    let server = TestServer::start(&[]);
    let old = server.secret.dir.path().join("old-secret");
    fs::copy(&server.secret.path, &old).unwrap();
    fs::write(&server.secret.path, "short\n").unwrap();
    signal(server.pid(), "HUP");
    server.wait_for_log("kept the old secret: the secret in", WAIT);
    let output = run_with_secret(&server, &old, "echo still");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "still\n");
}

/// A secret file every user can read is refused, as `sshd` refuses such key files: any of them
/// could run commands as the server's user.
#[test]
fn the_server_refuses_a_secret_file_everyone_can_read() {
    let secret = SecretFile::new();
    fs::set_permissions(&secret.path, fs::Permissions::from_mode(0o644)).unwrap();
    let output = serve_with(&secret.path);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("can be read by every user") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    // Group access only warns: a service's group may be meant to read it.
    fs::set_permissions(&secret.path, fs::Permissions::from_mode(0o640)).unwrap();
    let server = TestServer::start_with(secret, &[]);
    server.wait_for_log("is accessible to other users", WAIT);
    assert!(server.run("true").status.success());
}

/// A secret file named on the command line that is not there is an error, not a new secret:
/// in a service's configuration that is a typo, and a made-up secret would fail every client.
#[test]
fn the_server_does_not_make_up_a_secret_for_a_named_file_that_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("secret");
    let output = serve_with(&missing);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("no secret file at"),
        "{}",
        stderr_of(&output)
    );
    assert_absent(&missing);
    assert_absent(&dir.path().join("no-such-dir"));
}

/// `rcmd serve --secret-file SECRET` on a free loopback port, expected to fail at start.
fn serve_with(secret: &std::path::Path) -> Output {
    let mut command = Command::new(rcmd_bin());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--secret-file"])
        .arg(secret)
        .stdin(Stdio::null());
    output_within(command, WAIT)
}

fn run_with_secret(server: &TestServer, secret: &std::path::Path, command: &str) -> Output {
    let mut client = Command::new(rcmd_bin());
    client
        .args(["run", &server.addr.to_string(), "--secret-file"])
        .arg(secret)
        .args(["--", command])
        .stdin(Stdio::null());
    output_within(client, WAIT)
}

fn keygen_over(path: &std::path::Path) {
    let status = Command::new(rcmd_bin())
        .args(["keygen", "--force", "--secret-file"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn writeln_to(input: &mut impl std::io::Write, line: &str) {
    writeln!(input, "{line}").unwrap();
    input.flush().unwrap();
}
