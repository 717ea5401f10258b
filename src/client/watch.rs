//! While the prompt waits for a line, notices at once when the server ends the session.
//!
//! Between commands the client does not read its connection: it is blocked in the line
//! editor. A server that closes an idle session (`idle_timeout`) or shuts down would otherwise
//! be noticed only when the next command is typed, as if nothing had happened meanwhile; ssh
//! says "Connection closed" when it happens. So while a line is being read, a thread waits in
//! `poll` for the connection to become readable (the server never sends anything unasked
//! between commands, except when it ends the session) and reports it. It reads nothing:
//! what the server sent stays for the session to read and report.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::thread::{self, JoinHandle};

/// A running watch; dropping it stops the watching thread.
pub struct HangupWatch {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl HangupWatch {
    /// Starts watching `connection`; `on_hangup` runs (on the watching thread) if the server
    /// sends something or closes before the watch is dropped.
    ///
    /// # Errors
    /// The descriptor could not be duplicated or a pipe could not be made.
    pub fn start(
        connection: &impl AsFd,
        on_hangup: impl FnOnce() + Send + 'static,
    ) -> io::Result<HangupWatch> {
        let connection = connection.as_fd().try_clone_to_owned()?;
        let (stop_read, stop_write) = io::pipe()?;
        let (stop_read, stop_write) = (OwnedFd::from(stop_read), OwnedFd::from(stop_write));
        let thread = thread::Builder::new()
            .name("rcmd-watch".into())
            .spawn(move || {
                if wait_readable(&connection, &stop_read) {
                    on_hangup();
                }
            })?;
        Ok(HangupWatch {
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }
}

impl Drop for HangupWatch {
    fn drop(&mut self) {
        // Closing the pipe's write end wakes the thread's `poll` (end of file on the read end).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until `connection` is readable or hung up (true) or `stop` is (false).
fn wait_readable(connection: &OwnedFd, stop: &OwnedFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: connection.as_raw_fd(),
            // A closed connection is readable too (a read would return end of file), and a
            // reset is reported as POLLHUP or POLLERR without asking, so POLLIN covers every
            // way the server can end the session (and, unlike Linux's POLLRDHUP, every Unix).
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready >= 0 {
            return fds[1].revents == 0 && fds[0].revents != 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (client, listener.accept().unwrap().0)
    }

    #[test]
    fn reports_a_close_and_stays_quiet_when_stopped() {
        let (client, server) = pair();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let watch = HangupWatch::start(&client, move || flag.store(true, Ordering::SeqCst));
        drop(watch.unwrap());
        assert!(!fired.load(Ordering::SeqCst), "fired without a hang-up");

        let flag = fired.clone();
        let _watch =
            HangupWatch::start(&client, move || flag.store(true, Ordering::SeqCst)).unwrap();
        drop(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fired.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the close went unnoticed"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}
