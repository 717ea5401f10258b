//! Starting commands without stalling the event loop.
//!
//! Creating a process blocks the caller until the child has called `exec` (so that a failed
//! `exec` can be reported), about a millisecond here, longer on a loaded machine. One command
//! at a time that is cheaper done right away than handed to another thread. But with hundreds
//! of clients, a loop that spawns inline does nothing else while the kernel copies and execs,
//! and commands start one after the other at the rate of one core. So when the loop is busy,
//! starting moves to a small pool of threads that wake the loop (a `mio::Waker`) when a child
//! is ready; the loop then only registers its pipes ([`ChildProcess::attach`]).
//!
//! On Windows the loop's single `Waker` belongs to the child watcher, and commands are always
//! started inline.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex, mpsc};

#[cfg(unix)]
use mio::Waker;
use mio::{Registry, Token};

use super::connection::ConnId;
use super::process::{ChildProcess, PipeTokens};

#[cfg(unix)]
/// Threads that start commands while the loop is busy: four, whatever the number of cores.
/// Starting is mostly waiting for the kernel, so on small machines more threads than cores
/// pay off.
const SPAWN_THREADS: usize = 4;

/// A command to start for a connection.
pub struct SpawnRequest {
    pub conn: ConnId,
    /// The connection's serial number for this command, to match the result to it.
    pub serial: u64,
    pub command: String,
    pub cwd: PathBuf,
    pub with_stdin: bool,
    pub tokens: PipeTokens,
}

/// A command started by the pool, waiting to be attached to the loop.
pub struct Spawned {
    pub conn: ConnId,
    pub serial: u64,
    /// The spawner's number for this start (see [`Spawner::oldest_outstanding`]).
    pub ticket: u64,
    pub result: io::Result<Child>,
}

/// How a request was handled.
pub enum Start {
    /// Started inline, ready to use (or failed).
    Done(io::Result<ChildProcess>),
    /// Handed to the pool; the result comes from [`Spawner::take_finished`].
    Pending,
}

/// Starts commands inline or on the pool.
///
/// Each start handed to the pool gets a ticket, a number counting up. The child table keeps
/// the exit of an unknown pid reaped while starts are outstanding, in case it is one of them;
/// with the tickets it can tell when every start that could own such an exit has been reported,
/// and let the exit go ([`super::children::ChildTable::forget_unclaimable`]).
pub struct Spawner {
    pool: Option<Pool>,
    next_ticket: u64,
    /// Tickets handed to the pool whose result has not been taken yet.
    outstanding: BTreeSet<u64>,
}

// On Windows commands always start inline, so the pool is never built there.
#[cfg_attr(not(unix), allow(dead_code))]
struct Pool {
    jobs: mpsc::Sender<(u64, SpawnRequest)>,
    finished: Arc<Mutex<Vec<Spawned>>>,
}

impl Spawner {
    /// A spawner whose pool wakes the loop through `token` (Unix); on Windows, inline only.
    ///
    /// # Errors
    /// The waker could not be created.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Spawner> {
        #[cfg(unix)]
        let pool = Some(Pool::new(Arc::new(Waker::new(registry, token)?)));
        #[cfg(not(unix))]
        let pool = {
            let _ = (registry, token);
            None
        };
        Ok(Spawner {
            pool,
            next_ticket: 0,
            outstanding: BTreeSet::new(),
        })
    }

    /// Starts `request`: inline when the loop has nothing else waiting (`loop_busy` false)
    /// and no other start is in flight, on the pool otherwise.
    pub fn start(&mut self, request: SpawnRequest, registry: &Registry, loop_busy: bool) -> Start {
        match &self.pool {
            Some(pool) if loop_busy || !self.outstanding.is_empty() => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.outstanding.insert(ticket);
                pool.jobs
                    .send((ticket, request))
                    .expect("spawn threads live as long as the spawner");
                Start::Pending
            }
            _ => Start::Done(ChildProcess::spawn(
                &request.command,
                &request.cwd,
                request.with_stdin,
                registry,
                request.tokens,
            )),
        }
    }

    /// Starts handed to the pool whose result has not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// The ticket watermark: while any start is outstanding (an exit of an unknown pid reaped
    /// now may be one of them), the next ticket to hand out, so that every start handed to the
    /// pool before now has a smaller one. `None` when no start is outstanding.
    pub fn ticket_watermark(&self) -> Option<u64> {
        (!self.outstanding.is_empty()).then_some(self.next_ticket)
    }

    /// The smallest ticket whose result has not been taken yet, or the next ticket to hand out
    /// when none is outstanding: every start with a smaller ticket has been reported.
    pub fn oldest_outstanding(&self) -> u64 {
        self.outstanding
            .first()
            .copied()
            .unwrap_or(self.next_ticket)
    }

    /// Commands the pool has started since the last call.
    pub fn take_finished(&mut self) -> Vec<Spawned> {
        let Some(pool) = &self.pool else {
            return Vec::new();
        };
        let finished = std::mem::take(&mut *pool.finished.lock().expect("spawner lock"));
        for spawned in &finished {
            self.outstanding.remove(&spawned.ticket);
        }
        finished
    }
}

