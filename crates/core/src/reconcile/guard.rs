//! The generation guard, one per account: at most `max_running` generations running at once
//! (an account runs two) and at most `per_hour` new ones in any hour. Beyond either, objects wait
//! with a reason; nothing fails. Objects refused a slot queue in arrival order, and `take_woken`
//! names those to look at again when slots free up, so a waiting object need not poll the API
//! until its turn. A freed slot is kept for the object it woke until that object's pass comes
//! (or a short while passes): an object that happens to pass first does not take it and send
//! the woken one to the back.
//!
//! Behind each running generation one more call may wait in the API's own queue (only with a
//! limit of at least the account's own 2: below it the API would run that call at once, beside
//! the others). When a generation ends the API starts the queued one at that instant, so its
//! worker never stands idle while this process notices the end, wakes the next object and sends
//! its call; that has a whole generation to happen in. So at most twice the limit are ever
//! outstanding and never more than the limit running; each call is still sent once, after its
//! marker. A queued call is promoted to running when a generation of its account is seen ending
//! (the API's queue is first in, first out), and timed from that end as observed: between the
//! last look that saw it running and the one that saw it done.
//!
//! `AccountGuards` keeps one guard and one generation timer per account (accounts are told
//! apart by their secret, never stored). Plain data with the time passed in (`at`: monotonic
//! time from any fixed origin); the caller shares it behind a mutex.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use super::timing::{GenerationTimer, GenerationTiming};
use crate::wire::AccountId;

#[derive(Debug, Clone)]
pub struct GenerationGuard {
    max_running: usize,
    per_hour: Option<usize>,
    /// Generations running remotely, as far as this process can tell.
    running: BTreeSet<String>,
    /// Accepted calls waiting in the API's queue behind the running ones, in the order they
    /// were accepted: the order the API starts them in.
    queued: VecDeque<String>,
    /// Slots taken behind the running ones whose call is not accepted yet (its marker is being
    /// written, or the call is on its way). They join `queued` as their calls are accepted: a
    /// slow marker write lets a later call reach the API first.
    sending: VecDeque<String>,
    /// When each generation of the last hour started (monotonic, like every time here).
    started: VecDeque<Duration>,
    /// Objects refused a slot, oldest first.
    waiting: VecDeque<String>,
    /// Objects woken for a free slot, and when: the slot is kept for each until its pass.
    woken: Vec<(String, Duration)>,
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
    /// `max_running` 0 means no limit.
    pub fn new(max_running: usize, per_hour: Option<usize>) -> Self {
        GenerationGuard {
            max_running,
            per_hour,
            running: BTreeSet::new(),
            queued: VecDeque::new(),
            sending: VecDeque::new(),
            started: VecDeque::new(),
            waiting: VecDeque::new(),
            woken: Vec::new(),
        }
    }

    /// Calls outstanding at most: the running ones, and one queued behind each when the API
    /// queues them (see the module's comment).
    fn capacity(&self) -> usize {
        if self.max_running >= ACCOUNT_RUNS_AT_ONCE {
            2 * self.max_running
        } else {
            self.max_running
        }
    }

    /// Ask to start a generation for `key` (namespace/name). On success the slot is held until
    /// `track` sees the remote finish or `forget` is called. Refused for want of a slot, the
    /// object joins the queue and is named by `take_woken` when its turn may have come;
    /// `retry` is how long it waits at most meanwhile.
    pub fn try_start(&mut self, key: &str, now: Duration, retry: Duration) -> Result<(), Refusal> {
        self.expire(now);
        let already_holding = self.holds(key);
        let was_woken = self.take_reservation(key);
        let kept_for_others = self.woken.len();
        let free = self.capacity().saturating_sub(self.outstanding());
        if !already_holding && self.max_running > 0 && free <= kept_for_others {
            if was_woken {
                // Its slot went to a generation seen running meanwhile: it keeps its place.
                self.waiting.push_front(key.to_string());
            } else if !self.waiting.iter().any(|k| k == key) {
                self.waiting.push_back(key.to_string());
            }
            // Nothing in the message that changes while it waits: each change is a status write.
            return Err(Refusal {
                reason: super::reasons::WAITING_FOR_GENERATION_SLOT,
                message: format!(
                    "the limit of {} generations at once is reached (--max-concurrent-generations); this one starts when a slot frees, in arrival order",
                    self.max_running
                ),
                retry_after: retry,
            });
        }
        if let Some(limit) = self.per_hour {
            if self.started.len() >= limit {
                let oldest = self.started.front().copied().unwrap_or(now);
                let free_at = HOUR.saturating_sub(now.saturating_sub(oldest));
                return Err(Refusal {
                    reason: super::reasons::GENERATION_BUDGET_EXHAUSTED,
                    message: format!(
                        "{limit} generations were started in the last hour (--generations-per-hour); the next may start in {}s",
                        free_at.as_secs()
                    ),
                    retry_after: free_at.max(Duration::from_secs(1)),
                });
            }
        }
        self.waiting.retain(|k| k != key);
        if !already_holding {
            self.hold(key);
        }
        self.started.push_back(now);
        Ok(())
    }

