//! Ctrl-C during a remote command interrupts the remote command, not just the local client.
//!
//! The terminal turns Ctrl-C into SIGINT for the client. While a command runs, the handler sends
//! a `signal` frame instead, and the server delivers SIGINT to the command's process group, as
//! if Ctrl-C had been pressed at a local shell. A command that ignores SIGINT gets SIGKILL on
//! the third press. With no command running, Ctrl-C ends the client with status 130 (128 +
//! SIGINT), as it would a local program, except in an interactive prompt session: while the
//! prompt reads a line it abandons the line, as in a shell, and in the moment between a
//! command's end and the next prompt it is dropped. (Usually the line editor sees Ctrl-C as a key
//! and no signal is sent; where it cannot put the terminal in raw mode, `TERM=dumb` as in
//! Emacs' shell, the terminal sends SIGINT and discards the typed line itself, and the handler
//! starts a new prompt line.) A script run through `connect` ends, with 130, once a command
//! that got a Ctrl-C has ended ([`presses_so_far`]).
//!
//! One exception to forwarding: when the client's own output is stuck (the program reading it
//! stopped reading, or the terminal is paused), the command's end could never be shown, and a
//! local program blocked on its output would simply die of the SIGINT. So when output has made
//! no progress for `STUCK_OUTPUT_GRACE` after a forwarded Ctrl-C (output is written in
//! 16 KiB pieces, so that a slow reader still counts as progress), the client ends with 130
//! too; closing the connection makes the server kill the command. The same when the `signal`
//! frame cannot be sent because the stdin frame in its way has made no progress for that time:
//! the stdin thread is blocked writing to a server that has stopped reading (it does while the
//! client's output is stuck). On a merely slow link the `signal` frame goes between two stdin
//! frames ([`super::sender`]).
//!
//! A client started with SIGINT ignored (a background job of a non-interactive shell, `trap ''
//! INT`) keeps it ignored, as ssh and any local program do: Ctrl-C meant for its parent's
//! foreground job must not interrupt its remote command.

#[cfg(unix)]
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::debug;

use super::SharedSender;
#[cfg(unix)]
use super::prompt::PROMPT;
use super::sender::UrgentSend;
use crate::protocol::{Message, SignalName};

/// Presses of Ctrl-C after which the command is killed rather than interrupted.
const PRESSES_BEFORE_KILL: u32 = 3;

/// How long a write of command output may stay stuck after a forwarded Ctrl-C before the
/// client gives up and ends (see the module doc), and how long the `signal` frame waits for a
/// stdin frame in its way that makes no progress. Long enough for a slow reader to take the
/// next piece, short enough that `timeout -s INT` is obeyed.
const STUCK_OUTPUT_GRACE: Duration = Duration::from_secs(1);

struct Target {
    sender: SharedSender,
    id: u32,
    presses: u32,
}

static CURRENT: Mutex<Option<Target>> = Mutex::new(None);

/// Whether the interactive prompt is reading a line (see the module doc).
static AT_PROMPT: AtomicBool = AtomicBool::new(false);

/// Whether an interactive prompt session is under way: there a Ctrl-C between a command's end
/// and the next prompt is dropped, as a shell drops it, instead of ending the client.
static INTERACTIVE: AtomicBool = AtomicBool::new(false);

/// Ctrl-C presses forwarded to commands so far, for a script to notice one.
static FORWARDED: AtomicU32 = AtomicU32::new(0);

/// Writes of command output to the local stdout or stderr started so far, and whether one is
/// under way: a write under way whose count does not move is stuck.
static WRITES_STARTED: AtomicU64 = AtomicU64::new(0);
static WRITING: AtomicBool = AtomicBool::new(false);

/// Output is written in pieces of at most this, each counted as progress: "stuck" means the
/// reader took less than this in `STUCK_OUTPUT_GRACE`. (A blocking write to a pipe returns
/// only when all of it is in, so a whole 64 KiB frame to a reader taking 16 KiB a second would
/// look stuck for four seconds.) Small enough for slow readers, large enough that streaming
/// pays for few more system calls than one per frame.
const OUTPUT_PIECE: usize = 16 * 1024;

