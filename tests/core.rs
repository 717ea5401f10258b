//! End-to-end tests of the core: the real `rcmd` binary as server and client over loopback.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn exit_codes_come_back_exactly() {
    let server = TestServer::start(&[]);
    for code in [0, 1, 4, 5, 44] {
        let output = server.run(&format!("exit {code}"));
        assert_eq!(
            output.status.code(),
            Some(code),
            "exit {code}: {}",
            stderr_of(&output)
        );
        // OpenSSH's exit-status.sh: also when stdout and stderr close early and exit comes later.
        let output = server.run(&format!("exec >&- 2>&-; sleep 0.2; exit {code}"));
        assert_eq!(output.status.code(), Some(code), "early close, exit {code}");
    }
}

#[test]
fn a_signal_is_reported_as_128_plus_its_number() {
    let server = TestServer::start(&[]);
    let output = server.run("kill -TERM $$");
    assert_eq!(output.status.code(), Some(128 + 15));
}

#[test]
fn stdout_and_stderr_arrive_separated_and_complete() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out.bin"), dir.path().join("err.bin"));
    // 10 MB each of incompressible bytes, written concurrently to both streams.
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let (out_bytes, err_bytes) = (random(10_000_000), random(10_000_000));
    std::fs::write(&out_path, &out_bytes).unwrap();
    std::fs::write(&err_path, &err_bytes).unwrap();
    let command = format!(
        "cat {} & cat {} >&2; wait",
        out_path.display(),
        err_path.display()
    );
    let output = server.run(&command);
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), out_bytes.len());
    assert_eq!(sha256_hex(&output.stdout), sha256_hex(&out_bytes));
    assert_eq!(output.stderr.len(), err_bytes.len());
    assert_eq!(sha256_hex(&output.stderr), sha256_hex(&err_bytes));
}

