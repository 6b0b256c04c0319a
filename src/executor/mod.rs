//! One reconcile pass with its I/O, asking the pure `reconcile::pass` what to do at each turn:
//!
//! 1. gather (`Executor::gather`): do what `pass::step` names (the ledger check of an
//!    unanswered marker, the GET, the ledger read, an adoption's claim and ledger write) until
//!    it returns the one `Decision`: the action, the generation slot as GET showed it, the notes;
//! 2. act (`Executor::act`): at most one POST or PUT. A generate call first takes what it needs
//!    (`Executor::hold`: the agent's claim, a generation slot, room in the budgets; what it could
//!    not get goes to `pass::waiting`), then writes what `pass::before_call` gives: the marker
//!    (conditional), then the purchase on the ledger, and only then sends;
//! 3. fold: `pass::fold` turns the reply into the status, the report and the notes; the status
//!    is saved (conditionally, re-applied after a conflict for a generate call's outcome).
//!
//! Shared by the controller (status in the status subresource, notes as Events) and the file
//! mode (status in a state file, notes printed), so both follow the same rules, the same
//! generation guard and the same crash-safety marker.

mod budgets;

pub use budgets::Budgets;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::api::{ApiErrorKind, ApiSecret, DynamicsClient, GenerateReply, UpdateRequest};
use crate::backoff::jitter;
use crate::failpoint;
use crate::reconcile::budget::{self, BudgetCheck, Charge, Standing};
use crate::reconcile::desired::upgrade_recorded_keys;
use crate::reconcile::guard::AccountGuards;
use crate::reconcile::ledger::{self, Asker, LedgerState};
use crate::reconcile::ownership::AgentClaims;
use crate::reconcile::pass::{
    self, BeforeCall, Decision, Folded, Gathered, HeldBack, Outcome, Payer, Step, LEDGER_ROUNDS,
};
use crate::reconcile::plan::{
    Action, Blocker, Input, LedgerWrite, Next, Observation, Purchase, RemoteError, Report,
    Settings, Write, CREDITS_PER_GENERATION,
};
use crate::reconcile::transitions::{record_generate_outcome, settle};
use crate::reconcile::Health;
use crate::resource::{AgentDynamicsSpec, AgentDynamicsStatus, DynamicsLedgerSpec};

/// The object as a pass sees it, whatever it was read from.
#[derive(Debug, Clone)]
pub struct ObjectView {
    /// "namespace/name": identifies the object in the guard, logs and notes.
    pub key: String,
    pub uid: String,
    pub spec: AgentDynamicsSpec,
    pub status: AgentDynamicsStatus,
    pub generation: i64,
    pub deleting: bool,
    pub requested_at: Option<String>,
    /// Value of the resolve annotation (see `resource::RESOLVE`).
    pub resolve: Option<String>,
    /// Value of the approve annotation (see `resource::APPROVE`).
    pub approve: Option<String>,
    pub access: Access,
}

/// How a pass may reach the API, decided before it starts: either a secret to call with, or
/// the reason nothing may be sent (never both, never neither by mistake).
#[derive(Debug, Clone)]
pub enum Access {
    /// Calls are made with this api-secret.
    Granted(ApiSecret),
    /// Nothing may be sent for this object; `plan` reports why.
    Blocked(Blocker),
    /// Suspended: nothing is read or sent, so no secret was looked up.
    NotNeeded,
}

impl Access {
    /// The decision both front ends make, in one order: a suspended object needs nothing (its
    /// secret is not even looked up); one that conflicts with another object over its agent is
    /// blocked. `None`: its secret decides (`from_secret`), looked up only then.
    pub fn before_secret(suspended: bool, conflict: Option<Blocker>) -> Option<Access> {
        if suspended {
            Some(Access::NotNeeded)
        } else {
            conflict.map(Access::Blocked)
        }
    }

    pub fn from_secret(secret: Result<ApiSecret, Blocker>) -> Access {
        match secret {
            Ok(secret) => Access::Granted(secret),
            Err(blocker) => Access::Blocked(blocker),
        }
    }

    pub fn secret(&self) -> Option<&ApiSecret> {
        match self {
            Access::Granted(secret) => Some(secret),
            _ => None,
        }
    }

    pub fn blocker(&self) -> Option<Blocker> {
        match self {
            Access::Blocked(blocker) => Some(blocker.clone()),
            _ => None,
        }
    }
}

pub use crate::reconcile::pass::{GenerateCall, Note};

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The object changed since it was read: another writer is active, so this pass stops
    /// (before a POST, this is what keeps two writers from both generating).
    #[error("the object changed since it was read")]
    Conflict,
    /// The store failed (the API server, the state file): what was being done, and why.
    #[error("saving status failed: {action}: {source:#}")]
    Store {
        action: String,
        #[source]
        source: BoxError,
    },
    /// The object is no longer in the store.
    #[error("saving status failed: {0} is no longer there")]
    Gone(String),
    /// A preview (`plan`) writes nothing.
    #[error("a preview writes nothing")]
    Preview,
}

