//! Where log lines go: `env_logger`'s filter (`RUST_LOG`) and format, written to stderr either
//! at once or, for the server, after the event loop has sent the replies of its current turn.
//!
//! Why the server holds its lines back: a log line is a `write` to stderr, and the server logs
//! twice per command, once when it starts and once when it finishes. Written inline, the
//! second line sits between the command's exit and the reply that reports it, so every client
//! waits for the server's log (and, if stderr is a slow terminal or a full pipe, for whoever
//! reads it). Held back, the lines of one turn of the loop leave in a single `write` once the
//! replies are out: the same lines in the same order, at most one turn of the loop later.
//! Memory stays bounded: past [`WRITE_AT_ONCE_FROM`] bytes the held lines are written at once.

use std::io::{self, IsTerminal, Write};
use std::sync::{Mutex, MutexGuard};

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
/// Colours as `env_logger` would choose them for stderr, unless `RUST_LOG_STYLE` says otherwise.
pub fn init(default_level: &str, delivery: Delivery) {
    let env = env_logger::Env::default().default_filter_or(default_level);
    let mut builder = env_logger::Builder::from_env(env);
    builder.format_timestamp_millis();
    if delivery == Delivery::Immediate {
        // A command-line client's warnings read like its other messages, `rcmd: warning: ...`
        // (as ssh's do), not like a server's log; the debug lines `RUST_LOG` asks for keep
        // the log format with its timestamps.
        builder.format(|buf, record| match record.level() {
            log::Level::Error => writeln!(buf, "rcmd: error: {}", record.args()),
            log::Level::Warn => writeln!(buf, "rcmd: warning: {}", record.args()),
            level => writeln!(
                buf,
                "[{} {level:<5} {}] {}",
                buf.timestamp_millis(),
                record.target(),
                record.args()
            ),
        });
    }
    if delivery == Delivery::Held {
        // `env_logger` only detects a terminal for its own stdout/stderr targets; through a
        // pipe target it needs telling.
        if std::env::var_os("RUST_LOG_STYLE").is_none() {
            builder.write_style(if io::stderr().is_terminal() {
                env_logger::WriteStyle::Always
            } else {
                env_logger::WriteStyle::Never
            });
        }
        builder.target(env_logger::Target::Pipe(Box::new(HeldStderr)));
    }
    // A second initialisation (e.g. several servers in one test process) keeps the first.
    let _ = builder.try_init();
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
/// into a crash; such a message is lost instead.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
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