#[test]
fn stdin_is_forwarded_with_end_of_file() {
    let server = TestServer::start(&[]);
    let mut command = server.client("run");
    command
        .args(["--", "sort", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"a\nb\n").unwrap(); // dropped: EOF
    let output = child.wait_with_output().unwrap();
    assert_eq!(stdout_of(&output), "b\na\n");
    assert!(output.status.success());

    // A megabyte through stdin and back, counted.
    let mut command = server.client("run");
    command
        .args(["--", "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || stdin.write_all(&vec![b'x'; 1 << 20]));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(stdout_of(&output).trim(), "1048576");
}

#[test]
fn run_stats_counts_every_stream_and_changes_nothing_else() {
    let server = TestServer::start(&[]);
    let mut command = server.client("run");
    command
        .args([
            "--stats",
            "--",
            "wc -c; head -c 300000 /dev/zero; printf oops >&2; exit 7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || stdin.write_all(&[b'x'; 12345]));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();

    assert_eq!(output.status.code(), Some(7), "{}", stderr_of(&output));
    let count_line = "12345\n";
    assert_eq!(output.stdout.len(), count_line.len() + 300_000);
    assert!(output.stdout.starts_with(count_line.as_bytes()));
    // The command's stderr first, untouched; then one line of ours.
    let stderr = stderr_of(&output);
    let (command_stderr, report) = stderr.split_at(4);
    assert_eq!(command_stderr, "oops");
    let received = format!(
        "rcmd: received {} bytes of stdout and 4 of stderr, sent 12345 of stdin, in ",
        output.stdout.len()
    );
    assert!(report.starts_with(&received), "report: {report:?}");
    assert!(report.ends_with("/s)\n") && report.lines().count() == 1);

    // Without the flag, no report.
    let output = server.run("printf oops >&2");
    assert_eq!(stderr_of(&output), "oops");
}

#[test]
fn output_is_streamed_as_it_is_produced() {
    let server = TestServer::start(&[]);
    let mut command = server.client("run");
    command
        .args(["--", "echo first; sleep 3; echo second"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_after = started.elapsed();
    assert!(
        first_after < Duration::from_secs(2),
        "first line took {first_after:?}: not streamed"
    );
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(child.wait().unwrap().success());
}

#[test]
fn wrong_secret_runs_nothing() {
    let server = TestServer::start(&[]);
    let other = SecretFile::other();
    let marker = std::env::temp_dir().join(unique_marker("wrong-secret"));
    let mut command = util::output_command(&server, "run", &other.path);
    command
        .arg("--")
        .arg(format!("touch {}", marker.display()))
        .stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr_of(&output).contains("authentication failed"),
        "{}",
        stderr_of(&output)
    );
    server.wait_for_log("authentication failed", Duration::from_secs(5));
    assert_never_ran(&server, &[marker]);
}

#[test]
fn a_tampered_frame_is_an_integrity_error_and_runs_nothing() {
    let server = TestServer::start(&[]);
    let marker = std::env::temp_dir().join(unique_marker("tampered"));
    let command_text = format!("touch {}", marker.display());
    // Offsets into the client's first tagged frame (the exec): the length prefix, the JSON
    // header, the command in the body, the tag.
    for offset in [2, 6, 20, 45, 60, 80] {
        let proxy = TamperingProxy::start(server.addr, Direction::ClientToServer, offset, 0x04);
        let mut command = std::process::Command::new(rcmd_bin());
        command
            .arg("run")
            .arg(proxy.addr.to_string())
            .arg("--secret-file")
            .arg(&server.secret.path);
        command.arg("--").arg(&command_text).stdin(Stdio::null());
        let output = output_within(command, Duration::from_secs(30));
        assert_eq!(
            output.status.code(),
            Some(255),
            "offset {offset}: {}",
            stderr_of(&output)
        );
        assert!(
            stderr_of(&output).contains("integrity"),
            "offset {offset}: {}",
            stderr_of(&output)
        );
    }
    server.wait_for_log("integrity check failed", Duration::from_secs(5));
    assert_never_ran(&server, std::slice::from_ref(&marker));

    // The other way round: output altered on its way to the client is refused by the client.
    let proxy = TamperingProxy::start(server.addr, Direction::ServerToClient, 30, 0x01);
    let mut command = std::process::Command::new(rcmd_bin());
    command
        .arg("run")
        .arg(proxy.addr.to_string())
        .arg("--secret-file")
        .arg(&server.secret.path);
    command.args(["--", "echo hello"]).stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr_of(&output).contains("integrity error"),
        "{}",
        stderr_of(&output)
    );
    assert!(!stdout_of(&output).contains("hello"));
    // The client said why it left, so the server's log does not read like a plain disconnect.
    server.wait_for_log(
        r#"client reports integrity: "a frame from the server failed its integrity check""#,
        Duration::from_secs(10),
    );
}

#[test]
fn killing_the_client_kills_the_remote_process_tree() {
    let server = TestServer::start(&[]);
    let marker = unique_sleep_marker();
    // A pipeline and a background job: several processes under the shell.
    let script = format!("sleep 300 {marker} | cat & sleep 301 {marker}; wait");
    let mut client = server.client("run");
    client
        .arg("--")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut client = client.spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !sleeps_matching(&marker)
            .is_empty()),
        "command never started"
    );
    let sleep = sleeps_matching(&marker)[0];
    let group = process_group(sleep);
    assert!(
        eventually(Duration::from_secs(10), || processes_in_group(group).len()
            >= 3),
        "tree incomplete"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    let gone = eventually(Duration::from_secs(1), || {
        processes_in_group(group).is_empty()
    });
    assert!(
        gone,
        "processes left in group {group}: {:?}",
        processes_in_group(group)
    );
    assert!(
        eventually(Duration::from_secs(2), || zombie_children(server.pid())
            .is_empty()),
        "zombies left"
    );
}

fn process_group(pid: u32) -> u32 {
    proc_stat(pid).expect("process exists").pgrp
}

/// Live (not zombie) processes in process group `group`.
fn processes_in_group(group: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgrp == group && p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

#[test]
fn fifty_concurrent_clients_each_get_their_own_output() {
    let server = TestServer::start(&[]);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let mut command = server.client("run");
            command.arg("--").arg(format!(
                "for n in 1 2 3; do echo client-{i}-$n; done; echo err-{i} >&2; exit {}",
                i % 7
            ));
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            (i, command.spawn().unwrap())
        })
        .collect();
    for (i, child) in clients {
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            stdout_of(&output),
            format!("client-{i}-1\nclient-{i}-2\nclient-{i}-3\n")
        );
        assert_eq!(stderr_of(&output), format!("err-{i}\n"));
        assert_eq!(output.status.code(), Some(i % 7));
    }
}

#[test]
fn cd_persists_for_the_connection() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    std::fs::create_dir(canonical.join("sub")).unwrap();
    let script = format!(
        "cd {}\npwd\ncd sub\npwd\ncd /no/such/dir\npwd\ncd -\npwd\nexit\n",
        canonical.display()
    );
    let output = at_the_prompt(&server, &script);
    let sub = canonical.join("sub");
    let expected = format!(
        "{}\n{}\n{}\n{}\n",
        canonical.display(),
        sub.display(),
        sub.display(),
        canonical.display()
    );
    assert_eq!(stdout_of(&output), expected);
    assert!(
        stderr_of(&output).contains("cd: /no/such/dir: No such file or directory"),
        "{}",
        stderr_of(&output)
    );
}

/// `cd` into a directory the server's user may not enter is refused, as a shell's `cd` refuses
/// it, instead of being accepted and then failing the start of every later command. The server
/// runs as `nobody` (root may enter any directory), so this needs root to start it.
#[cfg(unix)]
#[test]
fn cd_refuses_a_directory_the_servers_user_may_not_enter() {
    use std::os::unix::fs::{PermissionsExt, chown};
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can start a server as another user");
        return;
    }
    let secret = SecretFile::new();
    // `nobody` must reach its secret (owned by it, as a server's secret is) and nothing more.
    std::fs::set_permissions(secret.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    chown(&secret.path, Some(NOBODY), Some(NOBODY)).unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let workdir = work.path().canonicalize().unwrap();
    let locked = workdir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let server = TestServer::start_configured(
        secret,
        &["--workdir", workdir.to_str().unwrap()],
        |command| {
            command.uid(NOBODY).gid(NOBODY);
        },
    );
    let output = at_the_prompt(&server, "cd locked\npwd\nexit\n");
    assert_eq!(stdout_of(&output), format!("{}\n", workdir.display()));
    assert!(
        stderr_of(&output).contains("cd: locked: Permission denied"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn cd_understands_quotes_escapes_variables_tilde_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let spaced = root.join("dir with space");
    std::fs::create_dir_all(spaced.join("sub")).unwrap();
    // The server's environment, which `$NAME` and `~` come from.
    let server = TestServer::start_in_shell(
        &format!(
            "export RCMD_TEST_ROOT='{0}' HOME='{0}/dir with space'",
            root.display()
        ),
        &[],
    );
    let script = format!(
        "cd \"{root}/dir with space\"\npwd\n\
         cd '{root}'\ncd 'dir with space'/sub\npwd\n\
         cd {root}\ncd dir\\ with\\ space # a comment\npwd\n\
         cd $RCMD_TEST_ROOT\npwd\n\
         cd \"${{RCMD_TEST_ROOT}}/dir with space\"/sub\npwd\n\
         cd /\ncd ~/sub\npwd\n\
         cd \"\"\npwd\nexit\n",
        root = root.display()
    );
    let output = at_the_prompt(&server, &script);
    let (spaced, sub) = (spaced.display(), spaced.join("sub"));
    let (root, sub) = (root.display(), sub.display());
    assert_eq!(
        stdout_of(&output),
        format!("{spaced}\n{sub}\n{spaced}\n{root}\n{sub}\n{sub}\n{sub}\n"),
        "stderr: {}",
        stderr_of(&output)
    );
    assert_eq!(stderr_of(&output), "");
}

/// The command is `sh -c`'s command string even when it starts with `-`: not options of `sh`.
#[cfg(unix)]
#[test]
fn a_command_starting_with_a_dash_is_a_command_not_options_of_the_shell() {
    let server = TestServer::start(&[]);
    let output = server.run("-x");
    // "-x: not found" from dash, "-x: command not found" from bash; "Illegal option" before.
    assert_eq!(output.status.code(), Some(127), "{output:?}");
    assert!(stderr_of(&output).contains("-x: "), "{output:?}");
}

/// A lone `cd` that only the shell could read is refused with a reason and changes nothing,
/// rather than running in a shell where it would silently not last; in a list it is the
/// shell's, a one-off.
#[cfg(unix)]
#[test]
fn a_lone_cd_only_the_shell_could_read_is_refused_not_silently_lost() {
    let server = TestServer::start(&[]);
    let script = "cd /\ncd $(echo /var)\npwd\ncd /var/*\npwd\ncd ~root\npwd\ncd /tmp /etc\npwd\n\
                  cd /usr && pwd\npwd\nexit\n";
    let output = at_the_prompt(&server, script);
    assert_eq!(stdout_of(&output), "/\n/\n/\n/\n/usr\n/\n");
    let stderr = stderr_of(&output);
    let reasons: Vec<&str> = stderr.lines().filter(|l| l.starts_with("cd: ")).collect();
    assert_eq!(reasons.len(), 4, "{stderr}");
    for (line, what) in reasons.iter().zip([
        "cd: command substitution needs the shell",
        "cd: a glob (*, ? or [) needs the shell",
        "cd: ~ followed by a name needs the shell",
        "cd: too many arguments",
    ]) {
        assert!(line.starts_with(what), "{stderr}");
    }
}

/// At the prompt: `cd` into `root/gone/sub`, run `change` (a shell command, with `{gone}` and
/// `{sub}` replaced by the paths) in that directory's place, then a command that cannot start
/// there, and `cd` back to `root`: the error names the working directory and what became of it
/// (`expected`), and the prompt goes on.
fn cannot_start_after(change: &str, expected: &str) {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let gone = root.join("gone");
    let sub = gone.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let fill = |text: &str| {
        text.replace("{gone}", &gone.display().to_string())
            .replace("{sub}", &sub.display().to_string())
    };
    let script = format!(
        "cd {sub}\n{change}\necho unreachable\ncd {root}\npwd\nexit\n",
        sub = sub.display(),
        change = fill(change),
        root = root.display()
    );
    let output = at_the_prompt(&server, &script);
    assert_eq!(stdout_of(&output), format!("{}\n", root.display()));
    let expected = format!(
        "cannot start the command: the working directory {} {} (cd somewhere else)",
        sub.display(),
        fill(expected)
    );
    assert!(
        stderr_of(&output).contains(&expected),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn a_removed_working_directory_is_named_when_a_command_cannot_start() {
    cannot_start_after("rm -r {gone}", "no longer exists");
}

/// The same when the working directory was replaced by a file of the same name.
#[test]
fn a_working_directory_replaced_by_a_file_is_named_when_a_command_cannot_start() {
    cannot_start_after("rmdir {sub} && touch {sub}", "is no longer a directory");
}

/// The same when a directory above it was replaced by a file (the path then fails with "Not a
/// directory", not "No such file or directory"): it no longer exists.
#[test]
fn a_working_directory_under_a_replaced_parent_is_named_when_a_command_cannot_start() {
    cannot_start_after("rm -r {gone} && touch {gone}", "no longer exists");
}

#[test]
fn commands_at_the_prompt_read_dev_null_every_time() {
    // The server keeps one /dev/null open and gives each command a duplicate: a command that
    // reads or closes its stdin must not change what the next one gets.
    let server = TestServer::start(&[]);
    let script = "readlink /proc/self/fd/0\ncat; echo read-eof\nexec 0<&-; echo closed\n\
                  readlink /proc/self/fd/0\nwc -c\nexit\n";
    let output = at_the_prompt(&server, script);
    assert_eq!(
        stdout_of(&output),
        "/dev/null\nread-eof\nclosed\n/dev/null\n0\n",
        "stderr: {}",
        stderr_of(&output)
    );
}

#[test]
fn a_background_process_holding_the_pipe_does_not_delay_the_exit() {
    let server = TestServer::start(&[]);
    let started = Instant::now();
    let output = server.run("sleep 30 & echo started");
    let took = started.elapsed();
    assert_eq!(stdout_of(&output), "started\n");
    assert!(output.status.success());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn the_server_stops_cleanly_on_sigterm_and_kills_running_commands() {
    let mut server = TestServer::start(&[]);
    let (client, marker) = run_remote_sleep(&server, "", Stdio::null());
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    let output = client.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr_of(&output).contains("shutting down"),
        "{}",
        stderr_of(&output)
    );
    assert!(eventually(Duration::from_secs(2), || sleeps_matching(
        &marker
    )
    .is_empty()));
}

#[test]
fn a_shutdown_still_delivers_the_output_queued_for_a_slow_client_and_then_says_why() {
    // docs/protocol.md §10: at shutdown each connection is closed "as after any fatal error",
    // which means its queued frames are flushed first (within the closing grace). A client
    // that has not been reading has output queued in the server, behind which the `shutdown`
    // error waits; exiting at once would drop both, and the client would see only a cut.
    let server = TestServer::start(&[]);
    let mut client = util::raw::RawClient::authenticated_to(&server);
    client.exec_bytes(b"head -c 50000000 /dev/zero", None);
    // Time for the output to fill the socket buffers and the server's queue (the command then
    // blocks on its full pipe).
    thread::sleep(Duration::from_millis(500));
    signal(server.pid(), "TERM");
    client.expect_fatal(rcmd::protocol::ErrorCode::Shutdown, Duration::from_secs(10));
}

#[test]
fn a_server_whose_clients_are_gone_exits_without_waiting_out_the_shutdown_grace() {
    // The shutdown waits up to 3 s (SHUTDOWN_GRACE) for connections to close, and no longer
    // than they take: with none open, SIGTERM ends the server at once.
    let mut server = TestServer::start(&[]);
    assert!(server.run("true").status.success());
    let started = Instant::now();
    assert_eq!(server.terminate().code(), Some(0));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Its last line, after any about commands that would not die (the log is read from the
    // server's stderr by a thread, which may not have all of it yet).
    server.wait_for_log("shut down", Duration::from_secs(10));
    assert!(!server.log().contains("did not exit"), "{}", server.log());
}

#[test]
fn a_shutdown_waiting_for_a_client_to_close_sleeps_rather_than_spins() {
    // After SIGTERM the server has told this client and shut its side; it then waits for the
    // client to close (up to the 2 s closing grace) with nothing to do but sleep until then.
    let server = TestServer::start(&[]);
    let client = util::raw::RawClient::authenticated_to(&server);
    signal(server.pid(), "TERM");
    thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(server.pid());
    thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(server.pid()) - before;
    drop(client);
    assert!(
        used < 0.2,
        "the server used {used:.2} s of CPU in 1 s of waiting"
    );
}

#[test]
fn a_second_sigterm_exits_at_once_without_waiting_for_lingering_clients() {
    // The first SIGTERM starts a graceful shutdown, which would wait for this client (it
    // neither reads nor closes) until the 2 s closing grace ends; a second one means "now".
    // (The server then waits only for commands its spawner threads are starting at that
    // moment, none here: no 1 s wait for nothing.)
    let mut server = TestServer::start(&[]);
    let mut client = util::raw::RawClient::authenticated_to(&server);
    let marker = unique_sleep_marker();
    client.exec_bytes(format!("sleep 60 {marker}").as_bytes(), None);
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));
    signal(server.pid(), "TERM");
    server.wait_for_log("shutting down", Duration::from_secs(10));
    thread::sleep(Duration::from_millis(200));
    let second = Instant::now();
    let status = server.terminate();
    let took = second.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_millis(800), "took {took:?}");
    server.wait_for_log("second shutdown signal", Duration::from_secs(10));
    assert!(sleeps_matching(&marker).is_empty());
    drop(client);
}

#[test]
fn client_failures_exit_255_with_one_line() {
    // Nothing listens on a port we just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = SecretFile::new();
    let mut command = std::process::Command::new(rcmd_bin());
    command
        .args(["run", &format!("127.0.0.1:{port}"), "--secret-file"])
        .arg(&secret.path);
    command.args(["--", "true"]).stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr_of(&output).starts_with("rcmd: cannot connect to"),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(stderr_of(&output).lines().count(), 1);
}

#[test]
fn the_server_prints_its_address_and_survives_a_restart_on_the_same_port() {
    let first = TestServer::start(&[]);
    let addr = first.addr;
    // A connection the server closes first (at its shutdown): the server's side of it, whose
    // local port is the listening port, is what sits in TIME_WAIT, and what SO_REUSEADDR lets
    // the next server bind past. (A client that closes first leaves TIME_WAIT on its own port.)
    let mut open =
        util::raw::RawClient::authenticated(addr, &util::raw::load_secret(&first.secret.path));
    drop(first);
    open.expect_closed(Duration::from_secs(10));
    drop(open);
    let secret = SecretFile::new();
    let second = TestServer::start_with(secret, &["--listen", &addr.to_string()]);
    assert_eq!(second.addr, addr);
    assert!(second.run("true").status.success());
}

#[test]
fn commands_start_in_the_home_directory_unless_told_otherwise() {
    // As sshd: not in whatever directory the server happened to be started from.
    let home = tempfile::tempdir().unwrap();
    let started_in = tempfile::tempdir().unwrap();
    let pwd_of = |server: &TestServer| {
        let output = server.run("pwd");
        assert!(output.status.success(), "{}", stderr_of(&output));
        std::path::PathBuf::from(stdout_of(&output).trim_end())
    };
    let canonical = |dir: &tempfile::TempDir| dir.path().canonicalize().unwrap();
    let server = TestServer::start_configured(SecretFile::new(), &[], |command| {
        command
            .env("HOME", home.path())
            .current_dir(started_in.path());
    });
    assert_eq!(pwd_of(&server), canonical(&home));
    let workdir = started_in.path().to_str().unwrap();
    let server = TestServer::start_configured(SecretFile::new(), &["--workdir", workdir], |c| {
        c.env("HOME", home.path());
    });
    assert_eq!(pwd_of(&server), canonical(&started_in));
    // No home: where the server runs.
    let server = TestServer::start_configured(SecretFile::new(), &[], |command| {
        command.env_remove("HOME").current_dir(started_in.path());
    });
    assert_eq!(pwd_of(&server), canonical(&started_in));
}

#[test]
fn ctrl_c_interrupts_the_remote_command() {
    let server = TestServer::start(&[]);
    let (child, marker) = run_remote_sleep(&server, "; echo not reached", Stdio::null());
    signal(child.id(), "INT");
    let output = child.wait_with_output().unwrap();
    // SIGINT reached the whole remote process group, the shell included: 128 + 2.
    assert_eq!(output.status.code(), Some(130), "{}", stderr_of(&output));
    assert!(!stdout_of(&output).contains("not reached"));
    server.wait_for_log("delivering SIGINT", Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(2), || sleeps_matching(
        &marker
    )
    .is_empty()));
}

#[test]
fn a_command_ignoring_ctrl_c_is_killed_at_the_third_press_after_a_hint() {
    let server = TestServer::start(&[]);
    let marker = unique_sleep_marker();
    let mut client = server.client("run");
    client
        .arg("--")
        .arg(format!("trap '' INT; sleep 300 {marker}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = client.spawn().unwrap();
    // Collected as it comes: the hint must be there before the third press, not after it.
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collector = {
        let (stderr, source) = (stderr.clone(), child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                let mut stderr = stderr.lock().unwrap();
                stderr.push_str(&line);
                stderr.push('\n');
            }
        })
    };
    let hint = "rcmd: press Ctrl-C once more to kill the command (SIGKILL)";
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));
    // Each press waits until the server has delivered the one before: two signals sent to a
    // process before it runs may merge into one.
    for press in 1..=2 {
        signal(child.id(), "INT");
        assert!(eventually(Duration::from_secs(10), || server
            .log()
            .matches("delivering SIGINT")
            .count()
            == press));
    }
    // The hint, after the second press: the third is the one that kills.
    let hinted = eventually(Duration::from_secs(10), || {
        stderr.lock().unwrap().contains(hint)
    });
    let so_far = stderr.lock().unwrap().clone();
    assert!(hinted, "no hint after the second press: {so_far:?}");
    thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "two Ctrl-Cs to a command ignoring SIGINT must not end it"
    );
    signal(child.id(), "INT");
    let status = wait_within(&mut child, Duration::from_secs(10)).expect("killed at the third");
    assert_eq!(status.code(), Some(137));
    collector.join().unwrap();
    let stderr = stderr.lock().unwrap();
    assert_eq!(stderr.matches(hint).count(), 1, "{stderr}");
}