    /// Give back a slot taken by `try_start` whose call was refused by the API (nothing runs).
    /// A call queued behind it runs in its place. Returns that call's key.
    pub fn cancel(&mut self, key: &str) -> Option<String> {
        let (held, promoted) = self.drop_slot(key);
        if held {
            self.started.pop_back();
        }
        promoted
    }

    /// Track what the remote reports: a running generation holds a slot (also one started before
    /// a restart), a finished one frees it. When a generation believed running ends, the API
    /// starts the oldest queued call: its key is returned.
    pub fn track(&mut self, key: &str, generating: bool) -> Option<String> {
        if generating {
            if !self.holds(key) {
                self.hold(key);
            }
            None
        } else {
            self.drop_slot(key).1
        }
    }

    /// Takes a slot for `key`: running if one is free, else behind the running ones.
    fn hold(&mut self, key: &str) {
        if self.max_running == 0 || self.running.len() < self.max_running {
            self.running.insert(key.to_string());
        } else {
            self.sending.push_back(key.to_string());
        }
    }

    /// `key`'s call was accepted: if it waits behind the running ones, it queues behind the calls
    /// accepted before it.
    pub fn called(&mut self, key: &str) {
        let before = self.sending.len();
        self.sending.retain(|k| k != key);
        if self.sending.len() != before {
            self.queued.push_back(key.to_string());
        }
    }

    /// Frees `key`'s slot: whether it held one, and the queued call a running one leaves its
    /// place to.
    fn drop_slot(&mut self, key: &str) -> (bool, Option<String>) {
        if self.running.remove(key) {
            // The API starts the oldest call it holds; a call still on its way starts on arrival.
            let promoted = self.queued.pop_front().or_else(|| self.sending.pop_front());
            if let Some(next) = &promoted {
                self.running.insert(next.clone());
            }
            return (true, promoted);
        }
        let before = self.queued.len() + self.sending.len();
        self.queued.retain(|k| k != key);
        self.sending.retain(|k| k != key);
        (self.queued.len() + self.sending.len() != before, None)
    }

    fn holds(&self, key: &str) -> bool {
        self.running.contains(key) || self.is_queued(key)
    }

    /// Whether `key` waits behind the running ones: its call queued by the API, or on its way.
    pub fn is_queued(&self, key: &str) -> bool {
        self.queued.iter().chain(&self.sending).any(|k| k == key)
    }

    /// Where `key` stands in the API's queue (0: next to start).
    fn queue_position(&self, key: &str) -> Option<usize> {
        self.queued.iter().position(|k| k == key)
    }

    fn outstanding(&self) -> usize {
        self.running.len() + self.queued.len() + self.sending.len()
    }

    /// The object is gone or suspended.
    pub fn forget(&mut self, key: &str) {
        self.drop_slot(key);
        self.waiting.retain(|k| k != key);
        self.take_reservation(key);
    }

