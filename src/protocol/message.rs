//! Typed protocol messages: what each frame header means.
//!
//! Every frame carries one [`Message`] in its JSON header. The `type` field picks the variant and
//! the remaining fields are the variant's own. Messages that carry bytes (a command, stdin data,
//! output) put them in the frame body, never in the JSON, so binary data needs no escaping.
//! `docs/protocol.md` is the normative description; this file is its executable form.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The protocol version this build speaks. A peer announcing another version is refused with
/// [`ErrorCode::VersionMismatch`] rather than misunderstood. Version 2 changed the frame tag to
/// cover a BLAKE3 digest of the frame (docs/protocol.md §3).
pub const PROTOCOL_VERSION: u32 = 2;

/// The value of `protocol` in the server's `hello`, so a client can tell an rcmd server from
/// some other service that happens to speak length-prefixed JSON.
pub const PROTOCOL_NAME: &str = "rcmd";

/// Length in bytes of handshake nonces and proofs.
pub const NONCE_LEN: usize = 32;

/// Stdin bytes a client may have sent for a command and not yet seen acknowledged by
/// `stdin_ack`. This flow control keeps the server's stdin buffer bounded without ever having
/// to stop reading the connection, so a `signal` frame is seen even when the command does not
/// read its stdin.
pub const STDIN_WINDOW: usize = 256 * 1024;

/// Longest `message` of an `error` frame this crate sends, in bytes. Error messages may quote
/// what the peer sent (a bad `type`, a path), so they are cut here: even if every byte needed a
/// six-byte JSON escape, the header stays far below the receiver's limit of 16 KiB.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, with `...` at the end when cut.
pub fn clip(mut text: String, max: usize) -> String {
    const MORE: &str = "...";
    if text.len() > max {
        let mut end = max.saturating_sub(MORE.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(MORE);
    }
    text
}

/// One protocol message, as found in a frame header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Server → client, first frame of every connection: who we are and the challenge. The
    /// nonce is fresh per connection, so a proof recorded on one connection is useless on the
    /// next (no replay); the client adds a nonce of its own in `auth` so that a recorded
    /// `welcome` cannot be replayed to it by an impostor server.
    Hello {
        protocol: String,
        version: u32,
        nonce: Bytes32,
    },
    /// Client → server: the answer to the challenge and the client's own challenge.
    Auth {
        version: u32,
        nonce: Bytes32,
        proof: Bytes32,
    },
    /// Server → client: the client is accepted, and here is the server's proof in return.
    Welcome { proof: Bytes32 },
    /// Client → server: run the command in the body (UTF-8). `stdin` says whether the client will
    /// send `stdin` frames; if false the command's stdin is empty. `timeout_secs` asks for a
    /// shorter command timeout than the server's maximum.
    Exec {
        id: u32,
        stdin: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Client → server: bytes for the running command's stdin (body).
    Stdin { id: u32 },
    /// Client → server: end of stdin for the running command.
    StdinClose { id: u32 },
    /// Server → client: `bytes` more stdin bytes of command `id` were consumed (written to the
    /// command, or discarded because it closed its stdin); the client may send that many more.
    StdinAck { id: u32, bytes: u64 },
    /// Client → server: deliver a signal to the running command's process group.
    Signal { id: u32, signal: SignalName },
    /// Server → client: bytes the command wrote to stdout (body).
    Stdout { id: u32 },
    /// Server → client: bytes the command wrote to stderr (body).
    Stderr { id: u32 },
    /// Server → client: the command has finished; no more output frames follow for `id`.
    Exit {
        id: u32,
        #[serde(flatten)]
        status: ExitStatus,
        duration_ms: u64,
    },
    /// Either direction: something went wrong. If `fatal`, the sender closes the connection
    /// after this frame.
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
    },
}

impl Message {
    /// Whether frames of this type may carry a body. Others must announce `len` 0.
    pub fn carries_body(&self) -> bool {
        matches!(
            self,
            Message::Exec { .. }
                | Message::Stdin { .. }
                | Message::Stdout { .. }
                | Message::Stderr { .. }
        )
    }

