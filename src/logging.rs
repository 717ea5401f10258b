//! Where log lines go: `env_logger`'s filter (`RUST_LOG`) with rcmd's own line format (cheaper
//! than `env_logger`'s default, see [`init`]), written to stderr either at once or, for the
//! server, after the event loop has sent the replies of its current turn.
//!
//! Why the server holds its lines back: a log line is a `write` to stderr, and the server logs
//! twice per command, once when it starts and once when it finishes. Written inline, the
//! second line sits between the command's exit and the reply that reports it, so every client
//! waits for the server's log (and, if stderr is a slow terminal or a full pipe, for whoever
//! reads it). Held back, the lines of one turn of the loop leave in a single `write` once the
//! replies are out: the same lines in the same order, at most one turn of the loop later.
//! Memory stays bounded: past [`WRITE_AT_ONCE_FROM`] bytes the held lines are written at once.
//!
//! Also here, because they share the way to stderr: rcmd's own messages to the user (`say!`,
//! `say_out!`), which are not log lines and never panic, and the quoting of client-chosen text
//! in log lines (`Quoted`, `OneLine`), so that no client can forge a line of the server's log.

use std::fmt::{self, Display};
use std::io::{self, IsTerminal, Write};
use std::sync::{Mutex, MutexGuard};

use env_logger::fmt::style::{AnsiColor, Effects, Style};

/// How log lines reach stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Each line is written as it is logged (clients, tools).
    Immediate,
    /// Lines wait for [`write_held`], which the server's loop calls once per turn.
    Held,
}

/// Held lines beyond this many bytes are written right away rather than kept.
pub const WRITE_AT_ONCE_FROM: usize = 64 * 1024;

/// Lines logged but not yet written, for [`Delivery::Held`].
static HELD: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Installs the logger: `RUST_LOG` filters, `default_level` applies when it is not set.
/// Levels are coloured when stderr is a terminal, unless `RUST_LOG_STYLE` (`always`, `never`,
/// `auto`) says otherwise.
pub fn init(default_level: &str, delivery: Delivery) {
    let env = env_logger::Env::default().default_filter_or(default_level);
    let mut builder = env_logger::Builder::from_env(env);
    // Our own line format rather than env_logger's default, for speed: the server logs two
    // lines per command, and the default format (which indents continuation lines, and
    // writes colour codes that are then stripped again byte by byte when colour is off) was a
    // third of the server's user-space instructions per command (docs/benchmarks.md,
    // callgrind). This format writes colour codes only when colour is wanted, so the
    // formatted line can be passed through untouched (`WriteStyle::Always`).
    let colour = wants_colour();
    builder.write_style(env_logger::WriteStyle::Always);
    builder.format(move |buf, record| {
        if delivery == Delivery::Immediate && record.level() <= log::Level::Warn {
            // A command-line client's errors and warnings read like its other messages,
            // `rcmd: warning: ...` (as ssh's do), not like a server's log; the debug lines
            // `RUST_LOG` asks for keep the log format with its timestamps.
            let kind = if record.level() == log::Level::Error {
                "error"
            } else {
                "warning"
            };
            return writeln!(buf, "rcmd: {kind}: {}", record.args());
        }
        let time = buf.timestamp_millis();
        write_line(buf, &time, record, colour)
    });
    if delivery == Delivery::Held {
        builder.target(env_logger::Target::Pipe(Box::new(HeldStderr)));
    }
    // A second initialisation (e.g. several servers in one test process) keeps the first.
    let _ = builder.try_init();
}

/// Whether log levels are coloured: as `RUST_LOG_STYLE` says, else if stderr is a terminal.
fn wants_colour() -> bool {
    match std::env::var("RUST_LOG_STYLE").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => io::stderr().is_terminal(),
    }
}

/// One log line: `[2026-11-22T10:03:04.123Z INFO  rcmd::server] message`, the layout of
/// env_logger's default format with millisecond timestamps. Always one line: the message goes
/// through [`OneLine`].
fn write_line(
    out: &mut dyn Write,
    time: &dyn Display,
    record: &log::Record,
    colour: bool,
) -> io::Result<()> {
    let level = record.level();
    let style = if colour {
        level_style(level)
    } else {
        Style::new()
    };
    write!(
        out,
        "[{time} {style}{level:<5}{style:#} {}] ",
        record.target()
    )?;
    let mut message = OneLine { out, error: None };
    if fmt::write(&mut message, *record.args()).is_err() {
        return Err(message
            .error
            .unwrap_or_else(|| io::Error::other("formatting failed")));
    }
    out.write_all(b"\n")
}

