//! Deciding when to hand memory back to the system after a burst of connections.
//!
//! The allocator keeps freed memory for reuse. After hundreds of clients streaming at once
//! (each may hold 256 KiB of queued output) that was 140 MiB a server with no clients kept for
//! ever; glibc's `malloc_trim` brought it back to 6 MiB. A trim walks the whole heap (some
//! milliseconds for a large one), so it must not run per connection. This module holds only the
//! policy, as a small state machine the event loop feeds the number of open connections once per
//! turn, so that the policy can be tested without a heap to measure.
//!
//! The rule: once the open connections fall to a quarter of their peak (a peak of at least
//! [`MIN_PEAK`]), trim, and take what is still open as the new peak. If connections were still
//! open at that trim, trim again each time they fall to a quarter of that, down to none: a
//! server that always keeps one connection (a monitor) never reaches 0.

/// Bursts smaller than this do not leave enough behind to be worth a trim.
pub const MIN_PEAK: usize = 64;

/// The peak since the last trim, and whether the burst's remainder is still being followed.
#[derive(Debug, Default)]
pub struct BurstTrim {
    /// The most connections open at once since freed memory was last handed back.
    peak: usize,
    /// Memory was handed back while connections of the burst were still open: do it again as
    /// they fall to a quarter of that.
    follow_the_rest: bool,
}

impl BurstTrim {
    /// `open` connections are open now: whether to hand freed memory back at this point.
    pub fn should_trim(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        let fell_to_a_quarter = open * 4 <= self.peak;
        let burst_mostly_gone = self.peak >= MIN_PEAK && fell_to_a_quarter;
        let rest_mostly_gone = self.follow_the_rest && fell_to_a_quarter;
        if burst_mostly_gone || rest_mostly_gone {
            self.peak = open;
            self.follow_the_rest = open > 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `counts` turn by turn and returns the counts at which a trim was asked for.
    fn trims(counts: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut policy = BurstTrim::default();
        counts
            .into_iter()
            .filter(|&open| policy.should_trim(open))
            .collect()
    }

    #[test]
    fn a_server_that_never_had_many_connections_never_trims() {
        assert_eq!(
            trims([0, 1, 5, MIN_PEAK - 1, 10, 0, 0, 3, 0]),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn a_burst_is_trimmed_once_it_falls_to_a_quarter_of_its_peak() {
        // Exactly a quarter trims; one more than a quarter does not.
        assert_eq!(trims([100, 80, 26, 25]), vec![25]);
        assert_eq!(trims([MIN_PEAK, MIN_PEAK / 4 + 1]), Vec::<usize>::new());
        assert_eq!(trims([MIN_PEAK, MIN_PEAK / 4]), vec![MIN_PEAK / 4]);
    }

    #[test]
    fn a_burst_that_ends_all_at_once_is_trimmed_once() {
        assert_eq!(trims([200, 0, 0, 0]), vec![0]);
    }

    #[test]
    fn the_rest_of_a_burst_is_trimmed_again_at_each_quarter_down_to_none() {
        // 400 -> trim at 100 -> again at 25 -> at 6 -> at 1 -> at 0, then no more.
        assert_eq!(
            trims([400, 100, 30, 25, 7, 6, 2, 1, 1, 0, 0]),
            vec![100, 25, 6, 1, 0]
        );
    }

    #[test]
    fn a_connection_that_stays_for_ever_does_not_make_it_trim_again_and_again() {
        // One monitor stays: a trim at 1, then none while it stays alone.
        assert_eq!(trims([100, 1, 1, 1, 1]), vec![1]);
    }

    #[test]
    fn a_new_burst_after_a_trim_is_measured_from_what_was_left() {
        // Trimmed at 0; the next burst must reach MIN_PEAK again before it counts.
        assert_eq!(trims([100, 0, 20, 5, 0]), vec![0]);
        assert_eq!(trims([100, 0, 80, 20]), vec![0, 20]);
    }

    #[test]
    fn a_small_rise_between_trims_of_the_rest_raises_the_peak_followed() {
        // After the trim at 20 the rest is followed from 20; a rise to 40 makes the next
        // quarter 10, not 5.
        assert_eq!(trims([80, 20, 40, 11, 10]), vec![20, 10]);
    }
}
