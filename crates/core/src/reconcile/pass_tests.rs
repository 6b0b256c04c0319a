//! One row per way through a pass: what it gathers, in which order, and what it decides.

use std::time::Duration;

use jiff::Timestamp;

use super::budget::Standing;
use super::desired::{dynamics_hash, inputs_hash};
use super::guard::Refusal;
use super::ledger::{Asker, LedgerState};
use super::pass::{
    before_call, disabled, fold, step, waiting, Gathered, GenerateCall, HeldBack, Outcome, Payer,
    Step, LEDGER_ROUNDS,
};
use super::plan::{
    plan, Action, Approval, Blocker, Input, Observation, Purchase, RemoteError, Settings,
};
use super::plan_tests::{self, ago, generated_not_applied, remote, spec, NOW};
use super::transitions::{settle, with_marker};
use super::Health;
use crate::resource::{
    AgentDynamicsSpec, AgentDynamicsStatus, DynamicsLedgerSpec, LedgerPurchase, PendingGeneration,
};
use crate::wire::{ApiErrorKind, GenerateReply, Regeneration, RemoteStatus, UpdateReply};

/// Converged, as its last GET showed the agent.
fn converged(spec: &AgentDynamicsSpec) -> AgentDynamicsStatus {
    AgentDynamicsStatus {
        remote_status: Some("ready".into()),
        model_url: Some("https://cdn/m1.glb".into()),
        ..plan_tests::converged(spec)
    }
}

/// A marker written by a pass that died before recording its call's outcome, `age` seconds ago.
fn unanswered(spec: &AgentDynamicsSpec, age: i64, ledger_first: bool) -> AgentDynamicsStatus {
    AgentDynamicsStatus {
        pending_generation: Some(PendingGeneration {
            inputs_hash: inputs_hash(spec),
            since: ago(age),
            outcome: None,
            previous_remote_status: None,
            previous_model_url: None,
            previous_gestures: vec![],
            previous_hidden: false,
            ledger_first,
        }),
        ..Default::default()
    }
}

fn nothing_on_record() -> LedgerState {
    LedgerState::Read {
        record: None,
        version: None,
    }
}

/// The record after this object's call for `spec` went on it.
fn with_our_call(spec: &AgentDynamicsSpec) -> LedgerState {
    LedgerState::Read {
        record: Some(DynamicsLedgerSpec {
            agent_id: "A91XMB7113".into(),
            holder: None,
            purchases: vec![LedgerPurchase {
                key: inputs_hash(spec),
                inputs: None,
                at: ago(30),
                object: "agents/support".into(),
                uid: "uid-1".into(),
                calls: 1,
            }],
            spend: vec![],
        }),
        version: Some("7".into()),
    }
}

/// What the world answers a pass.
struct World {
    remote: Observation,
    ledger: LedgerState,
    /// How many adoption writes lose their race before one lands.
    lost_writes: usize,
    /// Another object of this process holds the agent's claim.
    claimed_by: Option<&'static str>,
}

struct Row {
    name: &'static str,
    spec: AgentDynamicsSpec,
    status: AgentDynamicsStatus,
    deleting: bool,
    blocker: Option<Blocker>,
    may_call: bool,
    ledger_first: bool,
    world: World,
    /// What the pass does, in order, then what it decides.
    want_steps: &'static [&'static str],
    want_action: &'static str,
    /// Whether it holds a generation slot after its GET (`None`: no GET).
    want_slot: Option<bool>,
    want_notes: &'static [&'static str],
}

fn action_name(action: &Action) -> String {
    match action {
        Action::Report(r) => match &r.health {
            Health::Ready { reason, .. } => format!("ready:{reason}"),
            Health::Suspended => "suspended".into(),
            other => other.reason().to_string(),
        },
        Action::Generate(_) => "generate".into(),
        Action::Update { .. } => "update".into(),
        Action::Disable(_) => "disable".into(),
        Action::Release => "release".into(),
        other => format!("{other:?}"),
    }
}