    /// Whether anything is kept for `key`: a slot, a kept slot or a place in the queue.
    fn knows(&self, key: &str) -> bool {
        self.holds(key) || self.is_woken(key) || self.waiting.iter().any(|k| k == key)
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
    pub fn take_woken(&mut self, now: Duration) -> Vec<String> {
        self.woken
            .retain(|(_, at)| now.saturating_sub(*at) < WOKEN_SLOT_KEPT);
        let free = match self.max_running {
            0 => self.waiting.len(),
            _ => self
                .capacity()
                .saturating_sub(self.outstanding())
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

    /// Generations outstanding: running, or queued by the API.
    pub fn in_flight(&self) -> usize {
        self.outstanding()
    }

    /// Objects queued for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn expire(&mut self, now: Duration) {
        while let Some(first) = self.started.front() {
            if now.saturating_sub(*first) >= HOUR {
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
    max_running: usize,
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
    /// When its generate call was accepted.
    called_at: Option<Duration>,
    /// When its generation started, as far as this process can tell: when its call was
    /// accepted; for a queued call, the expected end of the generation it waits behind until
    /// one is seen ending, then that end as seen.
    started_at: Option<Duration>,
    /// How long after that a poll last saw it still running.
    seen_running: Option<Duration>,
}

impl Held {
    fn new(account: AccountId) -> Self {
        Held {
            account,
            called_at: None,
            started_at: None,
            seen_running: None,
        }
    }

    /// The latest time a look saw its generation still running (its start if none did).
    fn last_seen_running(&self) -> Option<Duration> {
        Some(self.started_at? + self.seen_running.unwrap_or_default())
    }
}

impl AccountGuards {
    /// The limits hold for each account on its own; `max_running` 0 means no limit.
    pub fn new(max_running: usize, per_hour: Option<usize>) -> Self {
        AccountGuards {
            max_running,
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
                let previous = std::mem::replace(held, Held::new(account));
                if let Some(old) = self.accounts.get_mut(&previous.account) {
                    old.guard.forget(key);
                }
            }
            None => {
                self.objects.insert(key.to_string(), Held::new(account));
            }
        }
        let (max, per_hour) = (self.max_running, self.per_hour);
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
        now: Duration,
        retry: Duration,
    ) -> Result<(), Refusal> {
        self.guard(account, key).try_start(key, now, retry)
    }

    /// The generate call for `key` was refused: its slot and budget go back, and a call queued
    /// behind it has been running since it was accepted.
    pub fn cancel(&mut self, key: &str) {
        let promoted = self.objects.get(key).and_then(|held| {
            let account = self.accounts.get_mut(&held.account)?;
            account.guard.cancel(key)
        });
        if let Some(next) = promoted.and_then(|next| self.objects.get_mut(&next)) {
            next.started_at = next.called_at;
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
        if held.started_at.is_some()
            || self
                .accounts
                .get(&held.account)
                .is_some_and(|account| account.guard.knows(key))
        {
            return;
        }
        self.objects.remove(key);
    }

    /// The generate call for `key` was accepted at `at`. A call that found a slot running is
    /// timed from now; a queued one from the expected end of the running generation it waits
    /// behind (the API's queue is first in, first out), until a generation is seen ending.
    pub fn accepted(&mut self, key: &str, at: Duration) {
        let Some(held) = self.objects.get(key) else {
            return;
        };
        let Some(account) = self.accounts.get_mut(&held.account) else {
            return;
        };
        account.guard.called(key);
        let account = &*account;
        let started_at = match account.guard.queue_position(key) {
            None => Some(at),
            Some(place) => {
                let expected = account.timer.expected();
                let mut ends: Vec<Duration> = account
                    .guard
                    .running
                    .iter()
                    .filter_map(|k| Some(self.objects.get(k)?.started_at? + expected?))
                    .collect();
                ends.sort_unstable();
                ends.get(place).map(|end| (*end).max(at))
            }
        };
        if let Some(held) = self.objects.get_mut(key) {
            held.called_at = Some(at);
            held.started_at = started_at;
            held.seen_running = None;
        }
    }

    /// What a GET at `at` showed: whether the object holds a slot (its job runs, or its call is
    /// not visible yet). A generation seen ending frees its slot at once and teaches the timer;
    /// the call queued behind it started as it ended.
    ///
    /// Returns the looks now due elsewhere (monotonic, like `at`): the queued call that now runs,
    /// at its expected end; and when this is the account's first generation seen to end, the
    /// other generations of the account still running. Until then they were polled blind (a
    /// quarter of the time they had run); now each can be looked at as it ends. Once per
    /// account, so the walk over the objects does not recur.
    pub fn track(
        &mut self,
        account: AccountId,
        key: &str,
        holding: bool,
        at: Duration,
    ) -> Vec<(String, Duration)> {
        let was_queued = self.guard(account, key).is_queued(key);
        let promoted = self.guard(account, key).track(key, holding);
        let Some(held) = self.objects.get_mut(key) else {
            return Vec::new();
        };
        if holding {
            if let Some(started_at) = held.started_at {
                held.seen_running = Some(at.saturating_sub(started_at));
            }
            return Vec::new();
        }
        // The generation it leaves its worker to ended between these two.
        let ended = (held.last_seen_running().map_or(at, |seen| seen.min(at)), at);
        let finished = held
            .started_at
            .take()
            .map(|started_at| (at.saturating_sub(started_at), held.seen_running.take()));
        held.called_at = None;
        let Some(timer) = self.accounts.get_mut(&account).map(|a| &mut a.timer) else {
            return Vec::new();
        };
        let first = timer.expected().is_none();
        // A call seen done while still thought queued started at a time unknown: it teaches
        // nothing.
        if let (Some((elapsed, seen_running)), false) = (finished, was_queued) {
            timer.finished(elapsed, seen_running);
        }
        let expected = timer.expected();
        let mut due = Vec::new();
        if let Some((next, held)) =
            promoted.and_then(|next| self.objects.get_mut(&next).map(|held| (next, held)))
        {
            if let Some(called_at) = held.called_at {
                let (earliest, latest) = (ended.0.max(called_at), ended.1.max(called_at));
                let start = match (held.started_at, expected) {
                    (Some(guess), Some(_)) => guess.clamp(earliest, latest),
                    _ => earliest + (latest - earliest) / 2,
                };
                held.started_at = Some(start);
                held.seen_running = None;
                if let Some(expected) = expected {
                    due.push((next, start + expected));
                }
            }
        }
        if let (true, Some(expected)) = (first, expected) {
            due.extend(
                self.objects
                    .iter()
                    .filter(|(_, held)| held.account == account)
                    .filter_map(|(key, held)| Some((key.clone(), held.started_at? + expected))),
            );
        }
        self.prune(key);
        due
    }

    /// Whether `key` runs a generation this process times (accepted, not yet seen ending).
    pub fn runs(&self, key: &str) -> bool {
        self.objects
            .get(key)
            .is_some_and(|held| held.started_at.is_some())
    }

    /// How far the object's running generation is, if it is timed and its account has an estimate.
    pub fn timing(&self, key: &str, at: Duration) -> Option<GenerationTiming> {
        let held = self.objects.get(key)?;
        let started_at = held.started_at?;
        let expected = self.accounts.get(&held.account)?.timer.expected()?;
        // A queued call starts later than now: it is expected to take that much longer from now.
        Some(GenerationTiming {
            elapsed: at.saturating_sub(started_at),
            expected: expected + started_at.saturating_sub(at),
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
    pub fn take_woken(&mut self, now: Duration) -> Vec<String> {
        let mut woken = Vec::new();
        for account in self.accounts.values_mut() {
            woken.extend(account.guard.take_woken(now));
        }
        woken
    }

    /// Whether a slot is kept for `key` on its account, woken and not yet passed.
    pub fn is_woken(&self, key: &str) -> bool {
        self.account_of(key).is_some_and(|a| a.guard.is_woken(key))
    }

    /// `GenerationGuard::release` on the object's account.
    pub fn release(&mut self, key: &str) {
        if let Some(held) = self.objects.get(key) {
            if let Some(account) = self.accounts.get_mut(&held.account) {
                account.guard.release(key);
            }
        }
        self.prune(key);
    }

    fn account_of(&self, key: &str) -> Option<&Account> {
        self.accounts.get(&self.objects.get(key)?.account)
    }

    /// (objects waiting for a slot, generations outstanding), summed over accounts.
    pub fn load(&self) -> (usize, usize) {
        self.accounts.values().fold((0, 0), |(w, f), a| {
            (w + a.guard.waiting(), f + a.guard.in_flight())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }
    const POLL: Duration = Duration::from_secs(2);

    #[test]
    fn concurrency_limit_holds_until_a_generation_finishes() {
        let mut g = GenerationGuard::new(1, None);
        assert!(g.try_start("a", t(0), POLL).is_ok());
        let refused = g.try_start("b", t(0), POLL).unwrap_err();
        assert_eq!(refused.reason, "WaitingForGenerationSlot");
        assert_eq!(refused.retry_after, POLL);
        // A resend for an object already holding a slot is not a new generation.
        assert!(g.try_start("a", t(1), POLL).is_ok());
        assert_eq!(g.in_flight(), 1);
        assert_eq!(g.track("a", false), None);
        assert!(g.try_start("b", t(2), POLL).is_ok());
        assert_eq!(g.in_flight(), 1);
    }

    #[test]
    fn one_call_waits_in_the_api_queue_behind_each_running_generation() {
        let mut g = GenerationGuard::new(2, None);
        for key in ["a", "b", "c", "d"] {
            assert!(g.try_start(key, t(0), POLL).is_ok(), "{key}");
        }
        assert_eq!(
            ["a", "b", "c", "d"].map(|k| g.is_queued(k)),
            [false, false, true, true],
            "two run, two wait behind them"
        );
        assert!(
            g.try_start("e", t(0), POLL).is_err(),
            "twice the limit at most"
        );
        // The first generation seen ending leaves its worker to the oldest queued call.
        assert_eq!(g.track("b", false), Some("c".to_string()));
        assert!(!g.is_queued("c"));
        assert_eq!(g.take_woken(t(1)), ["e"]);
        assert!(g.try_start("e", t(1), POLL).is_ok());
        assert!(g.is_queued("e"), "behind a, c, and d");
        // A queued call seen done (its start was missed) frees its place and promotes nobody.
        assert_eq!(g.track("d", false), None);
        assert_eq!(g.in_flight(), 3);
        // A refused call gives its place to the call queued behind it.
        assert_eq!(g.cancel("a"), Some("e".to_string()));
        assert!(!g.is_queued("e"));
        // Below the account's own 2 the API would run a second call at once: nothing queues.
        let mut one = GenerationGuard::new(1, None);
        assert!(one.try_start("a", t(0), POLL).is_ok());
        assert!(one.try_start("b", t(0), POLL).is_err());
        assert!(one.take_woken(t(1)).is_empty());
        one.track("a", false);
        assert_eq!(one.take_woken(t(1)), ["b"]);
        // Without a limit every call runs.
        let mut unlimited = GenerationGuard::new(0, None);
        for key in ["a", "b", "c"] {
            assert!(unlimited.try_start(key, t(0), POLL).is_ok());
            assert!(!unlimited.is_queued(key));
        }
    }

    #[test]
    fn queued_calls_start_in_the_order_they_were_accepted() {
        let mut g = GenerationGuard::new(2, None);
        for key in ["a", "b", "c", "d"] {
            assert!(g.try_start(key, t(0), POLL).is_ok());
        }
        // d's marker was written sooner: its call reached the API before c's.
        g.called("d");
        g.called("c");
        assert_eq!(g.track("a", false), Some("d".to_string()));
        assert_eq!(g.track("b", false), Some("c".to_string()));
        // A call still on its way when a worker frees starts as it arrives.
        for key in ["e", "f"] {
            assert!(g.try_start(key, t(0), POLL).is_ok());
        }
        g.called("f");
        assert_eq!(g.track("d", false), Some("f".to_string()));
        assert_eq!(g.track("c", false), Some("e".to_string()));
    }

    #[test]
    fn remote_generations_seen_after_restart_hold_slots() {
        let mut g = GenerationGuard::new(2, None);
        for key in ["a", "b", "c", "d"] {
            g.track(key, true);
        }
        assert!(g.try_start("e", t(0), POLL).is_err());
        g.forget("b");
        assert!(g.try_start("e", t(0), POLL).is_ok());
    }

    #[test]
    fn each_account_has_its_own_slots() {
        let (a, b) = (account("secret-a"), account("secret-b"));
        let mut g = AccountGuards::new(2, None);
        for key in ["a1", "a2", "a3", "a4"] {
            assert!(g.try_start(a, key, t(0), POLL).is_ok());
        }
        assert!(g.try_start(a, "a5", t(0), POLL).is_err());
        assert!(g.try_start(b, "b1", t(0), POLL).is_ok());
        assert!(g.try_start(b, "b2", t(0), POLL).is_ok());
        assert_eq!(g.load(), (1, 6));
        // A generation of account b ending wakes nobody of account a.
        g.track(b, "b1", false, Duration::ZERO);
        assert!(g.take_woken(t(0)).is_empty());
        g.track(a, "a1", false, Duration::ZERO);
        assert_eq!(g.take_woken(t(0)), ["a5"]);
    }

    #[test]
    fn a_queued_call_is_timed_from_the_end_it_waits_behind() {
        let a = account("secret-a");
        let mut g = AccountGuards::new(2, None);
        let ms = Duration::from_millis;
        let estimate = |g: &AccountGuards| g.accounts[&a].timer.expected();
        for key in ["x", "o"] {
            assert!(g.try_start(a, key, t(0), POLL).is_ok());
        }
        g.accepted("x", ms(0));
        g.accepted("o", ms(100));
        // x teaches 200 ms; o, still running, is due at its expected end.
        assert_eq!(
            g.track(a, "x", false, ms(200)),
            [("o".to_string(), ms(300))]
        );
        assert!(g.try_start(a, "y", t(0), POLL).is_ok());
        g.accepted("y", ms(210));
        // Two calls queue behind o (ends at 300) and y (at 410), in that order.
        for (key, at) in [("q1", 220), ("q2", 230)] {
            assert!(g.try_start(a, key, t(0), POLL).is_ok());
            g.accepted(key, ms(at));
        }
        let q1 = g.timing("q1", ms(220)).unwrap();
        assert_eq!(q1.expected - q1.elapsed, ms(280), "80 ms queued, then 200");
        let q2 = g.timing("q2", ms(230)).unwrap();
        assert_eq!(q2.expected - q2.elapsed, ms(380));
        assert!(g.try_start(a, "z", t(0), POLL).is_err(), "four outstanding");
        // o is seen done at 320, never seen running: it ended between its start and 320, and
        // q1's guess (300) lies within, so q1 runs from 300.
        let due = g.track(a, "o", false, ms(320));
        let after_o = ms(200) - ms(200) / 512;
        assert_eq!(estimate(&g), Some(after_o));
        assert_eq!(due, [("q1".to_string(), ms(300) + after_o)]);
        // A look due at o's end would find nothing to look at now; q1's is worth it.
        assert!(!g.runs("o"));
        assert!(g.runs("q1"));
        assert_eq!(g.take_woken(t(0)), ["z"]);
        // y ends sooner than expected: seen running at 350, done at 380. q2 (guessed 410) ran
        // from within that window, at its latest. The look that saw y running is the lower
        // bound the estimate now sits just above.
        g.track(a, "y", true, ms(350));
        let due = g.track(a, "y", false, ms(380));
        let after_y = ms(140) + ms(140) / 50;
        assert_eq!(estimate(&g), Some(after_y));
        assert_eq!(due, [("q2".to_string(), ms(380) + after_y)]);
        // z queues behind q1 (ends at 300 + after_y) and is seen done before q1 is: its start
        // was missed, so it teaches nothing.
        assert!(g.try_start(a, "z", t(0), POLL).is_ok());
        g.accepted("z", ms(390));
        let z = g.timing("z", ms(390)).unwrap();
        assert_eq!(
            z.expected - z.elapsed,
            ms(300) + after_y - ms(390) + after_y
        );
        assert!(g.track(a, "z", false, ms(395)).is_empty());
        assert_eq!(estimate(&g), Some(after_y));
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
        let lapse = 1 + WOKEN_SLOT_KEPT.as_secs();
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
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        AccountId::from_raw(BuildHasherDefault::<DefaultHasher>::default().hash_one(secret))
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
        assert_eq!(g.take_woken(t(1)), ["y"]);
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
}
