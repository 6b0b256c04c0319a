//! One row per reconcile rule (docs/design.md, "Reconcile" and "Credit safety"), named after it.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::desired::{dynamics_hash, inputs_hash};
use super::ledger::{Asker, LedgerState};
use super::plan::*;
use super::timing::GenerationTiming;
use super::transitions::{after_generate, after_update, settle, take_in_remote, with_marker};
use super::Health;
use crate::resource::{
    AdoptionPolicy, AgentDynamicsSpec, AgentDynamicsStatus, DeletionPolicy, DynamicsBlock,
    DynamicsLedgerSpec, GenerateOutcome, LedgerHolder, LedgerPurchase, ManagementPolicy,
    PendingGeneration,
};
use crate::wire::{
    ApiErrorKind, DynamicsState, GenerateReply, Regeneration, RemoteStatus, UpdateReply,
};

pub(super) const NOW: i64 = 1_800_000_000;

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

pub(super) fn ago(secs: i64) -> String {
    Timestamp::from_second(NOW - secs).unwrap().to_string()
}

pub(super) fn spec() -> AgentDynamicsSpec {
    AgentDynamicsSpec {
        agent_id: "A91XMB7113".into(),
        duration: Some(5),
        model: Some("seedance".into()),
        ..Default::default()
    }
}

pub(super) fn remote(status: Option<RemoteStatus>, url: Option<&str>) -> Observation {
    Observation::Found(DynamicsState {
        agent_id: "A91XMB7113".into(),
        status,
        model_url: url.map(str::to_string),
        gestures: BTreeMap::new(),
        error_message: None,
    })
}

fn ready(url: &str) -> Observation {
    remote(Some(RemoteStatus::Ready), Some(url))
}

fn failed(kind: ApiErrorKind, retry_after: Option<u64>) -> Observation {
    Observation::Failed(RemoteError {
        retry_after: retry_after.map(Duration::from_secs),
        ..RemoteError::of_kind(kind, format!("{kind:?}"))
    })
}

/// Status of an object whose current spec was generated once and applied.
pub(super) fn converged(spec: &AgentDynamicsSpec) -> AgentDynamicsStatus {
    AgentDynamicsStatus {
        generate_hash: Some(inputs_hash(spec)),
        dynamics_hash: Some(dynamics_hash(spec)),
        generations: 1,
        applied_for_generation: Some(1),
        last_generation_time: Some(ago(600)),
        ..Default::default()
    }
}

pub(super) fn generated_not_applied(spec: &AgentDynamicsSpec) -> AgentDynamicsStatus {
    AgentDynamicsStatus {
        dynamics_hash: None,
        applied_for_generation: None,
        ..converged(spec)
    }
}

/// A status whose generate call for `spec` was sent `age` seconds ago with `outcome`, when GET
/// showed `prev_status` / `prev_url` before it.
fn marker(
    spec: &AgentDynamicsSpec,
    age: i64,
    outcome: Option<GenerateOutcome>,
    prev_status: Option<&str>,
    prev_url: Option<&str>,
) -> AgentDynamicsStatus {
    let accepted = outcome == Some(GenerateOutcome::Accepted);
    AgentDynamicsStatus {
        pending_generation: Some(PendingGeneration {
            inputs_hash: inputs_hash(spec),
            since: ago(age),
            outcome,
            previous_remote_status: prev_status.map(str::to_string),
            previous_model_url: prev_url.map(str::to_string),
            previous_gestures: vec![],
            previous_hidden: false,
            ledger_first: false,
        }),
        generate_hash: accepted.then(|| inputs_hash(spec)),
        generations: i64::from(outcome.is_some()),
        ..Default::default()
    }
}

/// An earlier purchase converged, then a new call for `spec` is pending on top of it.
fn marker_over(
    old: &AgentDynamicsSpec,
    spec: &AgentDynamicsSpec,
    age: i64,
    outcome: Option<GenerateOutcome>,
    prev_url: &str,
) -> AgentDynamicsStatus {
    let pending = marker(spec, age, outcome, Some("ready"), Some(prev_url));
    let mut status = converged(old);
    status.pending_generation = pending.pending_generation;
    if outcome == Some(GenerateOutcome::Accepted) {
        status.generate_hash = Some(inputs_hash(spec));
    }
    status
}

const ACCEPTED: Option<GenerateOutcome> = Some(GenerateOutcome::Accepted);
const UNKNOWN: Option<GenerateOutcome> = Some(GenerateOutcome::Unknown);
/// The default visibility window, in seconds.
const WINDOW: i64 = 15 * 60;

struct Row {
    name: &'static str,
    spec: AgentDynamicsSpec,
    status: AgentDynamicsStatus,
    remote: Option<Observation>,
    deleting: bool,
    blocker: Option<Blocker>,
    ledger: Option<LedgerState>,
    resolve: Option<&'static str>,
    outdated: bool,
    approval: Approval<'static>,
    want: &'static str,
}

/// A ledger read that found nothing for the agent.
fn empty_ledger() -> Option<LedgerState> {
    Some(LedgerState::Read {
        record: None,
        version: None,
    })
}

/// A ledger read that found `keys` bought (the last one latest), held by `holder`.
fn ledger_with(holder: Option<(&str, &str)>, keys: &[&str]) -> Option<LedgerState> {
    let record = DynamicsLedgerSpec {
        agent_id: "A91XMB7113".into(),
        holder: holder.map(|(object, uid)| LedgerHolder {
            object: object.into(),
            uid: uid.into(),
        }),
        purchases: keys
            .iter()
            .map(|k| LedgerPurchase {
                key: k.to_string(),
                inputs: None,
                at: ago(3600),
                object: "agents/earlier".into(),
                uid: "uid-earlier".into(),
                calls: 1,
            })
            .collect(),
        spend: vec![],
    };
    Some(LedgerState::Read {
        record: Some(record),
        version: Some("7".into()),
    })
}

static NOTHING_ON_RECORD: LedgerState = LedgerState::Read {
    record: None,
    version: None,
};

/// `ledger` with its purchases made `secs` ago.
fn bought_ago(ledger: Option<LedgerState>, secs: i64) -> Option<LedgerState> {
    match ledger {
        Some(LedgerState::Read {
            record: Some(mut record),
            version,
        }) => {
            for p in &mut record.purchases {
                p.at = ago(secs);
            }
            Some(LedgerState::Read {
                record: Some(record),
                version,
            })
        }
        other => other,
    }
}

/// The object every row decides for.
const ASKER: Asker = Asker {
    object: "agents/support",
    uid: "uid-1",
};

fn row(
    name: &'static str,
    spec: AgentDynamicsSpec,
    status: AgentDynamicsStatus,
    remote: Option<Observation>,
    want: &'static str,
) -> Row {
    Row {
        name,
        spec,
        status,
        remote,
        deleting: false,
        blocker: None,
        ledger: empty_ledger(),
        resolve: None,
        outdated: false,
        approval: Approval::default(),
        want,
    }
}

