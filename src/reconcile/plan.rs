//! `plan`: the one function that decides what to do next for an `AgentDynamics`. No I/O: the
//! controller and the file mode gather the inputs, call it, perform the action it names and feed
//! the outcome back through `after_generate` / `after_update`. Every rule of the design notes
//! (sections 4 and 5) is a branch here and a row in `tests`.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::{ApiErrorKind, DynamicsState, GenerateRequest, RemoteStatus, UpdateRequest};
use crate::resource::{AgentDynamicsSpec, AgentDynamicsStatus, DeletionPolicy};

use super::conditions::Health;
use super::desired::{
    disable_request, dynamics_hash, generate_request, inputs_hash, update_request,
};

/// Timings that shape requeues. Defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requeue of a converged object, to notice remote drift.
    pub resync: Duration,
    /// Fastest and slowest poll while the remote generates.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Retry of a Stalled object (a spec or Secret change retries at once through the watch).
    pub stalled_retry: Duration,
    /// Transient errors back off from `backoff_base` doubling up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a pending marker may be unexplained before the generate call is sent again: longer
    /// than a generate request can take, so a slow call is never doubled.
    pub pending_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(600),
            poll_min: Duration::from_secs(1),
            poll_max: Duration::from_secs(30),
            stalled_retry: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            pending_grace: Duration::from_secs(60),
        }
    }
}

/// A failed remote call, reduced to what decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    pub kind: ApiErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl From<&crate::api::ApiError> for RemoteError {
    fn from(err: &crate::api::ApiError) -> Self {
        RemoteError {
            kind: err.kind(),
            message: err.to_string(),
            retry_after: err.retry_after(),
        }
    }
}

/// What GET told us.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Found(DynamicsState),
    Failed(RemoteError),
}

/// Why nothing may be sent for this object right now, found before any remote call.
#[derive(Debug, Clone, PartialEq)]
pub enum Blocker {
    /// Another object already manages this agent.
    Conflict { owner: String },
    /// The API secret could not be read; the message says which Secret and key.
    Secret { reason: String, message: String },
}

/// Everything `plan` looks at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub spec: &'a AgentDynamicsSpec,
    pub status: &'a AgentDynamicsStatus,
    /// metadata.generation, for observedGeneration.
    pub generation: i64,
    /// Value of the reconcile-requested-at annotation, echoed into status once handled.
    pub requested_at: Option<&'a str>,
    pub deleting: bool,
    pub blocker: Option<Blocker>,
    /// `None` until the caller has done the GET that `Action::Observe` asks for.
    pub remote: Option<&'a Observation>,
    /// Consecutive transient failures of this object (kept in memory by the caller).
    pub failures: u32,
    pub now: Timestamp,
    pub settings: &'a Settings,
}

/// The next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// GET the remote state, then call `plan` again with it.
    Observe,
    /// Write the pending marker, then POST once.
    Generate(GeneratePlan),
    /// PUT the dynamics block.
    Update {
        request: UpdateRequest,
        dynamics_hash: String,
    },
    /// Deletion with `Disable`: PUT enabled=false, then release.
    Disable(UpdateRequest),
    /// Remove the finalizer: nothing (more) to do remotely.
    Release,
    /// No remote call: write this status and requeue.
    Report(Report),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GeneratePlan {
    pub request: GenerateRequest,
    pub inputs_hash: String,
    /// Same key for a resend of the same generation, so an API that honours it charges once.
    pub idempotency_key: String,
    /// True when a marker was found and the earlier call evidently did not land.
    pub resend: bool,
}

/// A status to write and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub health: Health,
    pub requeue: Duration,
    /// A marker was found and the remote shows the call landed: record it as accepted.
    pub adopt: Option<String>,
    /// The error was transient: the caller counts it for the next backoff.
    pub transient: bool,
}

impl Report {
    pub fn new(health: Health, requeue: Duration) -> Self {
        Report {
            health,
            requeue,
            adopt: None,
            transient: false,
        }
    }
}

