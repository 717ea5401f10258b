//! The unframed server: the socket-tutorial command server, kept on purpose.
//!
//! It is written the way the tutorials write it, so that it behaves the way theirs does:
//! blocking sockets, one thread per connection, and per command one `recv` for the command and
//! two plain `send`s for the answer (stderr, then stdout). Compare `crate::server`, the real
//! server: one event loop, and every piece of output in a length-prefixed frame.
//!
//! ```text
//! accept ──► send 32-byte nonce ──► read 32-byte proof ──► wrong? close
//!                                                          │ right
//!            ┌─────────────────────────────────────────────┘
//!            ▼
//!   recv(1024) = command ──► sh -c command ──► send(stderr) ──► send(stdout) ──┐
//!            ▲                                                                 │
//!            └─────────────────────────────────────────────────────────────────┘
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::shell::{self, CommandOutput};
use super::{CHALLENGE_LEN, COMMAND_RECV_SIZE, StickyError, check_insecure_listen};
use crate::auth;
use crate::output::{OutputEncoding, StreamDecoder};

/// How the unframed server runs. Not `Debug`: it holds the secret, which no log line or panic
/// message may show.
#[derive(Clone)]
pub struct UnframedConfig {
    /// The shared secret for the raw handshake; `None` skips the handshake entirely
    /// (`--insecure-no-auth`, loopback only), so `nc` or a tutorial client can connect.
    pub secret: Option<Vec<u8>>,
    /// Set TCP_NODELAY on each connection (turn Nagle's algorithm off). Off by default, as in
    /// the tutorials; turning it on shows that it does not cure sticky packets.
    pub nodelay: bool,
    /// Where commands run.
    pub workdir: PathBuf,
    /// What to do with command output before sending it (decode a Windows code page to UTF-8).
    pub encoding: OutputEncoding,
    /// How long a client has to answer the challenge.
    pub handshake_timeout: Duration,
    /// How long an idle connection (no command arriving) is kept; `None` keeps it forever.
    pub idle_timeout: Option<Duration>,
    /// Connections served at once; each one is a thread.
    pub max_connections: usize,
    /// If set, every write the server makes is reported here before it is made, so the demo
    /// can show where the message boundaries were that the client cannot see.
    pub write_log: Option<Sender<ServerWrite>>,
}

impl UnframedConfig {
    /// A configuration with the defaults of `rcmd serve --framing none`.
    pub fn new(secret: Option<Vec<u8>>, workdir: PathBuf) -> UnframedConfig {
        UnframedConfig {
            secret,
            nodelay: false,
            workdir,
            encoding: OutputEncoding::auto(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_connections: 4096,
            write_log: None,
        }
    }
}

/// One write the server made to a client: the bytes of one "message" on a wire that has no
/// way to mark messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerWrite {
    /// The client it went to.
    pub peer: SocketAddr,
    /// The command whose output this is.
    pub command: String,
    /// `"stderr"` or `"stdout"`.
    pub stream: &'static str,
    pub bytes: Vec<u8>,
}

/// A bound unframed server, ready to [`run`](UnframedServer::run).
pub struct UnframedServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Arc<UnframedConfig>,
}

