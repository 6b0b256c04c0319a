//! The operator-wide generation guard: at most `max_in_flight` generations running at once (the
//! account runs two; more would only queue remotely while looking "started" here) and at most
//! `per_hour` new ones in any hour. Beyond either, objects wait with a reason; nothing fails.
//! Objects refused a slot queue in arrival order, and `take_woken` names those to look at again
//! when slots free up, so a waiting object need not poll the API until its turn.
//! Plain data with the time passed in; the caller shares it behind a mutex.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use jiff::Timestamp;

#[derive(Debug, Clone)]
pub struct GenerationGuard {
    max_in_flight: usize,
    per_hour: Option<usize>,
    in_flight: BTreeSet<String>,
    started: VecDeque<Timestamp>,
    /// Objects refused a slot, oldest first.
    waiting: VecDeque<String>,
}

/// Why a generation has to wait, and for how long at most before asking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
    pub retry_after: Duration,
}

const HOUR: Duration = Duration::from_secs(3600);

impl GenerationGuard {
    /// `max_in_flight` 0 means no limit.
    pub fn new(max_in_flight: usize, per_hour: Option<usize>) -> Self {
        GenerationGuard {
            max_in_flight,
            per_hour,
            in_flight: BTreeSet::new(),
            started: VecDeque::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Ask to start a generation for `key` (namespace/name). On success the slot is held until
    /// `observe` sees the remote finish or `forget` is called. Refused for want of a slot, the
    /// object joins the queue and is named by `take_woken` when its turn may have come;
    /// `retry` is how long it waits at most meanwhile.
    pub fn try_start(&mut self, key: &str, now: Timestamp, retry: Duration) -> Result<(), Refusal> {
        self.expire(now);
        let already_holding = self.in_flight.contains(key);
        if !already_holding && self.max_in_flight > 0 && self.in_flight.len() >= self.max_in_flight
        {
            if !self.waiting.iter().any(|k| k == key) {
                self.waiting.push_back(key.to_string());
            }
            // Nothing in the message that changes while it waits: each change is a status write.
            return Err(Refusal {
                reason: "WaitingForGenerationSlot",
                message: format!(
                    "the limit of {} generations at once is reached (--max-concurrent-generations); this one starts when a slot frees, in arrival order",
                    self.max_in_flight
                ),
                retry_after: retry,
            });
        }
        if let Some(limit) = self.per_hour {
            if self.started.len() >= limit {
                let oldest = self.started.front().copied().unwrap_or(now);
                let free_at = Duration::try_from(now.duration_since(oldest))
                    .map_or(HOUR, |age| HOUR.saturating_sub(age));
                return Err(Refusal {
                    reason: "GenerationBudgetExhausted",
                    message: format!(
                        "{limit} generations were started in the last hour (--generations-per-hour); the next may start in {}s",
                        free_at.as_secs()
                    ),
                    retry_after: free_at.max(Duration::from_secs(1)),
                });
            }
        }
        self.waiting.retain(|k| k != key);
        self.in_flight.insert(key.to_string());
        self.started.push_back(now);
        Ok(())
    }

    /// Give back a slot taken by `try_start` whose call was refused by the API (nothing runs).
    pub fn cancel(&mut self, key: &str) {
        if self.in_flight.remove(key) {
            self.started.pop_back();
        }
    }

    /// Track what the remote reports: a running generation holds a slot (also one started before
    /// a restart), a finished one frees it.
    pub fn observe(&mut self, key: &str, generating: bool) {
        if generating {
            self.in_flight.insert(key.to_string());
        } else {
            self.in_flight.remove(key);
        }
    }

    /// The object is gone or suspended.
    pub fn forget(&mut self, key: &str) {
        self.in_flight.remove(key);
        self.waiting.retain(|k| k != key);
    }

    /// The waiting objects that free slots could serve now, oldest first; they leave the queue
    /// (and rejoin it at the back if refused again).
    pub fn take_woken(&mut self) -> Vec<String> {
        let free = match self.max_in_flight {
            0 => self.waiting.len(),
            max => max.saturating_sub(self.in_flight.len()),
        };
        let n = free.min(self.waiting.len());
        self.waiting.drain(..n).collect()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Objects queued for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some(first) = self.started.front() {
            let age = Duration::try_from(now.duration_since(*first)).unwrap_or(Duration::ZERO);
            if age >= HOUR {
                self.started.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    const POLL: Duration = Duration::from_secs(2);

    #[test]
    fn concurrency_limit_holds_until_a_generation_finishes() {
        let mut g = GenerationGuard::new(2, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        assert!(g.try_start("b", t(0), POLL).is_ok());
        let refused = g.try_start("c", t(0), POLL).unwrap_err();
        assert_eq!(refused.reason, "WaitingForGenerationSlot");
        assert_eq!(refused.retry_after, POLL);
        // A resend for an object already holding a slot is not a new generation.
        assert!(g.try_start("a", t(1), POLL).is_ok());
        g.observe("a", false);
        assert!(g.try_start("c", t(2), POLL).is_ok());
        assert_eq!(g.in_flight(), 2);
    }

    #[test]
    fn waiters_are_woken_in_arrival_order_as_slots_free() {
        let mut g = GenerationGuard::new(1, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        for key in ["b", "c", "b"] {
            assert!(g.try_start(key, t(0), POLL).is_err());
        }
        assert!(g.take_woken().is_empty(), "no slot free yet");
        g.observe("a", false);
        assert_eq!(
            g.take_woken(),
            vec!["b".to_string()],
            "one slot: the oldest waiter"
        );
        assert!(g.try_start("b", t(1), POLL).is_ok());
        g.forget("c");
        g.observe("b", false);
        assert!(g.take_woken().is_empty(), "a forgotten waiter is not woken");
    }

    #[test]
    fn zero_means_unlimited() {
        let mut g = GenerationGuard::new(0, None);
        for i in 0..100 {
            assert!(g.try_start(&format!("o{i}"), t(0), POLL).is_ok());
        }
    }

    #[test]
    fn hourly_budget_refuses_until_the_oldest_start_is_an_hour_old() {
        let mut g = GenerationGuard::new(0, Some(2));
        assert!(g.try_start("a", t(0), POLL).is_ok());
        assert!(g.try_start("b", t(600), POLL).is_ok());
        let refused = g.try_start("c", t(1200), POLL).unwrap_err();
        assert_eq!(refused.reason, "GenerationBudgetExhausted");
        assert_eq!(refused.retry_after, Duration::from_secs(2400));
        assert!(g.try_start("c", t(3600), POLL).is_ok());
    }

    #[test]
    fn cancelled_start_returns_slot_and_budget() {
        let mut g = GenerationGuard::new(1, Some(1));
        assert!(g.try_start("a", t(0), POLL).is_ok());
        g.cancel("a");
        assert!(g.try_start("b", t(1), POLL).is_ok());
    }

    #[test]
    fn remote_generations_seen_after_restart_hold_slots() {
        let mut g = GenerationGuard::new(2, None);
        g.observe("a", true);
        g.observe("b", true);
        assert!(g.try_start("c", t(0), POLL).is_err());
        g.forget("b");
        assert!(g.try_start("c", t(0), POLL).is_ok());
    }
}