/// Any error of a store, kept whole (its source chain is logged, not flattened to text).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl SaveError {
    pub fn store(action: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SaveError::Store {
            action: action.into(),
            source: source.into(),
        }
    }
}

/// Where the purchase ledger is kept: one record per agent (see `reconcile::ledger`).
pub trait LedgerStore: Send {
    /// The agent's record and its version; `Unavailable` when it cannot be read.
    fn read_ledger(&mut self, agent_id: &str) -> impl Future<Output = LedgerState> + Send;
    /// Write the agent's record if its version is still `write.version` (`None`: create it);
    /// `SaveError::Conflict` otherwise. Returns the new version.
    fn write_ledger(
        &mut self,
        agent_id: &str,
        write: &LedgerWrite,
    ) -> impl Future<Output = Result<Option<String>, SaveError>> + Send;
    /// Whether every generate call's purchase is written here before the call is sent (and
    /// apart from the marker), so that a record without it proves the call was never sent.
    fn written_before_calls(&self) -> bool {
        false
    }
}

/// Where a pass keeps status and sends notes.
pub trait StatusSink: LedgerStore {
    /// Persist `status`; fail with `SaveError::Conflict` if the object changed since it was read.
    fn save(
        &mut self,
        status: &AgentDynamicsStatus,
    ) -> impl Future<Output = Result<(), SaveError>> + Send;
    /// The status the store holds now, as last read or written by this pass (`None`: none yet).
    fn stored(&self) -> Option<&AgentDynamicsStatus>;
    /// Read the stored status again (after a conflict), so the next `save` is based on it.
    fn reload(&mut self) -> impl Future<Output = Result<AgentDynamicsStatus, SaveError>> + Send;
    fn note(&mut self, note: Note);
    /// A generate call was sent and ended this way; `account` is the payer's fingerprint.
    fn generate_called(&mut self, outcome: GenerateCall, account: &str);
    /// A PUT made the API regenerate the movements.
    fn regeneration_started(&mut self) {}
    /// A generation was held back by `budget`.
    fn budget_wait(&mut self, _budget: &str) {}
    /// Whether the object as read still stands right before a remote write that is not guarded
    /// by a conditional status write (a PUT): not deleted, not terminating, not edited again
    /// since. `false` ends the pass as a conflict, so the next one starts from what is there.
    fn still_current(&mut self) -> impl Future<Output = bool> + Send {
        async { true }
    }
}

/// How often a status that records a generate call's outcome is re-read and written again
/// after conflicts before the pass gives up (the marker then keeps the call from repeating).
const OUTCOME_SAVE_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum PassResult {
    /// Look again as `next` says (jitter included): a backoff counts towards the next one; a
    /// poll looks at a running generation.
    Requeue { next: Next, health: Health },
    /// Nothing left to do remotely for a deleted object: drop the finalizer / forget it.
    Released,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Save(#[from] SaveError),
    /// Deletion could not finish (the remote refused the disabling PUT); the object keeps its finalizer.
    #[error("cleanup of {key} is not finished: {message}")]
    Cleanup {
        key: String,
        message: String,
        #[source]
        source: crate::api::ApiError,
    },
}

/// What `plan` would do for an object, without doing it (for `dynamics-operator plan`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub action: Action,
    pub remote: Option<Observation>,
}

/// When the outcome of an accepted generate call reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordAccepted {
    /// Written right after the reply (the file mode: a local append costs nothing).
    AtOnce,
    /// Written with the object's next status write, at the generation's end at the latest (the
    /// controller: one API-server write less per generation). Until then the marker written
    /// before the call stands for it: a restart in between finds the marker, counts the call
    /// once and adopts its job, exactly as for a lost reply.
    WithNextWrite,
}

/// An accepted generate call whose outcome is not yet in the store.
#[derive(Debug, Clone)]
struct Unrecorded {
    uid: String,
    plan: Purchase,
    reply: GenerateReply,
    at: Timestamp,
}

pub struct Executor {
    client: DynamicsClient,
    /// One generation guard and timer per account.
    guards: Arc<Mutex<AccountGuards>>,
    /// Which object holds each agent, taken before the first generate call (atomic ownership).
    claims: Mutex<AgentClaims>,
    settings: Settings,
    record_accepted: RecordAccepted,
    /// Accepted calls not yet recorded, by object key (with `RecordAccepted::WithNextWrite`).
    unrecorded: Mutex<HashMap<String, Unrecorded>>,
    /// The origin of the monotonic time the guards are given.
    epoch: Instant,
    /// Where to send the keys of waiting objects whose turn for a generation slot has come.
    /// Without it (the file mode) a waiting object simply asks again at the next poll.
    wake: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Caps on credits per period, checked before every generate call.
    budgets: Option<Arc<Budgets>>,
    /// Where paid changes need the user's approval.
    approval: ApprovalScope,
}

/// The namespaces whose paid changes need approval (`--require-approval`; `*`: all).
#[derive(Debug, Clone, Default)]
pub struct ApprovalScope {
    namespaces: Vec<String>,
}

