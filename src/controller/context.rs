//! State shared by all reconcile passes: clients, the executor (with its generation guard), the
//! Event recorder, metrics, the object cache, and per-object failure counts for backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action as ControllerAction;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use crate::api::{ApiSecret, DynamicsClient};
use crate::executor::{Executor, ObjectView, PassResult};
use crate::metrics::Metrics;
use crate::reconcile::guard::GenerationGuard;
use crate::reconcile::{Blocker, Health};
use crate::resource::{AgentDynamics, RECONCILE_REQUESTED_AT};

use super::kube_sink::KubeStatusSink;
use super::{secrets, Error, RunConfig};

pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    executor: Executor,
    recorder: Recorder,
    store: Store<AgentDynamics>,
    default_secret: Option<ApiSecret>,
    failures: Mutex<HashMap<String, u32>>,
}

pub fn key_of(obj: &AgentDynamics) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl Context {
    pub fn new(
        client: Client,
        config: &RunConfig,
        metrics: Arc<Metrics>,
        store: Store<AgentDynamics>,
        wake: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Self {
        let api = DynamicsClient::new(config.api.clone())
            .expect("the API client builds from a valid configuration")
            .with_observer(metrics.clone());
        let guard = Arc::new(Mutex::new(GenerationGuard::new(
            config.max_concurrent_generations,
            config.generations_per_hour,
        )));
        let reporter = Reporter {
            controller: "dynamics-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            executor: Executor::new(api, guard, config.settings.clone()).with_wake(wake),
            store,
            default_secret: config.default_secret.clone(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// One pass for one object (apply or cleanup).
    pub async fn pass(
        &self,
        api: &Api<AgentDynamics>,
        obj: Arc<AgentDynamics>,
        deleting: bool,
    ) -> Result<ControllerAction, Error> {
        let key = key_of(&obj);
        let (secret, blocker) = if obj.spec.suspend {
            (None, None)
        } else if let Some(owner) = conflict_owner(&obj, &self.store.state()) {
            (None, Some(Blocker::Conflict { owner }))
        } else {
            match secrets::resolve(&self.client, &obj, self.default_secret.as_ref()).await {
                Ok(secret) => (Some(secret), None),
                Err(blocker) => (None, Some(blocker)),
            }
        };
        let view = ObjectView {
            key: key.clone(),
            uid: obj.uid().unwrap_or_default(),
            spec: obj.spec.clone(),
            status: obj.status.clone().unwrap_or_default(),
            generation: obj.metadata.generation.unwrap_or_default(),
            deleting,
            requested_at: obj.annotations().get(RECONCILE_REQUESTED_AT).cloned(),
            blocker,
        };
        let failures = self.failures(&key);
        let mut sink = KubeStatusSink::new(api.clone(), (*obj).clone(), self.metrics.clone());
        let result = self
            .executor
            .pass(&view, secret.as_ref(), failures, &mut sink)
            .await;
        sink.publish(&self.recorder).await;
        match result? {
            PassResult::Released => {
                self.metrics.reconciled("released");
                self.metrics.object_ready(&key, None);
                self.failures.lock().expect("failures lock").remove(&key);
                Ok(ControllerAction::await_change())
            }
            PassResult::Requeue {
                after,
                health,
                transient,
            } => {
                let result = match &health {
                    Health::Ready { .. } => "ready",
                    Health::Progressing { .. } => "progressing",
                    Health::Stalled { .. } => "stalled",
                    Health::Suspended => "suspended",
                };
                self.metrics.reconciled(result);
                if matches!(health, Health::Stalled { .. }) || transient {
                    self.metrics.error(health.reason());
                }
                self.metrics
                    .object_ready(&key, Some(matches!(health, Health::Ready { .. })));
                let mut failures = self.failures.lock().expect("failures lock");
                if transient {
                    *failures.entry(key).or_default() += 1;
                } else {
                    failures.remove(&key);
                }
                Ok(ControllerAction::requeue(after))
            }
        }
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
        let base = settings
            .backoff_base
            .saturating_mul(2u32.saturating_pow((*n - 1).min(16)))
            .min(settings.backoff_max);
        base + base.mul_f64(rand::random::<f64>() * 0.1)
    }
}

/// Two objects naming one agent: one owns it and every other is in conflict. The owner is the
/// one that has already sent something for the agent (its status shows a generation or a
/// pending one), else the oldest by creation time, else the first by namespace/name: creation
/// times have one-second resolution, so a newer object must never win a tie against one that
/// is already at work. Objects being deleted own nothing.
pub fn conflict_owner(obj: &AgentDynamics, all: &[Arc<AgentDynamics>]) -> Option<String> {
    let rank = |o: &AgentDynamics| {
        let acted = o.status.as_ref().is_some_and(|s| {
            s.generations > 0 || s.generate_hash.is_some() || s.pending_generation.is_some()
        });
        (!acted, o.creation_timestamp().map(|t| t.0), key_of(o))
    };
    let mine = rank(obj);
    all.iter()
        .filter(|o| o.spec.agent_id == obj.spec.agent_id && o.uid() != obj.uid())
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .map(|o| rank(o))
        .filter(|r| *r < mine)
        .min()
        .map(|(_, _, key)| key)
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

    #[test]
    fn the_oldest_object_owns_an_agent() {
        let first = obj("a", "first", "A1", 100);
        let second = obj("b", "second", "A1", 200);
        let other = obj("a", "other", "A2", 50);
        let all = vec![first.clone(), second.clone(), other.clone()];
        assert_eq!(conflict_owner(&first, &all), None);
        assert_eq!(conflict_owner(&second, &all), Some("a/first".to_string()));
        assert_eq!(conflict_owner(&other, &all), None);
    }

    #[test]
    fn an_object_at_work_keeps_its_agent_against_a_newer_one_of_the_same_second() {
        let mut owner = (*obj("a", "owner", "A1", 100)).clone();
        owner.status = Some(crate::resource::AgentDynamicsStatus {
            generations: 1,
            ..Default::default()
        });
        let owner = Arc::new(owner);
        // Sorts first by name, created in the same second, has done nothing yet.
        let intruder = obj("a", "intruder", "A1", 100);
        let all = vec![owner.clone(), intruder.clone()];
        assert_eq!(conflict_owner(&owner, &all), None);
        assert_eq!(conflict_owner(&intruder, &all), Some("a/owner".to_string()));
    }

    #[test]
    fn same_creation_second_is_ordered_by_name() {
        let x = obj("a", "x", "A1", 100);
        let y = obj("a", "y", "A1", 100);
        let all = vec![y.clone(), x.clone()];
        assert_eq!(conflict_owner(&x, &all), None);
        assert_eq!(conflict_owner(&y, &all), Some("a/x".to_string()));
    }
}