/// Decide the next step. Pure: same inputs, same answer.
pub fn plan(input: &Input) -> Action {
    let Input {
        spec,
        status,
        settings,
        ..
    } = input;

    if input.deleting {
        return plan_deletion(input);
    }
    if spec.suspend {
        return Action::Report(Report::new(Health::Suspended, settings.resync));
    }
    match &input.blocker {
        Some(Blocker::Conflict { owner }) => {
            let message = format!(
                "agent {} is already managed by AgentDynamics {owner}; delete one of the two (nothing is sent for this one)",
                spec.agent_id
            );
            return Action::Report(Report::new(
                Health::stalled("Conflict", message),
                settings.stalled_retry,
            ));
        }
        Some(Blocker::Secret { reason, message }) => {
            return Action::Report(Report::new(
                Health::stalled(reason, message.clone()),
                settings.stalled_retry,
            ));
        }
        None => {}
    }

    let remote = match input.remote {
        None => return Action::Observe,
        Some(Observation::Failed(err)) => return Action::Report(report_error(err, input)),
        Some(Observation::Found(remote)) => remote,
    };
    let hash = inputs_hash(spec);

    // Crash safety: a marker we did not clear means a generate call whose outcome we never saw.
    if let Some(pending) = &status.pending_generation {
        let before = (
            pending.previous_remote_status.as_deref(),
            pending.previous_model_url.as_deref(),
        );
        let now_seen = (
            remote.status.as_ref().map(RemoteStatus::as_str),
            remote.model_url.as_deref(),
        );
        let landed = remote
            .status
            .as_ref()
            .is_some_and(RemoteStatus::is_in_progress)
            || now_seen != before;
        if landed {
            let mut report = Report::new(
                Health::progressing("GenerationAdopted", "a generate call sent before a restart or timeout did land; following it instead of sending another"),
                poll_interval(input),
            );
            report.adopt = Some(pending.inputs_hash.clone());
            return Action::Report(report);
        }
        let age = since(&pending.since, input.now);
        if age < settings.pending_grace {
            let message = format!(
                "a generate call was sent {}s ago and the API does not show it yet; waiting before deciding to send it again",
                age.as_secs()
            );
            return Action::Report(Report::new(
                Health::progressing("GenerationPending", message),
                settings.pending_grace - age,
            ));
        }
        return Action::Generate(generate_plan(input, hash, true));
    }

    match &remote.status {
        Some(s) if s.is_in_progress() => {
            let mut message = format!("the API reports {}", s.as_str());
            if status.generate_hash.as_deref() != Some(hash.as_str()) {
                message
                    .push_str("; the spec changed meanwhile: one more generation follows this one");
            }
            return Action::Report(Report::new(
                Health::progressing("Generating", message),
                poll_interval(input),
            ));
        }
        _ => {}
    }

    if status.generate_hash.as_deref() != Some(hash.as_str()) || !remote.has_dynamics() {
        return Action::Generate(generate_plan(input, hash, false));
    }

    match &remote.status {
        Some(RemoteStatus::Failed) => {
            let detail = remote.error_message.as_deref().unwrap_or("no reason given");
            let message = format!(
                "the generation failed remotely ({detail}); change spec.regenerate (or another generate input) to try again"
            );
            Action::Report(Report::new(
                Health::stalled("GenerationFailed", message),
                settings.stalled_retry,
            ))
        }
        Some(RemoteStatus::Unknown(other)) => {
            let message = format!("the API reports status {other:?}, which this operator does not know; treating it as not ready");
            Action::Report(Report::new(
                Health::progressing("RemoteStatusUnknown", message),
                backoff(input),
            ))
        }
        _ => {
            let dynamics = dynamics_hash(spec);
            let applied = status.dynamics_hash.as_deref() == Some(dynamics.as_str())
                && status.applied_for_generation == Some(status.generations);
            if applied {
                let message = format!(
                    "dynamics of agent {} are generated and applied",
                    spec.agent_id
                );
                Action::Report(Report::new(Health::Ready { message }, settings.resync))
            } else {
                Action::Update {
                    request: update_request(&spec.dynamics_or_default()),
                    dynamics_hash: dynamics,
                }
            }
        }
    }
}

