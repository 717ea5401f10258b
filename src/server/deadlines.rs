//! Timers for the event loop. `mio` has none: we keep every deadline in a min-heap and pass the
//! time until the nearest one as the poll timeout.
//!
//! Entries are never removed early; each is checked against its connection's state when it
//! fires. An `Idle` entry whose connection was active since finds that it is not yet due, and
//! schedules the new time then; an entry whose reason has passed (a `Handshake` entry of a
//! connection that authenticated, a `Command(serial)` entry of a command that finished) is
//! ignored. That keeps scheduling O(log n) and cancellation free. The entries no one needs any
//! more are swept out in bulk ([`Deadlines::sweep`]): those of closed connections (left to
//! fire, the idle checks of every connection of the last hour would pile up on a busy server)
//! and the timeouts of commands that have finished (a connection running many commands with a
//! long timeout would pile up one each).

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

/// Entries below which the heap is never swept.
const MIN_SWEEP: usize = 1024;

/// A min-heap of `(when, connection, kind)`.
#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, ConnId, DeadlineKind)>>,
    /// Sweep once the heap holds this many entries: twice what the last sweep kept.
    next_sweep: usize,
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

    /// How many deadlines are waiting, including those of connections that have closed.
    pub fn waiting(&self) -> usize {
        self.heap.len()
    }

    /// Drops the deadlines for which `wanted` does not hold, and the memory they took, once the
    /// heap has grown to twice what the last sweep kept: the O(n) sweep then costs O(1) per
    /// entry, however many deadlines are wanted. Cheap to call every turn of the loop.
    pub fn sweep(&mut self, wanted: impl Fn(ConnId, DeadlineKind) -> bool) {
        if self.heap.len() < self.next_sweep.max(MIN_SWEEP) {
            return;
        }
        self.heap
            .retain(|Reverse((_, conn, kind))| wanted(*conn, *kind));
        self.heap.shrink_to(2 * self.heap.len());
        self.next_sweep = 2 * self.heap.len();
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

    #[test]
    fn timeouts_of_finished_commands_are_swept_out_too() {
        // One connection running many commands with a long timeout: one deadline each.
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        let commands = 2 * MIN_SWEEP as u64;
        for serial in 1..=commands {
            let when = now + Duration::from_secs(3600);
            deadlines.schedule(when, 1, DeadlineKind::Command(serial));
        }
        deadlines.schedule(now, 1, DeadlineKind::Idle);
        let running = commands;
        deadlines.sweep(|_, kind| match kind {
            DeadlineKind::Command(serial) => serial == running,
            _ => true,
        });
        assert_eq!(deadlines.waiting(), 2);
    }

    #[test]
    fn deadlines_of_closed_connections_are_swept_out_in_bulk() {
        let now = Instant::now();
        let mut deadlines = Deadlines::default();
        let n = 2 * MIN_SWEEP as u64;
        for conn in 1..=n {
            deadlines.schedule(
                now + Duration::from_secs(n - conn),
                conn,
                DeadlineKind::Idle,
            );
        }
        let live = |conn: ConnId, _| conn.is_multiple_of(100);
        deadlines.sweep(live);
        assert_eq!(deadlines.waiting(), (n / 100) as usize);
        // Below the threshold nothing is swept: a sweep per closed connection would be O(n^2).
        deadlines.schedule(now, 1, DeadlineKind::Idle);
        deadlines.sweep(live);
        assert_eq!(deadlines.waiting(), (n / 100) as usize + 1);
        let later = now + Duration::from_secs(n + 1);
        let order: Vec<_> = std::iter::from_fn(|| deadlines.pop_due(later)).collect();
        let mut expected = vec![(1, DeadlineKind::Idle)];
        expected.extend((1..=n / 100).rev().map(|k| (k * 100, DeadlineKind::Idle)));
        assert_eq!(order, expected, "still in time order");
    }
}
