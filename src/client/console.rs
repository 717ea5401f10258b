//! Command output for a Windows console, which takes nothing but UTF-8.
//!
//! Output arrives as bytes: UTF-8 from a Unix server or a decoding Windows one, but raw bytes
//! where the server passes output through (`--encoding utf-8`, or a code page it cannot decode,
//! such as 437). Written to a file or a pipe they go out as they are. A console refuses a write
//! that is not UTF-8 (Rust's `io::stdout()` there fails with "Windows stdio in console mode
//! does not support writing non-UTF-8 byte sequences"), and the client would stop with the
//! rest of the output lost. So for a console each stream passes through a streaming UTF-8
//! decoder: what is not UTF-8 becomes U+FFFD, and a character split between two frames is held
//! back until its last byte arrives, not replaced.

use encoding_rs::{Decoder, UTF_8};

/// One output stream's bytes made fit for a console.
pub struct ConsoleText {
    decoder: Decoder,
}

impl Default for ConsoleText {
    fn default() -> Self {
        ConsoleText {
            decoder: UTF_8.new_decoder_without_bom_handling(),
        }
    }
}

impl ConsoleText {
    /// The UTF-8 text for `bytes`, the next piece of the stream; an incomplete character at
    /// its end is kept for the next call.
    pub fn repair(&mut self, bytes: &[u8]) -> String {
        self.decode(bytes, false)
    }

    /// The end of the stream (the command ended): an incomplete character held back becomes
    /// U+FFFD, and the next call starts afresh.
    pub fn finish(&mut self) -> String {
        self.decode(&[], true)
    }

    fn decode(&mut self, bytes: &[u8], last: bool) -> String {
        let mut text = String::with_capacity(bytes.len() + 4);
        // Worst case: every byte a U+FFFD (3 bytes), plus a held-back character.
        let needed = self
            .decoder
            .max_utf8_buffer_length(bytes.len())
            .unwrap_or(bytes.len() * 3 + 4);
        text.reserve(needed);
        let _ = self.decoder.decode_to_string(bytes, &mut text, last);
        if last {
            self.decoder = UTF_8.new_decoder_without_bom_handling();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_passes_and_a_character_split_between_frames_is_kept_whole() {
        let mut console = ConsoleText::default();
        let bytes = "héllo 你好".as_bytes();
        let cut = "héllo ".len() + 1; // inside 你
        let mut text = console.repair(&bytes[..cut]);
        text.push_str(&console.repair(&bytes[cut..]));
        assert_eq!(text, "héllo 你好");
    }

    #[test]
    fn a_character_cut_at_the_end_of_a_command_is_not_carried_into_the_next() {
        let mut console = ConsoleText::default();
        assert_eq!(
            console.repair("done 你".as_bytes().split_last().unwrap().1),
            "done "
        );
        assert_eq!(console.finish(), "\u{FFFD}");
        assert_eq!(console.repair(b"next\r\n"), "next\r\n");
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut console = ConsoleText::default();
        // "café" in code page 437 (é is 0x82), then more output.
        assert_eq!(console.repair(b"caf\x82\r\n"), "caf\u{FFFD}\r\n");
        assert_eq!(console.repair(b"after\r\n"), "after\r\n");
    }
}
