//! A restart costs the API nothing it does not need: settled objects are looked at over their
//! resync window, not all at once; work pending and edits go at once; a standby takes over
//! from its warm cache; an account's calls stay within its rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dynamics_operator::reconcile::start::first_look;
use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::SimConfig;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::fast_sim;
use crate::support::operator::{manifest, Env, Pace, TIMEOUT};
use crate::support::wait::wait_for;

fn agent(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// `n` objects `<prefix>-<i>` for agents `<PREFIX><i>`, all Ready.
async fn converge(env: &Env, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let yaml: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| manifest(name, &agent(&prefix.to_uppercase(), i), ""))
        .collect();
    env.apply(&yaml.join("---\n"));
    for name in &names {
        env.wait_ready(name).await;
    }
    names
}

async fn objects(env: &Env) -> Vec<AgentDynamics> {
    env.api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
}

/// name -> resourceVersion of every object in the namespace.
async fn versions(env: &Env) -> BTreeMap<String, Option<String>> {
    objects(env)
        .await
        .into_iter()
        .map(|o| (o.name_any(), o.resource_version()))
        .collect()
}

/// name -> when an operator started now first looks at it, with `resync`.
async fn first_looks(env: &Env, resync: Duration) -> Vec<(Duration, String)> {
    let now = jiff::Timestamp::now();
    let mut looks: Vec<(Duration, String)> = objects(env)
        .await
        .iter()
        .map(|o| (first_look(o, resync, now), o.name_any()))
        .collect();
    looks.sort();
    looks
}

fn gets(env: &Env) -> u64 {
    env.sim.stats().total("get")
}

