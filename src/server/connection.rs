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
//! Leaving `Running` any way but by `exit sent` kills the command's process tree.
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
//! Backpressure: output is read from the command's pipes only while fewer than
//! [`OUTBOUND_CAP`] bytes wait for the socket. A slow client therefore makes the pipes fill up,
//! which blocks the command in `write`, and the server's memory stays bounded. The other way,
//! a client may have at most [`STDIN_WINDOW`] stdin bytes unacknowledged (`stdin_ack`), so the
//! stdin buffer is bounded too, and stdin never makes the server stop reading the client: a
//! Ctrl-C always gets through, even to a command that reads no stdin. Only a client that
//! leaves `OUTBOUND_HARD_CAP` or more of replies unread is not read until it catches up.

use std::io::{self, Read, Write};
use std::mem;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::builtins;
use super::children::ChildTable;
use super::deadlines::{DeadlineKind, Deadlines};
use super::process::{ChildProcess, OutputStream, PipeTokens};
use super::spawner::{SpawnRequest, Spawner, Start};
use super::{Limits, ServerConfig};
use crate::auth::{self, FrameMac, Role, SessionKeys};
use crate::logging::{Quoted, QuotedStart};
use crate::output::StreamDecoder;
use crate::protocol::frame::MAX_CHUNK;
use crate::protocol::message::{Bytes32, PROTOCOL_NAME, STDIN_WINDOW, clip};
use crate::protocol::{
    ErrorCode, ExitStatus, Frame, FrameDecoder, FrameEncoder, Message, PROTOCOL_VERSION, SignalName,
};

/// Identifies a connection for its whole life; never reused, so a late event or deadline for a
/// closed connection cannot hit a new one.
pub type ConnId = u64;

/// Output bytes that may wait for a slow client before the command's pipes stop being read.
pub const OUTBOUND_CAP: usize = 256 * 1024;
/// Queued replies past which the client is not read from until it reads what we sent. Command
/// output alone stays below this (output is read only while under [`OUTBOUND_CAP`], and one
/// chunk adds at most three times [`MAX_CHUNK`]); only a client flooding requests gets here.
const OUTBOUND_HARD_CAP: usize = 2 * OUTBOUND_CAP;
/// After the command's process exits, how much more output to take from background processes
/// still holding its pipes before calling the output complete.
const AFTER_EXIT_LIMIT: usize = 1024 * 1024;
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
/// How much of a command goes into each of its two log lines: enough for any command typed by
/// hand, while a command of up to 1 MiB of control characters (each escaped to several bytes)
/// would otherwise write megabytes of log, on the loop's thread, per request.
const LOGGED_COMMAND_LEN: usize = 512;

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

struct RunningCommand {
    /// The client's id for the command, echoed in every frame about it; the client chooses
    /// it and may reuse it.
    id: u32,
    /// The server's own number for the command (1, 2, ... per connection), never reused: its
    /// timeout is keyed by it, so that a stale deadline cannot end a later command.
    serial: u64,
    command: String,
    /// `None` while the spawner threads are still starting it.
    process: Option<ChildProcess>,
    /// Whether the command gets a stdin pipe (the exec's `stdin`).
    with_stdin: bool,
    /// A signal that arrived while the command was still being started.
    pending_signal: Option<SignalName>,
    started: Instant,
    /// Set when the process has been reaped; output may still be draining.
    exit: Option<ExitStatus>,
    /// Whether the connection tried reaping the process itself, at the end of its output.
    reap_tried: bool,
    timed_out: bool,
    after_exit_bytes: usize,
    stdin_pending: Vec<u8>,
    stdin_close_requested: bool,
    stdout_transcoder: StreamDecoder,
    stderr_transcoder: StreamDecoder,
}

impl Drop for RunningCommand {
    fn drop(&mut self) {
        // However the command stops being ours (client gone, error, shutdown), its whole tree
        // dies with it. Once reaped, the pid is no longer ours to signal.
        if self.exit.is_none()
            && let Some(process) = &self.process
        {
            process.kill_tree();
        }
    }
}

impl RunningCommand {
    /// Logs how a command ended that the connection's end cut short (`why`), so that every
    /// command has a line for its end: killed while it ran, or, if it had exited, that its
    /// output was not all delivered.
    fn log_cut_short(&self, peer: SocketAddr, why: &str) {
        match self.exit {
            None => info!(
                "{peer}: command {} killed: {why} (its whole process tree)",
                self.id
            ),
            Some(status) => info!(
                "{peer}: command {} ended ({status}), but not all its output was delivered: {why}",
                self.id
            ),
        }
    }
}

