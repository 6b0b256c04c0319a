//! The crash windows of a generate call, one test each, on the real control plane: the operator
//! dies at a failpoint (`failpoint::EXIT_CODE`), is started again without it, and the simulator's record
//! of charged generate calls shows that the change was bought at most once.
//!
//! The simulator does not honour Idempotency-Key here, so a resent call would be charged again:
//! only the operator's own rules stand between a crash and a second purchase.
//!
//! | failpoint              | the POST | end state                                          |
//! | ---------------------- | -------- | -------------------------------------------------- |
//! | after-marker-saved     | not sent | Ready, bought after the restart, 1 call            |
//! | after-generate-sent    | landed   | Ready, the generation adopted, 1 call              |
//! | after-generate-reply   | landed   | Ready, the generation adopted, 1 call              |
//! | after-generate-reply + job invisible to GET for 4 s | landed | Ready, 1 call        |
//!
//! A marker without a reply is an unknown outcome once its purchase is on the ledger (written
//! after the marker, before the POST): the operator may not send again, and with no evidence of
//! the call within `--visibility-window` the object is Stalled `GenerationOutcomeUnknown`. A
//! marker with no call on the ledger proves the POST was never sent, and the change is bought.

#[path = "support/chaos/mod.rs"]
mod chaos;
mod support;

use std::time::{Duration, Instant};

use chaos::{
    charged_for, debug_operator_binary, edit_patch, object, sim_generations, wait_exit,
    OperatorSpec, FAILPOINT_EXIT, SECRET,
};
use dynamics_operator::failpoint;
use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, Modes, SimConfig, SimHandle};
use kube::api::{PatchParams, PostParams};
use kube::Api;
use support::operator::control_plane;
use support::process::ManagedChild;
use support::wait::wait_for;

const TIMEOUT: Duration = Duration::from_secs(60);

struct World {
    sim: SimHandle,
    api: Api<AgentDynamics>,
    spec: OperatorSpec,
    dir: tempfile::TempDir,
    operators: Vec<ManagedChild>,
}

