//! The interactive prompt of `rcmd connect`: read a line, run it remotely, show its output.
//!
//! On a terminal it offers line editing and history (rustyline; history is kept in rcmd's
//! configuration directory, beside the default secret file). When stdin is not a terminal it reads commands line by line with no prompt,
//! so `rcmd connect < script` runs a script, the way `sh < script` does.

use std::io::{self, BufRead, IsTerminal};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(unix)]
use std::sync::{Arc, Mutex};

use rustyline::DefaultEditor;
#[cfg(unix)]
use rustyline::ExternalPrinter;
use rustyline::error::ReadlineError;

use super::{ClientError, CommandInput, OutputSink, Session, TerminalSink, interrupt};

/// The prompt shown before each command.
pub const PROMPT: &str = ">>: ";

/// The status of a command that never ran (refused by the server, or it could not start), as
/// `rcmd run` reports it: a script run through `connect` must not read it as success.
pub const NOT_RUN_STATUS: i32 = 255;

/// What the user typed, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Nothing to do.
    Empty,
    /// `quit`, `exit` or `exit N`: leave, with status N if given (else the last command's,
    /// as a shell does).
    Quit(Option<i32>),
    /// `exit WORD` where WORD is not a number (nor `$?`): a shell says so and exits with 2.
    BadExit(&'a str),
    /// Run this on the server.
    Command(&'a str),
}

/// Classifies one input line.
///
/// A line whose first word is `exit` or `quit` (in any case, as `cmd` reads it) is always the
/// prompt's own: sent to the server, `exit` would only end the shell of that one command, and a
/// script that meant to stop at it would go on. Its status is read as the server's shell would
/// read it: the first argument, after a `;` that ends it and without a `# comment`; quotes
/// around it are the shell's; `$?` (sh) or `%ERRORLEVEL%` (cmd) is the last command's status;
/// cmd's `/b` is skipped; further arguments are ignored (as dash ignores them).
pub fn classify(line: &str) -> Line<'_> {
    let line = line.trim();
    if line.is_empty() {
        return Line::Empty;
    }
    // The first command of the line: `exit 5;echo never` and `exit 3&&echo x` leave there.
    let first_command = line.split([';', '&', '|']).next().unwrap_or("");
    let mut words = first_command.split_whitespace();
    match words.next() {
        Some(first) if first.eq_ignore_ascii_case("exit") || first.eq_ignore_ascii_case("quit") => {
            match words
                .find(|word| !word.eq_ignore_ascii_case("/b"))
                .filter(|word| !word.starts_with('#'))
            {
                None => Line::Quit(None),
                Some(word) => exit_status(word),
            }
        }
        _ => Line::Command(line),
    }
}

/// What to say of `exit WORD` whose WORD is no status: as dash says it, and a `$` means the word
/// needed the remote shell to expand it.
pub fn bad_exit_message(word: &str) -> String {
    let hint = if word.contains('$') {
        " (the prompt's exit takes a number or $?)"
    } else {
        ""
    };
    format!("rcmd: exit: Illegal number: {word}{hint}")
}

/// What `exit WORD` leaves with: WORD modulo 256 like a shell's status, or the last
/// command's for `$?` or `%ERRORLEVEL%`; anything else is an error, as in dash and bash.
fn exit_status(word: &str) -> Line<'_> {
    let unquoted = ['"', '\'']
        .into_iter()
        .find_map(|quote| word.strip_prefix(quote)?.strip_suffix(quote))
        .unwrap_or(word);
    if matches!(unquoted, "$?" | "${?}") || unquoted.eq_ignore_ascii_case("%errorlevel%") {
        return Line::Quit(None);
    }
    match unquoted.parse::<i64>() {
        Ok(status) => Line::Quit(Some(status.rem_euclid(256) as i32)),
        Err(_) => Line::BadExit(word),
    }
}

