//! Leaves the terminal as the prompt found it when the client is told to terminate.
//!
//! While it waits for a line, the line editor keeps the terminal in raw mode (no echo, no line
//! buffering) and restores it when the line is read. SIGTERM or SIGHUP at that moment would end
//! the process with the terminal still raw, and the user's shell would then show no typing.
//! So, for the interactive prompt only, a thread waits for either signal, puts back the
//! terminal settings saved at start, and then lets the signal end the process as it would
//! have (a shell sees "terminated by SIGTERM", status 143).
//!
//! In `rcmd demo` the server is a thread of the same process, so a signal that ends the client
//! ends the server too, before it could kill the command it was running (closing the terminal
//! during `sleep 600` left the `sleep` behind). There the thread first ends the session, which
//! makes the server kill the command's process tree, and gives it a moment to do so.
//!
//! It also tells whether the terminal edits lines itself ([`terminal_edits_lines`]), which is
//! the case when the line editor could not take it raw (`TERM=dumb`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

/// Whether the server runs in this process (`rcmd demo`): see the module doc.
static SERVER_IN_THIS_PROCESS: AtomicBool = AtomicBool::new(false);

/// Set once a termination signal is being acted on: the process is about to die of it.
static ENDING_BY_SIGNAL: AtomicBool = AtomicBool::new(false);

/// How long a server in this process gets to kill a command once its session has ended: the
/// loop notices the end and kills the process tree in well under a millisecond when idle, and
/// this leaves room for a machine that is anything but.
const IN_PROCESS_SERVER_GRACE: Duration = Duration::from_millis(500);

/// Says that the server the prompt talks to is a thread of this process (`rcmd demo`).
pub fn server_runs_in_this_process() {
    SERVER_IN_THIS_PROCESS.store(true, Ordering::SeqCst);
}

/// Saves stdin's terminal settings now and restores them if SIGTERM or SIGHUP arrives; with a
/// server in this process, it also ends the session on `connection` first (module doc).
/// Does nothing if stdin is not a terminal or the handler cannot be installed: the prompt
/// works without it.
pub fn restore_on_termination(connection: Option<OwnedFd>) {
    let saved = match terminal_settings() {
        Ok(saved) => saved,
        Err(e) => {
            log::debug!("no terminal settings to restore: {e}");
            return;
        }
    };
    let Ok(mut signals) = Signals::new([SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = thread::Builder::new()
        .name("rcmd-terminal".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // SAFETY: `saved` is a termios that tcgetattr filled in for this descriptor.
                unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
                if SERVER_IN_THIS_PROCESS.load(Ordering::SeqCst)
                    && let Some(connection) = &connection
                {
                    // The session's end reaches the main thread too, which must not end the
                    // process first (`wait_if_ending_by_signal`).
                    ENDING_BY_SIGNAL.store(true, Ordering::SeqCst);
                    // SAFETY: shutdown on a socket descriptor we own; no memory is involved.
                    unsafe { libc::shutdown(connection.as_raw_fd(), libc::SHUT_RDWR) };
                    thread::sleep(IN_PROCESS_SERVER_GRACE);
                }
                // Die of the signal, as without this handler; exit like a shell reports it
                // if that fails.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
}

/// Whether stdin is a terminal in canonical mode, editing lines itself: the line editor has not
/// made it raw. Ctrl-C then reaches the client as SIGINT and the terminal discards the typed
/// line, so the client has to start a fresh prompt line itself.
pub fn terminal_edits_lines() -> bool {
    terminal_settings().is_ok_and(|settings| settings.c_lflag & libc::ICANON != 0)
}

/// Whether the process is about to die of a termination signal (so the session's end that the
/// main thread sees is ours, not the server's, and not worth a message).
pub fn ending_by_signal() -> bool {
    ENDING_BY_SIGNAL.load(Ordering::SeqCst)
}

/// Called by the main thread before it ends the process: if a termination signal is being
/// acted on, waits for the thread acting on it to end the process by that signal instead, after
/// the in-process server has stopped the command.
pub fn wait_if_ending_by_signal() {
    while ending_by_signal() {
        thread::park();
    }
}

/// Stdin's terminal settings; an error if stdin is not a terminal.
fn terminal_settings() -> io::Result<libc::termios> {
    let mut settings = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr writes a whole termios on success, and we read it only then.
    let done = unsafe { libc::tcgetattr(libc::STDIN_FILENO, settings.as_mut_ptr()) };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tcgetattr succeeded, so the value is initialised.
    Ok(unsafe { settings.assume_init() })
}
