//! Showing bytes to a human, and where the sender's message boundaries fell in what was read.
//!
//! The receiver of an unframed stream cannot see message boundaries; that is the problem. The
//! demo can, because it also hears from the server what each write contained
//! ([`super::server::ServerWrite`]). A [`StreamMap`] lays those writes end to end, as TCP does,
//! and maps each read (a range of stream offsets) back onto the writes it came from.

use std::ops::Range;

/// `bytes` as a quoted, escaped string: printable ASCII as is, `\n`, `\r`, `\t`, `\\`, `\"`, `\'`,
/// and `\xNN` for everything else.
pub fn escape(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// Like [`escape`], but long inputs show only their first and last `keep` bytes, with the
/// number of bytes left out between them.
pub fn preview(bytes: &[u8], keep: usize) -> String {
    if bytes.len() <= 2 * keep + 16 {
        return escape(bytes);
    }
    let (head, tail) = (&bytes[..keep], &bytes[bytes.len() - keep..]);
    format!(
        "{} ...{} bytes... {}",
        escape(head),
        bytes.len() - 2 * keep,
        escape(tail)
    )
}

/// The messages one side sent, laid end to end as the byte stream that TCP delivers.
#[derive(Debug, Default)]
pub struct StreamMap {
    messages: Vec<SentMessage>,
    /// Stream offset just past the last message.
    end: usize,
}

/// One message in a [`StreamMap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// What the message was, for people (`stdout of "seq 1 400"`).
    pub label: String,
    /// Where it sits in the stream.
    pub span: Range<usize>,
}

/// The part of one read that came from one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Index of the message in the [`StreamMap`] (0 is the first message sent).
    pub message: usize,
    /// The bytes taken, as offsets within that message.
    pub within: Range<usize>,
    /// The message's full length.
    pub message_len: usize,
}

impl Piece {
    /// Whether this piece is the whole message.
    pub fn is_whole(&self) -> bool {
        self.within == (0..self.message_len)
    }
}

impl StreamMap {
    /// Appends a message of `len` bytes; returns its index.
    pub fn push(&mut self, label: impl Into<String>, len: usize) -> usize {
        let span = self.end..self.end + len;
        self.end = span.end;
        self.messages.push(SentMessage {
            label: label.into(),
            span,
        });
        self.messages.len() - 1
    }

    /// The message at `index`.
    pub fn message(&self, index: usize) -> Option<&SentMessage> {
        self.messages.get(index)
    }

    /// How many bytes were sent in all.
    pub fn len(&self) -> usize {
        self.end
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// The pieces of messages that stream offsets `read` cover, in order. Offsets past the
    /// known messages (bytes whose write was not reported) are left out.
    pub fn pieces(&self, read: Range<usize>) -> Vec<Piece> {
        self.messages
            .iter()
            .enumerate()
            .filter_map(|(index, message)| {
                let start = read.start.max(message.span.start);
                let end = read.end.min(message.span.end);
                (start < end).then(|| Piece {
                    message: index,
                    within: start - message.span.start..end - message.span.start,
                    message_len: message.span.len(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_line_ends_and_binary() {
        assert_eq!(escape(b"err\nout\n"), r#""err\nout\n""#);
        assert_eq!(escape(b"a\r\n\x00\xff\"\\"), r#""a\r\n\x00\xff\"\\""#);
    }

    #[test]
    fn preview_shortens_the_middle_only_of_long_inputs() {
        assert_eq!(preview(b"hello\n", 4), r#""hello\n""#);
        let long: Vec<u8> = (0..100).map(|i| b'a' + i % 26).collect();
        assert_eq!(preview(&long, 4), r#""abcd" ...92 bytes... "stuv""#);
    }

    #[test]
    fn reads_map_onto_the_messages_they_came_from() {
        let mut map = StreamMap::default();
        map.push("stdout of seq", 1492);
        map.push("stdout of echo", 6);
        assert_eq!(map.len(), 1498);
        // Type 1: the first read takes part of a message...
        assert_eq!(
            map.pieces(0..1024),
            vec![Piece {
                message: 0,
                within: 0..1024,
                message_len: 1492
            }]
        );
        // ...and the next read starts with its remainder.
        let second = map.pieces(1024..1498);
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].within, 1024..1492);
        assert!(!second[0].is_whole());
        assert!(second[1].is_whole());
    }

    #[test]
    fn a_merged_read_covers_two_whole_messages() {
        let mut map = StreamMap::default();
        map.push("stderr", 4);
        map.push("stdout", 4);
        let pieces = map.pieces(0..8);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(Piece::is_whole));
        assert!(map.pieces(8..20).is_empty());
    }
}
