//! One pass, gathered then decided. `step` names the next thing the decision needs (the
//! ledger check of a marker whose outcome was never recorded, the GET, the agent's purchase
//! record, an adoption's ledger write), one at a time; once nothing more is needed it returns
//! the `Decision`: the action, whether the object holds a generation slot as GET showed it, and
//! what gathering found that the user is told. Pure: the executor does the I/O `step` names and
//! hands each result back through `Gathered`, so the order of reads and writes is decided here,
//! in one place.
//!
//! A generate call then needs what the executor holds for it (the agent's claim, a generation
//! slot, room in the budgets): `waiting` says what a pass that could not take one of them
//! writes, `before_call` the marked status and the purchase record written before the call.
//! After the one remote call, `fold` turns its outcome into the status to write, the report
//! and the notes (`disabled` for the PUT of a deletion).

use std::time::Duration;

use jiff::Timestamp;

use crate::resource::status::CONDITION_RECONCILING;
use crate::resource::AgentDynamicsStatus;
use crate::wire::{ApiErrorKind, GenerateReply, UpdateReply};

use super::budget::{self, Standing};
use super::conditions::Health;
use super::guard::Refusal;
use super::ledger::{self, LedgerState};
use super::plan::{
    holds_generation_slot, plan, report_error, Action, AdoptFrom, Adoption, Blocker, Input,
    LedgerWrite, Observation, Purchase, RemoteError, Report, CREDITS_PER_GENERATION,
};
use super::reasons;
use super::transitions::{
    adopted, after_generate, after_update, settle, take_in_remote, with_marker,
};

/// How many times one pass reads the ledger again after a write of its own lost a race, before
/// it leaves the object for a later pass.
pub const LEDGER_ROUNDS: usize = 3;

/// Something worth telling the user (an Event in the cluster, a line in the file mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

impl Note {
    pub fn new(warning: bool, reason: &str, message: &str) -> Self {
        Note {
            warning,
            reason: reason.to_string(),
            message: message.to_string(),
        }
    }
}

/// What a pass knows so far: the stored status with what it read taken in.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered {
    /// The stored status, with what GET showed (the marker settled against it) and the inputs
    /// adopted so far.
    pub status: AgentDynamicsStatus,
    pub remote: Option<Observation>,
    /// The agent's purchase record, once read.
    pub ledger: Option<LedgerState>,
    /// GET shows the agent changed with no call of ours to explain it.
    outdated: bool,
    /// GET showed the job of a generate call of unknown outcome: it landed.
    adopted_call: bool,
    /// Inputs taken as bought without a call, and from where.
    took: Option<AdoptFrom>,
    /// Another object of this process holds the agent (found when taking its claim).
    conflict: Option<String>,
    /// Calls may be made (a secret resolved).
    may_call: bool,
    /// The key of a marker whose outcome was never recorded, to check against the ledger before
    /// anything else (only where the ledger is written before every call).
    unanswered: Option<String>,
    uid: String,
    /// Adoption writes of this pass that lost a race.
    lost_writes: usize,
}

/// The next thing a pass does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// GET the remote state, for `Gathered::take_remote`.
    Get,
    /// Read the agent's purchase record, for `Gathered::take_ledger`.
    ReadLedger,
    /// Take inputs as bought without a call: take the agent's claim (refused:
    /// `Gathered::take_conflict`), write `ledger` if any (lost: `Gathered::take_lost_write`),
    /// then `Gathered::take_adoption`. A preview skips the claim and the write.
    Adopt(Adoption),
    /// Nothing more to gather.
    Decided(Decision),
}

/// What a pass does, decided once with everything gathered.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub action: Action,
    /// Whether the object occupies a generation slot, as GET showed it (`None`: no GET).
    pub holds_slot: Option<bool>,
    /// What gathering found that the user is told (adopted calls and inputs).
    pub notes: Vec<Note>,
}

impl Gathered {
    /// `stored`: the status as read; `may_call`: a secret resolved; `ledger_first`: the store
    /// writes every call's purchase before the call (`LedgerStore::written_before_calls`).
    pub fn new(stored: AgentDynamicsStatus, uid: &str, may_call: bool, ledger_first: bool) -> Self {
        // A marker whose pass died before recording the call's outcome: if the ledger, written
        // before every call, has no call of ours for its key, the pass died before its call.
        let unanswered = stored
            .pending_generation
            .as_ref()
            .filter(|p| ledger_first && p.outcome.is_none() && p.ledger_first)
            .map(|p| p.inputs_hash.clone());
        Gathered {
            status: stored,
            remote: None,
            ledger: None,
            outdated: false,
            adopted_call: false,
            took: None,
            conflict: None,
            may_call,
            unanswered,
            uid: uid.to_string(),
            lost_writes: 0,
        }
    }

