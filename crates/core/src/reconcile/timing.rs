//! When to look at a running generation: at the moment it is expected to end, so that its
//! generation slot is handed on as soon as it frees, not when a backoff happens to come round.
//! `GenerationTimer` keeps a running estimate of how long one generation takes on an account,
//! learnt from what the polls saw. Plain data with the durations passed in.

use std::time::Duration;

/// The estimate of one account's generation time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationTimer {
    estimate: Option<Duration>,
    /// Polls in a row that found the job already done: the longer the run, the bigger the step
    /// down, so an estimate learnt from one late poll does not linger for hundreds of jobs.
    done_in_a_row: u32,
}

/// The first steps down are a 512th of the estimate; after `STEADY_HITS` hits in a row each
/// step doubles, up to an eighth.
const STEADY_HITS: u32 = 3;
const FIRST_STEP_SHIFT: u32 = 9;
const LAST_STEP_SHIFT: u32 = 3;

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
    /// estimate just above that lower bound; a poll that found it done lowers the estimate, to
    /// probe for a shorter one: by a 512th at first, then, after a few such polls in a row, by
    /// twice as much each time (at most an eighth). The estimate thus hovers just above the
    /// generation time (most polls find the job just finished), and one learnt from a poll that
    /// came late (a busy start) falls to the truth within a few dozen jobs.
    pub fn finished(&mut self, elapsed: Duration, seen_running: Option<Duration>) {
        let next = match (self.estimate, seen_running) {
            // The first: between the last poll that saw it running and the one that saw it done.
            (None, Some(lower)) => lower + elapsed.saturating_sub(lower) / 2,
            (None, None) => elapsed,
            (Some(_), Some(lower)) => {
                self.done_in_a_row = 0;
                lower.saturating_add(lower / 50).min(elapsed).max(lower)
            }
            (Some(estimate), None) => {
                self.done_in_a_row = self.done_in_a_row.saturating_add(1);
                let doublings = self.done_in_a_row.saturating_sub(STEADY_HITS);
                let shift = FIRST_STEP_SHIFT
                    .saturating_sub(doublings)
                    .max(LAST_STEP_SHIFT);
                estimate
                    .saturating_sub(estimate / (1 << shift))
                    .min(elapsed)
            }
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
    fn polls_that_find_the_job_done_lower_the_estimate_faster_the_longer_they_run() {
        let mut t = GenerationTimer::default();
        t.finished(ms(4096), None);
        let mut divisors = Vec::new();
        for _ in 0..10 {
            let before = t.expected().unwrap();
            t.finished(ms(5000), None);
            let step = before - t.expected().unwrap();
            divisors.push((before.as_secs_f64() / step.as_secs_f64()).round() as u32);
        }
        // A 512th three times, then doubling up to an eighth.
        assert_eq!(divisors, [512, 512, 512, 256, 128, 64, 32, 16, 8, 8]);
        // A poll that came too early starts the slow steps again.
        let before = t.expected().unwrap();
        t.finished(before + ms(10), Some(before));
        let after_miss = t.expected().unwrap();
        t.finished(ms(5000), None);
        assert_eq!(after_miss - t.expected().unwrap(), after_miss / 512);
        // A job seen done sooner than expected is an upper bound at once.
        t.finished(ms(100), None);
        assert_eq!(t.expected(), Some(ms(100)));
    }

    /// One late first poll (a busy start) taught a generation time 15 times the truth: the
    /// estimate is back within 10% of the truth after a few dozen jobs, not hundreds.
    #[test]
    fn an_estimate_learnt_from_a_late_poll_falls_to_the_truth_quickly() {
        let truth = ms(200);
        let mut t = GenerationTimer::default();
        t.finished(ms(3000), None);
        let mut jobs = 0;
        while t.expected().unwrap() > truth + truth / 10 {
            let first = t.expected().unwrap();
            t.finished(first, None);
            jobs += 1;
            assert!(jobs < 40, "still at {:?} after {jobs} jobs", t.expected());
        }
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
