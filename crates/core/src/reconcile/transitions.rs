//! How the status changes: after GET (`take_in_remote`), before a generate call (`with_marker`), after
//! the remote calls (`after_generate`, `after_update`), and at the end of every pass (`settle`).
//! Pure functions, shared by the controller and the file mode.

use jiff::Timestamp;

use crate::resource::{AgentDynamicsStatus, GenerateOutcome, PendingGeneration};
use crate::wire::{DynamicsState, GenerateReply, Regeneration, RemoteStatus, UpdateReply};

use super::conditions::{conditions, Health};
use super::plan::{
    backoff, job_visible, ready_health, report_error, Adoption, Input, Purchase, RemoteError,
    Report, CREDITS_PER_GENERATION,
};
use super::plan::{future_skew, url_identity, whole_seconds};
use super::reasons;

/// Copy what GET reported into the status (only fields that describe the remote), and settle
/// the pending marker against it:
/// - a marker whose outcome was never recorded (the pass that wrote it died, or could not save
///   the reply) becomes an unknown outcome, counted as a generation that may have been charged;
/// - a marker whose job GET now shows is cleared, and a call of unknown outcome is adopted as
///   bought (its inputs recorded, never sent again).
pub fn take_in_remote(status: &AgentDynamicsStatus, remote: &DynamicsState) -> TakenIn {
    let outdated = record_outdated(status, remote);
    let mut status = status.clone();
    let mut adopted = false;
    if let Some(pending) = &mut status.pending_generation {
        if pending.outcome.is_none() {
            pending.outcome = Some(GenerateOutcome::Unknown);
            let key = pending.inputs_hash.clone();
            status.generations += 1;
            status.remember_bought(&key);
        }
    }
    if let Some(pending) = status.pending_generation.clone() {
        if job_visible(&pending, Some(remote)) {
            adopted = pending.outcome == Some(GenerateOutcome::Unknown);
            status.generate_hash = Some(pending.inputs_hash);
            status.pending_generation = None;
        }
    }
    status.remote_status = remote.status.as_ref().map(|s| s.as_str().to_string());
    if status.accepted_remote_status != status.remote_status {
        // Accepted only while the API keeps reporting it.
        status.accepted_remote_status = None;
    }
    status.model_url = remote.model_url.clone();
    status.gestures = remote.gestures.keys().cloned().collect();
    TakenIn {
        status,
        adopted,
        outdated,
    }
}

/// Whether the API changed since the record was written, with no call of ours to explain it:
/// the record said the agent's dynamics were finished (no marker, a terminal status) and GET
/// shows another model, other gestures or another status. A restored status or state file
/// looks like this; so does a generation bought by someone else meanwhile. Either way, what
/// the record says was bought may be out of date, and nothing is bought on its strength.
fn record_outdated(stored: &AgentDynamicsStatus, remote: &DynamicsState) -> bool {
    let Some(seen) = stored.remote_status.as_deref() else {
        return false;
    };
    if stored.pending_generation.is_some() || RemoteStatus::parse(seen).is_in_progress() {
        return false;
    }
    let url = |u: Option<&str>| u.map(url_identity).map(str::to_string);
    let gestures: Vec<&String> = remote.gestures.keys().collect();
    let before: Vec<&String> = stored.gestures.iter().collect();
    remote.status.as_ref().map(RemoteStatus::as_str) != Some(seen)
        || url(remote.model_url.as_deref()) != url(stored.model_url.as_deref())
        || gestures != before
}

/// The status after a GET, and whether a generate call of unknown outcome was found to have landed.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenIn {
    pub status: AgentDynamicsStatus,
    pub adopted: bool,
    /// The stored record is older than what GET shows (see `record_outdated`).
    pub outdated: bool,
}

/// Inputs taken as bought without a call (`Action::Adopt`): nothing is counted, unless the
/// call was this object's own and its status never counted it.
pub fn adopted(status: &AgentDynamicsStatus, plan: &Adoption) -> AgentDynamicsStatus {
    let mut status = status.clone();
    if plan.own_call {
        status.generations += 1;
    }
    status.generate_hash = Some(plan.inputs_hash.clone());
    status.remember_bought(&plan.inputs_hash);
    if status
        .pending_generation
        .as_ref()
        .is_some_and(|p| p.inputs_hash == plan.inputs_hash)
    {
        // `resolve accept` of a call that never showed: taken as bought as it stands.
        status.pending_generation = None;
    }
    if let Some(accepted) = &plan.accept_status {
        status.accepted_remote_status = Some(accepted.clone());
    }
    status
}

