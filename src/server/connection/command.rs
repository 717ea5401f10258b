//! One connection's command: starting it (inline, or through the spawner threads when the loop
//! is busy), the `cd` builtin, feeding its stdin within the flow-control window, framing its
//! output as it comes, and sending its `exit` once the process has exited and its pipes are
//! drained.
//!
//! These are methods of [`Connection`]; the connection's socket, frames and handshake are in
//! the parent module.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::{Connection, Context, OUTBOUND_CAP, Source, State, token};
use crate::logging::QuotedStart;
use crate::output::StreamDecoder;
use crate::protocol::frame::MAX_CHUNK;
use crate::protocol::message::STDIN_WINDOW;
use crate::protocol::{ErrorCode, ExitStatus, Message, SignalName};
use crate::server::Limits;
use crate::server::builtins;
use crate::server::deadlines::DeadlineKind;
use crate::server::process::{ChildProcess, OutputStream, PipeTokens};
use crate::server::spawner::{SpawnRequest, Start};

/// After the command's process exits, how much more output to take from background processes
/// still holding its pipes before calling the output complete.
const AFTER_EXIT_LIMIT: usize = 1024 * 1024;
/// How much of a command goes into each of its two log lines: enough for any command typed by
/// hand, while a command of up to 1 MiB of control characters (each escaped to several bytes)
/// would otherwise write megabytes of log, on the loop's thread, per request.
const LOGGED_COMMAND_LEN: usize = 512;

/// A command of the connection, from its `exec` until its `exit` is queued.
pub(super) struct RunningCommand {
    /// The client's id for the command, echoed in every frame about it; the client chooses
    /// it and may reuse it.
    pub(super) id: u32,
    /// The server's own number for the command (1, 2, ... per connection), never reused: its
    /// timeout is keyed by it, so that a stale deadline cannot end a later command.
    pub(super) serial: u64,
    pub(super) command: String,
    /// `None` while the spawner threads are still starting it.
    pub(super) process: Option<ChildProcess>,
    /// Whether the command gets a stdin pipe (the exec's `stdin`).
    pub(super) with_stdin: bool,
    /// A signal that arrived while the command was still being started.
    pub(super) pending_signal: Option<SignalName>,
    pub(super) started: Instant,
    /// Set when the process has been reaped; output may still be draining.
    pub(super) exit: Option<ExitStatus>,
    /// Whether the connection tried reaping the process itself, at the end of its output.
    pub(super) reap_tried: bool,
    pub(super) timed_out: bool,
    pub(super) after_exit_bytes: usize,
    pub(super) stdin_pending: Vec<u8>,
    pub(super) stdin_close_requested: bool,
    pub(super) stdout_transcoder: StreamDecoder,
    pub(super) stderr_transcoder: StreamDecoder,
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
    pub(super) fn log_cut_short(&self, peer: SocketAddr, why: &str) {
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
pub(super) fn mark_output_ready_at_exit(process: &mut ChildProcess) {
    process.output_ready_event(OutputStream::Stdout);
    process.output_ready_event(OutputStream::Stderr);
}

impl Connection {
    /// Queues stdin bytes for the command, within the flow-control window.
    pub(super) fn accept_stdin(&mut self, id: u32, data: &[u8], ctx: &mut Context) {
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
    pub(super) fn running_mut(&mut self, id: u32) -> Option<&mut RunningCommand> {
        match &mut self.state {
            State::Running(command) if command.id == id => Some(command),
            _ => None,
        }
    }

    pub(super) fn exec(
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
        // ("No such file or directory") would read as if the shell were missing. A directory
        // above it replaced by a file makes the path fail with "Not a directory" instead.
        let why = match std::fs::metadata(&self.cwd) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                format!(
                    "cannot start the command: the working directory {} no longer exists \
                     (cd somewhere else)",
                    self.cwd.display()
                )
            }
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
                    crate::server::process::kill_unwanted(pid);
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
    pub(super) fn pump_stdin(&mut self, ctx: &mut Context) -> bool {
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
    pub(super) fn pump_output(&mut self, ctx: &mut Context) -> bool {
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
    pub(super) fn finish_command_if_done(
        &mut self,
        ctx: &mut Context,
    ) -> Option<Box<RunningCommand>> {
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
        // Exactly the limit is allowed; one byte more is not.
        assert_eq!(code(b"echo 123"), Ok("echo 123".to_owned()));
        assert_eq!(code(b"echo 1234"), Err(ErrorCode::CommandTooLong));
        assert_eq!(code(b"\xff ls"), Err(ErrorCode::BadCommand));
        assert_eq!(code(b"echo 123456"), Err(ErrorCode::CommandTooLong));
        assert_eq!(code(b"         "), Err(ErrorCode::CommandTooLong));
        assert_eq!(code(b" \t\n"), Err(ErrorCode::EmptyCommand));
        assert_eq!(code(b""), Err(ErrorCode::EmptyCommand));
    }
}
