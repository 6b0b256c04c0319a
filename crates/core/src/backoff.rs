//! Exponential backoff, said once: the client's retries of idempotent calls, the requeue of an
//! object after a transient error, and the controller's retry of an unexpected failure all
//! double from a base up to a cap. Jitter (random) is added by the operator crate.

use std::time::Duration;

/// The wait before the `n`-th retry (0-based): `base` doubled `n` times, at most `max`.
/// Saturating, so no count overflows.
pub fn exponential(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(n.min(31))).min(max)
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
}
