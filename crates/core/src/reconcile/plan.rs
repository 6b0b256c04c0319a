//! `plan`: the one function that decides what to do next for an `AgentDynamics`. No I/O:
//! `pass::step` calls it as the inputs are gathered (its `Observe`, `ConsultLedger` and `Adopt`
//! answers name what is still missing), the executor performs the action it names, and
//! `pass::fold` feeds the outcome back through `after_generate` / `after_update`. Every rule of
//! docs/design.md is a branch here and a row in `plan_tests`.

use std::time::Duration;

use jiff::Timestamp;

use crate::resource::{
    AdoptionPolicy, AgentDynamicsSpec, AgentDynamicsStatus, DeletionPolicy, DynamicsLedgerSpec,
    GenerateOutcome, ManagementPolicy, PendingGeneration,
};
use crate::wire::{ApiErrorKind, DynamicsState, GenerateRequest, RemoteStatus, UpdateRequest};

use super::conditions::Health;
use super::ledger::{self, Asker, LedgerState, Verdict};
use super::reasons;
use super::timing::GenerationTiming;

/// What one generation costs the account.
pub const CREDITS_PER_GENERATION: u64 = 250;
use super::desired::{
    disable_request, dynamics_hash, generate_request, inputs_hash, normalized_inputs,
    update_request,
};
/// The longest wait any answer of the API (Retry-After) can impose.
pub use crate::wire::MAX_REMOTE_WAIT;

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
    /// How long a generate call (accepted, or with an unknown outcome) may stay invisible in GET
    /// before the object is Stalled. Nothing is ever sent again for it automatically.
    pub visibility_window: Duration,
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
            visibility_window: Duration::from_secs(15 * 60),
        }
    }
}

impl Settings {
    /// Refuse settings that would loop hot, panic, or give up on a generate call before its
    /// reply could even arrive. `api_timeout` is the timeout of one API request.
    pub fn validate(&self, api_timeout: Duration) -> Result<(), String> {
        let positive = [
            ("--resync", self.resync),
            ("--poll-min", self.poll_min),
            ("--stalled-retry", self.stalled_retry),
            ("--api-timeout", api_timeout),
        ];
        for (flag, value) in positive {
            if value.is_zero() {
                return Err(format!("{flag} must be greater than 0 (it would loop hot)"));
            }
        }
        if self.poll_min > self.poll_max {
            return Err(format!(
                "--poll-min ({}) must not exceed --poll-max ({})",
                humantime::format_duration(self.poll_min),
                humantime::format_duration(self.poll_max)
            ));
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_max {
            return Err(
                "backoff base must be greater than 0 and at most the backoff maximum".into(),
            );
        }
        let floor = api_timeout.saturating_add(self.poll_max);
        if self.visibility_window < floor {
            return Err(format!(
                "--visibility-window ({}) must be at least --api-timeout plus --poll-max ({}): a shorter window gives up on generate calls whose job could not have shown yet",
                humantime::format_duration(self.visibility_window),
                humantime::format_duration(floor)
            ));
        }
        Ok(())
    }
}

/// A failed remote call, reduced to what decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    pub kind: ApiErrorKind,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// A generate call that failed this way certainly bought nothing (see
    /// `ApiError::refused_before_processing`).
    pub refused: bool,
}

impl RemoteError {
    /// An error of `kind` with no more detail than the kind gives (rule tables, other callers).
    pub fn of_kind(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
            retry_after: None,
            refused: kind.disposition().bought_nothing(),
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
    /// The object deciding (namespace/name and uid), as the purchase ledger knows objects.
    pub asker: Asker<'a>,
    pub spec: &'a AgentDynamicsSpec,
    pub status: &'a AgentDynamicsStatus,
    /// metadata.generation, for observedGeneration.
    pub generation: i64,
    /// Value of the reconcile-requested-at annotation, echoed into status once handled.
    pub requested_at: Option<&'a str>,
    /// Value of the resolve annotation, echoed into status once handled (`resource::RESOLVE`).
    pub resolve: Option<&'a str>,
    /// Whether a paid change needs the user's approval first, and the key approved.
    pub approval: Approval<'a>,
    pub deleting: bool,
    pub blocker: Option<Blocker>,
    /// `None` until the caller has done the GET that `Action::Observe` asks for.
    pub remote: Option<&'a Observation>,
    /// GET shows the agent changed since the stored status was written, with no call of ours
    /// to explain it (`transitions::TakenIn::outdated`): a restored record.
    pub record_outdated: bool,
    /// The agent's purchase record: `None` until the caller has read it for
    /// `Action::ConsultLedger` (only needed before buying or adopting).
    pub ledger: Option<&'a LedgerState>,
    /// Consecutive transient failures of this object (kept in memory by the caller).
    pub failures: u32,
    /// The running generation's age and its account's expected generation time, when known
    /// (kept in memory by the caller): polls then come at the expected end.
    pub timing: Option<GenerationTiming>,
    pub now: Timestamp,
    pub settings: &'a Settings,
}

/// Approval of paid changes (`--require-approval`): when `required`, a generation is bought only
/// for the key `approved` names (`resource::APPROVE`); a deliberate `resolve --retry` is its own
/// approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Approval<'a> {
    pub required: bool,
    pub approved: Option<&'a str>,
}