/// Drive `step` against `row.world` the way the executor does, recording every step.
fn walk(row: &Row) -> (Vec<&'static str>, String, Option<bool>, Vec<String>) {
    let settings = Settings::default();
    let base = Input {
        deleting: row.deleting,
        blocker: row.blocker.clone(),
        ..input_for(&row.spec, &row.status, None, None, &settings)
    };
    let mut gathered = Gathered::new(row.status.clone(), "uid-1", row.may_call, row.ledger_first);
    let mut lost = 0;
    let mut steps = Vec::new();
    for _ in 0..20 {
        match step(&gathered, &base) {
            Step::Get => {
                steps.push("get");
                gathered.take_remote(row.world.remote.clone());
            }
            Step::ReadLedger => {
                steps.push("read ledger");
                if gathered.take_ledger(row.world.ledger.clone()).is_some() {
                    steps.push("marker never sent");
                }
            }
            Step::Adopt(adoption) => {
                steps.push("adopt");
                if let Some(owner) = row.world.claimed_by {
                    steps.push("claim refused");
                    gathered.take_conflict(owner.to_string());
                    continue;
                }
                if adoption.ledger.is_some() && lost < row.world.lost_writes {
                    lost += 1;
                    steps.push("write lost");
                    if gathered.take_lost_write("the object changed since it was read") {
                        steps.push("read ledger");
                        gathered.take_ledger(row.world.ledger.clone());
                    }
                    continue;
                }
                gathered.take_adoption(&adoption);
            }
            Step::Decided(decision) => {
                let notes = decision.notes.iter().map(|n| n.reason.clone()).collect();
                return (
                    steps,
                    action_name(&decision.action),
                    decision.holds_slot,
                    notes,
                );
            }
        }
    }
    panic!("{}: no decision after 20 steps: {steps:?}", row.name);
}

fn world(remote: Observation, ledger: LedgerState) -> World {
    World {
        remote,
        ledger,
        lost_writes: 0,
        claimed_by: None,
    }
}

fn row(name: &'static str, status: AgentDynamicsStatus, world: World) -> Row {
    Row {
        name,
        spec: spec(),
        status,
        deleting: false,
        blocker: None,
        may_call: true,
        ledger_first: false,
        world,
        want_steps: &[],
        want_action: "",
        want_slot: None,
        want_notes: &[],
    }
}

