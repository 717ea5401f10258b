//! `ChildProcess::try_reap` on real children, in a test binary of its own: the library's unit
//! tests run an in-process server whose exit watcher reaps every child of the process with
//! `waitpid(-1)`, and it could take these children first.

#![cfg(unix)]

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use mio::{Poll, Token};
use rcmd::protocol::ExitStatus;
use rcmd::server::process::{ChildProcess, PipeTokens};

fn spawn(command: &str, poll: &Poll, first_token: usize) -> ChildProcess {
    let tokens = PipeTokens {
        stdout: Token(first_token),
        stderr: Token(first_token + 1),
        stdin: Token(first_token + 2),
    };
    ChildProcess::spawn(command, Path::new("/"), false, poll.registry(), tokens).expect("spawn")
}

#[track_caller]
fn reaped_within(process: &ChildProcess, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.try_reap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "pid {} not reaped",
            process.pid()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// `try_reap` answers for its one child without waiting: nothing while it runs, and how it
/// ended once it has (which lets a connection send the exit without the SIGCHLD round trip).
#[test]
fn try_reap_reports_how_a_command_ended_and_nothing_while_it_runs() {
    let poll = Poll::new().unwrap();
    let running = spawn("sleep 30", &poll, 0);
    assert_eq!(running.try_reap(), None);
    running.kill_tree();
    let killed = reaped_within(&running, Duration::from_secs(10));
    assert_eq!(
        killed,
        ExitStatus::Signaled {
            signal: libc::SIGKILL
        }
    );
    let exited = spawn("exit 7", &poll, 3);
    assert_eq!(
        reaped_within(&exited, Duration::from_secs(10)),
        ExitStatus::Exited { code: 7 }
    );
}
