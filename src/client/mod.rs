//! The thin client: a blocking connection that authenticates, runs commands and hands their
//! output to a sink as it arrives.
//!
//! A client needs no event loop: it does one thing at a time (wait for the next frame), so plain
//! blocking `std::net` is the clearest tool. Frames are sent from other threads too (stdin
//! forwarding, Ctrl-C), which share the sending half through a mutex (`sender.rs`), because
//! every frame's tag depends on the count of frames sent before it; two more threads only
//! watch (the connection while the prompt waits for a line, and termination signals).

pub mod console;
pub mod interrupt;
pub mod prompt;
pub mod sender;
pub mod stats;
pub mod stdio;
#[cfg(unix)]
pub mod terminal;
pub mod trace;
#[cfg(unix)]
pub mod watch;

use std::fmt;
#[cfg(not(unix))]
use std::io::Write;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::debug;

use crate::auth::{self, FrameMac, Role, SessionKeys};
use crate::protocol::frame::{FrameRef, MAX_BODY_LEN, MAX_CHUNK};
use crate::protocol::message::{Bytes32, PROTOCOL_NAME, STDIN_WINDOW};
use crate::protocol::{
    ErrorCode, ExitStatus, Frame, FrameDecoder, FrameError, Message, PROTOCOL_VERSION,
};
use crate::tcp;
pub use sender::SharedSender;
use trace::{ReadPacing, ReadTrace, TraceEvent};

/// Port used when an address names only a host.
pub const DEFAULT_PORT: u16 = 9999;
/// Host used when none is given: the local machine.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Address used when none is given: the local machine.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9999";
/// How long each connection attempt may take, and how long the whole handshake may take once
/// connected, from `hello` to `welcome` however slowly the server's bytes trickle in (a server
/// that accepts and then says nothing is not waited for forever; see `Session::handshake_deadline`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client waits for the frame in the way (the stdin thread's) to make progress,
/// when it tells the server of a tampered frame, before it leaves without telling.
const SENDER_WAIT_ON_TAMPERING: Duration = Duration::from_millis(200);
/// Bytes asked of the socket per `read`: a few frames' worth, fewer system calls when output
/// streams in.
const READ_SIZE: usize = trace::MAX_TRACED_READ;