/// Installs the process-wide Ctrl-C handler. Call once, from `main`, before running commands.
///
/// # Errors
/// The handler could not be installed (another one already was).
pub fn install() -> Result<(), ctrlc::Error> {
    #[cfg(unix)]
    if ignored_since_start(libc::SIGINT) {
        debug!("SIGINT is ignored, as our parent left it: Ctrl-C is not forwarded");
        return Ok(());
    }
    ctrlc::set_handler(|| {
        let mut current = CURRENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(target) = current.as_mut() else {
            // Not while holding the lock: writing the prompt may block (a paused terminal).
            drop(current);
            if AT_PROMPT.load(Ordering::SeqCst) {
                start_a_fresh_prompt_line();
                return;
            }
            if INTERACTIVE.load(Ordering::SeqCst) {
                debug!("Ctrl-C between commands: dropped");
                return;
            }
            std::process::exit(130);
        };
        target.presses += 1;
        let kill_next = target.presses == PRESSES_BEFORE_KILL - 1;
        FORWARDED.fetch_add(1, Ordering::SeqCst);
        let signal = if target.presses >= PRESSES_BEFORE_KILL {
            SignalName::Kill
        } else {
            SignalName::Int
        };
        debug!("Ctrl-C: sending {signal:?} to command {}", target.id);
        let message = Message::Signal {
            id: target.id,
            signal,
        };
        let sender = target.sender.clone();
        // Not while holding `CURRENT`: the command's end (`ForwardGuard`) takes it, and must
        // not wait for a send that is waiting for the stdin thread.
        drop(current);
        match sender.send_urgent(&message, STUCK_OUTPUT_GRACE) {
            UrgentSend::Sent => {}
            UrgentSend::Stuck => {
                debug!("Ctrl-C: the signal could not be sent; ending");
                std::process::exit(130);
            }
            // The connection is gone: the main thread reports that, with its own status.
            UrgentSend::Failed(e) => debug!("Ctrl-C: sending the signal failed: {e}"),
        }
        if output_stays_stuck() {
            debug!("Ctrl-C: the output is stuck; ending");
            std::process::exit(130);
        }
        if kill_next {
            // Otherwise a command that ignores SIGINT looks as if Ctrl-C did nothing.
            crate::say!("rcmd: press Ctrl-C once more to kill the command (SIGKILL)");
        }
    })
}

/// Whether `signal` was set to be ignored when the process started (and nothing has handled it
/// since): a parent's way of saying the signal is not for us (`nohup`, `trap '' INT`, background
/// jobs of a non-interactive shell), which exec keeps and a handler would override.
#[cfg(unix)]
pub fn ignored_since_start(signal: libc::c_int) -> bool {
    // SAFETY: with a null new action, `sigaction` only fills in `current`, which is zeroed
    // first and read only if the call succeeded.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

/// Writes command output with `write` in pieces of at most `OUTPUT_PIECE`, noting each one
/// under way (see the module doc), so that "stuck" means no progress for the grace time, not
/// one long write to a slow reader.
///
/// # Errors
/// The first error `write` returns.
pub fn write_output(
    bytes: &[u8],
    mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for part in bytes.chunks(OUTPUT_PIECE) {
        WRITES_STARTED.fetch_add(1, Ordering::SeqCst);
        WRITING.store(true, Ordering::SeqCst);
        let result = write(part);
        WRITING.store(false, Ordering::SeqCst);
        result?;
    }
    Ok(())
}

/// Whether one write of output has been under way, without another starting, for all of
/// `STUCK_OUTPUT_GRACE` from now. Returns at once when nothing is being written.
fn output_stays_stuck() -> bool {
    let started = WRITES_STARTED.load(Ordering::SeqCst);
    let until = Instant::now() + STUCK_OUTPUT_GRACE;
    while WRITING.load(Ordering::SeqCst) && WRITES_STARTED.load(Ordering::SeqCst) == started {
        if Instant::now() >= until {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// After Ctrl-C at the prompt of a terminal that edits lines itself (`TERM=dumb`), which has
/// discarded the typed line: a new line and the prompt, as a shell prints them. (In raw mode
/// the line editor gets Ctrl-C as a key and redraws the prompt itself.)
fn start_a_fresh_prompt_line() {
    #[cfg(unix)]
    if super::terminal::terminal_edits_lines() {
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "\n{PROMPT}");
        let _ = stdout.flush();
    }
}

/// Routes Ctrl-C to command `id` until the returned guard is dropped.
pub fn forward_to(sender: SharedSender, id: u32) -> ForwardGuard {
    *CURRENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Target {
        sender,
        id,
        presses: 0,
    });
    ForwardGuard
}

/// Stops forwarding Ctrl-C when dropped.
pub struct ForwardGuard;

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        *CURRENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// Makes Ctrl-C abandon the line rather than end the client until the returned guard is
/// dropped: for the time the interactive prompt reads a line.
pub fn reading_a_line() -> PromptGuard {
    AT_PROMPT.store(true, Ordering::SeqCst);
    PromptGuard
}

/// Ends [`reading_a_line`] when dropped.
pub struct PromptGuard;

/// Marks an interactive prompt session until the returned guard is dropped (see
/// `INTERACTIVE`).
pub fn interactive_session() -> InteractiveGuard {
    INTERACTIVE.store(true, Ordering::SeqCst);
    InteractiveGuard
}

/// Ends [`interactive_session`] when dropped.
pub struct InteractiveGuard;

impl Drop for InteractiveGuard {
    fn drop(&mut self) {
        INTERACTIVE.store(false, Ordering::SeqCst);
    }
}

impl Drop for PromptGuard {
    fn drop(&mut self) {
        AT_PROMPT.store(false, Ordering::SeqCst);
    }
}

/// How many Ctrl-C presses have been forwarded to commands since the client started.
pub fn presses_so_far() -> u32 {
    FORWARDED.load(Ordering::SeqCst)
}
