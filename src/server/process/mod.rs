//! Running commands: spawning them with piped stdio, reading their output without blocking the
//! event loop, learning of their exit, and killing whole process trees.
//!
//! The platform module provides the same interface everywhere:
//!
//! - [`ChildProcess`]: one running command. `spawn` starts [`shell_command`] (`/bin/sh -c -- CMD`
//!   on Unix, `%ComSpec% /D /S /C "CMD"` on Windows) in its own process group (Unix) or Job Object (Windows) and hooks its pipes into
//!   the event loop; `read_output`, `write_stdin`, `signal` and `kill_tree` do what they say and
//!   never block.
//! - [`ExitWatcher`]: a source registered in the event loop that fires when something about
//!   children happened; `take_events` returns every [`ChildEvent`] that is ready.
//!
//! On Unix child pipes are registered in the `mio` poll directly and exits come from SIGCHLD,
//! so the only events are exits. Windows has no readiness for anonymous pipes: there, threads
//! read the pipes and report `Ready` for the pipe's token through the same watcher.
//!
//! On Unix `read_output` reads a pipe only after its readiness event (`output_ready_event`) and
//! until it finds it drained, and answers `WouldBlock` without a system call in between.
//!
//! The contract the connection relies on: once `Exited` has been reported for a child and the
//! connection has marked both its pipes ready again (the poll may report the exit before the
//! last output's readiness), `read_output` returning `WouldBlock` means nothing more will come
//! from the child itself (only from background processes it left holding the pipe).
//!
//! A finished command's reply does not wait for housekeeping: a pipe at end of file is only
//! marked so (`end_output`) and closed by `release` after the exit frame is sent, and when
//! both pipes are at end of file the connection tries `try_reap` (Unix) rather than waiting
//! for the SIGCHLD round trip through the watcher.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{
    ChildProcess, ExitWatcher, give_children_default_signals, keep_commands_off_the_terminal,
    keep_inherited_descriptors_from_commands, kill_unwanted, open_dev_null, start,
};
#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::{ChildProcess, EnterGuard, ExitWatcher};

/// The system shell, ready to run `command` as one command line: `/bin/sh -c -- command`.
/// Both servers (framed and unframed) start commands from this, so a command means the same
/// in either.
#[cfg(unix)]
pub fn shell_command(command: &str) -> std::process::Command {
    // By absolute path: a bare "sh" makes exec try every PATH entry before /bin.
    let mut shell = std::process::Command::new("/bin/sh");
    // `--`: a command that starts with `-` is a command, not options of `sh` itself.
    shell.args(["-c", "--"]).arg(command);
    // TERM describes the terminal the server was started from, if any, not the client's, and
    // commands write to pipes: without it, `vi` or `top` say they need a terminal instead of
    // drawing for one that is not there (sshd without a terminal sets no TERM either). `serve`
    // takes it out of its own environment at start ([`remove_term_from_the_environment`]), so
    // that commands inherit the environment as it is: a change here makes std copy the whole
    // environment for every command (10-25 us a command here, measured). The demo, whose
    // prompt needs TERM, pays that.
    if std::env::var_os("TERM").is_some() {
        shell.env_remove("TERM");
    }
    shell
}

/// Takes TERM out of this process's environment, so that commands started by
/// [`shell_command`] do not get it without a copy of the environment per command.
///
/// # Safety
/// No other thread may read or change the environment meanwhile: call it before any thread
/// is started.
#[cfg(unix)]
pub unsafe fn remove_term_from_the_environment() {
    // SAFETY: the caller guarantees that this process has no other thread yet.
    unsafe { std::env::remove_var("TERM") };
}

/// The system shell, ready to run `command` as one command line: `%ComSpec% /D /S /C
/// "command"`. Both servers (framed and unframed) start commands from this, so a command
/// means the same in either.
///
/// `/S` and the quotes pass the command to `cmd` exactly as given (`cmd` removes the outer
/// quotes and nothing else); `/D` skips AutoRun commands from the registry, so the server's
/// commands do not depend on what an interactive user set up.
#[cfg(windows)]
pub fn shell_command(command: &str) -> std::process::Command {
    use std::os::windows::process::CommandExt;
    // `%ComSpec%` is `C:\Windows\system32\cmd.exe` unless someone changed it on purpose.
    let cmd = std::env::var_os("ComSpec")
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| "cmd.exe".into());
    let mut shell = std::process::Command::new(cmd);
    // Verbatim: `cmd` parses its own command line, and Rust's quoting for ordinary programs
    // would add backslashes and quotes that `cmd` keeps.
    shell.raw_arg(format!("/D /S /C \"{command}\""));
    shell
}

/// Something that happened to a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEvent {
    /// The process with this pid has exited and been reaped.
    Exited {
        pid: u32,
        status: crate::protocol::ExitStatus,
    },
    /// The pipe registered under this token has data, end of file, or room to write.
    #[cfg_attr(unix, allow(dead_code))]
    Ready(mio::Token),
}

/// Which of a command's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// The tokens a [`ChildProcess`] registers its pipes under.
#[derive(Debug, Clone, Copy)]
pub struct PipeTokens {
    pub stdout: mio::Token,
    pub stderr: mio::Token,
    pub stdin: mio::Token,
}
