//! The generation guard, one per account: at most `max_in_flight` generations running at once
//! (an account runs two; more would only queue remotely while looking "started" here) and at
//! most `per_hour` new ones in any hour. Beyond either, objects wait with a reason; nothing fails.
//! Objects refused a slot queue in arrival order, and `take_woken` names those to look at again
//! when slots free up, so a waiting object need not poll the API until its turn. A freed slot is
//! kept for the object it woke until that object's pass comes (or a short while passes): an
//! object that happens to pass first does not take it and send the woken one to the back.
//! A generation is handed over just before its expected end (`hand_over`): its successor's
//! pass, which takes a while (a GET, the marker write), then sends its call as the generation
//! ends, not after. A handed-over generation still runs but no longer counts against the limit;
//! at most one successor per running generation, so no more than twice the limit are ever
//! outstanding, and the API queues the early one for the moment it takes to end. Only with a
//! limit of at least the account's own (2): below it the API would run the early call at once.
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
    /// Generations in flight whose slot is already handed to a successor (near their end).
    handed: BTreeSet<String>,
    started: VecDeque<Timestamp>,
    /// Objects refused a slot, oldest first.
    waiting: VecDeque<String>,
    /// Objects woken for a free slot, and when: the slot is kept for each until its pass.
    woken: Vec<(String, Timestamp)>,
}

/// Why a generation has to wait, and for how long at most before asking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
    pub retry_after: Duration,
}

const HOUR: Duration = Duration::from_secs(3600);

/// How many generations the API runs at once per account; it queues further ones.
pub const ACCOUNT_RUNS_AT_ONCE: usize = 2;

/// How long a slot is kept for a woken object whose pass has not come (a lost wake-up).
pub const WOKEN_SLOT_KEPT: Duration = Duration::from_secs(5);

impl GenerationGuard {
    /// `max_in_flight` 0 means no limit.
    pub fn new(max_in_flight: usize, per_hour: Option<usize>) -> Self {
        GenerationGuard {
            max_in_flight,
            per_hour,
            in_flight: BTreeSet::new(),
            handed: BTreeSet::new(),
            started: VecDeque::new(),
            waiting: VecDeque::new(),
            woken: Vec::new(),
        }
    }