impl ApprovalScope {
    pub fn new(namespaces: Vec<String>) -> Self {
        ApprovalScope { namespaces }
    }

    pub fn requires(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == namespace)
    }
}

impl Executor {
    pub fn new(client: DynamicsClient, guards: AccountGuards, settings: Settings) -> Self {
        Executor {
            client,
            guards: Arc::new(Mutex::new(guards)),
            claims: Mutex::new(AgentClaims::default()),
            settings,
            record_accepted: RecordAccepted::AtOnce,
            unrecorded: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            wake: None,
            budgets: None,
            approval: ApprovalScope::default(),
        }
    }

    /// Paid changes in these namespaces wait for an approval of their key.
    pub fn with_approval(mut self, approval: ApprovalScope) -> Self {
        self.approval = approval;
        self
    }

    /// Check every generate call against these budgets (and keep their spend up to date).
    pub fn with_budgets(mut self, budgets: Arc<Budgets>) -> Self {
        self.budgets = Some(budgets);
        self
    }

    fn release_budget(&self, key: &str) {
        if let Some(budgets) = &self.budgets {
            budgets.release(key);
        }
    }

    pub fn with_record_accepted(mut self, when: RecordAccepted) -> Self {
        self.record_accepted = when;
        self
    }

    /// Wake waiting objects through `wake` when slots free, instead of having them poll.
    pub fn with_wake(mut self, wake: tokio::sync::mpsc::UnboundedSender<String>) -> Self {
        self.wake = Some(wake);
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// (objects waiting for a generation slot, slots in use), over all accounts, for the metrics.
    pub fn guard_load(&self) -> (usize, usize) {
        self.guards.lock().expect("guard lock").load()
    }

    pub fn client(&self) -> &DynamicsClient {
        &self.client
    }

    /// Forget an object that is gone or suspended (frees its generation slot).
    pub fn forget(&self, key: &str) {
        self.with_guard(|guards| guards.forget(key));
        self.claims.lock().expect("claims lock").release(key);
        self.unrecorded.lock().expect("unrecorded lock").remove(key);
    }

    /// Change the guard, then wake the waiters whose turn that may have brought.
    fn with_guard<R>(&self, change: impl FnOnce(&mut AccountGuards) -> R) -> R {
        change_and_wake(&self.guards, self.wake.as_ref(), self.epoch, change)
    }

    /// Look at each of these objects at its time (monotonic, from `epoch`), through the wake
    /// channel: running generations whose expected end just became known. An object whose
    /// generation was seen ending meanwhile (its own look came first) is left alone: a look
    /// then would cost a GET for nothing, and might fall in an idle time.
    fn schedule_looks(&self, mut due: Vec<(String, Duration)>) {
        let Some(wake) = self.wake.clone() else {
            return;
        };
        if due.is_empty() {
            return;
        }
        due.sort_by_key(|(_, at)| *at);
        let epoch = tokio::time::Instant::from_std(self.epoch);
        let guards = self.guards.clone();
        tokio::spawn(async move {
            for (key, at) in due {
                tokio::time::sleep_until(epoch + at).await;
                if !guards.lock().expect("guard lock").runs(&key) {
                    continue;
                }
                tracing::debug!(object = %key, "looked at: its generation is expected to end");
                let _ = wake.send(key);
            }
        });
    }

    /// One pass. `failures` counts this object's consecutive transient failures.
    pub async fn pass(
        &self,
        obj: &ObjectView,
        failures: u32,
        sink: &mut impl StatusSink,
    ) -> Result<PassResult, PassError> {
        let now = failpoint::now();
        tracing::debug!(object = %obj.key, "pass started");
        // A slot kept for this object since it was woken: its own, or the next waiter's.
        let woken = self.guards.lock().expect("guard lock").is_woken(&obj.key);
        let secret = obj.access.secret();
        // The stored status, with an accepted call this process has not written yet.
        let (stored, unrecorded) = self.with_unrecorded(obj);
        let stored = upgrade_recorded_keys(&stored, &obj.spec);
        let (gathered, decision) = self
            .gather(obj, &stored, secret, failures, now, sink, true)
            .await;
        let Decision {
            action,
            holds_slot,
            notes,
        } = decision;
        let write_waits = matches!(&action, Action::Report(r) if r.write == Write::WithNext);
        let mut input = self.input(
            obj,
            &gathered.status,
            gathered.remote.as_ref(),
            failures,
            now,
        );
        input.ledger = gathered.ledger.as_ref();
        for note in notes {
            sink.note(note);
        }
        if let (Some(holding), Some(secret)) = (holds_slot, secret) {
            self.track(&obj.key, secret, holding);
            input.timing = self.timing(&obj.key);
        }
        let result = self
            .act(obj, &input, action, gathered.status.clone(), secret, sink)
            .await;
        if woken {
            self.with_guard(|guards| guards.release(&obj.key));
        }
        if unrecorded && result.is_ok() && !write_waits {
            // The pass's write carried it (or the object is released).
            self.unrecorded
                .lock()
                .expect("unrecorded lock")
                .remove(&obj.key);
        }
        result
    }

    /// Tell the account's guard whether this object holds a generation slot, as its GET showed:
    /// any GET that sees a generation end hands its slot on at once.
    fn track(&self, key: &str, secret: &ApiSecret, holding: bool) {
        let at = self.epoch.elapsed();
        let due = self.with_guard(|guards| guards.track(secret.account(), key, holding, at));
        self.schedule_looks(due);
    }

    /// Perform what `plan` asked for.
    async fn act(
        &self,
        obj: &ObjectView,
        input: &Input<'_>,
        action: Action,
        status: AgentDynamicsStatus,
        secret: Option<&ApiSecret>,
        sink: &mut impl StatusSink,
    ) -> Result<PassResult, PassError> {
        match (action, secret) {
            (Action::Observe | Action::ConsultLedger | Action::Adopt(_), _) => {
                unreachable!("decide observes, reads the ledger and adopts before it returns")
            }
            (Action::Report(report), _) => {
                if matches!(report.health, Health::Suspended) {
                    self.forget(&obj.key);
                }
                self.finish(obj, input, status, report, sink).await
            }
            (Action::Generate(generate), Some(secret)) => {
                self.generate(obj, input, status, &generate, secret, sink)
                    .await
            }
            (
                Action::Update {
                    request,
                    dynamics_hash,
                },
                Some(secret),
            ) => {
                self.update(obj, input, &request, &dynamics_hash, secret, sink)
                    .await
            }
            (Action::Disable(request), Some(secret)) => {
                self.disable(obj, input, &request, secret, sink).await
            }
            (Action::Generate(_) | Action::Update { .. } | Action::Disable(_), None) => {
                // `plan` asks for a call only once the secret resolved; were it ever to ask
                // without one, nothing is sent and the object says why.
                self.finish(obj, input, status, pass::no_secret(input), sink)
                    .await
            }
            (Action::Release, _) => {
                release_claim(obj, sink).await;
                self.forget(&obj.key);
                Ok(PassResult::Released)
            }
        }
    }

    /// GET, the ledger and plan only: no POST, no PUT, no write.
    pub async fn preview(&self, obj: &ObjectView, ledger: &mut impl LedgerStore) -> Preview {
        let status = upgrade_recorded_keys(&obj.status, &obj.spec);
        let (gathered, decision) = self
            .gather(
                obj,
                &status,
                obj.access.secret(),
                0,
                failpoint::now(),
                ledger,
                false,
            )
            .await;
        Preview {
            action: decision.action,
            remote: gathered.remote,
        }
    }

    /// Do what `pass::step` asks for (the GET, the ledger's read, an adoption's claim and
    /// ledger write, unless `write` is false: a preview) until it has decided.
    #[allow(clippy::too_many_arguments)]
    async fn gather(
        &self,
        obj: &ObjectView,
        stored: &AgentDynamicsStatus,
        secret: Option<&ApiSecret>,
        failures: u32,
        now: Timestamp,
        store: &mut impl LedgerStore,
        write: bool,
    ) -> (Gathered, Decision) {
        let base = self.input(obj, stored, None, failures, now);
        let mut gathered = Gathered::new(
            stored.clone(),
            &obj.uid,
            secret.is_some(),
            store.written_before_calls(),
        );
        loop {
            match pass::step(&gathered, &base) {
                Step::Get => {
                    let Some(secret) = secret else {
                        unreachable!("`pass::step` asks for a GET only when a secret resolved")
                    };
                    gathered.take_remote(self.get_remote(obj, secret).await);
                }
                Step::ReadLedger => {
                    let read = store.read_ledger(&obj.spec.agent_id).await;
                    if let Some(key) = gathered.take_ledger(read) {
                        tracing::info!(object = %obj.key, key = %key, "a generate call prepared before a crash was never sent (the purchase ledger has no call for it); the change is bought now");
                    }
                }
                Step::Adopt(adoption) => {
                    if write {
                        // Adopting holds the agent like buying does (see `generate`).
                        let claimed = self
                            .claims
                            .lock()
                            .expect("claims lock")
                            .claim(&obj.spec.agent_id, &obj.key);
                        if let Err(owner) = claimed {
                            gathered.take_conflict(owner);
                            continue;
                        }
                        if let Some(change) = &adoption.ledger {
                            if let Err(err) = store.write_ledger(&obj.spec.agent_id, change).await {
                                if gathered.take_lost_write(&err.to_string()) {
                                    gathered
                                        .take_ledger(store.read_ledger(&obj.spec.agent_id).await);
                                }
                                continue;
                            }
                        }
                    }
                    gathered.take_adoption(&adoption);
                }
                Step::Decided(decision) => return (gathered, decision),
            }
        }
    }

    fn input<'a>(
        &'a self,
        obj: &'a ObjectView,
        status: &'a AgentDynamicsStatus,
        remote: Option<&'a Observation>,
        failures: u32,
        now: Timestamp,
    ) -> Input<'a> {
        Input {
            asker: Asker {
                object: &obj.key,
                uid: &obj.uid,
            },
            spec: &obj.spec,
            status,
            generation: obj.generation,
            requested_at: obj.requested_at.as_deref(),
            resolve: obj.resolve.as_deref(),
            approval: crate::reconcile::plan::Approval {
                required: self
                    .approval
                    .requires(obj.key.split_once('/').map_or("", |(ns, _)| ns)),
                approved: obj.approve.as_deref(),
            },
            deleting: obj.deleting,
            blocker: obj.access.blocker(),
            remote,
            ledger: None,
            record_outdated: false,
            failures,
            timing: self.timing(&obj.key),
            now,
            settings: &self.settings,
        }
    }

    fn timing(&self, key: &str) -> Option<crate::reconcile::timing::GenerationTiming> {
        self.guards
            .lock()
            .expect("guard lock")
            .timing(key, self.epoch.elapsed())
    }

    /// The stored status with this process's unrecorded accepted call applied, and whether
    /// there was one. An entry of another object of the same name (a different uid) is dropped.
    fn with_unrecorded(&self, obj: &ObjectView) -> (AgentDynamicsStatus, bool) {
        let mut unrecorded = self.unrecorded.lock().expect("unrecorded lock");
        match unrecorded.get(&obj.key) {
            Some(u) if u.uid == obj.uid => (
                record_generate_outcome(&obj.status, &u.plan, Ok(&u.reply), u.at),
                true,
            ),
            Some(_) => {
                unrecorded.remove(&obj.key);
                (obj.status.clone(), false)
            }
            None => (obj.status.clone(), false),
        }
    }

    async fn get_remote(&self, obj: &ObjectView, secret: &ApiSecret) -> Observation {
        match self.client.get(secret, &obj.spec.agent_id).await {
            // A reply about another agent says nothing about this one: never evidence, never adopted.
            Ok(state) if state.agent_id != obj.spec.agent_id => {
                Observation::Failed(RemoteError::of_kind(
                    ApiErrorKind::Decode,
                    format!(
                        "the Dynamics API answered a GET for agent {} with the state of agent {}; ignored, retrying with backoff",
                        obj.spec.agent_id, state.agent_id
                    ),
                ))
            }
            Ok(state) => Observation::Found(state),
            Err(err) => Observation::Failed(RemoteError::from(&err)),
        }
    }

    /// PUT the dynamics block.
    async fn update(
        &self,
        obj: &ObjectView,
        input: &Input<'_>,
        request: &UpdateRequest,
        dynamics_hash: &str,
        secret: &ApiSecret,
        sink: &mut impl StatusSink,
    ) -> Result<PassResult, PassError> {
        // An edit and a delete close together: the pass began from the edit, and the object
        // may be terminating by now. Its deletion decides what the API gets, not this edit.
        if !sink.still_current().await {
            return Err(SaveError::Conflict.into());
        }
        let outcome = self
            .client
            .update(secret, &obj.spec.agent_id, request)
            .await
            .map_err(|e| RemoteError::from(&e));
        let folded = pass::fold(
            input,
            Outcome::Updated {
                dynamics_hash,
                reply: outcome.as_ref(),
            },
        );
        if folded.regenerating {
            sink.regeneration_started();
        }
        for note in folded.notes {
            sink.note(note);
        }
        if outcome.is_ok() {
            // The Ready condition says it; an Event per PUT would only add an API-server write.
            tracing::info!(object = %obj.key, agent = %obj.spec.agent_id, "dynamics block applied");
        }
        self.finish(obj, input, folded.status, folded.report, sink)
            .await
    }

    /// Deletion with `Disable`: one PUT with enabled=false. An agent that is gone remotely has
    /// nothing to disable; any other refusal keeps the finalizer and says how to let go.
    async fn disable(
        &self,
        obj: &ObjectView,
        input: &Input<'_>,
        request: &UpdateRequest,
        secret: &ApiSecret,
        sink: &mut impl StatusSink,
    ) -> Result<PassResult, PassError> {
        let reply = self
            .client
            .update(secret, &obj.spec.agent_id, request)
            .await;
        let remote_error = reply.as_ref().err().map(RemoteError::from);
        match (
            pass::disabled(input, remote_error.as_ref().map_or(Ok(()), Err)),
            reply,
        ) {
            (Ok(released), _) => sink.note(released),
            (Err(report), Err(err)) => {
                let message = report.health.message().to_string();
                // Tell the user why deletion waits (best effort), then keep the finalizer.
                let _ = self
                    .finish(obj, input, input.status.clone(), report, sink)
                    .await;
                return Err(PassError::Cleanup {
                    key: obj.key.clone(),
                    message,
                    source: err,
                });
            }
            (Err(_), Ok(_)) => {
                unreachable!("`pass::disabled` keeps the finalizer only on an error")
            }
        }
        release_claim(obj, sink).await;
        self.forget(&obj.key);
        Ok(PassResult::Released)
    }

    /// One paid call, in its steps: hold the agent and a generation slot, check the budgets,
    /// write the marker (conditional) and then the purchase on the ledger, send exactly one
    /// POST, account for its outcome, and record it for good.
    async fn generate(
        &self,
        obj: &ObjectView,
        input: &Input<'_>,
        status: AgentDynamicsStatus,
        generate: &Purchase,
        secret: &ApiSecret,
        sink: &mut impl StatusSink,
    ) -> Result<PassResult, PassError> {
        let account = secret.fingerprint();
        let payer = Payer {
            namespace: obj.key.split_once('/').map_or("", |(ns, _)| ns),
            account: &account,
        };
        let warnings = match self.hold(obj, input.now, secret, payer) {
            Ok(warnings) => warnings,
            Err(held) => {
                let waiting = pass::waiting(input, held);
                if let Some(budget) = &waiting.budget_wait {
                    sink.budget_wait(budget);
                }
                for note in waiting.notes {
                    sink.note(note);
                }
                return self.finish(obj, input, status, waiting.report, sink).await;
            }
        };
        let before = pass::before_call(
            input,
            generate,
            payer,
            sink.written_before_calls(),
            &warnings,
        );
        let purchase = before.purchase.clone();
        let (marked, ledger_version) = self.mark_and_record(obj, before, sink).await?;

        let outcome = self.send(obj, generate, secret).await;

        let marked_input = Input {
            status: &marked,
            timing: self.timing(&obj.key),
            ..input.clone()
        };
        let Folded {
            status,
            report,
            notes,
            call,
            release,
            ..
        } = pass::fold(
            &marked_input,
            Outcome::Generated {
                purchase: generate,
                reply: outcome.as_ref(),
            },
        );
        // `fold` counts every generate call; were it ever not to, the call counts as one that
        // may have been charged.
        let call = call.unwrap_or(GenerateCall::Unknown);
        for note in notes {
            sink.note(note);
        }
        if release {
            self.with_guard(|guards| guards.cancel(&obj.key));
        }
        self.account_for_call(obj, generate, call, payer, sink);
        if release {
            let spent = Spent {
                namespace: payer.namespace,
                account: payer.account,
                at: input.now,
            };
            let undone = undo_ledger_call(
                sink,
                obj,
                (&purchase.record, ledger_version),
                &generate.inputs_hash,
                asker(obj),
                spent,
            )
            .await;
            if let (Some(budgets), Some(record)) = (&self.budgets, undone) {
                budgets.put(&ledger::record_name(&obj.spec.agent_id), &record);
            }
        }
        if let (Ok(reply), RecordAccepted::WithNextWrite) = (&outcome, self.record_accepted) {
            self.unrecorded.lock().expect("unrecorded lock").insert(
                obj.key.clone(),
                Unrecorded {
                    uid: obj.uid.clone(),
                    plan: generate.clone(),
                    reply: reply.clone(),
                    at: input.now,
                },
            );
            return Ok(PassResult::Requeue {
                next: requeue_after(&report),
                health: report.health,
            });
        }
        self.save_outcome(obj, &marked_input, status, report, sink, |fresh| {
            record_generate_outcome(fresh, generate, outcome.as_ref(), input.now)
        })
        .await
    }

    /// What a generate call needs held, taken in this order: the agent for this object (two
    /// objects whose views of each other raced: the first to get here owns it), a generation
    /// slot of its account, then room in the budgets against the spend every ledger record
    /// shows (the slot given back when there is none). Returns the budgets this call takes to
    /// their warning threshold, or what it could not get.
    fn hold(
        &self,
        obj: &ObjectView,
        now: Timestamp,
        secret: &ApiSecret,
        payer: Payer<'_>,
    ) -> Result<Vec<Standing>, HeldBack> {
        // A woken waiter comes back at once; the long fallback only covers a lost wake-up.
        let retry = if self.wake.is_some() {
            self.settings.stalled_retry
        } else {
            self.settings.poll_min
        };
        self.claims
            .lock()
            .expect("claims lock")
            .claim(&obj.spec.agent_id, &obj.key)
            .map_err(|owner| HeldBack::Agent { owner })?;
        let account = secret.account();
        let at = self.epoch.elapsed();
        self.with_guard(|guards| guards.try_start(account, &obj.key, at, retry))
            .map_err(HeldBack::Slot)?;
        let charge = Charge {
            namespace: payer.namespace,
            account: payer.account,
            credits: CREDITS_PER_GENERATION,
            now,
        };
        match self.budgets.as_deref().map(|b| b.reserve(&obj.key, charge)) {
            Some(BudgetCheck::Over(standing)) => {
                self.with_guard(|guards| guards.cancel(&obj.key));
                Err(HeldBack::Budget(standing))
            }
            Some(BudgetCheck::Within { warnings }) => Ok(warnings),
            None => Ok(Vec::new()),
        }
    }

    /// The marker (a write conditional on what was read: another writer makes it fail and
    /// nothing is sent), then the purchase on the agent's ledger record. Returns the status as
    /// marked and the ledger record's new version. Any failure gives back the slot and the
    /// budget; a failed ledger write also takes the marker back.
    async fn mark_and_record(
        &self,
        obj: &ObjectView,
        before: BeforeCall,
        sink: &mut impl StatusSink,
    ) -> Result<(AgentDynamicsStatus, Option<String>), PassError> {
        let BeforeCall {
            marked,
            purchase,
            notes,
        } = before;
        if let Err(err) = sink.save(&marked).await {
            // Someone else wrote first (another replica, an edit, a deletion); they own this
            // change. Nothing was sent, and nothing was put on the ledger.
            self.with_guard(|guards| guards.cancel(&obj.key));
            self.release_budget(&obj.key);
            return Err(err.into());
        }
        failpoint::hit(failpoint::AFTER_MARKER_SAVED);
        // Then the purchase goes on record for the agent: another object, install or replica
        // that read the same record fails here and sends nothing. After the marker, so that a
        // crash in between is the marker's known window (a call that may have been sent), never
        // a purchase on record with no call behind it.
        match sink.write_ledger(&obj.spec.agent_id, &purchase).await {
            Ok(version) => {
                if let Some(budgets) = &self.budgets {
                    let name = ledger::record_name(&obj.spec.agent_id);
                    budgets.settle(&obj.key, &name, &purchase.record);
                }
                for note in notes {
                    sink.note(note);
                }
                Ok((marked, version))
            }
            Err(err) => {
                self.with_guard(|guards| guards.cancel(&obj.key));
                self.release_budget(&obj.key);
                // Nothing was sent: take the marker back (if this write is lost too, the marker
                // counts as a call of unknown outcome, which never buys twice).
                let mut unmarked = marked;
                unmarked.pending_generation = None;
                if let Err(e) = sink.save(&unmarked).await {
                    tracing::warn!(object = %obj.key, error = %e, "the marker of a call that was not sent could not be taken back");
                }
                Err(err.into())
            }
        }
    }

    /// The one POST, keyed by the object's uid and the inputs, so the API can tell a repeat.
    async fn send(
        &self,
        obj: &ObjectView,
        generate: &Purchase,
        secret: &ApiSecret,
    ) -> Result<GenerateReply, RemoteError> {
        let key = format!("{}-{}", obj.uid, generate.idempotency_key);
        let outcome = self
            .client
            .generate(secret, &generate.request, Some(&key))
            .await
            .map_err(|e| RemoteError::from(&e));
        failpoint::hit(failpoint::AFTER_GENERATE_REPLY);
        if outcome.is_ok() {
            let at = self.epoch.elapsed();
            self.with_guard(|guards| guards.accepted(&obj.key, at));
        }
        outcome
    }

    /// What the call's outcome tells the metrics and the spend log.
    fn account_for_call(
        &self,
        obj: &ObjectView,
        generate: &Purchase,
        call: GenerateCall,
        payer: Payer<'_>,
        sink: &mut impl StatusSink,
    ) {
        sink.generate_called(call, payer.account);
        if call != GenerateCall::Refused {
            // One line per call that may have been charged: the spend report of the logs.
            let changed = ledger::changed_inputs(&generate.ledger.record, &generate.inputs_hash);
            tracing::info!(
                target: "dynamics_operator::spend",
                object = %obj.key,
                uid = %obj.uid,
                agent = %obj.spec.agent_id,
                key = %generate.inputs_hash,
                cause = ?generate.cause,
                changed = %changed.join(","),
                outcome = call.as_str(),
                credits = CREDITS_PER_GENERATION,
                account = %payer.account,
                "paid generate call"
            );
        }
    }

    /// Like `finish`, but a conflicting write re-reads the status and re-applies `record` to it:
    /// the outcome of a generate call must reach the store even when someone else wrote meanwhile.
    async fn save_outcome(
        &self,
        obj: &ObjectView,
        input: &Input<'_>,
        status: AgentDynamicsStatus,
        report: Report,
        sink: &mut impl StatusSink,
        record: impl Fn(&AgentDynamicsStatus) -> AgentDynamicsStatus,
    ) -> Result<PassResult, PassError> {
        let mut status = status;
        for attempt in 1.. {
            match self.finish(obj, input, status, report.clone(), sink).await {
                Err(PassError::Save(SaveError::Conflict)) if attempt < OUTCOME_SAVE_ATTEMPTS => {
                    tracing::debug!(object = %obj.key, attempt, "conflict while recording a generate call; re-reading");
                    let fresh = sink.reload().await?;
                    status = record(&fresh);
                }
                result => return result,
            }
        }
        unreachable!("the loop returns by its last attempt")
    }

    /// Settle the status, save it only if it differs from what the store holds, and turn the
    /// report into a requeue with jitter.
    async fn finish(
        &self,
        obj: &ObjectView,
        input: &Input<'_>,
        status: AgentDynamicsStatus,
        report: Report,
        sink: &mut impl StatusSink,
    ) -> Result<PassResult, PassError> {
        let settled = settle(input, status, &report);
        if sink.stored() != Some(&settled) && report.write == Write::Now {
            if newly_stalled(sink.stored(), &report.health) {
                sink.note(note(true, report.health.reason(), report.health.message()));
            }
            sink.save(&settled).await?;
        }
        tracing::debug!(object = %obj.key, reason = report.health.reason(), requeue_ms = report.requeue().as_millis() as u64, "pass finished");
        Ok(PassResult::Requeue {
            next: requeue_after(&report),
            health: report.health,
        })
    }
}