impl World {
    async fn start(prefix: &str, sim_config: SimConfig) -> World {
        let cp = control_plane().await;
        let ns = cp.create_namespace(prefix).await.expect("namespace");
        let sim = sim::start(SimConfig {
            secret: SECRET.into(),
            generation_time: Duration::from_millis(500),
            // A resent call costs money: a repeated Idempotency-Key is charged like a new call.
            honour_idempotency_key: false,
            ..sim_config
        })
        .await
        .expect("simulator");
        let api = Api::namespaced(cp.kube_client().await.expect("client"), &ns);
        let spec = OperatorSpec {
            binary: debug_operator_binary(),
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            namespace: ns.clone(),
            api_url: sim.url(),
            args: [
                "--api-timeout",
                "2s",
                "--poll-min",
                "200ms",
                "--poll-max",
                "2s",
                "--visibility-window",
                "8s",
                "--stalled-retry",
                "10m",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        World {
            sim,
            api,
            spec,
            dir: tempfile::tempdir().expect("tempdir"),
            operators: Vec::new(),
        }
    }

    fn start_operator(&mut self, failpoints: &str) -> usize {
        let index = self.operators.len();
        let log = self.dir.path().join(format!("operator-{index}.log"));
        let child = self
            .spec
            .spawn(&format!("operator-{index}"), &log, &[], failpoints, 1)
            .expect("start the operator");
        self.operators.push(child);
        index
    }

    fn logs(&self) -> String {
        self.operators
            .iter()
            .map(|o| format!("--- {} ---\n{}", o.name, o.log_tail(8000)))
            .collect()
    }

    async fn create(&self, name: &str, agent: &str, tag: &str) {
        let obj = object(name, agent, tag, false).unwrap();
        self.api
            .create(&PostParams::default(), &obj)
            .await
            .expect("create");
    }

    /// Waits for the operator to die at `failpoint`: the failpoint exit code and the line on stderr.
    async fn expect_failpoint_exit(&mut self, index: usize, failpoint: &str) {
        let status = wait_exit(&mut self.operators[index], TIMEOUT).await;
        let log = self.operators[index].log_tail(1_000_000);
        let status = status.unwrap_or_else(|| {
            panic!(
                "the operator did not stop at {failpoint} within {TIMEOUT:?}\n{}",
                self.logs()
            )
        });
        assert_eq!(
            status.code(),
            Some(FAILPOINT_EXIT),
            "exit status at {failpoint}: {status}\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.trim() == format!("failpoint {failpoint} hit")),
            "stderr says `failpoint {failpoint} hit`:\n{log}"
        );
    }

    fn charged(&self, agent: &str) -> usize {
        charged_for(&sim_generations(&self.sim), agent).count()
    }

    async fn get(&self, name: &str) -> AgentDynamics {
        self.api.get(name).await.expect("get")
    }

    async fn wait_ready(&self, name: &str) -> AgentDynamics {
        let result = wait_for(&format!("{name} Ready"), TIMEOUT, || async {
            let obj = self.api.get(name).await?;
            let status = obj.status.clone().unwrap_or_default();
            let ready = status.is_ready() && status.observed_generation == obj.metadata.generation;
            Ok(ready.then_some(obj))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// After the end state: a quiet spell in which nothing more is charged.
    async fn assert_still_charged(&self, agent: &str, want: usize, why: &str) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let charged = self.charged(agent);
        assert_eq!(charged, want, "{why}\n{}", self.logs());
    }
}

/// Crash after the marker is saved, before the POST: nothing was bought. The purchase goes on the
/// agent's ledger record after the marker and before the POST, so the restarted operator finds
/// a marker with no call on record: proof that the call was never sent. It buys the change
/// then, exactly once, instead of stalling on an outcome it knows. A later user change buys
/// exactly one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_marker_saved_buys_once_after_the_restart() {
    let mut w = World::start("crash-marker", SimConfig::default()).await;
    let (name, agent) = ("marker", "CRASHMARK1");
    let op = w.start_operator(failpoint::AFTER_MARKER_SAVED);
    w.create(name, agent, "m1").await;
    w.expect_failpoint_exit(op, failpoint::AFTER_MARKER_SAVED)
        .await;

    let obj = w.get(name).await;
    let status = obj.status.clone().unwrap_or_default();
    let marker = status
        .pending_generation
        .clone()
        .unwrap_or_else(|| panic!("the marker was saved before the crash: {status:?}"));
    assert!(marker.ledger_first, "{marker:?}");
    assert_eq!(w.charged(agent), 0, "the POST was never sent");

    w.start_operator("");
    let obj = w.wait_ready(name).await;
    let status = obj.status.clone().unwrap();
    assert_eq!(status.observed_generation, obj.metadata.generation);
    assert_eq!(status.generations, 1, "one call, counted once: {status:?}");
    w.assert_still_charged(agent, 1, "the change bought exactly once")
        .await;

    // A user change is a new key: exactly one generation for it.
    w.api
        .patch(name, &PatchParams::default(), &edit_patch(agent, "m2"))
        .await
        .expect("edit");
    wait_for("the edit bought", TIMEOUT, || async {
        let obj = w.api.get(name).await?;
        let done = obj.status.as_ref().is_some_and(|s| {
            s.is_ready() && s.observed_generation == obj.metadata.generation && s.generations == 2
        });
        Ok(done.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    w.assert_still_charged(agent, 2, "one generation for the new change")
        .await;
}

/// A crash once the POST landed: the restarted operator finds the marker, sees the generation
/// remotely (after `lag`, during which GET does not show the job) and adopts it; it never sends
/// again.
async fn crash_after_the_post_adopts(failpoint: &str, agent: &str, lag: Option<Duration>) {
    let mut w = World::start(&agent.to_lowercase(), SimConfig::default()).await;
    let name = "adopt";
    if let Some(lag) = lag {
        sim_invisible(&w.sim, agent, lag);
    }
    let op = w.start_operator(failpoint);
    let created = Instant::now();
    w.create(name, agent, "a1").await;
    w.expect_failpoint_exit(op, failpoint).await;
    assert_eq!(w.charged(agent), 1, "the POST landed before the crash");
    let status = w.get(name).await.status.unwrap_or_default();
    assert!(
        status.pending_generation.is_some() && status.generations == 0,
        "the crash left the marker and no record of the reply: {status:?}"
    );

    w.start_operator("");
    if lag.is_some() {
        // While GET does not show the job, the object says it waits for the outcome.
        let waiting = ["GenerationOutcomePending", "AwaitingGeneration"];
        let result = wait_for("a waiting reason", TIMEOUT, || async {
            let obj = w.api.get(name).await?;
            let reason = obj.status.as_ref().and_then(|s| s.condition("Ready"));
            Ok(reason
                .filter(|c| waiting.contains(&c.reason.as_str()))
                .map(|_| ()))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    }
    let obj = w.wait_ready(name).await;
    if let Some(lag) = lag {
        assert!(created.elapsed() >= lag, "Ready only once the job showed");
    }
    let status = obj.status.unwrap();
    assert_eq!(status.generations, 1, "{status:?}");
    assert!(status.pending_generation.is_none(), "{status:?}");
    w.assert_still_charged(agent, 1, "the generation was adopted, not bought again")
        .await;
}

/// Crash after the POST was sent and its headers answered, before the body was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_generate_sent_adopts_the_generation() {
    crash_after_the_post_adopts(failpoint::AFTER_GENERATE_SENT, "CRASHSENT1", None).await;
}

/// Crash after the reply was read, before the status recorded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_generate_reply_adopts_the_generation() {
    crash_after_the_post_adopts(failpoint::AFTER_GENERATE_REPLY, "CRASHREPL1", None).await;
}

/// The same crash against an API that lags: for 4 s after the POST, GET does not show the job.
/// The restarted operator sees nothing remotely, waits (the visibility window is 8 s) instead of
/// sending again, and adopts the generation once it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_generate_reply_with_a_lagging_api_waits_and_adopts() {
    crash_after_the_post_adopts(
        failpoint::AFTER_GENERATE_REPLY,
        "CRASHLAG01",
        Some(Duration::from_secs(4)),
    )
    .await;
}

/// Jobs of `agent` stay invisible to GET for `lag` after an accepted POST.
fn sim_invisible(sim: &SimHandle, agent: &str, lag: Duration) {
    let modes = Modes {
        invisible_ms: lag.as_millis() as u64,
        ..sim.agent_modes(agent)
    };
    sim.set_agent_modes(agent, Some(modes));
}

/// Two operators at once, without leader election (a misconfigured rollout, or a lease that
/// both believe they hold): every pass of one races the other's. The marker is written with
/// the resourceVersion just read, so one of the two gets a conflict and sends nothing; each
/// change is bought once. Jobs lag 2 s in GET, so the loser sees a marker it cannot explain yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_at_once_buy_each_change_once() {
    let mut w = World::start("two-at-once", SimConfig::default()).await;
    let agents: Vec<String> = (0..4).map(|i| format!("TWOATONCE{i}")).collect();
    for agent in &agents {
        sim_invisible(&w.sim, agent, Duration::from_secs(2));
    }
    w.start_operator("");
    w.start_operator("");
    for (i, agent) in agents.iter().enumerate() {
        w.create(&format!("both-{i}"), agent, "b1").await;
    }
    for i in 0..agents.len() {
        w.wait_ready(&format!("both-{i}")).await;
    }
    // One edit each, made while both are active.
    for (i, agent) in agents.iter().enumerate() {
        w.api
            .patch(
                &format!("both-{i}"),
                &PatchParams::default(),
                &edit_patch(agent, "b2"),
            )
            .await
            .expect("edit");
    }
    for i in 0..agents.len() {
        let obj = w.wait_ready(&format!("both-{i}")).await;
        let status = obj.status.unwrap();
        assert_eq!(status.generations, 2, "{status:?}\n{}", w.logs());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = sim_generations(&w.sim);
    for agent in &agents {
        assert_eq!(
            charged_for(&records, agent).count(),
            2,
            "two changes of {agent}, two generations\n{}",
            w.logs()
        );
    }
    assert!(chaos::duplicates(&records).is_empty(), "{records:?}");
}