    /// Ask to start a generation for `key` (namespace/name). On success the slot is held until
    /// `track` sees the remote finish or `forget` is called. Refused for want of a slot, the
    /// object joins the queue and is named by `take_woken` when its turn may have come;
    /// `retry` is how long it waits at most meanwhile.
    pub fn try_start(&mut self, key: &str, now: Timestamp, retry: Duration) -> Result<(), Refusal> {
        self.expire(now);
        let already_holding = self.in_flight.contains(key);
        let was_woken = self.take_reservation(key);
        let kept_for_others = self.woken.len();
        let free = self.max_in_flight.saturating_sub(self.busy());
        if !already_holding && self.max_in_flight > 0 && free <= kept_for_others {
            if was_woken {
                // Its slot went to a generation seen running meanwhile: it keeps its place.
                self.waiting.push_front(key.to_string());
            } else if !self.waiting.iter().any(|k| k == key) {
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
        self.handed.remove(key);
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
            self.handed.remove(key);
        }
    }

    /// `key`'s generation is about to end: its slot goes to the next waiter now. False if there
    /// is nothing to hand over (no limit, not in flight, or handed over already), and below the
    /// account's own limit: the successor's call, sent before the end, is queued by the API only
    /// because the account already runs all it can. With a lower limit it would run at once,
    /// beside the one still running, and break the limit the user set.
    pub fn hand_over(&mut self, key: &str) -> bool {
        self.max_in_flight >= ACCOUNT_RUNS_AT_ONCE
            && self.in_flight.contains(key)
            && self.handed.insert(key.to_string())
    }

    /// Slots counted against the limit: generations in flight, less those handed over.
    fn busy(&self) -> usize {
        self.in_flight.len() - self.handed.len()
    }

    /// The object is gone or suspended.
    pub fn forget(&mut self, key: &str) {
        self.in_flight.remove(key);
        self.handed.remove(key);
        self.waiting.retain(|k| k != key);
        self.take_reservation(key);
    }

    /// Whether anything is kept for `key`: a slot, a hand-over, a kept slot or a place in the queue.
    fn knows(&self, key: &str) -> bool {
        self.in_flight.contains(key)
            || self.handed.contains(key)
            || self.is_woken(key)
            || self.waiting.iter().any(|k| k == key)
    }

    /// Whether a slot is kept for `key`, woken and not yet passed.
    pub fn is_woken(&self, key: &str) -> bool {
        self.woken.iter().any(|(k, _)| k == key)
    }

    /// The pass of a woken object ended without asking for its slot (it needs none now).
    pub fn release(&mut self, key: &str) {
        self.take_reservation(key);
    }

    /// The waiting objects that free slots could serve now, oldest first. They leave the queue
    /// and a slot is kept for each until its pass (at most `WOKEN_SLOT_KEPT`).
    pub fn take_woken(&mut self, now: Timestamp) -> Vec<String> {
        self.woken.retain(|(_, at)| {
            Duration::try_from(now.duration_since(*at)).map_or(true, |age| age < WOKEN_SLOT_KEPT)
        });
        let free = match self.max_in_flight {
            0 => self.waiting.len(),
            max => max
                .saturating_sub(self.busy())
                .saturating_sub(self.woken.len()),
        };
        let n = free.min(self.waiting.len());
        let woken: Vec<String> = self.waiting.drain(..n).collect();
        self.woken.extend(woken.iter().map(|k| (k.clone(), now)));
        woken
    }

    fn take_reservation(&mut self, key: &str) -> bool {
        let before = self.woken.len();
        self.woken.retain(|(k, _)| k != key);
        self.woken.len() != before
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
    /// How long a woken object takes from its wake-up to its accepted call: how early a
    /// generation is handed over. It follows the slowest recent one and lets go slowly.
    lead: Duration,
    /// The expected ends of generations handed over whose slot no call has taken yet: the call
    /// that takes it is queued by the API until then, so its generation is timed from there.
    handed_ends: VecDeque<Duration>,
}

/// The account an object was last seen with, and its running generation, timed.
#[derive(Debug, Clone)]
struct Held {
    account: AccountId,
    /// When its running generation started, as far as this process can tell: when its call
    /// was accepted, or, if that call took a handed-over slot, when the generation it follows
    /// was expected to end.
    accepted_at: Option<Duration>,
    /// How long after that a poll last saw it still running.
    seen_running: Option<Duration>,
    /// When it was last woken for a free slot, until its call is accepted or refused.
    woken_at: Option<Duration>,
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
                held.woken_at = None;
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
                        woken_at: None,
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
                lead: Duration::ZERO,
                handed_ends: VecDeque::new(),
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
        let result = self.guard(account, key).try_start(key, now, retry);
        if result.is_err() {
            if let Some(held) = self.objects.get_mut(key) {
                held.woken_at = None;
            }
        }
        result
    }

    /// The generate call for `key` was refused: its slot and budget go back.
    pub fn cancel(&mut self, key: &str) {
        if let Some(held) = self.objects.get_mut(key) {
            held.woken_at = None;
            if let Some(account) = self.accounts.get_mut(&held.account) {
                account.guard.cancel(key);
            }
        }
        self.prune(key);
    }

    /// Drops `key`'s entry once it holds nothing on its account. Most objects hold nothing
    /// (they are converged), and an entry for each would cost about 150 bytes per object; the
    /// next `guard` call makes a new one with the object's account.
    fn prune(&mut self, key: &str) {
        let Some(held) = self.objects.get(key) else {
            return;
        };
        let running = held.accepted_at.is_some() || held.woken_at.is_some();
        if running
            || self
                .accounts
                .get(&held.account)
                .is_some_and(|account| account.guard.knows(key))
        {
            return;
        }
        self.objects.remove(key);
    }

    /// The generate call for `key` was accepted at `at`: its generation is timed from then, or
    /// from the expected end of the one whose handed-over slot it took.
    pub fn accepted(&mut self, key: &str, at: Duration) {
        let Some(held) = self.objects.get_mut(key) else {
            return;
        };
        held.seen_running = None;
        held.accepted_at = Some(at);
        let Some(account) = self.accounts.get_mut(&held.account) else {
            return;
        };
        if let Some(end) = account.handed_ends.pop_front() {
            held.accepted_at = Some(end.max(at));
        }
        if let Some(woken_at) = held.woken_at.take() {
            let took = at.saturating_sub(woken_at);
            account.lead = took.max(account.lead.saturating_sub(account.lead / 16));
        }
    }

    /// When `key`'s running generation should be handed over (monotonic, like `at`), and the
    /// time its call was accepted, which names that generation to `hand_over`. None while the
    /// account has no estimate or the object runs no timed generation. The lead is the time a
    /// woken object takes to start plus a sixteenth of a generation (the estimate hovers a little
    /// above the truth, and a call that comes early only waits in the API's queue), at most a
    /// quarter of a generation.
    pub fn hand_over_at(&self, key: &str) -> Option<(Duration, Duration)> {
        let held = self.objects.get(key)?;
        let accepted_at = held.accepted_at?;
        let account = self.accounts.get(&held.account)?;
        let expected = account.timer.expected()?;
        let lead = (account.lead + expected / 16).min(expected / 4);
        Some((accepted_at + expected.saturating_sub(lead), accepted_at))
    }

    /// Hand over `key`'s generation accepted at `accepted_at`, if it still runs.
    pub fn hand_over(&mut self, key: &str, accepted_at: Duration) {
        let Some(held) = self.objects.get(key) else {
            return;
        };
        if held.accepted_at != Some(accepted_at) {
            return;
        }
        let Some(account) = self.accounts.get_mut(&held.account) else {
            return;
        };
        let Some(expected) = account.timer.expected() else {
            return;
        };
        if account.guard.hand_over(key) {
            if account.handed_ends.len() >= self.max_in_flight {
                account.handed_ends.pop_front();
            }
            account.handed_ends.push_back(accepted_at + expected);
        }
    }

    /// What a GET at `at` showed: whether the object holds a slot (its job runs, or its call is
    /// not visible yet). A generation seen ending frees its slot at once and teaches the timer.
    ///
    /// Returns the looks now due elsewhere: when this is the account's first generation seen to
    /// end, the other generations of the account still running, each with its expected end
    /// (monotonic, like `at`). Until then they were polled blind (a quarter of the time they had
    /// run); now each can be looked at as it ends. Once per account, so the walk over the
    /// objects does not recur.
    pub fn track(
        &mut self,
        account: AccountId,
        key: &str,
        holding: bool,
        at: Duration,
    ) -> Vec<(String, Duration)> {
        self.guard(account, key).track(key, holding);
        let Some(held) = self.objects.get_mut(key) else {
            return Vec::new();
        };
        let Some(accepted_at) = held.accepted_at else {
            if !holding {
                self.prune(key);
            }
            return Vec::new();
        };
        let elapsed = at.saturating_sub(accepted_at);
        if holding {
            held.seen_running = Some(elapsed);
            return Vec::new();
        }
        let seen_running = held.seen_running.take();
        held.accepted_at = None;
        let Some(timer) = self.accounts.get_mut(&account).map(|a| &mut a.timer) else {
            return Vec::new();
        };
        let first = timer.expected().is_none();
        timer.finished(elapsed, seen_running);
        let due = match (first, timer.expected()) {
            (true, Some(expected)) => self
                .objects
                .iter()
                .filter(|(_, held)| held.account == account)
                .filter_map(|(key, held)| Some((key.clone(), held.accepted_at? + expected)))
                .collect(),
            _ => Vec::new(),
        };
        self.prune(key);
        due
    }

    /// How far the object's running generation is, if it is timed and its account has an estimate.
    pub fn timing(&self, key: &str, at: Duration) -> Option<GenerationTiming> {
        let held = self.objects.get(key)?;
        let accepted_at = held.accepted_at?;
        let expected = self.accounts.get(&held.account)?.timer.expected()?;
        // A generation queued behind a handed-over one starts later than now: it is expected
        // to take that much longer from now.
        Some(GenerationTiming {
            elapsed: at.saturating_sub(accepted_at),
            expected: expected + accepted_at.saturating_sub(at),
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

    /// `GenerationGuard::take_woken` over every account; `at` (monotonic) times how long
    /// each woken object takes to start its generation.
    pub fn take_woken(&mut self, now: Timestamp, at: Duration) -> Vec<String> {
        let mut woken = Vec::new();
        for account in self.accounts.values_mut() {
            woken.extend(account.guard.take_woken(now));
        }
        for key in &woken {
            if let Some(held) = self.objects.get_mut(key) {
                held.woken_at = Some(at);
            }
        }
        woken
    }

    /// Whether a slot is kept for `key` on its account, woken and not yet passed.
    pub fn is_woken(&self, key: &str) -> bool {
        self.account_of(key).is_some_and(|a| a.guard.is_woken(key))
    }

    /// `GenerationGuard::release` on the object's account.
    pub fn release(&mut self, key: &str) {
        if let Some(held) = self.objects.get_mut(key) {
            held.woken_at = None;
            if let Some(account) = self.accounts.get_mut(&held.account) {
                account.guard.release(key);
            }
        }
        self.prune(key);
    }

    fn account_of(&self, key: &str) -> Option<&Account> {
        self.accounts.get(&self.objects.get(key)?.account)
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
        assert!(g.take_woken(t(0)).is_empty(), "no slot free yet");
        g.track("a", false);
        assert_eq!(
            g.take_woken(t(0)),
            vec!["b".to_string()],
            "one slot: the oldest waiter"
        );
        assert!(g.try_start("b", t(1), POLL).is_ok());
        g.forget("c");
        g.track("b", false);
        assert!(
            g.take_woken(t(1)).is_empty(),
            "a forgotten waiter is not woken"
        );
    }

    #[test]
    fn a_freed_slot_is_kept_for_the_object_it_woke() {
        let mut g = GenerationGuard::new(1, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        assert!(g.try_start("b", t(0), POLL).is_err());
        g.track("a", false);
        assert_eq!(g.take_woken(t(1)), vec!["b".to_string()]);
        // An object that happens to pass before b does not take b's slot.
        assert!(g.try_start("c", t(1), POLL).is_err());
        assert!(g.take_woken(t(1)).is_empty(), "the one free slot is b's");
        assert!(g.try_start("b", t(1), POLL).is_ok());
        g.track("b", false);
        assert_eq!(g.take_woken(t(2)), vec!["c".to_string()]);
    }

    #[test]
    fn a_woken_object_that_needs_no_slot_passes_it_on() {
        let mut g = GenerationGuard::new(1, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        for key in ["b", "c"] {
            assert!(g.try_start(key, t(0), POLL).is_err());
        }
        g.track("a", false);
        assert_eq!(g.take_woken(t(1)), vec!["b".to_string()]);
        assert!(g.is_woken("b"));
        g.release("b");
        assert!(!g.is_woken("b"));
        assert_eq!(g.take_woken(t(1)), vec!["c".to_string()]);
    }

    #[test]
    fn a_kept_slot_lapses_when_the_woken_pass_never_comes() {
        let mut g = GenerationGuard::new(1, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        assert!(g.try_start("b", t(0), POLL).is_err());
        assert!(g.try_start("c", t(0), POLL).is_err());
        g.track("a", false);
        assert_eq!(g.take_woken(t(1)), vec!["b".to_string()]);
        assert!(g.take_woken(t(5)).is_empty(), "kept for b for a while");
        let lapse = 1 + WOKEN_SLOT_KEPT.as_secs() as i64;
        assert_eq!(g.take_woken(t(1 + lapse)), vec!["c".to_string()]);
    }

    #[test]
    fn a_woken_object_refused_after_all_keeps_its_place() {
        let mut g = GenerationGuard::new(1, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        assert!(g.try_start("b", t(0), POLL).is_err());
        assert!(g.try_start("c", t(0), POLL).is_err());
        g.track("a", false);
        assert_eq!(g.take_woken(t(1)), vec!["b".to_string()]);
        // A generation from before a restart shows up running and takes the slot.
        g.track("x", true);
        assert!(g.try_start("b", t(1), POLL).is_err());
        g.track("x", false);
        assert_eq!(
            g.take_woken(t(2)),
            vec!["b".to_string()],
            "b is still first"
        );
    }

    #[test]
    fn a_generation_handed_over_near_its_end_lets_one_successor_start() {
        let mut g = GenerationGuard::new(2, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        assert!(g.try_start("x", t(0), POLL).is_ok());
        for key in ["b", "c"] {
            assert!(g.try_start(key, t(0), POLL).is_err());
        }
        g.hand_over("a");
        g.hand_over("a");
        assert_eq!(g.take_woken(t(1)), vec!["b".to_string()], "one successor");
        assert!(g.try_start("b", t(1), POLL).is_ok());
        assert_eq!(g.in_flight(), 3, "a still runs");
        // a's end frees nothing more: its slot is b's already.
        g.track("a", false);
        assert!(g.take_woken(t(2)).is_empty());
        assert!(g.try_start("c", t(2), POLL).is_err());
        // Without a limit there is nothing to hand over.
        let mut unlimited = GenerationGuard::new(0, None);
        assert!(unlimited.try_start("a", t(0), POLL).is_ok());
        unlimited.hand_over("a");
        assert_eq!(unlimited.busy(), 1);
        // Below the account's own limit the API would run an early call at once: the slot
        // frees only when the generation is seen ending.
        let mut one = GenerationGuard::new(1, None);
        assert!(one.try_start("a", t(0), POLL).is_ok());
        assert!(one.try_start("b", t(0), POLL).is_err());
        assert!(!one.hand_over("a"));
        assert!(one.take_woken(t(1)).is_empty());
        one.track("a", false);
        assert_eq!(one.take_woken(t(1)), vec!["b".to_string()]);
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
        assert!(g.take_woken(t(0), Duration::ZERO).is_empty());
        g.track(a, "a1", false, Duration::ZERO);
        assert_eq!(g.take_woken(t(0), Duration::ZERO), vec!["a3".to_string()]);
    }

    #[test]
    fn objects_that_hold_nothing_leave_nothing_behind() {
        let a = account("secret-a");
        let mut g = AccountGuards::new(1, None);
        let ms = Duration::from_millis;
        g.track(a, "converged", false, ms(0));
        assert!(g.objects.is_empty(), "looked at, holding nothing");
        assert!(g.try_start(a, "x", t(0), POLL).is_ok());
        g.accepted("x", ms(0));
        assert!(g.try_start(a, "y", t(0), POLL).is_err());
        g.track(a, "y", false, ms(10));
        assert!(g.objects.contains_key("y"), "y waits for a slot");
        g.track(a, "x", false, ms(300));
        assert!(!g.objects.contains_key("x"), "x's generation ended");
        assert_eq!(g.take_woken(t(1), ms(300)), ["y"]);
        assert!(g.objects.contains_key("y"), "a slot is kept for y");
        g.release("y");
        assert!(g.objects.is_empty(), "y needed no slot after all");
        // What was dropped comes back with the object's account when it asks again.
        assert!(g.try_start(a, "y", t(2), POLL).is_ok());
        assert!(
            g.try_start(a, "z", t(2), POLL).is_err(),
            "y holds the only slot"
        );
        g.cancel("y");
        assert!(
            !g.objects.contains_key("y"),
            "its call was refused: nothing runs"
        );
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
    fn the_first_generation_seen_ending_times_the_others_of_its_account() {
        let (a, b) = (account("secret-a"), account("secret-b"));
        let mut g = AccountGuards::new(0, None);
        let s = Duration::from_secs;
        for (account, key, accepted) in [(a, "x", 0), (a, "y", 1), (a, "z", 2), (b, "w", 0)] {
            assert!(g.try_start(account, key, t(0), POLL).is_ok());
            g.accepted(key, s(accepted));
        }
        // y is still running at 20 s; x is seen done at 31 s, having been seen running at 29 s.
        assert!(g.track(a, "y", true, s(20)).is_empty());
        assert!(g.track(a, "x", true, s(29)).is_empty());
        let mut due = g.track(a, "x", false, s(31));
        due.sort();
        // Estimate 30 s: y and z are due 30 s after their calls; w is of another account.
        assert_eq!(due, [("y".to_string(), s(31)), ("z".to_string(), s(32))]);
        // Later ends of the same account teach the timer but wake nobody.
        assert!(g.track(a, "y", false, s(31)).is_empty());
        assert!(
            g.track(b, "w", false, s(31)).is_empty(),
            "nothing else runs on account b"
        );
    }

    #[test]
    fn the_hand_over_comes_as_early_as_a_woken_object_takes_to_start() {
        let a = account("secret-a");
        let mut g = AccountGuards::new(2, None);
        let ms = Duration::from_millis;
        // o holds the other slot throughout; x's generation teaches the timer 200 ms; y waits
        // meanwhile.
        assert!(g.try_start(a, "o", t(0), POLL).is_ok());
        assert!(g.try_start(a, "x", t(0), POLL).is_ok());
        g.accepted("x", ms(0));
        assert_eq!(g.hand_over_at("x"), None, "no estimate yet");
        assert!(g.try_start(a, "y", t(0), POLL).is_err());
        g.track(a, "x", false, ms(200));
        assert_eq!(g.take_woken(t(0), ms(200)), vec!["y".to_string()]);
        // y's call is accepted 30 ms after its wake-up: the lead is that plus a sixteenth of
        // a generation.
        assert!(g.try_start(a, "y", t(0), POLL).is_ok());
        g.accepted("y", ms(230));
        let margin = ms(200) / 16;
        assert_eq!(g.hand_over_at("y"), Some((ms(400) - margin, ms(230))));
        // Handing over a generation that is no longer the one timed does nothing.
        assert!(g.try_start(a, "z", t(0), POLL).is_err());
        g.hand_over("y", ms(1));
        assert!(g.take_woken(t(0), ms(400)).is_empty());
        g.hand_over("y", ms(230));
        assert_eq!(g.take_woken(t(0), ms(400)), vec!["z".to_string()]);
        // z's call, accepted 10 ms after its wake-up, is queued by the API until y's expected
        // end (430 ms): it is timed from there. The lead lets go of the slower 30 ms slowly.
        assert!(g.try_start(a, "z", t(0), POLL).is_ok());
        g.accepted("z", ms(410));
        let lead = ms(30) - ms(30) / 16 + margin;
        assert_eq!(g.hand_over_at("z"), Some((ms(630) - lead, ms(430))));
        let timing = g.timing("z", ms(410)).unwrap();
        assert_eq!(
            timing.expected - timing.elapsed,
            ms(220),
            "20 ms queued, then 200"
        );
        // A slow start raises the lead at once, but never past a quarter of a generation.
        assert!(g.try_start(a, "w", t(0), POLL).is_err());
        g.track(a, "z", false, ms(630));
        assert_eq!(g.take_woken(t(0), ms(630)), vec!["w".to_string()]);
        assert!(g.try_start(a, "w", t(0), POLL).is_ok());
        g.accepted("w", ms(1500));
        // (z's generation, seen done on time, took the estimate a 512th lower.)
        let expected = ms(200) - ms(200) / 512;
        assert_eq!(
            g.hand_over_at("w"),
            Some((ms(1500) + expected - expected / 4, ms(1500)))
        );
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