/// Everything that can stop the client. Each is reported on one line; `rcmd run` exits 255 for
/// all but a broken pipe on its own output, which ends it as SIGPIPE would (141), and the
/// interactive prompt goes on after a [`ClientError::Refused`] command.
#[derive(Debug)]
pub enum ClientError {
    /// The address does not resolve.
    BadAddress(String, String),
    /// The address is not written as an address can be (`[::1` without its `]`).
    MalformedAddress(String, &'static str),
    /// No TCP connection could be made.
    Connect(String, io::Error),
    /// The peer did not speak rcmd.
    NotRcmd(String),
    /// The peer accepted the connection but did not complete the handshake within
    /// its 10 s: a busy or stuck server, or something that never talks first.
    HandshakeTimeout,
    /// The server speaks another protocol version.
    VersionMismatch { server: u32 },
    /// The server rejected our proof: we do not have its secret.
    AuthFailed,
    /// The server's proof did not verify: it does not have our secret (or is an impostor).
    ServerNotAuthenticated,
    /// A frame from the server failed its integrity check.
    Integrity,
    /// The server sent a fatal error.
    Server { code: ErrorCode, message: String },
    /// The server refused a command but the connection is still usable.
    Refused { code: ErrorCode, message: String },
    /// The server sent something the protocol does not allow here.
    Protocol(String),
    /// The connection closed unexpectedly.
    Disconnected,
    /// The connection failed under us: the server's host stopped answering (keepalive or
    /// retransmission gave up: `Connection timed out`), or became unreachable.
    ConnectionLost(io::Error),
    /// Our own stdout or stderr failed (a closed pipe, a full disk).
    LocalOutput(io::Error),
    /// Our own stdin could not be read (the script of `connect`).
    LocalInput(io::Error),
    /// The terminal of `connect`'s prompt could not be set up or read.
    Terminal(io::Error),
    /// Any other network error.
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadAddress(addr, why) => write!(f, "cannot resolve {addr}: {why}"),
            ClientError::MalformedAddress(addr, why) => {
                write!(f, "malformed address {addr}: {why}")
            }
            ClientError::Connect(addr, e) => write!(f, "cannot connect to {addr}: {e}"),
            ClientError::NotRcmd(why) => {
                write!(f, "the server does not speak the rcmd protocol: {why}")
            }
            ClientError::HandshakeTimeout => write!(
                f,
                "the server did not answer the handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
            ClientError::VersionMismatch { server } => write!(
                f,
                "protocol version mismatch: the server speaks version {server}, this client version {PROTOCOL_VERSION}"
            ),
            ClientError::AuthFailed => {
                write!(f, "authentication failed: the server rejected our secret")
            }
            ClientError::ServerNotAuthenticated => write!(
                f,
                "authentication failed: the server could not prove it knows the secret (wrong server or different secret)"
            ),
            ClientError::Integrity => write!(
                f,
                "integrity error: a frame from the server was altered in transit; connection dropped"
            ),
            ClientError::Server { code, message } => {
                write!(f, "server error ({}): {message}", code.as_str())
            }
            ClientError::Refused { message, .. } => write!(f, "{message}"),
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
            ClientError::Disconnected => write!(f, "connection closed by the server"),
            ClientError::ConnectionLost(e) => write!(f, "connection to the server lost: {e}"),
            ClientError::LocalOutput(e) => write!(f, "cannot write output: {e}"),
            ClientError::LocalInput(e) => write!(f, "cannot read the script on stdin: {e}"),
            ClientError::Terminal(e) => write!(f, "cannot read from the terminal: {e}"),
            ClientError::Io(e) => write!(f, "network error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<FrameError> for ClientError {
    fn from(error: FrameError) -> ClientError {
        match error {
            FrameError::Integrity => ClientError::Integrity,
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// Resolves `host`, `host:port`, `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`; a missing port is
/// 9999.
///
/// # Errors
/// [`ClientError::BadAddress`] when the name does not resolve, [`ClientError::MalformedAddress`]
/// for what cannot be an address: an unclosed `[`, text after `]` other than `:PORT`, a port
/// that is not a number from 0 to 65535, a `user@` prefix.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, ClientError> {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, DEFAULT_PORT)]);
    }
    let malformed = |why| Err(ClientError::MalformedAddress(addr.to_owned(), why));
    let has_port = names_a_port(addr)?;
    let host = if has_port {
        let (host, port) = addr.rsplit_once(':').expect("it names a port");
        // 0 too: a server's `--listen host:0` asks for any free port.
        if port.parse::<u16>().is_err() {
            return malformed("the port must be a number from 0 to 65535");
        }
        host
    } else {
        addr
    };
    if host.contains('@') {
        return malformed(
            "rcmd has no user names (commands run as the server's user); write HOST or HOST:PORT",
        );
    }
    let with_port = if has_port {
        addr.to_owned()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    };
    let resolved: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| ClientError::BadAddress(addr.to_owned(), e.to_string()))?
        .collect();
    if resolved.is_empty() {
        return Err(ClientError::BadAddress(
            addr.to_owned(),
            "no addresses".into(),
        ));
    }
    Ok(resolved)
}

/// Whether `addr` (not a bare IP address) ends in `:PORT`.
fn names_a_port(addr: &str) -> Result<bool, ClientError> {
    let malformed = |why| Err(ClientError::MalformedAddress(addr.to_owned(), why));
    match addr.strip_prefix('[').map(|inside| inside.split_once(']')) {
        None => Ok(addr.contains(':')),
        Some(None) => malformed("the [ before an IPv6 address has no closing ]"),
        Some(Some((_, ""))) => Ok(false),
        Some(Some((_, after))) if after.starts_with(':') => Ok(true),
        Some(Some(_)) => malformed("after [IPv6 address] comes :PORT or nothing"),
    }
}

/// The address to connect to, from an optional ADDR and an optional `-p PORT` (as ssh takes
/// it): `host` and 2222 make `host:2222`, `::1` makes `[::1]:2222`, no ADDR the default host.
///
/// # Errors
/// ADDR names a port of its own as well (which one was meant?), or is malformed.
pub fn target_address(addr: Option<&str>, port: Option<u16>) -> Result<String, ClientError> {
    let Some(port) = port else {
        return Ok(addr.unwrap_or(DEFAULT_ADDR).to_owned());
    };
    let host = addr.unwrap_or(DEFAULT_HOST);
    // An IPv6 address without brackets (`::1`, `fe80::1%eth0`): two colons or more.
    if !host.starts_with('[') && host.matches(':').count() >= 2 {
        return Ok(format!("[{host}]:{port}"));
    }
    if names_a_port(host)? {
        return Err(ClientError::MalformedAddress(
            host.to_owned(),
            "it names a port, and -p names another",
        ));
    }
    Ok(format!("{host}:{port}"))
}

/// Where a command's output goes.
pub trait OutputSink {
    /// # Errors
    /// Writing failed; the command is abandoned (which kills it on the server).
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// # Errors
    /// As for `stdout`.
    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The command has ended: what a sink holds back (a character cut at the end of the last
    /// frame) goes out now, so that it does not end up in the next command's output. A sink
    /// that wraps another passes this on.
    ///
    /// # Errors
    /// As for `stdout`.
    fn command_ended(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process's own stdout and stderr. Each frame is written at once, so output appears as
/// the remote command produces it.
///
/// On Unix the bytes go straight to file descriptors 1 and 2: `io::stdout()` is line-buffered,
/// and looking for newlines in every frame cost 7–15% of the client's CPU when streaming.
///
/// A failed write of the command's stderr (other than a closed pipe) does not end the command:
/// its stderr is dropped from then on, as a local program goes on when its diagnostics cannot
/// be written (`2>/dev/full`), and as ssh does. Ending the session there would kill the remote
/// command halfway because a log disk filled up.
pub struct TerminalSink {
    #[cfg(unix)]
    out: std::fs::File,
    #[cfg(unix)]
    err: std::fs::File,
    /// Each stream that is a console, made UTF-8 for it (see [`console`]).
    #[cfg(not(unix))]
    out_console: Option<console::ConsoleText>,
    #[cfg(not(unix))]
    err_console: Option<console::ConsoleText>,
    /// Writing stderr failed: the rest of the command's stderr is dropped.
    stderr_lost: bool,
}

impl TerminalSink {
    /// # Errors
    /// Standard output or error cannot be duplicated (they are closed).
    pub fn new() -> io::Result<TerminalSink> {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            let out = io::stdout().as_fd().try_clone_to_owned()?.into();
            let err = io::stderr().as_fd().try_clone_to_owned()?.into();
            Ok(TerminalSink {
                out,
                err,
                stderr_lost: false,
            })
        }
        #[cfg(not(unix))]
        {
            use std::io::IsTerminal;
            let console = |is: bool| is.then(console::ConsoleText::default);
            Ok(TerminalSink {
                out_console: console(io::stdout().is_terminal()),
                err_console: console(io::stderr().is_terminal()),
                stderr_lost: false,
            })
        }
    }
}

impl OutputSink for TerminalSink {
    #[cfg(unix)]
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        interrupt::write_output(bytes, |part| stdio::write_all(&mut self.out, part))
    }

    #[cfg(unix)]
    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.stderr_lost {
            return Ok(());
        }
        let written = interrupt::write_output(bytes, |part| stdio::write_all(&mut self.err, part));
        self.go_on_without_stderr_unless_closed(written)
    }

    #[cfg(not(unix))]
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_for_windows(&mut io::stdout().lock(), self.out_console.as_mut(), bytes)
    }

    #[cfg(not(unix))]
    fn command_ended(&mut self) -> io::Result<()> {
        // An incomplete character at the end is a U+FFFD, not the start of the next output.
        if let Some(tail) = self.out_console.as_mut().map(console::ConsoleText::finish) {
            self.stdout(tail.as_bytes())?;
        }
        if let Some(tail) = self.err_console.as_mut().map(console::ConsoleText::finish) {
            self.stderr(tail.as_bytes())?;
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.stderr_lost {
            return Ok(());
        }
        let written = write_for_windows(&mut io::stderr().lock(), self.err_console.as_mut(), bytes);
        self.go_on_without_stderr_unless_closed(written)
    }
}

impl TerminalSink {
    /// After a failed write of stderr: a closed pipe still ends the client as SIGPIPE would
    /// end a local program (141); any other failure only drops the rest of stderr (see
    /// [`TerminalSink`]).
    fn go_on_without_stderr_unless_closed(&mut self, written: io::Result<()>) -> io::Result<()> {
        match written {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                self.stderr_lost = true;
                // Said once, on stderr itself: lost if it still fails, but a disk that was
                // full only for a moment keeps a trace of why the command's errors stop here.
                crate::say!(
                    "rcmd: cannot write stderr ({e}); the rest of the command's stderr is dropped"
                );
                Ok(())
            }
            other => other,
        }
    }
}

/// Writes output to one of the process's streams on Windows: made UTF-8 first when the stream
/// is a console (see [`console`]), flushed at once.
#[cfg(not(unix))]
fn write_for_windows(
    out: &mut impl Write,
    console: Option<&mut console::ConsoleText>,
    bytes: &[u8],
) -> io::Result<()> {
    let text = console.map(|console| console.repair(bytes));
    let bytes = text.as_ref().map_or(bytes, |text| text.as_bytes());
    interrupt::write_output(bytes, |part| {
        out.write_all(part)?;
        out.flush()
    })
}

/// How a command's stdin is fed.
pub enum CommandInput {
    /// The command reads an empty stdin.
    None,
    /// Forward everything readable from this source, then end of file.
    Forward(Box<dyn Read + Send>),
}

/// An authenticated connection to a server.
pub struct Session {
    stream: TcpStream,
    decoder: FrameDecoder,
    sender: SharedSender,
    next_id: u32,
    peer: SocketAddr,
    /// Set by [`Session::trace_reads`]: reads paced like the tutorial client's, and reported.
    trace: Option<ReadTrace>,
    /// While the handshake runs: when it must be over. Each read waits at most until then, so
    /// a server trickling bytes cannot stretch the handshake beyond [`HANDSHAKE_TIMEOUT`].
    handshake_deadline: Option<Instant>,
}

impl Session {
    /// Connects to `addr` and runs the mutual handshake with `secret`.
    ///
    /// # Errors
    /// Any [`ClientError`] from resolving to authenticating.
    pub fn connect(addr: &str, secret: &[u8]) -> Result<Session, ClientError> {
        let mut last_error = None;
        let candidates = resolve(addr)?;
        // Port 0 is for servers (any free port); no server listens on it.
        if candidates.iter().any(|candidate| candidate.port() == 0) {
            return Err(ClientError::MalformedAddress(
                addr.to_owned(),
                "port 0 is not a port to connect to",
            ));
        }
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, HANDSHAKE_TIMEOUT) {
                Ok(stream) => return Session::handshake(stream, candidate, secret),
                Err(e) => last_error = Some((candidate, e)),
            }
        }
        let (tried, error) = last_error
            .ok_or_else(|| ClientError::BadAddress(addr.to_owned(), "no addresses".into()))?;
        // Name the port too when the user left it out (`host` means `host:9999`).
        let shown = if tried.to_string() == addr {
            addr.to_owned()
        } else {
            format!("{addr} ({tried})")
        };
        Err(ClientError::Connect(shown, error))
    }

