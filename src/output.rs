//! Turning a command's output bytes into what goes on the wire, one stream at a time.
//!
//! Where command output is UTF-8 already (Linux, macOS) the bytes pass through untouched, so
//! binary output arrives byte for byte. Where it is in a legacy code page (GBK from `cmd` on a
//! Chinese Windows), an `encoding_rs` decoder turns it into UTF-8. The decoder is kept per
//! stream for the life of the command, so a character whose bytes are split across two pipe
//! reads is held back and decoded whole, never turned into two U+FFFD.

use encoding_rs::{Decoder, Encoding, UTF_8};

/// What the server does with command output before framing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputEncoding {
    /// Send the bytes as they are (for UTF-8 systems; binary-safe).
    Passthrough,
    /// Decode from this encoding to UTF-8; invalid sequences become U+FFFD.
    Decode(&'static Encoding),
}

impl OutputEncoding {
    /// Parses the `--encoding` setting: `auto`, `utf-8` (pass through) or any WHATWG label
    /// `encoding_rs` knows (`gbk`, `gb18030`, `big5`, `shift_jis`, `windows-1252`, ...).
    ///
    /// # Errors
    /// A message naming the label when it is unknown.
    pub fn from_label(label: &str) -> Result<OutputEncoding, String> {
        if label.eq_ignore_ascii_case("auto") {
            return Ok(OutputEncoding::auto());
        }
        let label = label.trim();
        match Encoding::for_label(label.as_bytes()).or_else(|| encoding_for_code_page_label(label))
        {
            Some(encoding) if encoding == UTF_8 => Ok(OutputEncoding::Passthrough),
            Some(encoding) => Ok(OutputEncoding::Decode(encoding)),
            None => Err(format!(
                "unknown encoding {label:?}: use auto, utf-8, or a label such as gbk, gb18030, big5, shift_jis, windows-1252"
            )),
        }
    }

    /// The encoding of command output on this system: UTF-8 outside Windows.
    #[cfg(not(windows))]
    pub fn auto() -> OutputEncoding {
        OutputEncoding::Passthrough
    }

    /// The encoding of command output on this system: the console output code page on Windows,
    /// which is what `cmd` writes when its output is a pipe.
    #[cfg(windows)]
    pub fn auto() -> OutputEncoding {
        crate::platform::console_output_encoding()
    }

    /// A human-readable name, for the server's start-up log.
    pub fn name(&self) -> &'static str {
        match self {
            OutputEncoding::Passthrough => "utf-8 (pass-through)",
            OutputEncoding::Decode(encoding) => encoding.name(),
        }
    }
}

/// Windows code page names: `936`, `cp936`, `windows-936`, as `chcp` and Windows tools say them.
fn encoding_for_code_page_label(label: &str) -> Option<&'static Encoding> {
    let lower = label.to_ascii_lowercase();
    let number = lower
        .strip_prefix("cp")
        .or_else(|| lower.strip_prefix("windows-"))
        .unwrap_or(&lower);
    number.parse::<u16>().ok().and_then(codepage::to_encoding)
}

/// Decoding state for one output stream (stdout or stderr) of one command.
pub struct StreamDecoder {
    decoder: Option<Decoder>,
}

impl StreamDecoder {
    pub fn new(encoding: OutputEncoding) -> StreamDecoder {
        let decoder = match encoding {
            OutputEncoding::Passthrough => None,
            // Without BOM sniffing: a UTF-16 BOM in GBK output must not switch encodings.
            OutputEncoding::Decode(encoding) => Some(encoding.new_decoder_without_bom_handling()),
        };
        StreamDecoder { decoder }
    }

    /// Appends the wire form of `input` to `out`. `last` is true once, at end of stream, so any
    /// incomplete character held back is flushed (as U+FFFD).
    pub fn decode(&mut self, input: &[u8], last: bool, out: &mut Vec<u8>) {
        let Some(decoder) = &mut self.decoder else {
            out.extend_from_slice(input);
            return;
        };
        let needed = decoder
            .max_utf8_buffer_length(input.len())
            .expect("a chunk's worst-case UTF-8 length fits in usize");
        let start = out.len();
        out.resize(start + needed, 0);
        let (_, read, written, _) = decoder.decode_to_utf8(input, &mut out[start..], last);
        debug_assert_eq!(read, input.len(), "the buffer was sized for the worst case");
        out.truncate(start + written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(encoding: OutputEncoding, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut decoder = StreamDecoder::new(encoding);
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            decoder.decode(piece, false, &mut out);
        }
        decoder.decode(&[], true, &mut out);
        out
    }

    #[test]
    fn passthrough_keeps_arbitrary_bytes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(
            decode_in_chunks(OutputEncoding::Passthrough, &bytes, 7),
            bytes
        );
    }

    #[test]
    fn gbk_is_decoded_even_when_split() {
        let gbk = OutputEncoding::from_label("gbk").unwrap();
        let nihao = b"\xc4\xe3\xba\xc3";
        for chunk in 1..=4 {
            assert_eq!(
                decode_in_chunks(gbk, nihao, chunk),
                "你好".as_bytes(),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let gbk = OutputEncoding::from_label("gbk").unwrap();
        assert_eq!(
            String::from_utf8(decode_in_chunks(gbk, b"a\xc4", 1)).unwrap(),
            "a\u{fffd}"
        );
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(
            OutputEncoding::from_label("UTF-8").unwrap(),
            OutputEncoding::Passthrough
        );
        let gbk = OutputEncoding::Decode(encoding_rs::GBK);
        assert_eq!(OutputEncoding::from_label("cp936").unwrap(), gbk);
        assert_eq!(OutputEncoding::from_label("936").unwrap(), gbk);
        assert_eq!(
            OutputEncoding::from_label("65001").unwrap(),
            OutputEncoding::Passthrough
        );
        assert!(
            OutputEncoding::from_label("klingon")
                .unwrap_err()
                .contains("klingon")
        );
    }
}