/// Runs the prompt until `quit`, `exit` or end of input. Returns the exit status of the last
/// command, as a shell does, or the one `exit N` gave.
///
/// # Errors
/// A session-ending [`ClientError`]; refused commands are reported and the prompt goes on.
pub fn run_prompt(session: &mut Session, history: Option<PathBuf>) -> Result<i32, ClientError> {
    let mut last_status = 0;
    let mut sink = LineTrackingSink::new(TerminalSink::new().map_err(ClientError::LocalOutput)?);
    if io::stdin().is_terminal() {
        #[cfg(unix)]
        super::terminal::restore_on_termination();
        // A line typed with a leading space stays out of the history, as with bash's
        // `HISTCONTROL=ignorespace`: the way to keep a secret on a command line out of it.
        let config = rustyline::Config::builder()
            .history_ignore_space(true)
            .behavior(editor_behavior())
            .max_history_size(HISTORY_SIZE)
            .map_err(|e| ClientError::Terminal(io::Error::other(e)))?
            .build();
        let mut editor = DefaultEditor::with_config(config)
            .map_err(|e| ClientError::Terminal(io::Error::other(e)))?;
        // Ctrl-C outside a command and outside the line editor (just before or after a
        // command) must not end an interactive session.
        let _interactive = interrupt::interactive_session();
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        crate::say!(
            "connected to {}; type commands, `exit` or Ctrl-D to leave",
            session.peer()
        );
        #[cfg(unix)]
        let ended = EndedNotice::new(&mut editor);
        loop {
            // The prompt is drawn from the start of the line, over whatever is there: after
            // output that did not end its line, move to a new one first.
            sink.end_partial_line();
            #[cfg(unix)]
            let watch = ended.watch(session);
            let reading = interrupt::reading_a_line();
            let read = editor.readline(PROMPT);
            drop(reading);
            #[cfg(unix)]
            {
                drop(watch);
                if ended.happened() {
                    // Whatever was typed is not sent: the server is gone.
                    save_history_to(&mut editor, history.as_deref());
                    return Err(session.ending());
                }
            }
            match read {
                Ok(line) => {
                    if !line.trim().is_empty()
                        && matches!(editor.add_history_entry(line.as_str()), Ok(true))
                    {
                        // Saved line by line, so that a session ended by a signal (its
                        // terminal window closed) keeps its history, as bash's does.
                        save_history_to(&mut editor, history.as_deref());
                    }
                    if handle_line(session, &mut sink, &line, &mut last_status)?.is_break() {
                        break;
                    }
                }
                // Ctrl-C at the prompt abandons the line, as in a shell.
                Err(ReadlineError::Interrupted) => {}
                Err(ReadlineError::Eof) => break,
                // A byte that is not UTF-8 (a terminal set to Latin-1): this line cannot be a
                // command, as in a script (see below), but the session goes on.
                Err(ReadlineError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    crate::say!("rcmd: the line is not valid UTF-8; not run");
                    last_status = NOT_RUN_STATUS;
                }
                // Anything else will not go away by reading again (a terminal that is gone,
                // a descriptor not open for reading): the session ends, as a shell's would.
                Err(e) => return Err(ClientError::Terminal(io::Error::other(e))),
            }
        }
        save_history_to(&mut editor, history.as_deref());
    } else {
        // Lines as bytes: one that is not UTF-8 cannot be a command (the protocol's commands
        // are text), but it is the script's mistake, not a reason to drop the rest.
        let script = io::BufReader::new(super::stdio::PatientStdin::new());
        for (number, line) in script.split(b'\n').enumerate() {
            let line = line.map_err(ClientError::LocalInput)?;
            let Ok(line) = std::str::from_utf8(&line) else {
                crate::say!("rcmd: line {} is not valid UTF-8; not run", number + 1);
                last_status = NOT_RUN_STATUS;
                continue;
            };
            let pressed = interrupt::presses_so_far();
            if handle_line(session, &mut sink, line, &mut last_status)?.is_break() {
                break;
            }
            // Ctrl-C during a command of a script ends the script, as it would a shell's.
            if interrupt::presses_so_far() != pressed {
                return Ok(130);
            }
        }
    }
    Ok(last_status)
}

