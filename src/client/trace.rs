//! Watching the framed client's reads: how TCP cut the stream, and which frames the length
//! prefix let the decoder complete from it.
//!
//! `rcmd demo sticky` and `rcmd connect --recv-size N` (with rcmd's framing) make the client
//! read the way the unframed tutorial client does: at most `recv_size` bytes per read, a moment
//! after each answer starts to arrive. So the reads are just as short (type 1) and just as merged
//! (type 2) as in the unframed demonstration, and each one is reported with the frames it
//! completed. What the lines show is that this no longer matters: a frame is handed on only
//! once all of it is in, and the bytes beyond it stay buffered as the start of the next.

use std::io;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

/// The client's read size, and the largest traced read (256 KiB): four output frames' bodies.
pub const MAX_TRACED_READ: usize = 4 * crate::protocol::frame::MAX_CHUNK;

/// How the traced client reads: like `recv(recv_size)` after `sleep(read_delay)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPacing {
    /// The most bytes one read may return.
    pub recv_size: usize,
    /// How long to wait, once bytes have started to arrive, before each read, so that the
    /// reads come out the same every time instead of depending on the scheduler.
    pub read_delay: Duration,
}

/// One step of the client's reading, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceEvent<'a> {
    /// A read returned `bytes` (numbered from 1 per connection); `buffered` bytes are now held
    /// by the decoder, received but not yet handed on as frames.
    Read {
        number: usize,
        bytes: usize,
        buffered: usize,
        /// Whether a whole frame is now in; if not, `next_frame_len` is the length of the frame
        /// being waited for, once its prefix and header have arrived.
        frame_complete: bool,
        next_frame_len: Option<usize>,
    },
    /// The decoder handed on a frame that was `wire_len` bytes on the wire (prefix, header,
    /// body, tag); `left` received bytes stay buffered after it.
    Frame {
        type_name: &'static str,
        body: &'a [u8],
        wire_len: usize,
        left: usize,
    },
}

impl TraceEvent<'_> {
    /// The event as one line, in the style of `rcmd connect --framing none`'s `[read N: ...]`.
    pub fn describe(&self) -> String {
        match *self {
            TraceEvent::Read {
                number,
                bytes,
                buffered,
                frame_complete,
                next_frame_len,
            } => {
                let bytes = count(bytes, "byte");
                match (frame_complete, next_frame_len) {
                    (true, _) => format!("[read {number}: {bytes}, {buffered} buffered]"),
                    (false, Some(len)) => format!(
                        "[read {number}: {bytes}; the next frame is {len} bytes, {buffered} \
                         of them in: read again]"
                    ),
                    (false, None) => format!(
                        "[read {number}: {bytes}; {buffered} buffered, too few to know the \
                         next frame's length: read again]"
                    ),
                }
            }
            TraceEvent::Frame {
                type_name,
                body,
                wire_len,
                left,
            } => {
                let body = match body.len() {
                    0 => String::new(),
                    len => format!(", {len}-byte body"),
                };
                let after = match left {
                    0 => "nothing buffered after it".to_owned(),
                    left => format!("{} of what follows already in", count(left, "byte")),
                };
                format!("[frame: {type_name}{body}, {wire_len} bytes on the wire; {after}]")
            }
        }
    }
}

