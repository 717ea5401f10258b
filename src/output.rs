//! Turning a command's output bytes into what goes on the wire, one stream at a time.
//!
//! Where command output is UTF-8 already (Linux, macOS) the bytes pass through untouched, so
//! binary output arrives byte for byte. Where it is in a legacy code page (GBK from `cmd` on a
//! Chinese Windows), an `encoding_rs` decoder turns it into UTF-8. Decoding state is kept per
//! stream for the life of the command, so a character whose bytes are split across two pipe
//! reads is held back and decoded whole, never turned into two U+FFFD.
//!
//! On a legacy code page system, one script often mixes both: `ipconfig` writes GBK, a
//! UTF-8-aware program (Python, Git, a Rust tool) writes UTF-8. `auto` there decides line by
//! line ([`is_utf8_line`]):
//!
//! - a line that is not valid UTF-8 is decoded from the code page;
//! - a valid UTF-8 line the code page cannot read is UTF-8;
//! - a line both can read is UTF-8 if it holds a character of three or more UTF-8 bytes (CJK,
//!   symbols: UTF-8 "你好" is also valid GBK, as the mojibake "浣犲ソ"), and code page text
//!   otherwise: GBK "蹋" is the bytes CC A3, which are also UTF-8 for a lone combining mark.
//!
//! So Chinese from either source comes out right; what can still be misread is text both ways
//! unusual on such a system, e.g. a UTF-8 line whose only non-ASCII is Latin accents (`é` is
//! C3 A9, GBK "茅"). An explicit `--encoding gbk` decodes everything as GBK, with no guessing.
//!
//! A line is not always held until its newline: its ASCII start is shown at once (it reads the
//! same either way), a line that is already not UTF-8 is decoded from the code page at once (a
//! progress message such as "处理中..." appears when written), and one longer than 4 KiB is
//! decided on what has come. The rest of a line decided early is decoded the same way.

use encoding_rs::{Decoder, Encoding, UTF_8};

