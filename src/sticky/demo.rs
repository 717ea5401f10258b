//! `rcmd demo sticky`: both sticky-packet effects, then rcmd's framing making them disappear.
//!
//! Everything runs in this process, on loopback, with a secret made up for the occasion:
//!
//! 1. An unframed server ([`super::server`]) is started, and the unframed client
//!    ([`super::client`]) sends it the same commands a tutorial would. The server also tells
//!    the demo what each of its writes contained, so every read can be shown cut along the
//!    boundaries the client itself cannot see.
//! 2. The real, framed rcmd server is started and the same commands are run through the real
//!    client ([`crate::client::Session`]), made to read the same way (at most 1024 bytes, a
//!    moment after each answer starts to arrive; see [`crate::client::trace`]). The reads are cut and
//!    merged again, and each command's output still comes back whole, frame by frame, every
//!    time: the decoder hands on a frame only once all of it is in.
//!
//! The unframed part runs first and is finished before the framed server starts: on Unix the
//! framed server reaps every child of the process when SIGCHLD arrives, which is right for a
//! server that owns all its children but would race with the unframed server's own `wait`.

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;

use super::StickyError;
use super::client::{ReadOptions, ReadOutcome, UnframedClient};
use super::preview::{StreamMap, preview};
use super::server::{ServerWrite, UnframedConfig, UnframedServer};
use crate::auth;
use crate::client::trace::TraceEvent;
use crate::client::{ClientError, CommandInput, OutputSink, Session};
use crate::output::OutputEncoding;
use crate::protocol::frame::LEN_PREFIX;
use crate::protocol::message::to_hex;
use crate::protocol::{ExitStatus, FrameEncoder, Message};
use crate::server::{Limits, Server, ServerConfig};

/// Bytes shown at each end of a long preview.
const PREVIEW_KEEP: usize = 12;

/// The commands of the demonstration, chosen to exist on every system of their kind and to
/// print the same thing every time (so the byte counts are stable).
struct Commands {
    /// Prints well over 1024 bytes, on stdout only.
    long: &'static str,
    /// Prints a few bytes on stdout.
    short: &'static str,
    /// Prints a few bytes on stdout and a few on stderr.
    both: &'static str,
}

#[cfg(not(windows))]
const COMMANDS: Commands = Commands {
    long: "seq 1 400",
    short: "echo hello",
    both: "echo out; echo err >&2",
};

#[cfg(windows)]
const COMMANDS: Commands = Commands {
    long: "for /L %i in (1,1,400) do @echo %i",
    short: "echo hello",
    both: "echo out& echo err>&2",
};

