//! One call rate per account. Every call to the API with one account's secret (GET, PUT,
//! generate, retries included) takes a token from that account's bucket, so that the API never
//! sees more than `per_second` of the account's calls arrive in any one-second window. A token
//! is held from the moment the call is let through until one second after its reply: the call
//! arrives somewhere in between, however late the task or the connection sends it, so that no
//! second of arrivals can hold more calls than there are tokens. (With a reply latency L the
//! account makes at most `per_second / (1 + L)` calls a second, and never more than
//! `per_second` at once.) A 429 pauses the whole account for its Retry-After, not only the call
//! that got it, since the API counts the account, not the object.
//!
//! Calls wait in two queues: calls for objects with work pending (a user's edit, a running
//! generation, an error being retried) go ahead of the drift resyncs of settled objects. The
//! priority of a call is the task's, set by `with_priority` around a pass; unset, it is urgent.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use dynamics_core::wire::AccountId;

/// Which queue a call waits in when its account is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Work pending: goes first.
    Urgent,
    /// A look at a settled object: waits behind every urgent call.
    Resync,
}

tokio::task_local! {
    static PRIORITY: Priority;
}

/// Run `work` with its API calls at `priority`.
pub async fn with_priority<F: Future>(priority: Priority, work: F) -> F::Output {
    PRIORITY.scope(priority, work).await
}

fn current_priority() -> Priority {
    PRIORITY.try_with(|p| *p).unwrap_or(Priority::Urgent)
}

/// The buckets of every account seen, all with the same limit.
pub(crate) struct AccountLimits {
    per_second: usize,
    accounts: Mutex<HashMap<AccountId, Arc<Bucket>>>,
}

/// Held for the time of one call; dropped when its reply is in (or the call is given up).
pub(crate) struct Token(Option<Arc<Bucket>>);

impl Drop for Token {
    fn drop(&mut self) {
        if let Some(bucket) = self.0.take() {
            bucket.returned();
        }
    }
}

impl AccountLimits {
    /// `per_second` 0: no limit (`take` returns at once).
    pub fn new(per_second: u32) -> Self {
        AccountLimits {
            per_second: per_second as usize,
            accounts: Mutex::default(),
        }
    }

    fn bucket(&self, account: AccountId) -> Option<Arc<Bucket>> {
        if self.per_second == 0 {
            return None;
        }
        let mut accounts = self.accounts.lock().expect("account limits");
        Some(
            accounts
                .entry(account)
                .or_insert_with(|| Arc::new(Bucket::new(self.per_second)))
                .clone(),
        )
    }

    /// Wait for a token of `account`'s, at the task's priority; hold it for the call.
    pub async fn take(&self, account: AccountId) -> Token {
        match self.bucket(account) {
            Some(bucket) => bucket.take(current_priority()).await,
            None => Token(None),
        }
    }

    /// The API said the account is over its limit: no call of the account for `wait`.
    pub fn pause(&self, account: AccountId, wait: Duration) {
        if let Some(bucket) = self.bucket(account) {
            bucket.pause(wait);
        }
    }
}

struct Bucket {
    per_second: usize,
    state: Mutex<State>,
    /// A token came back (its call ended): the dispatcher may have one to hand on.
    returned: Notify,
}

#[derive(Default)]
struct State {
    /// Calls let through whose reply is not in yet.
    in_flight: usize,
    /// When each call of the last second ended, oldest first.
    ended: VecDeque<Instant>,
    paused_until: Option<Instant>,
    urgent: VecDeque<oneshot::Sender<Token>>,
    resync: VecDeque<oneshot::Sender<Token>>,
    /// A task hands tokens to the queued calls as they come back.
    dispatching: bool,
}

const WINDOW: Duration = Duration::from_secs(1);

/// When the next call may go.
enum Free {
    Now,
    At(Instant),
    /// When a call in flight ends.
    OnReturn,
}