impl Row {
    fn with_ledger(self, ledger: Option<LedgerState>) -> Self {
        Row { ledger, ..self }
    }

    fn outdated(self) -> Self {
        Row {
            outdated: true,
            ..self
        }
    }

    fn approval(self, approved: Option<&'static str>) -> Self {
        Row {
            approval: Approval {
                required: true,
                approved,
            },
            ..self
        }
    }

    fn resolved(self, value: &'static str) -> Self {
        Row {
            resolve: Some(value),
            ..self
        }
    }
}

/// A short, readable name for an action.
fn action_name(action: &Action) -> String {
    match action {
        Action::Observe => "observe".into(),
        Action::ConsultLedger => "consult-ledger".into(),
        Action::Adopt(a) => format!("adopt:{:?}", a.from),
        Action::Generate(_) => "generate".into(),
        Action::Update { .. } => "update".into(),
        Action::Disable(_) => "disable".into(),
        Action::Release => "release".into(),
        Action::Report(r) => {
            let kind = match &r.health {
                Health::Ready { .. } => "ready",
                Health::Progressing { .. } => "progressing",
                Health::Stalled { .. } => "stalled",
                Health::Suspended => "suspended",
            };
            format!("{kind}:{}", r.health.reason())
        }
    }
}

fn decide(r: &Row) -> Action {
    let settings = Settings::default();
    plan(&Input {
        approval: r.approval,
        asker: ASKER,
        spec: &r.spec,
        status: &r.status,
        generation: 1,
        requested_at: None,
        resolve: r.resolve,
        deleting: r.deleting,
        blocker: r.blocker.clone(),
        remote: r.remote.as_ref(),
        ledger: r.ledger.as_ref(),
        record_outdated: r.outdated,
        failures: 0,
        timing: None,
        now: now(),
        settings: &settings,
    })
}

/// `status` Reconciling since `secs` ago, its last generation sent that long ago too.
fn reconciling_since(status: AgentDynamicsStatus, secs: i64) -> AgentDynamicsStatus {
    let at = Timestamp::from_second(NOW - secs).unwrap();
    AgentDynamicsStatus {
        conditions: super::conditions::conditions(
            &[],
            &Health::progressing("Generating", "the API reports queued"),
            1,
            at,
        ),
        last_generation_time: Some(ago(secs)),
        ..status
    }
}

/// The spec of an earlier generation (before a regenerate), for rows that start from it.
fn regen_base() -> AgentDynamicsSpec {
    AgentDynamicsSpec {
        regenerate: Some("before".into()),
        ..spec()
    }
}

