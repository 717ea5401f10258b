//! `rcmd connect` at a terminal: the tests give it a pseudo-terminal, type into it and read the
//! screen's bytes, the way a user at a terminal emulator would see them.
#![cfg(unix)]

mod util;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// A pseudo-terminal: the program gets the terminal side, the test types into and reads from
/// the other.
struct Terminal {
    typing: File,
    screen: Arc<Mutex<Vec<u8>>>,
    /// The program's side, kept open to read its settings (raw mode or not).
    program_side: File,
}

impl Terminal {
    fn open() -> Terminal {
        // SAFETY: plain libc calls on descriptors we own; each result is checked.
        let (ours, theirs) = unsafe {
            // Close-on-exec, both sides: a program another test starts meanwhile must not
            // inherit them, or this terminal outlives the test (its program never sees the
            // hang-up, and waits at its prompt for ever).
            let ours = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(ours >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(ours), 0, "grantpt");
            assert_eq!(libc::unlockpt(ours), 0, "unlockpt");
            let name = libc::ptsname(ours);
            assert!(!name.is_null(), "ptsname");
            let theirs = libc::open(name, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(theirs >= 0, "open the terminal side");
            (File::from_raw_fd(ours), File::from_raw_fd(theirs))
        };
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = ours.try_clone().unwrap();
        let sink = screen.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the program and `program_side` are gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            typing: ours,
            screen,
            program_side: theirs,
        }
    }

    /// Starts `rcmd connect` on this terminal, against `server`, with its history in a
    /// temporary directory rather than the user's.
    fn connect(&self, server: &TestServer, config: &tempfile::TempDir) -> Child {
        self.connect_as(server, config, "xterm")
    }

    /// [`Self::connect`] with `TERM` set to `term`.
    fn connect_as(&self, server: &TestServer, config: &tempfile::TempDir, term: &str) -> Child {
        self.connect_with(server, config, term, |_| {})
    }