/// The next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// GET the remote state, then call `plan` again with it.
    Observe,
    /// Read the agent's purchase record, then call `plan` again with it.
    ConsultLedger,
    /// Take inputs as bought without a call: write `record` (if any) with the version read,
    /// record the key in status (`transitions::adopted`), then call `plan` again.
    Adopt(Adoption),
    /// Write the pending marker, then POST once.
    Generate(Purchase),
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
pub struct Purchase {
    pub request: GenerateRequest,
    pub inputs_hash: String,
    /// The purchase's key (with the object's uid), for an API that honours Idempotency-Key.
    pub idempotency_key: String,
    pub cause: GenerateCause,
    /// The agent's record with this purchase in it, written (conditionally on `version`)
    /// before the marker: a racing writer, another install or another object fails there and
    /// sends nothing.
    pub ledger: LedgerWrite,
}

/// A write of an agent's purchase record, conditional on the version read.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerWrite {
    pub record: DynamicsLedgerSpec,
    /// `None`: the record must not exist yet (created).
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    pub inputs_hash: String,
    pub from: AdoptFrom,
    /// The record to write first, when it changes (the claim, the adopted inputs).
    pub ledger: Option<LedgerWrite>,
    /// A remote status this operator does not know, accepted as finished by the user.
    pub accept_status: Option<String>,
    /// The purchase is this object's own call, which its status does not count yet (another
    /// replica sent it and recorded it only in the ledger): it is counted now.
    pub own_call: bool,
}

/// Where adopted inputs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptFrom {
    /// The ledger holds them as the agent's latest purchase (by an earlier object of this name,
    /// a deleted one, another install, or this object before its status was lost).
    Ledger,
    /// Nothing on record and the agent already has dynamics: they are taken as these inputs'.
    Existing,
    /// The user resolved a stall with `accept`: what the API shows is taken as the purchase.
    Resolved,
}

/// The user's answer to a stall about money (`resource::RESOLVE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Take what the API shows as the purchase; nothing is sent.
    Accept,
    /// Send the pending generate call once more, on purpose (counted, 250 credits).
    Retry,
}

/// The resolve annotation's value, when this object has not handled it yet. Anything after an
/// `@` only makes a value new; an unknown choice resolves nothing (and is consumed like any
/// other value, so it cannot fire later).
pub fn resolution(input: &Input) -> Option<Resolution> {
    let value = input.resolve?;
    if input.status.last_handled_resolve.as_deref() == Some(value) {
        return None;
    }
    match value.split('@').next().map(str::trim) {
        Some("accept") => Some(Resolution::Accept),
        Some("retry") => Some(Resolution::Retry),
        _ => None,
    }
}

/// Why a generation is bought: always a user's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateCause {
    /// The object has never bought one.
    FirstGeneration,
    /// Generate inputs (or `regenerate`) differ from those of the last purchase.
    InputsChanged,
    /// The user changed the inputs after an earlier call was given up on (Stalled).
    ReplacesStalledCall,
    /// The user asked to send it once more (`resolve retry` of a stall).
    Retry,
}

/// A status to write and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub health: Health,
    /// When to look again, and what kind of wait that is.
    pub next: Next,
    /// Whether the status this pass leaves is written now or waits for the next write.
    pub write: Write,
    /// The spec changed while a generation runs: one more generation follows it (what `plan -f`
    /// counts as credits to come).
    pub follow_up: bool,
}

/// When to look at the object again, and what kind of wait it is: one value, so that only the
/// combinations that mean something can be said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Look again after this: the resync of a converged object, a stall's slow retry, a wait
    /// for the user or for a limit. Spread by jitter.
    After(Duration),
    /// A transient failure: back off this long (spread by jitter). The caller counts it, so
    /// that the next backoff is longer.
    Backoff(Duration),
    /// A generation runs (its end frees a generation slot): look at it again after this,
    /// exactly then when it is the generation's expected end (`exact`; generations already end
    /// at different times), else spread by jitter.
    Poll { after: Duration, exact: bool },
}

impl Next {
    pub fn after(&self) -> Duration {
        match self {
            Next::After(after) | Next::Backoff(after) | Next::Poll { after, .. } => *after,
        }
    }

    /// The same kind of wait, of another length (the executor's jitter).
    pub fn with_after(self, after: Duration) -> Next {
        match self {
            Next::After(_) => Next::After(after),
            Next::Backoff(_) => Next::Backoff(after),
            Next::Poll { exact, .. } => Next::Poll { after, exact },
        }
    }

    pub fn is_backoff(&self) -> bool {
        matches!(self, Next::Backoff(_))
    }

    pub fn looks_at_a_generation(&self) -> bool {
        matches!(self, Next::Poll { .. })
    }