fn asker(obj: &ObjectView) -> Asker<'_> {
    Asker {
        object: &obj.key,
        uid: &obj.uid,
    }
}

/// The spend a generate call put on the ledger (taken back with the call when it is refused).
struct Spent<'a> {
    namespace: &'a str,
    account: &'a str,
    at: Timestamp,
}

/// A generate call the API certainly did not take comes off the ledger again, with its spend,
/// so the object's next attempt is not taken for a purchase and no budget counts it. Best
/// effort: a record left as it is only ever stops a purchase (the object then says so, and how
/// to buy on purpose). Returns the record written.
async fn undo_ledger_call(
    store: &mut impl LedgerStore,
    obj: &ObjectView,
    written: (&DynamicsLedgerSpec, Option<String>),
    key: &str,
    asker: Asker<'_>,
    spent: Spent<'_>,
) -> Option<DynamicsLedgerSpec> {
    let agent = &obj.spec.agent_id;
    let mut current = (Some(written.0.clone()), written.1);
    for _ in 0..LEDGER_ROUNDS {
        let record = ledger::without_call(current.0.as_ref(), key, asker)?;
        let record = budget::with_spend(
            &record,
            spent.at,
            spent.namespace,
            spent.account,
            -(CREDITS_PER_GENERATION as i64),
        );
        let write = LedgerWrite {
            record,
            version: current.1.clone(),
        };
        match store.write_ledger(agent, &write).await {
            Ok(_) => return Some(write.record),
            Err(_) => match store.read_ledger(agent).await {
                LedgerState::Read { record, version } => current = (record, version),
                LedgerState::Unavailable(_) => break,
            },
        }
    }
    tracing::warn!(object = %obj.key, agent = %agent, "a refused generate call could not be taken off the purchase ledger; the object will not buy these inputs automatically");
    None
}