/// Why the demonstration could not run.
#[derive(Debug)]
pub enum DemoError {
    /// The unframed half failed.
    Unframed(StickyError),
    /// The framed half failed.
    Framed(ClientError),
    /// The framed server could not start.
    FramedServer(io::Error),
    /// Writing the demonstration's own output failed.
    Output(io::Error),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Unframed(e) => write!(f, "unframed part: {e}"),
            DemoError::Framed(e) => write!(f, "framed part: {e}"),
            DemoError::FramedServer(e) => write!(f, "cannot start the framed server: {e}"),
            DemoError::Output(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

impl std::error::Error for DemoError {}

impl From<StickyError> for DemoError {
    fn from(e: StickyError) -> DemoError {
        DemoError::Unframed(e)
    }
}

impl From<ClientError> for DemoError {
    fn from(e: ClientError) -> DemoError {
        DemoError::Framed(e)
    }
}

impl From<io::Error> for DemoError {
    fn from(e: io::Error) -> DemoError {
        DemoError::Output(e)
    }
}

/// Runs the whole demonstration, writing it to `out`.
///
/// # Errors
/// A server could not start, a connection failed, or `out` could not be written.
pub fn run(out: &mut dyn Write) -> Result<(), DemoError> {
    // A throwaway secret: both servers and both clients live in this process.
    let secret = to_hex(&auth::new_nonce()).into_bytes();
    let workdir = std::env::current_dir().unwrap_or_else(|_| std::env::temp_dir());
    let options = ReadOptions::default();
    introduce(out, &options)?;

    let (unframed_addr, writes) = start_unframed_server(&secret, workdir.clone())?;
    let mut unframed = UnframedPart {
        out: &mut *out,
        addr: unframed_addr,
        secret: &secret,
        options,
        writes,
    };
    unframed.type_one()?;
    unframed.type_two()?;

    let framed_addr = start_framed_server(&secret, workdir)?;
    framed_part(out, framed_addr, &secret, options)?;
    explain_the_fix(out)?;
    Ok(())
}

fn introduce(out: &mut dyn Write, options: &ReadOptions) -> io::Result<()> {
    writeln!(
        out,
        "rcmd demo sticky: TCP delivers a stream of bytes, not messages.\n\
         \n\
         Two servers run on loopback with a one-off secret, and the same commands go to each:\n\
         \n\
         - UNFRAMED (rcmd serve --framing none), the socket-tutorial protocol: the command goes\n\
         \x20 as plain bytes, the answer comes back as two plain writes, stderr then stdout, with\n\
         \x20 no length and no end marker. The client makes ONE read of at most {recv} bytes per\n\
         \x20 command, like the tutorial's recv({recv}). It waits until the answer starts to arrive,\n\
         \x20 then {delay} ms more, so what you see below happens every time, not by luck.\n\
         - FRAMED (rcmd serve), rcmd's real protocol: every piece of output is a frame that\n\
         \x20 starts with its own length.\n\
         \n\
         Below, each read is cut where the server's writes began and ended: boundaries that the\n\
         demo knows (the server reports its writes to it) but that the client cannot see.\n",
        recv = options.recv_size,
        delay = options.read_delay.as_millis(),
    )
}

fn start_unframed_server(
    secret: &[u8],
    workdir: PathBuf,
) -> Result<(SocketAddr, Receiver<ServerWrite>), DemoError> {
    let (log, writes) = mpsc::channel();
    let config = UnframedConfig {
        write_log: Some(log),
        ..UnframedConfig::new(Some(secret.to_vec()), workdir)
    };
    let server = UnframedServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)?;
    let addr = server.local_addr();
    thread::spawn(move || {
        if let Err(e) = server.run() {
            log::error!("demo unframed server failed: {e}");
        }
    });
    Ok((addr, writes))
}

fn start_framed_server(secret: &[u8], workdir: PathBuf) -> Result<SocketAddr, DemoError> {
    let config = ServerConfig {
        secret: secret.to_vec(),
        encoding: OutputEncoding::auto(),
        workdir,
        limits: Limits::default(),
        // The demo is a guest in this process: Ctrl-C ends it the ordinary way.
        handle_signals: false,
        secret_file: None,
    };
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config)
        .map_err(DemoError::FramedServer)?;
    let addr = server.local_addr();
    thread::spawn(move || {
        if let Err(e) = server.run() {
            log::error!("demo framed server failed: {e}");
        }
    });
    Ok(addr)
}

/// The unframed half: one connection per effect, so that neither disturbs the other.
struct UnframedPart<'a> {
    out: &'a mut dyn Write,
    addr: SocketAddr,
    secret: &'a [u8],
    options: ReadOptions,
    writes: Receiver<ServerWrite>,
}

/// One unframed connection as the demo sees it: the client, plus the server's writes to it laid
/// end to end, plus how many of those bytes the client has read.
struct Connection {
    client: UnframedClient,
    local: SocketAddr,
    sent: StreamMap,
    sent_bytes: Vec<Vec<u8>>,
    read_so_far: usize,
}

