//! The TCP options both ends set on an rcmd connection: replies leave at once (no Nagle delay),
//! and keepalive probes notice a peer that vanished.
//!
//! Why keepalive: a command may rightly print nothing for hours (`sleep`, a quiet build), so
//! silence on the connection proves nothing. If the other machine is powered off, its cable
//! pulled, or a NAT on the way forgets the flow, no FIN or RST ever arrives, and without probes
//! the client would wait for output forever and the server would keep the command running, and
//! its connection slot taken, for a client that is gone. With probes after [`KEEPALIVE_IDLE`]
//! of silence, every [`KEEPALIVE_INTERVAL`], a peer that answers none of [`KEEPALIVE_PROBES`] is
//! declared dead about two minutes after it went: the client's read fails ("connection lost",
//! exit 255) and the server closes the connection, which kills the command. (`ssh` and `sshd`
//! enable keepalive the same way, `TCPKeepAlive yes`, with the system's 2-hour default; one
//! minute of silence here also keeps NAT mappings of an idle prompt alive.) A live peer's
//! kernel answers the probes itself, so a busy or idle rcmd never notices them.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Silence after which the first probe is sent.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is declared dead.
pub const KEEPALIVE_PROBES: u32 = 6;

/// Sets the options on a connected socket (a `std` or `mio` `TcpStream`).
///
/// # Errors
/// Turning Nagle's algorithm off failed. Keepalive is best effort: a system that refuses one of
/// its settings (some emulators do) keeps the connection without it, with a debug log line.
pub fn configure<'s>(socket: impl Into<SockRef<'s>>) -> io::Result<()> {
    let socket = socket.into();
    // Each frame leaves in one write, but a request right after a reply would otherwise wait
    // for the delayed ACK of that reply: 40 ms per command.
    socket.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        log::debug!("cannot turn TCP keepalive on: {e}");
    }
    Ok(())
}
