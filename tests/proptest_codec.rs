//! Property tests of the wire codec, run in CI (the libFuzzer targets in `fuzz/` are not):
//! encode → decode is the identity for every message type with arbitrary fields and bodies,
//! with and without tags, however the bytes are split; arbitrary bytes never panic the
//! decoder; a cut stream is never an error; and a flipped bit in a tagged stream is never
//! accepted. Case counts are kept moderate so the suite stays fast.

use proptest::collection::vec;
use proptest::prelude::*;

use rcmd::auth::FrameMac;
use rcmd::protocol::frame::{MAX_BODY_LEN, MAX_HEADER_LEN};
use rcmd::protocol::message::Bytes32;
use rcmd::protocol::{
    ErrorCode, ExitStatus, Frame, FrameDecoder, FrameEncoder, FrameError, Message, SignalName,
};

fn bytes32() -> impl Strategy<Value = Bytes32> {
    any::<[u8; 32]>().prop_map(Bytes32)
}

/// Text of any Unicode, control characters and quotes included: JSON must escape them all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        any::<String>().prop_map(|s| s.chars().take(60).collect()),
        Just(String::new()),
        Just("\"\\\u{0}\n\u{7f}\u{2028}\u{fffd}".to_owned()),
    ]
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(|code| ExitStatus::Exited { code }),
        any::<i32>().prop_map(|signal| ExitStatus::Signaled { signal }),
        Just(ExitStatus::TimedOut),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

fn signal_name() -> impl Strategy<Value = SignalName> {
    prop::sample::select(SignalName::ALL.to_vec())
}

/// Every message type, with arbitrary fields.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (text(), any::<u32>(), bytes32()).prop_map(|(protocol, version, nonce)| {
            Message::Hello {
                protocol,
                version,
                nonce,
            }
        }),
        (any::<u32>(), bytes32(), bytes32()).prop_map(|(version, nonce, proof)| Message::Auth {
            version,
            nonce,
            proof
        }),
        bytes32().prop_map(|proof| Message::Welcome { proof }),
        (any::<u32>(), any::<bool>(), any::<Option<u64>>()).prop_map(
            |(id, stdin, timeout_secs)| Message::Exec {
                id,
                stdin,
                timeout_secs
            }
        ),
        any::<u32>().prop_map(|id| Message::Stdin { id }),
        any::<u32>().prop_map(|id| Message::StdinClose { id }),
        (any::<u32>(), any::<u64>()).prop_map(|(id, bytes)| Message::StdinAck { id, bytes }),
        (any::<u32>(), signal_name()).prop_map(|(id, signal)| Message::Signal { id, signal }),
        any::<u32>().prop_map(|id| Message::Stdout { id }),
        any::<u32>().prop_map(|id| Message::Stderr { id }),
        (any::<u32>(), exit_status(), any::<u64>()).prop_map(|(id, status, duration_ms)| {
            Message::Exit {
                id,
                status,
                duration_ms,
            }
        }),
        (error_code(), text(), any::<bool>(), any::<Option<u32>>()).prop_map(
            |(code, message, fatal, id)| Message::Error {
                code,
                message,
                fatal,
                id
            }
        ),
    ]
}

/// A message and a body it may carry (empty for bodiless types).
fn frame() -> impl Strategy<Value = Frame> {
    (message(), vec(any::<u8>(), 0..2048)).prop_map(|(message, body)| {
        let body = if message.carries_body() {
            body
        } else {
            Vec::new()
        };
        Frame { message, body }
    })
}

fn encode_all(frames: &[Frame], key: Option<[u8; 32]>) -> Vec<u8> {
    let mut encoder = FrameEncoder::new();
    if let Some(key) = key {
        encoder.start_tagging(FrameMac::new(&key));
    }
    let mut out = Vec::new();
    for frame in frames {
        encoder.encode(&frame.message, &frame.body, &mut out);
    }
    out
}

/// Feeds `bytes` in pieces of the given sizes (cycled) and collects frames until the end or
/// the first error.
fn decode_chunked(
    bytes: &[u8],
    chunks: &[usize],
    key: Option<[u8; 32]>,
) -> (Vec<Frame>, Option<FrameError>, usize) {
    decode_pieces(bytes, chunks, key, false)
}