impl UnframedPart<'_> {
    fn connect(&mut self) -> Result<Connection, DemoError> {
        let client =
            UnframedClient::connect(&self.addr.to_string(), Some(self.secret), self.options)?;
        let local = client.local_addr().map_err(StickyError::Io)?;
        Ok(Connection {
            client,
            local,
            sent: StreamMap::default(),
            sent_bytes: Vec::new(),
            read_so_far: 0,
        })
    }

    fn type_one(&mut self) -> Result<(), DemoError> {
        writeln!(
            self.out,
            "=== UNFRAMED, type 1: the receiver takes less than was sent ===\n"
        )?;
        let mut conn = self.connect()?;
        let first = self.exchange(&mut conn, COMMANDS.long)?;
        if let Some(piece) = first.first().filter(|p| !p.is_whole()) {
            let left = piece.message_len - piece.within.end;
            writeln!(
                self.out,
                "  -> The server wrote {} bytes, but one read returns at most {}: it took the\n\
                 \x20    first {} and left {left} in the socket's receive buffer. TCP keeps them\n\
                 \x20    there until someone reads, and the next read belongs to the next command.\n",
                piece.message_len,
                self.options.recv_size,
                piece.within.len(),
            )?;
        }
        let second = self.exchange(&mut conn, COMMANDS.short)?;
        if let Some(piece) = second.first().filter(|p| p.within.start > 0) {
            writeln!(
                self.out,
                "  -> The \"answer\" to `{}` starts with the last {} bytes of the output of\n\
                 \x20    `{}`. From now on every answer is shifted: the client is out of step with\n\
                 \x20    the server, and nothing in the bytes lets it notice.\n",
                COMMANDS.short,
                piece.within.len(),
                COMMANDS.long,
            )?;
        }
        Ok(())
    }

    fn type_two(&mut self) -> Result<(), DemoError> {
        writeln!(
            self.out,
            "=== UNFRAMED, type 2: the sender's small writes merge ===\n\n\
             (A new connection, so the bytes left over above cannot mix in: reads and writes\n\
             are numbered from 1 again.)\n"
        )?;
        let mut conn = self.connect()?;
        let pieces = self.exchange(&mut conn, COMMANDS.both)?;
        let whole = pieces.iter().filter(|p| p.is_whole()).count();
        if whole >= 2 {
            writeln!(
                self.out,
                "  -> The server made {whole} writes (stderr, then stdout) and one read returned them\n\
                 \x20    all, run together. Nothing in the bytes says where stderr ended and stdout\n\
                 \x20    began. Both writes were waiting in the receive buffer when the client read:\n\
                 \x20    whenever a reader is slower than the writer, writes merge like this, and\n\
                 \x20    turning Nagle's algorithm off (serve --nodelay) does not prevent it.\n"
            )?;
        }
        Ok(())
    }

    /// Sends one command, makes the one read, and shows it cut along the server's writes.
    /// Returns the pieces of the server's writes that the read contained.
    fn exchange(
        &mut self,
        conn: &mut Connection,
        command: &str,
    ) -> Result<Vec<super::preview::Piece>, DemoError> {
        writeln!(self.out, "$ {command}")?;
        let outcome = conn.client.exchange(command)?;
        self.collect_writes(conn);
        let bytes = match outcome {
            ReadOutcome::Data(bytes) => bytes,
            ReadOutcome::NothingArrived => {
                writeln!(self.out, "  nothing arrived in time\n")?;
                return Ok(Vec::new());
            }
        };
        let range = conn.read_so_far..conn.read_so_far + bytes.len();
        conn.read_so_far = range.end;
        let pieces = conn.sent.pieces(range.clone());
        writeln!(
            self.out,
            "  read {} returned {} bytes (asked for at most {}), made of:",
            conn.client.reads(),
            bytes.len(),
            self.options.recv_size
        )?;
        for piece in &pieces {
            let message = conn
                .sent
                .message(piece.message)
                .expect("pieces index messages");
            let shown = &conn.sent_bytes[piece.message][piece.within.clone()];
            writeln!(
                self.out,
                "    {:>5} bytes  {}, bytes {}..{} of {}\n                 {}",
                piece.within.len(),
                message.label,
                piece.within.start,
                piece.within.end,
                piece.message_len,
                preview(shown, PREVIEW_KEEP),
            )?;
        }
        Ok(pieces)
    }

    /// Takes the server's reports of the writes it made to this connection.
    fn collect_writes(&self, conn: &mut Connection) {
        for write in self.writes.try_iter().filter(|w| w.peer == conn.local) {
            let index = conn.sent.push(
                format!(
                    "write #{}: {} of `{}`",
                    conn.sent_bytes.len() + 1,
                    write.stream,
                    write.command
                ),
                write.bytes.len(),
            );
            debug_assert_eq!(index, conn.sent_bytes.len());
            conn.sent_bytes.push(write.bytes);
        }
    }
}

/// Output frames as they arrive, in order.
#[derive(Default)]
struct FrameLog {
    frames: Vec<(&'static str, Vec<u8>)>,
}

impl OutputSink for FrameLog {
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.frames.push(("stdout", bytes.to_vec()));
        Ok(())
    }

    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.frames.push(("stderr", bytes.to_vec()));
        Ok(())
    }
}

