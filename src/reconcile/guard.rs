//! The generation guard, one per account: at most `max_in_flight` generations running at once
//! (an account runs two; more would only queue remotely while looking "started" here) and at
//! most `per_hour` new ones in any hour. Beyond either, objects wait with a reason; nothing fails.
//! Objects refused a slot queue in arrival order, and `take_woken` names those to look at again
//! when slots free up, so a waiting object need not poll the API until its turn.
//! `AccountGuards` keeps one guard and one generation timer per account (accounts are told
//! apart by their secret, never stored). Plain data with the time passed in (`at`: monotonic
//! time from any fixed origin); the caller shares it behind a mutex.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;

use super::timing::{GenerationTimer, GenerationTiming};
use crate::api::AccountId;

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
    /// `track` sees the remote finish or `forget` is called. Refused for want of a slot, the
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
    pub fn track(&mut self, key: &str, generating: bool) {
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

/// A guard and a timer per account, and what each object holds.
#[derive(Debug, Clone)]
pub struct AccountGuards {
    max_in_flight: usize,
    per_hour: Option<usize>,
    accounts: HashMap<AccountId, Account>,
    objects: HashMap<String, Held>,
}

#[derive(Debug, Clone)]
struct Account {
    guard: GenerationGuard,
    timer: GenerationTimer,
}

/// The account an object was last seen with, and its running generation, timed.
#[derive(Debug, Clone)]
struct Held {
    account: AccountId,
    /// When its generate call was accepted, while the generation runs.
    accepted_at: Option<Duration>,
    /// How long after that a poll last saw it still running.
    seen_running: Option<Duration>,
}

impl AccountGuards {
    /// The limits hold for each account on its own; `max_in_flight` 0 means no limit.
    pub fn new(max_in_flight: usize, per_hour: Option<usize>) -> Self {
        AccountGuards {
            max_in_flight,
            per_hour,
            accounts: HashMap::new(),
            objects: HashMap::new(),
        }
    }

    /// The account's guard, moving `key` there if it was seen with another account before.
    fn guard(&mut self, account: AccountId, key: &str) -> &mut GenerationGuard {
        match self.objects.get_mut(key) {
            Some(held) if held.account == account => {}
            Some(held) => {
                let previous = std::mem::replace(&mut held.account, account);
                held.accepted_at = None;
                if let Some(old) = self.accounts.get_mut(&previous) {
                    old.guard.forget(key);
                }
            }
            None => {
                self.objects.insert(
                    key.to_string(),
                    Held {
                        account,
                        accepted_at: None,
                        seen_running: None,
                    },
                );
            }
        }
        let (max, per_hour) = (self.max_in_flight, self.per_hour);
        &mut self
            .accounts
            .entry(account)
            .or_insert_with(|| Account {
                guard: GenerationGuard::new(max, per_hour),
                timer: GenerationTimer::default(),
            })
            .guard
    }

    /// `GenerationGuard::try_start` on the object's account.
    pub fn try_start(
        &mut self,
        account: AccountId,
        key: &str,
        now: Timestamp,
        retry: Duration,
    ) -> Result<(), Refusal> {
        self.guard(account, key).try_start(key, now, retry)
    }

    /// The generate call for `key` was refused: its slot and budget go back.
    pub fn cancel(&mut self, key: &str) {
        if let Some(held) = self.objects.get(key) {
            if let Some(account) = self.accounts.get_mut(&held.account) {
                account.guard.cancel(key);
            }
        }
    }

    /// The generate call for `key` was accepted at `at`: its generation is timed from then.
    pub fn accepted(&mut self, key: &str, at: Duration) {
        if let Some(held) = self.objects.get_mut(key) {
            held.accepted_at = Some(at);
            held.seen_running = None;
        }
    }

    /// What a GET at `at` showed: whether the object holds a slot (its job runs, or its call is
    /// not visible yet). A generation seen ending frees its slot at once and teaches the timer.
    pub fn track(&mut self, account: AccountId, key: &str, holding: bool, at: Duration) {
        self.guard(account, key).track(key, holding);
        let Some(held) = self.objects.get_mut(key) else {
            return;
        };
        let Some(accepted_at) = held.accepted_at else {
            return;
        };
        let elapsed = at.saturating_sub(accepted_at);
        if holding {
            held.seen_running = Some(elapsed);
        } else {
            let seen_running = held.seen_running.take();
            held.accepted_at = None;
            if let Some(account) = self.accounts.get_mut(&account) {
                account.timer.finished(elapsed, seen_running);
            }
        }
    }

    /// How far the object's running generation is, if it is timed and its account has an estimate.
    pub fn timing(&self, key: &str, at: Duration) -> Option<GenerationTiming> {
        let held = self.objects.get(key)?;
        let accepted_at = held.accepted_at?;
        let expected = self.accounts.get(&held.account)?.timer.expected()?;
        Some(GenerationTiming {
            elapsed: at.saturating_sub(accepted_at),
            expected,
        })
    }

    /// The object is gone or suspended.
    pub fn forget(&mut self, key: &str) {
        if let Some(held) = self.objects.remove(key) {
            if let Some(account) = self.accounts.get_mut(&held.account) {
                account.guard.forget(key);
            }
        }
    }

    /// `GenerationGuard::take_woken` over every account.
    pub fn take_woken(&mut self) -> Vec<String> {
        let mut woken = Vec::new();
        for account in self.accounts.values_mut() {
            woken.extend(account.guard.take_woken());
        }
        woken
    }

    /// (objects waiting for a slot, slots in use), summed over accounts.
    pub fn load(&self) -> (usize, usize) {
        self.accounts.values().fold((0, 0), |(w, f), a| {
            (w + a.guard.waiting(), f + a.guard.in_flight())
        })
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
        g.track("a", false);
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
        g.track("a", false);
        assert_eq!(
            g.take_woken(),
            vec!["b".to_string()],
            "one slot: the oldest waiter"
        );
        assert!(g.try_start("b", t(1), POLL).is_ok());
        g.forget("c");
        g.track("b", false);
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

    fn account(secret: &str) -> AccountId {
        crate::api::ApiSecret::new(secret).account()
    }

    #[test]
    fn each_account_has_its_own_slots() {
        let (a, b) = (account("secret-a"), account("secret-b"));
        let mut g = AccountGuards::new(2, None);
        assert!(g.try_start(a, "a1", t(0), POLL).is_ok());
        assert!(g.try_start(a, "a2", t(0), POLL).is_ok());
        assert!(g.try_start(a, "a3", t(0), POLL).is_err());
        assert!(g.try_start(b, "b1", t(0), POLL).is_ok());
        assert!(g.try_start(b, "b2", t(0), POLL).is_ok());
        assert_eq!(g.load(), (1, 4));
        // A generation of account b ending wakes nobody of account a.
        g.track(b, "b1", false, Duration::ZERO);
        assert!(g.take_woken().is_empty());
        g.track(a, "a1", false, Duration::ZERO);
        assert_eq!(g.take_woken(), vec!["a3".to_string()]);
    }

    #[test]
    fn an_object_whose_secret_changes_moves_to_the_other_account() {
        let (a, b) = (account("secret-a"), account("secret-b"));
        let mut g = AccountGuards::new(1, None);
        assert!(g.try_start(a, "x", t(0), POLL).is_ok());
        g.track(b, "x", true, Duration::ZERO);
        assert!(g.try_start(a, "y", t(0), POLL).is_ok(), "x left account a");
        assert!(g.try_start(b, "z", t(0), POLL).is_err());
    }

    #[test]
    fn finished_generations_teach_the_account_timer() {
        let a = account("secret-a");
        let mut g = AccountGuards::new(2, None);
        let t0 = Duration::from_secs(100);
        assert!(g.try_start(a, "x", t(0), POLL).is_ok());
        g.accepted("x", t0);
        assert_eq!(g.timing("x", t0), None, "nothing learnt yet");
        g.track(a, "x", false, t0 + Duration::from_millis(300));
        assert!(g.try_start(a, "y", t(1), POLL).is_ok());
        g.accepted("y", t0 + Duration::from_secs(1));
        let timing = g.timing("y", t0 + Duration::from_millis(1100)).unwrap();
        assert_eq!(timing.elapsed, Duration::from_millis(100));
        assert_eq!(timing.expected, Duration::from_millis(300));
    }

    #[test]
    fn remote_generations_seen_after_restart_hold_slots() {
        let mut g = GenerationGuard::new(2, None);
        g.track("a", true);
        g.track("b", true);
        assert!(g.try_start("c", t(0), POLL).is_err());
        g.forget("b");
        assert!(g.try_start("c", t(0), POLL).is_ok());
    }
}
