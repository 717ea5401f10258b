//! The client's own stdin, stdout and stderr, read and written so that a descriptor left
//! non-blocking by whoever started rcmd is waited for rather than taken for the end.
//!
//! `O_NONBLOCK` belongs to the open file, not to one process's descriptor: every process that
//! shares the file sees it, so a parent (Node.js does this to its pipes, as do some terminal
//! multiplexers and co-process set-ups) can leave rcmd's stdin or stdout non-blocking. A read
//! then fails with "would block" whenever the writer has not caught up yet, and a write whenever
//! the reader is behind. Neither is an error in the data: `cat` and ssh wait until the
//! descriptor is ready and try again, and so does rcmd. (It once took "would block" on stdin for
//! its end: `rcmd run host 'cat > file' < pipe` wrote the first part of the pipe's data to the
//! file and exited 0.)
//!
//! On Windows, where standard handles are never non-blocking, stdin is read as it is.

use std::io::{self, Read};

/// Stdin, for forwarding to a command: a read waits until there is something to read.
pub struct PatientStdin(io::Stdin);

impl PatientStdin {
    pub fn new() -> PatientStdin {
        PatientStdin(io::stdin())
    }
}

impl Default for PatientStdin {
    fn default() -> Self {
        PatientStdin::new()
    }
}

impl Read for PatientStdin {
    #[cfg(unix)]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_until_ready(&self.0, libc::POLLIN)?;
                }
                other => return other,
            }
        }
    }

    #[cfg(not(unix))]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// `write_all`, except that "would block" waits until `out` can take more.
///
/// # Errors
/// The first error other than "would block" or "interrupted".
#[cfg(unix)]
pub fn write_all(
    out: &mut (impl io::Write + std::os::fd::AsFd),
    mut bytes: &[u8],
) -> io::Result<()> {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_until_ready(&*out, libc::POLLOUT)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`), or has hung up or failed (the
/// retried call then reports which).
#[cfg(unix)]
fn wait_until_ready(fd: &impl std::os::fd::AsFd, events: libc::c_short) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut wanted = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid `pollfd` for a descriptor that `fd` keeps open meanwhile.
        if unsafe { libc::poll(&mut wanted, 1, -1) } >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::time::Duration;

    /// A pipe whose write end is non-blocking: (read end, write end).
    fn pipe_with_nonblocking_writer() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `pipe` fills in two new descriptors, which the `File`s then own.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let (reader, writer) = (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]));
            let flags = libc::fcntl(writer.as_raw_fd(), libc::F_GETFL);
            assert_eq!(
                libc::fcntl(writer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK),
                0
            );
            (reader, writer)
        }
    }

    #[test]
    fn a_write_to_a_full_nonblocking_pipe_waits_for_the_reader() {
        let (mut reader, mut writer) = pipe_with_nonblocking_writer();
        // Several times what a pipe holds (64 KiB by default): a plain `write_all` fails with
        // "would block" once the pipe is full.
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let drain = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        write_all(&mut writer, &data).unwrap();
        drop(writer);
        assert!(drain.join().unwrap() == expected, "every byte, in order");
    }

    #[test]
    fn a_write_to_a_pipe_without_a_reader_still_fails() {
        let (reader, mut writer) = pipe_with_nonblocking_writer();
        drop(reader);
        let error = write_all(&mut writer, b"x").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
