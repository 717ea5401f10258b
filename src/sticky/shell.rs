//! Running one command for the unframed server and collecting its whole output.
//!
//! The tutorial server does `subprocess.Popen(cmd, shell=True, stdout=PIPE, stderr=PIPE)` and
//! reads both pipes to the end before answering. This is the same, with two things the tutorial
//! leaves out: the two pipes are read at the same time (reading one to the end first deadlocks
//! when the command fills the other pipe's buffer), and each is capped, so a command printing
//! gigabytes cannot exhaust the server's memory.

use std::io::{self, Read};
use std::path::Path;
use std::process::Stdio;
use std::thread;

use crate::server::process::shell_command;

/// The most output kept per stream; the rest is read and thrown away.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// What a command wrote, each stream complete (up to [`MAX_OUTPUT`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether either stream was cut at [`MAX_OUTPUT`].
    pub truncated: bool,
}

/// Runs `command` in `workdir` with an empty stdin and waits for it to finish.
///
/// # Errors
/// The shell could not be started (not found, or the command contains a NUL byte), or reading
/// its output failed.
pub fn run(command: &str, workdir: &Path) -> io::Result<CommandOutput> {
    // The framed server's shell, so a command means the same in both modes.
    let mut child = shell_command(command)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    // One thread per pipe, so neither can fill up while we wait on the other.
    let stderr_reader = thread::spawn(move || read_capped(stderr, MAX_OUTPUT));
    let stdout = read_capped(stdout, MAX_OUTPUT);
    let stderr = stderr_reader
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the stderr reader thread failed")));
    // Reap the child so it does not linger as a zombie. Its status is not needed (this wire has
    // no place for it), and if something else in the process already reaped it (the framed
    // server's SIGCHLD handler, when both servers share a process), that is fine too.
    if let Err(e) = child.wait() {
        log::debug!("waiting for {command:?}: {e}");
    }
    let (stdout, stdout_cut) = stdout?;
    let (stderr, stderr_cut) = stderr?;
    Ok(CommandOutput {
        stdout,
        stderr,
        truncated: stdout_cut || stderr_cut,
    })
}

/// Reads `source` to its end, keeping the first `cap` bytes. Returns them and whether anything
/// was thrown away. Reading on past the cap (rather than stopping) lets the command finish
/// instead of blocking forever on a full pipe.
fn read_capped(mut source: impl Read, cap: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut truncated = false;
    loop {
        let n = match source.read(&mut chunk) {
            Ok(0) => return Ok((kept, truncated)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = cap - kept.len();
        kept.extend_from_slice(&chunk[..n.min(room)]);
        truncated |= n > room;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_keeps_the_first_bytes_and_reads_to_the_end() {
        let input = vec![7u8; 20_000];
        let (kept, truncated) = read_capped(&input[..], 10_000).unwrap();
        assert_eq!(kept.len(), 10_000);
        assert!(truncated);
        let (kept, truncated) = read_capped(&input[..], 20_000).unwrap();
        assert_eq!(kept, input);
        assert!(!truncated);
    }

    #[cfg(unix)]
    #[test]
    fn both_streams_are_collected_separately() {
        let out = run("echo out; echo err >&2", Path::new(".")).unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(!out.truncated);
    }

    #[cfg(unix)]
    #[test]
    fn a_command_starting_with_a_dash_is_a_command_as_in_the_framed_server() {
        // Without `--`, `sh -c "-n; echo ran"` reads "-n; echo ran" as options and fails.
        let out = run("-n 2>/dev/null; echo ran", Path::new(".")).unwrap();
        assert_eq!(
            out.stdout,
            b"ran\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_command_filling_stderr_first_does_not_deadlock() {
        // 200 KiB to stderr before any stdout: more than a pipe buffer holds.
        let out = run("head -c 204800 /dev/zero >&2; echo done", Path::new(".")).unwrap();
        assert_eq!(out.stderr.len(), 204_800);
        assert_eq!(out.stdout, b"done\n");
    }

    #[test]
    fn a_nul_byte_in_the_command_is_an_error_not_a_panic() {
        assert!(run("echo a\0b", Path::new(".")).is_err());
    }
}