/// Writes a log message to `out` with every character that could break or disguise the line
/// escaped as `{:?}` would (`\n`, `\r`, `\u{1b}`, `\u{2028}`, `\u{202e}`).
///
/// Log messages carry what clients sent: a command, a directory, the message of an error a
/// client reports, the name of a message type a stranger made up (in a parse error, before any
/// authentication). A newline in any of them would start a line of the sender's making in the
/// server's log, an escape sequence would reach the terminal or journal that shows it, and a
/// Unicode line separator or direction override would break or reorder the line in some
/// viewers. Escaping here, as every message is written, covers them all; the text between such
/// characters is written in one piece.
struct OneLine<'a> {
    out: &'a mut dyn Write,
    /// The write error behind a `fmt::Error`, which cannot carry one.
    error: Option<io::Error>,
}

/// Control characters, Unicode line and paragraph separators, and bidirectional controls.
fn breaks_the_line(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

impl OneLine<'_> {
    fn put(&mut self, bytes: &[u8]) -> fmt::Result {
        self.out.write_all(bytes).map_err(|e| {
            self.error = Some(e);
            fmt::Error
        })
    }
}

impl fmt::Write for OneLine<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain_from = 0;
        for (at, c) in text.char_indices().filter(|&(_, c)| breaks_the_line(c)) {
            self.put(&text.as_bytes()[plain_from..at])?;
            let escaped = match c {
                '\n' | '\r' | '\t' => c.escape_debug().to_string(),
                _ => c.escape_unicode().to_string(),
            };
            self.put(escaped.as_bytes())?;
            plain_from = at + c.len_utf8();
        }
        self.put(&text.as_bytes()[plain_from..])
    }
}

/// env_logger's colours for the levels.
fn level_style(level: log::Level) -> Style {
    match level {
        log::Level::Trace => AnsiColor::Cyan.on_default(),
        log::Level::Debug => AnsiColor::Blue.on_default(),
        log::Level::Info => AnsiColor::Green.on_default(),
        log::Level::Warn => AnsiColor::Yellow.on_default(),
        log::Level::Error => AnsiColor::Red.on_default().effects(Effects::BOLD),
    }
}

/// A string as `{:?}` writes it (in quotes, with control characters, quotes and backslashes
/// escaped), so that a command in a log line cannot forge lines of its own, but cheaper for
/// the common case: a string of printable ASCII without quotes or backslashes is written in
/// one piece rather than character by character.
pub struct Quoted<'a>(pub &'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self
            .0
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if plain {
            write!(f, "\"{}\"", self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// The start of a string, [`Quoted`], then `... (N bytes)` if it was longer than `max` bytes:
/// for text a client chose, such as a command (up to 1 MiB, and each control character escaped
/// to several bytes), so that one client cannot write megabytes of log per request.
pub struct QuotedStart<'a> {
    pub text: &'a str,
    pub max: usize,
}

impl Display for QuotedStart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.len() <= self.max {
            return Quoted(self.text).fmt(f);
        }
        let mut end = self.max;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        write!(
            f,
            "{}... ({} bytes)",
            Quoted(&self.text[..end]),
            self.text.len()
        )
    }
}

/// Writes the held log lines to stderr. Cheap when there are none.
pub fn write_held() {
    write_out(&mut held(), &mut io::stderr().lock());
}

fn held() -> MutexGuard<'static, Vec<u8>> {
    // A thread that panicked while holding the lock left whole lines or none: keep going.
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds `line` to `lines`, writing them all to `out` if that makes them too many to keep.
fn hold(lines: &mut Vec<u8>, line: &[u8], out: &mut dyn Write) {
    lines.extend_from_slice(line);
    if lines.len() >= WRITE_AT_ONCE_FROM {
        write_out(lines, out);
    }
}

fn write_out(lines: &mut Vec<u8>, out: &mut dyn Write) {
    if lines.is_empty() {
        return;
    }
    // Nothing sensible can be done about a log that cannot be written.
    let _ = out.write_all(lines);
    lines.clear();
    if lines.capacity() > WRITE_AT_ONCE_FROM {
        lines.shrink_to(WRITE_AT_ONCE_FROM);
    }
}

/// The `env_logger` target for [`Delivery::Held`]: appends each formatted line to [`HELD`].
struct HeldStderr;

impl Write for HeldStderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        hold(&mut held(), line, &mut io::stderr().lock());
        Ok(line.len())
    }

    /// `env_logger` flushes after every line; holding lines is the point, so this does not.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `eprintln!` that cannot panic, for rcmd's own messages to the user. `eprintln!` panics when
/// stderr cannot be written (a full disk, a closed pipe), which would turn a defined exit code
/// into a crash; such a message is lost instead. A stderr left non-blocking by rcmd's parent is
/// waited for, as command output is ([`crate::client::stdio`]): a message right after output
/// that filled the pipe is not lost.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::say_line(format_args!($($arg)*))
    };
}