#[test]
fn a_reader_that_stops_early_ends_the_client_and_the_remote_command() {
    let server = TestServer::start(&[]);
    let started = Instant::now();
    // `rcmd run -- yes | head -n 1`, as OpenSSH's yes-head.sh does it.
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "{} run {} --secret-file {} -- yes | head -n 1",
            rcmd_bin(),
            server.addr,
            server.secret.path.display()
        ))
        .stdin(Stdio::null());
    let output = output_within(command, Duration::from_secs(60));
    assert_eq!(stdout_of(&output), "y\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    server.wait_for_log("killed: the client left", Duration::from_secs(5));
}

/// `rcmd run -- COMMAND` with its stdout and stderr piped to the test.
#[cfg(unix)]
fn run_piped(server: &TestServer, command: &str) -> std::process::Child {
    server
        .client("run")
        .args(["--", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Ctrl-C while the client's own output is stuck (its reader stopped reading but is still
/// there) ends the client with 130 within about a second, as it would a local program blocked
/// on its output; the command's end could never be shown. The remote command got the SIGINT.
#[cfg(unix)]
#[test]
fn ctrl_c_ends_a_client_whose_output_is_stuck() {
    use std::io::Read;
    let server = TestServer::start(&[]);
    let mut client = run_piped(&server, "yes");
    // Read a little, then hold the pipe open without reading: the client's writes fill it.
    let mut stdout = client.stdout.take().unwrap();
    let mut first = [0u8; 2];
    stdout.read_exact(&mut first).unwrap();
    thread::sleep(Duration::from_millis(500));
    signal(client.id(), "INT");
    let status = wait_within(&mut client, Duration::from_secs(10));
    drop(stdout);
    let status = status.expect("the client ended while its reader was still there");
    assert_eq!(status.code(), Some(130), "{status:?}");
    server.wait_for_log("delivering SIGINT", Duration::from_secs(5));
    // "finished", or "ended ... but not all its output was delivered" when output was still
    // queued for the client: either way SIGINT ended it.
    server.wait_for_log("killed by signal 2", Duration::from_secs(5));
}

/// A reader that is slow but still reading is not "stuck": after a Ctrl-C the client waits for
/// the command's own end (here a trap that exits 3) and delivers all its output.
#[cfg(unix)]
#[test]
fn ctrl_c_with_a_slow_reader_waits_for_the_commands_end() {
    use std::io::Read;
    let server = TestServer::start(&[]);
    // 64 KiB writes, so that the server sends 64 KiB frames.
    let mut client = run_piped(
        &server,
        "trap 'echo caught; exit 3' INT; dd if=/dev/zero bs=65536 count=3 2>/dev/null; sleep 30",
    );
    let mut stdout = client.stdout.take().unwrap();
    // 5 KiB every quarter second: a 64 KiB frame takes three seconds to go through, one of
    // the client's 16 KiB pieces less than the second that counts as stuck.
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 5120];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            thread::sleep(Duration::from_millis(250));
        }
        got
    });
    thread::sleep(Duration::from_secs(1));
    signal(client.id(), "INT");
    let status = wait_within(&mut client, Duration::from_secs(60)).expect("client ended");
    let got = reader.join().unwrap();
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert_eq!(got.len(), 3 * 65536 + "caught\n".len());
    assert!(got.ends_with(b"caught\n"));
}