/// A restarted operator does not GET every settled object at once: by any moment after its
/// start it has looked at no more objects than were due by then (the previous process's
/// rhythm: a resync after each became Ready), it writes nothing, and within the window it
/// looks at every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_spreads_settled_objects_over_the_resync_window() {
    let mut env = Env::start("spread", fast_sim()).await;
    let n = 24;
    let names = converge(&env, "spread", n).await;
    let before = versions(&env).await;
    env.operators[0].stop(Duration::from_secs(10));
    env.sim.reset_stats();

    let resync = Duration::from_secs(30);
    let looks = first_looks(&env, resync).await;
    let started = Instant::now();
    env.start_operator(&["--resync", "30s"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let looked = gets(&env);
    // Due times are absolute (Ready time plus the resync): the operator's own start a moment
    // later moves none of them. One second more for the clocks' rounding.
    let by = started.elapsed() + Duration::from_secs(1);
    let due = looks.iter().filter(|(at, _)| *at < by).count() as u64;
    assert!(
        looked <= due,
        "{looked} GETs {by:?} after the restart; {due} of {n} objects were due\n{}",
        env.logs()
    );
    assert!(
        due < n as u64 / 2,
        "half were due in the first seconds: {looks:?}"
    );

    // Every object gets its look within the window.
    wait_for("a look at every object", resync + TIMEOUT, || async {
        let stats = env.sim.stats();
        let unseen = (0..n)
            .filter(|i| stats.count("get", Some(&agent("SPREAD", *i)), None) == 0)
            .count();
        Ok((unseen == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let stats = env.sim.stats();
    assert_eq!(stats.total("generate"), 0, "nothing bought");
    assert_eq!(stats.total("update"), 0, "nothing sent");
    assert_eq!(versions(&env).await, before, "no status written: {names:?}");
}

/// Objects with work pending when the operator starts, and an edit made while it starts, go
/// at once, not at their point in the resync window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_work_and_an_edit_during_a_restart_go_at_once() {
    let mut env = Env::start("pending", fast_sim()).await;
    let n = 12;
    converge(&env, "pending", n).await;
    let resync = Duration::from_secs(600);
    // The two objects latest in the window: a look at them soon is not their resync.
    let by_point = first_looks(&env, resync).await;
    let (late, pending) = by_point[n - 1].clone();
    let (later, edited) = by_point[n - 2].clone();
    assert!(late.min(later) > Duration::from_secs(120), "{by_point:?}");
    let agent_of = |name: &str| agent("PENDING", name[8..].parse().unwrap());

    env.operators[0].kill_now();
    // Edited while no operator runs: pending when the next one starts.
    env.patch_spec(
        &pending,
        serde_json::json!({"dynamics": {"enabled": false}}),
    )
    .await;
    env.sim.reset_stats();
    let started = Instant::now();
    env.start_operator(&[]);
    // Edited while the operator starts.
    env.patch_spec(&edited, serde_json::json!({"dynamics": {"enabled": false}}))
        .await;
    for name in [&pending, &edited] {
        wait_for(&format!("the PUT of {name}"), TIMEOUT, || async {
            Ok((env.calls("update", &agent_of(name)) == 1).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    }
    let took = started.elapsed();
    eprintln!("both edits reached the API {took:?} after the restart");
    assert!(took < Duration::from_secs(60), "{took:?}");
    env.wait_ready(&pending).await;
    env.wait_ready(&edited).await;
    // Nobody else was looked at in their place.
    let looked = gets(&env);
    let due = by_point
        .iter()
        .filter(|(at, _)| *at < started.elapsed())
        .count() as u64;
    assert!(
        looked <= due + 2 * 3,
        "{looked} GETs, {due} settled objects due"
    );
}

/// However much work arrives at once, one account's calls stay within
/// `--api-calls-per-second` in every second, as the API counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_calls_stay_within_its_rate() {
    let mut env = Env::new(
        "rate",
        SimConfig {
            generation_time: Duration::from_millis(300),
            ..SimConfig::default()
        },
        Pace::Fast,
    )
    .await;
    let limit = 4;
    env.start_operator(&["--api-calls-per-second", &limit.to_string()]);
    let n = 16;
    converge(&env, "rate", n).await;
    let stats = env.sim.stats();
    let calls = stats.total("get") + stats.total("generate") + stats.total("update");
    let peak = stats.accounts[0].peak_calls_per_second;
    eprintln!("{calls} calls, at most {peak} in one second");
    // 16 objects created at once make 16 first GETs at once without a limit.
    assert!(calls >= 3 * n as u64, "{calls} calls");
    // Counted by the simulator as calls arrive, in any one-second window.
    assert!(peak <= limit, "{peak} calls in one second, limit {limit}");
}

/// A standby keeps its watches and cache: it has the objects before it leads, and once the
/// leader is killed it acts on an edit made at that moment as soon as the lease is its own,
/// without looking at the settled objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_takes_over_without_a_burst() {
    let mut env = Env::new("standby", fast_sim(), Pace::Fast).await;
    let ns = env.ns.clone();
    let election = [
        "--leader-elect",
        "--lease-namespace",
        ns.as_str(),
        "--lease-name",
        "standby-e2e",
        "--lease-duration",
        "3",
    ];
    env.start_operator(&election);
    env.start_operator(&election);
    let n = 8;
    converge(&env, "standby", n).await;
    let synced = |env: &Env, i: usize| {
        env.operators[i]
            .log_tail(1 << 20)
            .contains("object cache synced")
    };
    wait_for("both caches synced", TIMEOUT, || async {
        Ok((synced(&env, 0) && synced(&env, 1)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    let leases: Api<Lease> = Api::namespaced(env.cp.kube_client().await.unwrap(), &ns);
    let holder = leases
        .get("standby-e2e")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap();
    let leading =
        |env: &Env, i: usize| env.operators[i].log_tail(1 << 20).contains("became leader");
    let (leader, standby) = if leading(&env, 0) { (0, 1) } else { (1, 0) };
    assert!(!leading(&env, standby), "one leader\n{}", env.logs());

    let looks = first_looks(&env, Duration::from_secs(600)).await;
    let edited = looks[n - 1].1.clone();
    env.sim.reset_stats();
    env.operators[leader].kill_now();
    let killed = Instant::now();
    env.patch_spec(&edited, serde_json::json!({"dynamics": {"enabled": false}}))
        .await;
    let agent = agent("STANDBY", edited["standby-".len()..].parse().unwrap());
    wait_for("the edit's PUT", TIMEOUT, || async {
        Ok((env.calls("update", &agent) == 1).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    eprintln!(
        "the edit reached the API {:?} after the leader ({holder}) was killed",
        killed.elapsed()
    );
    let log = env.operators[standby].log_tail(1 << 20);
    let cached = log.find("object cache synced").unwrap();
    let led = log.find("became leader").expect("the standby leads");
    assert!(
        cached < led,
        "the standby had its cache before it led:\n{log}"
    );
    assert_eq!(
        log.matches("object cache synced").count(),
        1,
        "no second sync:\n{log}"
    );
    // The edited object's look; the settled ones wait for their resync.
    assert!(env.sim.stats().total("get") <= 2, "{}", env.logs());
}
