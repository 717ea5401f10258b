//! The unframed client: send a command, make ONE read, show what it returned.
//!
//! This is the classic tutorial client (`s.send(cmd); data = s.recv(1024); print(data)`) with
//! one change that makes its behaviour reproducible: before its single read it waits until the
//! answer has started to arrive, then a little longer ([`ReadOptions::read_delay`]). Without
//! that wait, what one read returns depends on how fast the command ran and how the scheduler
//! woke the client, and the effects come and go. With it:
//!
//! - an answer longer than [`ReadOptions::recv_size`] always comes back cut at that size, and
//!   its remainder always starts the next command's "answer" (type 1);
//! - the server's two writes (stderr, then stdout) are both waiting when the client reads, so
//!   they always come back merged in one read (type 2).
//!
//! Waiting for the answer to start uses `peek`, which looks at the receive buffer without
//! taking anything, so the one real read still sees every byte.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use super::{CHALLENGE_LEN, StickyError};
use crate::auth;
use crate::client::prompt::{self, Line};
use crate::client::trace::ReadPacing;

/// The read size of the tutorials: `recv(1024)`.
pub const DEFAULT_RECV_SIZE: usize = 1024;
/// The largest `--recv-size` accepted, so the read buffer stays a sane allocation.
pub const MAX_RECV_SIZE: usize = 16 * 1024 * 1024;
/// The default wait between the answer starting to arrive and the read.
pub const DEFAULT_READ_DELAY: Duration = Duration::from_millis(200);
/// How long to wait for an answer to start before giving up on this command.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of each connection attempt and of each read of the server's challenge: per read,
/// not one deadline for the whole handshake (this is the tutorial client; rcmd's own client
/// uses one deadline, `client::HANDSHAKE_TIMEOUT`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the client reads each answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// The most bytes one read may return (the `1024` of `recv(1024)`).
    pub recv_size: usize,
    /// How long to wait, once the answer has started to arrive, before reading.
    pub read_delay: Duration,
    /// How long to wait for the answer to start at all.
    pub answer_timeout: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            recv_size: DEFAULT_RECV_SIZE,
            read_delay: DEFAULT_READ_DELAY,
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
        }
    }
}

impl ReadOptions {
    /// The same reads for rcmd's framed client, which shows what its decoder makes of them.
    pub fn pacing(&self) -> ReadPacing {
        ReadPacing {
            recv_size: self.recv_size,
            read_delay: self.read_delay,
        }
    }
}

/// What the one read per command found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The bytes one read returned: never more than `recv_size`, never known to be "the answer".
    Data(Vec<u8>),
    /// Nothing arrived within the answer timeout. A command that prints nothing looks exactly
    /// like a slow one: without framing there is no way to tell them apart.
    NothingArrived,
}

/// A connection to an unframed server.
pub struct UnframedClient {
    stream: TcpStream,
    options: ReadOptions,
    buf: Vec<u8>,
    reads: usize,
    /// Whether the handshake was made; if so, a close before any answer means a rejection.
    authenticated: bool,
}

