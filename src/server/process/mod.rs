//! Running commands: spawning them with piped stdio, reading their output without blocking the
//! event loop, learning of their exit, and killing whole process trees.
//!
//! The platform module provides the same interface everywhere:
//!
//! - [`ChildProcess`]: one running command. `spawn` starts `sh -c CMD` (Unix) or `cmd /C CMD`
//!   (Windows) in its own process group (Unix) or Job Object (Windows) and hooks its pipes into
//!   the event loop; `read_output`, `write_stdin`, `signal` and `kill_tree` do what they say and
//!   never block.
//! - [`ExitWatcher`]: a source registered in the event loop that fires when children exit;
//!   `take_exits` returns every `(pid, status)` that is ready.
//!
//! On Unix child pipes are registered in the `mio` poll directly and exits come from SIGCHLD.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::{ChildProcess, ExitWatcher};

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