    fn handshake(
        stream: TcpStream,
        peer: SocketAddr,
        secret: &[u8],
    ) -> Result<Session, ClientError> {
        tcp::configure(&stream).map_err(ClientError::Io)?;
        let writer = stream.try_clone().map_err(ClientError::Io)?;
        let mut session = Session {
            stream,
            decoder: FrameDecoder::default(),
            sender: SharedSender::new(writer),
            next_id: 1,
            peer,
            trace: None,
            handshake_deadline: Some(Instant::now() + HANDSHAKE_TIMEOUT),
        };
        // The steps of docs/protocol.md §6.1.
        let server_nonce = session.read_hello()?;
        // Step 4: prove that we know the secret, bound to both nonces.
        let client_nonce = auth::new_nonce();
        let proof = auth::proof(secret, Role::Client, &server_nonce, &client_nonce);
        let auth = Message::Auth {
            version: PROTOCOL_VERSION,
            nonce: Bytes32(client_nonce),
            proof: Bytes32(proof),
        };
        session.send(&auth, b"")?;
        session.read_welcome(secret, &server_nonce, &client_nonce)?;
        // Step 7: from here every frame in each direction carries a tag under its session key.
        let keys = SessionKeys::derive(secret, &server_nonce, &client_nonce);
        session
            .sender
            .start_tagging(FrameMac::new(&keys.client_to_server));
        session
            .decoder
            .start_verifying(FrameMac::new(&keys.server_to_client));
        session.handshake_deadline = None;
        session
            .stream
            .set_read_timeout(None)
            .map_err(ClientError::Io)?;
        debug!("authenticated to {peer}");
        Ok(session)
    }