#[test]
fn a_pass_gathers_only_what_its_decision_needs_in_order() {
    let s = spec();
    let empty = || remote(None, None);
    let ready = || remote(Some(RemoteStatus::Ready), Some("https://cdn/m1.glb"));
    let rows = vec![
        Row {
            want_steps: &[],
            want_action: "suspended",
            ..row(
                "suspended: nothing is read",
                AgentDynamicsStatus::default(),
                world(empty(), nothing_on_record()),
            )
        }
        .with_spec(AgentDynamicsSpec {
            suspend: true,
            ..spec()
        }),
        Row {
            blocker: Some(Blocker::Secret {
                reason: "SecretNotFound".into(),
                message: "secret agents/key not found".into(),
            }),
            may_call: false,
            want_steps: &[],
            want_action: "SecretNotFound",
            ..row(
                "blocked by its Secret: nothing is read",
                AgentDynamicsStatus::default(),
                world(empty(), nothing_on_record()),
            )
        },
        Row {
            blocker: Some(Blocker::Conflict {
                owner: "agents/other".into(),
            }),
            want_steps: &[],
            want_action: "Conflict",
            ..row(
                "another object owns the agent: nothing is read",
                AgentDynamicsStatus::default(),
                world(empty(), nothing_on_record()),
            )
        },
        Row {
            deleting: true,
            want_steps: &[],
            want_action: "disable",
            ..row(
                "deleted after a generation: disabled without a GET",
                converged(&s),
                world(ready(), nothing_on_record()),
            )
        },
        Row {
            may_call: false,
            want_steps: &[],
            want_action: "NoApiSecret",
            ..row(
                "no secret and no blocker: nothing is read, and it says why",
                AgentDynamicsStatus::default(),
                world(empty(), nothing_on_record()),
            )
        },
        Row {
            want_steps: &["get"],
            want_action: "ready:Ready",
            want_slot: Some(false),
            ..row(
                "converged: one GET, no ledger",
                converged(&s),
                world(ready(), nothing_on_record()),
            )
        },
        Row {
            want_steps: &["get"],
            want_action: "Generating",
            want_slot: Some(true),
            ..row(
                "generating remotely: one GET, holds a slot",
                converged(&s),
                world(
                    remote(Some(RemoteStatus::Processing), Some("https://cdn/m1.glb")),
                    nothing_on_record(),
                ),
            )
        },
        Row {
            want_steps: &["get", "read ledger"],
            want_action: "generate",
            want_slot: Some(false),
            ..row(
                "new object, nothing anywhere: GET, then the ledger, then buy",
                AgentDynamicsStatus::default(),
                world(empty(), nothing_on_record()),
            )
        },
        Row {
            want_steps: &["get", "read ledger", "adopt"],
            want_action: "update",
            want_slot: Some(false),
            want_notes: &["Adopted"],
            ..row(
                "existing dynamics, nothing on record: adopted, then switched on in the same pass",
                AgentDynamicsStatus::default(),
                world(ready(), nothing_on_record()),
            )
        },
        Row {
            want_steps: &[
                "get",
                "read ledger",
                "adopt",
                "write lost",
                "read ledger",
                "adopt",
            ],
            want_action: "update",
            want_slot: Some(false),
            want_notes: &["Adopted"],
            ..row(
                "an adoption write that loses once is read again and retried",
                AgentDynamicsStatus::default(),
                World {
                    lost_writes: 1,
                    ..world(ready(), nothing_on_record())
                },
            )
        },
        Row {
            want_steps: &[
                "get",
                "read ledger",
                "adopt",
                "write lost",
                "read ledger",
                "adopt",
                "write lost",
                "read ledger",
                "adopt",
                "write lost",
            ],
            want_action: "LedgerUnavailable",
            want_slot: Some(false),
            ..row(
                "an adoption write that loses every race gives up after LEDGER_ROUNDS",
                AgentDynamicsStatus::default(),
                World {
                    lost_writes: LEDGER_ROUNDS,
                    ..world(ready(), nothing_on_record())
                },
            )
        },
        Row {
            want_steps: &["get", "read ledger", "adopt", "claim refused"],
            want_action: "Conflict",
            want_slot: Some(false),
            ..row(
                "another object of this process took the agent first: conflict, nothing adopted",
                AgentDynamicsStatus::default(),
                World {
                    claimed_by: Some("agents/other"),
                    ..world(ready(), nothing_on_record())
                },
            )
        },
        Row {
            ledger_first: true,
            want_steps: &["read ledger", "marker never sent", "get"],
            want_action: "generate",
            want_slot: Some(false),
            ..row(
                "a marker whose call is not on the ledger: checked first, the ledger read once, bought",
                unanswered(&s, 30, true),
                world(empty(), nothing_on_record()),
            )
        },
        Row {
            ledger_first: true,
            want_steps: &["read ledger", "get"],
            want_action: "GenerationOutcomePending",
            want_slot: Some(true),
            want_notes: &[],
            ..row(
                "a marker whose call is on the ledger: it may have been charged, nothing is sent",
                unanswered(&s, 30, true),
                world(empty(), with_our_call(&s)),
            )
        },
        Row {
            want_steps: &["get"],
            want_action: "GenerationOutcomePending",
            want_slot: Some(true),
            ..row(
                "a marker where the ledger is not written first: no ledger check, nothing is sent",
                unanswered(&s, 30, true),
                world(empty(), nothing_on_record()),
            )
        },
        Row {
            want_steps: &["get"],
            want_action: "update",
            want_slot: Some(false),
            want_notes: &["GenerationAdopted"],
            ..row(
                "a marker whose job GET shows: the call landed, followed and switched on",
                unanswered(&s, 30, false),
                world(ready(), nothing_on_record()),
            )
        },
    ];
    for r in &rows {
        let (steps, action, slot, notes) = walk(r);
        assert_eq!(steps, r.want_steps, "{}: steps", r.name);
        assert_eq!(action, r.want_action, "{}: action", r.name);
        assert_eq!(slot, r.want_slot, "{}: slot", r.name);
        assert_eq!(notes, r.want_notes, "{}: notes", r.name);
    }
}

impl Row {
    fn with_spec(self, spec: AgentDynamicsSpec) -> Row {
        Row { spec, ..self }
    }
}

