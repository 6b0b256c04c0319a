//! State shared by all reconcile passes: clients, the executor (with its generation guard), the
//! Event recorder, metrics, the object cache, and per-object failure counts for backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action as ControllerAction;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use crate::api::{ApiSecret, DynamicsClient};
use crate::executor::{Access, Executor, ObjectView, PassResult, RecordAccepted};
use crate::metrics::Metrics;
use crate::reconcile::guard::AccountGuards;
use crate::reconcile::ownership::{owner_instead_of, Claimant};
use crate::reconcile::{Blocker, Health};
use crate::resource::{AgentDynamics, APPROVE, RECONCILE_REQUESTED_AT, RESOLVE};

use super::events::EventPublisher;
use super::index::ObjectIndex;
use super::kube_sink::KubeStatusSink;
use super::lane::KeyLocks;
use super::{secrets, Error, RunConfig};

pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    executor: Executor,
    events: EventPublisher,
    index: Arc<ObjectIndex>,
    /// The AgentDynamics the watch covers, for `others_naming` before a first list is done.
    objects: Api<AgentDynamics>,
    default_secret: Option<ApiSecret>,
    failures: Mutex<HashMap<String, u32>>,
    /// One pass per object at a time, from the controller or the generation lane.
    pub locks: KeyLocks,
    /// Looks at running generations, for the generation lane (see `lane`).
    polls: tokio::sync::mpsc::UnboundedSender<(String, Duration)>,
    /// uids of deleted objects whose cleanup ran and whose finalizer this process removed, the
    /// last few: a pass queued meanwhile may still find the cache's copy with the finalizer,
    /// and must not run the cleanup (its Disable PUT) a second time.
    released: Mutex<std::collections::VecDeque<String>>,
}

/// How many released uids are remembered (the cache catches up within moments).
const RELEASED_KEPT: usize = 1024;

/// What follows a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Look at the running generation again after this long, in the generation lane.
    Lane(Duration),
    /// Look again after this long.
    Requeue(Duration),
    /// Nothing until the object changes.
    AwaitChange,
}

pub fn key_of(obj: &AgentDynamics) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The reference a pass is scheduled by: namespace and name only. `ObjectRef::from_obj` also
/// carries the resourceVersion and uid, which nothing here reads, and kube's scheduler keeps two
/// copies of each scheduled reference (about 200 bytes per object more).
pub fn reference_to(obj: &AgentDynamics) -> ObjectRef<AgentDynamics> {
    ObjectRef::new(&obj.name_any()).within(&obj.namespace().unwrap_or_default())
}