    /// What `plan` sees: `base` (the object, as read) with what was gathered.
    pub fn input<'a>(&'a self, base: &Input<'a>) -> Input<'a> {
        Input {
            status: &self.status,
            remote: self.remote.as_ref(),
            ledger: self.ledger.as_ref(),
            record_outdated: self.outdated,
            blocker: match &self.conflict {
                Some(owner) => Some(Blocker::Conflict {
                    owner: owner.clone(),
                }),
                None => base.blocker.clone(),
            },
            ..base.clone()
        }
    }

    pub fn take_remote(&mut self, observation: Observation) {
        if let Observation::Found(state) = &observation {
            let observed = take_in_remote(&self.status, state);
            self.status = observed.status;
            self.adopted_call = observed.adopted;
            self.outdated = observed.outdated;
        }
        self.remote = Some(observation);
    }

    /// Take in the agent's record. `Some(key)`: it shows that the call of the unanswered marker
    /// for `key` was never sent; the marker then holds nothing back, and the change is bought
    /// as if it never began.
    pub fn take_ledger(&mut self, read: LedgerState) -> Option<String> {
        let mut never_sent = None;
        if let (Some(key), LedgerState::Read { record, .. }) = (self.unanswered.take(), &read) {
            if ledger::call_never_sent(record.as_ref(), &key, &self.uid, true) {
                self.status.pending_generation = None;
                never_sent = Some(key);
            }
        }
        self.ledger = Some(read);
        never_sent
    }

    /// An adoption's ledger write lost a race (`error` says how). `true`: read the record again
    /// and decide anew; `false`: after `LEDGER_ROUNDS` lost writes the record counts as
    /// unavailable for this pass.
    pub fn take_lost_write(&mut self, error: &str) -> bool {
        self.lost_writes += 1;
        if self.lost_writes < LEDGER_ROUNDS {
            return true;
        }
        self.ledger = Some(LedgerState::Unavailable(format!(
            "it changed under {} writes in a row ({error})",
            self.lost_writes
        )));
        false
    }

    /// Another object of this process holds the agent: this one is blocked by it.
    pub fn take_conflict(&mut self, owner: String) {
        self.conflict = Some(owner);
    }

    /// The adoption is on record (or, in a preview, would be).
    pub fn take_adoption(&mut self, adoption: &Adoption) {
        self.status = adopted(&self.status, adoption);
        self.took = Some(adoption.from);
    }

    fn decided(&self, action: Action, input: &Input) -> Step {
        Step::Decided(Decision {
            action,
            holds_slot: self.remote.as_ref().map(|_| holds_generation_slot(input)),
            notes: self.notes(&input.spec.agent_id),
        })
    }

    fn notes(&self, agent: &str) -> Vec<Note> {
        let mut notes = Vec::new();
        if self.adopted_call {
            notes.push(Note::new(false, reasons::GENERATION_ADOPTED, "a generate call of unknown outcome did land (the API shows its job); it is followed, not sent again"));
        }
        let took = match self.took {
            Some(AdoptFrom::Existing) => Some((reasons::ADOPTED, format!(
                "agent {agent} already had dynamics and nothing was on record as bought for it: adopted for these inputs, nothing bought"
            ))),
            Some(AdoptFrom::Ledger) => Some((reasons::ADOPTED, format!(
                "these generate inputs were already bought for agent {agent} (the purchase ledger has them): taken over, nothing bought"
            ))),
            Some(AdoptFrom::Resolved) => Some((reasons::RESOLVED, format!(
                "resolved with accept: what the API shows for agent {agent} is taken as the purchase of these inputs; nothing was sent"
            ))),
            None => None,
        };
        if let Some((reason, message)) = took {
            notes.push(Note::new(false, reason, &message));
        }
        notes
    }
}

/// The next step of a pass: what to gather, or, with everything gathered, the decision.
pub fn step(gathered: &Gathered, base: &Input) -> Step {
    if gathered.unanswered.is_some() && gathered.ledger.is_none() {
        return Step::ReadLedger;
    }
    let input = gathered.input(base);
    let action = plan(&input);
    if gathered.conflict.is_some() {
        // Lost the agent's claim while adopting: `plan` reports the conflict.
        return gathered.decided(action, &input);
    }
    match action {
        // `plan` observes only once the secret resolved; were it ever to ask without one,
        // nothing is read and the object says why.
        Action::Observe if !gathered.may_call => {
            gathered.decided(Action::Report(no_secret(&input)), &input)
        }
        Action::Observe => Step::Get,
        Action::ConsultLedger => Step::ReadLedger,
        Action::Adopt(adoption) => Step::Adopt(adoption),
        action => gathered.decided(action, &input),
    }
}