/// With its reader gone, `rcmd run` ends as a local `yes` would: killed by SIGPIPE (141 in a
/// shell), quietly, so that `set -o pipefail` sees the output was cut short.
#[cfg(unix)]
#[test]
fn a_client_whose_reader_left_ends_as_killed_by_sigpipe() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let server = TestServer::start(&[]);
    let mut client = run_piped(&server, "yes");
    let mut first = [0u8; 2];
    client
        .stdout
        .take()
        .unwrap()
        .read_exact(&mut first)
        .unwrap(); // and closed here
    assert_eq!(&first, b"y\n");
    let status = wait_within(&mut client, Duration::from_secs(10)).expect("client ended");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
    let stderr = stderr_of_child(&mut client);
    assert_eq!(stderr, "");
}

#[test]
fn the_demo_runs_a_prompt_against_its_own_loopback_server() {
    let secret = SecretFile::new();
    let mut command = std::process::Command::new(rcmd_bin());
    command.args(["demo", "--secret-file"]).arg(&secret.path);
    let output = typed_into(command, "echo hello from the demo\nexit 3\n");
    assert_eq!(stdout_of(&output), "hello from the demo\n");
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
}

/// The demo's server is a real server, so its secret gets a server's checks: one that every
/// user can read is refused (as `serve` refuses it), not used with a warning.
#[cfg(unix)]
#[test]
fn the_demo_refuses_a_secret_that_every_user_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let secret = SecretFile::new();
    std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = std::process::Command::new(rcmd_bin());
    command.args(["demo", "--secret-file"]).arg(&secret.path);
    let output = typed_into(command, "echo the demo ran\nexit\n");
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "");
    assert!(
        stderr_of(&output).contains("can be read by every user"),
        "{}",
        stderr_of(&output)
    );
}