    /// The `type` string of this message, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Auth { .. } => "auth",
            Message::Welcome { .. } => "welcome",
            Message::Exec { .. } => "exec",
            Message::Stdin { .. } => "stdin",
            Message::StdinClose { .. } => "stdin_close",
            Message::StdinAck { .. } => "stdin_ack",
            Message::Signal { .. } => "signal",
            Message::Stdout { .. } => "stdout",
            Message::Stderr { .. } => "stderr",
            Message::Exit { .. } => "exit",
            Message::Error { .. } => "error",
        }
    }

    /// Every `type` string the protocol defines, so the decoder can tell "unknown type" apart
    /// from "known type with the wrong fields".
    pub const TYPE_NAMES: [&'static str; 12] = [
        "hello",
        "auth",
        "welcome",
        "exec",
        "stdin",
        "stdin_close",
        "stdin_ack",
        "signal",
        "stdout",
        "stderr",
        "exit",
        "error",
    ];

    /// A fatal error message, the last frame the sender writes before closing.
    pub fn fatal(code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error {
            code,
            message: clip(message.into(), MAX_ERROR_MESSAGE_LEN),
            fatal: true,
            id: None,
        }
    }

    /// A non-fatal error about command `id`; the connection stays usable.
    pub fn command_error(id: u32, code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error {
            code,
            message: clip(message.into(), MAX_ERROR_MESSAGE_LEN),
            fatal: false,
            id: Some(id),
        }
    }
}

/// How a command ended, as carried by an `exit` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ExitStatus {
    /// The process called exit with `code`.
    Exited { code: i32 },
    /// The process was terminated by signal number `signal`.
    Signaled { signal: i32 },
    /// The server killed the process tree because the command timeout passed.
    TimedOut,
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal number, or 124 for a
    /// timeout (as coreutils `timeout` does). The numbers come from the peer, so the sum
    /// saturates instead of overflowing; callers map what is outside 0-255 as they see fit.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Exited { code } => code,
            ExitStatus::Signaled { signal } => 128i32.saturating_add(signal),
            ExitStatus::TimedOut => 124,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Exited { code } => write!(f, "exit status {code}"),
            ExitStatus::Signaled { signal } => write!(f, "killed by signal {signal}"),
            ExitStatus::TimedOut => write!(f, "timed out"),
        }
    }
}

/// Signals a client may ask the server to deliver to a running command. On the wire it is a
/// JSON string and nothing else (serde's derive would also take `{"INT":null}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalName {
    /// Interrupt, what Ctrl-C sends.
    Int,
    /// Polite termination request.
    Term,
    /// Immediate, uncatchable termination.
    Kill,
}

impl SignalName {
    /// Every signal, in declaration order.
    pub const ALL: [SignalName; 3] = [SignalName::Int, SignalName::Term, SignalName::Kill];

    /// The name on the wire, as `kill -l` writes it: `INT`, `TERM`, `KILL`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Int => "INT",
            SignalName::Term => "TERM",
            SignalName::Kill => "KILL",
        }
    }

    /// The signal a wire name stands for; `None` for any other text (names are case-sensitive).
    pub fn from_wire(name: &str) -> Option<SignalName> {
        SignalName::ALL
            .into_iter()
            .find(|signal| signal.as_str() == name)
    }
}

impl Serialize for SignalName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        SignalName::from_wire(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown signal {:?}, expected \"INT\", \"TERM\" or \"KILL\"",
                clip(name, 32)
            ))
        })
    }
}

/// Machine-readable error codes carried by `error` messages. On the wire a code is a JSON
/// string (snake_case); a string this version does not know reads as [`ErrorCode::Unknown`],
/// anything but a string is a malformed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The header length prefix is 0 or over the maximum header length (the wire code
    /// `header_too_large` covers both).
    HeaderTooLarge,
    /// The header announces a body longer than the maximum body length.
    BodyTooLarge,
    /// The header is not UTF-8 JSON of the right shape, or announces a body where none belongs.
    BadHeader,
    /// The header's `type` is not one this version knows.
    UnknownType,
    /// A valid message arrived at a point where the protocol does not allow it.
    UnexpectedMessage,
    /// The peer speaks a different protocol version.
    VersionMismatch,
    /// The client's proof did not verify: it does not know the shared secret.
    AuthFailed,
    /// A frame's tag did not verify: it was altered, replayed, dropped or reordered.
    Integrity,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The connection was idle for longer than the server allows.
    IdleTimeout,
    /// The server is at its connection limit (or its limit of connections still in handshake).
    TooManyConnections,
    /// An `exec` arrived while a command is still running on this connection.
    Busy,
    /// The command is empty or only whitespace.
    EmptyCommand,
    /// The command is longer than the server's maximum command length.
    CommandTooLong,
    /// The command is not valid UTF-8.
    BadCommand,
    /// The server could not start the command.
    SpawnFailed,
    /// The server is shutting down.
    Shutdown,
    /// The client sent more stdin than [`STDIN_WINDOW`] allows before an acknowledgement.
    FlowControl,
    /// A code this version does not know (sent by a newer peer); read the message.
    Unknown,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::HeaderTooLarge,
        ErrorCode::BodyTooLarge,
        ErrorCode::BadHeader,
        ErrorCode::UnknownType,
        ErrorCode::UnexpectedMessage,
        ErrorCode::VersionMismatch,
        ErrorCode::AuthFailed,
        ErrorCode::Integrity,
        ErrorCode::HandshakeTimeout,
        ErrorCode::IdleTimeout,
        ErrorCode::TooManyConnections,
        ErrorCode::Busy,
        ErrorCode::EmptyCommand,
        ErrorCode::CommandTooLong,
        ErrorCode::BadCommand,
        ErrorCode::SpawnFailed,
        ErrorCode::Shutdown,
        ErrorCode::FlowControl,
        ErrorCode::Unknown,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::HeaderTooLarge => "header_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::BadHeader => "bad_header",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnexpectedMessage => "unexpected_message",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::Integrity => "integrity",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Busy => "busy",
            ErrorCode::EmptyCommand => "empty_command",
            ErrorCode::CommandTooLong => "command_too_long",
            ErrorCode::BadCommand => "bad_command",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::FlowControl => "flow_control",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The code a wire string stands for: every string this version does not know (a newer
    /// peer's code, or `unknown` itself) is [`ErrorCode::Unknown`].
    pub fn from_wire(name: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
            .unwrap_or(ErrorCode::Unknown)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(ErrorCode::from_wire(&name))
    }
}