    /// Step 3 of the handshake (docs/protocol.md §6.1): the server's `hello`, checked to be
    /// rcmd's protocol in this client's version; returns the server's nonce.
    fn read_hello(&mut self) -> Result<[u8; 32], ClientError> {
        let first = match self.read_frame() {
            Ok(frame) => frame.message,
            // The likeliest such server, in a tutorial, is rcmd's own unframed one.
            Err(ClientError::Protocol(why)) => {
                return Err(ClientError::NotRcmd(format!(
                    "{why} (if it is `rcmd serve --framing none`, connect with `--framing none` \
                     too)"
                )));
            }
            Err(e) => return Err(e),
        };
        match first {
            Message::Hello {
                protocol,
                version,
                nonce,
            } => {
                if protocol != PROTOCOL_NAME {
                    return Err(ClientError::NotRcmd(format!(
                        "it calls its protocol {protocol:?}"
                    )));
                }
                if version != PROTOCOL_VERSION {
                    let why = format!("this client speaks protocol version {PROTOCOL_VERSION}");
                    let _ = self.send(&Message::fatal(ErrorCode::VersionMismatch, why), b"");
                    return Err(ClientError::VersionMismatch { server: version });
                }
                Ok(nonce.0)
            }
            // E.g. `too_many_connections`, sent instead of `hello`.
            Message::Error { code, message, .. } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::NotRcmd(format!(
                "it opened with {}",
                other.type_name()
            ))),
        }
    }

    /// Step 6 of the handshake (after sending `auth`): the server's `welcome`, whose proof
    /// shows that the server knows the secret too.
    fn read_welcome(
        &mut self,
        secret: &[u8],
        server_nonce: &[u8; 32],
        client_nonce: &[u8; 32],
    ) -> Result<(), ClientError> {
        match self.read_frame()?.message {
            Message::Welcome { proof } => {
                if auth::verify_proof(secret, Role::Server, server_nonce, client_nonce, &proof.0) {
                    Ok(())
                } else {
                    Err(ClientError::ServerNotAuthenticated)
                }
            }
            Message::Error {
                code: ErrorCode::AuthFailed,
                ..
            } => Err(ClientError::AuthFailed),
            // Including `version_mismatch`: the server's message names both versions.
            Message::Error { code, message, .. } => Err(ClientError::Server { code, message }),
            other => Err(ClientError::Protocol(format!(
                "expected welcome, got {}",
                other.type_name()
            ))),
        }
    }

    /// From now on, reads at most `pacing.recv_size` bytes at a time, as the unframed tutorial
    /// client does, and passes each read and each frame completed to `observer` (see
    /// [`trace`]): the sticky-packet effects on rcmd's own wire, and the framing absorbing them.
    pub fn trace_reads(
        &mut self,
        pacing: ReadPacing,
        observer: Box<dyn FnMut(&TraceEvent<'_>) + Send>,
    ) {
        self.trace = Some(ReadTrace::new(pacing, observer));
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The connection, for watching it between commands (see [`watch`]).
    #[cfg(unix)]
    pub fn connection(&self) -> &TcpStream {
        &self.stream
    }

    /// Why the server ended the session while no command ran: reads what it sent, a fatal
    /// error or the end of the connection, and returns it as the error that ends the session.
    pub fn ending(&mut self) -> ClientError {
        loop {
            match self.read_frame_ref() {
                Err(e) => return e,
                Ok(frame) => {
                    if let Message::Error {
                        fatal: true,
                        code,
                        message,
                        ..
                    } = frame.message
                    {
                        return ClientError::Server { code, message };
                    }
                    // Anything else is a leftover of an earlier command.
                }
            }
        }
    }

    fn send(&self, message: &Message, body: &[u8]) -> Result<(), ClientError> {
        self.sender.send(message, body).map_err(ClientError::Io)
    }

    fn read_frame(&mut self) -> Result<Frame, ClientError> {
        let frame = self.read_frame_ref()?;
        Ok(Frame {
            message: frame.message,
            body: frame.body.to_vec(),
        })
    }

    /// The next frame, its body still in the decoder's buffer: command output goes from there
    /// to the sink without a copy of its own.
    fn read_frame_ref(&mut self) -> Result<FrameRef<'_>, ClientError> {
        let tampered = |error| tell_server_of_tampering(&self.sender, error);
        while !self.decoder.frame_ready().map_err(tampered)? {
            if let Some(deadline) = self.handshake_deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ClientError::HandshakeTimeout);
                }
                self.stream
                    .set_read_timeout(Some(left))
                    .map_err(ClientError::Io)?;
            }
            let max = match &mut self.trace {
                Some(trace) => trace.before_read(&self.stream),
                None => READ_SIZE,
            };
            match self.decoder.read_from(&mut self.stream, max) {
                Ok(0) => return Err(ClientError::Disconnected),
                Ok(n) => {
                    if let Some(trace) = &mut self.trace {
                        let complete = self.decoder.frame_ready().map_err(tampered)?;
                        let next = self.decoder.pending_frame_len();
                        trace.read(n, self.decoder.buffered(), complete, next);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_failure(e, self.handshake_deadline.is_some())),
            }
        }
        // `frame_ready` said a whole frame is buffered, so this is a frame or an error.
        // For the trace only (measured before the frame is taken): its length on the wire and
        // the bytes buffered after it. The untraced path does none of this.
        let extent = self.trace.is_some().then(|| {
            let wire_len = self.decoder.pending_frame_len().unwrap_or(0);
            (wire_len, self.decoder.buffered().saturating_sub(wire_len))
        });
        let frame = self
            .decoder
            .next_frame_ref()
            .map_err(tampered)?
            .ok_or_else(|| {
                ClientError::Protocol("the frame decoder lost a complete frame".into())
            })?;
        debug!("<- {}", frame.message.type_name());
        if let (Some(trace), Some((wire_len, left))) = (&mut self.trace, extent) {
            trace.frame(frame.message.type_name(), frame.body, wire_len, left);
        }
        Ok(frame)
    }

    /// Runs `command` on the server, passing its output to `sink` as it arrives, and returns
    /// how it ended. While it runs, Ctrl-C is forwarded to it (see [`interrupt`]).
    ///
    /// # Errors
    /// [`ClientError::Refused`] if the server refused this command (the session stays
    /// usable); any other error ends the session.
    pub fn run(
        &mut self,
        command: &str,
        input: CommandInput,
        timeout_secs: Option<u64>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExitStatus, ClientError> {
        if command.len() > MAX_BODY_LEN {
            // No frame can carry it. Sent anyway, the server would refuse the frame's length
            // with a fatal `body_too_large` and close the connection: the whole session would
            // end for one command that is too long.
            return Err(ClientError::Refused {
                code: ErrorCode::CommandTooLong,
                message: format!(
                    "the command is {} bytes; the limit is {MAX_BODY_LEN}, the most one frame \
                     carries",
                    command.len()
                ),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        if let Some(trace) = &mut self.trace {
            trace.answer_expected();
        }
        let with_stdin = matches!(input, CommandInput::Forward(_));
        self.send(
            &Message::Exec {
                id,
                stdin: with_stdin,
                timeout_secs,
            },
            command.as_bytes(),
        )?;
        let window = Arc::new(StdinWindow::default());
        if let CommandInput::Forward(source) = input {
            forward_stdin(source, self.sender.clone(), window.clone(), id);
        }
        let _interrupt_guard = interrupt::forward_to(self.sender.clone(), id);
        loop {
            let frame = self.read_frame_ref()?;
            match frame.message {
                Message::Stdout { id: of } if of == id => {
                    sink.stdout(frame.body).map_err(ClientError::LocalOutput)?
                }
                Message::Stderr { id: of } if of == id => {
                    sink.stderr(frame.body).map_err(ClientError::LocalOutput)?
                }
                Message::Exit { id: of, status, .. } if of == id => {
                    sink.command_ended().map_err(ClientError::LocalOutput)?;
                    return Ok(status);
                }
                Message::StdinAck { id: of, bytes } if of == id => window.release(bytes),
                Message::Error {
                    fatal: true,
                    code,
                    message,
                    ..
                } => return Err(ClientError::Server { code, message }),
                Message::Error {
                    id: Some(of),
                    code,
                    message,
                    ..
                } if of == id => {
                    return Err(ClientError::Refused { code, message });
                }
                // Leftovers of an earlier command are not ours to print.
                Message::Stdout { .. }
                | Message::Stderr { .. }
                | Message::Exit { .. }
                | Message::Error { .. }
                | Message::StdinAck { .. } => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} from the server",
                        other.type_name()
                    )));
                }
            }
        }
    }
}

