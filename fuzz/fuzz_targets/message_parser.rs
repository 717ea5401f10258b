//! Fuzzes the message parser: arbitrary bytes as a frame header, through the decoder (which
//! checks `type` and `len` before building the typed message) and through serde directly. It
//! must never panic, and every message it accepts must serialize back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rcmd::protocol::frame::MAX_HEADER_LEN;
use rcmd::protocol::{FrameDecoder, FrameEncoder, Message};

fuzz_target!(|data: &[u8]| {
    // Straight through serde.
    if let Ok(message) = serde_json::from_slice::<Message>(data) {
        let json = serde_json::to_vec(&message).expect("a message serializes");
        let back: Message = serde_json::from_slice(&json).expect("its own JSON parses");
        assert_eq!(back, message);
    }

    // As the header of a frame, with a body of up to 64 bytes after it.
    if data.is_empty() || data.len() > MAX_HEADER_LEN {
        return;
    }
    let mut frame = (data.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(data);
    frame.extend_from_slice(&[b'b'; 64]);
    let mut decoder = FrameDecoder::new(64);
    decoder.feed(&frame);
    if let Ok(Some(decoded)) = decoder.next_frame() {
        let mut encoded = Vec::new();
        FrameEncoder::new().encode(&decoded.message, &decoded.body, &mut encoded);
        let mut again = FrameDecoder::new(64);
        again.feed(&encoded);
        assert_eq!(again.next_frame(), Ok(Some(decoded)));
        assert_eq!(again.buffered(), 0);
    }
});