/// Where the line editor reads and draws: stdin and stdout, as usual; but when stdout is
/// redirected (`rcmd connect host > out.txt`) and stdin is the controlling terminal, on that
/// terminal (`/dev/tty`), as bash draws its prompt on stderr: the file gets the commands' output
/// and not the prompt and its escape sequences.
fn editor_behavior() -> rustyline::Behavior {
    #[cfg(unix)]
    if !io::stdout().is_terminal() && super::terminal::stdin_is_the_controlling_terminal() {
        return rustyline::Behavior::PreferTerm;
    }
    rustyline::Behavior::Stdio
}

/// Acts on one line: runs it, or says to leave (with `last_status` set to the status to leave
/// with).
fn handle_line(
    session: &mut Session,
    sink: &mut LineTrackingSink,
    line: &str,
    last_status: &mut i32,
) -> Result<ControlFlow<()>, ClientError> {
    match classify(line) {
        Line::Empty => {}
        Line::Quit(status) => {
            *last_status = status.unwrap_or(*last_status);
            return Ok(ControlFlow::Break(()));
        }
        Line::BadExit(word) => {
            crate::say!("{}", bad_exit_message(word));
            *last_status = 2;
            return Ok(ControlFlow::Break(()));
        }
        Line::Command(command) => *last_status = run_one(session, sink, command)?,
    }
    Ok(ControlFlow::Continue(()))
}

/// Runs one command and returns its status; a command that did not run counts as
/// [`NOT_RUN_STATUS`].
fn run_one(
    session: &mut Session,
    sink: &mut LineTrackingSink,
    command: &str,
) -> Result<i32, ClientError> {
    let pressed = interrupt::presses_so_far();
    match session.run(command, CommandInput::None, None, sink) {
        Ok(status) => {
            let code = status.shell_code();
            if code != 0 {
                if interrupt::presses_so_far() != pressed {
                    sink.end_line_after_echoed_interrupt();
                }
                sink.end_partial_line();
                crate::say!("rcmd: {status}");
            }
            Ok(code)
        }
        Err(ClientError::Refused { message, .. }) => {
            sink.end_partial_line();
            crate::say!("rcmd: {message}");
            Ok(NOT_RUN_STATUS)
        }
        Err(e) => Err(e),
    }
}

/// Tells the user, while the prompt waits, that the server has ended the session (see
/// [`super::watch`]), through the line editor so that the line being typed is redrawn below.
#[cfg(unix)]
struct EndedNotice {
    printer: Option<Arc<Mutex<dyn ExternalPrinter + Send>>>,
    happened: Arc<AtomicBool>,
}

#[cfg(unix)]
impl EndedNotice {
    fn new(editor: &mut DefaultEditor) -> EndedNotice {
        let printer = editor
            .create_external_printer()
            .ok()
            .map(|printer| Arc::new(Mutex::new(printer)) as Arc<Mutex<dyn ExternalPrinter + Send>>);
        EndedNotice {
            printer,
            happened: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Watches `session`'s connection until the returned guard is dropped.
    fn watch(&self, session: &Session) -> Option<super::watch::HangupWatch> {
        let (printer, happened) = (self.printer.clone(), self.happened.clone());
        super::watch::HangupWatch::start(session.connection(), move || {
            happened.store(true, Ordering::SeqCst);
            // The demo ending by a signal ends its own session: not news for the user.
            if super::terminal::ending_by_signal() {
                return;
            }
            let notice = "rcmd: the server ended the session; press Enter to leave";
            match printer {
                Some(printer) => {
                    let mut printer = printer.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = printer.print(format!("{notice}\n"));
                }
                None => crate::say!("{notice}"),
            }
        })
        .ok()
    }

    fn happened(&self) -> bool {
        self.happened.load(Ordering::SeqCst)
    }
}

fn save_history_to(editor: &mut DefaultEditor, path: Option<&Path>) {
    if let Some(path) = path {
        save_history(editor, path);
    }
}

/// Lines of history kept, in memory and in the file (bash keeps 500 by default; rustyline 100).
const HISTORY_SIZE: usize = 1000;

/// Saves the history, creating its directory (private, like the secret's) if need be. If that
/// fails, says so once per session (it is saved after every line) and the prompt goes on.
fn save_history(editor: &mut DefaultEditor, path: &Path) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let saved = (|| {
        if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
        }
        // Appended under a lock, not rewritten: two sessions open at once (two terminals)
        // each add their lines, as bash's `histappend` does, instead of the last one to save
        // replacing the other's.
        editor.append_history(path).map_err(io::Error::other)
    })();
    if let Err(e) = saved
        && !WARNED.swap(true, Ordering::SeqCst)
    {
        crate::say!("rcmd: history not saved to {}: {e}", path.display());
    }
}