impl UnframedServer {
    /// Binds `addr`. Without a secret, only a loopback address is accepted, and that is checked
    /// before anything is bound.
    ///
    /// # Errors
    /// [`StickyError::InsecureNotLoopback`], or [`StickyError::Bind`] if the address cannot be
    /// bound.
    pub fn bind(addr: SocketAddr, config: UnframedConfig) -> Result<UnframedServer, StickyError> {
        if config.secret.is_none() {
            check_insecure_listen(addr)?;
        }
        let listener = TcpListener::bind(addr).map_err(|e| StickyError::Bind(addr, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StickyError::Bind(addr, e))?;
        Ok(UnframedServer {
            listener,
            local_addr,
            config: Arc::new(config),
        })
    }

    /// The address actually listened on (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts clients forever, each on a thread of its own.
    ///
    /// # Errors
    /// Only if accepting fails in a way that will not pass (the listener is broken).
    pub fn run(self) -> io::Result<()> {
        warn!(
            "unframed mode on {}: a DEMONSTRATION of a broken protocol (no lengths, no end \
             markers: answers split and merge). Use the default --framing length for real work.",
            self.local_addr
        );
        if let Some(exposure) = exposure_warning(self.local_addr, self.config.secret.is_some()) {
            warn!("{exposure}");
        }
        let active = Arc::new(AtomicUsize::new(0));
        for incoming in self.listener.incoming() {
            let stream = match incoming {
                Ok(stream) => stream,
                // A client that gave up between connect and accept, or a transient shortage
                // of file descriptors: skip it, the next accept may well work.
                Err(e) => {
                    warn!("accept failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let Some(slot) = ConnectionSlot::take(&active, self.config.max_connections) else {
                warn!(
                    "refusing a connection: {} connections already",
                    self.config.max_connections
                );
                continue;
            };
            let config = Arc::clone(&self.config);
            thread::spawn(move || {
                let _slot = slot;
                handle_connection(stream, &config);
            });
        }
        Ok(())
    }
}

/// What the start-up log must say about who can do what to this server, if anything.
/// Without the handshake, anyone who can connect runs commands. With it, only loopback is
/// quiet: on a network address the unframed mode is allowed (a class may want to see sticky
/// packets on a real network), but the handshake is all the protection there is.
fn exposure_warning(addr: SocketAddr, authenticated: bool) -> Option<String> {
    if !authenticated {
        Some(format!(
            "--insecure-no-auth: anyone who can connect to {addr} runs commands as this user"
        ))
    } else if !addr.ip().is_loopback() {
        Some(format!(
            "unframed mode on {addr}, not loopback: only the start of each connection is \
             authenticated; its commands and output travel unprotected, so anyone on the path \
             can read them or inject commands. Use it only on a network you trust."
        ))
    } else {
        None
    }
}

/// One of the `max_connections` places; given back when dropped, however the thread ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<ConnectionSlot> {
        let taken = active.fetch_add(1, Ordering::SeqCst);
        let slot = ConnectionSlot(Arc::clone(active));
        (taken < max).then_some(slot)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection ended early.
#[derive(Debug)]
enum ConnectionEnd {
    /// The client's proof was wrong.
    BadProof,
    /// The client did not finish the handshake in time.
    HandshakeTimeout,
    /// The client closed the connection in the middle of the handshake.
    LeftDuringHandshake,
    /// No command for longer than the idle timeout.
    Idle,
    /// The network failed.
    Io(io::Error),
}

impl std::fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionEnd::BadProof => {
                write!(
                    f,
                    "authentication failed (wrong proof: a different secret?)"
                )
            }
            ConnectionEnd::HandshakeTimeout => write!(f, "did not answer the challenge in time"),
            ConnectionEnd::LeftDuringHandshake => {
                write!(f, "closed the connection during the handshake")
            }
            ConnectionEnd::Idle => write!(f, "idle for too long"),
            ConnectionEnd::Io(e) => write!(f, "network error: {e}"),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    // A read timeout is WouldBlock on Unix and TimedOut on Windows.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn handle_connection(mut stream: TcpStream, config: &UnframedConfig) {
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(e) => {
            warn!("a client left before it could be served: {e}");
            return;
        }
    };
    info!("{peer} connected");
    match serve_client(&mut stream, peer, config) {
        Ok(()) => info!("{peer} disconnected"),
        Err(end) => warn!("{peer}: {end}; closing the connection"),
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn serve_client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    config: &UnframedConfig,
) -> Result<(), ConnectionEnd> {
    stream
        .set_nodelay(config.nodelay)
        .map_err(ConnectionEnd::Io)?;
    if let Some(secret) = &config.secret {
        authenticate(stream, secret, config.handshake_timeout)?;
        info!("{peer} authenticated");
    }
    stream
        .set_read_timeout(config.idle_timeout)
        .map_err(ConnectionEnd::Io)?;
    let mut buf = [0u8; COMMAND_RECV_SIZE];
    loop {
        // One recv is one command, as in the tutorial: whatever arrived together is taken as a
        // single command, and a command over 1024 bytes is cut in two.
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(ConnectionEnd::Idle),
            // A client that vanishes without closing properly is a disconnection, not a fault.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(ConnectionEnd::Io(e)),
        };
        let command = command_text(&buf[..n]);
        if command.trim().is_empty() {
            continue;
        }
        info!("{peer}: running {command:?}");
        let output = run_command(&command, config);
        send_answer(stream, peer, &command, &output, config).map_err(ConnectionEnd::Io)?;
    }
}

/// The raw handshake: 32 random bytes out, HMAC-SHA256(secret, nonce) back, all of it within
/// `timeout`.
fn authenticate(
    stream: &mut TcpStream,
    secret: &[u8],
    timeout: Duration,
) -> Result<(), ConnectionEnd> {
    let nonce = auth::new_nonce();
    stream.write_all(&nonce).map_err(ConnectionEnd::Io)?;
    let mut proof = [0u8; CHALLENGE_LEN];
    read_exact_by(stream, &mut proof, Instant::now() + timeout)?;
    if auth::verify_tutorial_proof(secret, &nonce, &proof) {
        Ok(())
    } else {
        Err(ConnectionEnd::BadProof)
    }
}

/// Fills `buf` from `stream` by `deadline`. Not `read_exact` under a read timeout: that timeout
/// applies to each read, so a client sending one byte just before each would hold the
/// handshake open for 32 timeouts. Several reads, because even 32 bytes may arrive in pieces.
fn read_exact_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ConnectionEnd> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectionEnd::HandshakeTimeout);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(ConnectionEnd::Io)?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(ConnectionEnd::LeftDuringHandshake),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(ConnectionEnd::HandshakeTimeout),
            Err(e) => return Err(ConnectionEnd::Io(e)),
        }
    }
    Ok(())
}

