//! Jitter for every wait (the exponential part is the core's): objects created together do not
//! come back together.

use std::time::Duration;

use rand::Rng;

pub use dynamics_core::backoff::exponential;

use crate::api::MAX_REMOTE_WAIT;

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
