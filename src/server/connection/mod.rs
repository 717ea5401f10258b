//! One client connection: its state machine, its buffers and the command it is running.
//!
//! ```text
//!  accept ──► Handshake ──auth ok──► Ready ──exec──► Running
//!                                      ▲                │
//!                                      └───exit sent────┘
//!
//!  any state ──(a fatal error, a timeout, the server shutting down)──► Closing:
//!        handle no more frames, flush the last ones, FIN, read and discard until the
//!        client closes (at most 2 s)
//!  any state ──(the client closed its socket, a socket error)──► dropped at once
//! ```
//!
//! Leaving `Running` any way but by `exit sent` kills the command's process tree if its
//! process has not exited yet (one still being started off the loop is killed when it arrives).
//!
//! The event loop calls [`Connection::drive`] whenever anything of this connection is ready
//! (its socket or one of its command's pipes). `drive` reads and handles client frames, moves
//! command output into frames, feeds the command's stdin and writes to the socket. All I/O is
//! non-blocking, and the loop's readiness is edge-triggered: an event says a source *became*
//! ready, once. If we stopped reading while bytes remained, nothing would change, so no new
//! event would come: those bytes would wait until the peer happened to send more, and a client
//! waiting for our reply never would. So the connection records the event (`socket_ready`,
//! the pipes' `output_ready`) and treats the source as ready until a read returns
//! `WouldBlock`; only the next event ([`Connection::on_ready`]) makes it ready again, and a
//! command's pipes are read once more after its exit. The work of one `drive` is bounded (one socket read and at most
//! `FRAMES_PER_ROUND` frames per round, `MAX_ROUNDS` rounds), so that no client keeps the
//! loop to itself; a connection with work left returns [`Drive::MoreWork`] and is driven again
//! on the next turn without waiting for an event.
//!
//! Running the command itself (starting it, its stdin, its output, its `exit`) is in
//! `command.rs`.
//!
//! Backpressure: output is read from the command's pipes only while fewer than
//! [`OUTBOUND_CAP`] bytes wait for the socket. A slow client therefore makes the pipes fill up,
//! which blocks the command in `write`, and the server's memory stays bounded. The other way,
//! a client may have at most [`STDIN_WINDOW`](crate::protocol::message::STDIN_WINDOW) stdin bytes unacknowledged (`stdin_ack`), so the
//! stdin buffer is bounded too, and stdin never makes the server stop reading the client: a
//! Ctrl-C always gets through, even to a command that reads no stdin. Only a client that
//! leaves `OUTBOUND_HARD_CAP` or more of replies unread is not read until it catches up.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::ServerConfig;
use super::children::ChildTable;
use super::deadlines::{DeadlineKind, Deadlines};
use super::process::OutputStream;
use super::spawner::Spawner;
use crate::auth::{self, FrameMac, Role, SessionKeys};
use crate::logging::Quoted;
use crate::protocol::message::{Bytes32, PROTOCOL_NAME, clip};
use crate::protocol::{
    ErrorCode, ExitStatus, Frame, FrameDecoder, FrameEncoder, Message, PROTOCOL_VERSION,
};

mod command;

use command::{RunningCommand, mark_output_ready_at_exit};

/// Identifies a connection for its whole life; never reused, so a late event or deadline for a
/// closed connection cannot hit a new one.
pub type ConnId = u64;

/// Output bytes that may wait for a slow client before the command's pipes stop being read.
pub const OUTBOUND_CAP: usize = 256 * 1024;
/// Queued replies past which the client is not read from until it reads what we sent. Command
/// output alone stays below this (output is read only while under [`OUTBOUND_CAP`], and one
/// chunk adds at most three times [`MAX_CHUNK`](crate::protocol::frame::MAX_CHUNK)); only a client flooding requests gets here.
const OUTBOUND_HARD_CAP: usize = 2 * OUTBOUND_CAP;
/// A closing connection's last frames get this long to reach the client.
const CLOSING_GRACE: Duration = Duration::from_secs(2);
/// Rounds of progress per call to `drive` before giving other connections a turn.
const MAX_ROUNDS: usize = 16;
/// Client frames handled per round, so that a turn's work is bounded however small the frames.
const FRAMES_PER_ROUND: usize = 64;
/// How much of a client's `error` message goes into the log. The message is the client's own
/// text, up to a 16 KiB header of it; unclipped, anyone able to connect could write 16 KiB of
/// log per connection without ever authenticating.
const LOGGED_CLIENT_MESSAGE_LEN: usize = 200;