/// The terminal sink, remembering whether the output so far stopped in the middle of a line
/// (`printf abc`). The prompt and rcmd's own messages then start on a new line instead of
/// overwriting that text (the line editor redraws its line from column 0) or running into it.
struct LineTrackingSink {
    inner: TerminalSink,
    stdout_is_terminal: bool,
    stderr_is_terminal: bool,
    /// The last bytes that reached the terminal did not end a line.
    terminal_mid_line: bool,
    /// The last bytes written to stderr did not end a line (matters when stderr is a file).
    stderr_mid_line: bool,
    /// Ctrl-C presses so far when output last reached the terminal: if one came later, its
    /// echoed `^C` is the last thing on the screen.
    presses_at_last_terminal_write: u32,
}

impl LineTrackingSink {
    fn new(inner: TerminalSink) -> LineTrackingSink {
        LineTrackingSink {
            inner,
            stdout_is_terminal: io::stdout().is_terminal(),
            stderr_is_terminal: io::stderr().is_terminal(),
            terminal_mid_line: false,
            stderr_mid_line: false,
            presses_at_last_terminal_write: 0,
        }
    }

    /// Ends the command's unfinished last line, if there is one, where it was left: what rcmd
    /// writes next (its messages go to stderr, the prompt to the terminal) would otherwise
    /// share that line. The newline goes to the stream that left it: to stdout when stdout left
    /// the terminal mid-line, so that with stderr redirected (`2>err.log`) the log does not get
    /// a stray blank line while the screen's `abc` is drawn over by the prompt.
    fn end_partial_line(&mut self) {
        if self.stderr_mid_line {
            let _ = self.inner.stderr(b"\n");
            if self.stderr_is_terminal {
                self.terminal_mid_line = false;
            }
        }
        if self.terminal_mid_line {
            // Only stdout can have left the terminal mid-line now.
            let _ = self.inner.stdout(b"\n");
        }
        self.terminal_mid_line = false;
        self.stderr_mid_line = false;
    }
}

impl LineTrackingSink {
    /// After Ctrl-C during a command: a terminal that echoes control characters showed `^C`
    /// where its cursor was. Mid-line, [`Self::end_partial_line`] ends that line after the
    /// echo; at the start of a line the echo opened one of its own, which this ends, so that
    /// the status line does not read `^Crcmd: killed by signal 2` (a shell, too, starts a new
    /// line after an interrupted job). Not if output reached the terminal after the press (the
    /// echo is not the last thing on the screen then), nor if the terminal does not echo it.
    fn end_line_after_echoed_interrupt(&mut self) {
        let echo_is_last = self.presses_at_last_terminal_write != interrupt::presses_so_far();
        if echo_is_last
            && self.stderr_is_terminal
            && !self.terminal_mid_line
            && !self.stderr_mid_line
            && terminal_echoes_control_characters()
        {
            let _ = self.inner.stderr(b"\n");
        }
    }
}

/// Whether the terminal on stdin echoes a typed Ctrl-C as `^C` (`ECHO` and `ECHOCTL`, as
/// terminals are usually set; `stty -echoctl` turns it off).
#[cfg(unix)]
fn terminal_echoes_control_characters() -> bool {
    // SAFETY: tcgetattr fills the termios on success, checked before it is read.
    unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        libc::tcgetattr(libc::STDIN_FILENO, &mut settings) == 0
            && settings.c_lflag & libc::ECHO != 0
            && settings.c_lflag & libc::ECHOCTL != 0
    }
}

/// Windows' console does not echo Ctrl-C where the cursor is.
#[cfg(not(unix))]
fn terminal_echoes_control_characters() -> bool {
    false
}

fn ends_mid_line(bytes: &[u8]) -> bool {
    bytes.last().is_some_and(|&last| last != b'\n')
}