    /// Taken as it is, without jitter.
    pub fn is_exact(&self) -> bool {
        matches!(self, Next::Poll { exact: true, .. })
    }
}

/// When the status a pass leaves is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Now,
    /// What this look found changes nothing of substance: the write waits for the next one
    /// (see `write_can_wait`).
    WithNext,
}

impl Report {
    pub fn new(health: Health, requeue: Duration) -> Self {
        Report {
            health,
            next: Next::After(requeue),
            write: Write::Now,
            follow_up: false,
        }
    }

    /// A transient failure: back off `wait`.
    pub fn backoff(health: Health, wait: Duration) -> Self {
        Report {
            next: Next::Backoff(wait),
            ..Report::new(health, wait)
        }
    }

    /// Look at a running generation again: at its expected end when its account's generation
    /// time is known (exactly then), else by the fallback poll.
    pub fn poll(health: Health, input: &Input) -> Self {
        Report {
            next: Next::Poll {
                after: poll_interval(input),
                exact: input.timing.is_some(),
            },
            ..Report::new(health, Duration::ZERO)
        }
    }

    /// How long until the next look.
    pub fn requeue(&self) -> Duration {
        self.next.after()
    }
}

/// Decide the next step. Pure: same inputs, same answer.
pub fn plan(input: &Input) -> Action {
    approval_gate(input, decide(input))
}

/// A generation this object may not buy without approval waits for it, naming the key and
/// the cost; an approval of another key approves nothing.
fn approval_gate(input: &Input, action: Action) -> Action {
    let Action::Generate(generate) = &action else {
        return action;
    };
    let approval = input.approval;
    if !approval.required
        || generate.cause == GenerateCause::Retry
        || approval.approved == Some(generate.inputs_hash.as_str())
    {
        return action;
    }
    let other = match approval.approved {
        Some(key) => format!(" (the approval on the object is for key {key}, not this one)"),
        None => String::new(),
    };
    let message = format!(
        "this change buys one generation ({CREDITS_PER_GENERATION} credits) for key {}{other}; approval is required: {} (annotation {}={})",
        generate.inputs_hash,
        approve_command(input),
        crate::resource::APPROVE,
        generate.inputs_hash
    );
    Action::Report(Report::new(
        Health::progressing(reasons::APPROVAL_REQUIRED, message),
        input.settings.stalled_retry,
    ))
}

fn approve_command(input: &Input) -> String {
    format!("`dynamics-operator approve {}`", input.asker.object)
}