/// The sources of a connection that the poll watches: its socket and its command's three pipes.
/// A token is `conn_id << 2 | source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Socket = 0,
    Stdout = 1,
    Stderr = 2,
    Stdin = 3,
}

/// The token for `source` of connection `conn`.
pub fn token(conn: ConnId, source: Source) -> Token {
    Token(((conn as usize) << 2) | source as usize)
}

/// The connection a token belongs to.
pub fn conn_of(token: Token) -> ConnId {
    (token.0 >> 2) as ConnId
}

/// Which of its connection's sources a token stands for.
pub fn source_of(token: Token) -> Source {
    match token.0 & 3 {
        0 => Source::Socket,
        1 => Source::Stdout,
        2 => Source::Stderr,
        _ => Source::Stdin,
    }
}

/// What the event loop should do with a connection after [`Connection::drive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Waiting for readiness events.
    Open,
    /// Stopped to let others run, with work left: drive again soon, even without an event.
    MoreWork,
    /// Finished: deregister and drop it.
    Closed,
}

/// What the loop lends a connection while driving it.
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub config: &'a ServerConfig,
    pub deadlines: &'a mut Deadlines,
    /// Which connection each child belongs to, so the loop can route exits.
    pub children: &'a mut ChildTable,
    /// Starts commands, inline or on its threads.
    pub spawner: &'a mut Spawner,
    /// Other connections are waiting in this turn of the loop: start commands off the loop.
    pub loop_busy: bool,
    /// Reused read buffer, one chunk long.
    pub scratch: &'a mut [u8],
    /// Reused buffer for transcoded output.
    pub decoded: &'a mut Vec<u8>,
    pub now: Instant,
}

enum State {
    /// Waiting for the client's `auth`; we sent `hello` with this nonce.
    Handshake { server_nonce: [u8; 32] },
    /// Authenticated, no command running.
    Ready,
    /// Authenticated, running a command.
    Running(Box<RunningCommand>),
    /// Ending the session (see the module docs); `write_shut` once our FIN is sent.
    Closing { write_shut: bool },
}

/// One client connection.
pub struct Connection {
    id: ConnId,
    socket: TcpStream,
    peer: SocketAddr,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    /// Encoded frames waiting for the socket to accept them.
    outbound: Vec<u8>,
    state: State,
    cwd: PathBuf,
    previous_cwd: Option<PathBuf>,
    /// The socket is registered for writability too (replies are queued).
    registered_writable: bool,
    /// The socket may have bytes we have not read: cleared when a read finds it drained, set by
    /// its readiness events (see [`Self::on_ready`]).
    socket_ready: bool,
    /// Commands spawned so far: each command's serial number, for its deadline.
    commands_started: u64,
    last_activity: Instant,
    /// The client proved it knows the secret. Until then the connection counts against the
    /// server's `--max-handshakes`, also while it is being closed after a failed handshake:
    /// otherwise failing the handshake on purpose, over and over, would fill the server with
    /// unauthenticated connections lingering in their closing grace.
    authenticated: bool,
}

impl Connection {
    /// Takes an accepted socket, queues the `hello` challenge and starts the handshake clock.
    pub fn new(id: ConnId, socket: TcpStream, peer: SocketAddr, ctx: &mut Context) -> Connection {
        let server_nonce = auth::new_nonce();
        let mut connection = Connection {
            id,
            socket,
            peer,
            decoder: FrameDecoder::default(),
            encoder: FrameEncoder::new(),
            outbound: Vec::new(),
            state: State::Handshake { server_nonce },
            cwd: ctx.config.workdir.clone(),
            previous_cwd: None,
            registered_writable: false,
            // Bytes may have arrived before the socket was registered, and an edge-triggered
            // registration reports only what comes after: read once without waiting for it.
            socket_ready: true,
            commands_started: 0,
            last_activity: ctx.now,
            authenticated: false,
        };
        let hello = Message::Hello {
            protocol: PROTOCOL_NAME.to_owned(),
            version: PROTOCOL_VERSION,
            nonce: Bytes32(server_nonce),
        };
        connection.send(&hello, b"");
        let handshake_timeout = ctx.config.limits.handshake_timeout;
        ctx.deadlines
            .schedule_after(ctx.now, handshake_timeout, id, DeadlineKind::Handshake);
        connection
    }