/// Deletion releases the object's claim on its agent; the purchases stay on record. Best
/// effort: a claim left behind names this object, and a new object of the same name takes it
/// over (another object can with `resolve --accept`).
async fn release_claim(obj: &ObjectView, store: &mut impl LedgerStore) {
    // Read whatever the status says: a wiped status, or a crash between the ledger write and
    // the marker, leaves a claim that the status does not show.
    let agent = &obj.spec.agent_id;
    let asker = Asker {
        object: &obj.key,
        uid: &obj.uid,
    };
    for _ in 0..LEDGER_ROUNDS {
        let LedgerState::Read { record, version } = store.read_ledger(agent).await else {
            break;
        };
        let Some(record) = ledger::released(record.as_ref(), asker) else {
            return;
        };
        if store
            .write_ledger(agent, &LedgerWrite { record, version })
            .await
            .is_ok()
        {
            return;
        }
    }
    tracing::warn!(object = %obj.key, agent = %agent, "the object's claim on its agent could not be released from the purchase ledger");
}

/// Change the guards, then send the waiters whose turn that may have brought to `wake`. The
/// guards keep monotonic time from `epoch`: a wall clock set back or forward moves no slot.
fn change_and_wake<R>(
    guards: &Mutex<AccountGuards>,
    wake: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
    epoch: Instant,
    change: impl FnOnce(&mut AccountGuards) -> R,
) -> R {
    let mut guards = guards.lock().expect("guard lock");
    let result = change(&mut guards);
    if let Some(wake) = wake {
        for key in guards.take_woken(epoch.elapsed()) {
            tracing::debug!(object = %key, "woken: a generation slot is free");
            let _ = wake.send(key);
        }
    }
    result
}

/// A Warning note only when the object enters Stalled or changes its stalled reason, so a stuck
/// object does not flood Events.
fn newly_stalled(saved: Option<&AgentDynamicsStatus>, health: &Health) -> bool {
    let Health::Stalled { reason, .. } = health else {
        return false;
    };
    let before = saved.and_then(|s| s.condition(crate::resource::status::CONDITION_STALLED));
    !before.is_some_and(|c| c.status == "True" && &c.reason == reason)
}

/// The next look with jitter, unless it is the expected end of a generation.
fn requeue_after(report: &Report) -> Next {
    if report.next.is_exact() {
        report.next
    } else {
        report.next.with_after(jitter(report.requeue()))
    }
}

fn note(warning: bool, reason: &str, message: &str) -> Note {
    Note::new(warning, reason, message)
}

#[cfg(test)]
mod tests;