/// The purchase of a new object for `spec()`, with nothing anywhere.
fn first_purchase() -> Purchase {
    let settings = Settings::default();
    let s = spec();
    let status = AgentDynamicsStatus::default();
    let nothing = nothing_on_record();
    let empty = remote(None, None);
    let input = input_for(&s, &status, Some(&empty), Some(&nothing), &settings);
    let Action::Generate(purchase) = plan(&input) else {
        panic!("a new object with nothing anywhere buys");
    };
    purchase
}

/// The status a generate call for `spec()` is made from, with the purchase it makes.
fn marked_purchase() -> (AgentDynamicsStatus, Purchase) {
    let purchase = first_purchase();
    let now = Timestamp::from_second(NOW).unwrap();
    let marked = with_marker(&AgentDynamicsStatus::default(), &purchase, None, now);
    (marked, purchase)
}

fn input_for<'a>(
    spec: &'a AgentDynamicsSpec,
    status: &'a AgentDynamicsStatus,
    remote: Option<&'a Observation>,
    ledger: Option<&'a LedgerState>,
    settings: &'a Settings,
) -> Input<'a> {
    Input {
        asker: Asker {
            object: "agents/support",
            uid: "uid-1",
        },
        spec,
        status,
        generation: 4,
        requested_at: None,
        resolve: None,
        approval: Approval::default(),
        deleting: false,
        blocker: None,
        remote,
        ledger,
        record_outdated: false,
        failures: 0,
        timing: None,
        now: Timestamp::from_second(NOW).unwrap(),
        settings,
    }
}

fn error(kind: ApiErrorKind) -> RemoteError {
    RemoteError::of_kind(kind, format!("{kind:?}"))
}

/// A remote call's outcome and what it must leave.
struct FoldRow<'a> {
    name: &'a str,
    /// The status the call was made from.
    from: &'a AgentDynamicsStatus,
    outcome: Outcome<'a>,
    reason: &'a str,
    generations: i64,
    /// The marker stays.
    marker: bool,
    call: Option<GenerateCall>,
    regenerating: bool,
    notes: &'a [&'a str],
}

/// A disabling PUT's reply, and the note (released) or the reason (kept) it must give.
type DisableRow<'a> = (
    &'a str,
    Result<(), &'a RemoteError>,
    Result<&'a str, &'a str>,
);

