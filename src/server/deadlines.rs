//! Timers for the event loop. `mio` has none: we keep every deadline in a min-heap and pass the
//! time until the nearest one as the poll timeout.
//!
//! Entries are never removed early. A connection whose deadline moved (it became active, its
//! command finished) just finds, when the old entry fires, that it is not yet due, and schedules
//! the new time then. That keeps scheduling O(log n) and cancellation free.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::connection::ConnId;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeadlineKind {
    /// The connection must finish the handshake by now.
    Handshake,
    /// The authenticated connection must have shown activity since the last check.
    Idle,
    /// The connection's command with this serial number (counted by the server, not the
    /// client's id, which a client could reuse) must have finished by now.
    Command(u64),
    /// A closing connection gets this long to flush its last frames.
    Closing,
}

/// A min-heap of `(when, connection, kind)`.
#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, ConnId, DeadlineKind)>>,
}

impl Deadlines {
    pub fn schedule(&mut self, when: Instant, conn: ConnId, kind: DeadlineKind) {
        self.heap.push(Reverse((when, conn, kind)));
    }

    /// Schedules `delay` after `now`. A delay so long that the time cannot be represented (a
    /// client asking for a timeout of 2^64 seconds) is a deadline that never comes.
    pub fn schedule_after(
        &mut self,
        now: Instant,
        delay: Duration,
        conn: ConnId,
        kind: DeadlineKind,
    ) {
        if let Some(when) = now.checked_add(delay) {
            self.schedule(when, conn, kind);
        }
    }

    /// How long the poll may sleep before the nearest deadline; `None` if there is none.
    pub fn time_until_next(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((when, _, _))| when.saturating_duration_since(now))
    }

    /// Removes and returns the next deadline that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(ConnId, DeadlineKind)> {
        match self.heap.peek() {
            Some(Reverse((when, _, _))) if *when <= now => {
                self.heap.pop().map(|Reverse((_, conn, kind))| (conn, kind))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order_only_when_due() {
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        deadlines.schedule(now + Duration::from_secs(2), 1, DeadlineKind::Idle);
        deadlines.schedule(now + Duration::from_secs(1), 2, DeadlineKind::Handshake);
        assert_eq!(deadlines.time_until_next(now), Some(Duration::from_secs(1)));
        assert_eq!(deadlines.pop_due(now), None);
        let later = now + Duration::from_secs(3);
        assert_eq!(deadlines.pop_due(later), Some((2, DeadlineKind::Handshake)));
        assert_eq!(deadlines.pop_due(later), Some((1, DeadlineKind::Idle)));
        assert_eq!(deadlines.pop_due(later), None);
    }
}
