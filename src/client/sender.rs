//! The sending half of a session, shared by the threads that send frames.
//!
//! Frames must go out whole and one at a time, because every frame's tag depends on the count
//! of frames sent before it: a mutex around the encoder and the socket. Three kinds of sender
//! share it:
//!
//! - the main thread ([`SharedSender::send`]): the handshake and each `exec`; it waits as long
//!   as it takes;
//! - the stdin thread ([`SharedSender::send_bulk`]): one 64 KiB `stdin` frame after another. On a
//!   slow uplink it holds the lock nearly all the time, letting go for microseconds between
//!   frames, so it steps aside whenever an urgent frame is waiting;
//! - the Ctrl-C handler and the report of a tampered frame ([`SharedSender::send_urgent`]): they
//!   go at the next frame boundary. They must not wait for ever, though: the stdin thread stays
//!   blocked in its write when the server stops reading (it does while the client's own output
//!   is stuck). An urgent frame gives up when the frame in the way has made no progress for its
//!   patience (a slow link still moves a piece every so often; a stuck one does not), and the
//!   caller decides what giving up means.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use log::debug;

use crate::auth::FrameMac;
use crate::protocol::{FrameEncoder, Message};

/// A frame is written in pieces of this, each counted as progress (see the module doc).
const PROGRESS_PIECE: usize = 16 * 1024;

/// How often a waiting sender looks at the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(1);

/// The encoder and the socket, behind [`SharedSender`]'s lock. A frame of up to 16 KiB goes out in one `write`; a longer one
/// (stdin) in 16 KiB pieces, each counted as progress. With `TCP_NODELAY` no piece waits for an
/// acknowledgement of the one before (no Nagle stall).
struct FrameSender {
    stream: TcpStream,
    encoder: FrameEncoder,
    buf: Vec<u8>,
}

