//! When to look at a running generation: at the moment it is expected to end, so that its
//! generation slot is handed on as soon as it frees, not when a backoff happens to come round.
//! `GenerationTimer` keeps a running estimate of how long one generation takes on an account,
//! learnt from what the polls saw. Plain data with the durations passed in.

use std::time::Duration;

/// The estimate of one account's generation time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationTimer {
    estimate: Option<Duration>,
}

/// A running generation as `plan` sees it: how long ago its call was accepted, and how long
/// one is expected to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationTiming {
    pub elapsed: Duration,
    pub expected: Duration,
}

impl GenerationTimer {
    pub fn expected(&self) -> Option<Duration> {
        self.estimate
    }

    /// A generation was seen finished `elapsed` after its call was accepted; `seen_running` is
    /// the latest time a poll still saw it running, if one did.
    ///
    /// The true time lies between the two. A poll that came too early (`seen_running`) raises the
    /// estimate just above that lower bound; a poll that found it done lowers the estimate a
    /// little (0.2%), to probe for a shorter one. The estimate thus hovers just above the generation
    /// time: most polls find the job just finished, few find it still running.
    pub fn finished(&mut self, elapsed: Duration, seen_running: Option<Duration>) {
        let next = match (self.estimate, seen_running) {
            // The first: between the last poll that saw it running and the one that saw it done.
            (None, Some(lower)) => lower + elapsed.saturating_sub(lower) / 2,
            (None, None) => elapsed,
            (Some(_), Some(lower)) => lower.saturating_add(lower / 50).min(elapsed).max(lower),
            (Some(estimate), None) => estimate.saturating_sub(estimate / 500).min(elapsed),
        };
        self.estimate = Some(next.max(Duration::from_millis(1)));
    }
}

impl GenerationTiming {
    /// How long to wait before the next look: until the expected end, or, once that has
    /// passed, a small fraction of a generation; always within the configured poll bounds.
    pub fn next_poll(&self, poll_min: Duration, poll_max: Duration) -> Duration {
        let wait = match self.expected.checked_sub(self.elapsed) {
            Some(left) if !left.is_zero() => left,
            _ => self.expected / 32,
        };
        wait.clamp(poll_min, poll_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_generation_sets_the_estimate() {
        let mut t = GenerationTimer::default();
        assert_eq!(t.expected(), None);
        t.finished(ms(260), Some(ms(150)));
        assert_eq!(
            t.expected(),
            Some(ms(205)),
            "halfway between running and done"
        );
    }

    #[test]
    fn a_poll_that_came_too_early_raises_the_estimate_above_what_it_saw() {
        let mut t = GenerationTimer::default();
        t.finished(ms(200), None);
        t.finished(ms(260), Some(ms(250)));
        assert_eq!(t.expected(), Some(ms(255)));
        // Never above what the finishing poll saw.
        t.finished(ms(301), Some(ms(300)));
        assert_eq!(t.expected(), Some(ms(301)));
    }

    #[test]
    fn polls_that_find_the_job_done_lower_the_estimate_slowly() {
        let mut t = GenerationTimer::default();
        t.finished(ms(400), None);
        t.finished(ms(400), None);
        assert_eq!(t.expected(), Some(ms(400) - ms(400) / 500));
        // A job seen done sooner than expected is an upper bound at once.
        t.finished(ms(100), None);
        assert_eq!(t.expected(), Some(ms(100)));
    }

    /// Against a fixed generation time, the estimate settles just above it: few polls miss.
    #[test]
    fn settles_just_above_a_steady_generation_time() {
        let truth = ms(200);
        let step = ms(10); // the re-poll after a miss
        let mut t = GenerationTimer::default();
        // The first generation, timed by the quarter rule: seen running at 160 ms, done at 280.
        t.finished(ms(280), Some(ms(160)));
        let mut misses = 0;
        let mut late = Duration::ZERO;
        for _ in 0..1000 {
            let first = t.expected().unwrap();
            if first >= truth {
                late += first - truth;
                t.finished(first, None);
            } else {
                misses += 1;
                late += first + step - truth;
                t.finished(first + step, Some(first));
            }
        }
        assert!(misses < 150, "{misses} of 1000 polls came too early");
        assert!(late / 1000 < ms(4), "on average {:?} late", late / 1000);
    }

    #[test]
    fn next_poll_waits_for_the_expected_end_within_bounds() {
        let timing = |elapsed, expected| GenerationTiming { elapsed, expected };
        let (min, max) = (ms(10), ms(30_000));
        assert_eq!(timing(ms(50), ms(200)).next_poll(min, max), ms(150));
        assert_eq!(timing(ms(195), ms(200)).next_poll(min, max), min);
        assert_eq!(timing(ms(250), ms(3200)).next_poll(min, max), ms(2950));
        // Overdue: a thirty-second of a generation.
        assert_eq!(timing(ms(4000), ms(3200)).next_poll(min, max), ms(100));
        // Never beyond the slowest poll.
        assert_eq!(timing(Duration::ZERO, ms(600_000)).next_poll(min, max), max);
    }
}