/// What the server does with command output before framing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputEncoding {
    /// Send the bytes as they are (for UTF-8 systems; binary-safe).
    Passthrough,
    /// Decode everything from this encoding to UTF-8; invalid sequences become U+FFFD.
    Decode(&'static Encoding),
    /// Per line: valid UTF-8 passes through, anything else is decoded from this encoding.
    Mixed(&'static Encoding),
}

impl OutputEncoding {
    /// Parses the `--encoding` setting: `auto`; `auto=LABEL` (what `auto` does on a system whose
    /// code page is LABEL: per-line UTF-8 or LABEL); `utf-8` (pass through); or any WHATWG label
    /// `encoding_rs` knows (`gbk`, `gb18030`, `big5`, `shift_jis`, `windows-1252`, ...) or
    /// Windows code page (`936`, `cp936`).
    ///
    /// # Errors
    /// A message naming the label when it is unknown.
    pub fn from_label(label: &str) -> Result<OutputEncoding, String> {
        let label = label.trim();
        if label.eq_ignore_ascii_case("auto") {
            return Ok(OutputEncoding::auto());
        }
        if let Some(code_page) = label.strip_prefix("auto=") {
            return match encoding_for_label(code_page) {
                Ok(encoding) => Ok(OutputEncoding::mixed(encoding)),
                // A DOS code page with no decoder (437, 850): what `auto` does there.
                Err(unknown) => match code_page_number(code_page) {
                    Some(number) if DOS_CODE_PAGES_WITHOUT_DECODER.contains(&number) => {
                        warn_no_decoder(u32::from(number));
                        Ok(OutputEncoding::Passthrough)
                    }
                    _ => Err(unknown),
                },
            };
        }
        let encoding = encoding_for_label(label)?;
        Ok(if encoding == UTF_8 {
            OutputEncoding::Passthrough
        } else {
            OutputEncoding::Decode(encoding)
        })
    }

    /// What `auto` does on a system whose output code page is `encoding`.
    pub fn mixed(encoding: &'static Encoding) -> OutputEncoding {
        if encoding == UTF_8 {
            OutputEncoding::Passthrough
        } else {
            OutputEncoding::Mixed(encoding)
        }
    }

    /// The encoding of command output on this system: UTF-8 outside Windows.
    #[cfg(not(windows))]
    pub fn auto() -> OutputEncoding {
        OutputEncoding::Passthrough
    }

    /// The encoding of command output on this system: on Windows, the console output code page,
    /// which is what `cmd` writes when its output is a pipe.
    #[cfg(windows)]
    pub fn auto() -> OutputEncoding {
        OutputEncoding::mixed(crate::platform::console_output_encoding())
    }

    /// A human-readable name, for the server's start-up log.
    pub fn describe(&self) -> String {
        match self {
            OutputEncoding::Passthrough => "utf-8 (bytes passed through)".to_owned(),
            OutputEncoding::Decode(encoding) => format!("{} (decoded to utf-8)", encoding.name()),
            OutputEncoding::Mixed(encoding) => {
                format!("utf-8 or {} per line (decoded to utf-8)", encoding.name())
            }
        }
    }
}

/// The OEM (DOS) code pages of Windows consoles that `encoding_rs` cannot decode (866 it can):
/// `auto=N` accepts these as what `auto` meets on such a system. Any other unknown number is a
/// mistake (`auto=963` for 936) and refused.
const DOS_CODE_PAGES_WITHOUT_DECODER: [u16; 15] = [
    437, 720, 737, 775, 850, 852, 855, 857, 858, 860, 861, 862, 863, 865, 869,
];

/// Says at start-up that output in `code_page` is passed through undecoded, as `auto` does on a
/// system whose code page has no decoder (the DOS code pages 437 and 850 of Western Windows).
pub fn warn_no_decoder(code_page: u32) {
    log::warn!(
        "code page {code_page} has no decoder; command output is passed through as it is: \
         ASCII reads right, other characters do not (a command can switch its console to UTF-8 \
         first: `chcp 65001 >nul & ...`)"
    );
}

/// The number of a Windows code page name (`936`, `cp936`, `windows-936`).
fn code_page_number(label: &str) -> Option<u16> {
    let lower = label.trim().to_ascii_lowercase();
    let number = lower
        .strip_prefix("cp")
        .or_else(|| lower.strip_prefix("windows-"))
        .unwrap_or(&lower);
    number.parse().ok()
}

/// An encoding by WHATWG label or Windows code page name (`936`, `cp936`, `windows-936`).
fn encoding_for_label(label: &str) -> Result<&'static Encoding, String> {
    let label = label.trim();
    let code_page = || code_page_number(label).and_then(codepage::to_encoding);
    Encoding::for_label(label.as_bytes()).or_else(code_page).ok_or_else(|| {
        format!(
            "unknown encoding {label:?}: use auto, utf-8, a label such as gbk, gb18030, big5, shift_jis, windows-1252, or a code page such as 936"
        )
    })
}

/// A partial line of this many bytes or more is decided on without waiting for its newline.
const MAX_PENDING_LINE: usize = 4096;

/// Decoding state for one output stream (stdout or stderr) of one command.
pub struct StreamDecoder {
    mode: Mode,
}

enum Mode {
    Passthrough,
    Decode(Decoder),
    Mixed(MixedDecoder),
}

impl StreamDecoder {
    pub fn new(encoding: OutputEncoding) -> StreamDecoder {
        // Without BOM sniffing: bytes that look like a UTF-16 BOM must not switch encodings.
        let mode = match encoding {
            OutputEncoding::Passthrough => Mode::Passthrough,
            OutputEncoding::Decode(encoding) => {
                Mode::Decode(encoding.new_decoder_without_bom_handling())
            }
            OutputEncoding::Mixed(encoding) => Mode::Mixed(MixedDecoder {
                legacy: encoding.new_decoder_without_bom_handling(),
                utf8: UTF_8.new_decoder_without_bom_handling(),
                pending: Vec::new(),
                line: LineKind::Undecided,
            }),
        };
        StreamDecoder { mode }
    }