/// The demo's server is a thread of its process: when the demo ends while a command runs (here
/// its output's reader goes away, and it dies of SIGPIPE; the same holds for SIGTERM and
/// SIGHUP), it stops the server first, which kills the command's whole process tree, instead of
/// leaving the command behind.
#[cfg(unix)]
#[test]
fn a_demo_that_ends_mid_command_leaves_nothing_running() {
    use std::io::{Read, Write};
    let secret = SecretFile::new();
    let marker = unique_sleep_marker();
    let mut demo = std::process::Command::new(rcmd_bin())
        .args(["demo", "--secret-file"])
        .arg(&secret.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut script = demo.stdin.take().unwrap();
    writeln!(script, "sleep 300 {marker} & yes").unwrap();
    let mut output = demo.stdout.take().unwrap();
    let mut some = [0u8; 4096];
    output.read_exact(&mut some).unwrap();
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));
    drop(output); // the reader goes away
    assert_demo_died_of(&mut demo, libc::SIGPIPE, &marker);
}

/// A server started with SIGHUP ignored (as by `nohup`) keeps ignoring it, but its commands
/// get the default action back, as commands started from a login shell would.
#[test]
fn commands_of_a_nohup_server_can_still_be_hung_up() {
    let server = TestServer::start_in_shell("trap '' HUP INT QUIT", &[]);
    let output = server.run("kill -HUP $$; echo survived");
    assert_eq!(
        output.status.code(),
        Some(128 + 1),
        "{}",
        stdout_of(&output)
    );
    let output = server.run("kill -INT $$; echo survived");
    assert_eq!(output.status.code(), Some(128 + 2));
    // SIGQUIT has no handler in the server, so it is the one that only the reset keeps from
    // reaching commands ignored.
    let output = server.run("kill -QUIT $$; echo survived");
    assert_eq!(output.status.code(), Some(128 + 3));
    // The server's own SIGHUP is its handler's (re-read the secret), nohup or not.
    signal(server.pid(), "HUP");
    server.wait_for_log("received SIGHUP", Duration::from_secs(10));
    assert!(server.run("true").status.success());
}

