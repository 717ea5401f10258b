//! What the client does when it is told to terminate (SIGTERM, SIGHUP) before it dies of it.
//!
//! While it waits for a line, the line editor keeps the terminal in raw mode (no echo, no line
//! buffering) and restores it when the line is read. SIGTERM or SIGHUP at that moment would end
//! the process with the terminal still raw, and the user's shell would then show no typing.
//! So a thread waits for either signal, puts back the terminal settings saved at start, and
//! then lets the signal end the process as it would have (a shell sees "terminated by
//! SIGTERM", status 143).
//!
//! In `rcmd demo` the server is a thread of the same process, so a signal that ends the client
//! ends the server too, before it could kill the command it was running (closing the terminal
//! during `sleep 600` left the `sleep` behind). The demo registers what to do first
//! ([`before_dying_of_a_signal`]: stop its server, which kills the running commands, and wait
//! for it to say so), and the main thread, which sees its session end meanwhile, waits for the
//! signal to end the process ([`wait_if_ending_by_signal`]).
//!
//! It also tells whether the terminal edits lines itself ([`terminal_edits_lines`]), which is
//! the case when the line editor could not take it raw (`TERM=dumb`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::thread;

use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

/// Run before dying of SIGTERM or SIGHUP (see the module doc).
type Hook = Box<dyn Fn() + Send + Sync>;
static BEFORE_DYING: OnceLock<Hook> = OnceLock::new();

/// Set once a termination signal is being acted on: the process is about to die of it.
static ENDING_BY_SIGNAL: AtomicBool = AtomicBool::new(false);

static INSTALLED: Once = Once::new();

/// Registers what to do when SIGTERM or SIGHUP arrives, before the process dies of it (the
/// demo stops its in-process server). Call before [`restore_on_termination`]. Only the first
/// registration counts.
pub fn before_dying_of_a_signal(hook: impl Fn() + Send + Sync + 'static) {
    let _ = BEFORE_DYING.set(Box::new(hook));
}

/// Saves stdin's terminal settings now and, if SIGTERM or SIGHUP arrives, restores them and runs
/// the hook of [`before_dying_of_a_signal`] before dying of the signal. Installs once, however
/// often called. Does nothing if there is neither a terminal to restore nor a hook, or the
/// handler cannot be installed: the client works without it.
pub fn restore_on_termination() {
    INSTALLED.call_once(install);
}

fn install() {
    let saved = terminal_settings()
        .map_err(|e| log::debug!("no terminal settings to restore: {e}"))
        .ok();
    if saved.is_none() && BEFORE_DYING.get().is_none() {
        return;
    }
    // A signal ignored since start stays ignored (`nohup rcmd connect`): ours to act on only
    // if it would have ended the process.
    let ending: Vec<_> = [SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&signal| !super::interrupt::ignored_since_start(signal))
        .collect();
    if ending.is_empty() {
        return;
    }
    let Ok(mut signals) = Signals::new(ending) else {
        return;
    };
    let _ = thread::Builder::new()
        .name("rcmd-terminal".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                if let Some(saved) = &saved {
                    // SAFETY: `saved` is a termios that tcgetattr filled in for this descriptor.
                    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
                }
                if let Some(hook) = BEFORE_DYING.get() {
                    // The hook ends the session, which the main thread sees too: it must not
                    // end the process first (`wait_if_ending_by_signal`).
                    ENDING_BY_SIGNAL.store(true, Ordering::SeqCst);
                    hook();
                }
                if saved.is_some() {
                    end_the_prompt_line();
                }
                // Die of the signal, as without this handler; exit like a shell reports it
                // if that fails.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
}

/// Turns bracketed paste off again (the line editor turns it on while it reads a line; left on,
/// the shell after us would see `^[[200~` around every paste) and ends the line the prompt was
/// on. Through a new, non-blocking open of our stdout: a terminal stopped with Ctrl-S must not
/// keep a dying client alive, and std's stdout lock may be held by the main thread.
fn end_the_prompt_line() {
    use std::os::unix::fs::OpenOptionsExt;
    const RESET: &[u8] = b"\x1b[?2004l\r\n";
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(libc::STDOUT_FILENO) } != 1 {
        return;
    }
    if let Ok(mut terminal) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open("/proc/self/fd/1")
    {
        let _ = std::io::Write::write(&mut terminal, RESET);
    }
}

/// Whether stdin is a terminal in canonical mode, editing lines itself: the line editor has not
/// made it raw. Ctrl-C then reaches the client as SIGINT and the terminal discards the typed
/// line, so the client has to start a fresh prompt line itself.
pub fn terminal_edits_lines() -> bool {
    terminal_settings().is_ok_and(|settings| settings.c_lflag & libc::ICANON != 0)
}

/// Whether stdin is this process's controlling terminal (what `/dev/tty` opens), not merely a
/// terminal: a program given another terminal as stdin must not draw on its own.
pub fn stdin_is_the_controlling_terminal() -> bool {
    // SAFETY: tcgetsid has no preconditions. It fails (ENOTTY) unless the terminal on the
    // descriptor is the caller's controlling terminal.
    unsafe { libc::tcgetsid(libc::STDIN_FILENO) != -1 }
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
