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
//!
//! Probes are sent only while nothing is in flight. If the peer vanishes while data is (output
//! streaming to a client, stdin to the server), TCP retransmits instead, and by default gives
//! up only after about 15 minutes (`tcp_retries2`); on Linux [`UNACKNOWLEDGED_LIMIT`]
//! (`TCP_USER_TIMEOUT`) brings that down to the same two minutes. A slow reader is not
//! affected: its kernel acknowledges what arrives even while the program does not read.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Silence after which the first probe is sent.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is declared dead.
pub const KEEPALIVE_PROBES: u32 = 6;
/// How long sent data may go unacknowledged before the connection is declared dead (Linux).
pub const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(120);

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
    #[cfg(target_os = "linux")]
    if let Err(e) = socket.set_tcp_user_timeout(Some(UNACKNOWLEDGED_LIMIT)) {
        log::debug!("cannot set TCP_USER_TIMEOUT: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn both_options_are_set_on_a_connected_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        configure(&stream).unwrap();
        let socket = SockRef::from(&stream);
        assert!(socket.tcp_nodelay().unwrap());
        // Elsewhere keepalive is best effort (an emulator may refuse it): checked on Linux.
        #[cfg(target_os = "linux")]
        {
            assert!(socket.keepalive().unwrap());
            assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
            assert_eq!(
                socket.tcp_user_timeout().unwrap(),
                Some(UNACKNOWLEDGED_LIMIT)
            );
        }
    }
}
