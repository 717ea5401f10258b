//! A raw protocol client for hostile-input tests: it speaks the wire format through the
//! library's own codec, but lets a test send whatever it likes at each step (garbage, frames out
//! of order, untagged frames after the handshake) and look at exactly what the server answers.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rcmd::auth::{self, FrameMac, Role, SessionKeys};
use rcmd::protocol::message::{Bytes32, PROTOCOL_NAME};
use rcmd::protocol::{
    ErrorCode, ExitStatus, Frame, FrameDecoder, FrameEncoder, FrameError, Message,
    PROTOCOL_VERSION, SignalName,
};

/// What reading a frame can end in, besides a frame.
#[derive(Debug)]
pub enum ReadError {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing complete arrived in time.
    Timeout,
    /// The server's bytes did not decode.
    Decode(FrameError),
}

/// One connection speaking the protocol by hand.
pub struct RawClient {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    next_id: u32,
}

/// The secret the server under test uses, read as the server reads it.
pub fn load_secret(path: &Path) -> Vec<u8> {
    rcmd::secret::load(path).expect("load secret")
}

/// One frame's bytes as [`FrameEncoder`] writes them, untagged.
pub fn encode_untagged(message: &Message, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameEncoder::new().encode(message, body, &mut out);
    out
}

/// A frame with a hand-written header: `u32 BE length | header`, no body.
pub fn raw_header_frame(header: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(header);
    out
}

