//! Logging refused connections without letting a flood of them flood the log.
//!
//! A client refused at the connection or handshake limit costs the server one `accept`, one
//! small write and one close. A log line for each would cost more than that, and anyone who
//! can reach the port can cause thousands of refusals a second without authenticating. So the
//! first refusal is logged at once, and later ones at most once per interval, each logged line
//! saying how many went unlogged before it; refusals still unlogged when a flood ends are
//! counted in a line of their own once the interval is over (the event loop wakes for it).

use std::time::{Duration, Instant};

/// At most one refusal line per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// When the last refusal was logged, and how many since were not.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// A refusal at `now`: `Some(n)` if it is to be logged, `n` refusals having gone unlogged
    /// before it; `None` if it is only counted.
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(last) if now.saturating_duration_since(last) < REFUSAL_LOG_INTERVAL => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

impl RefusalLog {
    /// When refusals not yet logged are due to be counted in a line of their own.
    pub fn next_count_due(&self) -> Option<Instant> {
        match self.last_logged {
            Some(last) if self.unlogged > 0 => Some(last + REFUSAL_LOG_INTERVAL),
            _ => None,
        }
    }

    /// At `now`: how many refusals went unlogged, if they are due to be counted (and some
    /// are); they count as logged from then on.
    pub fn count_due(&mut self, now: Instant) -> Option<u64> {
        let due = self.next_count_due().is_some_and(|at| at <= now);
        due.then(|| {
            self.last_logged = Some(now);
            std::mem::take(&mut self.unlogged)
        })
    }

    /// The refusals not logged yet, whether due or not (for the end of the server's run).
    pub fn take_unlogged(&mut self) -> u64 {
        std::mem::take(&mut self.unlogged)
    }
}

/// What a logged refusal line adds about the unlogged ones before it.
pub fn unlogged_note(unlogged: u64) -> String {
    match unlogged {
        0 => String::new(),
        n => format!(" ({n} more refused before this, not logged)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_logged_then_one_per_interval_with_a_count() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.refused(start), Some(0));
        for ms in 1..=999 {
            assert_eq!(log.refused(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.refused(start + REFUSAL_LOG_INTERVAL), Some(999));
        assert_eq!(log.refused(start + 3 * REFUSAL_LOG_INTERVAL), Some(0));
        // The end of a flood: counted once the interval is over, and only then.
        assert_eq!(log.next_count_due(), None);
        let flood = start + 4 * REFUSAL_LOG_INTERVAL;
        assert_eq!(log.refused(flood), Some(0));
        assert_eq!(log.refused(flood + Duration::from_millis(10)), None);
        assert_eq!(log.refused(flood + Duration::from_millis(20)), None);
        assert_eq!(log.next_count_due(), Some(flood + REFUSAL_LOG_INTERVAL));
        assert_eq!(log.count_due(flood + Duration::from_millis(999)), None);
        assert_eq!(log.count_due(flood + REFUSAL_LOG_INTERVAL), Some(2));
        assert_eq!(log.next_count_due(), None);
        assert_eq!(log.count_due(flood + 5 * REFUSAL_LOG_INTERVAL), None);
        assert_eq!(unlogged_note(0), "");
        assert_eq!(
            unlogged_note(999),
            " (999 more refused before this, not logged)"
        );
    }

    #[test]
    fn refusals_still_unlogged_at_the_end_are_all_taken_once() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.take_unlogged(), 0);
        assert_eq!(log.refused(start), Some(0));
        assert_eq!(log.refused(start + Duration::from_millis(1)), None);
        assert_eq!(log.refused(start + Duration::from_millis(2)), None);
        assert_eq!(log.take_unlogged(), 2);
        // Taken: not counted again, neither at the end nor a second later.
        assert_eq!(log.take_unlogged(), 0);
        assert_eq!(log.next_count_due(), None);
        assert_eq!(log.count_due(start + REFUSAL_LOG_INTERVAL), None);
    }
}