/// 32 bytes, written on the wire as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bytes32(pub [u8; NONCE_LEN]);

impl std::fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl Serialize for Bytes32 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        from_hex(&text)
            .and_then(|bytes| <[u8; NONCE_LEN]>::try_from(bytes).ok())
            .map(Bytes32)
            .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex digits (either case); `None` if `text` is not an even run of hex digits.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_spellings_of_the_type_names_agree() {
        // serde's `rename_all`, `type_name` and `TYPE_NAMES` each spell the twelve names.
        let nonce = Bytes32([1; 32]);
        let every_type = [
            Message::Hello {
                protocol: PROTOCOL_NAME.to_owned(),
                version: 2,
                nonce,
            },
            Message::Auth {
                version: 2,
                nonce,
                proof: nonce,
            },
            Message::Welcome { proof: nonce },
            Message::Exec {
                id: 1,
                stdin: false,
                timeout_secs: None,
            },
            Message::Stdin { id: 1 },
            Message::StdinClose { id: 1 },
            Message::StdinAck { id: 1, bytes: 0 },
            Message::Signal {
                id: 1,
                signal: SignalName::Int,
            },
            Message::Stdout { id: 1 },
            Message::Stderr { id: 1 },
            Message::Exit {
                id: 1,
                status: ExitStatus::TimedOut,
                duration_ms: 0,
            },
            Message::fatal(ErrorCode::Shutdown, "bye"),
        ];
        let mut names = Vec::new();
        for message in &every_type {
            let json: serde_json::Value = serde_json::to_value(message).unwrap();
            assert_eq!(json["type"], message.type_name(), "{message:?}");
            names.push(message.type_name());
        }
        assert_eq!(names, Message::TYPE_NAMES);
    }

    #[test]
    fn signal_names_read_as_on_the_wire() {
        for signal in SignalName::ALL {
            let wire = serde_json::to_string(&signal).unwrap();
            assert_eq!(wire, format!("\"{}\"", signal.as_str()));
        }
    }

    #[test]
    fn exec_serializes_as_documented() {
        let message = Message::Exec {
            id: 3,
            stdin: false,
            timeout_secs: None,
        };
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"type":"exec","id":3,"stdin":false}"#
        );
    }

    #[test]
    fn exit_flattens_its_status() {
        let message = Message::Exit {
            id: 1,
            status: ExitStatus::Signaled { signal: 9 },
            duration_ms: 5,
        };
        let json = serde_json::to_string(&message).unwrap();
        assert_eq!(
            json,
            r#"{"type":"exit","id":1,"reason":"signaled","signal":9,"duration_ms":5}"#
        );
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), message);
        let timed_out = r#"{"type":"exit","id":2,"reason":"timed_out","duration_ms":7}"#;
        assert_eq!(
            serde_json::from_str::<Message>(timed_out).unwrap(),
            Message::Exit {
                id: 2,
                status: ExitStatus::TimedOut,
                duration_ms: 7
            }
        );
        // §5.11: the field of the reason is required, a field of another reason is ignored.
        for missing in [
            r#"{"type":"exit","id":1,"reason":"exited","duration_ms":3}"#,
            r#"{"type":"exit","id":1,"reason":"signaled","code":0,"duration_ms":3}"#,
            r#"{"type":"exit","id":1,"reason":"crashed","code":0,"duration_ms":3}"#,
        ] {
            assert!(
                serde_json::from_str::<Message>(missing).is_err(),
                "{missing}"
            );
        }
        let extra = r#"{"type":"exit","id":1,"reason":"timed_out","code":0,"duration_ms":3}"#;
        assert!(matches!(
            serde_json::from_str::<Message>(extra),
            Ok(Message::Exit {
                status: ExitStatus::TimedOut,
                ..
            })
        ));
    }

    #[test]
    fn bytes32_round_trips_through_hex() {
        let nonce = Bytes32([0xab; 32]);
        let json = serde_json::to_string(&nonce).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(serde_json::from_str::<Bytes32>(&json).unwrap(), nonce);
        assert!(serde_json::from_str::<Bytes32>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Bytes32>(&format!("\"{}\"", "zz".repeat(32))).is_err());
        assert!(serde_json::from_str::<Bytes32>(&format!("\"{}\"", "+1".repeat(32))).is_err());
        let upper = format!("\"{}\"", "AB".repeat(32));
        assert_eq!(serde_json::from_str::<Bytes32>(&upper).unwrap(), nonce);
    }

    #[test]
    fn shell_codes_follow_shell_conventions() {
        assert_eq!(ExitStatus::Exited { code: 44 }.shell_code(), 44);
        assert_eq!(ExitStatus::Signaled { signal: 2 }.shell_code(), 130);
        assert_eq!(ExitStatus::TimedOut.shell_code(), 124);
        // The number comes from the peer: no overflow, whatever it is.
        let huge = ExitStatus::Signaled { signal: i32::MAX };
        assert_eq!(huge.shell_code(), i32::MAX);
        let negative = ExitStatus::Signaled { signal: i32::MIN };
        assert_eq!(negative.shell_code(), i32::MIN + 128);
    }

    #[test]
    fn enumerations_are_strings_on_the_wire_and_nothing_else() {
        // serde's derived enum reader also takes the map form `{"INT":null}`; the protocol
        // allows only the string.
        let signal = |value: &str| {
            serde_json::from_str::<Message>(&format!(
                r#"{{"type":"signal","id":1,"signal":{value}}}"#
            ))
        };
        assert_eq!(
            signal(r#""INT""#).unwrap(),
            Message::Signal {
                id: 1,
                signal: SignalName::Int
            }
        );
        for bad in [r#"{"INT":null}"#, r#""int""#, r#""HUP""#, "2", "null"] {
            assert!(signal(bad).is_err(), "{bad}");
        }
        let code = |value: &str| {
            serde_json::from_str::<Message>(&format!(
                r#"{{"type":"error","code":{value},"message":"m","fatal":true}}"#
            ))
        };
        for bad in [
            r#"{"busy":null}"#,
            r#"{"nonsense":null}"#,
            "7",
            "null",
            "[]",
        ] {
            assert!(code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_code_and_signal_reads_back_as_written() {
        for code in ErrorCode::ALL {
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
        }
        for signal in SignalName::ALL {
            let wire = serde_json::to_string(&signal).unwrap();
            assert_eq!(serde_json::from_str::<SignalName>(&wire).unwrap(), signal);
        }
    }

    #[test]
    fn error_messages_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_LEN);
        let Message::Error { message, .. } = Message::fatal(ErrorCode::BadHeader, long) else {
            panic!()
        };
        assert!(message.len() <= MAX_ERROR_MESSAGE_LEN, "{}", message.len());
        assert!(message.ends_with("..."));
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("0123456789ab".into(), 10), "0123456...");
    }

    #[test]
    fn error_codes_are_snake_case_on_the_wire() {
        assert_eq!(ErrorCode::HeaderTooLarge.as_str(), "header_too_large");
        assert_eq!(ErrorCode::Integrity.as_str(), "integrity");
        // A newer peer's code is still a readable error, not an undecodable frame.
        let future = r#"{"type":"error","code":"quota_exceeded","message":"m","fatal":true}"#;
        let Message::Error { code, .. } = serde_json::from_str(future).unwrap() else {
            panic!()
        };
        assert_eq!(code, ErrorCode::Unknown);
    }

    #[test]
    fn a_text_of_exactly_the_limit_is_not_clipped() {
        assert_eq!(clip("0123456789".into(), 10), "0123456789");
        let exact = "x".repeat(MAX_ERROR_MESSAGE_LEN);
        let Message::Error { message, .. } = Message::fatal(ErrorCode::BadHeader, exact.clone())
        else {
            panic!()
        };
        assert_eq!(message, exact, "a message that fits is sent whole");
    }
}
