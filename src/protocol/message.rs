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

/// One protocol message, as found in a frame header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Server → client, first frame of every connection: who we are and the challenge.
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
            message: message.into(),
            fatal: true,
            id: None,
        }
    }

    /// A non-fatal error about command `id`; the connection stays usable.
    pub fn command_error(id: u32, code: ErrorCode, message: impl Into<String>) -> Message {
        Message::Error {
            code,
            message: message.into(),
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
    /// timeout (as coreutils `timeout` does).
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Exited { code } => code,
            ExitStatus::Signaled { signal } => 128 + signal,
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

/// Signals a client may ask the server to deliver to a running command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalName {
    /// Interrupt, what Ctrl-C sends.
    #[serde(rename = "INT")]
    Int,
    /// Polite termination request.
    #[serde(rename = "TERM")]
    Term,
    /// Immediate, uncatchable termination.
    #[serde(rename = "KILL")]
    Kill,
}

impl SignalName {
    /// The name on the wire, as `kill -l` writes it: `INT`, `TERM`, `KILL`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Int => "INT",
            SignalName::Term => "TERM",
            SignalName::Kill => "KILL",
        }
    }
}

/// Machine-readable error codes carried by `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The header length prefix exceeds the maximum header length.
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
    #[serde(other)]
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
    pub fn as_str(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
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
    fn signal_names_read_as_on_the_wire() {
        for signal in [SignalName::Int, SignalName::Term, SignalName::Kill] {
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
}
