//! Windows child processes: `cmd /C`, Job Objects, and threads that turn blocking anonymous
//! pipes into events of the `mio` loop.
//!
//! Anonymous pipes on Windows cannot be polled for readiness, so every pipe gets a thread:
//!
//! - one reader per output pipe reads chunks of up to [`MAX_CHUNK`] bytes and hands them to the
//!   loop through a bounded channel ([`CHUNKS_QUEUED`] chunks), then reports
//!   [`ChildEvent::Ready`] for the pipe's token. When the loop does not take chunks (a slow
//!   client), the reader blocks, stops reading, the pipe fills up and the command blocks in its
//!   `write`: the same backpressure as on Unix, and the memory per stream stays bounded;
//! - one writer for stdin takes chunks from a bounded channel and writes them; `write_stdin`
//!   says `WouldBlock` while the channel is full and `BrokenPipe` once the command stopped
//!   reading;
//! - one waiter per command waits for the process to exit and reports
//!   [`ChildEvent::Exited`], but only after both readers have delivered everything the
//!   process wrote (see [`wait_for_readers`]), which is the contract of the parent module.
//!
//! All threads report through the [`ExitWatcher`], which owns the loop's single
//! [`mio::Waker`] (mio allows one per `Poll`) and the receiving end of the event channel.
//!
//! Every command runs in a Job Object of its own with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`,
//! the Windows counterpart of a Unix process group: [`ChildProcess::kill_tree`] terminates
//! the job, which kills every process the command started. The process is created suspended
//! and only resumed once it is in the job, so nothing it starts can escape. Closing the job
//! (dropping the [`ChildProcess`] when the command has finished) also kills what the command
//! left running in the background (`start /b ...`): unlike on Unix, where such processes
//! outlive the command, on Windows a command's processes end with it, as in WinRM. That also
//! guarantees that no thread stays blocked on a pipe such a process holds open. Even if the
//! server itself is killed, Windows closes its handles and so kills every job's processes.
//!
//! Commands run with `CREATE_NO_WINDOW`: each gets a console of its own without a window, so
//! no window pops up, a `chcp` in one command changes neither the server's console nor later
//! commands, and a Ctrl-C in the server's console reaches the server (which then kills the
//! commands) rather than every command at once.
//!
//! Windows has no signals for a process tree without a shared console: `signal` with INT,
//! TERM or KILL terminates the job, with exit code 130, 143 or 137 (128 + the Unix signal
//! number, so a client sees the same codes as from a Unix server).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::windows::io::{AsHandle, AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::{Registry, Token, Waker};
use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NO_WINDOW, CREATE_SUSPENDED, OpenThread, ResumeThread, THREAD_SUSPEND_RESUME,
    TerminateProcess,
};

use super::{ChildEvent, OutputStream, PipeTokens};
use crate::protocol::frame::MAX_CHUNK;
use crate::protocol::{ExitStatus, SignalName};

/// Chunks a reader may queue for the loop (besides the one it holds while blocked): with
/// [`MAX_CHUNK`] bytes each, at most about 200 KiB wait per output stream.
const CHUNKS_QUEUED: usize = 2;
/// Chunks of stdin queued for the writer thread (besides the one it is writing).
const STDIN_CHUNKS_QUEUED: usize = 1;
/// After the process exits, how long a reader may sit in an empty pipe before `Exited` is
/// reported anyway: the pipe is then held open by a background process the command started.
const READER_GRACE: Duration = Duration::from_millis(200);
/// Bytes read after the exit past which a pipe's data cannot be the exited process's own: more
/// than a pipe buffer (64 KiB for `std`'s pipes) and a read in progress ([`MAX_CHUNK`]) hold.
const AFTER_EXIT_BYTES: u64 = 4 * MAX_CHUNK as u64;
/// Exit codes of commands the server terminated: 128 + the Unix signal number.
const EXIT_CODE_INT: u32 = 128 + 2;
const EXIT_CODE_TERM: u32 = 128 + 15;
const EXIT_CODE_KILL: u32 = 128 + 9;

/// What the threads of every child send to the [`ExitWatcher`], and how they wake the loop.
struct Notifier {
    reports: Sender<Report>,
    waker: Waker,
    /// Set by a console control event (Ctrl-C, closing the console, logoff, shutdown).
    shutdown: AtomicBool,
}

/// One event, and for `Exited` the process itself: its handle is closed only when the loop
/// takes the event, so its pid cannot be reused by a new command before the loop has routed
/// the exit (on Unix, reaping in `take_events` gives the same guarantee).
struct Report {
    event: ChildEvent,
    _process: Option<Child>,
}

impl Notifier {
    fn notify(&self, event: ChildEvent) {
        self.report(Report {
            event,
            _process: None,
        });
    }

    fn report(&self, report: Report) {
        // A failed send means the server is gone: nobody to wake.
        if self.reports.send(report).is_ok()
            && let Err(e) = self.waker.wake()
        {
            warn!("cannot wake the event loop: {e}");
        }
    }

    fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
    }
}

thread_local! {
    /// The watcher whose loop runs on this thread, set by [`ExitWatcher::enter`].
    static CURRENT: RefCell<Option<Arc<Notifier>>> = const { RefCell::new(None) };
}

/// The server that console control events stop; see [`ExitWatcher::stop_on_console_events`].
static CONSOLE_SHUTDOWN: Mutex<Option<Weak<Notifier>>> = Mutex::new(None);

