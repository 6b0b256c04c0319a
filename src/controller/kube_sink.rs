//! The executor's status store in a cluster: the status subresource, written with a full
//! replace that carries the resourceVersion read, so a concurrent writer gets 409 instead of
//! both writers going on to POST. Notes become Events (see `events`).

use std::sync::Arc;

use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::lean::LeanAgentDynamics;
use crate::executor::{GenerateCall, Note, SaveError, StatusSink};
use crate::metrics::Metrics;
use crate::resource::{AgentDynamics, AgentDynamicsStatus};

pub struct KubeStatusSink {
    /// The replies are parsed lean (see `lean`).
    api: Api<LeanAgentDynamics>,
    /// The object as last read or written: its resourceVersion is the write precondition.
    object: AgentDynamics,
    /// The resourceVersions this pass's writes (and re-reads) replaced.
    replaced: Vec<String>,
    metrics: Arc<Metrics>,
    notes: Vec<Note>,
}

impl KubeStatusSink {
    pub fn new(api: &Api<AgentDynamics>, object: AgentDynamics, metrics: Arc<Metrics>) -> Self {
        KubeStatusSink {
            api: Api::namespaced(
                api.clone().into_client(),
                &object.namespace().unwrap_or_default(),
            ),
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

impl StatusSink for KubeStatusSink {
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
            Err(err) => Err(SaveError::Other(err.to_string())),
        }
    }

    async fn reload(&mut self) -> Result<AgentDynamicsStatus, SaveError> {
        match self.api.get_status(&self.object.name_any()).await {
            Ok(fresh) => {
                self.replaced.extend(self.object.resource_version());
                self.object = fresh.0;
                Ok(self.object.status.clone().unwrap_or_default())
            }
            Err(err) => Err(SaveError::Other(err.to_string())),
        }
    }

    fn generate_called(&mut self, outcome: GenerateCall) {
        self.metrics.generate_call(outcome.as_str());
    }

    fn note(&mut self, note: Note) {
        tracing::info!(object = %self.object.name_any(), reason = %note.reason, "{}", note.message);
        self.notes.push(note);
    }
}
