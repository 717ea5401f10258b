//! Unix child processes: `sh -c`, process groups, non-blocking pipes in the `mio` poll, SIGCHLD.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::OnceLock;

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use signal_hook::consts::SIGCHLD;
use signal_hook_mio::v1_0::Signals;

use super::{ChildEvent, OutputStream, PipeTokens};
use crate::protocol::{ExitStatus, SignalName};

/// One running command and the pipes to its stdin, stdout and stderr.
pub struct ChildProcess {
    pid: u32,
    stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    stdin: Option<Sender>,
    /// Output pipes that reached end of file, still registered: closing them waits for
    /// [`Self::release`], after the command's exit has been sent.
    ended: Vec<Receiver>,
    /// Per output stream (stdout, stderr): the pipe may have bytes we have not read. Cleared
    /// once a read finds it drained, set again by its readiness event; reading only then saves
    /// a `read` that would fail with `EAGAIN` every time anything else happens to the command.
    output_ready: [bool; 2],
}

impl ChildProcess {
    /// Starts `sh -c command` in `cwd`, in a new process group whose id is the child's pid, and
    /// registers its pipes under `tokens`. Without `with_stdin` the command reads /dev/null.
    ///
    /// # Errors
    /// Spawning or registering failed (e.g. out of processes or file descriptors).
    pub fn spawn(
        command: &str,
        cwd: &Path,
        with_stdin: bool,
        registry: &Registry,
        tokens: PipeTokens,
    ) -> io::Result<ChildProcess> {
        let child = start(command, cwd, with_stdin)?;
        let pid = child.id();
        // Not reaped yet: the loop that reaps is the one running this.
        ChildProcess::attach(child, registry, tokens).inspect_err(|_| kill_unwanted(pid))
    }

    /// Takes a child made by [`start`] into the event loop: its pipes become non-blocking and
    /// are registered under `tokens`. This part never blocks, unlike `start`.
    ///
    /// # Errors
    /// Registering failed. The child is not killed here: only the caller knows whether its pid
    /// is still the child's (a child from the spawner threads may have been reaped already).
    pub fn attach(
        mut child: Child,
        registry: &Registry,
        tokens: PipeTokens,
    ) -> io::Result<ChildProcess> {
        let pid = child.id();
        // The process exists: if anything fails, the caller kills it (see above).
        (|| -> io::Result<ChildProcess> {
            let mut process = ChildProcess {
                pid,
                stdout: None,
                stderr: None,
                stdin: None,
                ended: Vec::new(),
                // Registering a pipe that is already readable raises its event at once, so
                // there is nothing to read before the first event.
                output_ready: [false; 2],
            };
            // mio does not make pipes non-blocking for us; a blocking read would stall the loop.
            let mut stdout = Receiver::from(child.stdout.take().expect("stdout is piped"));
            stdout.set_nonblocking(true)?;
            registry.register(&mut stdout, tokens.stdout, Interest::READABLE)?;
            process.stdout = Some(stdout);
            let mut stderr = Receiver::from(child.stderr.take().expect("stderr is piped"));
            stderr.set_nonblocking(true)?;
            registry.register(&mut stderr, tokens.stderr, Interest::READABLE)?;
            process.stderr = Some(stderr);
            if let Some(stdin) = child.stdin.take() {
                let mut stdin = Sender::from(stdin);
                stdin.set_nonblocking(true)?;
                // Only a wake-up: when a full pipe drains, the event makes the loop drive the
                // connection, whose stdin pump writes what is pending.
                registry.register(&mut stdin, tokens.stdin, Interest::WRITABLE)?;
                process.stdin = Some(stdin);
            }
            Ok(process)
        })()
        // `child` is dropped without waiting: the ExitWatcher reaps every child by pid.
    }

    /// The child's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads available output: `Ok(n > 0)` bytes, `Ok(0)` at end of stream, or `WouldBlock`.
    /// A stream already closed reads as end of stream.
    pub fn read_output(&mut self, stream: OutputStream, buf: &mut [u8]) -> io::Result<usize> {
        self.read_output_with(stream, |pipe| pipe.read(buf))
    }