/// `n` and the noun, in the plural unless `n` is 1: "1 byte", "2 bytes".
fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// What a traced [`super::Session`] does: paces its reads and passes every event on.
pub(super) struct ReadTrace {
    pacing: ReadPacing,
    observer: Box<dyn FnMut(&TraceEvent<'_>) + Send>,
    reads: usize,
    /// A command was just sent: its answer's first read waits, even if bytes are there.
    answer_expected: bool,
}

impl ReadTrace {
    pub(super) fn new(
        pacing: ReadPacing,
        observer: Box<dyn FnMut(&TraceEvent<'_>) + Send>,
    ) -> ReadTrace {
        ReadTrace {
            pacing: ReadPacing {
                // At most the untraced read size: the decoder keeps room for a few reads.
                recv_size: pacing.recv_size.clamp(1, MAX_TRACED_READ),
                ..pacing
            },
            observer,
            reads: 0,
            answer_expected: false,
        }
    }

    /// A command has been sent: the first read of its answer waits as the unframed client's
    /// one read does, so that what it returns does not depend on how soon it was made.
    pub(super) fn answer_expected(&mut self) {
        self.answer_expected = true;
    }

    /// Returns how much the next read may take, after waiting as the unframed client does for
    /// the first read of an answer: until its first byte is there (a peek takes none), then the
    /// read delay, so that what the server sent by then has come too. The answer's other reads
    /// are made at once, as the tutorial client makes its reads. A peek that fails returns at
    /// once: the read reports it.
    pub(super) fn before_read(&mut self, stream: &TcpStream) -> usize {
        let first_of_answer = std::mem::take(&mut self.answer_expected);
        if first_of_answer
            && !self.pacing.read_delay.is_zero()
            && matches!(stream.peek(&mut [0u8; 1]), Ok(n) if n > 0)
        {
            thread::sleep(self.pacing.read_delay);
        }
        self.pacing.recv_size
    }

    /// Reports a read of `bytes`.
    pub(super) fn read(
        &mut self,
        bytes: usize,
        buffered: usize,
        frame_complete: bool,
        next_frame_len: Option<usize>,
    ) {
        self.reads += 1;
        (self.observer)(&TraceEvent::Read {
            number: self.reads,
            bytes,
            buffered,
            frame_complete,
            next_frame_len,
        });
    }

    /// Reports a frame handed on.
    pub(super) fn frame(
        &mut self,
        type_name: &'static str,
        body: &[u8],
        wire_len: usize,
        left: usize,
    ) {
        (self.observer)(&TraceEvent::Frame {
            type_name,
            body,
            wire_len,
            left,
        });
    }
}

/// An observer for `rcmd connect`: each event as a line on stderr, next to the output. Output
/// that did not end its line (`printf abc`) is followed by a line break first, so that a trace
/// line always starts a line of its own.
pub fn to_stderr() -> Box<dyn FnMut(&TraceEvent<'_>) + Send> {
    let mut output_mid_line = false;
    Box::new(move |event| {
        use std::io::Write;
        let line_break = if std::mem::take(&mut output_mid_line) {
            "\n"
        } else {
            ""
        };
        let _ = writeln!(io::stderr(), "{line_break}{}", event.describe());
        // The sink prints an output frame's body right after this event.
        if let TraceEvent::Frame {
            type_name: "stdout" | "stderr",
            body,
            ..
        } = event
        {
            output_mid_line = !body.is_empty() && !body.ends_with(b"\n");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_sentences_with_singulars() {
        let read = |bytes, complete, next| TraceEvent::Read {
            number: 3,
            bytes,
            buffered: 12,
            frame_complete: complete,
            next_frame_len: next,
        };
        assert_eq!(
            read(1, true, None).describe(),
            "[read 3: 1 byte, 12 buffered]"
        );
        assert_eq!(
            read(10, false, Some(98)).describe(),
            "[read 3: 10 bytes; the next frame is 98 bytes, 12 of them in: read again]"
        );
        assert_eq!(
            read(2, false, None).describe(),
            "[read 3: 2 bytes; 12 buffered, too few to know the next frame's length: read again]"
        );
        let frame = |body: &'static [u8], left| TraceEvent::Frame {
            type_name: "stdout",
            body,
            wire_len: 72,
            left,
        };
        assert_eq!(
            frame(b"out\n", 1).describe(),
            "[frame: stdout, 4-byte body, 72 bytes on the wire; 1 byte of what follows already in]"
        );
        assert_eq!(
            frame(b"", 0).describe(),
            "[frame: stdout, 72 bytes on the wire; nothing buffered after it]"
        );
    }
}