/// Learns of child exits and pipe readiness from the threads that watch each child, and
/// wakes the loop through its single [`Waker`] registered under the watcher's token.
pub struct ExitWatcher {
    notifier: Arc<Notifier>,
    reports: Receiver<Report>,
}

impl ExitWatcher {
    /// Creates the loop's waker under `token`.
    ///
    /// # Errors
    /// The waker could not be created.
    pub fn new(registry: &Registry, token: Token) -> io::Result<ExitWatcher> {
        let waker = Waker::new(registry, token)?;
        let (sender, reports) = mpsc::channel();
        let notifier = Arc::new(Notifier {
            reports: sender,
            waker,
            shutdown: AtomicBool::new(false),
        });
        Ok(ExitWatcher { notifier, reports })
    }

    /// Makes this watcher the one that [`ChildProcess::spawn`] on this thread reports to,
    /// until the guard is dropped. The event loop calls this once before it runs.
    ///
    /// Why a thread-local and not an argument: `spawn` has the same signature on every
    /// platform, and on Unix it needs nothing but the registry. The registry cannot lead to the
    /// watcher (mio gives it no identity, and only one `Waker` may exist per `Poll`), and a
    /// process-wide slot would mix up two servers in one process, which the library allows. A
    /// server's loop, and so every `spawn` for it, runs on one thread, so "the watcher entered
    /// on this thread" is exactly the right one, as with tokio's `Handle::enter`.
    pub fn enter(&self) -> EnterGuard {
        let previous = CURRENT.with(|current| current.replace(Some(Arc::clone(&self.notifier))));
        EnterGuard { previous }
    }

    /// Stops this server on console control events: Ctrl-C, Ctrl-Break, closing the console
    /// window, logoff and system shutdown. The loop learns of them through
    /// [`take_shutdown_request`](Self::take_shutdown_request) after a wake-up under the
    /// watcher's token. (Windows ends a process soon after its handler returns for the last
    /// three; the Job Objects still take every command with it.)
    ///
    /// # Errors
    /// The console handler could not be installed (e.g. another one was, with `ctrlc`).
    pub fn stop_on_console_events(&self) -> io::Result<()> {
        static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
        *lock(&CONSOLE_SHUTDOWN) = Some(Arc::downgrade(&self.notifier));
        // `ctrlc` allows one handler per process; later servers only retarget it.
        INSTALLED
            .get_or_init(|| {
                ctrlc::set_handler(|| {
                    let target = lock(&CONSOLE_SHUTDOWN).as_ref().and_then(Weak::upgrade);
                    if let Some(notifier) = target {
                        notifier.request_shutdown();
                    }
                })
                .map_err(|e| format!("cannot handle console control events: {e}"))
            })
            .clone()
            .map_err(io::Error::other)
    }

    /// Whether a console control event asked the server to stop since the last call.
    pub fn take_shutdown_request(&self) -> bool {
        self.notifier.shutdown.swap(false, Ordering::SeqCst)
    }

    /// Every event reported since the last call: pipes with data, end of file or room, and
    /// exits (each after its output was delivered).
    pub fn take_events(&mut self) -> Vec<ChildEvent> {
        // Dropping the reports closes the handles of exited processes, freeing their pids.
        self.reports.try_iter().map(|report| report.event).collect()
    }
}