    /// [`Self::connect`] with `TERM` set to `term`, and `configure` changing the rest (stderr
    /// going elsewhere, signals ignored).
    fn connect_with(
        &self,
        server: &TestServer,
        config: &tempfile::TempDir,
        term: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Child {
        let side = || Stdio::from(self.program_side.try_clone().unwrap());
        let mut command = server.client("connect");
        command
            .env("XDG_CONFIG_HOME", config.path())
            .env("TERM", term)
            .stdin(side())
            .stdout(side())
            .stderr(side());
        configure(&mut command);
        command.spawn().expect("start rcmd connect")
    }

    fn type_text(&mut self, text: &str) {
        self.typing.write_all(text.as_bytes()).unwrap();
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `needle` `count` times in all.
    #[track_caller]
    fn wait_for(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.screen().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the screen never showed {needle:?} {count} times:\n{:?}",
                self.screen()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the terminal is in the line editor's raw mode (no canonical input, no echo).
    /// Turns off the echo of control characters (`stty -echoctl`): a typed Ctrl-C shows nothing.
    fn stop_echoing_control_characters(&self) {
        self.turn_off(libc::ECHOCTL);
    }

    /// Turns off all echo (`stty -echo`), as a program reading a password does.
    fn stop_echoing(&self) {
        self.turn_off(libc::ECHO);
    }

    fn turn_off(&self, local_flag: libc::tcflag_t) {
        // SAFETY: tcgetattr fills the termios on success, checked before it is changed.
        unsafe {
            let mut settings: libc::termios = std::mem::zeroed();
            let fd = self.program_side.as_raw_fd();
            assert_eq!(libc::tcgetattr(fd, &mut settings), 0);
            settings.c_lflag &= !local_flag;
            assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &settings), 0);
        }
    }

    fn is_raw(&self) -> bool {
        // SAFETY: tcgetattr fills the termios on success, checked before it is read.
        unsafe {
            let mut settings: libc::termios = std::mem::zeroed();
            assert_eq!(
                libc::tcgetattr(self.program_side.as_raw_fd(), &mut settings),
                0
            );
            settings.c_lflag & (libc::ICANON | libc::ECHO) == 0
        }
    }
}

const PROMPT: &str = ">>: ";

/// A server, and `rcmd connect` to it on a new terminal, showing its first prompt. The
/// server and the configuration directory live as long as the returned values.
fn connect_at_a_terminal() -> (TestServer, tempfile::TempDir, Terminal, Child) {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let terminal = Terminal::open();
    let client = terminal.connect(&server, &config);
    terminal.wait_for(PROMPT, 1);
    (server, config, terminal, client)
}

#[track_caller]
fn exit_code(child: &mut Child) -> Option<i32> {
    wait_within(child, Duration::from_secs(20))
        .expect("rcmd connect did not exit")
        .code()
}

#[test]
fn lines_typed_while_a_command_runs_all_run_afterwards() {
    let (_server, _config, mut terminal, mut client) = connect_at_a_terminal();
    terminal.type_text("sleep 1\r");
    thread::sleep(Duration::from_millis(300));
    // Typed ahead, as a user does while waiting; a shell runs each of them in turn.
    terminal.type_text("echo ahead-1\recho ahead-2\recho ahead-3\r");
    terminal.wait_for("\nahead-3\r\n", 1);
    let screen = terminal.screen();
    assert!(screen.contains("\nahead-1\r\n"), "{screen:?}");
    assert!(screen.contains("\nahead-2\r\n"), "{screen:?}");
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
}

#[test]
fn output_without_a_final_newline_is_not_drawn_over_by_the_prompt() {
    let (_server, _config, mut terminal, mut client) = connect_at_a_terminal();
    terminal.type_text("printf abc\r");
    terminal.wait_for(PROMPT, 2);
    // The line editor draws its prompt from column 0 ("\r", then "erase to the end of the
    // line"): without a newline first, `abc` would be erased.
    let screen = terminal.screen();
    assert!(screen.contains("abc\r\n"), "{screen:?}");
    terminal.type_text("printf oops >&2; exit 3\r");
    terminal.wait_for(PROMPT, 3);
    let screen = terminal.screen();
    assert!(screen.contains("oops\r\nrcmd: exit status 3"), "{screen:?}");
    terminal.type_text("exit\r");
    assert_eq!(
        exit_code(&mut client),
        Some(3),
        "exit keeps the last status"
    );
}

/// With stdout going to a file (`rcmd connect > out.txt`), output that does not end its line
/// is the file's as it came: the newline that keeps the prompt off such a line is for a
/// terminal, and the prompt is on stderr's terminal.
#[test]
fn output_to_a_file_is_kept_byte_for_byte() {
    use std::os::unix::process::CommandExt;
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    let out = config.path().join("out.txt");
    let stdout = File::create(&out).unwrap();
    let mut client = terminal.connect_with(&server, &config, "xterm", |command| {
        command.stdout(stdout);
        // The terminal is the client's controlling terminal, as a login's is.
        // SAFETY: setsid and ioctl are async-signal-safe, as a `pre_exec` closure must be.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    terminal.wait_for(PROMPT, 1);
    terminal.type_text("printf abc\r");
    terminal.wait_for(PROMPT, 2);
    terminal.type_text("printf def\r");
    terminal.wait_for(PROMPT, 3);
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "abcdef");
    // The commands were typed and shown on the terminal.
    let screen = terminal.screen();
    assert!(screen.contains("printf def"), "{screen:?}");
}

#[test]
fn output_without_a_final_newline_is_kept_when_stderr_goes_elsewhere() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let terminal = Terminal::open();
    let log = config.path().join("stderr.log");
    let stderr = File::create(&log).unwrap();
    let mut client = terminal.connect_with(&server, &config, "xterm", |command| {
        command.stderr(stderr);
    });
    terminal.wait_for(PROMPT, 1);
    let mut terminal = terminal;
    terminal.type_text("printf abc\r");
    terminal.wait_for(PROMPT, 2);
    // The line is ended on the terminal, where `abc` is, not in the log (which would get a
    // stray empty line while the prompt drew over `abc`).
    let screen = terminal.screen();
    assert!(screen.contains("abc\r\n"), "{screen:?}");
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.lines().all(|line| !line.is_empty()), "{log:?}");
}