fn framed_part(
    out: &mut dyn Write,
    addr: SocketAddr,
    secret: &[u8],
    options: ReadOptions,
) -> Result<(), DemoError> {
    writeln!(
        out,
        "=== FRAMED (rcmd's protocol), the same commands on one connection ===\n\n\
         The client reads just like the unframed one: at most {recv} bytes per read, {delay} ms\n\
         after the answer starts to arrive. Watch the reads come out short and merged again, and the\n\
         decoder hand on each frame only once all of it is in.\n",
        recv = options.recv_size,
        delay = options.read_delay.as_millis(),
    )?;
    let mut session = Session::connect(&addr.to_string(), secret)?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    session.trace_reads(
        options.pacing(),
        Box::new(move |event| {
            seen.lock().expect("trace lines").push(trace_lines(event));
        }),
    );
    for command in [COMMANDS.long, COMMANDS.short, COMMANDS.both] {
        writeln!(out, "$ {command}")?;
        let mut log = FrameLog::default();
        let status = session.run(command, CommandInput::None, None, &mut log)?;
        for line in lines.lock().expect("trace lines").drain(..) {
            writeln!(out, "{line}")?;
        }
        let total = |name| -> usize {
            log.frames
                .iter()
                .filter(|(stream, _)| *stream == name)
                .map(|(_, body)| body.len())
                .sum()
        };
        writeln!(
            out,
            "  -> {}: {} bytes of stdout and {} of stderr, complete, this command's own and \
             nothing else.\n",
            describe(&status),
            total("stdout"),
            total("stderr")
        )?;
    }
    Ok(())
}

/// One read or frame of the framed client, as the demo shows it: reads at the left, frames
/// under them with a preview of their output.
fn trace_lines(event: &TraceEvent<'_>) -> String {
    match event {
        TraceEvent::Read { .. } => format!("  {}", event.describe()),
        TraceEvent::Frame { body, .. } if !body.is_empty() => format!(
            "      {}\n                 {}",
            event.describe(),
            preview(body, PREVIEW_KEEP)
        ),
        TraceEvent::Frame { .. } => format!("      {}", event.describe()),
    }
}

fn describe(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Exited { code } => format!("status {code}"),
        ExitStatus::Signaled { signal } => format!("killed by signal {signal}"),
        ExitStatus::TimedOut => "timed out".into(),
    }
}

fn explain_the_fix(out: &mut dyn Write) -> io::Result<()> {
    let mut frame = Vec::new();
    FrameEncoder::new().encode(&Message::Stdout { id: 1 }, b"out\n", &mut frame);
    let (prefix, rest) = frame.split_at(LEN_PREFIX);
    let (header, body) = rest.split_at(rest.len() - b"out\n".len());
    let prefix_hex: Vec<String> = prefix.iter().map(|b| format!("{b:02x}")).collect();
    let header_len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    writeln!(
        out,
        "=== The fix: say how long each message is, before the message ===\n\n\
         A framed `stdout` frame carrying \"out\\n\" is these {} bytes on the wire:\n",
        frame.len()
    )?;
    let rows = [
        (
            prefix_hex.join(" "),
            format!("header length: {header_len}, as a u32, big-endian"),
        ),
        (
            String::from_utf8_lossy(header).into_owned(),
            "header: JSON; `len` is the body's length".to_owned(),
        ),
        (
            preview(body, PREVIEW_KEEP),
            "body: exactly `len` bytes".to_owned(),
        ),
    ];
    let width = rows.iter().map(|(bytes, _)| bytes.len()).max().unwrap_or(0);
    for (bytes, meaning) in rows {
        writeln!(out, "  {bytes:<width$}   {meaning}")?;
    }
    writeln!(
        out,
        "  (after the handshake, a 32-byte HMAC tag follows every frame)\n\
         \n\
         The reader reads the 4-byte prefix, then exactly that many header bytes, then exactly\n\
         `len` body bytes, calling recv as many times as it takes. A read that returns less than\n\
         was sent (type 1) just means \"read again\"; a read that returns more (type 2) keeps the\n\
         extra bytes as the start of the next frame. How TCP cut or merged the stream no longer\n\
         matters, which is why the framed answers above were complete every time.\n\
         \n\
         Try it yourself: `rcmd serve --framing none` and `rcmd connect --framing none` for the\n\
         effects; `rcmd serve` and `rcmd connect --recv-size 1024` for the same reads through\n\
         the framing. The README's section on sticky packets also shows nc and the classic\n\
         Python client."
    )
}