/// What one read of a command's output pipe means: whether that stream has ended, and the
/// bytes read. `after_exit_bytes` counts what is read once the process has `exited`.
fn output_read(
    result: io::Result<usize>,
    exited: bool,
    after_exit_bytes: &mut usize,
    peer: SocketAddr,
) -> (bool, usize) {
    match result {
        Ok(0) => (true, 0),
        Ok(n) => {
            if exited {
                *after_exit_bytes += n;
            }
            (*after_exit_bytes > AFTER_EXIT_LIMIT, n)
        }
        // Nothing to read now. If the process has already exited, the pipe is drained and
        // anything later would come from a background process (`sleep 30 & echo started`): the
        // command is finished when its process is, not when every holder of the pipe is, so
        // the stream counts as ended.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => (exited, 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => (false, 0),
        Err(e) => {
            debug!("{peer}: reading command output: {e}");
            (true, 0)
        }
    }
}

/// A command's process has exited: its pipes are read again until they are empty before its
/// output counts as complete. The readiness events for its last output can come after the
/// exit (the poll may report the SIGCHLD wake-up first), or, for a child that exited before
/// its pipes were registered, only in the next poll; without this that output would be lost.
fn mark_output_ready_at_exit(process: &mut ChildProcess) {
    process.output_ready_event(OutputStream::Stdout);
    process.output_ready_event(OutputStream::Stderr);
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

    /// Queues stdin bytes for the command, within the flow-control window.
    fn accept_stdin(&mut self, id: u32, data: &[u8], ctx: &mut Context) {
        let Some(command) = self.running_mut(id) else {
            return; // for a command that has finished: the client stops when it sees the exit
        };
        if command.stdin_pending.len() + data.len() > STDIN_WINDOW {
            let why = format!("more than {STDIN_WINDOW} stdin bytes sent without acknowledgement");
            return self.fail(ErrorCode::FlowControl, why, ctx);
        }
        let has_pipe = match &command.process {
            Some(process) => process.has_stdin(),
            None => command.with_stdin, // still starting: buffer for it
        };
        if has_pipe && !command.stdin_close_requested {
            command.stdin_pending.extend_from_slice(data);
        } else {
            // No stdin pipe (exec said stdin:false, the client already sent stdin_close, or the
            // pipe broke): the bytes have nowhere to go. Acknowledge them as consumed, so that
            // the client's window is not left used up.
            let ack = Message::StdinAck {
                id,
                bytes: data.len() as u64,
            };
            self.send(&ack, b"");
        }
    }

    /// The running command if it has this id. Frames for an earlier command that arrive after
    /// its exit (stdin still in flight, a late Ctrl-C) are ignored, not errors.
    fn running_mut(&mut self, id: u32) -> Option<&mut RunningCommand> {
        match &mut self.state {
            State::Running(command) if command.id == id => Some(command),
            _ => None,
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

    fn exec(
        &mut self,
        id: u32,
        with_stdin: bool,
        timeout_secs: Option<u64>,
        body: Vec<u8>,
        ctx: &mut Context,
    ) {
        if let State::Running(command) = &self.state {
            let why = format!("command {} is still running", command.id);
            return self.send(&Message::command_error(id, ErrorCode::Busy, why), b"");
        }
        let command = match check_command(body, &ctx.config.limits) {
            Ok(command) => command,
            Err((code, why)) => {
                info!("{}: refused command {id}: {why}", self.peer);
                return self.send(&Message::command_error(id, code, why), b"");
            }
        };
        if let Some(target) = builtins::parse_cd(&command, &self.cwd, self.previous_cwd.as_deref())
        {
            return self.change_directory(id, &target, ctx.now);
        }
        self.commands_started += 1;
        let serial = self.commands_started;
        let request = SpawnRequest {
            conn: self.id,
            serial,
            command: command.clone(),
            cwd: self.cwd.clone(),
            with_stdin,
            tokens: self.pipe_tokens(),
        };
        let started = match ctx.spawner.start(request, ctx.registry, ctx.loop_busy) {
            Start::Done(Ok(process)) => Some(process),
            Start::Done(Err(e)) => return self.refuse_spawn(id, &e),
            Start::Pending => {
                debug!("{}: command {id} is being started off the loop", self.peer);
                None
            }
        };
        if let Some(timeout) = command_timeout(timeout_secs, ctx.config.limits.command_timeout) {
            ctx.deadlines
                .schedule_after(ctx.now, timeout, self.id, DeadlineKind::Command(serial));
        }
        self.state = State::Running(Box::new(RunningCommand {
            id,
            serial,
            command,
            process: None,
            with_stdin,
            pending_signal: None,
            started: ctx.now,
            exit: None,
            reap_tried: false,
            timed_out: false,
            after_exit_bytes: 0,
            stdin_pending: Vec::new(),
            stdin_close_requested: false,
            stdout_transcoder: StreamDecoder::new(ctx.config.encoding),
            stderr_transcoder: StreamDecoder::new(ctx.config.encoding),
        }));
        if let Some(process) = started {
            self.attach(process, ctx);
        }
    }

    fn pipe_tokens(&self) -> PipeTokens {
        PipeTokens {
            stdout: token(self.id, Source::Stdout),
            stderr: token(self.id, Source::Stderr),
            stdin: token(self.id, Source::Stdin),
        }
    }

    fn refuse_spawn(&mut self, id: u32, error: &io::Error) {
        warn!("{}: cannot start command {id}: {error}", self.peer);
        // The usual cause is a working directory removed since `cd`; the OS error alone
        // ("No such file or directory") would read as if the shell were missing.
        let why = match std::fs::metadata(&self.cwd) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => format!(
                "cannot start the command: the working directory {} no longer exists \
                 (cd somewhere else)",
                self.cwd.display()
            ),
            Ok(meta) if !meta.is_dir() => format!(
                "cannot start the command: the working directory {} is no longer a directory \
                 (cd somewhere else)",
                self.cwd.display()
            ),
            _ => format!("cannot start the command: {error}"),
        };
        self.send(
            &Message::command_error(id, ErrorCode::SpawnFailed, why),
            b"",
        );
    }

    /// Makes a started process the running command's: routes its exit here, and applies what
    /// arrived while it was starting (an exit reaped early, a timeout, a Ctrl-C).
    fn attach(&mut self, mut process: ChildProcess, ctx: &mut Context) {
        let State::Running(command) = &mut self.state else {
            return; // cannot happen: callers check; dropping `process` would leak nothing
        };
        let pid = process.pid();
        info!(
            "{}: command {} (pid {pid}): {}",
            self.peer,
            command.id,
            QuotedStart {
                text: &command.command,
                max: LOGGED_COMMAND_LEN
            }
        );
        if let Some(status) = ctx.children.claim(pid, self.id) {
            command.exit = Some(status);
            mark_output_ready_at_exit(&mut process);
        } else if command.timed_out {
            process.kill_tree();
        } else if let Some(signal) = command.pending_signal.take() {
            process.signal(signal);
        }
        command.process = Some(process);
    }

    /// A command the spawner threads started for this connection. Returns the child if it is
    /// no longer wanted (the command was abandoned meanwhile), for the caller to kill.
    #[cfg(unix)]
    pub fn on_spawned(
        &mut self,
        serial: u64,
        result: io::Result<std::process::Child>,
        ctx: &mut Context,
    ) -> Option<std::process::Child> {
        let waiting = matches!(&self.state,
            State::Running(command) if command.serial == serial && command.process.is_none());
        if !waiting {
            return result.ok();
        }
        let attached = result.and_then(|child| {
            let pid = child.id();
            ChildProcess::attach(child, ctx.registry, self.pipe_tokens()).inspect_err(|_| {
                // Unless reaped already (then its pid may be another process's by now).
                if ctx.children.disown(pid) {
                    super::process::kill_unwanted(pid);
                }
            })
        });
        match attached {
            Ok(process) => self.attach(process, ctx),
            Err(e) => {
                let State::Running(command) = mem::replace(&mut self.state, State::Ready) else {
                    unreachable!("checked above")
                };
                self.refuse_spawn(command.id, &e);
            }
        }
        None
    }

    fn change_directory(&mut self, id: u32, target: &builtins::CdTarget, started: Instant) {
        let resolved = builtins::resolve_cd(target, &self.cwd, self.previous_cwd.as_deref());
        let code = match resolved {
            // `cd` alone on Windows: cmd shows where it is.
            Ok(dir) if *target == builtins::CdTarget::Show => {
                let shown = format!("{}\r\n", dir.display());
                self.send(&Message::Stdout { id }, shown.as_bytes());
                0
            }
            Ok(dir) => {
                // `{:?}` rather than `Quoted`: a path need not be UTF-8.
                info!("{}: cd {dir:?}", self.peer);
                self.previous_cwd = Some(mem::replace(&mut self.cwd, dir));
                0
            }
            Err(why) => {
                self.send(&Message::Stderr { id }, format!("{why}\n").as_bytes());
                1
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        self.send(
            &Message::Exit {
                id,
                status: ExitStatus::Exited { code },
                duration_ms,
            },
            b"",
        );
    }

    /// Writes pending stdin to the command's pipe, sends one `stdin_ack` for what was consumed
    /// (written, or dropped because the pipe broke), and closes the pipe once the client's
    /// `stdin_close` can be honoured. True if anything changed.
    fn pump_stdin(&mut self, ctx: &mut Context) -> bool {
        let State::Running(command) = &mut self.state else {
            return false;
        };
        let command = &mut **command;
        let Some(process) = &mut command.process else {
            return false; // still starting: stdin waits in `stdin_pending`
        };
        let mut consumed = 0;
        while !command.stdin_pending.is_empty() && process.has_stdin() {
            match process.write_stdin(&command.stdin_pending) {
                Ok(n) => {
                    command.stdin_pending.drain(..n);
                    consumed += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The command closed its stdin or exited: what it did not read is dropped,
                    // as a local pipe would drop it.
                    debug!("{}: command {} stdin: {e}", self.peer, command.id);
                    consumed += command.stdin_pending.len();
                    command.stdin_pending = Vec::new();
                    process.close_stdin(ctx.registry);
                }
            }
        }
        let mut progress = consumed > 0;
        if consumed > 0 {
            // One acknowledgement per round, not per pipe write: the client may send more.
            let ack = Message::StdinAck {
                id: command.id,
                bytes: consumed as u64,
            };
            self.encoder.encode(&ack, b"", &mut self.outbound);
        }
        if command.stdin_pending.is_empty() {
            command.stdin_pending = Vec::new();
            if command.stdin_close_requested && process.has_stdin() {
                process.close_stdin(ctx.registry);
                progress = true;
            }
        }
        progress
    }

    /// Reads command output into frames while the outbound buffer has room. True if any was read.
    fn pump_output(&mut self, ctx: &mut Context) -> bool {
        let State::Running(command) = &mut self.state else {
            return false;
        };
        let command = &mut **command;
        let Some(process) = &mut command.process else {
            return false;
        };
        let mut progress = false;
        loop {
            let mut round_progress = false;
            // Alternate between the streams so neither starves the other. Never read one pipe
            // to its end before the other: a command that fills its stderr pipe (64 KiB) while
            // we wait for stdout's end blocks in `write` for ever, and so would we.
            for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                if self.outbound.len() >= OUTBOUND_CAP || !process.awaiting_eof(stream) {
                    continue;
                }
                // The code-page decoder of this stream (not the frame decoder).
                let transcoder = match stream {
                    OutputStream::Stdout => &mut command.stdout_transcoder,
                    OutputStream::Stderr => &mut command.stderr_transcoder,
                };
                let message = match stream {
                    OutputStream::Stdout => Message::Stdout { id: command.id },
                    OutputStream::Stderr => Message::Stderr { id: command.id },
                };
                // UTF-8 output is read straight into a frame in the outbound buffer; only output
                // to transcode goes through the read buffer (and a second one).
                let passthrough = transcoder.is_passthrough();
                let result = if passthrough {
                    self.encoder.encode_appending_body(
                        &message,
                        MAX_CHUNK,
                        &mut self.outbound,
                        |out, max| process.read_output_appending(stream, out, max),
                    )
                } else {
                    process.read_output(stream, ctx.scratch)
                };
                let exited = command.exit.is_some();
                let (done, read) =
                    output_read(result, exited, &mut command.after_exit_bytes, self.peer);
                if !passthrough {
                    ctx.decoded.clear();
                    transcoder.decode(&ctx.scratch[..read], done, ctx.decoded);
                    if !ctx.decoded.is_empty() {
                        self.encoder
                            .encode(&message, ctx.decoded, &mut self.outbound);
                    }
                }
                if done {
                    process.end_output(stream);
                }
                round_progress |= read > 0 || done;
            }
            if !round_progress {
                return progress;
            }
            progress = true;
        }
    }

    /// Once the command's process has exited and its output is all read, queues its `exit`
    /// frame and returns the command, for [`Self::drive`] to release its pipes.
    fn finish_command_if_done(&mut self, ctx: &mut Context) -> Option<Box<RunningCommand>> {
        let State::Running(command) = &mut self.state else {
            return None;
        };
        let process = command.process.as_ref()?;
        let output_done = !process.awaiting_eof(OutputStream::Stdout)
            && !process.awaiting_eof(OutputStream::Stderr);
        if !output_done {
            return None;
        }
        if command.exit.is_none() {
            // Both pipes at end of file: the process has most likely exited (its exit closed
            // them). Reaping it now saves the reply a trip through SIGCHLD and the exit
            // watcher. Once: a process that closed its output itself and still runs is
            // reported by the watcher when it exits.
            if command.reap_tried {
                return None;
            }
            command.reap_tried = true;
            command.exit = Some(process.try_reap()?);
            ctx.children.reaped_by_owner(process.pid());
        }
        let State::Running(command) = mem::replace(&mut self.state, State::Ready) else {
            unreachable!()
        };
        let status = if command.timed_out {
            ExitStatus::TimedOut
        } else {
            command.exit.expect("checked above")
        };
        let duration = ctx.now.saturating_duration_since(command.started);
        info!(
            "{}: command {} finished: {status} after {duration:?}: {}",
            self.peer,
            command.id,
            QuotedStart {
                text: &command.command,
                max: LOGGED_COMMAND_LEN
            }
        );
        let exit = Message::Exit {
            id: command.id,
            status,
            duration_ms: duration.as_millis() as u64,
        };
        self.send(&exit, b"");
        self.last_activity = ctx.now;
        Some(command)
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

/// The command text of an `exec` body, or why it is refused (docs/protocol.md §7.1).
fn check_command(body: Vec<u8>, limits: &Limits) -> Result<String, (ErrorCode, String)> {
    let Ok(command) = String::from_utf8(body) else {
        return Err((
            ErrorCode::BadCommand,
            "the command is not valid UTF-8".to_owned(),
        ));
    };
    if command.len() > limits.max_command_len {
        let why = format!(
            "the command is {} bytes; the limit is {}",
            command.len(),
            limits.max_command_len
        );
        return Err((ErrorCode::CommandTooLong, why));
    }
    if command.trim().is_empty() {
        return Err((ErrorCode::EmptyCommand, "the command is empty".to_owned()));
    }
    Ok(command)
}

/// A command's time limit: the one the client asked for (0 or none: no limit of its own),
/// capped by the server's `--command-timeout`.
fn command_timeout(asked_secs: Option<u64>, server_max: Option<Duration>) -> Option<Duration> {
    let asked = asked_secs.filter(|&secs| secs > 0).map(Duration::from_secs);
    match (asked, server_max) {
        (Some(asked), Some(max)) => Some(asked.min(max)),
        (asked, max) => asked.or(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_gets_the_shorter_of_its_own_and_the_servers_time_limit() {
        let secs = Duration::from_secs;
        assert_eq!(command_timeout(None, None), None);
        assert_eq!(command_timeout(Some(0), None), None);
        assert_eq!(command_timeout(Some(5), None), Some(secs(5)));
        assert_eq!(command_timeout(None, Some(secs(60))), Some(secs(60)));
        assert_eq!(command_timeout(Some(0), Some(secs(60))), Some(secs(60)));
        assert_eq!(command_timeout(Some(5), Some(secs(60))), Some(secs(5)));
        assert_eq!(command_timeout(Some(600), Some(secs(60))), Some(secs(60)));
    }

    #[test]
    fn commands_are_refused_for_bad_utf8_length_and_emptiness_in_that_order() {
        let limits = Limits {
            max_command_len: 8,
            ..Limits::default()
        };
        let code = |body: &[u8]| check_command(body.to_vec(), &limits).map_err(|(code, _)| code);
        assert_eq!(code(b"ls"), Ok("ls".to_owned()));
        assert_eq!(code(b"\xff ls"), Err(ErrorCode::BadCommand));
        assert_eq!(code(b"echo 123456"), Err(ErrorCode::CommandTooLong));
        assert_eq!(code(b"         "), Err(ErrorCode::CommandTooLong));
        assert_eq!(code(b" \t\n"), Err(ErrorCode::EmptyCommand));
        assert_eq!(code(b""), Err(ErrorCode::EmptyCommand));
    }
}
