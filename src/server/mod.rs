//! The server: one `mio` event loop for every client socket and every command pipe.
//!
//! One thread does all the network I/O. It sleeps in `Poll::poll` until something is ready (a
//! new client, bytes from a client, output from a command, a child's exit, a signal) or until
//! the nearest deadline, handles exactly that, and sleeps again. Nothing in the loop waits on
//! a peer: sockets and pipes are non-blocking, exits arrive as events, timers are a heap
//! ([`deadlines`]). So a slow or stuck client never delays another. The one deliberate
//! exception is starting a command inline when only one client is active (about a millisecond;
//! see [`spawner`]).
//!
//! Signals come through the loop too (Unix): SIGINT or SIGTERM starts a graceful shutdown
//! (no new connections, running commands killed, clients told), SIGHUP re-reads the secret.
//!
//! Per-connection behaviour lives in [`connection`]; running commands in [`process`].

pub mod builtins;
mod burst_trim;
pub mod children;
pub mod connection;
pub mod deadlines;
pub mod listener;
pub mod process;
mod refusals;
pub mod spawner;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::output::OutputEncoding;
use crate::protocol::frame::MAX_CHUNK;
use crate::protocol::{ErrorCode, FrameEncoder, Message};
use burst_trim::BurstTrim;
use children::{ChildTable, ExitRoute};
use connection::{ConnId, Connection, Context, Drive, Source};
use deadlines::{DeadlineKind, Deadlines};
use process::{ChildEvent, ExitWatcher};
use refusals::{RefusalLog, unlogged_note};
use spawner::Spawner;

/// Tokens of the loop's own sources, at the top of the range. Connection tokens are
/// `conn_id << 2 | source` ([`connection::token`]): they would reach this range only after
/// `usize::MAX / 4` connections (2^62 on 64-bit systems).
const LISTENER: Token = Token(usize::MAX);
const CHILD_EVENTS: Token = Token(usize::MAX - 1);
#[cfg(unix)]
const SIGNALS: Token = Token(usize::MAX - 2);
const SPAWNED: Token = Token(usize::MAX - 3);
#[cfg(unix)]
const STOP_REQUESTS: Token = Token(usize::MAX - 4);

/// How long to stop accepting after running out of file descriptors, so that closing
/// connections can free some instead of the loop spinning on a failing `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a shutdown waits for clients to receive their last frames and children to die.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Limits and timeouts that protect the server from slow, idle or hostile clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection must authenticate within this (like sshd's LoginGraceTime).
    pub handshake_timeout: Duration,
    /// An authenticated connection with no command running is closed after this long silent.
    pub idle_timeout: Option<Duration>,
    /// Longest a command may run; a client may ask for less, never more.
    pub command_timeout: Option<Duration>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections not authenticated at once: in the handshake, or being closed after failing
    /// it (like sshd's MaxStartups).
    pub max_handshakes: usize,
    /// Longest command accepted, in bytes.
    pub max_command_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            command_timeout: None,
            max_connections: 4096,
            max_handshakes: 128,
            max_command_len: 64 * 1024,
        }
    }
}

/// Everything the server needs to know to run. Not `Debug`: it holds the secret, which no log
/// line or panic message may show.
#[derive(Clone)]
pub struct ServerConfig {
    /// The shared secret clients must prove they know.
    pub secret: Vec<u8>,
    /// What to do with command output before sending it.
    pub encoding: OutputEncoding,
    /// Where each connection's commands start.
    pub workdir: PathBuf,
    pub limits: Limits,
    /// Stop gracefully on SIGINT/SIGTERM, and re-read the secret from `secret_file` on SIGHUP.
    /// Off when the server runs inside another program (the demo), which handles those signals
    /// itself.
    pub handle_signals: bool,
    /// Where the secret was read from, to read it again on SIGHUP (Unix); `None` if it came
    /// from elsewhere.
    pub secret_file: Option<PathBuf>,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    connections: HashMap<ConnId, Connection>,
    next_id: ConnId,
    /// Connections that have not authenticated (still in the handshake, or being closed after
    /// failing it): the number `--max-handshakes` caps.
    unauthenticated: usize,
    exit_watcher: ExitWatcher,
    #[cfg(unix)]
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// The loop's end of a [`StopHandle`], once one was made.
    #[cfg(unix)]
    stop_requests: Option<mio::net::UnixStream>,
    shared: Shared,
    /// Connections that stopped with work left, to drive again without waiting for an event.
    more_work: Vec<ConnId>,
    accept_paused_until: Option<Instant>,
    /// Refusals at the connection and handshake limits, logged at a bounded rate.
    refusals: RefusalLog,
    /// When to hand freed memory back after a burst of connections.
    burst_trim: BurstTrim,
    shutdown_started: Option<Instant>,
}

