//! Framing: turning messages into bytes and a byte stream back into messages. No sockets of its
//! own: the decoder is fed bytes, or reads them from any `Read` ([`FrameDecoder::read_from`]).
//!
//! TCP delivers a stream of bytes with no message boundaries, so every frame says how long it is
//! before it says anything else:
//!
//! ```text
//! +----------------------+------------------------+------------------+----------------------+
//! | header_len: u32 (BE) | header: header_len     | body: `len`      | tag: 32 bytes        |
//! |                      | bytes of UTF-8 JSON    | bytes, raw       | (after the handshake)|
//! +----------------------+------------------------+------------------+----------------------+
//! ```
//!
//! The header is a JSON object: a [`Message`] plus `len`, the body length. Both lengths are
//! checked against named maxima before anything is allocated for them, so a peer announcing
//! 4 GiB costs us nothing but an error frame. After the handshake a 32-byte HMAC tag
//! ([`FrameMac`]) follows every frame.
//!
//! The decoder is incremental: [`FrameDecoder::feed`] whatever bytes arrived (or let it
//! [`FrameDecoder::read_from`] a socket straight into its buffer), then take complete frames with
//! [`FrameDecoder::next_frame`] until it says `Ok(None)` ("not enough bytes yet").
//!
//! Streamed output is most of what crosses the wire, so two variants spare it a copy each: a
//! sender can have a body read straight into its frame ([`FrameEncoder::encode_appending_body`]),
//! and a receiver that only passes a body on can borrow it from the decoder's buffer
//! ([`FrameDecoder::next_frame_ref`]).

use std::io::{self, Read};
use std::ops::Range;

use crate::auth::{FrameMac, TAG_LEN};
use crate::protocol::message::{ErrorCode, Message, clip};
use serde::Serialize;

/// Size of the big-endian header length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest header a peer may announce. Headers are usually under 300 bytes; an `error` header,
/// whose message is cut to [`MAX_ERROR_MESSAGE_LEN`](crate::protocol::message::MAX_ERROR_MESSAGE_LEN)
/// bytes, stays under 7 KiB even with every character escaped.
pub const MAX_HEADER_LEN: usize = 16 * 1024;
/// Largest body a peer may announce. Output and stdin frames carry at most [`MAX_CHUNK`] (three
/// times that for transcoded output); an `exec` body, the command, may use all of it.
pub const MAX_BODY_LEN: usize = 1024 * 1024;
/// Longest piece of a peer's header an error quotes back (serde quotes a bad value in full).
const QUOTED_VALUE_LEN: usize = 200;
/// Bytes read from a pipe or stdin at a time. A chunk becomes one frame body (up to three
/// times longer when legacy-encoded output is transcoded to UTF-8, still far below
/// [`MAX_BODY_LEN`]).
pub const MAX_CHUNK: usize = 64 * 1024;

/// One decoded frame: the message and its body (empty for bodiless types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub message: Message,
    pub body: Vec<u8>,
}

/// A decoded frame whose body is still in the decoder's buffer, valid until the decoder is
/// used again: a receiver that only passes the body on (the client writing command output)
/// is spared a copy and an allocation per frame.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub message: Message,
    pub body: &'a [u8],
}

/// Why a byte stream could not be decoded. Each is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a header over [`MAX_HEADER_LEN`] (or zero bytes).
    HeaderTooLarge { len: usize },
    /// The header announces a body over the decoder's maximum.
    BodyTooLarge { len: u64 },
    /// The header is not a JSON object of a known message's shape.
    BadHeader(String),
    /// The header's `type` is not one this protocol version defines.
    UnknownType(String),
    /// The frame's tag does not verify.
    Integrity,
}