/// Resetting ignored signals for commands changes nothing the server does with a signal it
/// did not find ignored: SIGQUIT still ends it with the default action, as it ends `sshd`.
#[cfg(unix)]
#[test]
fn a_server_started_normally_still_dies_of_sigquit() {
    use std::os::unix::process::ExitStatusExt;
    // No core file left behind by the test.
    let mut server = TestServer::start_in_shell("ulimit -c 0", &[]);
    assert!(server.run("true").status.success());
    let status = server.stop_with("QUIT");
    assert_eq!(status.signal(), Some(libc::SIGQUIT), "{status:?}");
}

/// A descriptor the server inherited from whoever started it (here a file on fd 7, as a
/// wrapper script or a service manager might pass) does not reach its commands, as sshd's
/// `closefrom` keeps its own from sessions: a client must not read what only the server's
/// parent could open.
#[cfg(target_os = "linux")]
#[test]
fn descriptors_the_server_inherited_do_not_reach_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("only-for-the-wrapper");
    std::fs::write(&private, "not for clients\n").unwrap();
    let server = TestServer::start_in_shell(&format!("exec 7<'{}'", private.display()), &[]);
    let output = server.run("cat <&7; ls /proc/self/fd");
    let stdout = stdout_of(&output);
    assert!(!stdout.contains("not for clients"), "{stdout}");
    let fds: Vec<&str> = stdout.lines().collect();
    // ls's own: 0, 1, 2 and the directory it lists.
    assert!(fds.len() <= 4 && !fds.contains(&"7"), "{fds:?}");
    assert!(stderr_of(&output).contains("7"), "{}", stderr_of(&output));
}

