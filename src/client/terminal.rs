//! Leaves the terminal as the prompt found it when the client is told to terminate.
//!
//! While it waits for a line, the line editor keeps the terminal in raw mode (no echo, no line
//! buffering) and restores it when the line is read. SIGTERM or SIGHUP at that moment would end
//! the process with the terminal still raw, and the user's shell would then show no typing.
//! So, for the interactive prompt only, a thread waits for either signal, puts back the
//! terminal settings saved at start, and then lets the signal end the process as it would
//! have (a shell sees "terminated by SIGTERM", status 143).
//!
//! It also tells whether the terminal edits lines itself ([`terminal_edits_lines`]), which is
//! the case when the line editor could not take it raw (`TERM=dumb`).

use std::io;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

/// Saves stdin's terminal settings now and restores them if SIGTERM or SIGHUP arrives.
/// Does nothing if stdin is not a terminal or the handler cannot be installed: the prompt
/// works without it.
pub fn restore_on_termination() {
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
