//! Fuzzes the incremental frame decoder with arbitrary bytes in arbitrary chunks, untagged and
//! tagged. It must never panic, never return a body over its limit, and every frame it accepts
//! must survive encode → decode unchanged. In tagged mode, the frames it accepted untagged are
//! re-encoded with tags, one bit is flipped, and no altered frame may be accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rcmd::auth::FrameMac;
use rcmd::protocol::frame::MAX_BODY_LEN;
use rcmd::protocol::{Frame, FrameDecoder, FrameEncoder, FrameError};

const KEY: [u8; 32] = [7; 32];

/// Chunk sizes from a seed: mostly small, sometimes large, never zero.
struct Chunks(u64);

impl Chunks {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        match self.0 % 8 {
            0 => 1,
            1..=5 => (self.0 >> 8) as usize % 16 + 1,
            _ => (self.0 >> 8) as usize % 4096 + 1,
        }
    }
}

/// Feeds `bytes` to `decoder` in chunks and returns the frames it accepted and how it ended.
fn decode(
    decoder: &mut FrameDecoder,
    bytes: &[u8],
    chunks: &mut Chunks,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = chunks.next().min(rest.len());
        decoder.feed(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

fn encode(frames: &[Frame], mac: Option<FrameMac>) -> Vec<u8> {
    let mut encoder = FrameEncoder::new();
    if let Some(mac) = mac {
        encoder.start_tagging(mac);
    }
    let mut out = Vec::new();
    for frame in frames {
        encoder.encode(&frame.message, &frame.body, &mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, flip_hi, flip_lo, bytes @ ..] = data else {
        return;
    };
    let max_body = match flags & 3 {
        0 => 0,
        1 => 16,
        2 => 4096,
        _ => MAX_BODY_LEN,
    };
    let mut chunks = Chunks(u64::from(*seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);

    // Untagged, as before the handshake.
    let mut decoder = FrameDecoder::new(max_body);
    let (frames, _) = decode(&mut decoder, bytes, &mut chunks);
    for frame in &frames {
        assert!(frame.body.len() <= max_body);
        assert!(frame.body.is_empty() || frame.message.carries_body());
    }
    // What was accepted encodes to bytes that decode to the same frames.
    let encoded = encode(&frames, None);
    let mut again = FrameDecoder::new(max_body);
    let (round_trip, error) = decode(&mut again, &encoded, &mut chunks);
    assert_eq!(error, None);
    assert_eq!(round_trip, frames);
    assert_eq!(again.buffered(), 0);

    // Arbitrary bytes where tags are expected: only integrity errors, and (short of a forged
    // HMAC-SHA256) no frames.
    let mut tagged = FrameDecoder::new(max_body);
    tagged.start_verifying(FrameMac::new(&KEY));
    let (accepted, error) = decode(&mut tagged, bytes, &mut chunks);
    assert!(
        accepted.is_empty(),
        "an untagged frame passed tag verification"
    );
    assert!(matches!(error, None | Some(FrameError::Integrity)));

    // The accepted frames, properly tagged, with one bit flipped: whatever is accepted is a
    // prefix of what was sent, and the flip is never accepted.
    if frames.is_empty() {
        return;
    }
    let mut wire = encode(&frames, Some(FrameMac::new(&KEY)));
    let at = (usize::from(*flip_hi) << 8 | usize::from(*flip_lo)) % wire.len();
    wire[at] ^= 1 << (seed % 8);
    let mut tagged = FrameDecoder::new(max_body);
    tagged.start_verifying(FrameMac::new(&KEY));
    let (accepted, error) = decode(&mut tagged, &wire, &mut chunks);
    assert!(matches!(error, None | Some(FrameError::Integrity)));
    assert!(
        accepted.len() < frames.len(),
        "a flipped bit went unnoticed"
    );
    assert_eq!(accepted[..], frames[..accepted.len()]);
});