#[test]
fn an_outcome_folds_into_the_status_the_report_and_the_notes() {
    let settings = Settings::default();
    let s = spec();
    let (marked, purchase) = marked_purchase();
    let accepted = GenerateReply {
        message: None,
        agent_id: None,
        status: Some(RemoteStatus::Processing),
    };
    let plain = UpdateReply::default();
    let regenerating = UpdateReply {
        regeneration: Some(Regeneration::Started),
        ..UpdateReply::default()
    };
    let refused = error(ApiErrorKind::InsufficientCredits);
    let timeout = error(ApiErrorKind::Timeout);
    let server = error(ApiErrorKind::Server);
    let applied = generated_not_applied(&s);
    let dh = dynamics_hash(&s);
    let rows = vec![
        FoldRow {
            name: "generate accepted: counted, said, the marker kept until GET shows the job",
            from: &marked,
            outcome: Outcome::Generated {
                purchase: &purchase,
                reply: Ok(&accepted),
            },
            reason: "GenerationStarted",
            generations: 1,
            marker: true,
            call: Some(GenerateCall::Accepted),
            regenerating: false,
            notes: &["GenerationStarted"],
        },
        FoldRow {
            name:
                "generate refused before processing: nothing counted, the marker cleared, no note",
            from: &marked,
            outcome: Outcome::Generated {
                purchase: &purchase,
                reply: Err(&refused),
            },
            reason: "InsufficientCredits",
            generations: 0,
            marker: false,
            call: Some(GenerateCall::Refused),
            regenerating: false,
            notes: &[],
        },
        FoldRow {
            name:
                "generate with no definite answer: counted as maybe charged, warned, never resent",
            from: &marked,
            outcome: Outcome::Generated {
                purchase: &purchase,
                reply: Err(&timeout),
            },
            reason: "GenerationOutcomePending",
            generations: 1,
            marker: true,
            call: Some(GenerateCall::Unknown),
            regenerating: false,
            notes: &["GenerationOutcomePending"],
        },
        FoldRow {
            name: "update applied: ready, no note (the condition says it)",
            from: &applied,
            outcome: Outcome::Updated {
                dynamics_hash: &dh,
                reply: Ok(&plain),
            },
            reason: "Ready",
            generations: 1,
            marker: false,
            call: None,
            regenerating: false,
            notes: &[],
        },
        FoldRow {
            name: "update answered by a regeneration: said and counted",
            from: &applied,
            outcome: Outcome::Updated {
                dynamics_hash: &dh,
                reply: Ok(&regenerating),
            },
            reason: "Regenerating",
            generations: 1,
            marker: false,
            call: None,
            regenerating: true,
            notes: &["RegenerationStarted"],
        },
        FoldRow {
            name: "update failed: backs off, nothing said",
            from: &applied,
            outcome: Outcome::Updated {
                dynamics_hash: &dh,
                reply: Err(&server),
            },
            reason: "RemoteError",
            generations: 1,
            marker: false,
            call: None,
            regenerating: false,
            notes: &[],
        },
    ];
    for FoldRow {
        name,
        from,
        outcome,
        reason,
        generations,
        marker,
        call,
        regenerating,
        notes,
    } in rows
    {
        let input = input_for(&s, from, None, None, &settings);
        let folded = fold(&input, outcome);
        assert_eq!(folded.report.health.reason(), reason, "{name}: reason");
        assert_eq!(
            folded.status.generations, generations,
            "{name}: generations"
        );
        assert_eq!(
            folded.status.pending_generation.is_some(),
            marker,
            "{name}: marker"
        );
        assert_eq!(folded.call, call, "{name}: call");
        assert_eq!(
            folded.release,
            call == Some(GenerateCall::Refused),
            "{name}: release"
        );
        assert_eq!(folded.regenerating, regenerating, "{name}: regenerating");
        let got: Vec<&str> = folded.notes.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(got, notes, "{name}: notes");
    }
}

