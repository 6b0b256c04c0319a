//! The executor's orderings (marker, call, outcome, write) against the in-process simulator and
//! an in-memory status store whose writes can be made to conflict.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;
use crate::api::{ApiSecret, ClientConfig, DynamicsClient};
use crate::reconcile::desired::inputs_hash;
use crate::reconcile::guard::AccountGuards;
use crate::reconcile::reasons;
use crate::resource::GenerateOutcome;
use crate::sim::{ConvergedReply, Faults, Modes, ScriptedFault, SimConfig, SimHandle};

/// A status store in memory. `conflicts` scripts the saves: `true` fails that save with a
/// conflict (another writer got there first), `false` or an empty script lets it through.
#[derive(Default)]
struct MemorySink {
    stored: AgentDynamicsStatus,
    conflicts: VecDeque<bool>,
    saves: usize,
    notes: Vec<Note>,
    calls: Vec<GenerateCall>,
    /// The agent's purchase record and its version (0: none).
    ledger: Option<crate::resource::DynamicsLedgerSpec>,
    ledger_version: u64,
    ledger_writes: usize,
}

impl LedgerStore for MemorySink {
    fn written_before_calls(&self) -> bool {
        true
    }

    async fn read_ledger(&mut self, _agent_id: &str) -> LedgerState {
        LedgerState::Read {
            record: self.ledger.clone(),
            version: self
                .ledger
                .as_ref()
                .map(|_| self.ledger_version.to_string()),
        }
    }

    async fn write_ledger(
        &mut self,
        _agent_id: &str,
        write: &LedgerWrite,
    ) -> Result<Option<String>, SaveError> {
        let current = self
            .ledger
            .as_ref()
            .map(|_| self.ledger_version.to_string());
        if write.version != current {
            return Err(SaveError::Conflict);
        }
        self.ledger_version += 1;
        self.ledger_writes += 1;
        self.ledger = Some(write.record.clone());
        Ok(Some(self.ledger_version.to_string()))
    }
}

impl StatusSink for MemorySink {
    fn stored(&self) -> Option<&AgentDynamicsStatus> {
        Some(&self.stored)
    }

    async fn save(&mut self, status: &AgentDynamicsStatus) -> Result<(), SaveError> {
        if self.conflicts.pop_front().unwrap_or(false) {
            return Err(SaveError::Conflict);
        }
        self.saves += 1;
        self.stored = status.clone();
        Ok(())
    }

    async fn reload(&mut self) -> Result<AgentDynamicsStatus, SaveError> {
        Ok(self.stored.clone())
    }

    fn note(&mut self, note: Note) {
        self.notes.push(note);
    }

    fn generate_called(&mut self, outcome: GenerateCall, _account: &str) {
        self.calls.push(outcome);
    }
}

const SECRET: &str = "executor-test-secret";
const AGENT: &str = "A91XMB7113";