#[test]
fn every_rule() {
    let s = spec();
    let edited = AgentDynamicsSpec {
        duration: Some(3),
        ..spec()
    };
    let disabled = AgentDynamicsSpec {
        dynamics: Some(DynamicsBlock {
            enabled: false,
            ..Default::default()
        }),
        ..spec()
    };
    let regen = AgentDynamicsSpec {
        regenerate: Some("again".into()),
        ..spec()
    };
    let key_of_s: &'static str = Box::leak(inputs_hash(&s).into_boxed_str());
    let observing = AgentDynamicsSpec {
        management_policy: ManagementPolicy::Observe,
        ..spec()
    };
    let new_object = AgentDynamicsStatus::default();
    let url = "https://m/1.bin";
    let generating = || remote(Some(RemoteStatus::Generating), Some(url));

    let old_url = "https://m/0.bin";
    let queued = || remote(Some(RemoteStatus::Unknown("queued".into())), None);
    let nothing = || remote(None, None);
    let stalled_old_marker = marker(&s, WINDOW + 60, UNKNOWN, None, None);
    let rows =
        vec![
        row(
            "first pass observes before deciding",
            s.clone(),
            new_object.clone(),
            None,
            "observe",
        ),
        row(
            "no dynamics remotely, never bought: generate",
            s.clone(),
            new_object.clone(),
            Some(nothing()),
            "generate",
        ),
        row(
            "remote has dynamics and nothing is on record: adopted, nothing bought",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "adopt:Existing",
        ),
        row(
            "remote generating for someone else, nothing on record: wait, then adopt",
            s.clone(),
            new_object.clone(),
            Some(generating()),
            "progressing:Generating",
        ),
        row(
            "remote has dynamics, nothing on record, the object asks to regenerate: generate",
            AgentDynamicsSpec {
                adoption_policy: AdoptionPolicy::Regenerate,
                ..spec()
            },
            new_object.clone(),
            Some(ready(url)),
            "generate",
        ),
        row(
            "remote has dynamics, other inputs bought for the agent: the edit buys",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "generate",
        )
        .with_ledger(ledger_with(None, &["0123456789abcdef"])),
        row(
            "another object bought for the agent a minute ago: wait until its job can be told apart",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "progressing:WaitingForPreviousGeneration",
        )
        .with_ledger(bought_ago(ledger_with(None, &["0123456789abcdef"]), 60)),
        row(
            "another object's purchase stamped an hour in the future (a wrong clock): no wait",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "generate",
        )
        .with_ledger(bought_ago(ledger_with(None, &["0123456789abcdef"]), -3600)),
        row(
            "this object's own purchase a minute ago, then an edit: bought at once",
            edited.clone(),
            converged(&s),
            Some(ready(url)),
            "generate",
        )
        .with_ledger(bought_ago(ledger_with(None, &[&inputs_hash(&s)]), 60)),
        Row {
            name: "about to buy, the ledger not read yet: read it first",
            ledger: None,
            ..row("", s.clone(), new_object.clone(), Some(nothing()), "consult-ledger")
        },
        row(
            "re-created or replaced object, same inputs: taken over from the ledger",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "adopt:Ledger",
        )
        .with_ledger(ledger_with(None, &[&inputs_hash(&s)])),
        row(
            "status wiped, same object: taken over from the ledger, even with no dynamics shown",
            s.clone(),
            new_object.clone(),
            Some(nothing()),
            "adopt:Ledger",
        )
        .with_ledger(ledger_with(Some(("agents/support", "uid-1")), &[&inputs_hash(&s)])),
        row(
            "another object (namespace, install) holds the agent: conflict, nothing sent",
            s.clone(),
            new_object.clone(),
            Some(nothing()),
            "stalled:Conflict",
        )
        .with_ledger(ledger_with(Some(("team-b/agent", "uid-9")), &[])),
        row(
            "inputs bought before for the agent, other inputs since: not bought twice",
            s.clone(),
            converged(&edited),
            Some(ready(url)),
            "stalled:InputsAlreadyBought",
        )
        .with_ledger(ledger_with(None, &[&inputs_hash(&s), &inputs_hash(&edited)])),
        row(
            "the ledger cannot be read: nothing bought, backing off",
            s.clone(),
            new_object.clone(),
            Some(nothing()),
            "progressing:LedgerUnavailable",
        )
        .with_ledger(Some(LedgerState::Unavailable("forbidden".into()))),
        row(
            "generate input edited: generate once more",
            edited.clone(),
            converged(&s),
            Some(ready(url)),
            "generate",
        ),
        row(
            "regenerate changed: generate with the same inputs",
            regen.clone(),
            converged(&s),
            Some(ready(url)),
            "generate",
        ),
        row(
            "edit reverted to inputs bought before: stalled, not bought twice",
            s.clone(),
            AgentDynamicsStatus {
                bought_keys: vec![inputs_hash(&s), inputs_hash(&regen)],
                ..converged(&regen)
            },
            Some(ready(url)),
            "stalled:InputsAlreadyBought",
        ),
        row(
            "regenerate: \"\" added is no change",
            AgentDynamicsSpec {
                regenerate: Some(String::new()),
                ..spec()
            },
            converged(&s),
            Some(ready(url)),
            "ready:Ready",
        ),
        row(
            "remote processing: wait and poll, never POST",
            s.clone(),
            converged(&s),
            Some(remote(Some(RemoteStatus::Processing), None)),
            "progressing:Generating",
        ),
        row(
            "remote generating: wait and poll",
            s.clone(),
            converged(&s),
            Some(generating()),
            "progressing:Generating",
        ),
        row(
            "remote completed (transitional): wait",
            s.clone(),
            converged(&s),
            Some(remote(Some(RemoteStatus::Completed), Some(url))),
            "progressing:Generating",
        ),
        row(
            "unknown remote status (queued) is work under way: wait",
            s.clone(),
            converged(&s),
            Some(queued()),
            "progressing:Generating",
        ),
        row(
            "edit during a generation is coalesced: wait, not POST",
            edited.clone(),
            converged(&s),
            Some(generating()),
            "progressing:Generating",
        ),
        row(
            "edit while the API reports an unknown status: wait, not POST",
            edited.clone(),
            converged(&s),
            Some(queued()),
            "progressing:Generating",
        ),
        row(
            "ready and not applied: PUT the dynamics block",
            s.clone(),
            generated_not_applied(&s),
            Some(ready(url)),
            "update",
        ),
        row(
            "dynamics block edited: PUT, no generate",
            disabled.clone(),
            converged(&s),
            Some(ready(url)),
            "update",
        ),
        row(
            "new generation ready: PUT again to switch it on",
            s.clone(),
            AgentDynamicsStatus {
                generations: 2,
                ..converged(&s)
            },
            Some(ready(url)),
            "update",
        ),
        row(
            "ready and applied: Ready, resync only",
            s.clone(),
            converged(&s),
            Some(ready(url)),
            "ready:Ready",
        ),
        row(
            "remote generation failed: stalled until the spec changes",
            s.clone(),
            converged(&s),
            Some(remote(Some(RemoteStatus::Failed), None)),
            "stalled:GenerationFailed",
        ),
        row(
            "failed, then a generate input edited: generate",
            edited.clone(),
            converged(&s),
            Some(remote(Some(RemoteStatus::Failed), None)),
            "generate",
        ),
        // The remote lost what was bought: never bought again on the operator's initiative.
        row(
            "converged, remote answers data: null: stalled, not bought",
            s.clone(),
            converged(&s),
            Some(nothing()),
            "stalled:RemoteDynamicsMissing",
        ),
        row(
            "converged, remote answers 404: stalled, not bought",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::NotFound, None)),
            "stalled:RemoteDynamicsMissing",
        ),
        row(
            "never bought, GET 404: the agent does not exist",
            s.clone(),
            new_object.clone(),
            Some(failed(ApiErrorKind::NotFound, None)),
            "stalled:AgentNotFound",
        ),
        row(
            "400 stalls",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::InvalidRequest, None)),
            "stalled:InvalidRequest",
        ),
        row(
            "401 stalls",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::Unauthorized, None)),
            "stalled:Unauthorized",
        ),
        row(
            "402 stalls",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::InsufficientCredits, None)),
            "stalled:InsufficientCredits",
        ),
        row(
            "429 backs off",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::RateLimited, Some(7))),
            "progressing:RateLimited",
        ),
        row(
            "503 backs off",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::Unavailable, Some(7))),
            "progressing:RemoteUnavailable",
        ),
        row(
            "500 backs off",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::Server, None)),
            "progressing:RemoteError",
        ),
        row(
            "timeout backs off",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::Timeout, None)),
            "progressing:Timeout",
        ),
        row(
            "unparseable reply backs off",
            s.clone(),
            converged(&s),
            Some(failed(ApiErrorKind::Decode, None)),
            "progressing:BadReply",
        ),
        row(
            "suspended: nothing read or sent",
            AgentDynamicsSpec {
                suspend: true,
                ..spec()
            },
            converged(&s),
            None,
            "suspended:Suspended",
        ),
        Row {
            blocker: Some(Blocker::Conflict {
                owner: "agents/first".into(),
            }),
            ..row(
                "same agentId as an older object: Conflict",
                s.clone(),
                new_object.clone(),
                None,
                "stalled:Conflict",
            )
        },
        Row {
            blocker: Some(Blocker::Secret {
                reason: "SecretNotFound".into(),
                message: "Secret agents/x not found".into(),
            }),
            ..row(
                "missing Secret: stalled before any call",
                s.clone(),
                new_object.clone(),
                None,
                "stalled:SecretNotFound",
            )
        },
        row(
            "a spec field this operator does not know: stalled, naming it",
            AgentDynamicsSpec {
                unknown_fields: [("newField".to_string(), serde_json::json!(1))].into(),
                ..spec()
            },
            new_object.clone(),
            None,
            "stalled:UnknownSpecField",
        ),
        // Credit safety: a bought or pending key is never bought again, whatever GET shows.
        row(
            "accepted, GET shows nothing yet: wait, never buy again",
            s.clone(),
            marker(&s, 3, ACCEPTED, None, None),
            Some(nothing()),
            "progressing:AwaitingGeneration",
        ),
        row(
            "accepted, GET still shows the old ready model: wait",
            s.clone(),
            marker_over(&regen_base(), &s, 3, ACCEPTED, old_url),
            Some(ready(old_url)),
            "progressing:AwaitingGeneration",
        ),
        row(
            "accepted, GET answers 404 (lagging): wait",
            s.clone(),
            marker(&s, 3, ACCEPTED, None, None),
            Some(failed(ApiErrorKind::NotFound, None)),
            "progressing:AwaitingGeneration",
        ),
        row(
            "accepted, invisible past the window: stalled, nothing sent",
            s.clone(),
            marker(&s, WINDOW + 1, ACCEPTED, None, None),
            Some(nothing()),
            "stalled:GenerationNotVisible",
        ),
        row(
            "accepted, edited meanwhile: coalesced, wait",
            edited.clone(),
            marker(&s, 3, ACCEPTED, None, None),
            Some(nothing()),
            "progressing:AwaitingGeneration",
        ),
        row(
            "outcome unknown, GET unchanged, young: wait",
            s.clone(),
            marker(&s, 5, UNKNOWN, Some("ready"), Some(url)),
            Some(ready(url)),
            "progressing:GenerationOutcomePending",
        ),
        row(
            "outcome unknown, fixed URL, past the window: stalled, never resent",
            s.clone(),
            marker(&s, WINDOW + 1, UNKNOWN, Some("ready"), Some(url)),
            Some(ready(url)),
            "stalled:GenerationOutcomeUnknown",
        ),
        row(
            "crash between marker and reply (no outcome), nothing shown: wait",
            s.clone(),
            marker(&s, 5, None, None, None),
            Some(nothing()),
            "progressing:GenerationOutcomePending",
        ),
        row(
            "crash between marker and reply, long ago: stalled, never resent",
            s.clone(),
            marker(&s, WINDOW * 10, None, None, None),
            Some(nothing()),
            "stalled:GenerationOutcomeUnknown",
        ),
        row(
            "marker from the future (clock skew) is fresh: wait",
            s.clone(),
            marker(&s, -3600, UNKNOWN, None, None),
            Some(nothing()),
            "progressing:GenerationOutcomePending",
        ),
        row(
            "marker with an unreadable time: stalled, never resent",
            s.clone(),
            AgentDynamicsStatus {
                pending_generation: Some(PendingGeneration {
                    since: "yesterday".into(),
                    ..marker(&s, 0, UNKNOWN, None, None)
                        .pending_generation
                        .unwrap()
                }),
                ..Default::default()
            },
            Some(nothing()),
            "stalled:GenerationOutcomeUnknown",
        ),
        row(
            "stalled unknown outcome, user sets a new regenerate: that change buys",
            edited.clone(),
            stalled_old_marker.clone(),
            Some(nothing()),
            "generate",
        ),
        row(
            "stalled unknown outcome, a job in progress shows up: wait for it",
            edited.clone(),
            stalled_old_marker,
            Some(generating()),
            "progressing:Generating",
        ),
        // Approval of paid changes (--require-approval).
        row(
            "approval required, none given: waits with the key and the cost",
            s.clone(),
            new_object.clone(),
            Some(nothing()),
            "progressing:ApprovalRequired",
        )
        .approval(None),
        row(
            "approval required, this key approved: generate",
            s.clone(),
            new_object.clone(),
            Some(nothing()),
            "generate",
        )
        .approval(Some(key_of_s)),
        row(
            "approval required, another key approved: still waits",
            edited.clone(),
            converged(&s),
            Some(ready(url)),
            "progressing:ApprovalRequired",
        )
        .approval(Some(key_of_s)),
        row(
            "approval required, existing dynamics: adopted, nothing to approve",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "adopt:Existing",
        )
        .approval(None),
        row(
            "approval required, a dynamics edit: PUT, it costs nothing",
            disabled.clone(),
            converged(&s),
            Some(ready(url)),
            "update",
        )
        .approval(None),
        row(
            "approval required, resolve retry: the user's own decision, sent",
            s.clone(),
            marker(&s, WINDOW + 60, ACCEPTED, None, None),
            Some(nothing()),
            "generate",
        )
        .resolved("retry")
        .approval(None),
        // managementPolicy: Observe.
        row(
            "observe: the first pass reads",
            observing.clone(),
            new_object.clone(),
            None,
            "observe",
        ),
        row(
            "observe, no dynamics remotely: reported, never generated",
            observing.clone(),
            new_object.clone(),
            Some(nothing()),
            "ready:Observed",
        ),
        row(
            "observe, dynamics remotely: reported, never adopted or applied",
            observing.clone(),
            new_object.clone(),
            Some(ready(url)),
            "ready:Observed",
        ),
        row(
            "observe an object that was converged with other dynamics: nothing is PUT",
            AgentDynamicsSpec {
                dynamics: disabled.dynamics.clone(),
                ..observing.clone()
            },
            converged(&s),
            Some(ready(url)),
            "ready:Observed",
        ),
        Row {
            blocker: Some(Blocker::Conflict {
                owner: "agents/manager".into(),
            }),
            ..row(
                "observe an agent another object manages: no conflict, it only reads",
                observing.clone(),
                new_object.clone(),
                Some(ready(url)),
                "ready:Observed",
            )
        },
        row(
            "observe, the API refuses the secret: stalled as any object",
            observing.clone(),
            new_object.clone(),
            Some(failed(ApiErrorKind::Unauthorized, None)),
            "stalled:Unauthorized",
        ),
        Row {
            deleting: true,
            ..row(
                "delete an observing object that was converged before: release, no call",
                observing.clone(),
                converged(&s),
                None,
                "release",
            )
        },
        // Deletion.
        Row {
            deleting: true,
            ..row(
                "delete with Disable: PUT enabled=false",
                s.clone(),
                converged(&s),
                None,
                "disable",
            )
        },
        Row {
            deleting: true,
            ..row(
                "delete with Orphan: release, no call",
                AgentDynamicsSpec {
                    deletion_policy: DeletionPolicy::Orphan,
                    ..spec()
                },
                converged(&s),
                None,
                "release",
            )
        },
        Row {
            deleting: true,
            ..row(
                "delete before anything was sent: release",
                s.clone(),
                new_object.clone(),
                None,
                "release",
            )
        },
        Row {
            deleting: true,
            ..row(
                "delete with a call pending: Disable",
                s.clone(),
                marker(&s, 5, None, None, None),
                None,
                "disable",
            )
        },
        Row {
            deleting: true,
            ..row(
                "delete while suspended: release, no call",
                AgentDynamicsSpec {
                    suspend: true,
                    ..spec()
                },
                converged(&s),
                None,
                "release",
            )
        },
        Row {
            deleting: true,
            blocker: Some(Blocker::Conflict {
                owner: "agents/first".into(),
            }),
            ..row(
                "delete of the conflicting object: release, the owner keeps the agent",
                s.clone(),
                converged(&s),
                None,
                "release",
            )
        },
        Row {
            deleting: true,
            blocker: Some(Blocker::Secret {
                reason: "SecretNotFound".into(),
                message: "Secret agents/x not found".into(),
            }),
            ..row(
                "delete without a Secret: stalled, says how to orphan, finalizer kept",
                s.clone(),
                converged(&s),
                None,
                "stalled:SecretNotFound",
            )
        },
        // Every stall about money has two ways out, each taken once per annotation value.
        row(
            "outcome unknown past the window, resolve accept: taken as bought, nothing sent",
            s.clone(),
            marker(&s, WINDOW + 60, UNKNOWN, None, None),
            Some(nothing()),
            "adopt:Resolved",
        )
        .resolved("accept@2026-12-06T10:00:00Z"),
        row(
            "accepted call never shown, resolve retry: the call once more",
            s.clone(),
            marker(&s, WINDOW + 60, ACCEPTED, None, None),
            Some(nothing()),
            "generate",
        )
        .resolved("retry"),
        Row {
            status: AgentDynamicsStatus {
                last_handled_resolve: Some("retry".into()),
                ..marker(&s, WINDOW + 60, UNKNOWN, None, None)
            },
            ..row(
                "a resolve value already handled resolves nothing again",
                s.clone(),
                AgentDynamicsStatus::default(),
                Some(nothing()),
                "stalled:GenerationOutcomeUnknown",
            )
            .resolved("retry")
        },
        row(
            "resolve retry while the call is young: waits, never a second call",
            s.clone(),
            marker(&s, 60, UNKNOWN, None, None),
            Some(nothing()),
            "progressing:GenerationOutcomePending",
        )
        .resolved("retry"),
        row(
            "reverted inputs, resolve accept: taken as bought",
            s.clone(),
            AgentDynamicsStatus {
                bought_keys: vec![inputs_hash(&s), inputs_hash(&regen)],
                ..converged(&regen)
            },
            Some(ready(url)),
            "adopt:Resolved",
        )
        .resolved("accept"),
        row(
            "remote lost the dynamics, resolve retry: bought again on purpose",
            s.clone(),
            converged(&s),
            Some(nothing()),
            "generate",
        )
        .resolved("retry"),
        row(
            "remote lost the dynamics, resolve accept: nothing to accept, still stalled",
            s.clone(),
            converged(&s),
            Some(nothing()),
            "stalled:RemoteDynamicsMissing",
        )
        .resolved("accept"),
        row(
            "another object holds the agent, resolve accept: taken over, nothing sent",
            s.clone(),
            new_object.clone(),
            Some(ready(url)),
            "adopt:Resolved",
        )
        .with_ledger(ledger_with(Some(("team-b/agent", "uid-9")), &[]))
        .resolved("accept"),
        row(
            "resolve on a converged object: nothing to resolve",
            s.clone(),
            converged(&s),
            Some(ready(url)),
            "ready:Ready",
        )
        .resolved("retry"),
        row(
            "an unknown remote status past the window, nothing in flight: stalled",
            s.clone(),
            reconciling_since(converged(&s), WINDOW + 60),
            Some(queued()),
            "stalled:RemoteStatusUnknown",
        ),
        row(
            "an unknown remote status past the window, resolve accept: taken as finished",
            s.clone(),
            reconciling_since(converged(&s), WINDOW + 60),
            Some(queued()),
            "adopt:Resolved",
        )
        .resolved("accept"),
        row(
            "an unknown remote status the user accepted: not work under way",
            s.clone(),
            AgentDynamicsStatus {
                accepted_remote_status: Some("queued".into()),
                ..converged(&s)
            },
            Some(remote(
                Some(RemoteStatus::Unknown("queued".into())),
                Some(url),
            )),
            "ready:Ready",
        ),
        row(
            "an edit over a record older than the API (a restored copy): nothing bought",
            edited.clone(),
            converged(&s),
            Some(ready(url)),
            "stalled:StateOutdated",
        )
        .outdated(),
        row(
            "stalled on a restored record: stays stalled though the record now matches the API",
            edited.clone(),
            AgentDynamicsStatus {
                conditions: super::conditions::conditions(
                    &[],
                    &Health::stalled("StateOutdated", "older"),
                    1,
                    now(),
                ),
                ..converged(&s)
            },
            Some(ready(url)),
            "stalled:StateOutdated",
        ),
        row(
            "a restored record, resolve accept: the API's dynamics taken as these inputs'",
            edited.clone(),
            converged(&s),
            Some(ready(url)),
            "adopt:Resolved",
        )
        .outdated()
        .resolved("accept"),
        row(
            "a restored record, resolve retry: bought on purpose",
            edited.clone(),
            converged(&s),
            Some(ready(url)),
            "generate",
        )
        .outdated()
        .resolved("retry"),
        row(
            "an unknown remote status within the window: still waiting",
            s.clone(),
            reconciling_since(converged(&s), 60),
            Some(queued()),
            "progressing:Generating",
        ),
    ];

    let mut failures = Vec::new();
    for r in &rows {
        let got = action_name(&decide(r));
        if got != r.want {
            failures.push(format!("{}: want {}, got {got}", r.name, r.want));
        }
    }
    assert!(
        failures.is_empty(),
        "rules broken:\n{}",
        failures.join("\n")
    );
}