    /// Whether output passes through unchanged (so the caller may skip [`Self::decode`]).
    pub fn is_passthrough(&self) -> bool {
        matches!(self.mode, Mode::Passthrough)
    }

    /// Appends the wire form of `input` to `out`. `last` is true once, at end of stream, so any
    /// incomplete character held back is flushed (as U+FFFD).
    pub fn decode(&mut self, input: &[u8], last: bool, out: &mut Vec<u8>) {
        match &mut self.mode {
            Mode::Passthrough => out.extend_from_slice(input),
            Mode::Decode(decoder) => decode_into(decoder, input, last, out),
            Mode::Mixed(mixed) => mixed.decode(input, last, out),
        }
    }
}

fn decode_into(decoder: &mut Decoder, input: &[u8], last: bool, out: &mut Vec<u8>) {
    let needed = decoder
        .max_utf8_buffer_length(input.len())
        .expect("a chunk's worst-case UTF-8 length fits in usize");
    let start = out.len();
    out.resize(start + needed, 0);
    let (_, read, written, _) = decoder.decode_to_utf8(input, &mut out[start..], last);
    debug_assert_eq!(read, input.len(), "the buffer was sized for the worst case");
    out.truncate(start + written);
}

/// `auto`'s state for one stream: per line, UTF-8 or legacy. Splitting at `\n` is safe for the
/// legacy encodings `auto` meets (GBK, Big5, Shift_JIS, single-byte code pages): none uses 0x0A
/// inside a character.
struct MixedDecoder {
    legacy: Decoder,
    /// For the rest of a line decided to be UTF-8 before its end: holds back a character split
    /// between reads, and replaces what is not UTF-8 after all.
    utf8: Decoder,
    /// The start of the current line, while it is [`LineKind::Undecided`].
    pending: Vec<u8>,
    line: LineKind,
}

/// What the current line has been decided to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// Waiting in `pending` for its newline (or for a reason to decide sooner).
    Undecided,
    /// Decided before its newline: the rest of it, through the newline, is decoded the same way.
    /// (Deciding a line twice would split a legacy character held back in the decoder.)
    Utf8,
    Legacy,
}

impl MixedDecoder {
    fn decode(&mut self, mut input: &[u8], last: bool, out: &mut Vec<u8>) {
        while self.line != LineKind::Undecided {
            let end = input
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |newline| newline + 1);
            self.decode_decided(&input[..end], out);
            if end == input.len() && input.last() != Some(&b'\n') {
                break; // the line goes on in the next read
            }
            self.line = LineKind::Undecided;
            input = &input[end..];
        }
        if self.line == LineKind::Undecided {
            self.decode_undecided(input, out);
        }
        if last {
            let pending = std::mem::take(&mut self.pending);
            emit_line(&mut self.legacy, &pending, out);
            decode_into(&mut self.legacy, &[], true, out);
            decode_into(&mut self.utf8, &[], true, out);
            self.line = LineKind::Undecided;
        }
    }

    /// Whole lines are decided whole; the start of an unfinished one waits in `pending` until
    /// its newline, unless it can be decided already.
    fn decode_undecided(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let mut line_start = 0;
        while let Some(newline) = self.pending[line_start..].iter().position(|&b| b == b'\n') {
            let line_end = line_start + newline + 1;
            emit_line(&mut self.legacy, &self.pending[line_start..line_end], out);
            line_start = line_end;
        }
        self.pending.drain(..line_start);
        let pending = &mut self.pending;
        // ASCII reads the same either way: a prompt without its newline, or the start of a
        // line, is shown at once, and what waits starts at the first other byte.
        let ascii = pending.iter().take_while(|b| b.is_ascii()).count();
        out.extend(pending.drain(..ascii));
        if pending.is_empty() {
            return;
        }
        self.line = match std::str::from_utf8(pending) {
            // Not UTF-8, whatever follows: a progress message in the code page is shown now.
            Err(e) if e.error_len().is_some() => LineKind::Legacy,
            _ if pending.len() < MAX_PENDING_LINE => return,
            // A long line, UTF-8 so far (perhaps but for a character cut at the end).
            Err(e) if is_utf8_line(&pending[..e.valid_up_to()], self.legacy.encoding()) => {
                LineKind::Utf8
            }
            Ok(_) if is_utf8_line(pending, self.legacy.encoding()) => LineKind::Utf8,
            _ => LineKind::Legacy,
        };
        let pending = std::mem::take(pending);
        self.decode_decided(&pending, out);
    }

    /// Decodes part of a line already decided on. The streaming decoders hold back a character
    /// split at the end of `bytes` themselves.
    fn decode_decided(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let decoder = match self.line {
            LineKind::Utf8 => &mut self.utf8,
            _ => &mut self.legacy,
        };
        decode_into(decoder, bytes, false, out);
    }
}