/// A remote call asked for without a secret: never sent, and said. `plan` asks for calls only
/// once the secret resolved, so this is a guard, not a path users meet.
pub fn no_secret(input: &Input) -> Report {
    Report::new(
        Health::stalled(
            reasons::NO_API_SECRET,
            format!(
                "no api-secret was resolved for agent {}: nothing is sent; set spec.apiSecretRef or give the operator one",
                input.spec.agent_id
            ),
        ),
        input.settings.stalled_retry,
    )
}

/// What a generate call could not get, in the order the executor takes them.
#[derive(Debug, Clone, PartialEq)]
pub enum HeldBack {
    /// Another object of this process took the agent first (their views of each other raced).
    Agent { owner: String },
    /// The account's generation guard has no slot for it now.
    Slot(Refusal),
    /// A budget has no room for it.
    Budget(Standing),
}

/// A generate call that waits: the report to write and what the user is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub report: Report,
    pub notes: Vec<Note>,
    /// The budget whose wait starts now (counted once, not at every look).
    pub budget_wait: Option<String>,
}

/// What a pass whose generate call could not get `held` writes.
pub fn waiting(input: &Input, held: HeldBack) -> Waiting {
    let report = match held {
        HeldBack::Agent { owner } => {
            let blocked = Input {
                blocker: Some(Blocker::Conflict { owner }),
                ..input.clone()
            };
            match plan(&blocked) {
                Action::Report(report) => report,
                other => unreachable!("a Conflict blocker always reports, not {other:?}"),
            }
        }
        HeldBack::Slot(refusal) => Report::new(
            Health::progressing(refusal.reason, refusal.message),
            refusal.retry_after,
        ),
        HeldBack::Budget(standing) => {
            let report = budget_wait(&standing, input.now);
            let already =
                input.status.conditions.iter().any(|c| {
                    c.type_ == CONDITION_RECONCILING && c.reason == reasons::BUDGET_EXCEEDED
                });
            if already {
                return Waiting {
                    report,
                    notes: Vec::new(),
                    budget_wait: None,
                };
            }
            return Waiting {
                notes: vec![Note::new(
                    true,
                    reasons::BUDGET_EXCEEDED,
                    report.health.message(),
                )],
                report,
                budget_wait: Some(standing.budget),
            };
        }
    };
    Waiting {
        report,
        notes: Vec::new(),
        budget_wait: None,
    }
}

/// The wait of an object whose generation a budget has no room for, until its period ends.
fn budget_wait(standing: &Standing, now: Timestamp) -> Report {
    let wait = standing
        .frees_at
        .duration_since(now)
        .try_into()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1));
    let message = format!(
        "budget {} has no room for this generation ({CREDITS_PER_GENERATION} credits): {} of {} credits spent in its period; nothing is sent until it frees at {} (in {})",
        standing.budget,
        standing.spent,
        standing.limit,
        standing.frees_at,
        humantime::format_duration(Duration::from_secs(wait.as_secs())),
    );
    Report::new(Health::progressing(reasons::BUDGET_EXCEEDED, message), wait)
}

/// Who pays for a generate call: the object's namespace and the account's fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct Payer<'a> {
    pub namespace: &'a str,
    pub account: &'a str,
}

/// What is written before a generate call, in this order.
#[derive(Debug, Clone, PartialEq)]
pub struct BeforeCall {
    /// The status with the marker (a write conditional on what was read: another writer makes
    /// it fail and nothing is sent).
    pub marked: AgentDynamicsStatus,
    /// The agent's record with the purchase and its spend, written after the marker.
    pub purchase: LedgerWrite,
    /// What the user is told once the purchase is on record (budgets near their limit).
    pub notes: Vec<Note>,
}

/// The writes before the generate call of `purchase`. `ledger_first`: the store writes every
/// call's purchase before the call (`LedgerStore::written_before_calls`); `warnings`: the
/// budgets this call takes to or past their warning threshold.
pub fn before_call(
    input: &Input,
    purchase: &Purchase,
    payer: Payer,
    ledger_first: bool,
    warnings: &[Standing],
) -> BeforeCall {
    let mut record = purchase.ledger.clone();
    record.record = budget::with_spend(
        &record.record,
        input.now,
        payer.namespace,
        payer.account,
        CREDITS_PER_GENERATION as i64,
    );
    let before = match input.remote {
        Some(Observation::Found(state)) => Some(state),
        _ => None,
    };
    let mut marker = with_marker(input.status, purchase, before, input.now);
    if let Some(pending) = &mut marker.pending_generation {
        pending.ledger_first = ledger_first;
    }
    let sending = Report::new(
        Health::progressing(
            reasons::GENERATION_STARTED,
            format!("one generate call is sent for these inputs ({CREDITS_PER_GENERATION} credits); waiting for its job to finish"),
        ),
        input.settings.poll_min,
    );
    let notes = warnings
        .iter()
        .map(|standing| {
            Note::new(
                true,
                reasons::BUDGET_WARNING,
                &format!(
                    "budget {}: {} of {} credits spent in its period with this generation; it frees at {}",
                    standing.budget, standing.spent, standing.limit, standing.frees_at
                ),
            )
        })
        .collect();
    BeforeCall {
        marked: settle(input, marker, &sending),
        purchase: record,
        notes,
    }
}