impl RawClient {
    /// Connects without reading anything.
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            decoder: FrameDecoder::default(),
            encoder: FrameEncoder::new(),
            next_id: 1,
        }
    }

    /// Writes bytes as they are. Errors (the server may already have closed) are returned.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Encodes a frame as [`RawClient::send`] would send it (tagged once authenticated), for
    /// a test to alter, replay or send later. Counts as sent for the tag sequence.
    pub fn encode(&mut self, message: &Message, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encoder.encode(message, body, &mut out);
        out
    }

    /// Encodes and sends a frame, tagged once [`RawClient::authenticate`] has succeeded.
    pub fn send(&mut self, message: &Message, body: &[u8]) -> io::Result<()> {
        let out = self.encode(message, body);
        self.stream.write_all(&out)
    }

    /// The next frame from the server, waiting at most `timeout`.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Frame, ReadError> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(ReadError::Decode)? {
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::Timeout);
                }
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    /// Reads the server's `hello` and returns its nonce.
    #[track_caller]
    pub fn read_hello(&mut self) -> [u8; 32] {
        match self.read_frame(Duration::from_secs(20)) {
            Ok(Frame {
                message:
                    Message::Hello {
                        protocol,
                        version,
                        nonce,
                    },
                ..
            }) => {
                assert_eq!(protocol, PROTOCOL_NAME);
                assert_eq!(version, PROTOCOL_VERSION);
                nonce.0
            }
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// The `auth` frame that answers `server_nonce`, untagged, with a fresh client nonce.
    pub fn auth_frame(secret: &[u8], server_nonce: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
        let client_nonce = auth::new_nonce();
        let proof = auth::proof(secret, Role::Client, server_nonce, &client_nonce);
        let message = Message::Auth {
            version: PROTOCOL_VERSION,
            nonce: Bytes32(client_nonce),
            proof: Bytes32(proof),
        };
        (encode_untagged(&message, b""), client_nonce)
    }

    /// Runs the whole handshake properly: reads `hello`, sends `auth`, checks `welcome`, and
    /// from then on tags and verifies. Returns the `auth` frame's bytes (for replay tests).
    #[track_caller]
    pub fn authenticate(&mut self, secret: &[u8]) -> Vec<u8> {
        let server_nonce = self.read_hello();
        let (frame, client_nonce) = RawClient::auth_frame(secret, &server_nonce);
        self.send_raw(&frame).expect("send auth");
        match self.read_frame(Duration::from_secs(20)) {
            Ok(Frame {
                message: Message::Welcome { proof },
                ..
            }) => assert!(
                auth::verify_proof(secret, Role::Server, &server_nonce, &client_nonce, &proof.0),
                "the server's proof does not verify"
            ),
            other => panic!("expected welcome, got {other:?}"),
        }
        let keys = SessionKeys::derive(secret, &server_nonce, &client_nonce);
        self.encoder
            .start_tagging(FrameMac::new(&keys.client_to_server));
        self.decoder
            .start_verifying(FrameMac::new(&keys.server_to_client));
        frame
    }

    /// A client that has passed the handshake with `server`, using its secret file.
    pub fn authenticated_to(server: &super::TestServer) -> RawClient {
        RawClient::authenticated(server.addr, &load_secret(&server.secret.path))
    }

    /// Connects and authenticates.
    pub fn authenticated(addr: SocketAddr, secret: &[u8]) -> RawClient {
        let mut client = RawClient::connect(addr);
        client.authenticate(secret);
        client
    }

    /// A fresh command id.
    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `exec` with `command` as its body (any bytes), without stdin.
    pub fn exec_bytes(&mut self, command: &[u8], timeout_secs: Option<u64>) -> u32 {
        self.exec_full(command, false, timeout_secs)
    }

    /// Sends an `exec` with every field chosen; returns its id.
    pub fn exec_full(&mut self, command: &[u8], stdin: bool, timeout_secs: Option<u64>) -> u32 {
        let id = self.next_id();
        let exec = Message::Exec {
            id,
            stdin,
            timeout_secs,
        };
        self.send(&exec, command).expect("send exec");
        id
    }

    /// Sends `exec` with `command`, with stdin to follow from [`RawClient::send_stdin`].
    pub fn exec_with_stdin(&mut self, command: &str) -> u32 {
        let id = self.next_id();
        let exec = Message::Exec {
            id,
            stdin: true,
            timeout_secs: None,
        };
        self.send(&exec, command.as_bytes()).expect("send exec");
        id
    }

    /// Sends `signal` for command `id`.
    pub fn send_signal(&mut self, id: u32, signal: SignalName) -> io::Result<()> {
        self.send(&Message::Signal { id, signal }, b"")
    }

    /// Sends bytes to command `id`'s stdin (keep it small: the window is not tracked here).
    pub fn send_stdin(&mut self, id: u32, bytes: &[u8]) -> io::Result<()> {
        self.send(&Message::Stdin { id }, bytes)
    }

    /// Reads stdout of command `id` until it contains `needle`; returns what was read.
    #[track_caller]
    pub fn read_stdout_until(&mut self, id: u32, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while !String::from_utf8_lossy(&out).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(frame) => match frame.message {
                    Message::Stdout { id: of } if of == id => out.extend(frame.body),
                    Message::Stderr { .. } | Message::StdinAck { .. } => {}
                    other => panic!("unexpected {other:?} while waiting for {needle:?}"),
                },
                Err(e) => panic!(
                    "waiting for {needle:?}: {e:?}; got {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads frames until an `error` frame, which it returns as `(code, fatal, message)`.
    /// Output and exit frames on the way are skipped.
    #[track_caller]
    pub fn expect_error(&mut self, timeout: Duration) -> (ErrorCode, bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(Frame {
                    message:
                        Message::Error {
                            code,
                            fatal,
                            message,
                            ..
                        },
                    ..
                }) => return (code, fatal, message),
                Ok(_) => {}
                Err(e) => panic!("expected an error frame, got {e:?}"),
            }
        }
    }

    /// Asserts that the next frame is a `stdin_ack` of `bytes` for command `id`.
    #[track_caller]
    pub fn expect_stdin_ack(&mut self, id: u32, bytes: u64, timeout: Duration) {
        match self.read_frame(timeout).expect("a frame").message {
            Message::StdinAck {
                id: of,
                bytes: acked,
            } => assert_eq!((of, acked), (id, bytes)),
            other => panic!("expected stdin_ack, got {other:?}"),
        }
    }

    /// Asserts the server sends an error with `code` and then closes the connection.
    #[track_caller]
    pub fn expect_fatal(&mut self, code: ErrorCode, timeout: Duration) {
        let (got, fatal, message) = self.expect_error(timeout);
        assert_eq!(got, code, "wrong error code; message: {message}");
        assert!(fatal, "{code:?} should be fatal");
        self.expect_closed(Duration::from_secs(10));
    }

    /// Asserts the server closes the connection (after any frames) within `timeout`.
    #[track_caller]
    pub fn expect_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(_) => {}
                Err(ReadError::Closed) => return,
                Err(ReadError::Decode(_)) => return, // the stream is unusable either way
                Err(ReadError::Timeout) => panic!("the server did not close within {timeout:?}"),
            }
        }
    }

    /// Runs `command` and collects `(stdout, stderr, status)`.
    #[track_caller]
    pub fn run(
        &mut self,
        command: &str,
        timeout_secs: Option<u64>,
    ) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let id = self.exec_bytes(command.as_bytes(), timeout_secs);
        self.collect(id, Duration::from_secs(60))
    }

    /// Collects the output and exit of command `id`.
    #[track_caller]
    pub fn collect(&mut self, id: u32, timeout: Duration) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let deadline = Instant::now() + timeout;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(frame) => match frame.message {
                    Message::Stdout { id: of } if of == id => out.extend(frame.body),
                    Message::Stderr { id: of } if of == id => err.extend(frame.body),
                    Message::Exit { id: of, status, .. } if of == id => return (out, err, status),
                    Message::StdinAck { .. } => {}
                    other => panic!("unexpected {other:?} while running command {id}"),
                },
                Err(e) => panic!("command {id}: {e:?}"),
            }
        }
    }
}