impl Context {
    pub fn new(
        client: Client,
        config: &RunConfig,
        metrics: Arc<Metrics>,
        index: Arc<ObjectIndex>,
        wake: tokio::sync::mpsc::UnboundedSender<String>,
        polls: tokio::sync::mpsc::UnboundedSender<(String, Duration)>,
        budgets: Option<Arc<crate::executor::Budgets>>,
    ) -> Self {
        let api = DynamicsClient::new(config.api.clone())
            .expect("the API client builds from a valid configuration")
            .with_observer(metrics.clone());
        let guards = AccountGuards::new(
            config.max_concurrent_generations,
            config.generations_per_hour,
        );
        let mut executor = Executor::new(api, guards, config.settings.clone())
            .with_record_accepted(RecordAccepted::WithNextWrite)
            .with_wake(wake);
        if let Some(budgets) = budgets {
            executor = executor.with_budgets(budgets);
        }
        executor = executor.with_approval(crate::executor::ApprovalScope::new(
            config.require_approval.clone(),
        ));
        let objects = match &config.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        Context {
            events: EventPublisher::new(client.clone(), std::env::var("POD_NAME").ok()),
            client,
            metrics,
            executor,
            index,
            objects,
            default_secret: config.default_secret.clone(),
            failures: Mutex::new(HashMap::new()),
            locks: KeyLocks::default(),
            polls,
            released: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The cleanup of this object ran and its finalizer is gone.
    pub fn mark_released(&self, obj: &AgentDynamics) {
        let Some(uid) = obj.uid() else { return };
        let mut released = self.released.lock().expect("released lock");
        released.push_back(uid);
        if released.len() > RELEASED_KEPT {
            released.pop_front();
        }
    }

    /// Whether `obj` is a deleted object this process already released.
    pub fn was_released(&self, obj: &AgentDynamics) -> bool {
        obj.metadata.deletion_timestamp.is_some()
            && obj
                .uid()
                .is_some_and(|uid| self.released.lock().expect("released lock").contains(&uid))
    }

    /// One pass of the controller (apply or cleanup). A look at a running generation is left to
    /// the generation lane; the controller keeps only the drift resync of the object then.
    pub async fn controller_pass(
        &self,
        api: &Api<AgentDynamics>,
        obj: Arc<AgentDynamics>,
        deleting: bool,
    ) -> Result<ControllerAction, Error> {
        let key = key_of(&obj);
        Ok(match self.pass(api, obj, deleting).await? {
            Next::Lane(after) => {
                let _ = self.polls.send((key, after));
                ControllerAction::requeue(self.resync())
            }
            Next::Requeue(after) => ControllerAction::requeue(after),
            Next::AwaitChange => ControllerAction::await_change(),
        })
    }

    /// One pass for one object (apply or cleanup). Callers hold the object's lock.
    pub async fn pass(
        &self,
        api: &Api<AgentDynamics>,
        obj: Arc<AgentDynamics>,
        deleting: bool,
    ) -> Result<Next, Error> {
        let key = key_of(&obj);
        let Some(others) = self.others_naming(&obj).await else {
            // The start looks at it when the list is complete.
            return Ok(Next::AwaitChange);
        };
        let conflict = conflict_owner(&obj, &others).map(|owner| Blocker::Conflict { owner });
        let access = match Access::before_secret(obj.spec.suspend, conflict) {
            Some(access) => access,
            None => Access::from_secret(
                secrets::resolve(&self.client, &obj, self.default_secret.as_ref()).await,
            ),
        };
        let view = ObjectView {
            key: key.clone(),
            uid: obj.uid().unwrap_or_default(),
            spec: obj.spec.clone(),
            status: obj.status.clone().unwrap_or_default(),
            generation: obj.metadata.generation.unwrap_or_default(),
            deleting,
            requested_at: obj.annotations().get(RECONCILE_REQUESTED_AT).cloned(),
            resolve: obj.annotations().get(RESOLVE).cloned(),
            approve: obj.annotations().get(APPROVE).cloned(),
            access,
        };
        let failures = self.failures(&key);
        let mut sink = KubeStatusSink::new(api, (*obj).clone(), self.metrics.clone());
        // A settled object's pass is a resync: its calls wait behind those of work pending.
        let priority = if crate::reconcile::start::is_settled(&obj) {
            crate::api::Priority::Resync
        } else {
            crate::api::Priority::Urgent
        };
        let result =
            crate::api::with_priority(priority, self.executor.pass(&view, failures, &mut sink))
                .await;
        let (notes, replaced, mut written) = sink.finish();
        super::index::trim_for_cache(&mut written);
        let written = Arc::new(written);
        // Remembered before the Event goes out: the watch may deliver the write meanwhile.
        self.index.wrote(&obj, replaced, written.clone());
        self.events.publish(&written, notes).await;
        let (waiting, in_flight) = self.executor.guard_load();
        self.metrics.generation_guard(waiting, in_flight);
        match result? {
            PassResult::Released => {
                self.metrics.reconciled("released");
                self.metrics.object_state(&key, None);
                self.failures.lock().expect("failures lock").remove(&key);
                Ok(Next::AwaitChange)
            }
            PassResult::Requeue { next, health } => {
                let (after, transient) = (next.after(), next.is_backoff());
                let result = match &health {
                    Health::Ready { .. } => "ready",
                    Health::Progressing { .. } => "progressing",
                    Health::Stalled { .. } => "stalled",
                    Health::Suspended => "suspended",
                };
                self.metrics.reconciled(result);
                self.metrics.object_state(&key, Some(result));
                if matches!(health, Health::Stalled { .. }) || transient {
                    self.metrics.error(health.reason());
                }
                let mut failures = self.failures.lock().expect("failures lock");
                if transient {
                    *failures.entry(key.clone()).or_default() += 1;
                } else {
                    failures.remove(&key);
                }
                if deleting {
                    // kube's finalizer helper removes the finalizer on any Ok from cleanup: an
                    // object whose cleanup has to wait (no Secret, the API down) must return an
                    // error, or it would go without its Disable PUT.
                    return Err(Error::CleanupWaiting {
                        key,
                        reason: health.reason().to_string(),
                        after,
                    });
                }
                Ok(if next.looks_at_a_generation() {
                    Next::Lane(after)
                } else {
                    Next::Requeue(after)
                })
            }
        }
    }

    /// The other objects naming `obj`'s agent, for the ownership rule: from the index once a
    /// first list is complete. Before that (the pass of an object whose user waits, during a
    /// start's list: see `start`) the index has seen only part of them, so the API server is
    /// asked for all of them by the agent's selectable field. None when it cannot answer
    /// (Kubernetes before 1.31 selects no custom field): the pass waits for the list.
    async fn others_naming(&self, obj: &AgentDynamics) -> Option<Vec<Claimant>> {
        if self.index.listed() {
            return Some(self.index.others_naming(obj));
        }
        match objects_naming(&self.objects, &obj.spec.agent_id).await {
            Ok(named) => Some(
                named
                    .iter()
                    .filter(|other| other.uid() != obj.uid())
                    .map(super::index::claimant)
                    .collect(),
            ),
            Err(err) => {
                tracing::debug!(object = %key_of(obj), error = %err, "the objects naming its agent cannot be listed yet; it waits for the first list");
                None
            }
        }
    }

    /// The drift resync: how long the controller leaves an object it handed to the lane.
    pub fn resync(&self) -> Duration {
        self.executor.settings().resync
    }

    /// `obj`, or the newer copy this process's own status write returned.
    pub fn freshest(&self, obj: Arc<AgentDynamics>) -> Arc<AgentDynamics> {
        self.index.freshest(obj)
    }

    fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .expect("failures lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Backoff for an unexpected error: the same doubling as remote errors, with jitter.
    pub fn backoff_after_error(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(key.to_string()).or_default();
        *n += 1;
        let settings = self.executor.settings();
        crate::backoff::jitter(crate::backoff::exponential(
            settings.backoff_base,
            settings.backoff_max,
            *n - 1,
        ))
    }
}

/// Every object `api` reaches that names `agent`, listed by the API server by field (the CRD
/// declares `spec.agentId` selectable). agentIds hold no character a field selector escapes.
pub async fn objects_naming(
    api: &Api<AgentDynamics>,
    agent: &str,
) -> kube::Result<Vec<AgentDynamics>> {
    let params = kube::api::ListParams::default().fields(&format!("spec.agentId={agent}"));
    Ok(api.list(&params).await?.items)
}

/// The object that owns `obj`'s agent instead of it, by the one ownership rule, among the
/// `others` that name the same agent.
pub fn conflict_owner(obj: &AgentDynamics, others: &[Claimant]) -> Option<String> {
    let me = Claimant::new(
        key_of(obj),
        obj.status.as_ref(),
        obj.creation_timestamp().map(|t| t.0),
        obj.metadata.deletion_timestamp.is_some(),
    );
    owner_instead_of(&me, others)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn obj(ns: &str, name: &str, agent: &str, created: i64) -> Arc<AgentDynamics> {
        let mut o = AgentDynamics::new(
            name,
            crate::resource::AgentDynamicsSpec {
                agent_id: agent.into(),
                ..Default::default()
            },
        );
        o.metadata.namespace = Some(ns.into());
        o.metadata.uid = Some(format!("{ns}-{name}"));
        o.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        Arc::new(o)
    }

    /// The rule itself is a table in `reconcile::ownership`; this checks the watched objects
    /// are read into it through the index (agent, status, creation time).
    #[test]
    fn cluster_objects_feed_the_ownership_rule() {
        let first = obj("a", "first", "A1", 100);
        let second = obj("b", "second", "A1", 200);
        let other = obj("a", "other", "A2", 50);
        let mut busy = (*obj("c", "busy", "A2", 300)).clone();
        busy.status = Some(crate::resource::AgentDynamicsStatus {
            generations: 1,
            ..Default::default()
        });
        let busy = Arc::new(busy);
        let index = ObjectIndex::default();
        for o in [&first, &second, &other, &busy] {
            index.follow(kube::runtime::watcher::Event::Apply((**o).clone()));
        }
        let owner = |o: &AgentDynamics| conflict_owner(o, &index.others_naming(o));
        assert_eq!(owner(&first), None);
        assert_eq!(owner(&second), Some("a/first".to_string()));
        assert_eq!(owner(&other), Some("c/busy".to_string()));
        assert_eq!(owner(&busy), None);
    }
}