#[test]
fn a_disabling_put_releases_unless_the_api_refuses_it() {
    let settings = Settings::default();
    let s = spec();
    let status = converged(&s);
    let input = input_for(&s, &status, None, None, &settings);
    let gone = error(ApiErrorKind::NotFound);
    let unauthorized = error(ApiErrorKind::Unauthorized);
    let server = error(ApiErrorKind::Server);
    let rows: Vec<DisableRow> = vec![
        ("switched off", Ok(()), Ok("DynamicsDisabled")),
        (
            "gone remotely: nothing to disable",
            Err(&gone),
            Ok("RemoteGone"),
        ),
        (
            "refused: stalled, the finalizer kept",
            Err(&unauthorized),
            Err("Unauthorized"),
        ),
        (
            "a server error: kept, backing off",
            Err(&server),
            Err("RemoteError"),
        ),
    ];
    for (name, reply, want) in rows {
        match (disabled(&input, reply), want) {
            (Ok(note), Ok(reason)) => assert_eq!(note.reason, reason, "{name}"),
            (Err(report), Err(reason)) => {
                assert_eq!(report.health.reason(), reason, "{name}");
                assert!(
                    report.health.message().ends_with(
                        "; or set spec.deletionPolicy: Orphan to delete without calling the API"
                    ),
                    "{name}: says how to let go"
                );
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

fn standing(budget: &str, spent: u64) -> Standing {
    Standing {
        budget: budget.into(),
        spent,
        limit: 1000,
        frees_at: Timestamp::from_second(NOW + 1800).unwrap(),
    }
}

/// A status whose last write already said that `standing` holds it back.
fn held_by_budget(settings: &Settings, standing: Standing) -> AgentDynamicsStatus {
    let s = spec();
    let status = AgentDynamicsStatus::default();
    let input = input_for(&s, &status, None, None, settings);
    let report = waiting(&input, HeldBack::Budget(standing)).report;
    settle(&input, status.clone(), &report)
}

/// (name, status, held back by, reason, requeue in seconds, note reasons, budget wait counted)
type WaitRow<'a> = (
    &'a str,
    &'a AgentDynamicsStatus,
    HeldBack,
    &'a str,
    u64,
    &'a [&'a str],
    bool,
);

#[test]
fn a_generate_call_that_cannot_get_what_it_needs_waits_and_says_why() {
    let settings = Settings::default();
    let s = spec();
    let fresh = AgentDynamicsStatus::default();
    let already = held_by_budget(&settings, standing("team", 900));
    let busy = Refusal {
        reason: "GenerationSlotsBusy",
        message: "both slots of the account run generations".into(),
        retry_after: Duration::from_secs(30),
    };
    let rows: Vec<WaitRow> = vec![
        (
            "another object of this process took the agent: conflict",
            &fresh,
            HeldBack::Agent {
                owner: "agents/other".into(),
            },
            "Conflict",
            settings.stalled_retry.as_secs(),
            &[],
            false,
        ),
        (
            "no generation slot: waits as the guard says",
            &fresh,
            HeldBack::Slot(busy),
            "GenerationSlotsBusy",
            30,
            &[],
            false,
        ),
        (
            "a budget without room: waits until it frees, warned once",
            &fresh,
            HeldBack::Budget(standing("team", 900)),
            "BudgetExceeded",
            1800,
            &["BudgetExceeded"],
            true,
        ),
        (
            "still without room at the next look: waits, nothing said again",
            &already,
            HeldBack::Budget(standing("team", 900)),
            "BudgetExceeded",
            1800,
            &[],
            false,
        ),
    ];
    for (name, status, held, reason, requeue, notes, counted) in rows {
        let input = input_for(&s, status, None, None, &settings);
        let got = waiting(&input, held);
        assert_eq!(got.report.health.reason(), reason, "{name}: reason");
        assert_eq!(got.report.requeue().as_secs(), requeue, "{name}: requeue");
        let said: Vec<&str> = got.notes.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(said, notes, "{name}: notes");
        assert_eq!(got.budget_wait.is_some(), counted, "{name}: budget wait");
    }
}

#[test]
fn before_a_generate_call_the_marker_then_the_purchase_with_its_spend() {
    let settings = Settings::default();
    let s = spec();
    let status = AgentDynamicsStatus::default();
    let empty = remote(None, None);
    let input = input_for(&s, &status, Some(&empty), None, &settings);
    let purchase = first_purchase();
    let payer = Payer {
        namespace: "agents",
        account: "fp-1",
    };
    // (name, ledger written first, budget warnings, note count)
    let rows = [
        ("a store that writes the ledger first", true, vec![], 0),
        ("a store that does not", false, vec![], 0),
        (
            "budgets near their limit are named",
            true,
            vec![standing("team", 850), standing("all", 900)],
            2,
        ),
    ];
    for (name, ledger_first, warnings, notes) in rows {
        let before = before_call(&input, &purchase, payer, ledger_first, &warnings);
        let marker = before.marked.pending_generation.as_ref().expect(name);
        assert_eq!(marker.inputs_hash, inputs_hash(&s), "{name}: marker key");
        assert_eq!(
            marker.outcome, None,
            "{name}: outcome unknown until the reply"
        );
        assert_eq!(marker.ledger_first, ledger_first, "{name}: ledger first");
        assert_eq!(
            before.marked.observed_generation,
            Some(4),
            "{name}: settled"
        );
        assert!(
            before
                .marked
                .conditions
                .iter()
                .any(|c| c.type_ == "Reconciling"
                    && c.status == "True"
                    && c.reason == "GenerationStarted"),
            "{name}: says a call is sent"
        );
        assert_eq!(
            before.purchase.version, purchase.ledger.version,
            "{name}: version"
        );
        assert_eq!(
            before.purchase.record.purchases, purchase.ledger.record.purchases,
            "{name}: the purchase as planned"
        );
        let spend: Vec<(&str, &str, u64)> = before
            .purchase
            .record
            .spend
            .iter()
            .map(|s| (s.namespace.as_str(), s.account.as_str(), s.credits))
            .collect();
        assert_eq!(
            spend,
            vec![("agents", "fp-1", 250); 3],
            "{name}: its spend in each period"
        );
        assert_eq!(before.notes.len(), notes, "{name}: warnings");
        assert!(before
            .notes
            .iter()
            .all(|n| n.warning && n.reason == "BudgetWarning"));
    }
}
