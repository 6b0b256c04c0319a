//! The generation lane. Two kinds of pass decide how soon a generation slot is used again: the
//! pass of an object woken for a free slot (it sends the next generate call) and the look at a
//! running generation at its expected end. Through the controller's queue they wait behind
//! whatever else is due, such as the first passes of a thousand objects just created, while the
//! account's generation slots stand idle. The lane runs them at their time, each in a task of its
//! own, and hands anything else (deletion, errors) back to the controller.
//!
//! One pass per object at a time, whichever path runs it: both take the object's `KeyLocks`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::resource::{AgentDynamics, FINALIZER};

use super::context::{Context, Next};

/// A lock per object key, held for the whole of a pass; entries live only while in use.
#[derive(Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a pass runs; dropping it lets the next pass of the object in.
pub struct KeyLock<'a> {
    locks: &'a KeyLocks,
    key: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub async fn lock(&self, key: &str) -> KeyLock<'_> {
        let lock = self
            .locks
            .lock()
            .expect("key locks")
            .entry(key.to_string())
            .or_default()
            .clone();
        KeyLock {
            locks: self,
            key: key.to_string(),
            held: Some(lock.lock_owned().await),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().expect("key locks").len()
    }
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut locks = self.locks.locks.lock().expect("key locks");
        // Only the map holds it now (others clone it under this same lock): nobody waits.
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// Where the lane sends its passes and what it hands back.
#[derive(Clone)]
pub struct Lane {
    ctx: Arc<Context>,
    store: Store<AgentDynamics>,
    /// Into the controller's queue: objects the lane does not handle.
    controller: UnboundedSender<ObjectRef<AgentDynamics>>,
    /// Lane passes running at once (`--concurrency`, beside the controller's own): a burst of
    /// due looks waits here instead of opening as many connections and pass states at once.
    running: Arc<tokio::sync::Semaphore>,
    turns: Arc<Turns>,
}

/// The latest pass asked for each object, by ticket: an earlier one still waiting is dropped
/// when its time comes, because the later ask was made with fresher knowledge (a blind poll
/// overtaken by a look at the generation's expected end). Entries live while a pass waits.
#[derive(Default)]
struct Turns {
    latest: Mutex<HashMap<String, u64>>,
    next: std::sync::atomic::AtomicU64,
}

impl Turns {
    /// A pass is asked for `key`: its ticket, which supersedes any earlier one.
    fn ask(&self, key: &str) -> u64 {
        let ticket = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.latest
            .lock()
            .expect("lane turns")
            .insert(key.to_string(), ticket);
        ticket
    }

    /// Whether `ticket` is still the latest asked for `key`; if so, it is taken.
    fn take(&self, key: &str, ticket: u64) -> bool {
        let mut latest = self.latest.lock().expect("lane turns");
        if latest.get(key) != Some(&ticket) {
            return false;
        }
        latest.remove(key);
        true
    }
}

impl Lane {
    pub fn new(
        ctx: Arc<Context>,
        store: Store<AgentDynamics>,
        controller: UnboundedSender<ObjectRef<AgentDynamics>>,
        concurrency: usize,
    ) -> Self {
        Lane {
            ctx,
            store,
            controller,
            running: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            turns: Arc::default(),
        }
    }

    /// Run the passes asked for: objects woken for a free slot (at once), looks at running
    /// generations (at their time) and the passes of a start before its first list is
    /// complete (at once: the controller's queue waits for the list), until the senders are
    /// gone.
    pub async fn run(
        self,
        mut woken: UnboundedReceiver<String>,
        mut polls: UnboundedReceiver<(String, Duration)>,
        mut before_list: UnboundedReceiver<String>,
    ) {
        loop {
            tokio::select! {
                Some(key) = woken.recv() => self.schedule(key, Duration::ZERO),
                Some((key, after)) = polls.recv() => self.schedule(key, after),
                Some(key) = before_list.recv() => self.schedule(key, Duration::ZERO),
                else => break,
            }
        }
    }

    /// A pass for `key` ("namespace/name") after `after`, in a task of its own.
    fn schedule(&self, key: String, after: Duration) {
        let ticket = self.turns.ask(&key);
        let lane = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if !lane.turns.take(&key, ticket) {
                return;
            }
            let Ok(_running) = lane.running.clone().acquire_owned().await else {
                return; // Never closed.
            };
            // Boxed: a task is as large as its future, and a pass's is kilobytes. Thousands of
            // tasks wait at once (one per running generation); each holds only a pointer to
            // its pass until it runs.
            Box::pin(lane.pass(&key)).await;
        });
    }

    async fn pass(&self, key: &str) {
        let Some((namespace, name)) = key.split_once('/') else {
            return;
        };
        let reference = ObjectRef::<AgentDynamics>::new(name).within(namespace);
        let Some(obj) = self.store.get(&reference) else {
            return; // Gone: the controller has seen the deletion.
        };
        if obj.metadata.deletion_timestamp.is_some()
            || !obj.finalizers().iter().any(|f| f == FINALIZER)
        {
            // Cleanup and the first pass go through the finalizer helper, in the controller.
            let _ = self.controller.send(reference);
            return;
        }
        let _lock = self.ctx.locks.lock(key).await;
        let obj = self.ctx.freshest(obj);
        let api: Api<AgentDynamics> = Api::namespaced(self.ctx.client.clone(), namespace);
        match self.ctx.pass(&api, obj.clone(), false).await {
            Ok(Next::Lane(after)) => self.schedule(key.to_string(), after),
            // The controller keeps a drift resync for every object the lane looks at: a later
            // look needs nothing more.
            Ok(Next::Requeue(after)) if after >= self.ctx.resync() => {}
            Ok(Next::Requeue(after)) => self.hand_back(reference, after),
            Ok(Next::AwaitChange) => {}
            Err(err) => {
                let delay = super::retry_after_error(&obj, &err, &self.ctx);
                self.hand_back(reference, delay);
            }
        }
    }

    /// A pass by the controller after `after`.
    fn hand_back(&self, reference: ObjectRef<AgentDynamics>, after: Duration) {
        let controller = self.controller.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = controller.send(reference);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_pass_asked_for_an_object_runs() {
        let turns = Turns::default();
        let blind = turns.ask("ns/a");
        let other = turns.ask("ns/b");
        let look = turns.ask("ns/a");
        assert!(!turns.take("ns/a", blind), "overtaken by the later ask");
        assert!(turns.take("ns/b", other));
        assert!(turns.take("ns/a", look));
        assert!(!turns.take("ns/a", look), "taken once");
        assert!(
            turns.latest.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }

    #[tokio::test]
    async fn one_pass_per_key_at_a_time_and_no_entry_left_behind() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("ns/a").await;
        let other = locks.lock("ns/b").await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("ns/a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a second pass of ns/a waits for the first"
        );
        drop(other);
        assert_eq!(locks.len(), 1, "ns/b is released and forgotten");
        drop(first);
        waiting.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