impl State {
    fn free(&mut self, per_second: usize, now: Instant) -> Free {
        if let Some(until) = self.paused_until.filter(|until| *until > now) {
            return Free::At(until);
        }
        while self.ended.front().is_some_and(|t| *t + WINDOW <= now) {
            self.ended.pop_front();
        }
        if self.in_flight + self.ended.len() < per_second {
            return Free::Now;
        }
        match self.ended.front() {
            Some(oldest) => Free::At(*oldest + WINDOW),
            None => Free::OnReturn,
        }
    }
}

impl Bucket {
    fn new(per_second: usize) -> Self {
        Bucket {
            per_second,
            state: Mutex::default(),
            returned: Notify::new(),
        }
    }

    async fn take(self: &Arc<Self>, priority: Priority) -> Token {
        let rx = {
            let mut state = self.state.lock().expect("bucket");
            // A resync waits behind any queued call, an urgent call behind urgent ones only.
            let ahead = match priority {
                Priority::Urgent => !state.urgent.is_empty(),
                Priority::Resync => !state.urgent.is_empty() || !state.resync.is_empty(),
            };
            if !ahead && matches!(state.free(self.per_second, Instant::now()), Free::Now) {
                state.in_flight += 1;
                return Token(Some(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Urgent => state.urgent.push_back(tx),
                Priority::Resync => state.resync.push_back(tx),
            }
            if !state.dispatching {
                state.dispatching = true;
                tokio::spawn(self.clone().dispatch());
            }
            rx
        };
        // The dispatcher sends every queued caller a token before it stops.
        rx.await.unwrap_or(Token(None))
    }

    /// Hand tokens to the queued calls, urgent first, as the window allows.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("bucket");
                loop {
                    match state.free(self.per_second, Instant::now()) {
                        Free::Now => {}
                        other => break other,
                    }
                    let Some(waiter) = state
                        .urgent
                        .pop_front()
                        .or_else(|| state.resync.pop_front())
                    else {
                        state.dispatching = false;
                        return;
                    };
                    state.in_flight += 1;
                    // A caller that gave up (its pass was cancelled) drops the token unused,
                    // which returns it.
                    if let Err(mut token) = waiter.send(Token(Some(self.clone()))) {
                        // Not through `returned`: the state is locked here.
                        token.0 = None;
                        state.in_flight -= 1;
                    }
                }
            };
            match wait {
                Free::At(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.returned.notified() => {}
                },
                _ => self.returned.notified().await,
            }
        }
    }

    /// A call ended: its token counts for one more second.
    fn returned(&self) {
        let mut state = self.state.lock().expect("bucket");
        state.in_flight = state.in_flight.saturating_sub(1);
        state.ended.push_back(Instant::now());
        drop(state);
        self.returned.notify_one();
    }

    fn pause(&self, wait: Duration) {
        let mut state = self.state.lock().expect("bucket");
        let until = Instant::now() + wait;
        if state.paused_until.is_none_or(|p| p < until) {
            state.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    //! In real time (a few seconds each): every bound asserted holds by construction however
    //! slow the machine, or has a margin of most of a second.
    use super::*;
    use crate::api::ApiSecret;

    fn account(name: &str) -> AccountId {
        ApiSecret::new(name).account()
    }

    const MS: Duration = Duration::from_millis(1);

    /// When each of `calls` calls taken at once was let through, after `start`, in order.
    async fn granted(
        limits: &Arc<AccountLimits>,
        calls: usize,
        account: AccountId,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let tasks: Vec<_> = (0..calls)
            .map(|_| {
                let limits = limits.clone();
                tokio::spawn(async move {
                    let _call = limits.take(account).await;
                    start.elapsed()
                })
            })
            .collect();
        let mut at = Vec::new();
        for task in tasks {
            at.push(task.await.unwrap());
        }
        at.sort();
        at
    }

    #[tokio::test]
    async fn an_account_gets_its_calls_per_second_and_no_more() {
        let limits = Arc::new(AccountLimits::new(10));
        let at = granted(&limits, 25, account("a")).await;
        assert!(at[9] < 900 * MS, "the first ten go at once: {at:?}");
        for (i, later) in at.iter().enumerate().skip(10) {
            assert!(
                *later >= at[i - 10] + WINDOW,
                "call {i} within a second of call {}: {at:?}",
                i - 10
            );
        }
    }

    #[tokio::test]
    async fn accounts_are_limited_apart_and_zero_is_no_limit() {
        let limits = Arc::new(AccountLimits::new(5));
        let (a, b) = tokio::join!(
            granted(&limits, 10, account("a")),
            granted(&limits, 10, account("b"))
        );
        // Shared, the first five of one account would wait a second behind the other's.
        assert!(a[4] < 900 * MS && b[4] < 900 * MS, "{a:?} {b:?}");
        assert!(a[5] >= WINDOW && b[5] >= WINDOW, "{a:?} {b:?}");
        let unlimited = granted(&Arc::new(AccountLimits::new(0)), 1000, account("a")).await;
        assert!(unlimited[999] < 900 * MS);
    }

    #[tokio::test]
    async fn a_429_pauses_the_whole_account() {
        let limits = Arc::new(AccountLimits::new(10));
        limits.pause(account("a"), 1500 * MS);
        let at = granted(&limits, 5, account("a")).await;
        assert!(at[0] >= 1490 * MS, "nothing before the Retry-After: {at:?}");
        // A shorter pause does not cut a longer one short; another account is not paused.
        limits.pause(account("a"), 1200 * MS);
        limits.pause(account("a"), 100 * MS);
        let at = granted(&limits, 1, account("a")).await;
        assert!(at[0] >= 1190 * MS, "{at:?}");
        let other = granted(&limits, 1, account("b")).await;
        assert!(other[0] < 900 * MS, "{other:?}");
    }

    #[tokio::test]
    async fn urgent_calls_go_ahead_of_queued_resyncs() {
        let limits = Arc::new(AccountLimits::new(2));
        let a = account("a");
        let order = Arc::new(Mutex::new(Vec::new()));
        let call = |priority: Priority, name: &'static str| {
            let (limits, order) = (limits.clone(), order.clone());
            tokio::spawn(with_priority(priority, async move {
                let _call = limits.take(a).await;
                order.lock().unwrap().push(name);
            }))
        };
        // Five resyncs queue up (two go at once), then an edit comes in.
        let mut tasks: Vec<_> = (0..5).map(|_| call(Priority::Resync, "resync")).collect();
        tokio::time::sleep(10 * MS).await;
        tasks.push(call(Priority::Urgent, "edit"));
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(
            order.iter().position(|n| *n == "edit"),
            Some(2),
            "the edit takes the first token that comes back: {order:?}"
        );
    }

    /// The API sees a call when it arrives, somewhere between its token and its reply: the
    /// token counts until a second after the reply, so slow calls slow the rate down rather
    /// than let two seconds' worth arrive in one.
    #[tokio::test]
    async fn a_token_counts_until_a_second_after_the_reply() {
        let limits = Arc::new(AccountLimits::new(2));
        let a = account("a");
        let start = Instant::now();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let limits = limits.clone();
                tokio::spawn(async move {
                    let _call = limits.take(a).await;
                    let went = start.elapsed();
                    tokio::time::sleep(300 * MS).await;
                    went
                })
            })
            .collect();
        let mut went = Vec::new();
        for t in tasks {
            went.push(t.await.unwrap());
        }
        went.sort();
        assert!(went[1] < 900 * MS, "{went:?}");
        assert!(
            went[2] >= 1300 * MS,
            "a second after the first reply: {went:?}"
        );
        // A call given up while it waited returns its token unused.
        let waiting = {
            let limits = limits.clone();
            tokio::spawn(async move {
                let _call = limits.take(a).await;
            })
        };
        tokio::time::sleep(10 * MS).await;
        waiting.abort();
        tokio::time::sleep(2500 * MS).await;
        let at = Instant::now();
        let _one = limits.take(a).await;
        let _two = limits.take(a).await;
        assert!(at.elapsed() < 900 * MS, "both tokens are back");
    }
}