/// How a generate call ended, for counting (every call that may have been charged is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateCall {
    Accepted,
    /// Certainly not taken: its generation slot and its ledger entry are given back.
    Refused,
    Unknown,
}

impl GenerateCall {
    pub fn as_str(&self) -> &'static str {
        match self {
            GenerateCall::Accepted => "accepted",
            GenerateCall::Refused => "refused",
            GenerateCall::Unknown => "unknown",
        }
    }
}

/// The reply of the one remote call a pass made.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The POST of `purchase`.
    Generated {
        purchase: &'a Purchase,
        reply: Result<&'a GenerateReply, &'a RemoteError>,
    },
    /// The PUT of the dynamics block whose hash is `dynamics_hash`.
    Updated {
        dynamics_hash: &'a str,
        reply: Result<&'a UpdateReply, &'a RemoteError>,
    },
}

/// What a remote call's outcome leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    pub status: AgentDynamicsStatus,
    pub report: Report,
    /// What the user is told.
    pub notes: Vec<Note>,
    /// How a generate call ended (`None`: no generate call).
    pub call: Option<GenerateCall>,
    /// The API answered the PUT by regenerating the movements.
    pub regenerating: bool,
    /// The call certainly bought nothing: its generation slot and its purchase on the ledger
    /// are given back.
    pub release: bool,
}

/// The status, report and notes a remote call's outcome leaves. `input.status` is the status
/// the call was made from (for a generate call, the one carrying its marker).
pub fn fold(input: &Input, outcome: Outcome) -> Folded {
    let agent = &input.spec.agent_id;
    match outcome {
        Outcome::Generated { purchase, reply } => {
            let (status, report) = after_generate(input, purchase, reply);
            let (call, note) = match reply {
                Ok(_) => (
                    GenerateCall::Accepted,
                    Some(Note::new(
                        false,
                        reasons::GENERATION_STARTED,
                        &format!(
                            "generation {} started for agent {agent} ({CREDITS_PER_GENERATION} credits)",
                            status.generations
                        ),
                    )),
                ),
                Err(err) if err.refused => (GenerateCall::Refused, None),
                Err(err) => (
                    GenerateCall::Unknown,
                    Some(Note::new(
                        true,
                        reasons::GENERATION_OUTCOME_PENDING,
                        &format!(
                            "the generate call for agent {agent} got no definite answer ({}); it may have been charged ({CREDITS_PER_GENERATION} credits) and is never sent again automatically",
                            err.message
                        ),
                    )),
                ),
            };
            Folded {
                status,
                report,
                notes: note.into_iter().collect(),
                call: Some(call),
                regenerating: false,
                release: call == GenerateCall::Refused,
            }
        }
        Outcome::Updated {
            dynamics_hash,
            reply,
        } => {
            let (status, report) = after_update(input, dynamics_hash, reply);
            let regenerating = status.regenerations > input.status.regenerations;
            let notes = if regenerating {
                vec![Note::new(
                    false,
                    reasons::REGENERATION_STARTED,
                    &format!(
                        "the API answered the PUT for agent {agent} by regenerating its movements (regeneration {} of this object)",
                        status.regenerations
                    ),
                )]
            } else {
                Vec::new()
            };
            Folded {
                status,
                report,
                notes,
                call: None,
                regenerating,
                release: false,
            }
        }
    }
}

/// The disabling PUT of a deletion: the note of a released object (an agent gone remotely has
/// nothing to disable), or the stall that keeps the finalizer and says how to let go.
pub fn disabled(input: &Input, reply: Result<(), &RemoteError>) -> Result<Note, Report> {
    let agent = &input.spec.agent_id;
    match reply {
        Ok(()) => Ok(Note::new(
            false,
            "DynamicsDisabled",
            &format!("dynamics of agent {agent} switched off before deletion"),
        )),
        Err(err) if err.kind == ApiErrorKind::NotFound => Ok(Note::new(
            false,
            "RemoteGone",
            &format!("agent {agent} no longer exists remotely; nothing to disable"),
        )),
        Err(err) => {
            let report = report_error(err, input);
            let message = format!(
                "{}; or set spec.deletionPolicy: Orphan to delete without calling the API",
                report.health.message()
            );
            let health = Health::stalled(report.health.reason(), message);
            Err(Report { health, ..report })
        }
    }
}