/// The command in `received`: text (invalid UTF-8 replaced), without the line ending that `nc`
/// and terminals add.
fn command_text(received: &[u8]) -> String {
    let text = String::from_utf8_lossy(received);
    text.trim_end_matches(['\r', '\n']).to_owned()
}

/// Runs the command; a failure to start it becomes its stderr, as a shell would report it.
fn run_command(command: &str, config: &UnframedConfig) -> CommandOutput {
    let mut output = match shell::run(command, &config.workdir) {
        Ok(output) => output,
        Err(e) => CommandOutput {
            stderr: format!("rcmd: cannot run the command: {e}\n").into_bytes(),
            ..CommandOutput::default()
        },
    };
    if output.truncated {
        warn!(
            "output of {command:?} cut to {} bytes per stream",
            shell::MAX_OUTPUT
        );
    }
    output.stdout = transcode(config.encoding, output.stdout);
    output.stderr = transcode(config.encoding, output.stderr);
    output
}

/// The output as sent: unchanged on UTF-8 systems, decoded from a legacy code page to UTF-8
/// where commands write one (see [`crate::output`]). The whole output is at hand, so it is
/// decoded in one go.
fn transcode(encoding: OutputEncoding, bytes: Vec<u8>) -> Vec<u8> {
    if encoding == OutputEncoding::Passthrough {
        return bytes;
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    StreamDecoder::new(encoding).decode(&bytes, true, &mut decoded);
    decoded
}

/// The answer: two plain writes, stderr then stdout. No length, no end marker: the client
/// cannot tell where stderr ends, where stdout ends, or whether the answer is complete.
fn send_answer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    command: &str,
    output: &CommandOutput,
    config: &UnframedConfig,
) -> io::Result<()> {
    for (name, bytes) in [("stderr", &output.stderr), ("stdout", &output.stdout)] {
        // `send(b"")` puts nothing on the wire, so an empty stream is simply not sent.
        if bytes.is_empty() {
            continue;
        }
        if let Some(log) = &config.write_log {
            // Reported before writing, so the record exists by the time the bytes can be read.
            let _ = log.send(ServerWrite {
                peer,
                command: command.to_owned(),
                stream: name,
                bytes: bytes.clone(),
            });
        }
        stream.write_all(bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_lose_their_line_ending_only() {
        assert_eq!(command_text(b"ls -la\n"), "ls -la");
        assert_eq!(command_text(b"dir\r\n"), "dir");
        assert_eq!(command_text(b"echo a\necho b\n"), "echo a\necho b");
        assert_eq!(command_text(b"  echo  "), "  echo  ");
        assert_eq!(command_text(b"echo \xff"), "echo \u{fffd}");
    }

    #[test]
    fn connection_slots_are_limited_and_given_back() {
        let active = Arc::new(AtomicUsize::new(0));
        let first = ConnectionSlot::take(&active, 1);
        assert!(first.is_some());
        assert!(ConnectionSlot::take(&active, 1).is_none());
        drop(first);
        assert!(ConnectionSlot::take(&active, 1).is_some());
    }

    #[test]
    fn the_start_up_log_says_what_a_network_address_leaves_open() {
        let at = |addr: &str| addr.parse::<SocketAddr>().unwrap();
        assert_eq!(exposure_warning(at("127.0.0.1:9999"), true), None);
        assert_eq!(exposure_warning(at("[::1]:9999"), true), None);
        for addr in ["0.0.0.0:9999", "192.168.1.10:9999", "[::]:9999"] {
            let warning = exposure_warning(at(addr), true).expect(addr);
            assert!(warning.contains("inject commands"), "{warning}");
        }
        let open = exposure_warning(at("127.0.0.1:9999"), false).unwrap();
        assert!(open.contains("anyone who can connect"), "{open}");
    }
}