/// The parts of the server that connections borrow while being driven.
struct Shared {
    config: ServerConfig,
    deadlines: Deadlines,
    children: ChildTable,
    spawner: Spawner,
    loop_busy: bool,
    scratch: Vec<u8>,
    decoded: Vec<u8>,
}

impl Server {
    /// Binds the listening socket and sets up the loop.
    ///
    /// # Errors
    /// The address cannot be bound, or the poll or signal handling cannot be set up.
    pub fn bind(addr: SocketAddr, config: ServerConfig) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = listener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let exit_watcher = ExitWatcher::new(poll.registry(), CHILD_EVENTS)?;
        let spawner = Spawner::new(poll.registry(), SPAWNED)?;
        #[cfg(unix)]
        {
            process::give_children_default_signals();
            process::open_dev_null();
        }
        // Windows: Ctrl-C and closing the console come as a shutdown request through the
        // watcher, which owns the loop's only waker (mio allows one per poll).
        #[cfg(windows)]
        if config.handle_signals {
            exit_watcher.stop_on_console_events()?;
        }
        #[cfg(unix)]
        let signals = if config.handle_signals {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            connections: HashMap::new(),
            next_id: 1,
            unauthenticated: 0,
            exit_watcher,
            #[cfg(unix)]
            signals,
            #[cfg(unix)]
            stop_requests: None,
            shared: Shared {
                config,
                deadlines: Deadlines::default(),
                children: ChildTable::default(),
                spawner,
                loop_busy: false,
                scratch: vec![0; MAX_CHUNK],
                decoded: Vec::with_capacity(MAX_CHUNK),
            },
            more_work: Vec::new(),
            accept_paused_until: None,
            refusals: RefusalLog::default(),
            burst_trim: BurstTrim::default(),
            shutdown_started: None,
        })
    }

    /// The address actually listened on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle another thread of this process can stop the server with, as SIGTERM would
    /// (for `rcmd demo`, whose server is a thread of the client's process and must not die with
    /// it while a command runs).
    ///
    /// # Errors
    /// The socket pair cannot be made or registered.
    #[cfg(unix)]
    pub fn stop_handle(&mut self) -> io::Result<StopHandle> {
        // A socket pair rather than a `mio::Waker`: a poll has only one waker, which the
        // spawner threads already use, and a socket also carries the answer back.
        let (mut ours, theirs) = mio::net::UnixStream::pair()?;
        self.poll
            .registry()
            .register(&mut ours, STOP_REQUESTS, Interest::READABLE)?;
        self.stop_requests = Some(ours);
        // The handle's end blocks: `stop` waits for the answer.
        let theirs = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(theirs));
        theirs.set_nonblocking(false)?;
        Ok(StopHandle {
            stream: theirs,
            outcome: std::sync::Mutex::new(None),
        })
    }

    /// Serves clients until a shutdown signal; then kills running commands, says goodbye to
    /// clients and returns.
    ///
    /// # Errors
    /// Only if polling itself fails; per-connection errors close that connection.
    pub fn run(mut self) -> io::Result<()> {
        let config = &self.shared.config;
        info!(
            "serving on {} (output encoding {}, handshake timeout {:?}, max {} connections)",
            self.local_addr,
            config.encoding.describe(),
            config.limits.handshake_timeout,
            config.limits.max_connections
        );
        // Start-up lines now, not at the end of the first turn: that waits for a client.
        crate::logging::write_held();
        let mut events = Events::with_capacity(1024);
        // Windows: commands spawned on this thread report to this server's watcher.
        #[cfg(windows)]
        let _spawn_context = self.exit_watcher.enter();
        loop {
            let now = Instant::now();
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            let mut to_drive = std::mem::take(&mut self.more_work);
            // One event and no backlog: a lone client, for whom starting its command inline
            // is fastest. Anything more: keep the loop free (see `spawner`). The SIGCHLD of
            // the client's previous command, often reported with its next one, is no load.
            self.shared.loop_busy = !to_drive.is_empty()
                || events
                    .iter()
                    .filter(|e| e.token() != CHILD_EVENTS)
                    .nth(1)
                    .is_some();
            for event in events.iter() {
                match event.token() {
                    #[cfg(unix)]
                    SPAWNED => self.route_spawned(now, &mut to_drive),
                    LISTENER => self.accept_all(now, &mut to_drive),
                    CHILD_EVENTS => {
                        self.route_child_events(&mut to_drive);
                        #[cfg(windows)]
                        if self.exit_watcher.take_shutdown_request() {
                            info!("received a console control event (Ctrl-C, Ctrl-Break, close)");
                            if self.shutdown_requested(now, &mut to_drive) {
                                self.exit_now();
                                return Ok(());
                            }
                        }
                    }
                    #[cfg(unix)]
                    STOP_REQUESTS => {
                        if self.stop_requested(now, &mut to_drive) {
                            self.exit_now();
                            return Ok(());
                        }
                    }
                    #[cfg(unix)]
                    SIGNALS => {
                        if self.handle_signals(now, &mut to_drive) {
                            self.exit_now();
                            return Ok(());
                        }
                    }
                    // Sporadic events for connections already closed are normal; `drive` ignores them.
                    token => self.mark_ready(token, &mut to_drive),
                }
            }
            self.fire_deadlines(now, &mut to_drive);
            if self.accept_paused_until.is_some_and(|until| until <= now) {
                self.accept_paused_until = None;
                self.accept_all(now, &mut to_drive);
            }
            // One connection may be listed several times in a turn (its socket, its pipes, its
            // command's exit, a deadline): drive it once.
            to_drive.sort_unstable();
            to_drive.dedup();
            for id in to_drive {
                self.drive(id, now);
            }
            if let Some(unlogged) = self.refusals.count_due(now) {
                warn!("{unlogged} more connections refused at the limits, not logged");
            }
            // Only now, with this turn's replies sent, the turn's log lines (`crate::logging`).
            crate::logging::write_held();
            self.sweep_deadlines();
            self.hand_back_memory_after_a_burst();
            if let Some(started) = self.shutdown_started
                && (self.connections.is_empty() || started.elapsed() > SHUTDOWN_GRACE)
            {
                break;
            }
        }
        self.reap_remaining_children();
        match self.refusals.take_unlogged() {
            0 => {}
            unlogged => warn!("{unlogged} more connections refused at the limits, not logged"),
        }
        info!("shut down");
        crate::logging::write_held();
        Ok(())
    }

    /// Lets the deadline heap drop, in bulk, what no one needs: the deadlines of closed
    /// connections, and the timeouts of commands that are no longer running.
    fn sweep_deadlines(&mut self) {
        let connections = &self.connections;
        self.shared.deadlines.sweep(|id, kind| match kind {
            DeadlineKind::Command(serial) => connections
                .get(&id)
                .is_some_and(|connection| connection.is_running(serial)),
            _ => connections.contains_key(&id),
        });
    }

    /// After a burst of connections has mostly gone, returns the memory their buffers used to
    /// the system (`burst_trim` says when, and why it is worth it).
    fn hand_back_memory_after_a_burst(&mut self) {
        let open = self.connections.len();
        if self.burst_trim.should_trim(open) {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            {
                // SAFETY: malloc_trim only releases free memory of glibc's heap; it takes no
                // pointers and is safe to call at any time.
                unsafe { libc::malloc_trim(0) };
                debug!("returned freed memory to the system ({open} connections open)");
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.more_work.is_empty() {
            // Readiness is edge-triggered: a connection that stopped with bytes still waiting
            // (to keep one client from starving the rest) gets no new event for them, so the
            // loop must not sleep before it comes back to it.
            return Some(Duration::ZERO);
        }
        let mut timeout = self.shared.deadlines.time_until_next(now);
        for until in [
            self.accept_paused_until,
            self.shutdown_started.map(|s| s + SHUTDOWN_GRACE),
            self.refusals.next_count_due(),
        ]
        .into_iter()
        .flatten()
        {
            let wait = until.saturating_duration_since(now);
            timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
        }
        timeout
    }

    fn context<'a>(
        registry: &'a mio::Registry,
        shared: &'a mut Shared,
        now: Instant,
    ) -> Context<'a> {
        Context {
            registry,
            config: &shared.config,
            deadlines: &mut shared.deadlines,
            children: &mut shared.children,
            spawner: &mut shared.spawner,
            loop_busy: shared.loop_busy,
            scratch: &mut shared.scratch,
            decoded: &mut shared.decoded,
            now,
        }
    }

    fn drive(&mut self, id: ConnId, now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let was_unauthenticated = connection.counts_as_unauthenticated();
        let mut ctx = Self::context(self.poll.registry(), &mut self.shared, now);
        let outcome = connection.drive(&mut ctx);
        if was_unauthenticated && !connection.counts_as_unauthenticated() {
            self.unauthenticated -= 1;
        }
        if outcome != Drive::Closed && connection.sync_interest(self.poll.registry()).is_err() {
            return self.close(id);
        }
        match outcome {
            Drive::Open => {}
            Drive::MoreWork => self.more_work.push(id),
            Drive::Closed => self.close(id),
        }
    }

    fn close(&mut self, id: ConnId) {
        if let Some(mut connection) = self.connections.remove(&id) {
            if connection.counts_as_unauthenticated() {
                self.unauthenticated -= 1;
            }
            let _ = self.poll.registry().deregister(connection.socket_mut());
            debug!("{}: closed", connection.peer());
            // Dropping the connection kills its command's process tree, if one is running.
        }
        // Its deadlines (an idle check lies an hour ahead) go in the next bulk sweep.
    }

    /// Accepts every client waiting in the listen queue. Edge-triggered, like every source: the
    /// listener's event came once for however many clients are queued, so accepting stops only
    /// at `WouldBlock`, or the clients behind the first would get no event of their own.
    fn accept_all(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_resources(&e) => {
                    // EMFILE: the connection stays in the kernel's queue. Pause, let closing
                    // connections free descriptors, retry; the clients we have keep being served.
                    warn!("cannot accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    // A client that reset before we accepted it, and the like: its problem only.
                    debug!("accept: {e}");
                    continue;
                }
            };
            let limits = &self.shared.config.limits;
            if self.connections.len() >= limits.max_connections {
                if let Some(unlogged) = self.refusals.refused(now) {
                    warn!(
                        "{peer}: refused: at the limit of {} connections{}",
                        limits.max_connections,
                        unlogged_note(unlogged)
                    );
                }
                let why = format!(
                    "server is at its limit of {} connections",
                    limits.max_connections
                );
                refuse(socket, &why);
                continue;
            }
            if self.unauthenticated >= limits.max_handshakes {
                if let Some(unlogged) = self.refusals.refused(now) {
                    warn!(
                        "{peer}: refused: already {} not yet authenticated (--max-handshakes){}",
                        self.unauthenticated,
                        unlogged_note(unlogged)
                    );
                }
                refuse(
                    socket,
                    "too many connections not yet authenticated; try again",
                );
                continue;
            }
            if let Err(e) = self.admit(socket, peer, now, to_drive) {
                warn!("{peer}: cannot set up connection: {e}");
            }
        }
    }

    fn admit(
        &mut self,
        mut socket: TcpStream,
        peer: SocketAddr,
        now: Instant,
        to_drive: &mut Vec<ConnId>,
    ) -> io::Result<()> {
        crate::tcp::configure(&socket)?;
        let id = self.next_id;
        self.next_id += 1;
        // Readable only: writability is asked for only while replies are queued (see
        // `Connection::sync_interest`).
        self.poll.registry().register(
            &mut socket,
            connection::token(id, Source::Socket),
            Interest::READABLE,
        )?;
        info!("{peer}: connected");
        let mut ctx = Self::context(self.poll.registry(), &mut self.shared, now);
        let connection = Connection::new(id, socket, peer, &mut ctx);
        self.connections.insert(id, connection);
        self.unauthenticated += 1;
        to_drive.push(id);
        Ok(())
    }

    /// Tells a connection which of its sources the poll reported ready, and queues it.
    fn mark_ready(&mut self, token: Token, to_drive: &mut Vec<ConnId>) {
        let id = connection::conn_of(token);
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.on_ready(connection::source_of(token));
        }
        to_drive.push(id);
    }

    fn route_child_events(&mut self, to_drive: &mut Vec<ConnId>) {
        for event in self.exit_watcher.take_events() {
            let (pid, status) = match event {
                ChildEvent::Ready(token) => {
                    self.mark_ready(token, to_drive);
                    continue;
                }
                ChildEvent::Exited { pid, status } => (pid, status),
            };
            let ticket_watermark = self.shared.spawner.ticket_watermark();
            match self.shared.children.exited(pid, status, ticket_watermark) {
                ExitRoute::Owner(id) => {
                    debug!("pid {pid} exited: {status}");
                    if let Some(connection) = self.connections.get_mut(&id) {
                        connection.on_exit(pid, status);
                        to_drive.push(id);
                    }
                }
                ExitRoute::Unwanted => {
                    debug!("reaped pid {pid} ({status}), started for a connection that had gone")
                }
                ExitRoute::KeptForClaim => {
                    debug!("pid {pid} exited ({status}) before its start was handled")
                }
                ExitRoute::Unknown => debug!("reaped pid {pid} ({status}), not one of ours"),
            }
        }
    }

    /// Hands commands the spawner threads started to their connections.
    #[cfg(unix)]
    fn route_spawned(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) {
        for spawned in self.shared.spawner.take_finished() {
            let unwanted = match self.connections.get_mut(&spawned.conn) {
                Some(connection) => {
                    let mut ctx = Self::context(self.poll.registry(), &mut self.shared, now);
                    let unwanted = connection.on_spawned(spawned.serial, spawned.result, &mut ctx);
                    to_drive.push(spawned.conn);
                    unwanted
                }
                None => spawned.result.ok(),
            };
            // Unless already reaped: then the pid is no longer ours to signal.
            if let Some(child) = unwanted
                && self.shared.children.disown(child.id())
            {
                process::kill_unwanted(child.id());
            }
        }
        let oldest = self.shared.spawner.oldest_outstanding();
        self.shared.children.forget_unclaimable(oldest);
    }

    fn fire_deadlines(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) {
        while let Some((id, kind)) = self.shared.deadlines.pop_due(now) {
            let Some(connection) = self.connections.get_mut(&id) else {
                continue;
            };
            let mut ctx = Self::context(self.poll.registry(), &mut self.shared, now);
            // A connection dropped at the handshake deadline still counts as unauthenticated
            // until it is closed, at most the closing grace later.
            let close_now = connection.on_deadline(kind, &mut ctx);
            if close_now {
                self.close(id);
            } else {
                to_drive.push(id);
            }
        }
    }

    /// A [`StopHandle`] asked: shut down as on SIGTERM, and answer once every running command
    /// has been killed (the shutdown kills them at once; closing the connections takes longer).
    /// True: exit now (a second request).
    #[cfg(unix)]
    fn stop_requested(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) -> bool {
        use std::io::Read;
        let Some(requests) = &mut self.stop_requests else {
            return false;
        };
        // Room for several requests, so that one read drains them all.
        let mut byte = [0u8; 16];
        let asked = matches!(requests.read(&mut byte), Ok(1..));
        if !asked {
            // The handle was dropped (or a spurious wake-up): nothing to do.
            return false;
        }
        info!("asked to stop by the process it runs in");
        let exit_now = self.shutdown_requested(now, to_drive);
        if let Some(requests) = &mut self.stop_requests {
            let _ = requests.write_all(b"k");
        }
        exit_now
    }

    /// Acts on the signals that arrived: SIGHUP re-reads the secret, SIGINT and SIGTERM shut
    /// down. True: exit now.
    #[cfg(unix)]
    fn handle_signals(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) -> bool {
        use signal_hook::consts::SIGHUP;
        let Some(signals) = &mut self.signals else {
            return false;
        };
        let pending: Vec<i32> = signals.pending().collect();
        let mut shutdown = false;
        for signal in pending {
            let name = signal_name(signal);
            if signal == SIGHUP {
                info!("received {name}: reading the secret again");
                self.reload_secret();
            } else {
                info!("received {name}");
                shutdown = true;
            }
        }
        // SIGINT and SIGTERM arriving together (a wrapper passing Ctrl-C on) are one request;
        // only a later one means "exit now".
        shutdown && self.shutdown_requested(now, to_drive)
    }

    /// SIGHUP, as `sshd` and `nginx` take it: the secret file is read again, so a rotated
    /// secret takes effect without a restart. Connections already authenticated keep their
    /// session keys; handshakes from now on must prove the new secret. If the file cannot be
    /// read (or is not safe to use), the old secret stays.
    #[cfg(unix)]
    fn reload_secret(&mut self) {
        let Some(path) = &self.shared.config.secret_file else {
            warn!("the secret did not come from a file; nothing to read again");
            return;
        };
        match crate::secret::load_for_server(path) {
            Ok(secret) if secret == self.shared.config.secret => {
                info!("the secret in {} is unchanged", path.display());
            }
            Ok(secret) => {
                self.shared.config.secret = secret;
                info!(
                    "new secret from {} in use for new connections",
                    path.display()
                );
            }
            Err(e) => warn!("kept the old secret: {e}"),
        }
    }

    /// Kills the commands the spawner threads have started since their connections went (at
    /// shutdown, every connection has), unless reaped already.
    #[cfg(unix)]
    fn kill_starts_without_owner(&mut self) {
        for spawned in self.shared.spawner.take_finished() {
            if let Ok(child) = spawned.result
                && self.shared.children.disown(child.id())
            {
                process::kill_unwanted(child.id());
            }
        }
        let oldest = self.shared.spawner.oldest_outstanding();
        self.shared.children.forget_unclaimable(oldest);
    }

    /// The end of "exit now" (a second shutdown request): the connections, dropped with the
    /// server, kill their commands; a command the spawner threads are starting at this moment
    /// has no connection any more, so it is waited for briefly and killed here, not left
    /// running after the server.
    fn exit_now(&mut self) {
        #[cfg(unix)]
        {
            let deadline = Instant::now() + Duration::from_secs(1);
            while self.shared.spawner.in_flight() > 0 && Instant::now() < deadline {
                self.kill_starts_without_owner();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// A shutdown signal: the first starts a graceful shutdown; a second one means exit now
    /// (true).
    fn shutdown_requested(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) -> bool {
        if self.shutdown_started.is_some() {
            warn!("second shutdown signal: exiting now");
            return true;
        }
        self.begin_shutdown(now, to_drive);
        false
    }

    fn begin_shutdown(&mut self, now: Instant, to_drive: &mut Vec<ConnId>) {
        info!(
            "shutting down: no new connections; stopping {} connection(s)",
            self.connections.len()
        );
        self.shutdown_started = Some(now);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for (id, connection) in &mut self.connections {
            let mut ctx = Self::context(self.poll.registry(), &mut self.shared, now);
            connection.shut_down(&mut ctx);
            to_drive.push(*id);
        }
    }

    /// Waits briefly for killed children so none is left a zombie when we exit.
    fn reap_remaining_children(&mut self) {
        self.connections.clear(); // kills any command still running
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let pending =
            |shared: &Shared| shared.children.running() > 0 || shared.spawner.in_flight() > 0;
        while pending(&self.shared) && Instant::now() < deadline {
            // Commands still being started when the connections went: kill them on arrival.
            #[cfg(unix)]
            self.kill_starts_without_owner();
            for event in self.exit_watcher.take_events() {
                if let ChildEvent::Exited { pid, status } = event {
                    let ticket_watermark = self.shared.spawner.ticket_watermark();
                    self.shared.children.exited(pid, status, ticket_watermark);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.shared.children.running() > 0 {
            error!(
                "{} command(s) did not exit after being killed",
                self.shared.children.running()
            );
        }
    }
}

/// Sends a refused client a fatal error and closes it. Best effort: the frame is small enough
/// for an empty socket buffer, and a client that is not reading loses nothing it was owed.
fn refuse(mut socket: TcpStream, why: &str) {
    let mut frame = Vec::new();
    FrameEncoder::new().encode(
        &Message::fatal(ErrorCode::TooManyConnections, why),
        b"",
        &mut frame,
    );
    let _ = socket.write(&frame);
}

fn is_out_of_resources(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        error.kind() == io::ErrorKind::OutOfMemory
    }
}

/// Raises the soft limit on open files to the hard limit: each connection needs up to four
/// descriptors (socket and three pipes), and the usual soft limit of 1024 is far too low.
#[cfg(unix)]
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                debug!(
                    "could not raise the open file limit: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Stops a running [`Server`] from another thread of the same process: see
/// [`Server::stop_handle`].
#[cfg(unix)]
pub struct StopHandle {
    stream: std::os::unix::net::UnixStream,
    /// The answer to the one request sent: the demo may ask from two threads at once (a
    /// SIGTERM's handler and the prompt ending because of it), and a second request would read
    /// as a second shutdown signal ("exit now").
    outcome: std::sync::Mutex<Option<bool>>,
}

#[cfg(unix)]
impl StopHandle {
    /// Asks the server to shut down as on SIGTERM (running commands killed, clients told) and
    /// waits, at most `timeout`, until it has killed the running commands. False if it did not
    /// answer in time (or had already stopped). Asked again, from any thread, it sends nothing:
    /// it returns the first request's answer, waiting while that request waits (up to the first
    /// caller's `timeout`, whatever its own).
    pub fn stop(&self, timeout: Duration) -> bool {
        use std::io::Read;
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stopped) = *outcome {
            return stopped;
        }
        let mut stream = &self.stream;
        let stopped = stream.write_all(b"s").is_ok()
            && stream.set_read_timeout(Some(timeout)).is_ok()
            && matches!(stream.read(&mut [0u8; 1]), Ok(1));
        *outcome = Some(stopped);
        stopped
    }
}

/// The name of a signal the server handles, for its log.
#[cfg(unix)]
fn signal_name(signal: i32) -> String {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal {
        SIGHUP => "SIGHUP".to_owned(),
        SIGINT => "SIGINT".to_owned(),
        SIGTERM => "SIGTERM".to_owned(),
        other => format!("signal {other}"),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_stop_asked_twice_is_one_request_with_one_answer() {
        // The demo asks from a signal's handler and from its prompt's end, maybe both: a second
        // request must not reach the server as a second shutdown signal ("exit now").
        let config = ServerConfig {
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            encoding: OutputEncoding::Passthrough,
            workdir: std::env::temp_dir(),
            limits: Limits::default(),
            handle_signals: false,
            secret_file: None,
        };
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let stop = std::sync::Arc::new(server.stop_handle().unwrap());
        let running = std::thread::spawn(move || server.run());
        let again = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.stop(Duration::from_secs(10)))
        };
        assert!(stop.stop(Duration::from_secs(10)));
        assert!(again.join().unwrap());
        // Asked once more after the server has gone: the same answer, nothing sent.
        running.join().unwrap().unwrap();
        assert!(stop.stop(Duration::from_secs(10)));
    }
}