impl UnframedClient {
    /// Connects to `addr` and, if `secret` is given, answers the server's challenge.
    ///
    /// # Errors
    /// The address does not resolve, no connection could be made, or the handshake failed.
    pub fn connect(
        addr: &str,
        secret: Option<&[u8]>,
        options: ReadOptions,
    ) -> Result<UnframedClient, StickyError> {
        let candidates =
            crate::client::resolve(addr).map_err(|e| StickyError::BadAddress(e.to_string()))?;
        let mut last_error = None;
        for candidate in candidates {
            match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
                Ok(stream) => return UnframedClient::start(stream, secret, options),
                Err(e) => last_error = Some(e),
            }
        }
        Err(StickyError::Connect(
            addr.to_owned(),
            last_error.unwrap_or_else(|| io::Error::other("no address to try")),
        ))
    }

    /// Wraps a connected stream, answering the challenge if `secret` is given.
    ///
    /// # Errors
    /// The handshake failed.
    pub fn start(
        mut stream: TcpStream,
        secret: Option<&[u8]>,
        options: ReadOptions,
    ) -> Result<UnframedClient, StickyError> {
        if let Some(secret) = secret {
            answer_challenge(&mut stream, secret)?;
        }
        let options = ReadOptions {
            recv_size: options.recv_size.clamp(1, MAX_RECV_SIZE),
            ..options
        };
        Ok(UnframedClient {
            stream,
            options,
            buf: vec![0; options.recv_size],
            reads: 0,
            authenticated: secret.is_some(),
        })
    }

    /// The server's address.
    pub fn peer(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// Our own address (the server sees it as the peer).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// How many reads have returned data so far.
    pub fn reads(&self) -> usize {
        self.reads
    }

    /// The read options in use.
    pub fn options(&self) -> ReadOptions {
        self.options
    }

    /// Sends `command` as plain bytes and makes one read of at most `recv_size` bytes.
    ///
    /// # Errors
    /// [`StickyError::Closed`] if the server closed the connection; network errors.
    pub fn exchange(&mut self, command: &str) -> Result<ReadOutcome, StickyError> {
        let outcome = self.send(command).and_then(|()| self.read_once());
        match outcome {
            // The raw handshake has no "welcome": a server that rejects our proof just closes,
            // and we learn of it here, at the first command.
            Err(StickyError::Closed) if self.authenticated && self.reads == 0 => {
                Err(StickyError::Rejected)
            }
            other => other,
        }
    }

    /// Sends `command` as plain bytes, with no length and no line ending (like the tutorial
    /// client's `s.send(cmd.encode())`).
    ///
    /// # Errors
    /// Network errors.
    pub fn send(&mut self, command: &str) -> Result<(), StickyError> {
        self.stream
            .write_all(command.as_bytes())
            .map_err(closed_or_io)
    }

    /// Waits for bytes to arrive, then for [`ReadOptions::read_delay`], then makes one read.
    ///
    /// # Errors
    /// [`StickyError::Closed`] if the server closed the connection; network errors.
    pub fn read_once(&mut self) -> Result<ReadOutcome, StickyError> {
        if !self.wait_for_bytes()? {
            return Ok(ReadOutcome::NothingArrived);
        }
        // The pause that makes the effects certain: by now an answer of a few KiB on a quick
        // network has arrived whole (both writes of it), so the read takes what the buffer
        // holds, up to recv_size, rather than whatever happened to be there first.
        thread::sleep(self.options.read_delay);
        loop {
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(StickyError::Closed),
                Ok(n) => {
                    self.reads += 1;
                    return Ok(ReadOutcome::Data(self.buf[..n].to_vec()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(closed_or_io(e)),
            }
        }
    }

    /// Whether bytes are waiting (true) or the answer timeout passed first (false).
    fn wait_for_bytes(&mut self) -> Result<bool, StickyError> {
        self.stream
            .set_read_timeout(Some(self.options.answer_timeout))?;
        let mut probe = [0u8; 1];
        loop {
            match self.stream.peek(&mut probe) {
                Ok(0) => return Err(StickyError::Closed),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(closed_or_io(e)),
            }
        }
    }
}

fn closed_or_io(e: io::Error) -> StickyError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => StickyError::Closed,
        _ => StickyError::Io(e),
    }
}

/// The client's half of the raw handshake: read the 32-byte nonce, send back its HMAC.
fn answer_challenge(stream: &mut TcpStream, secret: &[u8]) -> Result<(), StickyError> {
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut nonce = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut nonce).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StickyError::Handshake(
            "the server closed the connection before sending its 32-byte challenge".into(),
        ),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StickyError::Handshake(
            "no 32-byte challenge from the server (is it `rcmd serve --framing none --insecure-no-auth`? then connect with --insecure-no-auth)".into(),
        ),
        _ => StickyError::Io(e),
    })?;
    if looks_like_a_frame(&nonce) {
        return Err(StickyError::FramedServer);
    }
    stream.write_all(&auth::tutorial_proof(secret, &nonce))?;
    Ok(())
}

