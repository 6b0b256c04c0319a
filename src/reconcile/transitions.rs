//! How the status changes: after GET (`observe`), before a generate call (`with_marker`), after
//! the remote calls (`after_generate`, `after_update`), and at the end of every pass (`settle`).
//! Pure functions, shared by the controller and the file mode.

use jiff::Timestamp;

use crate::api::{DynamicsState, GenerateReply, Regeneration, RemoteStatus, UpdateReply};
use crate::resource::{AgentDynamicsStatus, PendingGeneration};

use super::conditions::{conditions, Health};
use super::plan::{
    backoff, generate_refused, report_error, GeneratePlan, Input, RemoteError, Report,
};

/// Copy what GET reported into the status (only fields that describe the remote).
pub fn observe(status: &AgentDynamicsStatus, remote: &DynamicsState) -> AgentDynamicsStatus {
    let mut status = status.clone();
    status.remote_status = remote.status.as_ref().map(|s| s.as_str().to_string());
    status.model_url = remote.model_url.clone();
    status.gestures = remote.gestures.keys().cloned().collect();
    status
}

/// The status to write (with the resourceVersion just read) before a generate call.
pub fn with_marker(
    status: &AgentDynamicsStatus,
    plan: &GeneratePlan,
    remote: Option<&DynamicsState>,
    now: Timestamp,
) -> AgentDynamicsStatus {
    let mut status = status.clone();
    status.pending_generation = Some(PendingGeneration {
        inputs_hash: plan.inputs_hash.clone(),
        since: whole_seconds(now).to_string(),
        previous_remote_status: remote
            .and_then(|r| r.status.as_ref())
            .map(|s| s.as_str().to_string()),
        previous_model_url: remote.and_then(|r| r.model_url.clone()),
    });
    status
}

/// The end of every pass: adopt a landed generation, conditions, observedGeneration, the echo of
/// the reconcile-requested-at annotation.
pub fn settle(input: &Input, status: AgentDynamicsStatus, report: &Report) -> AgentDynamicsStatus {
    let mut status = status;
    if let Some(hash) = &report.adopt {
        let sent_at = status
            .pending_generation
            .as_ref()
            .and_then(|p| p.since.parse::<Timestamp>().ok())
            .unwrap_or(input.now);
        accept_generation(&mut status, hash, sent_at);
    }
    status.conditions = conditions(
        &status.conditions,
        &report.health,
        input.generation,
        input.now,
    );
    status.observed_generation = Some(input.generation);
    status.last_handled_reconcile_at = input.requested_at.map(str::to_string);
    status
}

/// After a generate call: the status to write and the report. The marker stays when the outcome
/// is unknown (timeout, dropped connection, 500), so the next pass looks before sending again.
pub fn after_generate(
    input: &Input,
    plan: &GeneratePlan,
    outcome: Result<&GenerateReply, &RemoteError>,
) -> (AgentDynamicsStatus, Report) {
    let mut status = input.status.clone();
    match outcome {
        Ok(reply) => {
            accept_generation(&mut status, &plan.inputs_hash, input.now);
            status.remote_status = Some(
                reply
                    .status
                    .as_ref()
                    .map_or("processing", RemoteStatus::as_str)
                    .to_string(),
            );
            let report = Report::new(
                Health::progressing(
                    "GenerationStarted",
                    format!("generation {} started (250 credits)", status.generations),
                ),
                input.settings.poll_min,
            );
            (status, report)
        }
        Err(err) if generate_refused(err.kind) => {
            status.pending_generation = None;
            (status, report_error(err, input))
        }
        Err(err) => {
            let message = format!("the generate call's outcome is unknown ({}); the API will be checked before anything is sent again", err.message);
            let mut report = Report::new(
                Health::progressing("GenerationOutcomeUnknown", message),
                backoff(input),
            );
            report.transient = true;
            (status, report)
        }
    }
}

/// After a PUT of the dynamics block.
pub fn after_update(
    input: &Input,
    dynamics_hash: &str,
    outcome: Result<&UpdateReply, &RemoteError>,
) -> (AgentDynamicsStatus, Report) {
    let mut status = input.status.clone();
    let reply = match outcome {
        Ok(reply) => reply,
        Err(err) => return (status, report_error(err, input)),
    };
    status.dynamics_hash = Some(dynamics_hash.to_string());
    status.applied_for_generation = Some(status.generations);
    let report = match &reply.regeneration {
        Some(Regeneration::Started) => {
            status.remote_status = Some(RemoteStatus::Generating.as_str().to_string());
            Report::new(
                Health::progressing(
                    "Regenerating",
                    "dynamics applied; the API is regenerating the movements",
                ),
                input.settings.poll_min,
            )
        }
        _ => Report::new(
            Health::Ready {
                message: format!(
                    "dynamics of agent {} are generated and applied",
                    input.spec.agent_id
                ),
            },
            input.settings.resync,
        ),
    };
    (status, report)
}

/// Record a generation the API accepted (or that a marker proves it accepted).
pub fn accept_generation(status: &mut AgentDynamicsStatus, inputs_hash: &str, at: Timestamp) {
    status.generate_hash = Some(inputs_hash.to_string());
    status.generations += 1;
    status.pending_generation = None;
    status.last_generation_time = Some(whole_seconds(at).to_string());
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}