fn plan_deletion(input: &Input) -> Action {
    let Input { spec, status, .. } = input;
    // Nothing of ours is out there to switch off: never touched, suspended, orphaned, or owned by another object.
    let never_applied = status.dynamics_hash.is_none()
        && status.generations == 0
        && status.pending_generation.is_none();
    let conflicted = matches!(input.blocker, Some(Blocker::Conflict { .. }));
    if spec.deletion_policy == DeletionPolicy::Orphan || spec.suspend || never_applied || conflicted
    {
        return Action::Release;
    }
    if let Some(Blocker::Secret { reason, message }) = &input.blocker {
        let message = format!(
            "{message}; or set spec.deletionPolicy: Orphan to delete without calling the API"
        );
        return Action::Report(Report::new(
            Health::stalled(reason, message),
            input.settings.stalled_retry,
        ));
    }
    Action::Disable(disable_request(spec))
}

fn generate_plan(input: &Input, inputs_hash: String, resend: bool) -> GeneratePlan {
    GeneratePlan {
        request: generate_request(input.spec),
        idempotency_key: format!("{inputs_hash}-{}", input.status.generations + 1),
        inputs_hash,
        resend,
    }
}

/// Status and requeue for a failed call: permanent errors stall, the rest back off.
pub fn report_error(err: &RemoteError, input: &Input) -> Report {
    let settings = input.settings;
    match err.kind {
        ApiErrorKind::InvalidRequest
        | ApiErrorKind::Unauthorized
        | ApiErrorKind::InsufficientCredits
        | ApiErrorKind::NotFound => Report::new(
            Health::stalled(err.kind.reason(), err.message.clone()),
            settings.stalled_retry,
        ),
        _ => {
            let wait = err
                .retry_after
                .map_or_else(|| backoff(input), |after| after.max(settings.backoff_base));
            let mut report = Report::new(
                Health::progressing(err.kind.reason(), err.message.clone()),
                wait,
            );
            report.transient = true;
            report
        }
    }
}

/// Did the server answer in a way that proves the generate call was not accepted?
pub fn generate_refused(kind: ApiErrorKind) -> bool {
    matches!(
        kind,
        ApiErrorKind::InvalidRequest
            | ApiErrorKind::Unauthorized
            | ApiErrorKind::InsufficientCredits
            | ApiErrorKind::NotFound
            | ApiErrorKind::RateLimited
            | ApiErrorKind::Unavailable
    )
}

/// Poll sooner at the start of a generation and slower as it runs long: a quarter of the time
/// it has taken so far, within the configured bounds.
pub(crate) fn poll_interval(input: &Input) -> Duration {
    let elapsed = input
        .status
        .last_generation_time
        .as_deref()
        .map_or(Duration::ZERO, |t| since(t, input.now));
    (elapsed / 4).clamp(input.settings.poll_min, input.settings.poll_max)
}

/// Exponential backoff for the n-th consecutive transient failure (jitter is added by the caller).
pub fn backoff(input: &Input) -> Duration {
    let factor = 2u32.saturating_pow(input.failures.min(16));
    (input.settings.backoff_base.saturating_mul(factor)).min(input.settings.backoff_max)
}

/// Time from an RFC 3339 stamp to now; an unreadable stamp counts as long ago.
pub(crate) fn since(stamp: &str, now: Timestamp) -> Duration {
    stamp
        .parse::<Timestamp>()
        .ok()
        .and_then(|t| Duration::try_from(now.duration_since(t)).ok())
        .unwrap_or(Duration::MAX)
}