/// A frame from the server failed to decode. If it failed its tag check (after the handshake,
/// every decoding failure is reported so, docs/protocol.md §4.6), the client tells the server
/// why it leaves, with a fatal `integrity` error as the server would send: the server's log then
/// says the session ended over a tampered frame, not merely that the client went away.
fn tell_server_of_tampering(sender: &SharedSender, error: FrameError) -> ClientError {
    if matches!(error, FrameError::Integrity) {
        let why = Message::fatal(
            ErrorCode::Integrity,
            "a frame from the server failed its integrity check",
        );
        // Best effort: the connection is about to be closed anyway.
        let _ = sender.send_urgent(&why, SENDER_WAIT_ON_TAMPERING);
    }
    error.into()
}

/// What a failed read of the connection means. During the handshake a read that runs out of
/// time is the handshake's deadline; after it the socket has no read timeout, so `TimedOut` is
/// the kernel giving up on a peer that stopped answering (keepalive, `TCP_USER_TIMEOUT`).
fn read_failure(error: io::Error, handshaking: bool) -> ClientError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if handshaking => {
            ClientError::HandshakeTimeout
        }
        io::ErrorKind::ConnectionReset => ClientError::Disconnected,
        _ => ClientError::ConnectionLost(error),
    }
}

/// Stdin flow control: how many bytes the server still accepts before it acknowledges more.
struct StdinWindow {
    available: Mutex<usize>,
    changed: Condvar,
}