impl FrameError {
    /// The wire error code a peer is sent for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::HeaderTooLarge { .. } => ErrorCode::HeaderTooLarge,
            FrameError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            FrameError::BadHeader(_) => ErrorCode::BadHeader,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::Integrity => ErrorCode::Integrity,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::HeaderTooLarge { len: 0 } => write!(f, "empty frame header (0 bytes)"),
            FrameError::HeaderTooLarge { len } => {
                write!(
                    f,
                    "frame header of {len} bytes is over the limit of {MAX_HEADER_LEN}"
                )
            }
            FrameError::BodyTooLarge { len } => {
                write!(f, "frame body of {len} bytes is over the limit")
            }
            FrameError::BadHeader(why) => write!(f, "malformed frame header: {why}"),
            FrameError::UnknownType(name) => write!(f, "unknown message type {name:?}"),
            FrameError::Integrity => {
                write!(
                    f,
                    "integrity check failed: a frame was altered, replayed, dropped or reordered"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The header as written: the message's own fields plus the body length.
#[derive(Serialize)]
struct WireHeader<'a> {
    #[serde(flatten)]
    message: &'a Message,
    len: usize,
}

/// Writes frames, tagging them once [`FrameEncoder::start_tagging`] has been called.
#[derive(Default)]
pub struct FrameEncoder {
    mac: Option<FrameMac>,
}

impl FrameEncoder {
    pub fn new() -> FrameEncoder {
        FrameEncoder { mac: None }
    }

    /// From now on every frame gets a tag from `mac` (called when the handshake completes).
    pub fn start_tagging(&mut self, mac: FrameMac) {
        self.mac = Some(mac);
    }

    /// Appends one complete frame to `out`: the prefix, header, body and (if tagging) the tag.
    ///
    /// Everything lands in one buffer so that it leaves in one `write`: a header and a body
    /// sent as two small writes are what makes Nagle's algorithm wait for a delayed ACK.
    pub fn encode(&mut self, message: &Message, body: &[u8], out: &mut Vec<u8>) {
        debug_assert!(
            body.is_empty() || message.carries_body(),
            "{} carries no body",
            message.type_name()
        );
        // A receiver refuses longer bodies and ends the connection: senders must split.
        debug_assert!(
            body.len() <= MAX_BODY_LEN,
            "a {}-byte body is over MAX_BODY_LEN",
            body.len()
        );
        let start = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        Self::write_header(message, body.len(), out);
        let header_len = (out.len() - start - LEN_PREFIX) as u32;
        out[start..start + LEN_PREFIX].copy_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(body);
        self.append_tag(out, start);
    }

    /// Appends one frame whose body `append_body` adds to `out` itself (at most `max_body`
    /// bytes, e.g. read straight from a pipe), sparing the copy from a separate read buffer.
    /// Returns what `append_body` returned; on `Ok(0)` or an error `out` is as it was.
    ///
    /// The header comes first but holds the body's length, known only after the read. So the
    /// header is written for `max_body`, and once the body is in, rewritten for its real
    /// length and the body moved left by the bytes that saves: that happens only for a body
    /// with fewer digits in its length than `max_body`, that is a short one.
    ///
    /// # Errors
    /// Whatever `append_body` returned, or `InvalidData` if it appended more than `max_body`.
    pub fn encode_appending_body(
        &mut self,
        message: &Message,
        max_body: usize,
        out: &mut Vec<u8>,
        append_body: impl FnOnce(&mut Vec<u8>, usize) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        Self::write_header(message, max_body, out);
        let body_at = out.len();
        let appended = match append_body(out, max_body) {
            Ok(n) if n > 0 && n <= max_body && out.len() == body_at + n => n,
            Ok(n) if n > 0 => {
                out.truncate(start);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{n} bytes of body reported, at most {max_body} expected"),
                ));
            }
            other => {
                out.truncate(start);
                return other;
            }
        };
        let mut header = Vec::with_capacity(body_at - start - LEN_PREFIX);
        Self::write_header(message, appended, &mut header);
        let header_at = start + LEN_PREFIX;
        let saved = body_at - header_at - header.len();
        if saved > 0 {
            out.copy_within(body_at.., body_at - saved);
            out.truncate(out.len() - saved);
        }
        out[start..header_at].copy_from_slice(&(header.len() as u32).to_be_bytes());
        out[header_at..header_at + header.len()].copy_from_slice(&header);
        self.append_tag(out, start);
        Ok(appended)
    }

    fn write_header(message: &Message, body_len: usize, out: &mut Vec<u8>) {
        serde_json::to_writer(
            out,
            &WireHeader {
                message,
                len: body_len,
            },
        )
        .expect("serializing a message to a Vec cannot fail");
    }

    /// Appends the tag of the frame that starts at `out[start]`, when tagging.
    fn append_tag(&mut self, out: &mut Vec<u8>, start: usize) {
        if let Some(mac) = &mut self.mac {
            let tag = mac.tag(&out[start..]);
            out.extend_from_slice(&tag);
        }
    }
}

/// A header that has been parsed while its body is still arriving.
struct PendingHeader {
    message: Message,
    header_len: usize,
    body_len: usize,
}

/// The layout of one frame: prefix, header and body (what the tag covers), then the tag.
#[derive(Clone, Copy)]
struct FrameExtent {
    header_len: usize,
    /// Prefix, header and body: the bytes the tag covers.
    tagged_len: usize,
    /// 0 before the handshake ends, [`TAG_LEN`] after.
    tag_len: usize,
}

