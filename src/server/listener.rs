//! Creating the listening socket, with the options a server needs set explicitly.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues before `accept`. Tutorials use 5, which drops clients
/// when 50 connect at once; the kernel caps this at `net.core.somaxconn` anyway.
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds a non-blocking listener on `addr` (IPv4 or IPv6).
///
/// # Errors
/// The address is in use, not local, or not permitted.
pub fn bind(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a restarted server bind while connections of the old one sit in TIME_WAIT, instead
    // of failing with "address already in use". (On Windows SO_REUSEADDR means something
    // else — binding over a live listener — so it is left off there.)
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::1]:9999` means IPv6 only; the user asks for 0.0.0.0 separately if they want both.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // mio's `from_std` does not do it for us, and a blocking `accept` would stall the loop.
    socket.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
