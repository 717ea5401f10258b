//! The unframed mode: a deliberately broken protocol that shows TCP's "sticky packets".
//!
//! TCP delivers a stream of bytes, not a sequence of messages. A `send` of 1492 bytes may come
//! out of the other end as one `recv` of 1024 and a later one of 468; two `send`s of 4 bytes may
//! come out as one `recv` of 8. Socket tutorials meet this when they send a command's output
//! with no framing, and call it "sticky packets" (粘包). rcmd keeps that tutorial protocol here,
//! behind `--framing none`, so anyone can reproduce both effects and compare them with rcmd's
//! length-prefixed frames ([`crate::protocol::frame`]).
//!
//! The unframed wire, after the TCP connection is open:
//!
//! ```text
//! server -> client   nonce: 32 random bytes                      (skipped with --insecure-no-auth)
//! client -> server   HMAC-SHA256(secret, nonce): 32 bytes        (skipped with --insecure-no-auth)
//! then, once per command:
//! client -> server   the command, plain bytes (one recv of at most 1024 on the server)
//! server -> client   the command's stderr, one write              (no length, no end marker)
//! server -> client   the command's stdout, a second write         (no length, no end marker)
//! ```
//!
//! Nothing on this wire says where one write ends and the next begins, so the client cannot
//! know when an answer is complete. That is the whole lesson:
//!
//! - **Type 1, the receiver takes less than was sent**: the client makes one `recv` of at most
//!   N bytes ([`client::ReadOptions::recv_size`]); a longer answer leaves its remainder in the
//!   socket, where the next command's `recv` finds it.
//! - **Type 2, the sender's small writes merge**: the stderr write and the stdout write are both
//!   waiting in the client's receive buffer when it reads, so one `recv` returns both.
//!
//! The modules: [`server`] (thread-per-connection, written like the tutorial server), [`shell`]
//! (running a command and collecting its output), [`client`] (the one-read-per-command client),
//! [`preview`] (showing bytes and where message boundaries fell) and [`demo`] (`rcmd demo
//! sticky`, both modes side by side).

pub mod client;
pub mod demo;
pub mod preview;
pub mod server;
pub mod shell;

use std::fmt;
use std::io;
use std::net::SocketAddr;

pub use client::{ReadOptions, ReadOutcome, UnframedClient};
pub use server::{UnframedConfig, UnframedServer};

/// Length of the nonce the unframed server sends, and of the HMAC-SHA256 proof sent back.
pub const CHALLENGE_LEN: usize = crate::protocol::message::NONCE_LEN;

/// The most bytes the unframed server takes for one command: a single `recv(1024)`, as in the
/// tutorials. A longer command is cut (and its tail read as the next command: the same sticky
/// packet problem, in the other direction).
pub const COMMAND_RECV_SIZE: usize = 1024;

/// Why the unframed mode could not do its job.
#[derive(Debug)]
pub enum StickyError {
    /// `--insecure-no-auth` on an address other machines can reach.
    InsecureNotLoopback(SocketAddr),
    /// The listening socket could not be made.
    Bind(SocketAddr, io::Error),
    /// The address is malformed or does not resolve: the resolver's message, which names it.
    BadAddress(String),
    /// No TCP connection could be made.
    Connect(String, io::Error),
    /// The raw handshake did not complete.
    Handshake(String),
    /// The peer is an rcmd server speaking the framed protocol.
    FramedServer,
    /// The server closed the connection right after our proof: it has another secret.
    Rejected,
    /// The server closed the connection.
    Closed,
    /// Our own stdin or stdout failed (a closed pipe, a full disk).
    LocalIo(io::Error),
    /// Any other network error.
    Io(io::Error),
}

impl fmt::Display for StickyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyError::InsecureNotLoopback(addr) => write!(
                f,
                "--insecure-no-auth runs commands for anyone who connects, so it is allowed only \
                 on a loopback address (127.0.0.1, ::1), not on {addr}"
            ),
            StickyError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StickyError::BadAddress(why) => write!(f, "{why}"),
            StickyError::Connect(addr, e) => write!(f, "cannot connect to {addr}: {e}"),
            StickyError::Handshake(why) => write!(f, "handshake failed: {why}"),
            StickyError::FramedServer => write!(
                f,
                "the server speaks rcmd's framed protocol; connect without --framing none"
            ),
            StickyError::Rejected => write!(
                f,
                "authentication failed: the server closed the connection after our proof, so it \
                 most likely has a different secret (the raw handshake has no reply; a server \
                 that rejects a proof just closes)"
            ),
            StickyError::Closed => write!(f, "connection closed by the server"),
            StickyError::LocalIo(e) => write!(f, "local input/output failed: {e}"),
            StickyError::Io(e) => write!(f, "network error: {e}"),
        }
    }
}

impl std::error::Error for StickyError {}

impl From<io::Error> for StickyError {
    fn from(error: io::Error) -> StickyError {
        StickyError::Io(error)
    }
}

/// Checks that a server without authentication would listen on loopback only.
///
/// Without the handshake, anyone who can reach the port runs shell commands as this user; on
/// loopback that is only the users of this machine, which is what a classroom exercise needs.
///
/// # Errors
/// [`StickyError::InsecureNotLoopback`] for any other address, wildcards (`0.0.0.0`, `::`)
/// included.
pub fn check_insecure_listen(addr: SocketAddr) -> Result<(), StickyError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(StickyError::InsecureNotLoopback(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_mode_is_for_loopback_only() {
        for ok in ["127.0.0.1:0", "127.1.2.3:9999", "[::1]:9999"] {
            assert!(check_insecure_listen(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for refused in [
            "0.0.0.0:0",
            "[::]:0",
            "192.168.1.10:9999",
            "[::ffff:127.0.0.1]:9999",
        ] {
            assert!(
                matches!(
                    check_insecure_listen(refused.parse().unwrap()),
                    Err(StickyError::InsecureNotLoopback(_))
                ),
                "{refused}"
            );
        }
    }
}