fn input<'a>(
    spec: &'a AgentDynamicsSpec,
    status: &'a AgentDynamicsStatus,
    remote: Option<&'a Observation>,
    settings: &'a Settings,
) -> Input<'a> {
    Input {
        asker: ASKER,
        spec,
        status,
        generation: 4,
        requested_at: Some("2026-11-29T10:00:00Z"),
        resolve: None,
        approval: Approval::default(),
        deleting: false,
        blocker: None,
        remote,
        ledger: Some(&NOTHING_ON_RECORD),
        record_outdated: false,
        failures: 0,
        timing: None,
        now: now(),
        settings,
    }
}

fn plan_report(action: Action) -> Report {
    match action {
        Action::Report(r) => r,
        other => panic!("expected a report, got {other:?}"),
    }
}

fn requeue_of(action: Action) -> Duration {
    match action {
        Action::Report(r) => r.requeue(),
        other => panic!("expected a report, got {other:?}"),
    }
}

#[test]
fn requeues_follow_the_rules() {
    let settings = Settings::default();
    let s = spec();
    let st = converged(&s);
    let ready_obs = ready("https://m/1.bin");
    assert_eq!(
        requeue_of(plan(&input(&s, &st, Some(&ready_obs), &settings))),
        settings.resync,
        "converged: drift resync only"
    );

    let rate_limited = failed(ApiErrorKind::RateLimited, Some(42));
    assert_eq!(
        requeue_of(plan(&input(&s, &st, Some(&rate_limited), &settings))),
        Duration::from_secs(42),
        "429 honours Retry-After"
    );

    let unauthorized = failed(ApiErrorKind::Unauthorized, None);
    assert_eq!(
        requeue_of(plan(&input(&s, &st, Some(&unauthorized), &settings))),
        settings.stalled_retry,
        "stalled retries slowly"
    );

    // Transient errors back off exponentially, bounded.
    let server = failed(ApiErrorKind::Server, None);
    let waits: Vec<Duration> = [0, 1, 2, 30]
        .into_iter()
        .map(|failures| {
            requeue_of(plan(&Input {
                failures,
                timing: None,
                ..input(&s, &st, Some(&server), &settings)
            }))
        })
        .collect();
    assert_eq!(
        waits,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4),
            settings.backoff_max
        ]
    );

    // Polling slows as a generation runs long, within bounds.
    let generating = remote(Some(RemoteStatus::Generating), None);
    let poll_after = |started_ago: i64| {
        let st = AgentDynamicsStatus {
            last_generation_time: Some(ago(started_ago)),
            ..converged(&s)
        };
        requeue_of(plan(&input(&s, &st, Some(&generating), &settings)))
    };
    assert_eq!(poll_after(0), settings.poll_min);
    assert_eq!(poll_after(40), Duration::from_secs(10));
    assert_eq!(poll_after(3600), settings.poll_max);

    // Once the account's generation time is known, the poll comes at the expected end, exactly
    // (no jitter), and a thirty-second of a generation after it while it runs late.
    let timed = |elapsed: u64, expected: u64| {
        let st = converged(&s);
        let action = plan(&Input {
            timing: Some(GenerationTiming {
                elapsed: Duration::from_secs(elapsed),
                expected: Duration::from_secs(expected),
            }),
            ..input(&s, &st, Some(&generating), &settings)
        });
        match action {
            Action::Report(r) => (r.requeue(), r.next.is_exact()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(timed(10, 30), (Duration::from_secs(20), true));
    assert_eq!(timed(200, 64), (Duration::from_secs(2), true));
    assert!(
        !plan_report(plan(&input(&s, &st, Some(&generating), &settings)))
            .next
            .is_exact()
    );

    // A pending call is polled like a generation, and never beyond the end of its window.
    let nothing = remote(None, None);
    let young = marker(&s, 0, ACCEPTED, None, None);
    assert_eq!(
        requeue_of(plan(&input(&s, &young, Some(&nothing), &settings))),
        settings.poll_min
    );
    let near_end = AgentDynamicsStatus {
        last_generation_time: Some(ago(WINDOW - 2)),
        ..marker(&s, WINDOW - 2, ACCEPTED, None, None)
    };
    assert_eq!(
        requeue_of(plan(&input(&s, &near_end, Some(&nothing), &settings))),
        Duration::from_secs(2)
    );

    // Retry-After is honoured but capped: no answer of the API parks an object for days.
    let hostile = Observation::Failed(RemoteError {
        retry_after: Some(Duration::MAX),
        ..RemoteError::of_kind(ApiErrorKind::RateLimited, "slow down")
    });
    assert_eq!(
        requeue_of(plan(&input(&s, &st, Some(&hostile), &settings))),
        MAX_REMOTE_WAIT
    );
}

/// A look that finds a generation still running leaves the status for the next write while the
/// generation is young or on time, unless it was bought for other inputs.
#[test]
fn a_look_that_finds_a_generation_running_on_time_leaves_the_write_for_later() {
    let settings = Settings::default(); // poll_max 30 s
    let s = spec();
    let changed = AgentDynamicsSpec {
        duration: Some(s.duration.unwrap_or(10) + 1),
        ..s.clone()
    };
    let generating = remote(Some(RemoteStatus::Generating), None);
    let secs = Duration::from_secs;
    // (spec, seconds since the call, elapsed and expected in seconds or untimed, the write can wait)
    type Case<'a> = (&'a AgentDynamicsSpec, i64, Option<(u64, u64)>, bool);
    let rows: [Case; 11] = [
        (&s, 600, Some((30, 30)), true),
        (&s, 600, Some((59, 30)), true),
        (&s, 600, Some((60, 30)), false), // late by a whole generation: shown as running
        (&s, 600, Some((599, 570)), true), // late by less than poll_max (30 s)
        (&s, 600, Some((600, 570)), false),
        (&s, 600, None, false), // no estimate, running for minutes: shown as running
        (&s, 2, None, true),    // no estimate yet, sent moments ago: it may end any moment
        (&s, 30, None, true),   // the stamp's whole seconds: up to poll_max + 1 s
        (&s, 31, None, false),
        (&s, 2, Some((1, 0)), true), // late against a tiny estimate, but young
        (&changed, 2, Some((30, 30)), false), // the spec changed: say so now
    ];
    for (spec, age, timing, expected) in rows {
        let st = AgentDynamicsStatus {
            last_generation_time: Some(ago(age)),
            ..converged(&s)
        };
        let report = plan_report(plan(&Input {
            timing: timing.map(|(elapsed, expected)| GenerationTiming {
                elapsed: secs(elapsed),
                expected: secs(expected),
            }),
            ..input(spec, &st, Some(&generating), &settings)
        }));
        assert_eq!(
            report.write == Write::WithNext,
            expected,
            "sent {age} s ago, timing {timing:?}, spec changed: {}",
            !std::ptr::eq(spec, &s)
        );
    }
}

#[test]
fn no_error_path_loops_hot() {
    let settings = Settings::default();
    let s = spec();
    let st = converged(&s);
    for kind in ApiErrorKind::ALL {
        // Even a Retry-After of zero must not requeue at once.
        let obs = failed(kind, Some(0));
        let wait = requeue_of(plan(&input(&s, &st, Some(&obs), &settings)));
        assert!(
            wait >= settings.backoff_base,
            "{kind:?} requeues after {wait:?}"
        );
    }
}

#[test]
fn generate_lifecycle_marks_then_records_and_keeps_the_marker_until_seen() {
    let settings = Settings::default();
    let s = spec();
    let base = AgentDynamicsStatus::default();
    let obs = remote(None, None);
    let Observation::Found(state) = &obs else {
        unreachable!()
    };
    let inp = input(&s, &base, Some(&obs), &settings);
    let Action::Generate(gp) = plan(&inp) else {
        panic!("expected generate")
    };
    assert_eq!(gp.cause, GenerateCause::FirstGeneration);

    let marked = with_marker(&base, &gp, Some(state), now());
    let pending = marked
        .pending_generation
        .as_ref()
        .expect("marker written before the call");
    assert_eq!(pending.inputs_hash, inputs_hash(&s));
    assert_eq!(pending.since, now().to_string());
    assert_eq!(pending.outcome, None);

    let with_mark = input(&s, &marked, Some(&obs), &settings);
    // Accepted: bought and counted, but the marker stays until GET shows the job.
    let reply = GenerateReply {
        message: None,
        agent_id: None,
        status: Some(RemoteStatus::Processing),
    };
    let (accepted, report) = after_generate(&with_mark, &gp, Ok(&reply));
    assert_eq!(accepted.generate_hash, Some(inputs_hash(&s)));
    assert_eq!(accepted.generations, 1);
    assert_eq!(
        accepted.pending_generation.as_ref().and_then(|p| p.outcome),
        ACCEPTED
    );
    assert_eq!(report.health.reason(), "GenerationStarted");
    // The API lags: the next GET shows nothing. Nothing is bought again.
    let lagging = take_in_remote(&accepted, state);
    assert!(!lagging.adopted);
    let next = input(&s, &lagging.status, Some(&obs), &settings);
    assert_eq!(action_name(&plan(&next)), "progressing:AwaitingGeneration");
    // Recording the same reply twice (a retried status write) does not count twice.
    assert_eq!(
        super::transitions::record_generate_outcome(&accepted, &gp, Ok(&reply), now()),
        accepted
    );
    // GET then shows the job: the marker is cleared, nothing adopted (it was known bought).
    let seen = take_in_remote(
        &accepted,
        &DynamicsState {
            status: Some(RemoteStatus::Generating),
            ..state.clone()
        },
    );
    assert_eq!(seen.status.pending_generation, None);
    assert_eq!(seen.status.generations, 1);
    assert!(!seen.adopted);

    // Outcome unknown (dropped connection): the marker stays and the call is counted.
    let lost = RemoteError::of_kind(ApiErrorKind::Transport, "connection closed");
    let (unknown, report) = after_generate(&with_mark, &gp, Err(&lost));
    assert_eq!(
        unknown.pending_generation.as_ref().and_then(|p| p.outcome),
        UNKNOWN
    );
    assert_eq!(
        unknown.generations, 1,
        "a call that may have been charged is counted"
    );
    assert_eq!(unknown.generate_hash, None);
    assert_eq!(report.health.reason(), "GenerationOutcomePending");
    assert!(report.next.is_backoff());
    // Evidence (a new model) adopts it: bought, not counted twice.
    let adopted = take_in_remote(
        &unknown,
        &DynamicsState {
            status: Some(RemoteStatus::Ready),
            model_url: Some("https://m/new.bin".into()),
            ..state.clone()
        },
    );
    assert!(adopted.adopted);
    assert_eq!(adopted.status.generate_hash, Some(inputs_hash(&s)));
    assert_eq!(adopted.status.generations, 1);
    assert_eq!(adopted.status.pending_generation, None);

    // A 5xx without the API's error body is not a refusal: unknown too.
    let server = RemoteError::of_kind(ApiErrorKind::Server, "bad gateway");
    let (unknown, _) = after_generate(&with_mark, &gp, Err(&server));
    assert_eq!(unknown.pending_generation.and_then(|p| p.outcome), UNKNOWN);

    // Refused (402, 503 workers busy, a 500 with the API's own error body, a connection that
    // never opened): nothing ran, marker cleared, not counted.
    let documented_500 = RemoteError {
        refused: true,
        ..RemoteError::of_kind(ApiErrorKind::Server, "generation backend failed")
    };
    for refusal in [
        RemoteError::of_kind(ApiErrorKind::InsufficientCredits, "refused"),
        RemoteError::of_kind(ApiErrorKind::Unavailable, "workers busy"),
        RemoteError::of_kind(ApiErrorKind::Connect, "refused"),
        documented_500,
    ] {
        let kind = refusal.kind;
        let (refused, _) = after_generate(&with_mark, &gp, Err(&refusal));
        assert_eq!(refused.pending_generation, None, "{kind:?}");
        assert_eq!(refused.generations, 0, "{kind:?}");
    }

    // A crash between marker and reply: the next pass counts the call as unknown, once.
    let found = take_in_remote(&marked, state);
    assert_eq!(found.status.generations, 1);
    assert_eq!(
        found
            .status
            .pending_generation
            .as_ref()
            .and_then(|p| p.outcome),
        UNKNOWN
    );
    assert_eq!(take_in_remote(&found.status, state).status.generations, 1);
}

#[test]
fn update_outcomes() {
    let settings = Settings::default();
    let s = spec();
    let st = generated_not_applied(&s);
    let obs = ready("https://m/1.bin");
    let inp = input(&s, &st, Some(&obs), &settings);
    let Action::Update {
        dynamics_hash: dh, ..
    } = plan(&inp)
    else {
        panic!("expected update")
    };

    let plain = UpdateReply {
        message: None,
        agent_id: None,
        updated_at: Some("2025-01-15T10:30:00Z".into()),
        regeneration: None,
    };
    let (applied, report) = after_update(&inp, &dh, Ok(&plain));
    assert_eq!(applied.dynamics_hash.as_deref(), Some(dh.as_str()));
    assert_eq!(applied.applied_for_generation, Some(1));
    assert!(matches!(report.health, Health::Ready { .. }));
    // The next pass on the same remote is converged: no second PUT.
    let next = input(&s, &applied, Some(&obs), &settings);
    assert_eq!(action_name(&plan(&next)), "ready:Ready");

    let regen = UpdateReply {
        regeneration: Some(Regeneration::Started),
        ..plain.clone()
    };
    let (regenerating, report) = after_update(&inp, &dh, Ok(&regen));
    assert_eq!(regenerating.remote_status.as_deref(), Some("generating"));
    assert_eq!(report.health.reason(), "Regenerating");
    // Once the regeneration is ready, nothing more is sent for it.
    let after = input(&s, &regenerating, Some(&obs), &settings);
    assert_eq!(action_name(&plan(&after)), "ready:Ready");

    let err = RemoteError::of_kind(ApiErrorKind::Unauthorized, "check the api-secret");
    let (unchanged, report) = after_update(&inp, &dh, Err(&err));
    assert_eq!(
        unchanged.dynamics_hash, None,
        "a refused PUT is not recorded as applied"
    );
    assert_eq!(report.health.reason(), "Unauthorized");
}

#[test]
fn settle_echoes_and_is_idempotent() {
    let settings = Settings::default();
    let s = spec();
    let st = marker(&s, 30, ACCEPTED, None, None);
    let obs = remote(None, None);
    let inp = input(&s, &st, Some(&obs), &settings);
    let Action::Report(report) = plan(&inp) else {
        panic!("expected a report")
    };
    let settled = settle(&inp, st.clone(), &report);
    assert_eq!(settled.pending_generation, st.pending_generation);
    assert_eq!(settled.observed_generation, Some(4));
    assert_eq!(
        settled.last_handled_reconcile_at.as_deref(),
        Some("2026-11-29T10:00:00Z")
    );

    // A converged object settles to exactly the status it has: no write.
    let conv = converged(&s);
    let ready_obs = ready("https://m/1.bin");
    let inp = input(&s, &conv, Some(&ready_obs), &settings);
    let Action::Report(report) = plan(&inp) else {
        panic!()
    };
    let once = settle(&inp, conv.clone(), &report);
    let later = Input {
        now: Timestamp::from_second(NOW + 600).unwrap(),
        ..input(&s, &once, Some(&ready_obs), &settings)
    };
    let Action::Report(report) = plan(&later) else {
        panic!()
    };
    assert_eq!(settle(&later, once.clone(), &report), once);
}

#[test]
fn settings_that_would_loop_hot_or_give_up_early_are_refused() {
    let ok = Settings::default();
    assert_eq!(ok.validate(Duration::from_secs(30)), Ok(()));
    let cases = [
        (
            Settings {
                poll_min: Duration::from_secs(60),
                ..ok.clone()
            },
            "--poll-min",
        ),
        (
            Settings {
                resync: Duration::ZERO,
                ..ok.clone()
            },
            "--resync",
        ),
        (
            Settings {
                stalled_retry: Duration::ZERO,
                ..ok.clone()
            },
            "--stalled-retry",
        ),
        (
            Settings {
                visibility_window: Duration::from_secs(40),
                ..ok.clone()
            },
            "--visibility-window",
        ),
    ];
    for (settings, flag) in cases {
        let err = settings.validate(Duration::from_secs(30)).unwrap_err();
        assert!(err.starts_with(flag), "{flag}: {err}");
    }
}

#[test]
fn a_signed_model_url_is_no_evidence_of_a_new_job() {
    let pending = PendingGeneration {
        inputs_hash: "k".into(),
        since: ago(60),
        outcome: ACCEPTED,
        previous_remote_status: Some("ready".into()),
        previous_model_url: Some("https://cdn/m.bin?X-Signature=a&Expires=1".into()),
        previous_gestures: vec![],
        previous_hidden: false,
        ledger_first: false,
    };
    let Observation::Found(resigned) = ready("https://cdn/m.bin?X-Signature=b&Expires=2") else {
        unreachable!()
    };
    assert!(
        !job_visible(&pending, Some(&resigned)),
        "a new signature only"
    );
    let Observation::Found(new_model) = ready("https://cdn/m2.bin?X-Signature=c") else {
        unreachable!()
    };
    assert!(job_visible(&pending, Some(&new_model)), "another model");
    let Observation::Found(working) = remote(Some(RemoteStatus::Generating), None) else {
        unreachable!()
    };
    assert!(
        job_visible(&pending, Some(&working)),
        "a status in progress"
    );
}

#[test]
fn the_old_model_showing_again_after_the_api_hid_it_is_no_evidence() {
    // A marker written while GET said nothing (`data: null`) of an agent that had dynamics.
    let hidden = |outcome| PendingGeneration {
        inputs_hash: "k".into(),
        since: ago(60),
        outcome,
        previous_remote_status: None,
        previous_model_url: None,
        previous_gestures: vec![],
        previous_hidden: true,
        ledger_first: false,
    };
    let Observation::Found(old_model) = ready("https://cdn/fixed.bin") else {
        unreachable!()
    };
    let Observation::Found(working) = remote(Some(RemoteStatus::Generating), None) else {
        unreachable!()
    };
    let rows = [
        (
            "unknown outcome, the old model shows",
            UNKNOWN,
            &old_model,
            false,
        ),
        ("unknown outcome, work under way", UNKNOWN, &working, true),
        (
            "never answered, the old model shows",
            None,
            &old_model,
            false,
        ),
        ("accepted (2xx), a model shows", ACCEPTED, &old_model, true),
    ];
    for (name, outcome, shown, want) in rows {
        assert_eq!(job_visible(&hidden(outcome), Some(shown)), want, "{name}");
    }
    let mut first = hidden(UNKNOWN);
    first.previous_hidden = false;
    assert!(
        job_visible(&first, Some(&old_model)),
        "an agent with nothing before: any model is this job's"
    );
}

#[test]
fn a_marker_remembers_that_the_api_hid_dynamics_the_agent_had() {
    let settings = Settings::default();
    let s = spec();
    let obs = nothing_remote();
    let Observation::Found(silent) = &obs else {
        unreachable!()
    };
    let first = AgentDynamicsStatus::default();
    let inp = input(&s, &first, Some(&obs), &settings);
    let Action::Generate(gp) = plan(&inp) else {
        panic!("expected generate")
    };
    let marked = with_marker(&first, &gp, Some(silent), now());
    assert!(
        !marked.pending_generation.unwrap().previous_hidden,
        "nothing bought before: the API had nothing to hide"
    );
    let bought_before = AgentDynamicsStatus {
        generations: 1,
        generate_hash: Some("earlier".into()),
        ..Default::default()
    };
    let marked = with_marker(&bought_before, &gp, Some(silent), now());
    assert!(marked.pending_generation.unwrap().previous_hidden);
    let Observation::Found(shown) = ready("https://cdn/m.bin") else {
        unreachable!()
    };
    let marked = with_marker(&bought_before, &gp, Some(&shown), now());
    assert!(
        !marked.pending_generation.unwrap().previous_hidden,
        "GET showed the dynamics"
    );
}

#[test]
fn a_marker_from_the_future_is_taken_as_now_named_and_rewritten() {
    let settings = Settings::default();
    let s = spec();
    let mut status = marker(&s, 0, UNKNOWN, None, None);
    let tomorrow = Timestamp::from_second(NOW + 86_400).unwrap().to_string();
    status.pending_generation.as_mut().unwrap().since = tomorrow;
    let obs = nothing_remote();
    let inp = input(&s, &status, Some(&obs), &settings);
    let report = plan_report(plan(&inp));
    assert_eq!(report.health.reason(), "GenerationOutcomePending");
    assert!(
        report.health.message().contains("1day in the future"),
        "{}",
        report.health.message()
    );
    let written = settle(&inp, status.clone(), &report);
    assert_eq!(
        written.pending_generation.unwrap().since,
        now().to_string(),
        "rewritten at the next write: the window runs from now"
    );
    // A little skew is tolerated as it is.
    let mut close = marker(&s, 0, UNKNOWN, None, None);
    let soon = Timestamp::from_second(NOW + 30).unwrap().to_string();
    close.pending_generation.as_mut().unwrap().since = soon.clone();
    let inp = input(&s, &close, Some(&obs), &settings);
    let report = plan_report(plan(&inp));
    assert!(!report.health.message().contains("future"));
    assert_eq!(
        settle(&inp, close.clone(), &report)
            .pending_generation
            .unwrap()
            .since,
        soon
    );
}

fn nothing_remote() -> Observation {
    remote(None, None)
}

#[test]
fn a_record_is_outdated_only_when_the_api_changed_without_a_call_of_ours() {
    let state = |status: &str, url: &str| DynamicsState {
        agent_id: "A91XMB7113".into(),
        status: Some(RemoteStatus::parse(status)),
        model_url: Some(url.into()),
        gestures: BTreeMap::new(),
        error_message: None,
    };
    let recorded = |status: &str, url: &str| AgentDynamicsStatus {
        remote_status: Some(status.into()),
        model_url: Some(url.into()),
        ..converged(&spec())
    };
    let rows = [
        (
            "unchanged",
            recorded("ready", "https://m/1.bin"),
            state("ready", "https://m/1.bin"),
            false,
        ),
        (
            "re-signed only",
            recorded("ready", "https://m/1.bin?s=a"),
            state("ready", "https://m/1.bin?s=b"),
            false,
        ),
        (
            "another model",
            recorded("ready", "https://m/1.bin"),
            state("ready", "https://m/2.bin"),
            true,
        ),
        (
            "generating since",
            recorded("ready", "https://m/1.bin"),
            state("generating", "https://m/1.bin"),
            true,
        ),
        (
            "our generation was running",
            recorded("generating", "https://m/1.bin"),
            state("ready", "https://m/2.bin"),
            false,
        ),
        (
            "nothing recorded (new or wiped)",
            AgentDynamicsStatus::default(),
            state("ready", "https://m/2.bin"),
            false,
        ),
        (
            "our call is pending",
            AgentDynamicsStatus {
                remote_status: Some("ready".into()),
                model_url: Some("https://m/1.bin".into()),
                ..marker(
                    &spec(),
                    10,
                    ACCEPTED,
                    Some("ready"),
                    Some("https://m/1.bin"),
                )
            },
            state("ready", "https://m/2.bin"),
            false,
        ),
    ];
    for (name, stored, remote, want) in rows {
        assert_eq!(take_in_remote(&stored, &remote).outdated, want, "{name}");
    }
}