async fn simulator(credits: u64) -> SimHandle {
    crate::sim::start(SimConfig {
        secret: SECRET.into(),
        credits,
        generation_time: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn executor(sim: &SimHandle, timeout: Duration) -> Executor {
    executor_polling(sim, timeout, Duration::from_millis(200))
}

fn executor_polling(sim: &SimHandle, timeout: Duration, poll_max: Duration) -> Executor {
    let client = DynamicsClient::new(ClientConfig {
        base_url: sim.url(),
        request_timeout: timeout,
        max_retries: 0,
        ..ClientConfig::default()
    })
    .expect("client");
    let settings = Settings {
        poll_min: Duration::from_millis(50),
        poll_max,
        ..Settings::default()
    };
    Executor::new(client, AccountGuards::new(2, None), settings)
}

fn object(status: AgentDynamicsStatus) -> ObjectView {
    ObjectView {
        resolve: None,
        approve: None,
        key: "agents/support".into(),
        uid: "uid-1".into(),
        spec: AgentDynamicsSpec {
            agent_id: AGENT.into(),
            ..Default::default()
        },
        status,
        generation: 1,
        deleting: false,
        requested_at: None,
        access: Access::Granted(ApiSecret::new(SECRET)),
    }
}

fn generate_calls(sim: &SimHandle) -> u64 {
    sim.stats().total("generate")
}

fn in_flight(exec: &Executor) -> usize {
    exec.guard_load().1
}

#[tokio::test]
async fn a_conflict_on_the_marker_sends_no_generate_call() {
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let mut sink = MemorySink {
        conflicts: [true].into(),
        ..Default::default()
    };
    let result = exec.pass(&object(sink.stored.clone()), 0, &mut sink).await;
    assert!(
        matches!(result, Err(PassError::Save(SaveError::Conflict))),
        "{result:?}"
    );
    assert_eq!(generate_calls(&sim), 0, "another writer owns this change");
    assert_eq!(in_flight(&exec), 0, "the slot taken for it is given back");
    assert!(sink.calls.is_empty());
    // Nothing went on the ledger either: the next pass buys, it does not take a call that was
    // never sent for bought.
    assert_eq!(sink.ledger, None);
    let result = exec.pass(&object(sink.stored.clone()), 0, &mut sink).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(generate_calls(&sim), 1, "bought by the next pass");
}

#[tokio::test]
async fn a_refused_generate_frees_its_slot_and_its_marker() {
    let sim = simulator(0).await; // 402: insufficient credits
    let exec = executor(&sim, Duration::from_secs(5));
    let mut sink = MemorySink::default();
    let result = exec
        .pass(&object(sink.stored.clone()), 0, &mut sink)
        .await
        .expect("a refusal is a result, not an error");
    let PassResult::Requeue { health, .. } = result else {
        panic!("{result:?}")
    };
    assert_eq!(health.reason(), "InsufficientCredits");
    assert_eq!(sink.calls, vec![GenerateCall::Refused]);
    assert_eq!(sink.stored.pending_generation, None);
    assert_eq!(sink.stored.generations, 0, "nothing was charged");
    assert_eq!(in_flight(&exec), 0);
    assert!(
        sink.ledger.as_ref().unwrap().purchases.is_empty(),
        "a refused call is not on record as bought"
    );
}

#[tokio::test]
async fn a_lost_reply_keeps_the_marker_counts_the_call_and_is_adopted_not_resent() {
    let sim = simulator(10_000).await;
    // The GET goes through; the POST is processed (and charged), then its connection dropped.
    sim.set_faults(Faults {
        script: [ScriptedFault::Pass, ScriptedFault::Drop].into(),
        ..Faults::default()
    });
    let exec = executor(&sim, Duration::from_secs(5));
    let mut sink = MemorySink::default();
    let first = exec
        .pass(&object(sink.stored.clone()), 0, &mut sink)
        .await
        .unwrap();
    let PassResult::Requeue { health, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(health.reason(), "GenerationOutcomePending");
    assert_eq!(sink.calls, vec![GenerateCall::Unknown]);
    let pending = sink.stored.pending_generation.clone().expect("marker kept");
    assert_eq!(pending.outcome, Some(GenerateOutcome::Unknown));
    assert_eq!(
        sink.stored.generations, 1,
        "a call that may have been charged is counted"
    );
    assert_eq!(in_flight(&exec), 1, "it still holds its slot");

    // Next passes: the API shows the job, so the call is adopted; never sent again.
    for _ in 0..20 {
        let _ = exec.pass(&object(sink.stored.clone()), 0, &mut sink).await;
        if sink.stored.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sink.stored.is_ready(), "{:?}", sink.stored.conditions);
    assert_eq!(generate_calls(&sim), 1, "exactly one generate call");
    assert_eq!(
        sink.stored.generations, 1,
        "adoption does not count it twice"
    );
    assert!(sink.notes.iter().any(|n| n.reason == "GenerationAdopted"));
    assert_eq!(in_flight(&exec), 0, "the slot is free once the job is done");
}

#[tokio::test]
async fn an_accepted_generate_survives_a_conflicting_status_write() {
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    // The marker is saved; the write that records the reply conflicts twice (an annotation,
    // a spec edit landing during the call); the re-read copy gets the purchase re-applied.
    let mut sink = MemorySink {
        conflicts: [false, true, true].into(),
        ..Default::default()
    };
    let result = exec
        .pass(&object(sink.stored.clone()), 0, &mut sink)
        .await
        .expect("the purchase is recorded despite the conflicts");
    assert!(matches!(result, PassResult::Requeue { .. }));
    assert_eq!(sink.calls, vec![GenerateCall::Accepted]);
    assert_eq!(sink.stored.generations, 1);
    assert!(sink.stored.generate_hash.is_some());
    assert_eq!(
        sink.stored
            .pending_generation
            .as_ref()
            .and_then(|p| p.outcome),
        Some(GenerateOutcome::Accepted)
    );
    assert_eq!(sink.saves, 2, "the marker, then the purchase once");
    // A pass right after, whatever GET shows, sends nothing more.
    let _ = exec.pass(&object(sink.stored.clone()), 0, &mut sink).await;
    assert_eq!(generate_calls(&sim), 1);
}

#[tokio::test]
async fn two_objects_for_one_agent_whose_views_raced_cannot_both_buy() {
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let mut first = MemorySink::default();
    let mut second = MemorySink::default();
    // Neither object knew of the other (no blocker): the claim decides.
    exec.pass(&object(first.stored.clone()), 0, &mut first)
        .await
        .unwrap();
    let other = ObjectView {
        key: "team-b/support".into(),
        uid: "uid-2".into(),
        ..object(second.stored.clone())
    };
    // One ledger for the cluster: the second object reads what the first wrote.
    second.ledger = first.ledger.clone();
    second.ledger_version = first.ledger_version;
    // It waits while the first object's job runs, then finds the agent taken.
    let mut health = None;
    for _ in 0..30 {
        let result = exec.pass(&other, 0, &mut second).await.unwrap();
        let PassResult::Requeue { health: h, .. } = result else {
            panic!("{result:?}")
        };
        if h.reason() != "Generating" {
            health = Some(h);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = health.expect("the first object's generation ends");
    assert_eq!(health.reason(), "Conflict");
    assert!(
        health.message().contains("agents/support"),
        "{}",
        health.message()
    );
    assert_eq!(generate_calls(&sim), 1);
    assert!(second.calls.is_empty());
}

/// A simulator that behaves like a busy real service: resends are charged.
async fn hard_simulator(modes: Modes) -> SimHandle {
    crate::sim::start(SimConfig {
        secret: SECRET.into(),
        credits: 1_000_000,
        generation_time: Duration::from_millis(200),
        honour_idempotency_key: false,
        modes,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn charged(sim: &SimHandle) -> usize {
    sim.generations().iter().filter(|g| g.is_charged()).count()
}

/// Passes back to back (as a hot requeue would) until `done` or `limit`.
async fn passes_until(
    exec: &Executor,
    view: impl Fn(&AgentDynamicsStatus) -> ObjectView,
    sink: &mut MemorySink,
    limit: Duration,
    done: impl Fn(&AgentDynamicsStatus) -> bool,
) {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end && !done(&sink.stored) {
        let _ = exec.pass(&view(&sink.stored), 0, sink).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_accepted_job_that_get_does_not_show_for_seconds_is_bought_once() {
    // The reported failure: accepted, invisible to GET for 3 s, and a fixed model URL.
    let sim = hard_simulator(Modes {
        invisible_ms: 3_000,
        fixed_model_url: true,
        ..Modes::default()
    })
    .await;
    let exec = executor(&sim, Duration::from_secs(5));
    let mut sink = MemorySink::default();
    passes_until(
        &exec,
        |s| object(s.clone()),
        &mut sink,
        Duration::from_secs(10),
        |s| s.is_ready(),
    )
    .await;
    assert!(sink.stored.is_ready(), "{:?}", sink.stored.conditions);
    assert_eq!(charged(&sim), 1, "one change, one purchase");
    assert_eq!(sink.stored.generations, 1);
}

#[tokio::test]
async fn a_converged_agent_whose_api_answers_null_is_stalled_not_bought_again() {
    let sim = hard_simulator(Modes::default()).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let mut sink = MemorySink::default();
    passes_until(
        &exec,
        |s| object(s.clone()),
        &mut sink,
        Duration::from_secs(10),
        |s| s.is_ready(),
    )
    .await;
    assert!(sink.stored.is_ready());
    sim.set_modes(Modes {
        converged_reply: ConvergedReply::DataNull,
        ..Modes::default()
    });
    let stalled = |s: &AgentDynamicsStatus| {
        s.condition("Stalled")
            .is_some_and(|c| c.status == "True" && c.reason == "RemoteDynamicsMissing")
    };
    passes_until(
        &exec,
        |s| object(s.clone()),
        &mut sink,
        Duration::from_secs(3),
        stalled,
    )
    .await;
    assert!(stalled(&sink.stored), "{:?}", sink.stored.conditions);
    let message = &sink.stored.condition("Stalled").unwrap().message;
    assert!(
        message.contains("spec.regenerate"),
        "says how to buy on purpose: {message}"
    );
    assert_eq!(charged(&sim), 1);
}

#[tokio::test]
async fn a_reply_held_past_the_timeout_on_a_fixed_url_is_adopted_not_resent() {
    let sim = hard_simulator(Modes::default()).await;
    let exec = executor(&sim, Duration::from_millis(500));
    let mut sink = MemorySink::default();
    passes_until(
        &exec,
        |s| object(s.clone()),
        &mut sink,
        Duration::from_secs(10),
        |s| s.is_ready(),
    )
    .await;
    assert!(sink.stored.is_ready());
    // The second generation (a regenerate) is processed at once but answered after the client
    // gave up; its model URL is the same as the first's.
    sim.set_modes(Modes {
        reply_delay_ms: 1_500,
        fixed_model_url: true,
        ..Modes::default()
    });
    let regenerated = |s: &AgentDynamicsStatus| AgentDynamicsSpec {
        regenerate: Some("second".into()),
        ..object(s.clone()).spec
    };
    let view = |s: &AgentDynamicsStatus| ObjectView {
        spec: regenerated(s),
        ..object(s.clone())
    };
    let adopted = |s: &AgentDynamicsStatus| {
        s.generate_hash == Some(inputs_hash(&regenerated(s))) && s.pending_generation.is_none()
    };
    passes_until(&exec, view, &mut sink, Duration::from_secs(10), adopted).await;
    assert!(adopted(&sink.stored), "{:?}", sink.stored);
    assert!(sink.notes.iter().any(|n| n.reason == "GenerationAdopted"));
    // The delay also holds PUT replies back; lifted, the new generation is switched on.
    sim.set_modes(Modes::default());
    passes_until(&exec, view, &mut sink, Duration::from_secs(10), |s| {
        s.is_ready()
    })
    .await;
    assert!(sink.stored.is_ready(), "{:?}", sink.stored.conditions);
    assert_eq!(
        charged(&sim),
        2,
        "one purchase per change, none for the lost reply"
    );
    assert!(
        sink.calls.contains(&GenerateCall::Unknown),
        "{:?}",
        sink.calls
    );
}

#[tokio::test]
async fn an_edit_while_the_api_reports_an_unknown_status_waits() {
    let sim = hard_simulator(Modes {
        waiting_status: Some("queued".into()),
        running_status: Some("rendering".into()),
        ..Modes::default()
    })
    .await;
    let exec = executor(&sim, Duration::from_secs(5));
    let mut sink = MemorySink::default();
    // First pass buys; the edit lands while the API says "queued" or "rendering".
    exec.pass(&object(sink.stored.clone()), 0, &mut sink)
        .await
        .unwrap();
    let edited = |s: &AgentDynamicsStatus| ObjectView {
        spec: AgentDynamicsSpec {
            duration: Some(3),
            ..object(s.clone()).spec
        },
        ..object(s.clone())
    };
    exec.pass(&edited(&sink.stored), 0, &mut sink)
        .await
        .unwrap();
    assert_eq!(charged(&sim), 1, "nothing is bought while the API is busy");
    // Once it is done, the edit buys exactly once more.
    passes_until(&exec, edited, &mut sink, Duration::from_secs(10), |s| {
        s.is_ready()
    })
    .await;
    assert!(sink.stored.is_ready());
    assert_eq!(charged(&sim), 2);
}

/// Passes until the object is Ready (or 40 tries), waiting `pause` between them.
async fn until_ready(exec: &Executor, sink: &mut MemorySink, pause: Duration) -> usize {
    let mut passes = 0;
    while !sink.stored.is_ready() && passes < 40 {
        tokio::time::sleep(pause).await;
        let _ = exec.pass(&object(sink.stored.clone()), 0, sink).await;
        passes += 1;
    }
    passes
}

#[tokio::test]
async fn an_accepted_call_is_recorded_with_the_next_write_one_write_less() {
    let sim = simulator(10_000).await;
    let exec =
        executor(&sim, Duration::from_secs(5)).with_record_accepted(RecordAccepted::WithNextWrite);
    let mut sink = MemorySink::default();
    exec.pass(&object(sink.stored.clone()), 0, &mut sink)
        .await
        .unwrap();
    assert_eq!(sink.calls, vec![GenerateCall::Accepted]);
    assert_eq!(sink.saves, 1, "only the marker was written");
    let marker = sink.stored.pending_generation.clone().expect("marker");
    assert_eq!(marker.outcome, None, "the outcome waits for the next write");
    assert_eq!(in_flight(&exec), 1);

    // The generation takes 200 ms; the next pass records the purchase with what GET shows.
    tokio::time::sleep(Duration::from_millis(250)).await;
    exec.pass(&object(sink.stored.clone()), 0, &mut sink)
        .await
        .unwrap();
    assert_eq!(sink.stored.generations, 1);
    assert_eq!(sink.stored.pending_generation, None);
    assert_eq!(
        sink.stored.generate_hash.as_deref(),
        Some(inputs_hash(&object(AgentDynamicsStatus::default()).spec).as_str())
    );
    until_ready(&exec, &mut sink, Duration::from_millis(50)).await;
    assert!(sink.stored.is_ready(), "{:?}", sink.stored.conditions);
    assert_eq!(sink.saves, 2, "marker, then the purchase with its result");
    assert_eq!(generate_calls(&sim), 1);
    assert_eq!(sink.stored.generations, 1, "counted once");
}

#[tokio::test]
async fn a_restart_before_the_accepted_call_is_recorded_counts_it_once_and_adopts_it() {
    let sim = simulator(10_000).await;
    let mut sink = MemorySink::default();
    {
        let exec = executor(&sim, Duration::from_secs(5))
            .with_record_accepted(RecordAccepted::WithNextWrite);
        exec.pass(&object(sink.stored.clone()), 0, &mut sink)
            .await
            .unwrap();
        // The process ends here: what it held in memory is gone.
    }
    assert_eq!(
        sink.stored.pending_generation.as_ref().unwrap().outcome,
        None
    );
    let restarted =
        executor(&sim, Duration::from_secs(5)).with_record_accepted(RecordAccepted::WithNextWrite);
    until_ready(&restarted, &mut sink, Duration::from_millis(100)).await;
    assert!(sink.stored.is_ready(), "{:?}", sink.stored.conditions);
    assert_eq!(generate_calls(&sim), 1, "never sent again");
    assert_eq!(sink.stored.generations, 1, "counted once");
}

/// A first generation, run to Ready, teaches the account's timer how long one takes (200 ms).
async fn teach_the_timer(exec: &Executor) {
    let mut first = MemorySink::default();
    exec.pass(&object(first.stored.clone()), 0, &mut first)
        .await
        .unwrap();
    until_ready(exec, &mut first, Duration::from_millis(20)).await;
    assert!(first.stored.is_ready());
}

/// Another object on the same account, for another agent.
fn second_object() -> ObjectView {
    let mut view = object(AgentDynamicsStatus::default());
    view.key = "agents/second".into();
    view.uid = "uid-2".into();
    view.spec.agent_id = "B22XMB7113".into();
    view
}

#[tokio::test]
async fn the_account_timer_sends_the_poll_to_the_expected_end() {
    let sim = simulator(10_000).await;
    let exec = executor_polling(&sim, Duration::from_secs(5), Duration::from_secs(2));
    teach_the_timer(&exec).await;

    // A second object on the same account: its pass after the POST asks to look again at
    // about the expected end (200 ms and a little, plus up to 10% jitter), not at the fastest
    // poll (50 ms) nor the slowest (2 s).
    let mut second = MemorySink::default();
    let view = second_object();
    let result = exec.pass(&view, 0, &mut second).await.unwrap();
    let PassResult::Requeue { next, health } = result else {
        panic!("{result:?}")
    };
    let after = next.after();
    assert_eq!(health.reason(), "GenerationStarted");
    assert!(
        after >= Duration::from_millis(150) && after <= Duration::from_millis(300),
        "looks again after {after:?}"
    );
}

#[tokio::test]
async fn a_look_that_finds_the_generation_still_running_on_time_writes_nothing() {
    let sim = simulator(10_000).await;
    let exec =
        executor(&sim, Duration::from_secs(5)).with_record_accepted(RecordAccepted::WithNextWrite);
    teach_the_timer(&exec).await;
    let mut second = MemorySink::default();
    let mut view = second_object();
    exec.pass(&view, 0, &mut second).await.unwrap();
    assert_eq!(second.saves, 1, "the marker");
    // Too early: the job still runs. Nothing is written; the accepted call stays in memory.
    view.status = second.stored.clone();
    let result = exec.pass(&view, 0, &mut second).await.unwrap();
    let PassResult::Requeue { health, .. } = result else {
        panic!("{result:?}")
    };
    assert_eq!(health.reason(), "Generating");
    assert_eq!(
        second.saves, 1,
        "no write for a status that stands a moment"
    );
    assert_eq!(
        second.stored.pending_generation.as_ref().unwrap().outcome,
        None
    );
    // The look at its end writes the purchase and the result at once.
    let mut passes = 0;
    while !second.stored.is_ready() && passes < 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        view.status = second.stored.clone();
        exec.pass(&view, 0, &mut second).await.unwrap();
        passes += 1;
    }
    assert!(second.stored.is_ready(), "{:?}", second.stored.conditions);
    assert_eq!(second.saves, 2, "marker, then the purchase with its result");
    assert_eq!(second.stored.generations, 1, "counted once");
    assert_eq!(generate_calls(&sim), 2);
}

// A budget with room for one generation: the first object buys and its spend goes on the
// agent's ledger record (the same write as the purchase); the second waits, Reconciling with
// the budget's name, a warning Note, and sends nothing.
#[tokio::test]
async fn a_budget_holds_the_generation_past_it_and_records_the_spend() {
    let sim = simulator(10_000).await;
    let budgets = Arc::new(Budgets::new(vec![crate::reconcile::budget::Budget::parse(
        "namespace:250/day",
    )
    .unwrap()]));
    let exec = executor(&sim, Duration::from_secs(5)).with_budgets(budgets.clone());
    let mut first = MemorySink::default();
    exec.pass(&object(first.stored.clone()), 0, &mut first)
        .await
        .expect("first pass");
    assert_eq!(generate_calls(&sim), 1);
    let spend = &first.ledger.as_ref().expect("purchase on record").spend;
    assert_eq!(spend.len(), 3, "hour, day and month: {spend:?}");
    assert!(spend
        .iter()
        .all(|s| s.credits == 250 && s.namespace == "agents"));
    assert_eq!(
        first.ledger_writes, 1,
        "the spend rides on the purchase's write"
    );

    let mut other = object(AgentDynamicsStatus::default());
    other.key = "agents/other".into();
    other.uid = "uid-2".into();
    other.spec.agent_id = "OTHER00001".into();
    let mut second = MemorySink::default();
    let result = exec
        .pass(&other, 0, &mut second)
        .await
        .expect("second pass");
    assert_eq!(generate_calls(&sim), 1, "nothing bought past the budget");
    let PassResult::Requeue { health, next } = result else {
        panic!("expected a wait, got {result:?}")
    };
    let after = next.after();
    assert_eq!(health.reason(), reasons::BUDGET_EXCEEDED);
    assert!(
        health.message().contains("namespace:250/day"),
        "{}",
        health.message()
    );
    assert!(
        after > Duration::from_secs(1),
        "waits for the period's end: {after:?}"
    );
    assert!(second
        .notes
        .iter()
        .any(|n| n.reason == reasons::BUDGET_EXCEEDED));
    assert_eq!(second.ledger_writes, 0);
    // Another namespace has its own budget.
    let mut elsewhere = object(AgentDynamicsStatus::default());
    elsewhere.key = "team-b/agent".into();
    elsewhere.uid = "uid-3".into();
    elsewhere.spec.agent_id = "OTHER00002".into();
    let mut third = MemorySink::default();
    exec.pass(&elsewhere, 0, &mut third)
        .await
        .expect("third pass");
    assert_eq!(generate_calls(&sim), 2);
}

// Two passes that check at once cannot both take the last room: the first holds it until its
// purchase is on record (or gives it back).
#[test]
fn a_reservation_holds_the_last_room_until_settled_or_released() {
    use crate::reconcile::budget::{Budget, BudgetCheck, Charge};
    let budgets = Budgets::new(vec![Budget::parse("account:250/day").unwrap()]);
    let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
    let charge = Charge {
        namespace: "agents",
        account: "acct",
        credits: 250,
        now,
    };
    assert!(matches!(
        budgets.reserve("agents/a", charge),
        BudgetCheck::Within { .. }
    ));
    assert!(matches!(
        budgets.reserve("agents/b", charge),
        BudgetCheck::Over(_)
    ));
    budgets.release("agents/a");
    assert!(matches!(
        budgets.reserve("agents/b", charge),
        BudgetCheck::Within { .. }
    ));
    let record = crate::reconcile::budget::with_spend(
        &crate::resource::DynamicsLedgerSpec::default(),
        now,
        "agents",
        "acct",
        250,
    );
    budgets.settle("agents/b", "agent-b-0123", &record);
    assert!(
        matches!(budgets.reserve("agents/c", charge), BudgetCheck::Over(_)),
        "settled: the record holds the spend, counted once"
    );
    budgets.remove("agent-b-0123");
    assert!(matches!(
        budgets.reserve("agents/c", charge),
        BudgetCheck::Within { .. }
    ));
}

// A marker whose pass died before its call: the ledger (written before every call) has no
// call of ours for its key, so the call was never sent and the change is bought now, once. With
// our call on record, the same marker is an unknown outcome and nothing is sent.
#[tokio::test]
async fn a_marker_with_no_call_on_the_ledger_was_never_sent_and_is_bought() {
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let spec = object(AgentDynamicsStatus::default()).spec;
    let key = inputs_hash(&spec);
    let died_before_call = AgentDynamicsStatus {
        pending_generation: Some(crate::resource::PendingGeneration {
            inputs_hash: key.clone(),
            since: Timestamp::now().to_string(),
            outcome: None,
            previous_remote_status: None,
            previous_model_url: None,
            previous_gestures: vec![],
            previous_hidden: false,
            ledger_first: true,
        }),
        ..Default::default()
    };
    // Another agent's purchase only: the record exists and has no call of ours.
    let mut record = crate::reconcile::ledger::with_purchase(
        None,
        AGENT,
        crate::reconcile::ledger::Asker {
            object: "agents/earlier",
            uid: "uid-0",
        },
        "older-key",
        &Default::default(),
        "2026-12-01T00:00:00Z",
        1,
    );
    record.holder = None; // that object was deleted

    let mut sink = MemorySink {
        stored: died_before_call.clone(),
        ledger: Some(record.clone()),
        ..Default::default()
    };
    exec.pass(&object(died_before_call.clone()), 0, &mut sink)
        .await
        .expect("pass");
    assert_eq!(generate_calls(&sim), 1, "bought once, now");
    assert_eq!(
        sink.stored.generations, 1,
        "counted once: {:?}",
        sink.stored
    );

    // The same marker with our call on record: it may have been sent; nothing is sent again.
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let ours = crate::reconcile::ledger::with_purchase(
        Some(&record),
        AGENT,
        crate::reconcile::ledger::Asker {
            object: "agents/support",
            uid: "uid-1",
        },
        &key,
        &Default::default(),
        "2026-12-07T00:00:00Z",
        1,
    );
    let mut sink = MemorySink {
        stored: died_before_call.clone(),
        ledger: Some(ours),
        ..Default::default()
    };
    exec.pass(&object(died_before_call), 0, &mut sink)
        .await
        .expect("pass");
    assert_eq!(
        generate_calls(&sim),
        0,
        "an unknown outcome is never resent"
    );
}

// Two replicas at once (a rollout without leader election): one sends the call and records it
// in the ledger; the other, whose view of the status has no marker (it dropped it, or its cache
// lags), finds this object's own call on the ledger. It adopts it without a call and counts it
// once: the generation is this object's purchase. A status that already counts it is left as is.
#[tokio::test]
async fn this_objects_call_sent_by_another_replica_is_adopted_and_counted_once() {
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let spec = object(AgentDynamicsStatus::default()).spec;
    let key = inputs_hash(&spec);
    // One call for these inputs on the ledger, sent for the object of this name with `uid`.
    let bought_by = |uid: &str| {
        crate::reconcile::ledger::with_purchase(
            None,
            AGENT,
            crate::reconcile::ledger::Asker {
                object: "agents/support",
                uid,
            },
            &key,
            &Default::default(),
            "2026-12-07T00:00:00Z",
            1,
        )
    };
    let mut sink = MemorySink {
        ledger: Some(bought_by("uid-1")),
        ..Default::default()
    };
    exec.pass(&object(AgentDynamicsStatus::default()), 0, &mut sink)
        .await
        .expect("pass");
    assert_eq!(generate_calls(&sim), 0, "bought already: nothing is sent");
    assert_eq!(sink.stored.generations, 1, "{:?}", sink.stored);
    assert!(sink.stored.was_bought(&key), "{:?}", sink.stored);
    let counted = sink.stored.clone();
    exec.pass(&object(counted.clone()), 0, &mut sink)
        .await
        .expect("second pass");
    assert_eq!(
        sink.stored.generations, 1,
        "counted once: {:?}",
        sink.stored
    );

    // Another object's purchase of the same inputs (a re-created object) is taken over, not counted.
    let mut sink = MemorySink {
        ledger: Some(bought_by("uid-0")),
        ..Default::default()
    };
    exec.pass(&object(AgentDynamicsStatus::default()), 0, &mut sink)
        .await
        .expect("pass");
    assert_eq!(generate_calls(&sim), 0);
    assert_eq!(sink.stored.generations, 0, "{:?}", sink.stored);
    assert!(sink.stored.was_bought(&key));
}

// An object that is not suspended but has no secret (an Access no front end builds today):
// `plan` asks to observe, and the pass sends nothing and says why instead of panicking.
#[tokio::test]
async fn a_call_asked_for_without_a_secret_is_never_sent_and_is_said() {
    let sim = simulator(10_000).await;
    let exec = executor(&sim, Duration::from_secs(5));
    let mut view = object(AgentDynamicsStatus::default());
    view.access = Access::NotNeeded;
    let mut sink = MemorySink::default();
    let result = exec.pass(&view, 0, &mut sink).await.expect("pass");
    let PassResult::Requeue { health, .. } = result else {
        panic!("{result:?}")
    };
    assert_eq!(health.reason(), reasons::NO_API_SECRET);
    assert_eq!(sim.stats().total("get"), 0);
    assert_eq!(generate_calls(&sim), 0);
}