impl FrameExtent {
    /// The whole frame's length on the wire.
    fn wire_len(self) -> usize {
        self.tagged_len + self.tag_len
    }
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// The bytes not yet returned as frames are `buf[start..end]`. Taking a frame only moves
/// `start`; the remainder is moved to the front only when the space after `end` runs out, so a
/// stream of large frames is not copied around inside the buffer once per frame.
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Buffer size kept when it empties; larger buffers are freed (see `reset_if_drained`).
    retain: usize,
    pending: Option<PendingHeader>,
    mac: Option<FrameMac>,
    max_body: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(MAX_BODY_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing bodies over `max_body` bytes (at most [`MAX_BODY_LEN`]).
    pub fn new(max_body: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            retain: 2 * MAX_CHUNK,
            pending: None,
            mac: None,
            max_body: max_body.min(MAX_BODY_LEN),
        }
    }

    /// From now on every frame must carry a valid tag from `mac`.
    pub fn start_verifying(&mut self, mac: FrameMac) {
        self.mac = Some(mac);
    }

    /// Adds bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.reset_if_drained();
        self.make_room(bytes.len(), bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `reader` (up to `max` bytes) straight into the buffer, sparing the copy
    /// from a separate read buffer. Returns what `read` returned: `Ok(0)` is end of stream.
    ///
    /// # Errors
    /// Whatever `read` fails with (including `WouldBlock` and `Interrupted`).
    pub fn read_from(&mut self, reader: &mut impl Read, max: usize) -> io::Result<usize> {
        // Room for a few reads at once, so the remainder is rarely moved to the front. Such a
        // decoder serves a client's one connection, so it keeps that buffer when it empties.
        self.retain = self.retain.max(6 * max);
        self.reset_if_drained();
        self.make_room(max, 4 * max);
        let n = reader.read(&mut self.buf[self.end..self.end + max])?;
        self.end += n;
        Ok(n)
    }

    /// Ensures `buf[end..]` has at least `wanted` bytes, first by moving the unread bytes to
    /// the front, then by growing the buffer to at least `grow_to` bytes of free space.
    fn make_room(&mut self, wanted: usize, grow_to: usize) {
        if self.buf.len() - self.end >= wanted {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < wanted {
            // Zeroed once, when the buffer grows; reads then land in initialised memory.
            self.buf.resize(self.end + grow_to.max(wanted), 0);
        }
    }

    /// Frees the buffer if it is larger than `keep` bytes and holds nothing unread. For a
    /// receiver going idle: a buffer that grew for a stream of large frames (stdin, 64 KiB
    /// each) is otherwise kept for the connection's life, 128 KiB or more per idle connection.
    pub fn release_idle_buffer(&mut self, keep: usize) {
        if self.start == self.end && self.buf.len() > keep {
            (self.buf, self.start, self.end) = (Vec::new(), 0, 0);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The whole length on the wire (prefix, header, body and, after the handshake, tag) of
    /// the next frame, once its header has been parsed (by [`Self::frame_ready`] or an attempt
    /// to take a frame); `None` before. For showing how much of a frame has arrived.
    pub fn pending_frame_len(&self) -> Option<usize> {
        self.pending
            .as_ref()
            .map(|pending| self.extent_of(pending).wire_len())
    }

    /// Where the parts of the frame with this header lie, counted from its first byte.
    fn extent_of(&self, pending: &PendingHeader) -> FrameExtent {
        FrameExtent {
            header_len: pending.header_len,
            tagged_len: LEN_PREFIX + pending.header_len + pending.body_len,
            tag_len: if self.mac.is_some() { TAG_LEN } else { 0 },
        }
    }

    /// The message of a frame whose header has arrived but whose body has not yet, if any.
    /// Lets a receiver refuse a frame it would never accept without buffering its body first.
    pub fn pending_message(&self) -> Option<&Message> {
        self.pending.as_ref().map(|pending| &pending.message)
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// Any [`FrameError`]; the stream cannot be resynchronised after one, so the connection
    /// should be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let frame = self.next_frame_ref()?.map(|frame| Frame {
            message: frame.message,
            body: frame.body.to_vec(),
        });
        // The body has been copied out, so the buffer can start over (and shrink) right away.
        self.reset_if_drained();
        Ok(frame)
    }

    /// Like [`Self::next_frame`], with the body left in the decoder's buffer.
    ///
    /// # Errors
    /// As for [`Self::next_frame`].
    pub fn next_frame_ref(&mut self) -> Result<Option<FrameRef<'_>>, FrameError> {
        let taken = self
            .take_frame()
            .map_err(|error| self.as_seen_by_receiver(error))?;
        Ok(taken.map(|(message, body)| FrameRef {
            message,
            body: &self.buf[body],
        }))
    }

    /// Whether a whole frame has arrived, so that the next [`Self::next_frame_ref`] returns it
    /// (or fails on it). Consumes no bytes (it parses and keeps the header once it is in).
    ///
    /// # Errors
    /// As for [`Self::next_frame`], for a header that has arrived and is invalid.
    pub fn frame_ready(&mut self) -> Result<bool, FrameError> {
        match self.complete_frame() {
            Ok(complete) => Ok(complete.is_some()),
            Err(error) => Err(self.as_seen_by_receiver(error)),
        }
    }

    fn as_seen_by_receiver(&self, error: FrameError) -> FrameError {
        match error {
            // An authenticated peer only ever sends well-formed frames, so after the handshake
            // a malformed one means the bytes were changed on the way: say so. A length over a
            // limit keeps its own error, tampered or not: the limit is what the receiver knows.
            FrameError::HeaderTooLarge { .. } | FrameError::BodyTooLarge { .. } => error,
            _ if self.mac.is_some() => FrameError::Integrity,
            other => other,
        }
    }

    /// The next frame's message and where its body lies in `buf`. The bytes stay where they
    /// are until the next call, so that the body can be lent out.
    ///
    /// The tag comes last on the wire because the receiver needs the header's `len` to know
    /// where the tag is. So the header is parsed, and its lengths checked against the limits,
    /// before the tag is verified; the frame is acted on (returned) only after.
    fn take_frame(&mut self) -> Result<Option<(Message, Range<usize>)>, FrameError> {
        let Some(extent) = self.complete_frame()? else {
            return Ok(None);
        };
        let FrameExtent {
            header_len,
            tagged_len,
            tag_len,
        } = extent;
        let frame = &self.buf[self.start..self.end];
        if let Some(mac) = &mut self.mac
            && !mac.verify(
                &frame[..tagged_len],
                &frame[tagged_len..tagged_len + tag_len],
            )
        {
            return Err(FrameError::Integrity);
        }
        let body = self.start + LEN_PREFIX + header_len..self.start + tagged_len;
        self.start += extent.wire_len();
        let message = self
            .pending
            .take()
            .expect("complete_frame parsed it")
            .message;
        Ok(Some((message, body)))
    }

    /// Where the next frame's parts lie, if it has arrived whole. Parses the header once it is
    /// in.
    fn complete_frame(&mut self) -> Result<Option<FrameExtent>, FrameError> {
        self.reset_if_drained();
        if self.pending.is_none() {
            match self.parse_header()? {
                Some(header) => self.pending = Some(header),
                None => return Ok(None),
            }
        }
        let extent = self.extent_of(self.pending.as_ref().expect("set above"));
        if self.end - self.start < extent.wire_len() {
            return Ok(None);
        }
        Ok(Some(extent))
    }

    /// Once every byte received has been taken as frames (and no body is lent out any more),
    /// starts the buffer over from the front.
    fn reset_if_drained(&mut self) {
        if self.start == self.end && self.start > 0 {
            (self.start, self.end) = (0, 0);
            if self.buf.len() > self.retain {
                // Give back the memory a large frame needed; idle connections should cost little.
                self.buf = Vec::new();
            }
        }
    }

    fn parse_header(&self) -> Result<Option<PendingHeader>, FrameError> {
        let unread = self.unread();
        let Some(prefix) = unread.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let header_len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if header_len == 0 || header_len > MAX_HEADER_LEN {
            return Err(FrameError::HeaderTooLarge { len: header_len });
        }
        let Some(header) = unread.get(LEN_PREFIX..LEN_PREFIX + header_len) else {
            check_partial_header(&unread[LEN_PREFIX..])?;
            return Ok(None);
        };
        let (message, body_len) = parse_header_json(header, self.max_body)?;
        Ok(Some(PendingHeader {
            message,
            header_len,
            body_len,
        }))
    }
}

/// Fails early if the part of a header received so far is already wrong: not JSON, or a
/// complete JSON object followed by more bytes inside the announced length. Without this, a
/// length prefix that claims more than was sent (by accident or tampering) would leave the
/// receiver waiting for bytes that never come.
fn check_partial_header(partial: &[u8]) -> Result<(), FrameError> {
    let mut values =
        serde_json::Deserializer::from_slice(partial).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        None => Ok(()),
        Some(Err(e)) if e.is_eof() => Ok(()),
        // Skipping a value, serde_json calls a number cut short (`-`, `1.`, `1e`) invalid
        // rather than incomplete, which would refuse `"code":-1` split after the minus sign.
        // Parsing into a `Value` tells the two apart; only this rare path pays for it.
        Some(Err(_))
            if serde_json::from_slice::<serde_json::Value>(partial).is_err_and(|e| e.is_eof()) =>
        {
            Ok(())
        }
        Some(Err(e)) => Err(FrameError::BadHeader(format!("not JSON: {e}"))),
        Some(Ok(_)) => Err(FrameError::BadHeader(
            "the header is shorter than its length prefix says".into(),
        )),
    }
}