/// Whether 32 bytes look like the start of an rcmd frame (a small big-endian length, then a
/// JSON object) rather than a random nonce: then the server is a framed one.
fn looks_like_a_frame(bytes: &[u8; CHALLENGE_LEN]) -> bool {
    let header_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let max = crate::protocol::frame::MAX_HEADER_LEN as u32;
    (1..=max).contains(&header_len) && bytes[4..].starts_with(br#"{"type":"hello""#)
}

/// The line printed before each read's bytes: `[read 3: 1024 bytes]`.
///
/// The byte count makes the client's output self-delimiting (the reader of this text knows
/// exactly how many bytes follow): framing, again.
pub fn read_header(number: usize, len: usize) -> String {
    format!("[read {number}: {len} bytes]")
}

/// Runs commands from `input` until end of input or `exit`, printing each read to `out`.
/// Returns the status to leave with: `exit N`'s N, as at the framed prompt; otherwise 0, since
/// the unframed wire carries no exit statuses.
///
/// Each read is printed as its [`read_header`] line, then its bytes exactly as they arrived,
/// then a newline if they did not end with one (so the next header starts on its own line).
/// Notes for a human (nothing arrived) go to `notes`.
///
/// # Errors
/// The connection closed or failed, or `out` could not be written.
pub fn run_prompt(
    client: &mut UnframedClient,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    notes: &mut dyn Write,
    interactive: bool,
) -> Result<i32, StickyError> {
    let mut line = String::new();
    loop {
        if interactive {
            write!(notes, "{}", prompt::PROMPT).map_err(StickyError::LocalIo)?;
            notes.flush().map_err(StickyError::LocalIo)?;
        }
        line.clear();
        if input.read_line(&mut line).map_err(StickyError::LocalIo)? == 0 {
            return Ok(0);
        }
        let command = match prompt::classify(&line) {
            Line::Empty => continue,
            Line::Quit(status) => return Ok(status.unwrap_or(0)),
            Line::BadExit(word) => {
                writeln!(notes, "{}", prompt::bad_exit_message(word))
                    .map_err(StickyError::LocalIo)?;
                return Ok(2);
            }
            Line::Command(command) => command,
        };
        let shown = match client.exchange(command)? {
            ReadOutcome::Data(bytes) => print_read(out, client.reads(), &bytes),
            ReadOutcome::NothingArrived => writeln!(
                notes,
                "rcmd: nothing arrived within {} s. The command may print nothing, or still be \
                 running: without framing the client cannot tell which.",
                client.options().answer_timeout.as_secs()
            ),
        };
        shown.map_err(StickyError::LocalIo)?;
    }
}

fn print_read(out: &mut dyn Write, number: usize, bytes: &[u8]) -> io::Result<()> {
    writeln!(out, "{}", read_header(number, bytes.len()))?;
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        writeln!(out)?;
    }
    out.flush()
}

/// Connects and runs the prompt on the process's stdin and stdout: `rcmd connect --framing
/// none`.
///
/// # Errors
/// As [`UnframedClient::connect`] and [`run_prompt`].
pub fn connect_and_prompt(
    addr: &str,
    secret: Option<&[u8]>,
    options: ReadOptions,
) -> Result<i32, StickyError> {
    let mut client = UnframedClient::connect(addr, secret, options)?;
    let interactive = io::stdin().is_terminal();
    if interactive {
        crate::say!(
            "connected to {addr} WITHOUT framing: each command gets one read of at most {} bytes. \
             `exit` or Ctrl-D to leave.",
            options.recv_size
        );
    }
    run_prompt(
        &mut client,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        &mut io::stderr(),
        interactive,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{Bytes32, PROTOCOL_NAME, PROTOCOL_VERSION};
    use crate::protocol::{FrameEncoder, Message};

    #[test]
    fn a_framed_hello_is_recognised_and_random_bytes_are_not() {
        let mut frame = Vec::new();
        FrameEncoder::new().encode(
            &Message::Hello {
                protocol: PROTOCOL_NAME.into(),
                version: PROTOCOL_VERSION,
                nonce: Bytes32([0; 32]),
            },
            b"",
            &mut frame,
        );
        let first: [u8; 32] = frame[..32].try_into().unwrap();
        assert!(looks_like_a_frame(&first));
        assert!(!looks_like_a_frame(&auth::new_nonce()));
        assert!(!looks_like_a_frame(&[0u8; 32]));
    }

    #[test]
    fn reads_are_printed_with_their_length_and_on_their_own_lines() {
        let mut out = Vec::new();
        print_read(&mut out, 1, b"err\nout\n").unwrap();
        print_read(&mut out, 2, b"no newline").unwrap();
        assert_eq!(
            out,
            b"[read 1: 8 bytes]\nerr\nout\n[read 2: 10 bytes]\nno newline\n"
        );
    }
}