#[test]
fn a_hang_up_ignored_as_nohup_ignores_it_does_not_end_the_prompt() {
    use std::os::unix::process::CommandExt;
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect_with(&server, &config, "xterm", |command| {
        // What `nohup` does before it runs the program.
        // SAFETY: `signal` is async-signal-safe, as a `pre_exec` closure must be.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    terminal.wait_for(PROMPT, 1);
    signal(client.id(), "HUP");
    terminal.type_text("echo still-here\r");
    terminal.wait_for("\nstill-here\r\n", 1);
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
}

#[test]
fn exit_with_a_status_leaves_with_that_status() {
    let (_server, config, mut terminal, mut client) = connect_at_a_terminal();
    terminal.type_text("exit 7\r");
    assert_eq!(exit_code(&mut client), Some(7));
    // History went to the configuration directory, which the client created.
    assert!(config.path().join("rcmd/history").exists());
}

#[test]
fn sigterm_at_the_prompt_puts_the_terminal_back_as_it_was() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let terminal = Terminal::open();
    assert!(!terminal.is_raw());
    let mut client = terminal.connect(&server, &config);
    terminal.wait_for(PROMPT, 1);
    // The line editor is waiting for a line, so the terminal is raw.
    assert!(eventually(Duration::from_secs(10), || terminal.is_raw()));
    signal(client.id(), "TERM");
    let status = wait_within(&mut client, Duration::from_secs(20)).expect("still running");
    assert!(!status.success());
    assert!(!terminal.is_raw(), "the terminal was left in raw mode");
    // Bracketed paste, which the line editor turned on, is off again. What the client wrote
    // before it died reaches the test's reader thread a moment later: wait for it.
    let (on, off) = ("\u{1b}[?2004h", "\u{1b}[?2004l");
    assert!(
        eventually(Duration::from_secs(10), || {
            let screen = terminal.screen();
            screen.rfind(off) > screen.rfind(on)
        }),
        "{:?}",
        terminal.screen()
    );
}

#[test]
fn the_prompt_says_at_once_when_the_server_ends_the_session() {
    let server = TestServer::start(&["--idle-timeout", "1"]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect(&server, &config);
    terminal.wait_for(PROMPT, 1);
    // Nothing typed: the idle timeout closes the session, and the prompt says so unasked.
    terminal.wait_for("the server ended the session", 1);
    terminal.type_text("echo never\r");
    assert_eq!(exit_code(&mut client), Some(255));
    terminal.wait_for("idle", 1);
    assert!(
        !terminal.screen().contains("\nnever"),
        "{:?}",
        terminal.screen()
    );
}

/// What is typed after that is not read as a line: even `exit 5` leaves as a session the
/// server ended (255 and its reason, as ssh leaves when its connection is gone), not with the
/// status typed, which a script's caller would take for the remote command's.
#[test]
fn exit_after_the_server_ended_the_session_reports_the_end() {
    let server = TestServer::start(&["--idle-timeout", "1"]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect(&server, &config);
    terminal.wait_for("the server ended the session", 1);
    terminal.type_text("exit 5\r");
    assert_eq!(exit_code(&mut client), Some(255));
    terminal.wait_for("idle", 1);
}

/// With `TERM=dumb` (Emacs' shell, for one) the line editor cannot take the terminal's keys
/// raw, so Ctrl-C reaches the client as SIGINT, as the terminal sends it. At the prompt that
/// abandons the line, as in a shell; it does not end the session.
#[test]
fn ctrl_c_at_a_prompt_without_line_editing_does_not_end_the_session() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect_as(&server, &config, "dumb");
    terminal.wait_for(PROMPT, 1);
    assert!(!terminal.is_raw(), "TERM=dumb: no raw mode");
    // This terminal is not the client's controlling terminal, so send what a ^C would.
    signal(client.id(), "INT");
    // A new line and a fresh prompt, as a shell prints them.
    terminal.wait_for(PROMPT, 2);
    terminal.type_text("echo still-here\n");
    terminal.wait_for("still-here\r\n", 2); // the echo of the typing, then the output
    terminal.type_text("exit\n");
    assert_eq!(exit_code(&mut client), Some(0));
}

/// The same after a command has run: once the command has ended, Ctrl-C at the prompt is the
/// prompt's again (a fresh line), not sent to the command that is over.
#[test]
fn ctrl_c_at_a_prompt_after_a_command_starts_a_fresh_line() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect_as(&server, &config, "dumb");
    terminal.wait_for(PROMPT, 1);
    terminal.type_text("echo first-done\n");
    terminal.wait_for("first-done\r\n", 2); // the echo of the typing, then the output
    terminal.wait_for(PROMPT, 2);
    signal(client.id(), "INT");
    terminal.wait_for(PROMPT, 3);
    terminal.type_text("echo still-here\n");
    terminal.wait_for("still-here\r\n", 2);
    terminal.type_text("exit\n");
    assert_eq!(exit_code(&mut client), Some(0));
}

/// `rcmd demo` runs its server in the same process, so closing the terminal (SIGHUP) ends both.
/// The command running at that moment must not be left behind: the demo ends the session first,
/// the server kills the command's process tree, and only then the demo dies of the signal.
#[test]
fn closing_the_terminal_of_a_demo_stops_its_running_command() {
    let config = tempfile::tempdir().unwrap();
    let secret = SecretFile::new();
    let mut terminal = Terminal::open();
    let side = || Stdio::from(terminal.program_side.try_clone().unwrap());
    let mut demo = std::process::Command::new(rcmd_bin())
        .arg("demo")
        .arg("--secret-file")
        .arg(&secret.path)
        .env("XDG_CONFIG_HOME", config.path())
        .env("TERM", "xterm")
        .current_dir(config.path())
        .stdin(side())
        .stdout(side())
        .stderr(side())
        .spawn()
        .expect("start rcmd demo");
    terminal.wait_for(PROMPT, 1);
    let marker = unique_sleep_marker();
    terminal.type_text(&format!("sleep 300 {marker}\r"));
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));
    signal(demo.id(), "HUP");
    assert_demo_died_of(&mut demo, libc::SIGHUP, &marker);
}