impl FrameSender {
    /// Sends one frame, counting each piece the socket takes in `progress`.
    fn send(&mut self, message: &Message, body: &[u8], progress: &AtomicU64) -> io::Result<()> {
        debug!("-> {}", message.type_name());
        self.buf.clear();
        self.encoder.encode(message, body, &mut self.buf);
        for piece in self.buf.chunks(PROGRESS_PIECE) {
            self.stream.write_all(piece)?;
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What became of an urgent frame.
#[derive(Debug)]
pub enum UrgentSend {
    /// Handed to the socket.
    Sent,
    /// The frame in the way made no progress for the whole patience: not sent.
    Stuck,
    /// Writing it failed (the connection is gone).
    Failed(io::Error),
}

/// The sending half, cloned into every thread that sends (see the module doc).
#[derive(Clone)]
pub struct SharedSender(Arc<Shared>);

struct Shared {
    frames: Mutex<FrameSender>,
    /// An urgent frame is waiting for the lock: bulk senders step aside.
    urgent_waiting: AtomicBool,
    /// Pieces written so far, by anyone: a frame in the way that moves this is not stuck.
    pieces_written: AtomicU64,
}

impl SharedSender {
    /// A sender writing to `stream`, untagged until [`Self::start_tagging`].
    pub fn new(stream: TcpStream) -> SharedSender {
        SharedSender(Arc::new(Shared {
            frames: Mutex::new(FrameSender {
                stream,
                encoder: FrameEncoder::new(),
                buf: Vec::new(),
            }),
            urgent_waiting: AtomicBool::new(false),
            pieces_written: AtomicU64::new(0),
        }))
    }

    /// From the next frame on, every frame carries a tag under `mac` (the handshake has made
    /// the session keys).
    pub fn start_tagging(&self, mac: FrameMac) {
        self.lock().encoder.start_tagging(mac);
    }

    /// The sender itself, waiting as long as it takes.
    fn lock(&self) -> MutexGuard<'_, FrameSender> {
        // A thread that panicked mid-frame leaves the stream unusable anyway; the next write
        // or the peer will say so.
        self.0
            .frames
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one frame, waiting as long as it takes.
    ///
    /// # Errors
    /// The connection failed.
    pub fn send(&self, message: &Message, body: &[u8]) -> io::Result<()> {
        self.lock().send(message, body, &self.0.pieces_written)
    }

    /// Sends one frame of bulk data, after any urgent frame that is waiting.
    ///
    /// # Errors
    /// The connection failed.
    pub fn send_bulk(&self, message: &Message, body: &[u8]) -> io::Result<()> {
        self.step_aside_for_urgent_frames();
        self.send(message, body)
    }

    fn step_aside_for_urgent_frames(&self) {
        while self.0.urgent_waiting.load(Ordering::SeqCst) {
            std::thread::sleep(RETRY_EVERY);
        }
    }

    /// Sends a frame that must not wait behind bulk data, nor for ever: it goes at the next
    /// frame boundary, unless the frame in the way makes no progress for `patience`.
    pub fn send_urgent(&self, message: &Message, patience: Duration) -> UrgentSend {
        self.0.urgent_waiting.store(true, Ordering::SeqCst);
        let outcome = self.wait_and_send(message, patience);
        self.0.urgent_waiting.store(false, Ordering::SeqCst);
        outcome
    }

    fn wait_and_send(&self, message: &Message, patience: Duration) -> UrgentSend {
        let progress = &self.0.pieces_written;
        let mut seen = progress.load(Ordering::Relaxed);
        let mut give_up_at = Instant::now() + patience;
        loop {
            let mut frames = match self.0.frames.try_lock() {
                Ok(frames) => frames,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    let now = progress.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, give_up_at) = (now, Instant::now() + patience);
                    } else if Instant::now() >= give_up_at {
                        return UrgentSend::Stuck;
                    }
                    std::thread::sleep(RETRY_EVERY);
                    continue;
                }
            };
            return match frames.send(message, b"", progress) {
                Ok(()) => UrgentSend::Sent,
                Err(e) => UrgentSend::Failed(e),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SignalName;
    use std::sync::atomic::AtomicBool;

    /// A sender on one end of a loopback connection, and the other end.
    fn loopback_sender() -> (SharedSender, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        (SharedSender::new(stream), peer)
    }

    fn ctrl_c() -> Message {
        Message::Signal {
            id: 1,
            signal: SignalName::Int,
        }
    }

    #[test]
    fn an_urgent_frame_gives_up_on_a_frame_in_the_way_that_makes_no_progress() {
        let (sender, _peer) = loopback_sender();
        // The stdin thread, stuck in a write to a server that does not read.
        let held = sender.lock();
        let started = Instant::now();
        std::thread::scope(|scope| {
            let outcome = scope
                .spawn(|| sender.send_urgent(&ctrl_c(), Duration::from_millis(100)))
                .join()
                .unwrap();
            assert!(matches!(outcome, UrgentSend::Stuck), "{outcome:?}");
        });
        assert!(started.elapsed() < Duration::from_secs(5), "it waited on");
        drop(held);
        let outcome = sender.send_urgent(&ctrl_c(), Duration::from_millis(100));
        assert!(matches!(outcome, UrgentSend::Sent), "{outcome:?}");
    }

    #[test]
    fn an_urgent_frame_gets_between_bulk_frames_sent_back_to_back() {
        let (sender, _peer) = loopback_sender();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            // The stdin thread on a slow link: each frame holds the lock 20 ms, and the lock
            // is free only for the moment between one frame and the next.
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    sender.step_aside_for_urgent_frames();
                    let _frame = sender.lock();
                    std::thread::sleep(Duration::from_millis(20));
                    sender.0.pieces_written.fetch_add(1, Ordering::Relaxed);
                }
            });
            std::thread::sleep(Duration::from_millis(50));
            let outcome = sender.send_urgent(&ctrl_c(), Duration::from_millis(500));
            stop.store(true, Ordering::SeqCst);
            assert!(matches!(outcome, UrgentSend::Sent), "{outcome:?}");
        });
    }

    #[test]
    fn a_slow_frame_in_the_way_is_waited_for_while_it_makes_progress() {
        let (sender, _peer) = loopback_sender();
        let holding = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            // One frame that takes 600 ms to go out, moving a piece every 50 ms: longer than
            // the urgent frame's patience, but never stuck that long.
            scope.spawn(|| {
                let _frame = sender.lock();
                holding.wait();
                for _ in 0..12 {
                    std::thread::sleep(Duration::from_millis(50));
                    sender.0.pieces_written.fetch_add(1, Ordering::Relaxed);
                }
            });
            holding.wait();
            let outcome = sender.send_urgent(&ctrl_c(), Duration::from_millis(300));
            assert!(matches!(outcome, UrgentSend::Sent), "{outcome:?}");
        });
    }

    #[test]
    fn an_urgent_frame_on_a_closed_connection_fails_rather_than_counts_as_stuck() {
        let (sender, peer) = loopback_sender();
        drop(peer);
        // The first writes after the peer closed may still be accepted locally.
        let outcome = (0..100)
            .map(|_| sender.send_urgent(&ctrl_c(), Duration::from_millis(100)))
            .find(|outcome| !matches!(outcome, UrgentSend::Sent));
        assert!(
            matches!(outcome, Some(UrgentSend::Failed(_))),
            "{outcome:?}"
        );
    }
}