    pub fn socket_mut(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection is waiting for the client's `auth`.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshake { .. })
    }

    /// Whether the connection counts against `--max-handshakes`: it never authenticated,
    /// whether it is still in the handshake or being closed after failing it.
    pub fn counts_as_unauthenticated(&self) -> bool {
        !self.authenticated
    }

    /// Whether the command with this serial number (see [`DeadlineKind::Command`]) is running.
    pub fn is_running(&self, serial: u64) -> bool {
        matches!(&self.state, State::Running(command) if command.serial == serial)
    }

    /// Whether the session is ending: see [`State::Closing`].
    fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// The poll reported `source` ready. Sources are read only after such an event and until a
    /// read finds them drained, not in every round of [`Self::drive`]: that would be a `read`
    /// failing with `EAGAIN` per source each time anything happens on the connection.
    pub fn on_ready(&mut self, source: Source) {
        let stream = match source {
            Source::Socket => {
                self.socket_ready = true;
                return;
            }
            Source::Stdout => OutputStream::Stdout,
            Source::Stderr => OutputStream::Stderr,
            Source::Stdin => return, // stdin is written whenever input is pending
        };
        if let State::Running(command) = &mut self.state
            && let Some(process) = &mut command.process
        {
            process.output_ready_event(stream);
        }
    }