/// Commands cannot reach the terminal the server was started from: a password prompt there
/// would stop in the background, waiting for an answer no client can give. Here `rcmd serve`
/// runs at a terminal that is its controlling terminal (started by a shell, as from a terminal
/// window), and a command that opens `/dev/tty` finds none, as under sshd without a pty.
#[test]
fn commands_cannot_open_the_terminal_the_server_runs_in() {
    let secret = SecretFile::new();
    let terminal = Terminal::open();
    let side = || Stdio::from(terminal.program_side.try_clone().unwrap());
    // `setsid --ctty`: the terminal becomes the controlling terminal of a new session, whose
    // leader is `sh`; the server is its child, as when a shell in a terminal window starts it.
    let mut session = std::process::Command::new("setsid")
        .args([
            "--ctty",
            "sh",
            "-c",
            "\"$0\" serve --listen 127.0.0.1:0 --secret-file \"$1\"; exit $?",
        ])
        .arg(rcmd_bin())
        .arg(&secret.path)
        .stdin(side())
        .stdout(side())
        .stderr(side())
        .spawn()
        .expect("start rcmd serve");
    terminal.wait_for("listening on ", 1);
    let screen = terminal.screen();
    let addr = screen
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the address")
        .to_owned();
    let output = std::process::Command::new(rcmd_bin())
        .args(["run", &addr, "--secret-file"])
        .arg(&secret.path)
        .arg("--")
        .arg(
            "if (exec 3</dev/tty) 2>/dev/null; then echo has-a-terminal; else echo no-terminal; fi",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // `sh` leads the session and its process group, which the server shares.
    // SAFETY: kill(2) with a negative pid signals the process group.
    unsafe { libc::kill(-(session.id() as libc::pid_t), libc::SIGTERM) };
    wait_within(&mut session, Duration::from_secs(20)).expect("the server stopped");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "no-terminal\n");
}

/// A byte that is not UTF-8 typed at the prompt (a terminal set to Latin-1 sends `é` as 0xE9)
/// costs that line, not the session.
#[test]
fn a_line_that_is_not_utf8_is_not_run_and_the_session_goes_on() {
    let (_server, _config, mut terminal, mut client) = connect_at_a_terminal();
    terminal.typing.write_all(b"echo caf\xe9\r").unwrap();
    terminal.wait_for("not valid UTF-8", 1);
    terminal.type_text("echo after\r");
    terminal.wait_for("\r\nafter\r\n", 1);
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
}