impl Default for StdinWindow {
    fn default() -> Self {
        StdinWindow {
            available: Mutex::new(STDIN_WINDOW),
            changed: Condvar::new(),
        }
    }
}

impl StdinWindow {
    /// Waits until at least one byte may be sent, and takes up to `wanted` bytes of the window.
    fn acquire(&self, wanted: usize) -> usize {
        let mut available = self.available.lock().expect("window lock");
        while *available == 0 {
            available = self.changed.wait(available).expect("window lock");
        }
        let granted = wanted.min(*available);
        *available -= granted;
        granted
    }

    /// `bytes` were consumed (by the server, or not used after all): they may be sent again.
    fn release(&self, bytes: u64) {
        let mut available = self.available.lock().expect("window lock");
        let released = usize::try_from(bytes).unwrap_or(usize::MAX);
        *available = available.saturating_add(released).min(STDIN_WINDOW);
        self.changed.notify_all();
    }
}

/// Copies `source` to the command's stdin on a thread of its own, then signals end of file.
/// A thread because reading a pipe or file without blocking is not portable; it blocks only
/// itself. It never has more than [`STDIN_WINDOW`] bytes unacknowledged. If the command ends
/// first the thread is abandoned; the server ignores stale stdin.
fn forward_stdin(
    mut source: Box<dyn Read + Send>,
    sender: SharedSender,
    window: Arc<StdinWindow>,
    id: u32,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0; MAX_CHUNK];
        loop {
            let wanted = window.acquire(buf.len());
            let n = match source.read(&mut buf[..wanted]) {
                Ok(0) => break,
                Ok(n) => {
                    window.release((wanted - n) as u64); // give back what was not used
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    window.release(wanted as u64);
                    continue;
                }
                Err(e) => {
                    // The command's input ends here; say why, as `cat` would, rather than let
                    // a cut-short input pass for a whole one.
                    crate::say!("rcmd: cannot read stdin: {e}; the command's input ends here");
                    break;
                }
            };
            if sender.send_bulk(&Message::Stdin { id }, &buf[..n]).is_err() {
                return;
            }
        }
        let _ = sender.send_bulk(&Message::StdinClose { id }, b"");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_times_out_is_the_handshake_only_during_the_handshake() {
        let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
        assert!(matches!(
            read_failure(timed_out(), true),
            ClientError::HandshakeTimeout
        ));
        assert!(matches!(
            read_failure(io::Error::from(io::ErrorKind::WouldBlock), true),
            ClientError::HandshakeTimeout
        ));
        // Keepalive or TCP_USER_TIMEOUT giving up on a live session: the connection was lost.
        let lost = read_failure(timed_out(), false);
        assert!(matches!(lost, ClientError::ConnectionLost(_)), "{lost}");
        assert!(
            lost.to_string()
                .starts_with("connection to the server lost: "),
            "{lost}"
        );
        let unreachable = read_failure(io::Error::from(io::ErrorKind::HostUnreachable), false);
        assert!(matches!(unreachable, ClientError::ConnectionLost(_)));
        assert!(matches!(
            read_failure(io::Error::from(io::ErrorKind::ConnectionReset), false),
            ClientError::Disconnected
        ));
    }

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(
            resolve("127.0.0.1").unwrap(),
            vec!["127.0.0.1:9999".parse().unwrap()]
        );
        assert_eq!(resolve("::1").unwrap(), vec!["[::1]:9999".parse().unwrap()]);
        assert_eq!(
            resolve("[::1]:80").unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        assert_eq!(
            resolve("127.0.0.1:7").unwrap(),
            vec!["127.0.0.1:7".parse().unwrap()]
        );
        assert!(
            resolve("localhost")
                .unwrap()
                .iter()
                .all(|a| a.port() == DEFAULT_PORT)
        );
        assert!(matches!(
            resolve("bad host name:x"),
            Err(ClientError::MalformedAddress(..))
        ));
        // An empty host does not resolve on Linux, with no DNS query made (this test must
        // not depend on DNS); Windows resolves it to the local machine.
        #[cfg(target_os = "linux")]
        assert!(matches!(resolve(""), Err(ClientError::BadAddress(..))));
        assert_eq!(
            resolve("[::1]").unwrap(),
            vec![SocketAddr::from((
                std::net::Ipv6Addr::LOCALHOST,
                DEFAULT_PORT
            ))]
        );
        assert_eq!(
            resolve("[::1]:7").unwrap(),
            vec!["[::1]:7".parse().unwrap()]
        );
        assert_eq!(
            resolve("[::1").unwrap_err().to_string(),
            "malformed address [::1: the [ before an IPv6 address has no closing ]"
        );
        assert!(matches!(
            resolve("[::1]x"),
            Err(ClientError::MalformedAddress(..))
        ));
        // Said as what it is, not as a port that is not a number.
        for after_bracket in ["[::1]x", "[::1]x:80"] {
            assert_eq!(
                resolve(after_bracket).unwrap_err().to_string(),
                format!(
                    "malformed address {after_bracket}: after [IPv6 address] comes :PORT or nothing"
                )
            );
        }
        for bad_port in ["127.0.0.1:99999", "localhost:ssh", "[::1]:-1", "host:"] {
            assert!(
                resolve(bad_port)
                    .unwrap_err()
                    .to_string()
                    .ends_with("the port must be a number from 0 to 65535"),
                "{bad_port}"
            );
        }
        for with_user in ["root@127.0.0.1", "root@localhost:22"] {
            assert!(
                resolve(with_user)
                    .unwrap_err()
                    .to_string()
                    .contains("rcmd has no user names"),
                "{with_user}"
            );
        }
    }

    #[test]
    fn a_port_given_with_p_goes_into_the_address() {
        let target = |addr, port| target_address(addr, port).map_err(|e| e.to_string());
        assert_eq!(target(None, None).unwrap(), DEFAULT_ADDR);
        assert_eq!(target(Some("host"), None).unwrap(), "host");
        assert_eq!(target(Some("host:7"), None).unwrap(), "host:7");
        assert_eq!(target(None, Some(2222)).unwrap(), "127.0.0.1:2222");
        assert_eq!(target(Some("host"), Some(2222)).unwrap(), "host:2222");
        assert_eq!(target(Some("::1"), Some(2222)).unwrap(), "[::1]:2222");
        assert_eq!(target(Some("[::1]"), Some(2222)).unwrap(), "[::1]:2222");
        assert_eq!(
            target(Some("fe80::1%lo"), Some(22)).unwrap(),
            "[fe80::1%lo]:22"
        );
        assert_eq!(
            target(Some("host:7"), Some(2222)).unwrap_err(),
            "malformed address host:7: it names a port, and -p names another"
        );
    }
}
