//! The executor's status store in a cluster: the status subresource, written with a full
//! replace that carries the resourceVersion read, so a concurrent writer gets 409 instead of
//! both writers going on to POST. Notes become Events (see `events`). The purchase ledger is a
//! cluster-scoped `DynamicsLedger` per agent, written the same way (conditional on its
//! resourceVersion).

use std::sync::Arc;

use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use super::lean::LeanAgentDynamics;
use crate::executor::{GenerateCall, LedgerStore, Note, SaveError, StatusSink};
use crate::metrics::Metrics;
use crate::reconcile::ledger::{record_name, LedgerState};
use crate::reconcile::plan::LedgerWrite;
use crate::resource::{AgentDynamics, AgentDynamicsStatus, DynamicsLedger};

pub struct KubeStatusSink {
    /// The replies are parsed lean (see `lean`).
    api: Api<LeanAgentDynamics>,
    ledgers: Api<DynamicsLedger>,
    /// The object as last read or written: its resourceVersion is the write precondition.
    object: AgentDynamics,
    /// The resourceVersions this pass's writes (and re-reads) replaced.
    replaced: Vec<String>,
    metrics: Arc<Metrics>,
    notes: Vec<Note>,
}

impl KubeStatusSink {
    pub fn new(api: &Api<AgentDynamics>, object: AgentDynamics, metrics: Arc<Metrics>) -> Self {
        let client = api.clone().into_client();
        KubeStatusSink {
            ledgers: Api::all(client.clone()),
            api: Api::namespaced(client, &object.namespace().unwrap_or_default()),
            object,
            replaced: Vec::new(),
            metrics,
            notes: Vec::new(),
        }
    }

    /// The pass's notes (for Events), the versions it replaced and the object as it left it.
    pub fn finish(self) -> (Vec<Note>, Vec<String>, AgentDynamics) {
        (self.notes, self.replaced, self.object)
    }
}

impl LedgerStore for KubeStatusSink {
    fn written_before_calls(&self) -> bool {
        // `Executor::generate` writes the purchase after the marker and before the POST.
        true
    }

    async fn read_ledger(&mut self, agent_id: &str) -> LedgerState {
        match self.ledgers.get_opt(&record_name(agent_id)).await {
            Ok(None) => LedgerState::Read {
                record: None,
                version: None,
            },
            // Names are collision-free by construction; a record of another agent under this
            // name was not written by this operator, and is never taken as this agent's.
            Ok(Some(found)) if found.spec.agent_id != agent_id => {
                LedgerState::Unavailable(format!(
                    "DynamicsLedger {} belongs to agent {}, not {agent_id}",
                    found.name_any(),
                    found.spec.agent_id
                ))
            }
            Ok(Some(found)) => LedgerState::Read {
                version: found.resource_version(),
                record: Some(found.spec),
            },
            Err(err) => LedgerState::Unavailable(format!("reading DynamicsLedger: {err}")),
        }
    }

    async fn write_ledger(
        &mut self,
        agent_id: &str,
        write: &LedgerWrite,
    ) -> Result<Option<String>, SaveError> {
        let name = record_name(agent_id);
        let object = DynamicsLedger {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                resource_version: write.version.clone(),
                ..Default::default()
            },
            spec: write.record.clone(),
        };
        let params = PostParams::default();
        let written = match &write.version {
            None => self.ledgers.create(&params, &object).await,
            Some(_) => self.ledgers.replace(&name, &params, &object).await,
        };
        match written {
            Ok(written) => {
                tracing::debug!(object = %self.object.name_any(), ledger = %name, "purchase ledger written");
                self.metrics.ledger_written();
                Ok(written.resource_version())
            }
            // 409: changed since read (or created meanwhile): another writer got there first.
            Err(kube::Error::Api(status)) if status.is_conflict() => Err(SaveError::Conflict),
            Err(err) => Err(SaveError::store(
                format!("writing DynamicsLedger {name}"),
                err,
            )),
        }
    }
}

impl StatusSink for KubeStatusSink {
    fn stored(&self) -> Option<&AgentDynamicsStatus> {
        self.object.status.as_ref()
    }

    async fn save(&mut self, status: &AgentDynamicsStatus) -> Result<(), SaveError> {
        let mut next = LeanAgentDynamics(self.object.clone());
        next.0.status = Some(status.clone());
        let started = std::time::Instant::now();
        // Only the status subresource is written: spec and metadata stay as the user (or Argo CD) left them.
        match self
            .api
            .replace_status(&self.object.name_any(), &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                tracing::debug!(object = %self.object.name_any(), elapsed_ms = started.elapsed().as_millis() as u64, "status written");
                self.metrics.status_written();
                self.replaced.extend(self.object.resource_version());
                self.object = written.0;
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => Err(SaveError::Conflict),
            Err(err) => Err(SaveError::store("writing the status", err)),
        }
    }

    async fn reload(&mut self) -> Result<AgentDynamicsStatus, SaveError> {
        // Through the main resource with the verb the cache already uses (a list narrowed to
        // this name): the operator is granted neither get on agentdynamics nor on its status.
        let name = self.object.name_any();
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        match self.api.list(&params).await {
            Ok(list) => {
                let fresh = list
                    .items
                    .into_iter()
                    .next()
                    .ok_or_else(|| SaveError::Gone(format!("AgentDynamics {name}")))?;
                self.replaced.extend(self.object.resource_version());
                self.object = fresh.0;
                Ok(self.object.status.clone().unwrap_or_default())
            }
            Err(err) => Err(SaveError::store("re-reading the object", err)),
        }
    }

    async fn still_current(&mut self) -> bool {
        // One list narrowed to this name (the verb the cache uses), only before a PUT: an edit,
        // never a resync of a converged object.
        let name = self.object.name_any();
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        match self.api.list(&params).await {
            Ok(list) => list.items.first().is_some_and(|fresh| {
                fresh.0.metadata.deletion_timestamp.is_none()
                    && fresh.0.metadata.uid == self.object.metadata.uid
                    && fresh.0.metadata.generation == self.object.metadata.generation
            }),
            Err(err) => {
                tracing::debug!(object = %name, error = %err, "could not confirm the object before a PUT");
                false
            }
        }
    }

    fn generate_called(&mut self, outcome: GenerateCall, account: &str) {
        let namespace = self.object.namespace().unwrap_or_default();
        self.metrics
            .generate_call(outcome.as_str(), &namespace, account);
    }

    fn regeneration_started(&mut self) {
        self.metrics.regeneration_started();
    }

    fn budget_wait(&mut self, budget: &str) {
        self.metrics.budget_wait(budget);
    }

    fn note(&mut self, note: Note) {
        tracing::info!(object = %self.object.name_any(), reason = %note.reason, "{}", note.message);
        self.notes.push(note);
    }
}