/// Commands do not inherit the TERM of the terminal the server was started from: their output
/// goes to pipes and then to a client whose terminal may be anything, so a full-screen program
/// should say it has no terminal rather than draw for the server's. The rest of the server's
/// environment is theirs.
#[cfg(unix)]
#[test]
fn commands_do_not_inherit_the_servers_term() {
    let server = TestServer::start_configured(SecretFile::new(), &[], |command| {
        command
            .env("TERM", "xterm-256color")
            .env("RCMD_TEST_KEPT", "kept");
    });
    let output = server.run("echo \"TERM=[${TERM-unset}] $RCMD_TEST_KEPT\"");
    assert_eq!(stdout_of(&output), "TERM=[unset] kept\n");
}

/// The demo's server, reachable by anyone with the secret, keeps its process's inherited
/// descriptors from its commands too.
#[cfg(target_os = "linux")]
#[test]
fn descriptors_the_demo_inherited_do_not_reach_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("only-for-the-wrapper");
    std::fs::write(&private, "not for clients\n").unwrap();
    let secret = SecretFile::new();
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(format!(
        "exec 7<'{}'; exec '{}' demo --secret-file '{}'",
        private.display(),
        rcmd_bin(),
        secret.path.display()
    ));
    let output = typed_into(command, "cat <&7\nexit 0\n");
    assert!(
        !stdout_of(&output).contains("not for clients"),
        "{}",
        stdout_of(&output)
    );
    assert!(stderr_of(&output).contains("7"), "{}", stderr_of(&output));
}