/// What [`say!`] does: the line in one piece, errors dropped.
pub fn say_line(text: std::fmt::Arguments<'_>) {
    let line = format!("{text}\n");
    let mut stderr = io::stderr().lock();
    #[cfg(unix)]
    let _ = crate::client::stdio::write_all(&mut stderr, line.as_bytes());
    #[cfg(not(unix))]
    let _ = io::Write::write_all(&mut stderr, line.as_bytes());
}

/// `println!` that cannot panic, flushed at once: for the few lines rcmd prints on stdout
/// (the address it listens on, which a script may be waiting for).
#[macro_export]
macro_rules! say_out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*).and_then(|()| out.flush());
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_has_the_time_level_target_and_message() {
        let line = |colour| {
            let mut out = Vec::new();
            let record = log::Record::builder()
                .level(log::Level::Info)
                .target("rcmd::server")
                .args(format_args!("127.0.0.1:5000: command 7 finished"))
                .build();
            write_line(&mut out, &"2026-11-22T10:03:04.123Z", &record, colour).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            line(false),
            "[2026-11-22T10:03:04.123Z INFO  rcmd::server] 127.0.0.1:5000: command 7 finished\n"
        );
        assert_eq!(
            line(true),
            "[2026-11-22T10:03:04.123Z \x1b[32mINFO \x1b[0m rcmd::server] \
             127.0.0.1:5000: command 7 finished\n"
        );
    }

    #[test]
    fn a_log_line_stays_one_line_whatever_its_message_holds() {
        let mut out = Vec::new();
        let forged = "cd /tmp/x\n[2026-01-01T00:00:00.000Z WARN  rcmd::server] forged \x1b[31mred\r\
                      \u{2028}\u{202e}é";
        // One statement: the arguments of `format_args!` live until its end.
        write_line(
            &mut out,
            &"T",
            &log::Record::builder()
                .level(log::Level::Info)
                .target("rcmd::server")
                .args(format_args!("{forged}"))
                .build(),
            false,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[T INFO  rcmd::server] cd /tmp/x\\n[2026-01-01T00:00:00.000Z WARN  rcmd::server] \
             forged \\u{1b}[31mred\\r\\u{2028}\\u{202e}é\n"
        );
    }

    #[test]
    fn quoted_commands_read_as_debug_formatting_writes_them() {
        for command in [
            "ls -la",
            "",
            "echo \"hi\"",
            "a\\b",
            "line\nforged",
            "tab\t",
            "\u{7f}",
            "é €",
        ] {
            assert_eq!(
                Quoted(command).to_string(),
                format!("{command:?}"),
                "{command:?}"
            );
        }
    }

    #[test]
    fn a_long_text_is_quoted_by_its_start_and_its_length() {
        let short = QuotedStart {
            text: "ls -la",
            max: 6,
        };
        assert_eq!(short.to_string(), "\"ls -la\"");
        let long = "\u{1}".repeat(70_000);
        let clipped = QuotedStart {
            text: &long,
            max: 512,
        }
        .to_string();
        assert!(clipped.ends_with("... (70000 bytes)"), "{clipped}");
        assert!(clipped.len() < 512 * 6 + 40, "{} bytes", clipped.len());
        // Cut on a character boundary: "é" is two bytes.
        let accents = QuotedStart {
            text: "éé", max: 3
        };
        assert_eq!(accents.to_string(), "\"é\"... (4 bytes)");
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_quoted_as_debug_formatting_quotes_it(command in ".*") {
            proptest::prop_assert_eq!(Quoted(&command).to_string(), format!("{command:?}"));
        }
    }

    #[test]
    fn lines_are_held_in_order_until_written() {
        let (mut lines, mut out) = (Vec::new(), Vec::new());
        hold(&mut lines, b"first\n", &mut out);
        hold(&mut lines, b"second\n", &mut out);
        assert!(out.is_empty());
        write_out(&mut lines, &mut out);
        assert_eq!(out, b"first\nsecond\n");
        assert!(lines.is_empty());
    }

    #[test]
    fn too_many_held_bytes_are_written_at_once() {
        let (mut lines, mut out) = (Vec::new(), Vec::new());
        hold(&mut lines, b"first\n", &mut out);
        let long = vec![b'x'; WRITE_AT_ONCE_FROM];
        hold(&mut lines, &long, &mut out);
        assert_eq!(out.len(), 6 + WRITE_AT_ONCE_FROM);
        assert!(out.starts_with(b"first\nxx"));
        assert!(lines.is_empty());
    }
}