/// Parses a header: checks `type` is known and `len` is within `max_body` before building the
/// typed message, so each failure gets its own error code.
fn parse_header_json(header: &[u8], max_body: usize) -> Result<(Message, usize), FrameError> {
    let mut values = serde_json::Deserializer::from_slice(header).into_iter::<serde_json::Value>();
    let value = match values.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) => return Err(FrameError::BadHeader(format!("not JSON: {e}"))),
        None => return Err(FrameError::BadHeader("empty header".into())),
    };
    // Exactly one JSON value fills the header, as `check_partial_header` demands of a header
    // still arriving: the verdict must not depend on how TCP split the bytes.
    if values.byte_offset() != header.len() {
        return Err(FrameError::BadHeader("bytes after the JSON object".into()));
    }
    let serde_json::Value::Object(mut fields) = value else {
        return Err(FrameError::BadHeader("not a JSON object".into()));
    };
    let type_name = match fields.get("type") {
        Some(serde_json::Value::String(name)) => name.clone(),
        _ => return Err(FrameError::BadHeader("no \"type\" string".into())),
    };
    if !Message::TYPE_NAMES.contains(&type_name.as_str()) {
        // Quoted back to the peer and into the log: not all 16 KiB of it.
        return Err(FrameError::UnknownType(clip(type_name, QUOTED_VALUE_LEN)));
    }
    let body_len = match fields.remove("len") {
        None => 0,
        Some(len) => len.as_u64().ok_or_else(|| {
            FrameError::BadHeader("\"len\" is not an unsigned 64-bit integer".into())
        })?,
    };
    if body_len > max_body as u64 {
        return Err(FrameError::BodyTooLarge { len: body_len });
    }
    let message: Message = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| FrameError::BadHeader(clip(format!("{type_name}: {e}"), QUOTED_VALUE_LEN)))?;
    if body_len > 0 && !message.carries_body() {
        return Err(FrameError::BadHeader(format!(
            "{type_name} frames carry no body"
        )));
    }
    Ok((message, body_len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{Bytes32, ExitStatus};

    fn encode(message: &Message, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameEncoder::new().encode(message, body, &mut out);
        out
    }

    fn raw_frame(header: &str) -> Vec<u8> {
        let mut out = (header.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        let mut decoder = FrameDecoder::default();
        decoder.feed(bytes);
        decoder.next_frame()
    }

    #[test]
    fn an_idle_buffer_is_released_only_when_nothing_is_left_unread() {
        let big = encode(&Message::Stdin { id: 1 }, &[7; 60 * 1024]);
        let mut decoder = FrameDecoder::default();
        decoder.feed(&big);
        decoder.feed(&big[..100]); // the next frame, cut short
        assert_eq!(decoder.next_frame().unwrap().unwrap().body.len(), 60 * 1024);
        decoder.release_idle_buffer(4096);
        assert!(
            decoder.buf.len() > 4096,
            "bytes of the next frame were unread"
        );
        decoder.feed(&big[100..]);
        assert_eq!(decoder.next_frame().unwrap().unwrap().body.len(), 60 * 1024);
        decoder.release_idle_buffer(4096);
        assert!(decoder.buf.is_empty());
        // And it goes on decoding from nothing.
        decoder.feed(&big);
        assert_eq!(decoder.next_frame().unwrap().unwrap().body.len(), 60 * 1024);
    }

    #[test]
    fn an_error_that_quotes_a_huge_header_still_fits_in_a_frame() {
        // Errors quote what the peer sent; the answer must be a frame the peer can decode.
        let long = "x".repeat(MAX_HEADER_LEN - 100);
        for header in [
            format!(r#"{{"type":"{long}"}}"#),
            format!(r#"{{"type":"exit","id":1,"reason":"{long}","duration_ms":1}}"#),
            format!(r#"{{"type":"signal","id":1,"signal":"{long}"}}"#),
        ] {
            let error = decode_all(&raw_frame(&header)).unwrap_err();
            assert!(error.to_string().len() < 300, "{error}");
            let answer = encode(&Message::fatal(error.code(), error.to_string()), b"");
            let Ok(Some(frame)) = decode_all(&answer) else {
                panic!("the answer to {error} does not decode")
            };
            assert!(matches!(frame.message, Message::Error { .. }));
        }
    }

    #[test]
    fn encodes_the_documented_bytes() {
        let bytes = encode(&Message::Stdout { id: 3 }, b"hi\n");
        let header = br#"{"type":"stdout","id":3,"len":3}"#;
        let mut expected = (header.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(header);
        expected.extend_from_slice(b"hi\n");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn decodes_a_frame_fed_one_byte_at_a_time() {
        let message = Message::Exit {
            id: 9,
            status: ExitStatus::Exited { code: 44 },
            duration_ms: 12,
        };
        let mut bytes = encode(&message, b"");
        bytes.extend(encode(&Message::Stderr { id: 9 }, b"oops"));
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        for byte in bytes {
            decoder.feed(&[byte]);
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].message, message);
        assert_eq!(
            frames[1],
            Frame {
                message: Message::Stderr { id: 9 },
                body: b"oops".to_vec()
            }
        );
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn large_frames_read_from_a_stream_keep_one_bounded_buffer() {
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; MAX_CHUNK]).collect();
        let mut stream = Vec::new();
        for body in &bodies {
            stream.extend(encode(&Message::Stdout { id: 1 }, body));
        }
        // A socket that hands out 100,000 bytes per read, never aligned with the frames.
        let mut rest = &stream[..];
        let mut decoder = FrameDecoder::default();
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let mut piece = &rest[..rest.len().min(100_000)];
            let n = decoder.read_from(&mut piece, 4 * MAX_CHUNK).unwrap();
            rest = &rest[n..];
            while let Some(frame) = decoder.next_frame().unwrap() {
                decoded.push(frame.body);
            }
            // Room for four reads beyond what is buffered, and never more than one frame of
            // that left behind: the buffer does not grow with the length of the stream.
            assert!(
                decoder.buf.len() <= 5 * 4 * MAX_CHUNK,
                "{}",
                decoder.buf.len()
            );
        }
        assert_eq!(decoded, bodies);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_fed_decoder_gives_back_a_large_buffer_once_it_empties() {
        let mut decoder = FrameDecoder::default();
        decoder.feed(&encode(&Message::Stdin { id: 1 }, &vec![7; 3 * MAX_CHUNK]));
        assert!(decoder.buf.len() > 2 * MAX_CHUNK);
        assert_eq!(
            decoder.next_frame().unwrap().unwrap().body.len(),
            3 * MAX_CHUNK
        );
        assert_eq!(
            decoder.buf.len(),
            0,
            "an idle connection keeps no large buffer"
        );
    }

    #[test]
    fn a_lent_body_stays_valid_until_the_decoder_is_used_again() {
        let mut decoder = FrameDecoder::default();
        let mut bytes = encode(&Message::Stdout { id: 1 }, &vec![7; 3 * MAX_CHUNK]);
        bytes.extend(encode(&Message::Stderr { id: 1 }, b"second"));
        decoder.feed(&bytes);
        let first = decoder.next_frame_ref().unwrap().unwrap();
        assert_eq!(first.message, Message::Stdout { id: 1 });
        assert_eq!(first.body, &vec![7; 3 * MAX_CHUNK][..]);
        let second = decoder.next_frame_ref().unwrap().unwrap();
        assert_eq!(second.message, Message::Stderr { id: 1 });
        assert_eq!(second.body, b"second");
        assert_eq!(decoder.next_frame_ref().unwrap(), None);
        assert_eq!(
            decoder.buf.len(),
            0,
            "drained: the large buffer is given back"
        );
    }

    #[test]
    fn frame_ready_says_when_a_whole_frame_is_in_and_takes_nothing() {
        let mut decoder = FrameDecoder::default();
        let bytes = encode(&Message::Stdout { id: 3 }, b"hello");
        for byte in &bytes {
            assert!(!decoder.frame_ready().unwrap());
            decoder.feed(std::slice::from_ref(byte));
        }
        assert!(decoder.frame_ready().unwrap());
        assert!(decoder.frame_ready().unwrap(), "asking again takes nothing");
        let frame = decoder.next_frame_ref().unwrap().unwrap();
        assert_eq!(
            (frame.message, frame.body),
            (Message::Stdout { id: 3 }, &b"hello"[..])
        );
        assert!(!decoder.frame_ready().unwrap());
    }

    #[test]
    fn the_pending_frame_length_is_known_once_its_header_is_in() {
        let key = [5u8; TAG_LEN];
        let mut encoder = FrameEncoder::new();
        encoder.start_tagging(FrameMac::new(&key));
        let mut bytes = Vec::new();
        encoder.encode(&Message::Stdout { id: 3 }, b"hello", &mut bytes);
        let header_end = LEN_PREFIX + br#"{"type":"stdout","id":3,"len":5}"#.len();
        let mut decoder = FrameDecoder::default();
        decoder.start_verifying(FrameMac::new(&key));
        for (fed, byte) in bytes.iter().enumerate() {
            decoder.feed(std::slice::from_ref(byte));
            let ready = decoder.frame_ready().unwrap();
            let expected = (fed + 1 >= header_end).then_some(bytes.len());
            assert_eq!(
                decoder.pending_frame_len(),
                expected,
                "after {} bytes",
                fed + 1
            );
            assert_eq!(ready, fed + 1 == bytes.len());
        }
        assert_eq!(decoder.next_frame_ref().unwrap().unwrap().body, b"hello");
        assert_eq!(decoder.pending_frame_len(), None, "taken");
    }

    #[test]
    fn rejects_huge_lengths_before_allocating() {
        assert_eq!(
            decode_all(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::HeaderTooLarge {
                len: u32::MAX as usize
            })
        );
        assert_eq!(
            decode_all(&[0, 0, 0, 0]),
            Err(FrameError::HeaderTooLarge { len: 0 })
        );
        let huge_body = raw_frame(r#"{"type":"stdin","id":1,"len":4294967295}"#);
        assert_eq!(
            decode_all(&huge_body),
            Err(FrameError::BodyTooLarge { len: 4294967295 })
        );
    }

    #[test]
    fn rejects_malformed_headers_with_specific_errors() {
        assert!(matches!(
            decode_all(&raw_frame("not json")),
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            decode_all(&raw_frame("[1,2]")),
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            decode_all(&raw_frame(r#"{"id":1}"#)),
            Err(FrameError::BadHeader(_))
        ));
        assert_eq!(
            decode_all(&raw_frame(r#"{"type":"teleport"}"#)),
            Err(FrameError::UnknownType("teleport".into()))
        );
        assert!(matches!(
            decode_all(&raw_frame(r#"{"type":"exec","id":"one","stdin":false}"#)),
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            decode_all(&raw_frame(r#"{"type":"stdin_close","id":1,"len":-1}"#)),
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            decode_all(&raw_frame(r#"{"type":"welcome","proof":"00","len":2}"#)),
            Err(FrameError::BadHeader(_))
        ));
    }

    #[test]
    fn trailing_bytes_in_a_header_are_refused_however_it_arrives() {
        let bytes = raw_frame(r#"{"type":"stdin_close","id":1} "#);
        assert!(matches!(decode_all(&bytes), Err(FrameError::BadHeader(_))));
        let mut decoder = FrameDecoder::default();
        decoder.feed(&bytes[..bytes.len() - 1]);
        assert!(matches!(
            decoder.next_frame(),
            Err(FrameError::BadHeader(_))
        ));
    }

    #[test]
    fn a_prefix_longer_than_the_header_is_caught_without_waiting() {
        let mut bytes = encode(&Message::StdinClose { id: 1 }, b"");
        bytes.extend(encode(&Message::StdinClose { id: 2 }, b""));
        bytes[3] += 8;
        assert!(matches!(decode_all(&bytes), Err(FrameError::BadHeader(_))));
    }

    #[test]
    fn waits_for_incomplete_frames() {
        let bytes = encode(&Message::Stdin { id: 1 }, &[7; 100]);
        for cut in 0..bytes.len() {
            assert_eq!(decode_all(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn a_body_appended_in_place_makes_the_same_frames_as_encode() {
        let key = [9u8; 32];
        for tagged in [false, true] {
            let (mut appending, mut copying) = (FrameEncoder::new(), FrameEncoder::new());
            if tagged {
                appending.start_tagging(FrameMac::new(&key));
                copying.start_tagging(FrameMac::new(&key));
            }
            let (mut got, mut want) = (b"earlier frames".to_vec(), b"earlier frames".to_vec());
            // Lengths with fewer digits than the maximum move the body; the others do not.
            for len in [1, 9, 10, 99, 100, 9_999, 10_000, 65_535, MAX_CHUNK] {
                let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                let message = Message::Stdout { id: 42 };
                let appended = appending
                    .encode_appending_body(&message, MAX_CHUNK, &mut got, |out, max| {
                        assert_eq!(max, MAX_CHUNK);
                        out.extend_from_slice(&body);
                        Ok(body.len())
                    })
                    .unwrap();
                assert_eq!(appended, len);
                copying.encode(&message, &body, &mut want);
                assert_eq!(got, want, "tagged {tagged}, body of {len} bytes");
            }
            // Nothing read, a failed read, or a read past the maximum: no frame at all.
            let before = got.clone();
            let nothing =
                appending
                    .encode_appending_body(&Message::Stdout { id: 1 }, 8, &mut got, |_, _| Ok(0));
            assert_eq!(nothing.unwrap(), 0);
            let failed = appending.encode_appending_body(
                &Message::Stdout { id: 1 },
                8,
                &mut got,
                |out, _| {
                    out.push(1);
                    Err(io::ErrorKind::WouldBlock.into())
                },
            );
            assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::WouldBlock);
            let too_much = appending.encode_appending_body(
                &Message::Stdout { id: 1 },
                8,
                &mut got,
                |out, _| {
                    out.extend_from_slice(&[0; 9]);
                    Ok(9)
                },
            );
            assert_eq!(too_much.unwrap_err().kind(), io::ErrorKind::InvalidData);
            assert_eq!(got, before);
            // And the tag sequence was not advanced by them: the next frame still verifies.
            let mut decoder = FrameDecoder::default();
            if tagged {
                decoder.start_verifying(FrameMac::new(&key));
            }
            appending
                .encode_appending_body(&Message::Stderr { id: 2 }, 4, &mut got, |out, _| {
                    out.extend_from_slice(b"last");
                    Ok(4)
                })
                .unwrap();
            decoder.feed(&got[b"earlier frames".len()..]);
            let mut bodies = Vec::new();
            while let Some(frame) = decoder.next_frame().unwrap() {
                bodies.push(frame.body.len());
            }
            assert_eq!(bodies.last(), Some(&4));
            assert_eq!(bodies.len(), 10);
        }
    }

    #[test]
    fn tags_are_checked_and_tampering_detected() {
        let key = [5u8; 32];
        let mut encoder = FrameEncoder::new();
        encoder.start_tagging(FrameMac::new(&key));
        let mut bytes = Vec::new();
        let hello = Message::Welcome {
            proof: Bytes32([1; 32]),
        };
        encoder.encode(&hello, b"", &mut bytes);
        encoder.encode(&Message::Stdout { id: 1 }, b"data", &mut bytes);

        let mut decoder = FrameDecoder::default();
        decoder.start_verifying(FrameMac::new(&key));
        decoder.feed(&bytes);
        assert_eq!(decoder.next_frame().unwrap().unwrap().message, hello);
        assert_eq!(decoder.next_frame().unwrap().unwrap().body, b"data");

        // No flipped bit anywhere yields a frame other than the one sent. Most are caught at
        // once; a `len` made larger leaves the decoder waiting for bytes that never come (the
        // connection then ends by timeout), which still accepts nothing.
        for offset in 0..bytes.len() {
            for bit in [0x01, 0x10, 0x80] {
                let mut tampered = bytes.clone();
                tampered[offset] ^= bit;
                let mut decoder = FrameDecoder::default();
                decoder.start_verifying(FrameMac::new(&key));
                decoder.feed(&tampered);
                let mut accepted = Vec::new();
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => accepted.push(frame),
                        Ok(None) => break,
                        Err(error) => {
                            let size = matches!(
                                error,
                                FrameError::HeaderTooLarge { .. } | FrameError::BodyTooLarge { .. }
                            );
                            assert!(
                                size || error == FrameError::Integrity,
                                "flip at {offset}: {error:?}"
                            );
                            break;
                        }
                    }
                }
                let sent = [hello.clone(), Message::Stdout { id: 1 }];
                for (frame, original) in accepted.iter().zip(&sent) {
                    assert_eq!(&frame.message, original, "bit flip at {offset} accepted");
                }
                assert!(accepted.len() < 2, "bit flip at {offset} went unnoticed");
            }
        }
    }

    #[test]
    fn a_header_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() {
        let frame_with_header_of = |len: usize| {
            let skeleton = r#"{"type":"error","code":"busy","message":"","fatal":false}"#;
            let padding = "x".repeat(len - skeleton.len());
            raw_frame(&format!(
                r#"{{"type":"error","code":"busy","message":"{padding}","fatal":false}}"#
            ))
        };
        let at_limit = frame_with_header_of(MAX_HEADER_LEN);
        assert_eq!(at_limit.len(), LEN_PREFIX + MAX_HEADER_LEN);
        let frame = decode_all(&at_limit)
            .expect("a header of exactly MAX_HEADER_LEN bytes is allowed")
            .expect("and complete");
        assert!(matches!(frame.message, Message::Error { .. }));
        assert_eq!(
            decode_all(&frame_with_header_of(MAX_HEADER_LEN + 1)),
            Err(FrameError::HeaderTooLarge {
                len: MAX_HEADER_LEN + 1
            })
        );
    }

    #[test]
    fn a_partial_header_that_is_not_json_is_refused_without_waiting() {
        // The prefix promises 100 bytes; the 8 that came are already not JSON, so waiting for
        // the other 92 (which may never come) cannot help.
        let mut garbage = 100u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"not json");
        assert!(matches!(
            decode_all(&garbage),
            Err(FrameError::BadHeader(_))
        ));
        // Whereas the start of a JSON object is waited for.
        let mut cut = 100u32.to_be_bytes().to_vec();
        cut.extend_from_slice(br#"{"type":"std"#);
        assert_eq!(decode_all(&cut), Ok(None));
    }
}