fn decide(input: &Input) -> Action {
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
    if spec.management_policy == ManagementPolicy::Observe {
        return plan_observe(input);
    }
    match &input.blocker {
        Some(Blocker::Conflict { owner }) => {
            let message = format!(
                "agent {} is already managed by AgentDynamics {owner}; delete one of the two (nothing is sent for this one)",
                spec.agent_id
            );
            return Action::Report(Report::new(
                Health::stalled(reasons::CONFLICT, message),
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
    let unknown = spec.unknown_field_paths();
    if !unknown.is_empty() {
        let message = format!(
            "{} {} not known to this operator (written for a newer version?); upgrade the operator or remove {}; nothing is sent meanwhile",
            unknown.join(", "),
            if unknown.len() == 1 { "is" } else { "are" },
            if unknown.len() == 1 { "it" } else { "them" },
        );
        return Action::Report(Report::new(
            Health::stalled(reasons::UNKNOWN_SPEC_FIELD, message),
            settings.stalled_retry,
        ));
    }

    let observation = match input.remote {
        None => return Action::Observe,
        Some(observation) => observation,
    };
    let hash = inputs_hash(spec);
    let remote = match observation {
        Observation::Found(remote) => Some(remote),
        // Right after a purchase, an API that lags may not know the job (or the agent's
        // dynamics) yet: that is "nothing to see", not a reason to stall.
        Observation::Failed(err)
            if err.kind == ApiErrorKind::NotFound && status.pending_generation.is_some() =>
        {
            None
        }
        Observation::Failed(err) => {
            if err.kind == ApiErrorKind::NotFound && status.generate_hash.as_deref() == Some(&hash)
            {
                if resolution(input) == Some(Resolution::Retry) {
                    return retry_plan(input, hash);
                }
                return Action::Report(remote_missing(input, "answers 404 for it"));
            }
            return Action::Report(report_error(err, input));
        }
    };
    // A status the user accepted as finished (`resolve accept` of RemoteStatusUnknown) is not
    // work under way.
    let in_progress = remote
        .and_then(|r| r.status.as_ref())
        .filter(|s| status.accepted_remote_status.as_deref() != Some(s.as_str()))
        .is_some_and(RemoteStatus::is_in_progress);

    // A generate call was sent and GET has not shown its job yet: nothing is sent for it again.
    if let Some(pending) = &status.pending_generation {
        if let Some(action) = plan_pending(input, pending, remote, &hash) {
            return action;
        }
    }
    // The last purchase, counting a pending call whose job GET now shows (`take_in_remote` records it
    // before `plan` runs; counted here too, so that `plan` alone can never buy it twice).
    let bought = match &status.pending_generation {
        Some(p) if job_visible(p, remote) => Some(p.inputs_hash.as_str()),
        _ => status.generate_hash.as_deref(),
    };

    if in_progress {
        let state = remote
            .and_then(|r| r.status.as_ref())
            .map_or("", RemoteStatus::as_str);
        if let Some(action) = unknown_status_outlasted(input, state, &hash) {
            return action;
        }
        let mut message = format!("the API reports {state}");
        if bought != Some(hash.as_str()) {
            message.push_str("; the spec changed meanwhile: one more generation follows this one");
        }
        let mut report = Report::poll(Health::progressing(reasons::GENERATING, message), input);
        if bought == Some(hash.as_str()) && write_can_wait(input) {
            report.write = Write::WithNext;
        }
        report.follow_up = bought != Some(hash.as_str());
        return Action::Report(report);
    }

    // Only a user's change buys: a spec never generated, or generate inputs that differ from
    // those of the last purchase. Never what GET shows.
    if bought != Some(hash.as_str()) {
        if let Observation::Failed(err) = observation {
            // Only a 404 gets here (tolerated while a call was pending): buy only on a GET that worked.
            return Action::Report(report_error(err, input));
        }
        if status.was_bought(&hash) {
            return match resolution(input) {
                Some(Resolution::Accept) => resolved_adopt(input, hash, None),
                Some(Resolution::Retry) => retry_plan(input, hash),
                None => Action::Report(inputs_already_bought(input)),
            };
        }
        return plan_purchase(input, remote, hash);
    }
    let Some(remote) = remote.filter(|r| r.has_dynamics()) else {
        if resolution(input) == Some(Resolution::Retry) {
            return retry_plan(input, hash);
        }
        return Action::Report(remote_missing(input, "shows no dynamics for it"));
    };

    if remote.status == Some(RemoteStatus::Failed) {
        if resolution(input) == Some(Resolution::Retry) {
            return retry_plan(input, hash);
        }
        let detail = remote.error_message.as_deref().unwrap_or("no reason given");
        let message = format!(
            "the generation failed remotely ({detail}); to generate again on purpose ({CREDITS_PER_GENERATION} credits): {}, or a new spec.regenerate value",
            resolve_command(input, "--retry")
        );
        return Action::Report(Report::new(
            Health::stalled(reasons::GENERATION_FAILED, message),
            settings.stalled_retry,
        ));
    }
    let dynamics = dynamics_hash(spec);
    let applied = status.dynamics_hash.as_deref() == Some(dynamics.as_str())
        && status.applied_for_generation == Some(status.generations);
    if applied {
        Action::Report(Report::new(ready_health(spec, status), settings.resync))
    } else {
        Action::Update {
            request: update_request(&spec.dynamics_or_default()),
            dynamics_hash: dynamics,
        }
    }
}

/// The rules while a marker is set. `None`: the marker no longer holds anything back (its job
/// showed up, or it is stale and the user asked for different inputs) and the usual rules apply.
fn plan_pending(
    input: &Input,
    pending: &PendingGeneration,
    remote: Option<&DynamicsState>,
    hash: &str,
) -> Option<Action> {
    let settings = input.settings;
    if job_visible(pending, remote) {
        // `take_in_remote` clears such a marker before `plan` runs; this only keeps `plan` safe alone.
        return None;
    }
    let age = since(&pending.since, input.now);
    let expired = age >= settings.visibility_window;
    if expired && pending.inputs_hash != hash {
        // Stalled on an invisible job, and the user asked for something else: their new change buys.
        return None;
    }
    if expired {
        // A stall about money: the user's resolution, if they gave one.
        match resolution(input) {
            Some(Resolution::Accept) => {
                return Some(Action::Adopt(Adoption {
                    inputs_hash: pending.inputs_hash.clone(),
                    from: AdoptFrom::Resolved,
                    ledger: None,
                    accept_status: None,
                    own_call: false,
                }))
            }
            Some(Resolution::Retry) => return Some(retry_plan(input, hash.to_string())),
            None => {}
        }
    }
    let waited =
        humantime::format_duration(Duration::from_secs(age.as_secs().min(u32::MAX as u64)));
    let skew = future_skew(&pending.since, input.now).map_or(String::new(), |ahead| {
        format!(
            " (its stamp was {} in the future: the clocks of the machine that wrote it and of this one differ; taken as now)",
            humantime::format_duration(Duration::from_secs(ahead.as_secs()))
        )
    });
    let health = match (pending.outcome, expired) {
        (Some(GenerateOutcome::Accepted), false) => Health::progressing(
            reasons::AWAITING_GENERATION,
            format!("the API accepted the generate call {waited} ago and does not show the job yet; waiting for it (nothing more is sent){skew}"),
        ),
        (Some(GenerateOutcome::Accepted), true) => Health::stalled(
            reasons::GENERATION_NOT_VISIBLE,
            format!("the API accepted a generate call (250 credits) {waited} ago but never showed the job; nothing more is sent automatically. {}", resolve_hint(input)),
        ),
        (_, false) => Health::progressing(
            reasons::GENERATION_OUTCOME_PENDING,
            format!("a generate call sent {waited} ago got no definite answer; waiting for the API to show whether it landed (nothing is sent again){skew}"),
        ),
        (_, true) => Health::stalled(
            reasons::GENERATION_OUTCOME_UNKNOWN,
            format!("a generate call sent {waited} ago got no definite answer and the API shows no sign of it; it may have been charged, so nothing is sent automatically. {}", resolve_hint(input)),
        ),
    };
    let requeue = if expired {
        settings.stalled_retry
    } else {
        // Look again by the end of the window, but never sooner than the fastest poll.
        poll_interval(input)
            .min(settings.visibility_window - age)
            .max(settings.poll_min)
    };
    Some(Action::Report(Report::new(health, requeue)))
}

/// Whether GET shows the job of the generate call `pending` stands for: work under way (any
/// status that is not terminal), or a result that differs from what was there before the call.
/// Nothing at all (no status, no model) is never evidence, and neither is the agent's old
/// model showing again after the API hid it (`previous_hidden`) for a call of unknown outcome.
pub fn job_visible(pending: &PendingGeneration, remote: Option<&DynamicsState>) -> bool {
    let Some(remote) = remote.filter(|r| r.has_dynamics()) else {
        return false;
    };
    if remote
        .status
        .as_ref()
        .is_some_and(RemoteStatus::is_in_progress)
    {
        return true;
    }
    if pending.previous_hidden && pending.outcome != Some(GenerateOutcome::Accepted) {
        // The API hid the agent's earlier dynamics before a call of unknown outcome: showing
        // them now tells nothing of this job (the earlier model and a new one look alike).
        return false;
    }
    let gestures: Vec<&String> = remote.gestures.keys().collect();
    let before: Vec<&String> = pending.previous_gestures.iter().collect();
    remote.status.as_ref().map(RemoteStatus::as_str) != pending.previous_remote_status.as_deref()
        || remote.model_url.as_deref().map(url_identity)
            != pending.previous_model_url.as_deref().map(url_identity)
        || gestures != before
}

/// A URL without its query and fragment: a signed URL (a new signature and expiry on every GET)
/// names the same model, so only a change of the rest is evidence of a new one.
pub fn url_identity(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A remote that lost what this object bought: never bought again on the operator's initiative.
fn remote_missing(input: &Input, what: &str) -> Report {
    let message = format!(
        "the API {what} although agent {} had dynamics generated for this spec; nothing is bought automatically. To generate again on purpose ({CREDITS_PER_GENERATION} credits): {}, or a new spec.regenerate value",
        input.spec.agent_id,
        resolve_command(input, "--retry")
    );
    Report::new(
        Health::stalled(reasons::REMOTE_DYNAMICS_MISSING, message),
        input.settings.stalled_retry,
    )
}

/// Inputs not bought for the agent yet: what the ledger says decides between buying,
/// adopting and waiting. What GET shows only ever argues against buying.
fn plan_purchase(input: &Input, remote: Option<&DynamicsState>, hash: String) -> Action {
    let settings = input.settings;
    let (record, version) = match read_ledger(input) {
        Ok(read) => read,
        Err(action) => return *action,
    };
    let agent = &input.spec.agent_id;
    match ledger::verdict(record, input.asker, &hash) {
        Verdict::HeldBy(_) if resolution(input) == Some(Resolution::Accept) => {
            resolved_adopt(input, hash, None)
        }
        Verdict::HeldBy(owner) => {
            let message = format!(
                "agent {agent} is held by AgentDynamics {owner} in the purchase ledger; nothing is sent for this one. Delete one of the two; if {owner} no longer exists, {} takes the agent over (nothing is sent)",
                resolve_command(input, "--accept")
            );
            Action::Report(Report::new(
                Health::stalled(reasons::CONFLICT, message),
                settings.stalled_retry,
            ))
        }
        Verdict::Bought => Action::Adopt(Adoption {
            own_call: ledger::own_call(record, input.asker, &hash)
                && !input.status.was_bought(&hash),
            inputs_hash: hash,
            from: AdoptFrom::Ledger,
            ledger: ledger::with_holder(record, agent, input.asker)
                .map(|record| LedgerWrite { record, version }),
            accept_status: None,
        }),
        Verdict::BoughtEarlier => match resolution(input) {
            Some(Resolution::Accept) => resolved_adopt(input, hash, None),
            Some(Resolution::Retry) => retry_plan(input, hash),
            None => Action::Report(inputs_already_bought(input)),
        },
        Verdict::NotBought { anything } => {
            let status = input.status;
            let nothing_on_record = !anything
                && status.generate_hash.is_none()
                && status.bought_keys.is_empty()
                && status.pending_generation.is_none();
            let exists = remote.is_some_and(DynamicsState::has_dynamics);
            // Sticky: the stall's own write records what GET showed, which must not clear it.
            let outdated = input.record_outdated
                || status
                    .condition(crate::resource::status::CONDITION_STALLED)
                    .is_some_and(|c| c.status == "True" && c.reason == reasons::STATE_OUTDATED);
            if outdated && !nothing_on_record {
                return match resolution(input) {
                    Some(Resolution::Accept) => resolved_adopt(input, hash, None),
                    Some(Resolution::Retry) => retry_plan(input, hash),
                    None => Action::Report(record_outdated(input)),
                };
            }
            let adopt =
                exists && nothing_on_record && input.spec.adoption_policy == AdoptionPolicy::Adopt;
            if let (false, Some(wait)) = (adopt, previous_purchase_young(input, record)) {
                let message = format!(
                    "the agent's last generation was bought by another object (or before this status was lost) and may still run unseen; this change is bought once in {}, when the two can be told apart",
                    humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                );
                return Action::Report(Report::new(
                    Health::progressing(reasons::WAITING_FOR_PREVIOUS_GENERATION, message),
                    wait.max(settings.poll_min),
                ));
            }
            match recording(input, &hash, if adopt { 0 } else { 1 }) {
                Ok(write) if adopt => Action::Adopt(Adoption {
                    inputs_hash: hash,
                    from: AdoptFrom::Existing,
                    ledger: Some(write),
                    accept_status: None,
                    own_call: false,
                }),
                Ok(write) => Action::Generate(generate_plan(input, hash, write)),
                Err(action) => *action,
            }
        }
    }
}

/// How long until the agent's latest purchase is older than the visibility window, when this
/// object does not track it itself (another object bought it, or this status was lost): until
/// then its job may still be invisible, and a new call's job could not be told apart from it.
fn previous_purchase_young(input: &Input, record: Option<&DynamicsLedgerSpec>) -> Option<Duration> {
    let latest = record?.purchases.last()?;
    // A stamp from the future (a replica with a wrong clock wrote it) tells no age: waiting on
    // it could hold the object until that date.
    if input.status.was_bought(&latest.key) || future_skew(&latest.at, input.now).is_some() {
        return None;
    }
    let age = since(&latest.at, input.now);
    input
        .settings
        .visibility_window
        .checked_sub(age)
        .filter(|w| !w.is_zero())
}

/// The agent's record as read, or the action that gets it (read it, or wait while it cannot be).
fn read_ledger<'a>(
    input: &'a Input,
) -> Result<(Option<&'a DynamicsLedgerSpec>, Option<String>), Box<Action>> {
    match input.ledger {
        None => Err(Box::new(Action::ConsultLedger)),
        Some(LedgerState::Unavailable(message)) => {
            let message = format!(
                "the purchase ledger cannot be read ({message}); nothing is bought until it can"
            );
            let report = Report::backoff(
                Health::progressing(reasons::LEDGER_UNAVAILABLE, message),
                backoff(input),
            );
            Err(Box::new(Action::Report(report)))
        }
        Some(LedgerState::Read { record, version }) => Ok((record.as_ref(), version.clone())),
    }
}

/// The agent's record as read, with `hash` recorded for this object (`calls`: 0 adopted, 1
/// bought), as a write conditional on the version read; or the action that gets the record.
fn recording(input: &Input, hash: &str, calls: u32) -> Result<LedgerWrite, Box<Action>> {
    let (record, version) = read_ledger(input)?;
    let record = ledger::with_purchase(
        record,
        &input.spec.agent_id,
        input.asker,
        hash,
        &normalized_inputs(input.spec),
        &whole_seconds(input.now).to_string(),
        calls,
    );
    Ok(LedgerWrite { record, version })
}

/// `resolve accept`: these inputs are taken as bought from what the API shows, and the ledger
/// says so (this object holding the agent). Nothing is sent.
fn resolved_adopt(input: &Input, hash: String, accept_status: Option<String>) -> Action {
    match recording(input, &hash, 0) {
        Ok(write) => Action::Adopt(Adoption {
            inputs_hash: hash,
            from: AdoptFrom::Resolved,
            ledger: Some(write),
            accept_status,
            own_call: false,
        }),
        Err(action) => *action,
    }
}

/// `resolve retry`: the call for these inputs once more, on purpose, recorded in the ledger as
/// one more call for the same inputs.
fn retry_plan(input: &Input, hash: String) -> Action {
    match recording(input, &hash, 1) {
        Ok(write) => {
            let mut generate = generate_plan(input, hash, write);
            generate.cause = GenerateCause::Retry;
            Action::Generate(generate)
        }
        Err(action) => *action,
    }
}

/// An unknown remote status that has lasted longer than the visibility window (the object has
/// been Reconciling that long) with no call of ours in flight: Stalled, not Generating forever.
fn unknown_status_outlasted(input: &Input, state: &str, hash: &str) -> Option<Action> {
    let status = input.status;
    let known = RemoteStatus::parse(state) != RemoteStatus::Unknown(state.to_string());
    if known || status.pending_generation.is_some() {
        return None;
    }
    let window = input.settings.visibility_window;
    let recent_call = status
        .last_generation_time
        .as_deref()
        .is_some_and(|t| since(t, input.now) < window);
    let reconciling_for = status
        .condition(crate::resource::status::CONDITION_RECONCILING)
        .filter(|c| c.status == "True")
        .map_or(Duration::ZERO, |c| {
            since(&c.last_transition_time.0.to_string(), input.now)
        });
    if recent_call || reconciling_for < window {
        return None;
    }
    match resolution(input) {
        Some(Resolution::Accept) => {
            return Some(resolved_adopt(
                input,
                hash.to_string(),
                Some(state.to_string()),
            ))
        }
        Some(Resolution::Retry) => return Some(retry_plan(input, hash.to_string())),
        None => {}
    }
    let message = format!(
        "the API has reported status {state:?}, which this operator does not know, for over {}, with no generation of ours in flight; nothing is sent. {}",
        humantime::format_duration(window),
        resolve_hint(input)
    );
    Some(Action::Report(Report::new(
        Health::stalled(reasons::REMOTE_STATUS_UNKNOWN, message),
        input.settings.stalled_retry,
    )))
}

/// The two ways out of a stall about money, named in its message.
fn resolve_hint(input: &Input) -> String {
    format!(
        "To take what the API shows as the purchase (nothing is sent): {}; to send the call once more on purpose ({CREDITS_PER_GENERATION} credits): {}",
        resolve_command(input, "--accept"),
        resolve_command(input, "--retry")
    )
}

/// The record is older than the API: the inputs may have been bought since it was written.
fn record_outdated(input: &Input) -> Report {
    let message = format!(
        "the record of what was bought for agent {} (this object's status or the state file) is older than what the API shows: its dynamics changed since the record was written, and not by a call on record (restored from a backup or a cache?). These inputs may already be bought, so nothing is bought. {}",
        input.spec.agent_id,
        resolve_hint(input)
    );
    Report::new(
        Health::stalled(reasons::STATE_OUTDATED, message),
        input.settings.stalled_retry,
    )
}

/// Back to inputs bought before (an edit reverted, two tools fighting over the spec): the API
/// holds a later generation, and these inputs are not bought twice.
fn inputs_already_bought(input: &Input) -> Report {
    let message = format!(
        "these generate inputs were bought before and the API now holds a later generation; nothing is bought twice automatically. {}",
        resolve_hint(input)
    );
    Report::new(
        Health::stalled(reasons::INPUTS_ALREADY_BOUGHT, message),
        input.settings.stalled_retry,
    )
}

/// The one way to buy again on purpose.
pub fn buy_again_hint() -> String {
    format!("To generate again on purpose, set spec.regenerate to a new value ({CREDITS_PER_GENERATION} credits)")
}

/// The command that resolves a stall of this object.
fn resolve_command(input: &Input, choice: &str) -> String {
    format!(
        "`dynamics-operator resolve {} {choice}`",
        input.asker.object
    )
}

pub fn ready_message(spec: &AgentDynamicsSpec) -> String {
    format!(
        "dynamics of agent {} are generated and applied",
        spec.agent_id
    )
}

/// Ready, or `Adopted` while the dynamics in use were there before and this object bought none.
pub fn ready_health(spec: &AgentDynamicsSpec, status: &AgentDynamicsStatus) -> Health {
    if status.generations == 0 {
        Health::Ready {
            reason: reasons::ADOPTED.into(),
            message: format!(
                "agent {} already had dynamics and nothing was on record as bought for it: they were adopted and applied, nothing was bought. {}",
                spec.agent_id,
                buy_again_hint()
            ),
        }
    } else {
        Health::ready(ready_message(spec))
    }
}

/// Whether this object occupies one of the account's generation slots: its job runs remotely,
/// or a call of its own is not yet seen and not yet given up on.
pub fn holds_generation_slot(input: &Input) -> bool {
    let remote = match input.remote {
        Some(Observation::Found(r)) => Some(r),
        _ => None,
    };
    if remote
        .and_then(|r| r.status.as_ref())
        .is_some_and(RemoteStatus::is_in_progress)
    {
        return true;
    }
    input.status.pending_generation.as_ref().is_some_and(|p| {
        !job_visible(p, remote) && since(&p.since, input.now) < input.settings.visibility_window
    })
}

/// `managementPolicy: Observe`: GET and report, nothing else. Another object managing the
/// agent is no conflict (this one sends nothing); a Secret that cannot be read still is.
fn plan_observe(input: &Input) -> Action {
    let settings = input.settings;
    if let Some(Blocker::Secret { reason, message }) = &input.blocker {
        return Action::Report(Report::new(
            Health::stalled(reason, message.clone()),
            settings.stalled_retry,
        ));
    }
    let agent = &input.spec.agent_id;
    match input.remote {
        None => Action::Observe,
        Some(Observation::Failed(err)) => Action::Report(report_error(err, input)),
        Some(Observation::Found(remote)) => {
            let shows = match (&remote.status, &remote.model_url) {
                (None, None) => "no dynamics".to_string(),
                (status, url) => format!(
                    "status {}, model {}, {} gesture(s)",
                    status.as_ref().map_or("none", RemoteStatus::as_str),
                    url.as_deref().map_or("none", url_identity),
                    remote.gestures.len()
                ),
            };
            let message = format!(
                "observing agent {agent} (managementPolicy: Observe): the API shows {shows}; nothing is written or paid. Set managementPolicy: Manage to take the agent over (its dynamics are adopted, nothing is bought)"
            );
            Action::Report(Report::new(
                Health::Ready {
                    reason: reasons::OBSERVED.into(),
                    message,
                },
                settings.resync,
            ))
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
    let observing = spec.management_policy == ManagementPolicy::Observe;
    if spec.deletion_policy == DeletionPolicy::Orphan
        || spec.suspend
        || never_applied
        || conflicted
        || observing
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

fn generate_plan(input: &Input, inputs_hash: String, ledger: LedgerWrite) -> Purchase {
    let status = input.status;
    let cause = if status.pending_generation.is_some() {
        GenerateCause::ReplacesStalledCall
    } else if status.generate_hash.is_none() {
        GenerateCause::FirstGeneration
    } else {
        GenerateCause::InputsChanged
    };
    Purchase {
        request: generate_request(input.spec),
        idempotency_key: inputs_hash.clone(),
        inputs_hash,
        cause,
        ledger,
    }
}

/// Status and requeue for a failed call: permanent errors stall, the rest back off.
pub fn report_error(err: &RemoteError, input: &Input) -> Report {
    let settings = input.settings;
    match err.kind {
        kind if kind.disposition().needs_user() => Report::new(
            Health::stalled(err.kind.reason(), err.message.clone()),
            settings.stalled_retry,
        ),
        _ => {
            let wait = err.retry_after.map_or_else(
                || backoff(input),
                |after| after.clamp(settings.backoff_base, MAX_REMOTE_WAIT),
            );
            Report::backoff(
                Health::progressing(err.kind.reason(), err.message.clone()),
                wait,
            )
        }
    }
}

/// When to look at a running generation again: at its expected end when the account's
/// generation time is known; otherwise sooner at the start and slower as it runs long (a quarter
/// of the time it has taken so far). Always within the configured bounds.
pub(crate) fn poll_interval(input: &Input) -> Duration {
    if let Some(timing) = input.timing {
        return timing.next_poll(input.settings.poll_min, input.settings.poll_max);
    }
    let elapsed = input
        .status
        .last_generation_time
        .as_deref()
        .map_or(Duration::ZERO, |t| since(t, input.now));
    (elapsed / 4).clamp(input.settings.poll_min, input.settings.poll_max)
}

/// A look found a generation bought for the current inputs still under way, and the stored
/// status already says one is (the marker, or an earlier "generating"). Writing "generating" now
/// would be an API-server write for a status that stands a moment; the write that records its
/// end carries it. So the write waits while the generation is young (sent less than `poll_max`
/// ago, the longest wait between two looks) or on time (late by less than its expected time, at
/// most `poll_max`). One that runs on is shown as running.
pub(crate) fn write_can_wait(input: &Input) -> bool {
    let poll_max = input.settings.poll_max;
    // The stamp is whole seconds: one second more, so a call just sent is never taken for older.
    let young = input
        .status
        .last_generation_time
        .as_deref()
        .is_some_and(|t| since(t, input.now) < poll_max + Duration::from_secs(1));
    let on_time = input
        .timing
        .is_some_and(|t| t.elapsed < t.expected + t.expected.min(poll_max));
    young || on_time
}

/// Exponential backoff for the n-th consecutive transient failure (jitter is added by the caller).
pub fn backoff(input: &Input) -> Duration {
    crate::backoff::exponential(
        input.settings.backoff_base,
        input.settings.backoff_max,
        input.failures,
    )
}

pub(crate) fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// How far a stamp may lie in the future (clocks of two machines differ a little) before it is
/// taken as now, rewritten at the next write and named in the message.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(120);

/// How far `stamp` lies in the future beyond the tolerance, if it does.
pub fn future_skew(stamp: &str, now: Timestamp) -> Option<Duration> {
    let t = stamp.parse::<Timestamp>().ok()?;
    let ahead = Duration::try_from(t.duration_since(now)).ok()?;
    (ahead > CLOCK_TOLERANCE).then_some(ahead)
}

/// Time from an RFC 3339 stamp to now, saturating: a stamp from the future (clock skew between
/// replicas, a restored backup) is fresh; an unreadable one is long ago (which only ever stalls).
pub(crate) fn since(stamp: &str, now: Timestamp) -> Duration {
    match stamp.parse::<Timestamp>() {
        Ok(t) => Duration::try_from(now.duration_since(t)).unwrap_or(Duration::ZERO),
        Err(_) => Duration::MAX,
    }
}