/// Like [`decode_chunked`], with `via_reader` the pieces reach the decoder through
/// `FrameDecoder::read_from` (as a client's socket does) instead of `feed`.
fn decode_pieces(
    bytes: &[u8],
    chunks: &[usize],
    key: Option<[u8; 32]>,
    via_reader: bool,
) -> (Vec<Frame>, Option<FrameError>, usize) {
    let mut decoder = FrameDecoder::default();
    if let Some(key) = key {
        decoder.start_verifying(FrameMac::new(&key));
    }
    let mut frames = Vec::new();
    let mut rest = bytes;
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = size.clamp(1, rest.len());
        if via_reader {
            let mut piece = &rest[..n];
            assert_eq!(decoder.read_from(&mut piece, n).unwrap(), n);
        } else {
            decoder.feed(&rest[..n]);
        }
        rest = &rest[n..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Some(error), decoder.buffered()),
            }
        }
    }
    (frames, None, decoder.buffered())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        vec(1usize..64, 1..12),
        vec(1usize..5000, 1..6),
        Just(vec![usize::MAX]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_decode_is_the_identity(
        frames in vec(frame(), 1..8),
        chunks in chunk_sizes(),
        key in prop::option::of(any::<[u8; 32]>()),
        via_reader in any::<bool>(),
    ) {
        let bytes = encode_all(&frames, key);
        let (decoded, error, left) = decode_pieces(&bytes, &chunks, key, via_reader);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(left, 0);
    }

    #[test]
    fn every_header_fits_the_header_limit(message in message()) {
        let bytes = encode_all(&[Frame { message, body: Vec::new() }], None);
        let header_len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert!(header_len > 0 && header_len <= MAX_HEADER_LEN);
    }

    #[test]
    fn a_cut_stream_is_incomplete_not_an_error(
        frames in vec(frame(), 1..4),
        cut in any::<prop::sample::Index>(),
        chunks in chunk_sizes(),
        key in prop::option::of(any::<[u8; 32]>()),
    ) {
        let bytes = encode_all(&frames, key);
        let cut = cut.index(bytes.len());
        let (decoded, error, _) = decode_chunked(&bytes[..cut], &chunks, key);
        prop_assert_eq!(error, None);
        prop_assert!(decoded.len() < frames.len());
        prop_assert_eq!(&decoded[..], &frames[..decoded.len()]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in vec(any::<u8>(), 0..4096),
        chunks in chunk_sizes(),
        tagged in any::<bool>(),
    ) {
        let key = tagged.then_some([9u8; 32]);
        let (decoded, error, _) = decode_chunked(&bytes, &chunks, key);
        for frame in &decoded {
            prop_assert!(frame.body.len() <= MAX_BODY_LEN);
            prop_assert!(frame.body.is_empty() || frame.message.carries_body());
        }
        if tagged {
            // Nothing untagged passes verification; every failure is an integrity one, or a
            // length over a limit.
            prop_assert!(decoded.is_empty());
            prop_assert!(is_tampering_verdict(&error));
        }
    }

    #[test]
    fn arbitrary_json_ish_headers_never_panic_the_decoder(
        header in "[{}\\[\\]\":,a-z_0-9 .\\-]{1,200}",
        body in vec(any::<u8>(), 0..64),
        chunks in chunk_sizes(),
    ) {
        let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&body);
        let (decoded, _, _) = decode_chunked(&bytes, &chunks, None);
        // Whatever is accepted re-encodes to something that decodes the same.
        let again = encode_all(&decoded, None);
        let (round_trip, error, _) = decode_chunked(&again, &[usize::MAX], None);
        prop_assert_eq!(error, None);
        prop_assert_eq!(round_trip, decoded);
    }

    #[test]
    fn arbitrary_header_fields_of_known_types_never_panic(
        type_name in prop::sample::select(Message::TYPE_NAMES.to_vec()),
        fields in vec(("[a-z_]{1,12}", prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            "\\PC{0,70}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ]), 0..6),
        chunks in chunk_sizes(),
    ) {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), type_name.into());
        for (name, value) in fields {
            object.insert(name, value);
        }
        let header = serde_json::Value::Object(object).to_string();
        let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let _ = decode_chunked(&bytes, &chunks, None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_flipped_bit_in_a_tagged_stream_is_never_accepted(
        frames in vec(frame(), 1..4),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
        chunks in chunk_sizes(),
    ) {
        let key = [3u8; 32];
        let mut bytes = encode_all(&frames, Some(key));
        let at = position.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let (decoded, error, _) = decode_chunked(&bytes, &chunks, Some(key));
        // Frames before the flip may pass; the altered one and everything after do not.
        prop_assert!(decoded.len() < frames.len(), "flip at {} accepted", at);
        prop_assert_eq!(&decoded[..], &frames[..decoded.len()]);
        prop_assert!(is_tampering_verdict(&error));
    }
}

#[test]
fn bodies_up_to_the_limit_round_trip_and_one_more_byte_is_refused() {
    let body = vec![0xa5u8; MAX_BODY_LEN];
    let frame = Frame {
        message: Message::Stdout { id: 1 },
        body,
    };
    let bytes = encode_all(std::slice::from_ref(&frame), None);
    let (decoded, error, _) = decode_chunked(&bytes, &[65536], None);
    assert_eq!(error, None);
    assert_eq!(decoded, vec![frame]);

    let header = format!(r#"{{"type":"stdout","id":1,"len":{}}}"#, MAX_BODY_LEN + 1);
    let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let (_, error, _) = decode_chunked(&bytes, &[usize::MAX], None);
    assert_eq!(
        error,
        Some(FrameError::BodyTooLarge {
            len: MAX_BODY_LEN as u64 + 1
        })
    );
}

#[test]
fn a_negative_number_split_after_its_minus_sign_is_incomplete_not_an_error() {
    // Found by `encode_then_decode_is_the_identity`: serde_json, skipping a value, called
    // `-` at the end of the input an invalid number, so an `exit` with a negative code (as
    // Windows has) was refused when TCP split its header right after the minus sign.
    for status in [
        ExitStatus::Exited { code: -1 },
        ExitStatus::Signaled {
            signal: -1073741819,
        },
    ] {
        let frame = Frame {
            message: Message::Exit {
                id: 1,
                status,
                duration_ms: 0,
            },
            body: Vec::new(),
        };
        let bytes = encode_all(std::slice::from_ref(&frame), None);
        let minus = bytes.iter().position(|&b| b == b'-').unwrap();
        let (decoded, error, _) = decode_chunked(&bytes, &[minus + 1, usize::MAX], None);
        assert_eq!(error, None);
        assert_eq!(decoded, vec![frame]);
    }
}

/// What a verifying decoder may say of altered bytes: integrity, or a length over a limit.
fn is_tampering_verdict(error: &Option<FrameError>) -> bool {
    matches!(
        error,
        None | Some(
            FrameError::Integrity
                | FrameError::HeaderTooLarge { .. }
                | FrameError::BodyTooLarge { .. }
        )
    )
}
