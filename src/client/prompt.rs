//! The interactive prompt of `rcmd connect`: read a line, run it remotely, show its output.
//!
//! On a terminal it offers line editing and history (rustyline; history is kept next to the
//! secret file). When stdin is not a terminal it reads commands line by line with no prompt,
//! so `rcmd connect < script` runs a script, the way `sh < script` does.

use std::io::{self, BufRead, IsTerminal};
use std::path::PathBuf;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use super::{ClientError, CommandInput, Session, TerminalSink};

/// The prompt shown before each command.
pub const PROMPT: &str = ">>: ";

/// What the user typed, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Nothing to do.
    Empty,
    /// `quit` or `exit`: leave.
    Quit,
    /// Run this on the server.
    Command(&'a str),
}

/// Classifies one input line.
pub fn classify(line: &str) -> Line<'_> {
    match line.trim() {
        "" => Line::Empty,
        "quit" | "exit" => Line::Quit,
        command => Line::Command(command),
    }
}

/// Runs the prompt until `quit`, `exit` or end of input. Returns the exit status of the last
/// command, as a shell does.
///
/// # Errors
/// A session-ending [`ClientError`]; refused commands are reported and the prompt goes on.
pub fn run_prompt(session: &mut Session, history: Option<PathBuf>) -> Result<i32, ClientError> {
    let mut last_status = 0;
    let mut sink = TerminalSink::new().map_err(ClientError::LocalOutput)?;
    if io::stdin().is_terminal() {
        let mut editor = DefaultEditor::new().map_err(|e| ClientError::Io(io::Error::other(e)))?;
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        eprintln!(
            "connected to {}; type commands, `exit` or Ctrl-D to leave",
            session.peer()
        );
        loop {
            match editor.readline(PROMPT) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    match classify(&line) {
                        Line::Empty => {}
                        Line::Quit => break,
                        Line::Command(command) => {
                            last_status = run_one(session, &mut sink, command, last_status)?
                        }
                    }
                }
                // Ctrl-C at the prompt abandons the line, as in a shell.
                Err(ReadlineError::Interrupted) => {}
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(ClientError::Io(io::Error::other(e))),
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
    } else {
        for line in io::stdin().lock().lines() {
            let line = line.map_err(ClientError::Io)?;
            match classify(&line) {
                Line::Empty => {}
                Line::Quit => break,
                Line::Command(command) => {
                    last_status = run_one(session, &mut sink, command, last_status)?
                }
            }
        }
    }
    Ok(last_status)
}

fn run_one(
    session: &mut Session,
    sink: &mut TerminalSink,
    command: &str,
    last_status: i32,
) -> Result<i32, ClientError> {
    match session.run(command, CommandInput::None, None, sink) {
        Ok(status) => {
            let code = status.shell_code();
            if code != 0 {
                eprintln!("rcmd: {status}");
            }
            Ok(code)
        }
        Err(ClientError::Refused { message, .. }) => {
            eprintln!("rcmd: {message}");
            Ok(last_status)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines() {
        assert_eq!(classify("   "), Line::Empty);
        assert_eq!(classify(" exit "), Line::Quit);
        assert_eq!(classify("quit"), Line::Quit);
        assert_eq!(classify(" ls -la "), Line::Command("ls -la"));
    }
}