/// Restores the previously entered watcher on drop; see [`ExitWatcher::enter`].
pub struct EnterGuard {
    previous: Option<Arc<Notifier>>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

fn current_notifier() -> io::Result<Arc<Notifier>> {
    CURRENT
        .with(|current| current.borrow().clone())
        .ok_or_else(|| {
            io::Error::other("no ExitWatcher entered on this thread (ExitWatcher::enter)")
        })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every step; a panic elsewhere must
    // not stop the server from reporting exits.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One running command: the receiving ends of its reader threads, the sending end of its
/// stdin writer, and its Job Object.
pub struct ChildProcess {
    pid: u32,
    stdout: Option<OutputPipe>,
    stderr: Option<OutputPipe>,
    stdin: Option<SyncSender<Vec<u8>>>,
    /// The job, or `None` if the process could not be put in one (see `spawn`).
    job: Option<OwnedHandle>,
    /// Our own handle to the process: keeps its pid from being reused while we may signal it,
    /// and kills it when there is no job.
    process: OwnedHandle,
}

impl ChildProcess {
    /// Starts `cmd /D /S /C "command"` ([`super::shell_command`]) in `cwd`, in a Job Object
    /// of its own, with threads that report its pipes under `tokens` to the [`ExitWatcher`]
    /// entered on this thread. Without `with_stdin` the command reads the null device.
    ///
    /// # Errors
    /// No watcher entered on this thread, or creating the job, the process or a thread failed.
    pub fn spawn(
        command: &str,
        cwd: &Path,
        with_stdin: bool,
        _registry: &Registry,
        tokens: PipeTokens,
    ) -> io::Result<ChildProcess> {
        let notifier = current_notifier()?;
        let job = create_job()?;
        let mut child = super::shell_command(command)
            .current_dir(cwd)
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .creation_flags(CREATE_NO_WINDOW | CREATE_SUSPENDED)
            .spawn()?;
        let pid = child.id();
        let process = match child.as_handle().try_clone_to_owned() {
            Ok(process) => process,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };
        // From here on the process exists, suspended: anything that fails must kill it.
        let job = match assign(&job, &process) {
            Ok(()) => Some(job),
            Err(e) => {
                // E.g. Windows 7 when the server itself runs in a job that forbids breakaway.
                warn!(
                    "pid {pid}: cannot put the command in a Job Object ({e}); \
                     only the command itself can be killed, not what it starts"
                );
                None
            }
        };
        let mut process = ChildProcess {
            pid,
            stdout: None,
            stderr: None,
            stdin: None,
            job,
            process,
        };
        let started = (|| -> io::Result<()> {
            let watch = Arc::new(ReaderWatch::default());
            let stdout = child.stdout.take().expect("stdout is piped");
            let stderr = child.stderr.take().expect("stderr is piped");
            process.stdout = Some(OutputPipe::start(
                stdout,
                0,
                tokens.stdout,
                &notifier,
                &watch,
            )?);
            process.stderr = Some(OutputPipe::start(
                stderr,
                1,
                tokens.stderr,
                &notifier,
                &watch,
            )?);
            if let Some(pipe) = child.stdin.take() {
                process.stdin = Some(start_stdin_writer(pipe, tokens.stdin, &notifier)?);
            }
            let waiter_notifier = Arc::clone(&notifier);
            thread::Builder::new()
                .name(format!("rcmd-wait-{pid}"))
                .spawn(move || wait_for_exit(child, pid, &waiter_notifier, &watch))?;
            resume_main_thread(pid)
        })();
        match started {
            Ok(()) => Ok(process),
            Err(e) => {
                // Threads already started end when the pipes close with the process.
                process.terminate(1);
                Err(e)
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads available output: `Ok(n > 0)` bytes, `Ok(0)` at end of stream, or `WouldBlock`.
    /// A stream already closed reads as end of stream.
    pub fn read_output(&mut self, stream: OutputStream, buf: &mut [u8]) -> io::Result<usize> {
        let pipe = match stream {
            OutputStream::Stdout => self.stdout.as_mut(),
            OutputStream::Stderr => self.stderr.as_mut(),
        };
        match pipe {
            Some(pipe) => pipe.read(buf),
            None => Ok(0),
        }
    }

    /// Like [`Self::read_output`], appending up to `max` bytes to `out`. (Output arrives here
    /// as chunks from reader threads, so this copies; only the Unix version saves a copy.)
    pub fn read_output_appending(
        &mut self,
        stream: OutputStream,
        out: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        let len = out.len();
        out.resize(len + max, 0);
        let result = self.read_output(stream, &mut out[len..]);
        out.truncate(len + result.as_ref().map_or(0, |n| *n));
        result
    }

    /// The poll reported `stream` ready. Nothing to do here: `read_output` only looks at the
    /// reader thread's queue, which costs no system call.
    pub fn output_ready_event(&mut self, _stream: OutputStream) {}

    /// Whether `stream` is still open.
    pub fn awaiting_eof(&self, stream: OutputStream) -> bool {
        match stream {
            OutputStream::Stdout => self.stdout.is_some(),
            OutputStream::Stderr => self.stderr.is_some(),
        }
    }

    /// Stops reading `stream`. Its reader thread ends at its next chunk, which closes our end
    /// of the pipe, so a command still writing to it gets a broken pipe, as on Unix.
    pub fn close_output(&mut self, stream: OutputStream, _registry: &Registry) {
        match stream {
            OutputStream::Stdout => self.stdout = None,
            OutputStream::Stderr => self.stderr = None,
        }
    }

    /// `stream` reached end of file. Its reader thread has ended; nothing is registered.
    pub fn end_output(&mut self, stream: OutputStream) {
        match stream {
            OutputStream::Stdout => self.stdout = None,
            OutputStream::Stderr => self.stderr = None,
        }
    }

    /// Lets go of every pipe still open, for a command that is finished.
    pub fn release(&mut self, _registry: &Registry) {
        self.stdout = None;
        self.stderr = None;
        self.stdin = None;
    }

    /// Exits are only learned from the [`ExitWatcher`] here: its thread waits on the process
    /// handle, so there is no round trip to save.
    pub fn try_reap(&self) -> Option<ExitStatus> {
        None
    }

    /// Whether the command's stdin pipe is still open.
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Queues up to one chunk of `data` for the stdin writer; `WouldBlock` while its queue is
    /// full, `BrokenPipe` once the command stopped reading (the writer has ended).
    pub fn write_stdin(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(stdin) = &self.stdin else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(MAX_CHUNK);
        match stdin.try_send(data[..n].to_vec()) {
            Ok(()) => Ok(n),
            Err(TrySendError::Full(_)) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TrySendError::Disconnected(_)) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Closes the command's stdin: the writer writes what is queued, then closes the pipe, so
    /// the command reads end of file.
    pub fn close_stdin(&mut self, _registry: &Registry) {
        self.stdin = None;
    }

    /// Windows has no signals for a process tree without a shared console: every signal
    /// terminates the command's job, with exit code 128 + the Unix signal number.
    pub fn signal(&self, signal: SignalName) {
        self.terminate(match signal {
            SignalName::Int => EXIT_CODE_INT,
            SignalName::Term => EXIT_CODE_TERM,
            SignalName::Kill => EXIT_CODE_KILL,
        });
    }

    /// Kills the command and every process it started (its Job Object).
    pub fn kill_tree(&self) {
        self.terminate(EXIT_CODE_KILL);
    }

    fn terminate(&self, exit_code: u32) {
        let (ok, what) = match &self.job {
            // SAFETY: a valid job handle we own.
            Some(job) => (
                unsafe { TerminateJobObject(raw(job), exit_code) },
                "TerminateJobObject",
            ),
            // SAFETY: a valid process handle we own.
            None => (
                unsafe { TerminateProcess(raw(&self.process), exit_code) },
                "TerminateProcess",
            ),
        };
        if ok == 0 {
            // E.g. the process has exited already (access denied on a dead process).
            debug!("{what} (pid {}): {}", self.pid, io::Error::last_os_error());
        }
    }
}

fn raw(handle: &OwnedHandle) -> HANDLE {
    handle.as_raw_handle() as HANDLE
}

/// A Job Object that kills its processes when its last handle closes.
fn create_job() -> io::Result<OwnedHandle> {
    // SAFETY: null attributes and name are allowed; the handle is checked before we own it.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `job` is a valid handle that nothing else owns.
    let job = unsafe { OwnedHandle::from_raw_handle(job as RawHandle) };
    // SAFETY: an all-zero JOBOBJECT_EXTENDED_LIMIT_INFORMATION is valid (no limits).
    let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: the pointer and size describe `limits`, which outlives the call.
    let ok = unsafe {
        SetInformationJobObject(
            raw(&job),
            JobObjectExtendedLimitInformation,
            (&raw const limits).cast(),
            size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(job)
}

fn assign(job: &OwnedHandle, process: &OwnedHandle) -> io::Result<()> {
    // SAFETY: both are valid handles we own.
    if unsafe { AssignProcessToJobObject(raw(job), raw(process)) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resumes the only thread of a process created suspended.
///
/// `std` closes the thread handle `CreateProcessW` returns, so the thread is found by its
/// process id in a snapshot of the system's threads.
fn resume_main_thread(pid: u32) -> io::Result<()> {
    // SAFETY: no pointers; the result is checked.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snapshot == INVALID_HANDLE_VALUE || snapshot.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a valid handle that nothing else owns.
    let snapshot = unsafe { OwnedHandle::from_raw_handle(snapshot as RawHandle) };
    // SAFETY: all-zero is a valid THREADENTRY32; dwSize is set as the API requires.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = size_of::<THREADENTRY32>() as u32;
    // SAFETY: `entry` is a valid, sized THREADENTRY32 for each call.
    let mut more = unsafe { Thread32First(raw(&snapshot), &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: no pointers; the result is checked.
            let thread = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) };
            if thread.is_null() {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a valid handle that nothing else owns.
            let thread = unsafe { OwnedHandle::from_raw_handle(thread as RawHandle) };
            // SAFETY: a valid thread handle with THREAD_SUSPEND_RESUME access.
            if unsafe { ResumeThread(raw(&thread)) } == u32::MAX {
                return Err(io::Error::last_os_error());
            }
            return Ok(());
        }
        // SAFETY: as above.
        more = unsafe { Thread32Next(raw(&snapshot), &mut entry) } != 0;
    }
    Err(io::Error::other(format!(
        "the new process {pid} has no thread to resume"
    )))
}

/// What a reader thread hands the loop.
enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The loop's end of one output pipe.
struct OutputPipe {
    chunks: Receiver<Chunk>,
    /// The chunk being read out, and how much of it has been.
    current: Vec<u8>,
    taken: usize,
    ended: bool,
}

impl OutputPipe {
    fn start(
        pipe: impl Read + Send + 'static,
        index: usize,
        token: Token,
        notifier: &Arc<Notifier>,
        watch: &Arc<ReaderWatch>,
    ) -> io::Result<OutputPipe> {
        let (sender, chunks) = mpsc::sync_channel(CHUNKS_QUEUED);
        let notifier = Arc::clone(notifier);
        let watch = Arc::clone(watch);
        thread::Builder::new()
            .name(format!("rcmd-read-{}", ["stdout", "stderr"][index]))
            .spawn(move || read_pipe(pipe, index, &sender, token, &notifier, &watch))?;
        Ok(OutputPipe {
            chunks,
            current: Vec::new(),
            taken: 0,
            ended: false,
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken == self.current.len() {
            if self.ended {
                return Ok(0);
            }
            match self.chunks.try_recv() {
                Ok(Chunk::Data(data)) => {
                    self.current = data;
                    self.taken = 0;
                }
                Ok(Chunk::End) | Err(TryRecvError::Disconnected) => {
                    self.ended = true;
                    self.current = Vec::new();
                    self.taken = 0;
                    return Ok(0);
                }
                Ok(Chunk::Failed(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(TryRecvError::Empty) => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        let n = buf.len().min(self.current.len() - self.taken);
        buf[..n].copy_from_slice(&self.current[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

/// What each of a command's two reader threads is doing, for its waiter.
#[derive(Default)]
struct ReaderWatch {
    readers: Mutex<[Reader; 2]>,
    changed: Condvar,
}

#[derive(Clone, Copy, Default)]
struct Reader {
    state: ReaderState,
    /// Bytes read from the pipe so far.
    bytes: u64,
}

#[derive(Clone, Copy, Default)]
enum ReaderState {
    /// Blocked reading the pipe since then: it was empty.
    Waiting(Instant),
    /// Holding data it read, until the loop takes it.
    #[default]
    Delivering,
    /// Stopped: end of file, an error, or the loop closed the stream.
    Done,
}

impl ReaderWatch {
    fn update(&self, index: usize, state: ReaderState, bytes_read: usize) {
        let mut readers = lock(&self.readers);
        readers[index].state = state;
        readers[index].bytes += bytes_read as u64;
        drop(readers);
        self.changed.notify_all();
    }
}

/// Marks a reader done however its thread ends, panics included.
struct DoneOnDrop<'a>(&'a ReaderWatch, usize);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.update(self.1, ReaderState::Done, 0);
    }
}

fn read_pipe(
    mut pipe: impl Read,
    index: usize,
    chunks: &SyncSender<Chunk>,
    token: Token,
    notifier: &Notifier,
    watch: &ReaderWatch,
) {
    let _done = DoneOnDrop(watch, index);
    let mut buf = vec![0; MAX_CHUNK];
    loop {
        watch.update(index, ReaderState::Waiting(Instant::now()), 0);
        // `std` reports the broken pipe of a writer that has gone as end of file.
        let chunk = match pipe.read(&mut buf) {
            Ok(0) => Chunk::End,
            Ok(n) => Chunk::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Chunk::Failed(e),
        };
        let last = match &chunk {
            Chunk::Data(data) => {
                watch.update(index, ReaderState::Delivering, data.len());
                false
            }
            Chunk::End | Chunk::Failed(_) => true,
        };
        // Blocks while the queue is full: backpressure. Fails once the loop closed the stream.
        if chunks.send(chunk).is_err() {
            return;
        }
        notifier.notify(ChildEvent::Ready(token));
        if last {
            return;
        }
    }
}

fn start_stdin_writer(
    pipe: impl Write + Send + 'static,
    token: Token,
    notifier: &Arc<Notifier>,
) -> io::Result<SyncSender<Vec<u8>>> {
    let (sender, chunks) = mpsc::sync_channel(STDIN_CHUNKS_QUEUED);
    let notifier = Arc::clone(notifier);
    thread::Builder::new()
        .name("rcmd-write-stdin".to_owned())
        .spawn(move || write_pipe(pipe, &chunks, token, &notifier))?;
    Ok(sender)
}

fn write_pipe(mut pipe: impl Write, chunks: &Receiver<Vec<u8>>, token: Token, notifier: &Notifier) {
    // Ends when the loop closes stdin (after writing what was queued) or the command stops
    // reading; either way `pipe` is closed on return, and the queue's end with it.
    while let Ok(chunk) = chunks.recv() {
        // The queue has room again.
        notifier.notify(ChildEvent::Ready(token));
        if let Err(e) = pipe.write_all(&chunk).and_then(|()| pipe.flush()) {
            debug!("writing a command's stdin: {e}");
            break;
        }
    }
    // Once the queue's end is gone, the next write_stdin says BrokenPipe: let the loop try.
    notifier.notify(ChildEvent::Ready(token));
}

/// Waits for the process to exit, then for its output to be delivered, then reports `Exited`.
fn wait_for_exit(mut child: Child, pid: u32, notifier: &Notifier, watch: &ReaderWatch) {
    let code = loop {
        match child.wait() {
            Ok(status) => break status.code().unwrap_or(-1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Cannot happen for a handle we own; report an exit so nothing waits forever.
                warn!("waiting for pid {pid}: {e}");
                break -1;
            }
        }
    };
    wait_for_readers(watch, READER_GRACE);
    notifier.report(Report {
        event: ChildEvent::Exited {
            pid,
            status: ExitStatus::Exited { code },
        },
        _process: Some(child),
    });
}

/// Returns once each reader has queued everything the exited process wrote. A reader has
/// when it is done, or when it has sat in an empty pipe for `grace` since the exit, or when it
/// has read more since the exit than the pipe and its read buffer can hold: what the process
/// wrote before it exited was in those, so anything later comes from a background process
/// holding the pipe. A reader holding data waits as long as the loop takes to accept it: a
/// slow client delays `Exited` rather than losing output.
fn wait_for_readers(watch: &ReaderWatch, grace: Duration) {
    let exited = Instant::now();
    let mut readers = lock(&watch.readers);
    let at_exit = readers.map(|reader| reader.bytes);
    let mut settled = [false; 2];
    loop {
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (index, reader) in readers.iter().enumerate() {
            if settled[index] {
                continue;
            }
            let remaining = match reader.state {
                ReaderState::Done => Duration::ZERO,
                _ if reader.bytes - at_exit[index] > AFTER_EXIT_BYTES => Duration::ZERO,
                ReaderState::Delivering => Duration::MAX,
                ReaderState::Waiting(since) => {
                    (since.max(exited) + grace).saturating_duration_since(now)
                }
            };
            settled[index] = remaining.is_zero();
            wait = wait.max(remaining);
        }
        if wait.is_zero() {
            return;
        }
        // Woken by every change of a reader; Delivering has no deadline of its own.
        readers = watch
            .changed
            .wait_timeout(readers, wait.min(grace))
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputEncoding, StreamDecoder};
    use mio::{Events, Poll};
    use windows_sys::Win32::Foundation::WAIT_OBJECT_0;
    use windows_sys::Win32::System::JobObjects::{
        JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JobObjectBasicAccountingInformation,
        JobObjectBasicProcessIdList, QueryInformationJobObject,
    };
    use windows_sys::Win32::System::Threading::{
        OpenProcess, PROCESS_SYNCHRONIZE, WaitForSingleObject,
    };

    const WATCHER: Token = Token(100);
    const TOKENS: PipeTokens = PipeTokens {
        stdout: Token(1),
        stderr: Token(2),
        stdin: Token(3),
    };
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A poll and watcher, as the server has them.
    struct Harness {
        poll: Poll,
        watcher: ExitWatcher,
        _entered: EnterGuard,
    }

    #[derive(Debug)]
    struct Finished {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        code: i32,
        /// Every token reported ready.
        ready: Vec<Token>,
    }

    impl Finished {
        fn stdout(&self) -> String {
            String::from_utf8_lossy(&self.stdout).into_owned()
        }
    }

    impl Harness {
        fn new() -> Harness {
            let poll = Poll::new().unwrap();
            let watcher = ExitWatcher::new(poll.registry(), WATCHER).unwrap();
            let entered = watcher.enter();
            Harness {
                poll,
                watcher,
                _entered: entered,
            }
        }

        fn spawn(&self, command: &str, with_stdin: bool) -> ChildProcess {
            ChildProcess::spawn(
                command,
                &std::env::temp_dir(),
                with_stdin,
                self.poll.registry(),
                TOKENS,
            )
            .unwrap()
        }

        fn run(&mut self, command: &str) -> Finished {
            let mut child = self.spawn(command, false);
            self.finish(&mut child, Vec::new())
        }

        /// Drives `child` the way a connection does until it has exited and both streams are
        /// closed, feeding it `stdin` (then closing it) if it has a stdin pipe.
        fn finish(&mut self, child: &mut ChildProcess, mut stdin: Vec<u8>) -> Finished {
            let started = Instant::now();
            let registry = self.poll.registry().try_clone().unwrap();
            let mut events = Events::with_capacity(64);
            let mut buf = vec![0; MAX_CHUNK];
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let mut exit = None;
            let mut ready = Vec::new();
            loop {
                while !stdin.is_empty() && child.has_stdin() {
                    match child.write_stdin(&stdin) {
                        Ok(n) => drop(stdin.drain(..n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => stdin.clear(),
                    }
                }
                if stdin.is_empty() {
                    child.close_stdin(&registry);
                }
                for (stream, out) in [
                    (OutputStream::Stdout, &mut stdout),
                    (OutputStream::Stderr, &mut stderr),
                ] {
                    while child.awaiting_eof(stream) {
                        match child.read_output(stream, &mut buf) {
                            Ok(0) => child.close_output(stream, &registry),
                            Ok(n) => out.extend_from_slice(&buf[..n]),
                            // After `Exited`, an empty pipe is the end of the command's output.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                if exit.is_some() {
                                    child.close_output(stream, &registry);
                                }
                                break;
                            }
                            Err(e) => panic!("reading {stream:?}: {e}"),
                        }
                    }
                }
                if let Some(code) = exit
                    && !child.awaiting_eof(OutputStream::Stdout)
                    && !child.awaiting_eof(OutputStream::Stderr)
                {
                    return Finished {
                        stdout,
                        stderr,
                        code,
                        ready,
                    };
                }
                assert!(started.elapsed() < DEADLINE, "no exit after {DEADLINE:?}");
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(200)))
                    .unwrap();
                for event in self.watcher.take_events() {
                    match event {
                        ChildEvent::Ready(token) => ready.push(token),
                        ChildEvent::Exited { pid, status } => {
                            assert_eq!(pid, child.pid());
                            let ExitStatus::Exited { code } = status else {
                                panic!("unexpected status {status:?}");
                            };
                            exit = Some(code);
                        }
                    }
                }
            }
        }

        /// Waits for the exit of `pid` without reading output.
        fn wait_exit(&mut self, pid: u32, within: Duration) -> i32 {
            let started = Instant::now();
            let mut events = Events::with_capacity(64);
            loop {
                for event in self.watcher.take_events() {
                    if let ChildEvent::Exited {
                        pid: exited,
                        status,
                    } = event
                    {
                        assert_eq!(exited, pid);
                        let ExitStatus::Exited { code } = status else {
                            panic!("unexpected status {status:?}");
                        };
                        return code;
                    }
                }
                assert!(
                    started.elapsed() < within,
                    "pid {pid} did not exit in {within:?}"
                );
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(100)))
                    .unwrap();
            }
        }
    }

    fn active_processes(child: &ChildProcess) -> u32 {
        // SAFETY: all-zero is a valid value of this plain struct.
        let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
        let job = child.job.as_ref().expect("the command is in a job");
        // SAFETY: the pointer and size describe `info`.
        let ok = unsafe {
            QueryInformationJobObject(
                raw(job),
                JobObjectBasicAccountingInformation,
                (&raw mut info).cast(),
                size_of_val(&info) as u32,
                std::ptr::null_mut(),
            )
        };
        assert_ne!(ok, 0, "{}", io::Error::last_os_error());
        info.ActiveProcesses
    }

    #[test]
    fn output_and_exit_code() {
        let mut harness = Harness::new();
        let finished = harness.run("echo hello& exit 3");
        assert_eq!(finished.stdout(), "hello\r\n");
        assert!(finished.stderr.is_empty());
        assert_eq!(finished.code, 3);
        assert!(finished.ready.contains(&TOKENS.stdout));
        assert!(finished.ready.contains(&TOKENS.stderr));
        assert!(!finished.ready.contains(&TOKENS.stdin));
    }

    #[test]
    fn stderr_is_separate() {
        let mut harness = Harness::new();
        let finished = harness.run("echo out& echo err>&2");
        assert_eq!(finished.stdout(), "out\r\n");
        assert_eq!(String::from_utf8_lossy(&finished.stderr), "err\r\n");
        assert_eq!(finished.code, 0);
    }

    #[test]
    fn the_command_reaches_cmd_verbatim() {
        let mut harness = Harness::new();
        // Quotes, double spaces and a quoted program at the start (which plain `cmd /C` would
        // strip the quotes of) all survive.
        let finished = harness.run(r#""%ComSpec%" /C echo "two  spaces" & echo a^&b"#);
        assert_eq!(finished.stdout(), "\"two  spaces\" \r\na&b\r\n");
    }

    #[test]
    fn no_output_is_lost_when_the_loop_reads_late() {
        let mut harness = Harness::new();
        let mut child = harness.spawn("for /L %i in (1,1,3000) do @echo line %i", false);
        // Far more than the readers queue: the command blocks until we read, and must not be
        // reported as exited with output still in the pipe.
        thread::sleep(Duration::from_millis(1500));
        let finished = harness.finish(&mut child, Vec::new());
        let expected: String = (1..=3000).map(|i| format!("line {i}\r\n")).collect();
        assert_eq!(finished.stdout.len(), expected.len());
        assert!(finished.stdout() == expected, "output differs");
        assert_eq!(finished.code, 0);
    }

    /// Run as a command by `stdin_is_written_and_closed` (the Windows under test may have no
    /// program that copies stdin to a pipe: Wine's `more` pages, its `findstr` ignores stdin):
    /// copies stdin to stderr, which the test harness leaves alone.
    #[test]
    #[ignore = "a helper process, not a test"]
    fn copy_stdin_to_stderr() {
        if std::env::var_os("RCMD_TEST_COPY_STDIN").is_some() {
            io::copy(&mut io::stdin().lock(), &mut io::stderr().lock()).unwrap();
            std::process::exit(0);
        }
    }

    #[test]
    fn stdin_is_written_and_closed() {
        let mut harness = Harness::new();
        let exe = std::env::current_exe().unwrap();
        let command = format!(
            "set RCMD_TEST_COPY_STDIN=1& \"{}\" --exact {} --ignored --nocapture",
            exe.display(),
            concat!(module_path!(), "::copy_stdin_to_stderr")
                .split_once("::")
                .unwrap()
                .1,
        );
        let mut child = harness.spawn(&command, true);
        // Bigger than the writer's queue and the pipe, so `write_stdin` must say WouldBlock.
        let input: String = (0..4000)
            .map(|i| format!("{i:04} {}\r\n", "x".repeat(60)))
            .collect();
        let finished = harness.finish(&mut child, input.clone().into_bytes());
        assert_eq!(finished.code, 0);
        assert_eq!(finished.stderr.len(), input.len());
        assert!(
            finished.stderr == input.as_bytes(),
            "stdin did not come back whole"
        );
        assert!(finished.ready.contains(&TOKENS.stdin));
    }

    #[test]
    fn stdin_of_a_command_that_exited_is_a_broken_pipe() {
        let mut harness = Harness::new();
        let mut child = harness.spawn("exit 0", true);
        assert_eq!(harness.wait_exit(child.pid(), DEADLINE), 0);
        let started = Instant::now();
        loop {
            match child.write_stdin(&[b'x'; 4096]) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
                Err(e) => panic!("unexpected error {e}"),
            }
            assert!(started.elapsed() < DEADLINE, "no broken pipe");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn kill_tree_kills_every_process_of_the_command() {
        let mut harness = Harness::new();
        let child = harness.spawn("ping -n 60 127.0.0.1 | more", false);
        let started = Instant::now();
        while active_processes(&child) < 3 {
            assert!(started.elapsed() < DEADLINE, "the pipeline did not start");
            thread::sleep(Duration::from_millis(20));
        }
        child.kill_tree();
        assert_eq!(harness.wait_exit(child.pid(), Duration::from_secs(10)), 137);
        assert_eq!(active_processes(&child), 0);
    }

    #[test]
    fn signals_terminate_with_unix_like_codes() {
        let mut harness = Harness::new();
        for (signal, code) in [(SignalName::Int, 130), (SignalName::Term, 143)] {
            let mut child = harness.spawn("ping -n 60 127.0.0.1", false);
            thread::sleep(Duration::from_millis(200));
            child.signal(signal);
            let finished = harness.finish(&mut child, Vec::new());
            assert_eq!(finished.code, code);
        }
    }

    /// Handles to every process in the command's job, to wait for them.
    fn processes_in_job(child: &ChildProcess) -> Vec<OwnedHandle> {
        #[repr(C)]
        struct ProcessIds {
            assigned: u32,
            listed: u32,
            ids: [usize; 64],
        }
        let mut list = ProcessIds {
            assigned: 0,
            listed: 0,
            ids: [0; 64],
        };
        let job = child.job.as_ref().expect("the command is in a job");
        // SAFETY: the pointer and size describe `list`, laid out as
        // JOBOBJECT_BASIC_PROCESS_ID_LIST with room for 64 ids.
        let ok = unsafe {
            QueryInformationJobObject(
                raw(job),
                JobObjectBasicProcessIdList,
                (&raw mut list).cast(),
                size_of_val(&list) as u32,
                std::ptr::null_mut(),
            )
        };
        assert_ne!(ok, 0, "{}", io::Error::last_os_error());
        list.ids[..list.listed as usize]
            .iter()
            .filter_map(|&pid| {
                // SAFETY: no pointers; the result is checked.
                let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid as u32) };
                // SAFETY: a valid handle that nothing else owns.
                (!handle.is_null()).then(|| unsafe { OwnedHandle::from_raw_handle(handle) })
            })
            .collect()
    }

    fn has_exited(process: &OwnedHandle, within: Duration) -> bool {
        // SAFETY: a valid process handle with SYNCHRONIZE access.
        unsafe { WaitForSingleObject(raw(process), within.as_millis() as u32) == WAIT_OBJECT_0 }
    }

    #[test]
    fn a_background_process_holding_the_pipe_does_not_hold_up_the_exit() {
        let mut harness = Harness::new();
        let started = Instant::now();
        let mut child = harness.spawn("start /b ping -n 30 127.0.0.1 & echo started", false);
        let finished = harness.finish(&mut child, Vec::new());
        assert!(finished.stdout().contains("started"), "{finished:?}");
        assert_eq!(finished.code, 0);
        assert!(started.elapsed() < Duration::from_secs(10));
        // `ping` still runs, in the job; closing the job on drop takes it along.
        let background = processes_in_job(&child);
        assert!(!background.is_empty());
        drop(child);
        for process in &background {
            assert!(has_exited(process, Duration::from_secs(10)));
        }
    }

    #[test]
    fn dropping_a_running_command_kills_it() {
        let mut harness = Harness::new();
        let child = harness.spawn("ping -n 60 127.0.0.1", false);
        let pid = child.pid();
        thread::sleep(Duration::from_millis(200));
        drop(child);
        // The waiter still reports the exit, so the server's table of children empties.
        harness.wait_exit(pid, Duration::from_secs(10));
    }

    #[test]
    fn commands_report_under_their_own_tokens() {
        let mut harness = Harness::new();
        let tokens = PipeTokens {
            stdout: Token(41),
            stderr: Token(42),
            stdin: Token(43),
        };
        let dir = std::env::temp_dir();
        let mut child =
            ChildProcess::spawn("echo x", &dir, false, harness.poll.registry(), tokens).unwrap();
        let finished = harness.finish(&mut child, Vec::new());
        assert!(finished.ready.contains(&Token(41)));
        assert!(!finished.ready.contains(&TOKENS.stdout));
    }

    #[test]
    fn spawn_needs_an_entered_watcher() {
        let poll = Poll::new().unwrap();
        let _watcher = ExitWatcher::new(poll.registry(), WATCHER).unwrap();
        let dir = std::env::temp_dir();
        let spawned = thread::scope(|scope| {
            scope
                .spawn(|| ChildProcess::spawn("echo x", &dir, false, poll.registry(), TOKENS))
                .join()
                .unwrap()
        });
        assert!(spawned.is_err());
    }

    /// `cmd` writes Chinese in the OEM code page, and `auto` turns it into UTF-8. Only where
    /// that code page is GBK (the CI's Wine runs with LC_ALL=zh_CN.UTF-8).
    #[test]
    fn chinese_from_cmd_decodes_with_auto() {
        if crate::platform::console_output_code_page() != 936 {
            eprintln!("skipped: the OEM code page is not 936");
            return;
        }
        let mut harness = Harness::new();
        let finished = harness.run("echo 你好& echo 错误>&2");
        assert_eq!(finished.stdout, b"\xc4\xe3\xba\xc3\r\n");
        let mut decoded = Vec::new();
        let mut decoder = StreamDecoder::new(OutputEncoding::auto());
        decoder.decode(&finished.stdout, false, &mut decoded);
        decoder.decode(b"", true, &mut decoded);
        assert_eq!(String::from_utf8(decoded).unwrap(), "你好\r\n");
        let mut decoded = Vec::new();
        let mut decoder = StreamDecoder::new(OutputEncoding::auto());
        decoder.decode(&finished.stderr, true, &mut decoded);
        assert_eq!(String::from_utf8(decoded).unwrap(), "错误\r\n");
    }

    #[test]
    fn readers_settle_when_the_pipe_stays_empty_after_the_exit() {
        let watch = ReaderWatch::default();
        watch.update(0, ReaderState::Done, 0);
        watch.update(1, ReaderState::Waiting(Instant::now()), 0);
        let started = Instant::now();
        wait_for_readers(&watch, Duration::from_millis(100));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn a_reader_holding_data_is_waited_for() {
        let watch = Arc::new(ReaderWatch::default());
        watch.update(0, ReaderState::Done, 0);
        watch.update(1, ReaderState::Delivering, 10);
        let delivered = {
            let watch = Arc::clone(&watch);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(500));
                watch.update(1, ReaderState::Done, 0);
            })
        };
        let started = Instant::now();
        wait_for_readers(&watch, Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(450));
        delivered.join().unwrap();
    }

    #[test]
    fn a_background_writer_cannot_hold_up_the_exit_forever() {
        // A reader that keeps delivering after the exit (a background process writing without
        // pause) is settled once it has read more than the exited process could have left.
        let watch = ReaderWatch::default();
        watch.update(0, ReaderState::Done, 0);
        watch.update(1, ReaderState::Delivering, 0);
        thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..200 {
                    thread::sleep(Duration::from_millis(5));
                    watch.update(1, ReaderState::Delivering, MAX_CHUNK);
                }
            });
            let started = Instant::now();
            wait_for_readers(&watch, Duration::from_millis(100));
            assert!(started.elapsed() < Duration::from_secs(3));
        });
    }
}