/// The status to write (with the resourceVersion just read) before a generate call.
pub fn with_marker(
    status: &AgentDynamicsStatus,
    plan: &Purchase,
    remote: Option<&DynamicsState>,
    now: Timestamp,
) -> AgentDynamicsStatus {
    let mut status = status.clone();
    let said_nothing = !remote.is_some_and(DynamicsState::has_dynamics);
    // Dynamics this agent had before: bought by this object, or by anyone (the ledger).
    let had_dynamics = status.generate_hash.is_some()
        || status.generations > 0
        || plan
            .ledger
            .record
            .purchases
            .iter()
            .any(|p| p.key != plan.inputs_hash);
    status.pending_generation = Some(PendingGeneration {
        inputs_hash: plan.inputs_hash.clone(),
        since: whole_seconds(now).to_string(),
        outcome: None,
        previous_remote_status: remote
            .and_then(|r| r.status.as_ref())
            .map(|s| s.as_str().to_string()),
        previous_model_url: remote.and_then(|r| r.model_url.clone()),
        previous_gestures: remote
            .map(|r| r.gestures.keys().cloned().collect())
            .unwrap_or_default(),
        previous_hidden: said_nothing && had_dynamics,
        // Set by the executor where the ledger is written before the call.
        ledger_first: false,
    });
    status
}

/// The end of every pass: conditions, observedGeneration, the echo of the
/// reconcile-requested-at annotation.
pub fn settle(input: &Input, status: AgentDynamicsStatus, report: &Report) -> AgentDynamicsStatus {
    let mut status = status;
    status.conditions = conditions(
        &status.conditions,
        &report.health,
        input.generation,
        input.now,
    );
    status.observed_generation = Some(input.generation);
    // A stamp from the future (a machine with a wrong clock wrote it) is taken as now and
    // rewritten, so it cannot hold the object until that date.
    let now = whole_seconds(input.now).to_string();
    if let Some(pending) = &mut status.pending_generation {
        if future_skew(&pending.since, input.now).is_some() {
            pending.since = now.clone();
        }
    }
    if let Some(t) = &mut status.last_generation_time {
        if future_skew(t, input.now).is_some() {
            *t = now;
        }
    }
    status.last_handled_reconcile_at = input.requested_at.map(str::to_string);
    // Any pass that writes consumes the resolve value: one that finds no stall to resolve
    // must not leave a `retry` waiting for a later stall.
    status.last_handled_resolve = input.resolve.map(str::to_string);
    status
}

/// What a generate call's outcome does to a status that carries its marker. Kept apart from
/// the report so that a status write that conflicts can re-apply it to a fresh copy: a
/// purchase is never forgotten.
pub fn record_generate_outcome(
    status: &AgentDynamicsStatus,
    plan: &Purchase,
    outcome: Result<&GenerateReply, &RemoteError>,
    now: Timestamp,
) -> AgentDynamicsStatus {
    let mut status = status.clone();
    let ours = status
        .pending_generation
        .as_ref()
        .is_some_and(|p| p.inputs_hash == plan.inputs_hash && p.outcome.is_none());
    if !ours {
        // Already recorded (or the marker is another call's): recording twice would double-count.
        return status;
    }
    match outcome {
        Err(err) if err.refused => {
            status.pending_generation = None;
        }
        Ok(reply) => {
            status.generations += 1;
            status.remember_bought(&plan.inputs_hash);
            status.generate_hash = Some(plan.inputs_hash.clone());
            status.last_generation_time = Some(whole_seconds(now).to_string());
            if let Some(p) = &mut status.pending_generation {
                p.outcome = Some(GenerateOutcome::Accepted);
            }
            if let Some(s) = &reply.status {
                status.remote_status = Some(s.as_str().to_string());
            }
        }
        Err(_) => {
            status.generations += 1;
            status.remember_bought(&plan.inputs_hash);
            status.last_generation_time = Some(whole_seconds(now).to_string());
            if let Some(p) = &mut status.pending_generation {
                p.outcome = Some(GenerateOutcome::Unknown);
            }
        }
    }
    status
}

/// After a generate call: the status to write and the report. Accepted or not, the marker
/// stays until GET shows the job; only a definite refusal clears it.
pub fn after_generate(
    input: &Input,
    plan: &Purchase,
    outcome: Result<&GenerateReply, &RemoteError>,
) -> (AgentDynamicsStatus, Report) {
    let status = record_generate_outcome(input.status, plan, outcome, input.now);
    let report = match outcome {
        Ok(_) => Report::poll(
            Health::progressing(
                reasons::GENERATION_STARTED,
                format!(
                    "generation {} started ({CREDITS_PER_GENERATION} credits)",
                    status.generations
                ),
            ),
            input,
        ),
        Err(err) if err.refused => report_error(err, input),
        Err(err) => {
            let message = format!("the generate call's outcome is unknown ({}); nothing is sent again: the API is watched for a sign that it landed", err.message);
            Report::backoff(
                Health::progressing(reasons::GENERATION_OUTCOME_PENDING, message),
                backoff(input).min(input.settings.poll_max),
            )
        }
    };
    (status, report)
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
            status.regenerations += 1;
            Report::new(
                Health::progressing(
                    reasons::REGENERATING,
                    "dynamics applied; the API is regenerating the movements",
                ),
                input.settings.poll_min,
            )
        }
        _ => Report::new(ready_health(input.spec, &status), input.settings.resync),
    };
    (status, report)
}