    /// Registers the socket for writability exactly while replies wait in the outbound buffer.
    ///
    /// Readiness is edge-triggered, and a socket registered for writing would report an event
    /// each time an ACK frees send-buffer space: one needless wake-up per command. Most replies
    /// leave in the `write` that follows their encoding, so this rarely costs a syscall.
    ///
    /// # Errors
    /// The registry refused the change; the connection should be closed.
    pub fn sync_interest(&mut self, registry: &Registry) -> io::Result<()> {
        let wants_writable = !self.outbound.is_empty();
        if wants_writable != self.registered_writable {
            let interest = if wants_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.socket, token(self.id, Source::Socket), interest)?;
            self.registered_writable = wants_writable;
        }
        Ok(())
    }

    /// Makes all the progress possible without blocking. See the module docs.
    pub fn drive(&mut self, ctx: &mut Context) -> Drive {
        for _ in 0..MAX_ROUNDS {
            let mut progress = match self.read_socket(ctx) {
                Ok(progress) => progress,
                Err(e) => {
                    self.log_disconnect(&e);
                    return Drive::Closed;
                }
            };
            progress |= self.pump_stdin(ctx);
            progress |= self.pump_output(ctx);
            let finished = self.finish_command_if_done(ctx);
            let flushed = self.flush();
            // The reply first, the housekeeping after: the finished command's pipes are closed
            // once its exit frame is on its way.
            if let Some(mut command) = finished
                && let Some(process) = &mut command.process
            {
                process.release(ctx.registry);
            }
            match flushed {
                Ok(wrote) => progress |= wrote,
                Err(e) => {
                    self.log_disconnect(&e);
                    return Drive::Closed;
                }
            }
            if self.is_closing() && self.outbound.is_empty() {
                return self.linger(ctx);
            }
            if !progress {
                return Drive::Open;
            }
        }
        Drive::MoreWork
    }

    /// Logs the end of the session, and of its command if one was running, so that every
    /// command has a line for how it ended and every connection one for how it closed.
    fn log_disconnect(&self, error: &io::Error) {
        if let State::Running(command) = &self.state {
            command.log_cut_short(self.peer, "the client left");
        }
        match error.kind() {
            // As sshd's "Disconnected from": every session's end is in the log at `info`.
            io::ErrorKind::UnexpectedEof => info!("{}: disconnected", self.peer),
            _ => info!("{}: connection lost: {error}", self.peer),
        }
    }

    /// Records the exit of the command's process; its output may still be draining.
    pub fn on_exit(&mut self, pid: u32, status: ExitStatus) {
        if let State::Running(command) = &mut self.state
            && let Some(process) = &mut command.process
            && process.pid() == pid
        {
            command.exit = Some(status);
            mark_output_ready_at_exit(process);
        }
    }

    /// Handles a deadline of this connection. Returns true if the connection must close now.
    pub fn on_deadline(&mut self, kind: DeadlineKind, ctx: &mut Context) -> bool {
        match kind {
            DeadlineKind::Handshake if self.is_handshaking() => {
                warn!(
                    "{}: no authentication within {:?}; dropping",
                    self.peer, ctx.config.limits.handshake_timeout
                );
                self.fail(
                    ErrorCode::HandshakeTimeout,
                    "handshake not completed in time",
                    ctx,
                );
            }
            DeadlineKind::Idle => self.check_idle(ctx),
            DeadlineKind::Command(serial) => {
                if let State::Running(command) = &mut self.state
                    && command.serial == serial
                    && command.exit.is_none()
                    && !command.timed_out
                {
                    info!(
                        "{}: command {} timed out; killing its process tree",
                        self.peer, command.id
                    );
                    command.timed_out = true;
                    // Still starting: `attach` kills it as soon as it is ours.
                    if let Some(process) = &command.process {
                        process.kill_tree();
                    }
                }
            }
            DeadlineKind::Closing => return true,
            _ => {}
        }
        false
    }

    fn check_idle(&mut self, ctx: &mut Context) {
        let Some(idle_timeout) = ctx.config.limits.idle_timeout else {
            return;
        };
        match self.state {
            State::Handshake { .. } | State::Closing { .. } => {}
            State::Running(_) => {
                ctx.deadlines
                    .schedule_after(ctx.now, idle_timeout, self.id, DeadlineKind::Idle)
            }
            State::Ready => {
                let Some(due) = self.last_activity.checked_add(idle_timeout) else {
                    return;
                };
                if due <= ctx.now {
                    info!("{}: idle for {idle_timeout:?}; closing", self.peer);
                    self.fail(ErrorCode::IdleTimeout, "connection idle for too long", ctx);
                } else {
                    ctx.deadlines.schedule(due, self.id, DeadlineKind::Idle);
                }
            }
        }
    }

    /// Tells the client the server is going away and kills its command.
    pub fn shut_down(&mut self, ctx: &mut Context) {
        if let State::Running(command) = &self.state {
            command.log_cut_short(self.peer, "the server is shutting down");
        }
        if !self.is_closing() {
            self.fail(ErrorCode::Shutdown, "server is shutting down", ctx);
        }
    }

    fn send(&mut self, message: &Message, body: &[u8]) {
        debug!("{} <- {}", self.peer, message.type_name());
        self.encoder.encode(message, body, &mut self.outbound);
    }

    /// Sends a fatal error, kills any command and arranges to close once it is flushed.
    fn fail(&mut self, code: ErrorCode, message: impl Into<String>, ctx: &mut Context) {
        let message = message.into();
        debug!("{}: fatal {}: {message}", self.peer, code.as_str());
        self.send(&Message::fatal(code, message), b"");
        self.start_closing(ctx);
    }

    /// Stops handling frames, kills any command, and gives what is queued [`CLOSING_GRACE`] to
    /// leave; then [`Self::linger`] closes gracefully.
    fn start_closing(&mut self, ctx: &mut Context) {
        // Dropping a running command kills its tree.
        self.state = State::Closing { write_shut: false };
        ctx.deadlines
            .schedule_after(ctx.now, CLOSING_GRACE, self.id, DeadlineKind::Closing);
    }

    /// The last step of closing, once the final frames are flushed: send FIN, then read and
    /// discard until the client closes too (or the closing deadline passes). Closing with
    /// unread client bytes in our buffer would make the kernel send a reset, and a reset can
    /// destroy the error frame before the client has read it.
    fn linger(&mut self, ctx: &mut Context) -> Drive {
        if let State::Closing { write_shut } = &mut self.state
            && !*write_shut
        {
            *write_shut = true;
            if self.socket.shutdown(std::net::Shutdown::Write).is_err() {
                return Drive::Closed;
            }
        }
        // Bounded per turn, as reading is in `drive`: the closing deadline ends a client that
        // keeps sending, and meanwhile the others are served.
        for _ in 0..MAX_ROUNDS {
            match self.socket.read(ctx.scratch) {
                Ok(0) => return Drive::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drive::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Drive::Closed,
            }
        }
        Drive::MoreWork
    }

    /// Handles client frames: those still buffered from an earlier read, or else what one read
    /// brings. Ok(true) if any were handled or anything was read.
    ///
    /// A bounded amount per round of [`Self::drive`] (one read, at most `FRAMES_PER_ROUND`
    /// frames), not until `WouldBlock`: a client that keeps sending frames that need no reply
    /// (`stdin_close` for no command) would otherwise keep the loop in this connection for as
    /// long as it liked, and no other client, timer or `accept` would be served. So
    /// `MAX_ROUNDS` bounds a connection's turn.
    fn read_socket(&mut self, ctx: &mut Context) -> io::Result<bool> {
        // An invalid frame counts as ready: handling it is what reports it.
        if !self.is_closing() && self.decoder.frame_ready().unwrap_or(true) {
            self.handle_frames(ctx);
            return Ok(true);
        }
        // Client frames are read even while output waits for the client, so that a `signal`
        // or a disconnect is seen at once. Only a client that sends requests and does not read
        // the replies (whose replies pile up past the hard cap) is no longer read from.
        //
        // One read per round: `socket_ready` stays set after it, so the next round (or the next
        // turn, through `Drive::MoreWork`) reads again; only `WouldBlock` clears it. The loop
        // repeats only a read interrupted by a signal. The read goes into the loop's shared
        // scratch buffer rather than straight into the decoder, so that an idle connection's
        // decoder can give its buffer back (`release_streaming_buffers`).
        while self.socket_ready && !self.is_closing() && self.outbound.len() < OUTBOUND_HARD_CAP {
            match self.socket.read(ctx.scratch) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.decoder.feed(&ctx.scratch[..n]);
                    self.handle_frames(ctx);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.socket_ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Handles the complete frames in the decoder, at most `FRAMES_PER_ROUND` of them.
    fn handle_frames(&mut self, ctx: &mut Context) {
        for _ in 0..FRAMES_PER_ROUND {
            if self.is_closing() {
                break;
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.last_activity = ctx.now;
                    self.handle_frame(frame, ctx);
                }
                Ok(None) => {
                    // Before the handshake only `auth` is accepted, and it has no body: refuse
                    // anything else as soon as its header is in, rather than buffering up to
                    // a megabyte of body for a peer that has proven nothing.
                    if self.is_handshaking()
                        && let Some(message) = self.decoder.pending_message()
                    {
                        self.refuse_before_auth(message.type_name(), ctx);
                    }
                    break;
                }
                Err(error) => {
                    warn!("{}: {error}", self.peer);
                    self.fail(error.code(), error.to_string(), ctx);
                }
            }
        }
    }

    /// Closes a connection that sent something other than `auth` (or `error`) before proving
    /// it knows the secret.
    fn refuse_before_auth(&mut self, type_name: &str, ctx: &mut Context) {
        warn!("{}: {type_name} before authentication; dropping", self.peer);
        let why = format!("only auth is accepted before the handshake completes, got {type_name}");
        self.fail(ErrorCode::UnexpectedMessage, why, ctx);
    }

    fn handle_frame(&mut self, frame: Frame, ctx: &mut Context) {
        debug!("{} -> {}", self.peer, frame.message.type_name());
        match frame.message {
            Message::Auth {
                version,
                nonce,
                proof,
            } if self.is_handshaking() => self.authenticate(version, nonce.0, &proof.0, ctx),
            Message::Error { code, message, .. } if self.is_handshaking() => {
                // The client gives up (e.g. it speaks another version): nothing to answer.
                warn!(
                    "{}: client reports {} during the handshake: {}",
                    self.peer,
                    code.as_str(),
                    Quoted(&clip(message, LOGGED_CLIENT_MESSAGE_LEN))
                );
                self.start_closing(ctx);
            }
            other if self.is_handshaking() => self.refuse_before_auth(other.type_name(), ctx),
            Message::Exec {
                id,
                stdin,
                timeout_secs,
            } => self.exec(id, stdin, timeout_secs, frame.body, ctx),
            Message::Stdin { id } => self.accept_stdin(id, &frame.body, ctx),
            Message::StdinClose { id } => {
                if let Some(command) = self.running_mut(id) {
                    command.stdin_close_requested = true;
                }
            }
            Message::Signal { id, signal } => {
                let peer = self.peer;
                if let Some(command) = self.running_mut(id)
                    && command.exit.is_none()
                {
                    info!("{peer}: delivering SIG{} to command {id}", signal.as_str());
                    match &command.process {
                        Some(process) => process.signal(signal),
                        None => command.pending_signal = Some(signal),
                    }
                }
            }
            Message::Error {
                code,
                message,
                fatal,
                ..
            } => {
                warn!(
                    "{}: client reports {}: {}",
                    self.peer,
                    code.as_str(),
                    Quoted(&clip(message, LOGGED_CLIENT_MESSAGE_LEN))
                );
                if fatal {
                    self.start_closing(ctx);
                }
            }
            other => {
                let why = format!("a client does not send {}", other.type_name());
                self.fail(ErrorCode::UnexpectedMessage, why, ctx);
            }
        }
    }

    /// Step 5 of the handshake (docs/protocol.md §6.1): checks the client's `auth` and answers
    /// with `welcome`, or a fatal error.
    fn authenticate(
        &mut self,
        version: u32,
        client_nonce: [u8; 32],
        proof: &[u8],
        ctx: &mut Context,
    ) {
        let State::Handshake { server_nonce } = self.state else {
            return;
        };
        if version != PROTOCOL_VERSION {
            warn!("{}: client speaks protocol version {version}", self.peer);
            let why = format!(
                "this server speaks protocol version {PROTOCOL_VERSION}, the client {version}"
            );
            return self.fail(ErrorCode::VersionMismatch, why, ctx);
        }
        let secret = &ctx.config.secret;
        if !auth::verify_proof(secret, Role::Client, &server_nonce, &client_nonce, proof) {
            warn!("{}: authentication failed (wrong secret)", self.peer);
            return self.fail(
                ErrorCode::AuthFailed,
                "authentication failed: wrong secret",
                ctx,
            );
        }
        let server_proof = auth::proof(secret, Role::Server, &server_nonce, &client_nonce);
        self.send(
            &Message::Welcome {
                proof: Bytes32(server_proof),
            },
            b"",
        );
        // Every frame after `welcome`, both ways, carries a tag.
        let keys = SessionKeys::derive(secret, &server_nonce, &client_nonce);
        self.encoder
            .start_tagging(FrameMac::new(&keys.server_to_client));
        self.decoder
            .start_verifying(FrameMac::new(&keys.client_to_server));
        self.state = State::Ready;
        self.authenticated = true;
        info!("{}: authenticated", self.peer);
        if let Some(idle) = ctx.config.limits.idle_timeout {
            ctx.deadlines
                .schedule_after(ctx.now, idle, self.id, DeadlineKind::Idle);
        }
    }

    /// Writes queued frames until the socket would block. Ok(true) if anything was written.
    fn flush(&mut self) -> io::Result<bool> {
        let mut written = 0;
        while written < self.outbound.len() {
            match self.socket.write(&self.outbound[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.outbound.drain(..written);
        if !matches!(self.state, State::Running(_)) {
            self.release_streaming_buffers();
        }
        Ok(written > 0)
    }

    /// A connection waiting at the prompt should not keep buffers sized for streaming output
    /// out or stdin in: thousands of idle connections would each hold a few hundred KiB.
    fn release_streaming_buffers(&mut self) {
        const KEEP: usize = 4096;
        if self.outbound.is_empty() && self.outbound.capacity() > KEEP {
            self.outbound = Vec::new();
        }
        self.decoder.release_idle_buffer(KEEP);
    }
}