impl Pool {
    #[cfg(unix)]
    fn new(waker: Arc<Waker>) -> Pool {
        let (jobs, queue) = mpsc::channel::<(u64, SpawnRequest)>();
        let queue = Arc::new(Mutex::new(queue));
        let finished = Arc::new(Mutex::new(Vec::new()));
        for n in 0..SPAWN_THREADS {
            let (queue, finished, waker) = (queue.clone(), finished.clone(), waker.clone());
            std::thread::Builder::new()
                .name(format!("rcmd-spawn-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job, not while spawning.
                        let next = queue.lock().expect("spawner lock").recv();
                        let Ok((ticket, request)) = next else { return }; // the server is gone
                        let result = super::process::start(
                            &request.command,
                            &request.cwd,
                            request.with_stdin,
                        );
                        let done = Spawned {
                            conn: request.conn,
                            serial: request.serial,
                            ticket,
                            result,
                        };
                        finished.lock().expect("spawner lock").push(done);
                        let _ = waker.wake();
                    }
                })
                .expect("start a spawn thread");
        }
        Pool { jobs, finished }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::{Duration, Instant};

    use mio::{Events, Poll, Token};

    use super::*;

    fn request(conn: ConnId, serial: u64) -> SpawnRequest {
        SpawnRequest {
            conn,
            serial,
            command: "exit 0".to_owned(),
            cwd: std::env::temp_dir(),
            with_stdin: false,
            tokens: PipeTokens {
                stdout: Token(1),
                stderr: Token(2),
                stdin: Token(3),
            },
        }
    }

    /// What the pool has reported until `count` starts are in, waiting at most a minute.
    fn finished(spawner: &mut Spawner, poll: &mut Poll, count: usize) -> Vec<Spawned> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut events = Events::with_capacity(8);
        let mut done = Vec::new();
        while done.len() < count {
            assert!(Instant::now() < deadline, "the pool reported {done:?}");
            // Other tests in this binary run commands: their SIGCHLD may interrupt the wait.
            match poll.poll(&mut events, Some(Duration::from_millis(50))) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                result => result.unwrap(),
            }
            done.extend(spawner.take_finished());
        }
        done
    }

    impl std::fmt::Debug for Spawned {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "conn {} serial {} ticket {}",
                self.conn, self.serial, self.ticket
            )
        }
    }

    #[test]
    fn a_lone_start_on_an_idle_loop_is_inline_and_leaves_nothing_outstanding() {
        let poll = Poll::new().unwrap();
        let mut spawner = Spawner::new(poll.registry(), Token(0)).unwrap();
        let Start::Done(started) = spawner.start(request(7, 1), poll.registry(), false) else {
            panic!("an idle loop with no start in flight starts inline");
        };
        let process = started.unwrap();
        assert_eq!(spawner.in_flight(), 0);
        assert_eq!(spawner.ticket_watermark(), None);
        assert_eq!(spawner.oldest_outstanding(), 0);
        // Reaped if it has ended, without waiting: an in-process server of another test in this
        // binary may reap every child with `waitpid(-1)`.
        let _ = process.try_reap();
    }

    /// A busy loop hands starts to the pool, and so does an idle one while a start is in
    /// flight; the tickets count every start until its result is taken.
    #[test]
    fn starts_on_the_pool_are_counted_until_their_results_are_taken() {
        let mut poll = Poll::new().unwrap();
        let mut spawner = Spawner::new(poll.registry(), Token(0)).unwrap();
        assert!(matches!(
            spawner.start(request(7, 1), poll.registry(), true),
            Start::Pending
        ));
        assert_eq!(spawner.in_flight(), 1);
        assert_eq!(spawner.ticket_watermark(), Some(1));
        assert_eq!(spawner.oldest_outstanding(), 0);
        assert!(matches!(
            spawner.start(request(8, 2), poll.registry(), false),
            Start::Pending
        ));
        assert_eq!(spawner.in_flight(), 2);
        assert_eq!(spawner.ticket_watermark(), Some(2));
        assert_eq!(spawner.oldest_outstanding(), 0);

        let mut done = finished(&mut spawner, &mut poll, 2);
        done.sort_by_key(|spawned| spawned.ticket);
        let seen: Vec<_> = done
            .iter()
            .map(|spawned| (spawned.conn, spawned.serial, spawned.ticket))
            .collect();
        assert_eq!(seen, [(7, 1, 0), (8, 2, 1)]);
        assert_eq!(spawner.in_flight(), 0);
        assert_eq!(spawner.ticket_watermark(), None);
        assert_eq!(spawner.oldest_outstanding(), 2);
        for spawned in done {
            // Started; reaped here unless another test's in-process server reaped it.
            let _ = spawned.result.unwrap().wait();
        }
    }
}
