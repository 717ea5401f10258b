//! `rcmd run --stats`: how much a command moved, counted as it passes through the client and
//! reported on stderr at the end, as `ssh -v` reports "Transferred: sent …, received …" and
//! `rsync --stats` its totals.
//!
//! The counts are of bytes handed on: output the sink accepted, stdin read and forwarded. With
//! stdout on /dev/null they are the only record of how much arrived, which is what lets a
//! throughput measurement check its byte count without a `| wc -c` that would cost a pipe.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::OutputSink;

/// An [`OutputSink`] that counts the bytes each stream passed on to the sink it wraps.
pub struct CountingSink<'a> {
    inner: &'a mut dyn OutputSink,
    stdout_bytes: u64,
    stderr_bytes: u64,
}

impl<'a> CountingSink<'a> {
    pub fn new(inner: &'a mut dyn OutputSink) -> CountingSink<'a> {
        CountingSink {
            inner,
            stdout_bytes: 0,
            stderr_bytes: 0,
        }
    }

    /// Bytes of stdout and of stderr the wrapped sink accepted so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.stdout_bytes, self.stderr_bytes)
    }
}

impl OutputSink for CountingSink<'_> {
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        // Counted only once written: a failed write is not output the user got.
        self.inner.stdout(bytes)?;
        self.stdout_bytes += bytes.len() as u64;
        Ok(())
    }

    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.stderr(bytes)?;
        self.stderr_bytes += bytes.len() as u64;
        Ok(())
    }

    fn command_ended(&mut self) -> io::Result<()> {
        self.inner.command_ended()
    }
}

/// A reader that counts what was read through it. Stdin is forwarded from a thread of its
/// own, so the count is shared through an atomic the caller keeps a handle to.
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> CountingReader<R> {
    /// Wraps `inner`; returns the reader and the handle its count can be read from.
    pub fn new(inner: R) -> (CountingReader<R>, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let reader = CountingReader {
            inner,
            count: count.clone(),
        };
        (reader, count)
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What one command moved, and over how long: the line `--stats` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes of the command's stdout written to ours.
    pub stdout_bytes: u64,
    /// Bytes of the command's stderr written to ours.
    pub stderr_bytes: u64,
    /// Bytes of our stdin read and forwarded to the command.
    pub stdin_bytes: u64,
    /// From sending the command to its end (its exit status, or the error that ended it).
    pub elapsed: Duration,
}

impl fmt::Display for TransferReport {
    /// `received 1000000000 bytes of stdout and 0 of stderr, sent 0 of stdin, in 0.952 s
    /// (1.05 GB/s)`: exact byte counts for scripts, then for people the rate of everything
    /// received, and when stdin was forwarded the rate sent too (`(received 1.05 GB/s, sent
    /// 52.00 MB/s)`), as ssh's "Bytes per second: sent …, received …".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let received = Rate::of(self.stdout_bytes + self.stderr_bytes, self.elapsed);
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "received {} bytes of stdout and {} of stderr, sent {} of stdin, in {secs:.3} s ",
            self.stdout_bytes, self.stderr_bytes, self.stdin_bytes,
        )?;
        if self.stdin_bytes == 0 {
            write!(f, "({received})")
        } else {
            let sent = Rate::of(self.stdin_bytes, self.elapsed);
            write!(f, "(received {received}, sent {sent})")
        }
    }
}

/// Bytes per second in decimal units (the way link speeds and `dd` are quoted).
struct Rate(f64);

impl Rate {
    fn of(bytes: u64, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64();
        // Nothing measurable: say 0 rather than divide by zero into "inf".
        Rate(if secs > 0.0 { bytes as f64 / secs } else { 0.0 })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(f64, &str); 3] = [(1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")];
        match UNITS.iter().find(|(scale, _)| self.0 >= *scale) {
            Some((scale, unit)) => write!(f, "{:.2} {unit}", self.0 / scale),
            None => write!(f, "{:.0} B/s", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is given; refuses stderr after `stderr_room` bytes, as a closed pipe would.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        err: Vec<u8>,
        stderr_room: usize,
    }

    impl OutputSink for Recorder {
        fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.out.extend_from_slice(bytes);
            Ok(())
        }

        fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
            if self.err.len() + bytes.len() > self.stderr_room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.err.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn counts_what_each_stream_passed_on_and_not_what_failed() {
        let mut recorder = Recorder {
            stderr_room: 4,
            ..Recorder::default()
        };
        let mut sink = CountingSink::new(&mut recorder);
        sink.stdout(b"hello ").unwrap();
        sink.stdout(b"world\n").unwrap();
        sink.stderr(b"oops").unwrap();
        assert!(sink.stderr(b"more").is_err());
        assert_eq!(sink.counts(), (12, 4));
        assert_eq!(recorder.out, b"hello world\n");
        assert_eq!(recorder.err, b"oops");
    }

    #[test]
    fn the_reader_count_is_seen_through_its_handle() {
        let (mut reader, count) = CountingReader::new(&b"twelve bytes"[..]);
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"twelve bytes");
        assert_eq!(count.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn the_report_gives_exact_counts_then_a_rate() {
        let report = TransferReport {
            stdout_bytes: 1_000_000_000,
            stderr_bytes: 0,
            stdin_bytes: 0,
            elapsed: Duration::from_millis(952),
        };
        assert_eq!(
            report.to_string(),
            "received 1000000000 bytes of stdout and 0 of stderr, sent 0 of stdin, in 0.952 s (1.05 GB/s)"
        );
        // An upload: the rate sent too, not only the (zero) rate received.
        let report = TransferReport {
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdin_bytes: 50_000_000,
            elapsed: Duration::from_millis(125),
        };
        assert_eq!(
            report.to_string(),
            "received 0 bytes of stdout and 0 of stderr, sent 50000000 of stdin, in 0.125 s (received 0 B/s, sent 400.00 MB/s)"
        );
    }

    #[test]
    fn rates_take_the_largest_unit_that_fits() {
        let second = Duration::from_secs(1);
        assert_eq!(Rate::of(2_500_000_000, second).to_string(), "2.50 GB/s");
        assert_eq!(Rate::of(12_340_000, second).to_string(), "12.34 MB/s");
        assert_eq!(Rate::of(1_500, second).to_string(), "1.50 kB/s");
        assert_eq!(Rate::of(999, second).to_string(), "999 B/s");
        assert_eq!(Rate::of(5, Duration::ZERO).to_string(), "0 B/s");
    }

    #[test]
    fn the_rate_received_counts_stderr_as_well_as_stdout() {
        let report = TransferReport {
            stdout_bytes: 600_000,
            stderr_bytes: 400_000,
            stdin_bytes: 0,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(
            report.to_string(),
            "received 600000 bytes of stdout and 400000 of stderr, sent 0 of stdin, in 1.000 s (1.00 MB/s)"
        );
    }
}