/// History is kept line by line, so a session that ends by a signal (its terminal window
/// closed) keeps it, as bash's does; a line typed with a leading space stays out of it, as with
/// bash's `HISTCONTROL=ignorespace`.
#[test]
fn history_survives_a_hang_up_and_leaves_out_lines_starting_with_a_space() {
    let (_server, config, mut terminal, mut client) = connect_at_a_terminal();
    terminal.type_text("echo kept\r");
    terminal.wait_for("\r\nkept\r\n", 1);
    terminal.type_text(" echo secret\r");
    terminal.wait_for("\r\nsecret\r\n", 1);
    signal(client.id(), "HUP");
    wait_within(&mut client, Duration::from_secs(20)).expect("the client ended");
    let history = std::fs::read_to_string(config.path().join("rcmd/history")).unwrap();
    assert!(history.contains("echo kept"), "{history}");
    assert!(!history.contains("secret"), "{history}");
}

/// Two sessions open at once (two terminals) both keep their lines: each appends what it adds
/// instead of writing its own view of the history over the other's.
#[test]
fn two_sessions_at_once_both_keep_their_history() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let mut first = Terminal::open();
    let mut first_client = first.connect(&server, &config);
    first.wait_for(PROMPT, 1);
    let mut second = Terminal::open();
    let mut second_client = second.connect(&server, &config);
    second.wait_for(PROMPT, 1);
    for (line, prompts) in [("1", 2), ("2", 3)] {
        first.type_text(&format!("echo A{line}\r"));
        first.wait_for(PROMPT, prompts);
        second.type_text(&format!("echo B{line}\r"));
        second.wait_for(PROMPT, prompts);
    }
    first.type_text("exit\r");
    assert_eq!(exit_code(&mut first_client), Some(0));
    second.type_text("exit\r");
    assert_eq!(exit_code(&mut second_client), Some(0));
    let history = std::fs::read_to_string(config.path().join("rcmd/history")).unwrap();
    for line in ["echo A1", "echo B1", "echo A2", "echo B2"] {
        assert!(history.contains(line), "{line} lost: {history}");
    }
}

/// The history keeps its last 1,000 lines (rustyline's default is 100, bash's 500): a history
/// file of 150 lines loses none of them when a line is added.
#[test]
fn history_keeps_a_thousand_lines() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir(config.path().join("rcmd")).unwrap();
    let old: String = (1..=150).map(|n| format!("echo old {n}\n")).collect();
    std::fs::write(config.path().join("rcmd/history"), format!("#V2\n{old}")).unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect(&server, &config);
    terminal.wait_for(PROMPT, 1);
    terminal.type_text("echo new\r");
    terminal.wait_for(PROMPT, 2);
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
    let history = std::fs::read_to_string(config.path().join("rcmd/history")).unwrap();
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines.contains(&"echo old 1"), "{history}");
    assert!(lines.contains(&"echo new"), "{history}");
}

/// History that cannot be saved is reported once, and the prompt goes on.
#[test]
fn history_that_cannot_be_saved_is_reported_once() {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    // A file where the history's directory would go.
    std::fs::write(config.path().join("rcmd"), "in the way").unwrap();
    let mut terminal = Terminal::open();
    let mut client = terminal.connect(&server, &config);
    terminal.wait_for(PROMPT, 1);
    terminal.type_text("echo one\r");
    terminal.wait_for("\r\none\r\n", 1);
    terminal.type_text("echo two\r");
    terminal.wait_for("\r\ntwo\r\n", 1);
    terminal.type_text("exit\r");
    assert_eq!(exit_code(&mut client), Some(0));
    assert_eq!(
        terminal
            .screen()
            .matches("rcmd: history not saved to ")
            .count(),
        1,
        "{:?}",
        terminal.screen()
    );
}