    /// Like [`Self::read_output`], appending up to `max` bytes to `out` (straight into its
    /// spare capacity: no zeroing, no copy from another buffer).
    pub fn read_output_appending(
        &mut self,
        stream: OutputStream,
        out: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        self.read_output_with(stream, |pipe| read_appending(pipe, out, max))
    }

    fn read_output_with(
        &mut self,
        stream: OutputStream,
        read: impl FnOnce(&mut Receiver) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let ready = self.output_ready[stream as usize];
        let Some(pipe) = self.output_mut(stream) else {
            return Ok(0);
        };
        if !ready {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = read(pipe);
        // Only `WouldBlock` says the pipe is drained. A short read does not: the writer's
        // hang-up may be waiting behind the bytes, and it raises no new event.
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
        {
            self.output_ready[stream as usize] = false;
        }
        result
    }

    /// The poll reported `stream`'s pipe ready: the next [`Self::read_output`] reads it.
    pub fn output_ready_event(&mut self, stream: OutputStream) {
        self.output_ready[stream as usize] = true;
    }

    /// Whether `stream` is still open.
    pub fn awaiting_eof(&self, stream: OutputStream) -> bool {
        match stream {
            OutputStream::Stdout => self.stdout.is_some(),
            OutputStream::Stderr => self.stderr.is_some(),
        }
    }

    /// Stops reading `stream`: deregisters and closes our end of the pipe.
    pub fn close_output(&mut self, stream: OutputStream, registry: &Registry) {
        if let Some(mut pipe) = self.take_output(stream) {
            let _ = registry.deregister(&mut pipe);
        }
    }

    /// `stream` reached end of file: it counts as closed from now on, but the pipe is only
    /// deregistered and closed by [`Self::release`]. That is two system calls per pipe the
    /// reply reporting the command's exit does not wait for.
    pub fn end_output(&mut self, stream: OutputStream) {
        if let Some(pipe) = self.take_output(stream) {
            self.ended.push(pipe);
        }
    }

    fn take_output(&mut self, stream: OutputStream) -> Option<Receiver> {
        match stream {
            OutputStream::Stdout => self.stdout.take(),
            OutputStream::Stderr => self.stderr.take(),
        }
    }

    /// Deregisters and closes every pipe still open, for a command that is finished.
    pub fn release(&mut self, registry: &Registry) {
        self.close_output(OutputStream::Stdout, registry);
        self.close_output(OutputStream::Stderr, registry);
        self.close_stdin(registry);
        for mut pipe in self.ended.drain(..) {
            let _ = registry.deregister(&mut pipe);
        }
    }

    /// Reaps the child if it has exited, without waiting, and returns how it ended.
    ///
    /// For a command whose output pipes have both reached end of file: its process has most
    /// likely exited (exiting closes them), and reaping it here sends the reply without waiting
    /// for the SIGCHLD round trip through the [`ExitWatcher`]. The caller must take the pid out
    /// of the child table, since the watcher will not see this exit.
    pub fn try_reap(&self) -> Option<ExitStatus> {
        let mut raw_status = 0;
        // SAFETY: waitpid writes only to the status integer we pass. The pid is our unreaped
        // child: only this thread reaps, and the watcher has not reported it.
        let pid = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut raw_status, libc::WNOHANG) };
        if pid != self.pid as libc::pid_t {
            return None; // 0: still running (it closed its output itself)
        }
        let status = exit_status(raw_status);
        if status.is_none() {
            log::debug!("pid {pid}: unexpected wait status {raw_status:#x}");
        }
        status
    }

    fn output_mut(&mut self, stream: OutputStream) -> Option<&mut Receiver> {
        match stream {
            OutputStream::Stdout => self.stdout.as_mut(),
            OutputStream::Stderr => self.stderr.as_mut(),
        }
    }

    /// Whether the command's stdin pipe is still open.
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Writes what the pipe takes now; `WouldBlock` when it is full.
    pub fn write_stdin(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.stdin {
            Some(pipe) => pipe.write(data),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Closes the command's stdin, so it reads end of file.
    pub fn close_stdin(&mut self, registry: &Registry) {
        if let Some(mut pipe) = self.stdin.take() {
            let _ = registry.deregister(&mut pipe);
        }
    }

    /// Delivers `signal` to the command's whole process group.
    ///
    /// INT and TERM are followed by SIGCONT (bash's `kill` does the same after TERM for a
    /// stopped job): a process stopped (`kill -STOP $$`, SIGTSTP) would otherwise hold them
    /// pending and go on waiting, and the client's Ctrl-C would do nothing until the command
    /// timeout. To a process that is running, SIGCONT changes nothing; a stopped one that
    /// ignores the signal is resumed.
    ///
    /// Only call this before the child has been reaped: until then its pid (and so its group
    /// id) cannot be reused by an unrelated process.
    pub fn signal(&self, signal: SignalName) {
        let number = match signal {
            SignalName::Int => libc::SIGINT,
            SignalName::Term => libc::SIGTERM,
            SignalName::Kill => libc::SIGKILL,
        };
        kill_group(self.pid, number);
        if number != libc::SIGKILL {
            kill_group(self.pid, libc::SIGCONT);
        }
    }

    /// Kills the command and everything it started in its process group.
    pub fn kill_tree(&self) {
        kill_group(self.pid, libc::SIGKILL);
    }
}

/// Spawns `sh -c -- command` in `cwd` with piped stdout and stderr (and stdin if `with_stdin`,
/// else /dev/null), in a new process group whose id is the child's pid.
///
/// This blocks until the child has called `exec` (std reports a failed `exec` through a pipe),
/// which takes about a millisecond: the server calls it from
/// [`crate::server::spawner::Spawner`] threads when the loop is busy.
///
/// # Errors
/// The process could not be created (out of processes, memory, or `cwd` is gone).
pub fn start(command: &str, cwd: &Path, with_stdin: bool) -> io::Result<Child> {
    super::shell_command(command)
        .current_dir(cwd)
        .stdin(if with_stdin {
            Stdio::piped()
        } else {
            dev_null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that killing the group reaches `sleep` in `sleep 9 | cat`
        // and every other descendant that did not deliberately leave.
        .process_group(0)
        .spawn()
}

/// The /dev/null that commands without stdin read, opened once: `Stdio::null()` opens it for
/// every command, a path lookup each time, where duplicating a descriptor is cheaper.
static DEV_NULL: OnceLock<Option<File>> = OnceLock::new();

/// Opens the /dev/null that commands without stdin read now, at server start, so that it
/// belongs to the server's resting set of descriptors instead of appearing with the first
/// command.
pub fn open_dev_null() {
    dev_null_file();
}

fn dev_null_file() -> Option<&'static File> {
    DEV_NULL
        .get_or_init(|| File::open("/dev/null").ok())
        .as_ref()
}

/// A command's stdin when it gets none; `Stdio::null()` if /dev/null could not be kept open.
fn dev_null() -> Stdio {
    dev_null_file()
        .and_then(|file| file.try_clone().ok())
        .map_or_else(Stdio::null, Stdio::from)
}

/// Kills the process group of a child that was started but is no longer wanted (its client
/// left while it was being spawned, or its pipes could not be registered). Only for a child
/// not yet reaped.
pub fn kill_unwanted(pid: u32) {
    kill_group(pid, libc::SIGKILL);
}

fn kill_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the group.
    let result = unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    if result != 0 {
        log::debug!("kill(-{pgid}, {signal}): {}", io::Error::last_os_error());
    }
}

/// Learns of child exits through SIGCHLD, delivered as a readable event in the poll.
pub struct ExitWatcher {
    signals: Signals,
}

impl ExitWatcher {
    /// Starts catching SIGCHLD and registers the watcher under `token`.
    ///
    /// # Errors
    /// The signal handler or its self-pipe could not be set up.
    pub fn new(registry: &Registry, token: Token) -> io::Result<ExitWatcher> {
        let mut signals = Signals::new([SIGCHLD])?;
        registry.register(&mut signals, token, Interest::READABLE)?;
        Ok(ExitWatcher { signals })
    }

    /// Every child that has exited since the last call, with how it ended.
    ///
    /// Signals coalesce (ten exits may raise one SIGCHLD), so this does not count signals: it
    /// asks the kernel with `waitpid(-1, WNOHANG)` until no exited child is left. That reaps
    /// every child of this process, which is right for a server that owns all its children.
    pub fn take_events(&mut self) -> Vec<ChildEvent> {
        // Empty signal-hook's self-pipe. The poll is edge-triggered: bytes left in it would mean
        // no new event for the next SIGCHLD. Which signals they were does not matter, since
        // the `waitpid` loop below finds every exited child.
        for _ in self.signals.pending() {}
        let mut exits = Vec::new();
        loop {
            let mut raw_status = 0;
            // SAFETY: waitpid writes only to the status integer we pass.
            let pid = unsafe { libc::waitpid(-1, &mut raw_status, libc::WNOHANG) };
            if pid <= 0 {
                break; // 0: children remain but none has exited; -1: no children (ECHILD).
            }
            let Some(status) = exit_status(raw_status) else {
                continue;
            };
            exits.push(ChildEvent::Exited {
                pid: pid as u32,
                status,
            });
        }
        exits
    }
}

/// Reads up to `max` bytes from `pipe` into the spare capacity of `out` and extends it by what
/// was read.
fn read_appending(pipe: &Receiver, out: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    out.reserve(max);
    let spare = &mut out.spare_capacity_mut()[..max];
    // SAFETY: read(2) writes at most `max` bytes into `spare`, which is `max` bytes long, and
    // never reads from it, so it may be uninitialized.
    let n = unsafe { libc::read(pipe.as_raw_fd(), spare.as_mut_ptr().cast(), max) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialized the `n <= max` bytes after the old length, within the
    // capacity reserved above.
    unsafe { out.set_len(out.len() + n) };
    Ok(n)
}

/// How a child ended, from the status `waitpid` reported for it.
fn exit_status(raw_status: libc::c_int) -> Option<ExitStatus> {
    let status = std::process::ExitStatus::from_raw(raw_status);
    match (status.code(), status.signal()) {
        (Some(code), _) => Some(ExitStatus::Exited { code }),
        (None, Some(signal)) => Some(ExitStatus::Signaled { signal }),
        // Stopped or continued children are not reported without WUNTRACED.
        (None, None) => None,
    }
}

/// Gives up the terminal the server was started from (`rcmd serve` in a terminal window), so
/// that its commands, which inherit the server's controlling terminal, cannot
/// reach it through `/dev/tty`: a password prompt (`sudo`, `ssh`, Python's `getpass`) would
/// write to the server's terminal, then stop in the background (SIGTTIN) waiting for a reply
/// no client can give. Without a terminal they fail at once ("a terminal is required"), as a
/// command run by `sshd` without a pty does (sshd puts it in a session of its own; std can put
/// a child in a new session only by fork and exec, which costs every command 7-15% here).
///
/// A session leader keeps its terminal: giving it up would hang up its foreground process
/// group, which includes itself. The server's own stdin, stdout and stderr stay as they were,
/// and signals from the terminal (Ctrl-C, the window closing) still reach its process group.
pub fn keep_commands_off_the_terminal() {
    // SAFETY: getsid and getpid have no preconditions.
    if unsafe { libc::getsid(0) == libc::getpid() } {
        return;
    }
    let Ok(terminal) = std::fs::File::open("/dev/tty") else {
        return; // no controlling terminal: nothing to give up
    };
    // SAFETY: TIOCNOTTY takes no argument; the descriptor is open for the call's duration.
    if unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCNOTTY) } != 0 {
        log::debug!(
            "cannot give up the terminal: {}",
            io::Error::last_os_error()
        );
    }
}