impl OutputSink for LineTrackingSink {
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.stdout(bytes)?;
        if self.stdout_is_terminal && !bytes.is_empty() {
            self.terminal_mid_line = ends_mid_line(bytes);
            self.presses_at_last_terminal_write = interrupt::presses_so_far();
        }
        Ok(())
    }

    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.stderr(bytes)?;
        if !bytes.is_empty() {
            self.stderr_mid_line = ends_mid_line(bytes);
            if self.stderr_is_terminal {
                self.terminal_mid_line = self.stderr_mid_line;
                self.presses_at_last_terminal_write = interrupt::presses_so_far();
            }
        }
        Ok(())
    }

    fn command_ended(&mut self) -> io::Result<()> {
        self.inner.command_ended()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines() {
        assert_eq!(classify("   "), Line::Empty);
        assert_eq!(classify(" exit "), Line::Quit(None));
        assert_eq!(classify("quit"), Line::Quit(None));
        assert_eq!(classify(" ls -la "), Line::Command("ls -la"));
        assert_eq!(classify("; ls"), Line::Command("; ls"));
    }

    #[test]
    fn exit_with_a_status_leaves_with_it_modulo_256() {
        assert_eq!(classify("exit 3"), Line::Quit(Some(3)));
        assert_eq!(classify(" exit   0 "), Line::Quit(Some(0)));
        assert_eq!(classify("exit 300"), Line::Quit(Some(44)));
        assert_eq!(classify("exit -1"), Line::Quit(Some(255)));
        // Not a number: a shell says so and exits with 2.
        assert_eq!(classify("exit abc"), Line::BadExit("abc"));
        assert_eq!(classify("exit $((1+2))"), Line::BadExit("$((1+2))"));
    }

    #[test]
    fn exit_lines_are_read_as_the_servers_sh_reads_them() {
        // The status a script means to leave with, however it is written (dash's results).
        assert_eq!(classify("exit 3 # done"), Line::Quit(Some(3)));
        assert_eq!(classify("exit 3 4"), Line::Quit(Some(3)));
        assert_eq!(classify("exit 5;"), Line::Quit(Some(5)));
        assert_eq!(classify("exit 5; echo never"), Line::Quit(Some(5)));
        assert_eq!(classify("exit;"), Line::Quit(None));
        assert_eq!(classify("exit ;"), Line::Quit(None));
        assert_eq!(classify("exit;echo never"), Line::Quit(None));
        assert_eq!(classify("exit 5;echo never"), Line::Quit(Some(5)));
        assert_eq!(classify("exit 3&&echo x"), Line::Quit(Some(3)));
        assert_eq!(classify("exit 1 || echo x"), Line::Quit(Some(1)));
        assert_eq!(classify("exit # bye"), Line::Quit(None));
        assert_eq!(classify(r#"exit "3""#), Line::Quit(Some(3)));
        assert_eq!(classify("exit '7'"), Line::Quit(Some(7)));
        assert_eq!(classify("exit $?"), Line::Quit(None));
        assert_eq!(classify(r#"exit "$?""#), Line::Quit(None));
        assert_eq!(classify("quit 6"), Line::Quit(Some(6)));
        // And as a Windows administrator writes it for cmd.
        assert_eq!(classify("exit /b 3"), Line::Quit(Some(3)));
        assert_eq!(classify("EXIT /B 4"), Line::Quit(Some(4)));
        assert_eq!(classify("Exit"), Line::Quit(None));
        assert_eq!(classify("exit /b"), Line::Quit(None));
        assert_eq!(classify("exit %ERRORLEVEL%"), Line::Quit(None));
        assert_eq!(classify("exit /b %errorlevel%"), Line::Quit(None));
        // Only a first word `exit` is the prompt's: the rest is the remote shell's.
        assert_eq!(classify("exitcode"), Line::Command("exitcode"));
        assert_eq!(
            classify("false || exit 1"),
            Line::Command("false || exit 1")
        );
    }

    #[test]
    fn a_line_ends_mid_line_only_without_a_final_newline() {
        assert!(ends_mid_line(b"abc"));
        assert!(ends_mid_line(b"a\nb"));
        assert!(!ends_mid_line(b"abc\n"));
        assert!(!ends_mid_line(b""));
    }
}
