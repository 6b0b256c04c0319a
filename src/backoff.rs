//! Backoff and jitter, said once: the client's retries of idempotent calls, the requeue of an
//! object after a transient error, and the controller's retry of an unexpected failure all
//! double from a base up to a cap, and every wait is spread by jitter so that objects created
//! together do not come back together.

use std::time::Duration;

use rand::Rng;

use crate::api::MAX_REMOTE_WAIT;

/// The wait before the `n`-th retry (0-based): `base` doubled `n` times, at most `max`.
/// Pure, so the reconcile core uses it too; saturating, so no count overflows.
pub fn exponential(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(n.min(31))).min(max)
}

/// `wait` plus up to 10%, capped first at the longest wait the API may name (an hour), so no
/// wait overflows or panics.
pub fn jitter(wait: Duration) -> Duration {
    let wait = wait.min(MAX_REMOTE_WAIT);
    let extra = rand::rng().random_range(0.0..0.1);
    wait.saturating_add(wait.mul_f64(extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap_without_overflow() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let waits: Vec<u64> = (0..10)
            .map(|n| exponential(base, max, n).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(exponential(base, max, u32::MAX), max);
        assert_eq!(exponential(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn jitter_adds_at_most_a_tenth_and_caps_huge_waits() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(10) && j < Duration::from_secs(11),
                "{j:?}"
            );
        }
        assert!(jitter(Duration::MAX) <= MAX_REMOTE_WAIT.mul_f64(1.1));
    }
}