/// Whether `auto` treats `line` as UTF-8 rather than as text in `legacy` (see the module docs).
pub fn is_utf8_line(line: &[u8], legacy: &'static Encoding) -> bool {
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    text.is_ascii()
        || legacy
            .decode_without_bom_handling_and_without_replacement(line)
            .is_none()
        || text.chars().any(|c| c.len_utf8() >= 3)
}

fn emit_line(legacy: &mut Decoder, line: &[u8], out: &mut Vec<u8>) {
    if is_utf8_line(line, legacy.encoding()) {
        out.extend_from_slice(line);
    } else {
        decode_into(legacy, line, false, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_in_chunks(encoding: OutputEncoding, input: &[u8], chunk: usize) -> Vec<u8> {
        decode_in_pieces(encoding, input.chunks(chunk.max(1)))
    }

    fn decode_in_pieces<'a>(
        encoding: OutputEncoding,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<u8> {
        let mut decoder = StreamDecoder::new(encoding);
        let mut out = Vec::new();
        for piece in pieces {
            decoder.decode(piece, false, &mut out);
        }
        decoder.decode(&[], true, &mut out);
        out
    }

    fn gbk(text: &str) -> Vec<u8> {
        encoding_rs::GBK.encode(text).0.into_owned()
    }

    const GBK: OutputEncoding = OutputEncoding::Decode(encoding_rs::GBK);
    const AUTO_GBK: OutputEncoding = OutputEncoding::Mixed(encoding_rs::GBK);

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
        let nihao = b"\xc4\xe3\xba\xc3";
        for encoding in [GBK, AUTO_GBK] {
            for chunk in 1..=4 {
                assert_eq!(
                    decode_in_chunks(encoding, nihao, chunk),
                    "你好".as_bytes(),
                    "chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_character_after_4095_ascii_bytes_decodes_whole() {
        let mut bytes = vec![b'a'; 4095];
        bytes.extend_from_slice(b"\xc4\xe3");
        let expected = format!("{}你", "a".repeat(4095));
        for encoding in [GBK, AUTO_GBK] {
            assert_eq!(
                decode_in_pieces(encoding, [&bytes[..4096], &bytes[4096..]]),
                expected.as_bytes()
            );
        }
    }

    #[test]
    fn every_split_point_of_a_longer_text_decodes_whole() {
        let text = "Windows IP 配置\r\n\r\n以太网适配器 以太网:\r\n   连接特定的 DNS 后缀 . . . . . . . :\r\n";
        let bytes = gbk(text);
        for encoding in [GBK, AUTO_GBK] {
            for split in 0..=bytes.len() {
                let out = decode_in_pieces(encoding, [&bytes[..split], &bytes[split..]]);
                assert_eq!(String::from_utf8(out).unwrap(), text, "split at {split}");
            }
        }
    }

    #[test]
    fn auto_passes_utf8_lines_and_decodes_gbk_lines_in_one_stream() {
        let mut bytes = "python says 你好\n".as_bytes().to_vec();
        bytes.extend(gbk("ipconfig says 你好\n"));
        bytes.extend("done ✓".as_bytes());
        let expected = "python says 你好\nipconfig says 你好\ndone ✓";
        for chunk in [1, 2, 3, 5, 64, 4096] {
            assert_eq!(
                String::from_utf8(decode_in_chunks(AUTO_GBK, &bytes, chunk)).unwrap(),
                expected
            );
        }
        // Forced GBK makes mojibake of the UTF-8 line: that is what `auto` is for.
        assert_ne!(
            String::from_utf8(decode_in_chunks(GBK, &bytes, 64)).unwrap(),
            expected
        );
    }

    #[test]
    fn auto_reads_text_valid_both_ways_as_the_likelier_of_the_two() {
        // GBK 蹋 is the bytes CC A3, a lone combining mark in UTF-8.
        assert_eq!(
            String::from_utf8(decode_in_chunks(AUTO_GBK, &gbk("蹋\r\n"), 1)).unwrap(),
            "蹋\r\n"
        );
        // UTF-8 你好 is also valid GBK (浣犲ソ): CJK in UTF-8 stays UTF-8.
        assert_eq!(
            String::from_utf8(decode_in_chunks(AUTO_GBK, "你好\n".as_bytes(), 2)).unwrap(),
            "你好\n"
        );
    }

    #[test]
    fn auto_shows_an_ascii_prompt_without_waiting_for_its_newline() {
        let mut decoder = StreamDecoder::new(AUTO_GBK);
        let mut out = Vec::new();
        decoder.decode(b"Password: ", false, &mut out);
        assert_eq!(out, b"Password: ");
    }

    #[test]
    fn auto_decides_on_long_lines_without_a_newline() {
        let line = gbk(&"你好".repeat(3000)); // 12,000 bytes, no newline
        let mut decoder = StreamDecoder::new(AUTO_GBK);
        let mut out = Vec::new();
        for piece in line.chunks(1000) {
            decoder.decode(piece, false, &mut out);
        }
        assert!(
            out.len() >= 3 * 4096,
            "held back {} bytes",
            line.len() - out.len() / 3 * 2
        );
        decoder.decode(&[], true, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "你好".repeat(3000));
    }

    #[test]
    fn a_long_line_decided_mid_character_is_finished_the_same_way() {
        // Two ways a line is decided before its newline, each with a character's lead byte
        // held back in the GBK decoder; its trail byte 0x40 comes in the next read and looks
        // like ASCII, yet must complete the character, and the next line must start clean.
        // - 中 is not UTF-8: the line is decided at once; 0x81 is the lead byte of 丂 (81 40).
        // - C3 A9 is UTF-8 é and GBK 茅: 2,048 of them are a line both ways, decided (as GBK:
        //   no character of three UTF-8 bytes) at 4 KiB; C4, the lead byte of 腀 (C4 40), is
        //   also the start of a UTF-8 character, so it is held back as cut, not invalid.
        let mut chinese = gbk("中");
        chinese.extend(std::iter::repeat_n(b'a', 4093));
        let cases = [
            (chinese, 0x81, format!("中{}丂", "a".repeat(4093))),
            (
                gbk("茅").repeat(2048),
                0xC4,
                format!("{}腀", "茅".repeat(2048)),
            ),
        ];
        for (start, lead, text) in cases {
            let mut first = start;
            first.push(lead);
            let mut second = vec![0x40];
            second.extend_from_slice(b"abc\r\n");
            second.extend(gbk("中文\r\n"));
            let out = decode_in_pieces(AUTO_GBK, [first.as_slice(), second.as_slice()]);
            let expected = format!("{text}abc\r\n中文\r\n");
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn a_long_utf8_line_decided_mid_character_is_finished_as_utf8() {
        let line = format!("你{}好\n", "b".repeat(4095));
        let bytes = line.as_bytes();
        let cut = 3 + 4095 + 1; // inside 好, after 4,096 bytes that decide the line
        let mut after = bytes[cut..].to_vec();
        after.extend(gbk("中文\n"));
        let out = decode_in_pieces(AUTO_GBK, [&bytes[..cut], after.as_slice()]);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{line}中文\n"));
    }

    #[test]
    fn auto_shows_a_code_page_progress_message_without_waiting_for_its_newline() {
        let mut decoder = StreamDecoder::new(AUTO_GBK);
        let mut out = Vec::new();
        decoder.decode(&gbk("处理中..."), false, &mut out);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), "处理中...");
        decoder.decode(&gbk(" 完成\r\n"), false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "处理中... 完成\r\n");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(
            String::from_utf8(decode_in_chunks(GBK, b"a\xc4", 1)).unwrap(),
            "a\u{fffd}"
        );
        assert_eq!(
            String::from_utf8(decode_in_chunks(AUTO_GBK, b"a\xc4\nb", 1)).unwrap(),
            "a\u{fffd}\nb"
        );
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(
            OutputEncoding::from_label("UTF-8").unwrap(),
            OutputEncoding::Passthrough
        );
        assert_eq!(OutputEncoding::from_label("gbk").unwrap(), GBK);
        assert_eq!(OutputEncoding::from_label("cp936").unwrap(), GBK);
        assert_eq!(OutputEncoding::from_label("936").unwrap(), GBK);
        assert_eq!(OutputEncoding::from_label("auto=936").unwrap(), AUTO_GBK);
        assert_eq!(
            OutputEncoding::from_label("auto=utf-8").unwrap(),
            OutputEncoding::Passthrough
        );
        assert_eq!(
            OutputEncoding::from_label("65001").unwrap(),
            OutputEncoding::Passthrough
        );
        assert!(
            OutputEncoding::from_label("klingon")
                .unwrap_err()
                .contains("klingon")
        );
        assert!(OutputEncoding::from_label("auto=klingon").is_err());
        // A code page without a decoder: what `auto` does there, pass through (and warn).
        for dos in ["auto=437", "auto=cp850"] {
            assert_eq!(
                OutputEncoding::from_label(dos).unwrap(),
                OutputEncoding::Passthrough,
                "{dos}"
            );
        }
        assert!(OutputEncoding::from_label("437").is_err());
        assert!(OutputEncoding::from_label("auto=963").is_err());
    }

    /// Text with ASCII, CJK, other non-ASCII and line breaks, as commands print it.
    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[ -~]{0,12}",
                "[\u{4e00}-\u{9fa5}]{1,6}",
                Just("\r\n".to_owned()),
                Just("\n".to_owned()),
                Just("，。：".to_owned()),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    fn split_at_points(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
        points.iter_mut().for_each(|p| *p %= bytes.len() + 1);
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for point in points {
            pieces.push(&bytes[start..point]);
            start = point;
        }
        pieces.push(&bytes[start..]);
        pieces
    }

    proptest! {
        #[test]
        fn chunked_decoding_equals_one_shot_decoding(
            text in text_strategy(),
            points in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let bytes = gbk(&text);
            let one_shot = encoding_rs::GBK.decode_without_bom_handling(&bytes).0.into_owned();
            prop_assert_eq!(&one_shot, &text);
            let pieces = split_at_points(&bytes, points.clone());
            prop_assert_eq!(String::from_utf8(decode_in_pieces(GBK, pieces.clone())).unwrap(), one_shot.clone());
            // `auto` gives the same however the stream is split, and that is the GBK text
            // for every line that is not also plausible UTF-8.
            let auto_one_shot = decode_in_pieces(AUTO_GBK, [bytes.as_slice()]);
            prop_assert_eq!(decode_in_pieces(AUTO_GBK, pieces), auto_one_shot.clone());
            let auto_one_shot = String::from_utf8(auto_one_shot).unwrap();
            let gbk_lines = bytes.split_inclusive(|&b| b == b'\n');
            for (gbk_line, auto_line) in gbk_lines.zip(auto_one_shot.split_inclusive('\n')) {
                if !is_utf8_line(gbk_line, encoding_rs::GBK) {
                    prop_assert_eq!(auto_line, encoding_rs::GBK.decode_without_bom_handling(gbk_line).0);
                }
            }
            // UTF-8 text through `auto` is passed through unchanged, however it is split.
            let utf8 = text.as_bytes();
            prop_assert_eq!(decode_in_pieces(AUTO_GBK, split_at_points(utf8, points)), utf8.to_vec());
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_always_yield_utf8(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            points in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            for encoding in [GBK, AUTO_GBK, OutputEncoding::Decode(encoding_rs::SHIFT_JIS)] {
                let out = decode_in_pieces(encoding, split_at_points(&bytes, points.clone()));
                prop_assert!(std::str::from_utf8(&out).is_ok());
            }
        }
    }

    #[test]
    fn a_line_decided_early_ends_at_its_newline_with_what_its_decoder_held_back() {
        // A line decided before its newline whose last character is cut off by the newline:
        // the held-back byte is a U+FFFD before that newline, and must not reach the next line.
        // - GBK (decided at once: 中 is not UTF-8): lead byte 0x81, then `\n`; were 0x81 kept,
        //   it would pair with the next line's first byte (81 D6 is a GBK character).
        // - UTF-8 (decided at 4 KiB): E5, the start of a three-byte character, then `\n`.
        let utf8_start = format!("你{}", "b".repeat(4095));
        let cases = [
            (gbk("中"), 0x81, "中".to_owned()),
            (utf8_start.as_bytes().to_vec(), 0xE5, utf8_start.clone()),
        ];
        for (first, cut_character, text) in cases {
            let mut second = vec![cut_character, b'\n'];
            second.extend(gbk("中文\n"));
            let out = decode_in_pieces(AUTO_GBK, [first.as_slice(), second.as_slice()]);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{text}\u{fffd}\n中文\n")
            );
        }
    }

    #[test]
    fn a_long_line_cut_at_a_character_boundary_is_shown_and_decided_by_what_it_holds() {
        // Over 4 KiB of a line, ending on a whole character, then the rest with its newline:
        // what has come is shown at once, and decided as the whole line would be.
        // - UTF-8 你好 (also valid GBK, as mojibake): UTF-8, it has three-byte characters.
        // - GBK 茅 (C3 A9, also UTF-8 é): code page text, it has none.
        let chinese = "你好".repeat(1000); // 6,000 bytes
        let accents = "茅".repeat(3000); // 6,000 bytes of GBK
        let cases = [
            (chinese.as_bytes().to_vec(), chinese.clone()),
            (gbk(&accents), accents.clone()),
        ];
        for (bytes, text) in cases {
            let cut = 4500; // a character boundary both ways (a multiple of 2 and of 3)
            let mut decoder = StreamDecoder::new(AUTO_GBK);
            let mut out = Vec::new();
            decoder.decode(&bytes[..cut], false, &mut out);
            let shown = String::from_utf8(out.clone()).unwrap();
            assert!(
                !shown.is_empty() && text.starts_with(&shown),
                "shown before the newline: {} bytes, {:?}...",
                shown.len(),
                shown.chars().take(4).collect::<String>()
            );
            decoder.decode(&bytes[cut..], false, &mut out);
            decoder.decode(b"\r\n", false, &mut out);
            decoder.decode(&gbk("中文\r\n"), true, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{text}\r\n中文\r\n")
            );
        }
    }

    #[test]
    fn the_start_up_description_names_the_encoding_and_what_is_done_with_it() {
        assert_eq!(
            OutputEncoding::Passthrough.describe(),
            "utf-8 (bytes passed through)"
        );
        assert_eq!(GBK.describe(), "GBK (decoded to utf-8)");
        assert_eq!(
            AUTO_GBK.describe(),
            "utf-8 or GBK per line (decoded to utf-8)"
        );
    }
}