/// Keeps the descriptors this process inherited above stderr out of its commands, as sshd's
/// `closefrom` does: marks each close-on-exec. The server's own descriptors are opened
/// close-on-exec already, but whatever started it may have passed more (a wrapper's log file,
/// a file only it could open), and without this every command, and so every client, could
/// read them through `/proc/self/fd`. Call it before the server opens anything that must
/// reach a command on purpose (nothing does today: commands get their pipes as fds 0-2).
pub fn keep_inherited_descriptors_from_commands() {
    // Linux 5.11 and later do it in one call; elsewhere, and on older kernels, one descriptor
    // at a time from the list of open ones (which FreeBSD's /dev/fd gives in full only with
    // fdescfs mounted, hence its own call below).
    #[cfg(target_os = "linux")]
    {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
        let done = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if done == 0 {
            return;
        }
    }
    // FreeBSD 13 and later have it as a function.
    #[cfg(target_os = "freebsd")]
    {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
        let done = unsafe {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            )
        };
        if done == 0 {
            return;
        }
    }
    mark_close_on_exec_one_by_one();
}

/// [`keep_inherited_descriptors_from_commands`] without `close_range`: each descriptor above
/// stderr that `/dev/fd` lists.
fn mark_close_on_exec_one_by_one() {
    let open: Vec<libc::c_int> = match std::fs::read_dir("/dev/fd") {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect(),
        Err(e) => {
            log::warn!("cannot list open descriptors to keep them from commands: {e}");
            return;
        }
    };
    for fd in open {
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; a descriptor that
        // is no longer open (the listing's own) makes them fail harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Makes commands start with the default action for the signals a shell's `nohup` or `&`
/// leaves ignored (SIGHUP, SIGINT, SIGQUIT), without changing what the server itself does.
///
/// An ignored signal stays ignored across `exec`, so a server started with `nohup` would give
/// every command an unkillable-by-hangup SIGHUP, and `kill -HUP` would do nothing to them. A
/// handler, unlike "ignore", is reset to the default by `exec`. So where the server found a
/// signal ignored, it installs a handler that does nothing: the server still ignores the
/// signal, and its commands get the default.
pub fn give_children_default_signals() {
    for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: sigaction with a null new action only reads the current one into `current`.
        let ignored = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            // SAFETY: the handler does nothing, which is async-signal-safe.
            if let Err(e) = unsafe { signal_hook::low_level::register(signal, || {}) } {
                log::debug!("cannot reset signal {signal} for commands: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    use mio::Poll;

    fn close_on_exec(fd: libc::c_int) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags >= 0, "not open");
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn descriptors_are_marked_close_on_exec_one_by_one_where_close_range_is_missing() {
        let file = std::fs::File::open("/dev/null").unwrap();
        // A copy without close-on-exec, as a parent process would pass it.
        // SAFETY: F_DUPFD makes a new descriptor, which this test closes.
        let inherited = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 3) };
        assert!(inherited > 2);
        assert!(!close_on_exec(inherited));
        // Only descriptors above stderr: the server's own stdin, stdout and stderr (its log)
        // stay as they were, for whatever it starts with them inherited.
        let stderr_before = close_on_exec(2);
        mark_close_on_exec_one_by_one();
        assert!(close_on_exec(inherited));
        assert_eq!(close_on_exec(2), stderr_before, "stderr was marked too");
        // SAFETY: closes only the copy made above.
        unsafe { libc::close(inherited) };
    }

    /// A command whose pipes are the given ends (no process behind it: these tests only read,
    /// write and close; its pid is never signalled or waited for).
    fn with_pipes(stdout: Receiver, stderr: Receiver, stdin: Option<Sender>) -> ChildProcess {
        ChildProcess {
            pid: 0,
            stdout: Some(stdout),
            stderr: Some(stderr),
            stdin,
            ended: Vec::new(),
            output_ready: [false; 2],
        }
    }

    fn pipe() -> (Sender, Receiver) {
        mio::unix::pipe::new().expect("pipe")
    }

    fn would_block(result: io::Result<usize>) -> bool {
        matches!(result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Readiness lasts until a read finds the pipe empty, not until the first read: a read
    /// that takes only part of what is there leaves the rest to read with no new event, since
    /// none will come (the command may have exited and written its last bytes long ago). Once
    /// drained, the pipe is not read again (no `read` failing with `EAGAIN`) until its event.
    #[test]
    fn a_pipe_stays_ready_until_a_read_finds_it_empty() {
        let (mut writer, stdout) = pipe();
        let (_stderr_writer, stderr) = pipe();
        let mut process = with_pipes(stdout, stderr, None);
        writer.write_all(b"0123456789").unwrap();
        let mut buf = [0; 4];
        // Before its event: nothing is read (the event comes when it is registered).
        assert!(would_block(
            process.read_output(OutputStream::Stdout, &mut buf)
        ));
        process.output_ready_event(OutputStream::Stdout);
        let mut read = Vec::new();
        for expected in [4, 4, 2] {
            let n = process
                .read_output(OutputStream::Stdout, &mut buf)
                .expect("ready output reads");
            assert_eq!(n, expected);
            read.extend_from_slice(&buf[..n]);
        }
        assert_eq!(read, b"0123456789");
        assert!(would_block(
            process.read_output(OutputStream::Stdout, &mut buf)
        ));
        // Drained: bytes written now wait for their event, without a read in between.
        writer.write_all(b"x").unwrap();
        assert!(would_block(
            process.read_output(OutputStream::Stdout, &mut buf)
        ));
        process.output_ready_event(OutputStream::Stdout);
        assert_eq!(
            process.read_output(OutputStream::Stdout, &mut buf).unwrap(),
            1
        );
        drop(writer);
        assert_eq!(
            process.read_output(OutputStream::Stdout, &mut buf).unwrap(),
            0
        );
    }

    /// The zero-copy read appends after what the buffer holds, takes at most `max`, and
    /// reports end of file as `Ok(0)`, not as an error.
    #[test]
    fn appending_reads_extend_the_buffer_and_end_with_zero() {
        let (_stdout_writer, stdout) = pipe();
        let (mut writer, stderr) = pipe();
        let mut process = with_pipes(stdout, stderr, None);
        writer.write_all(b"hello").unwrap();
        drop(writer);
        process.output_ready_event(OutputStream::Stderr);
        let mut out = b"> ".to_vec();
        let read = |process: &mut ChildProcess, out: &mut Vec<u8>| {
            process
                .read_output_appending(OutputStream::Stderr, out, 3)
                .expect("end of file is not an error")
        };
        assert_eq!(read(&mut process, &mut out), 3);
        assert_eq!(out, b"> hel");
        assert_eq!(read(&mut process, &mut out), 2);
        assert_eq!(read(&mut process, &mut out), 0);
        assert_eq!(out, b"> hello");
    }

    /// `release` closes every pipe of a finished command, those at end of file and those
    /// still open: the command's writers see a broken pipe and its stdin reads end of file.
    #[test]
    fn release_closes_every_pipe() {
        let poll = Poll::new().unwrap();
        let (mut stdout_writer, stdout) = pipe();
        let (mut stderr_writer, stderr) = pipe();
        let (stdin, mut stdin_reader) = pipe();
        let mut process = with_pipes(stdout, stderr, Some(stdin));
        process.end_output(OutputStream::Stderr);
        assert!(!process.awaiting_eof(OutputStream::Stderr));
        assert!(process.awaiting_eof(OutputStream::Stdout));
        assert!(process.has_stdin());
        process.release(poll.registry());
        assert!(!process.awaiting_eof(OutputStream::Stdout));
        assert!(!process.has_stdin());
        for writer in [&mut stdout_writer, &mut stderr_writer] {
            let error = writer
                .write(b"x")
                .expect_err("nobody reads this pipe any more");
            assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
        }
        assert_eq!(stdin_reader.read(&mut [0; 1]).unwrap(), 0);
        let error = process.write_stdin(b"x").expect_err("stdin is closed");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