/// SIGTERM ends the client even while its terminal is stopped (Ctrl-S) and every write to it
/// blocks: nothing on the way out may wait for the terminal.
#[test]
fn sigterm_ends_the_client_while_its_terminal_is_stopped() {
    let (_server, _config, mut terminal, mut client) = connect_at_a_terminal();
    terminal.type_text("yes\r");
    terminal.wait_for("y\r\ny\r\ny\r\n", 1);
    terminal.type_text("\x13"); // Ctrl-S: the terminal stops taking output
    thread::sleep(Duration::from_millis(300));
    signal(client.id(), "TERM");
    let ended = wait_within(&mut client, Duration::from_secs(10));
    terminal.type_text("\x11"); // Ctrl-Q, so that a client still running can be ended
    assert!(ended.is_some(), "SIGTERM did not end the client");
}

/// Types `command` (where `MARKER` stands for a fresh sleep marker) at the prompt, waits until
/// its `sleep MARKER` runs (a SIGINT that reaches `sh -c` just before it execs is lost with the
/// shell's handler), presses Ctrl-C (the terminal echoes what it echoes; it is not the
/// client's controlling terminal, so the SIGINT it would send is sent by hand), waits for
/// `until` on the screen, leaves, and returns the screen.
fn interrupt_at_the_prompt(
    terminal: &mut Terminal,
    mut client: Child,
    command: &str,
    until: &str,
) -> String {
    let marker = unique_sleep_marker();
    terminal.type_text(&format!("{}\r", command.replace("MARKER", &marker)));
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));
    terminal.type_text("\x03");
    signal(client.id(), "INT");
    terminal.wait_for(until, 1);
    let screen = terminal.screen();
    terminal.type_text("exit 0\r");
    assert_eq!(exit_code(&mut client), Some(0));
    screen
}

/// After Ctrl-C stops a command, the terminal's echoed `^C` ends its line before rcmd's status
/// line, as a shell starts a new line after an interrupted job: not `^Crcmd: killed by ...`.
#[test]
fn the_status_after_ctrl_c_starts_on_a_line_of_its_own() {
    let screen = sleep_interrupted_on_a_terminal_set_by(|_| {});
    assert!(
        screen.contains("before\r\n^C\r\nrcmd: killed by signal 2"),
        "{screen:?}"
    );
}

/// A terminal that does not echo `^C` (`stty -echoctl`) gets no blank line before the status.
#[test]
fn no_blank_line_after_ctrl_c_when_the_terminal_does_not_echo_it() {
    let screen = sleep_interrupted_on_a_terminal_set_by(Terminal::stop_echoing_control_characters);
    // The bare control character it echoes shows nothing.
    assert!(
        screen.contains("\r\nbefore\r\n\x03rcmd: killed by signal 2"),
        "{screen:?}"
    );
}

/// Nor does a terminal that echoes nothing at all (`stty -echo`), though it would echo control
/// characters if it echoed.
#[test]
fn no_blank_line_after_ctrl_c_when_the_terminal_does_not_echo() {
    let screen = sleep_interrupted_on_a_terminal_set_by(Terminal::stop_echoing);
    assert!(
        screen.contains("\r\nbefore\r\nrcmd: killed by signal 2"),
        "{screen:?}"
    );
}

/// `echo before; sleep 30` at the prompt of a new terminal that `set_up` changed first,
/// interrupted with Ctrl-C: the screen once the status is shown.
fn sleep_interrupted_on_a_terminal_set_by(set_up: impl FnOnce(&Terminal)) -> String {
    let server = TestServer::start(&[]);
    let config = tempfile::tempdir().unwrap();
    let mut terminal = Terminal::open();
    set_up(&terminal);
    let client = terminal.connect(&server, &config);
    terminal.wait_for(PROMPT, 1);
    let command = "echo before; sleep 30 MARKER";
    interrupt_at_the_prompt(&mut terminal, client, command, "killed by signal 2")
}

/// Output that reaches the terminal after the press (here the command's own trap) comes after
/// the echoed `^C`, so the status follows it with no blank line.
#[test]
fn no_blank_line_after_ctrl_c_when_output_followed_the_echo() {
    let (_server, _config, mut terminal, client) = connect_at_a_terminal();
    let command = "trap 'echo after; kill $!; exit 3' INT; sleep 30 MARKER & wait";
    let screen = interrupt_at_the_prompt(&mut terminal, client, command, "exit status 3");
    assert!(
        screen.contains("^Cafter\r\nrcmd: exit status 3"),
        "{screen:?}"
    );
}
