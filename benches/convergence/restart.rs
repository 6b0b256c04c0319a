//! Phases 8 and 9: a restart of the operator, then a failover between two replicas, over the
//! converged objects. Each measures the first `--takeover-window` (60 s) after the old process
//! went: the remote calls the new one sent and their peak per second (as the simulator counts
//! them, per account), the API-server writes, the new process's peak RSS, the time to its
//! first remote call, and how long an edit made at that moment took to reach the simulator.
//! Both run the operator with its default `--api-calls-per-second`.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use super::measure::{api_writes, apiserver_requests, diff_map, operator_metrics, proc_sample};
use super::{edit_one, start_operator, Args, Scenario, Target, World};

/// What one phase measured.
pub struct Takeover {
    pub kind: &'static str,
    pub window: Duration,
    pub gets: u64,
    pub calls: u64,
    /// Of the busiest account, in any one-second window.
    pub peak_calls_per_second: u64,
    /// API-server writes of the counted kinds, the benchmark's one edit subtracted.
    pub apiserver_writes: Option<f64>,
    /// The new process's own status writes (the edited object's among them).
    pub status_writes: Option<f64>,
    /// From the restart (SIGTERM's end) or the SIGKILL of the leader.
    pub first_call: Option<Duration>,
    pub edit_to_call: Option<Duration>,
    pub peak_rss_mib: f64,
    pub lease_duration_s: Option<u64>,
    /// The account's call limit the target ran with (the peer has none).
    pub limit: Option<u32>,
}

/// Waits (up to `window`) for the simulator's first call since its counters were reset.
async fn first_call(world: &World, t0: Instant, window: Duration) -> Option<Duration> {
    while t0.elapsed() < window {
        let s = world.sim.stats();
        if s.total("get") + s.total("update") + s.total("generate") > 0 {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The edit at `t0`, the first call, then the rest of the window; counters of the window.
async fn measure(
    world: &World,
    scenario: &Scenario,
    t0: Instant,
    window: Duration,
    edit: (usize, usize),
    before_api: Option<std::collections::BTreeMap<String, f64>>,
) -> anyhow::Result<Takeover> {
    let (i, k) = edit;
    let (edited, first) = tokio::join!(
        edit_one(world, scenario, i, k, window),
        first_call(world, t0, window)
    );
    let edit_to_call = edited?.to_call;
    tokio::time::sleep_until((t0 + window).into()).await;
    let s = world.sim.stats();
    let after_api = apiserver_requests(&world.cp, &world.apiserver_http).await;
    let apiserver_writes = match (&after_api, &before_api) {
        (Some(a), Some(b)) => {
            let d = diff_map(a, b);
            let writes: f64 = super::measure::COUNTED_RESOURCES
                .iter()
                .map(|r| api_writes(&d, r))
                .sum();
            Some(writes - 1.0)
        }
        _ => None,
    };
    let status_writes = match world.target.metrics_port {
        Some(port) => operator_metrics(&world.http, port)
            .await
            .ok()
            .map(|m| m.status_writes),
        None => None,
    };
    let rss = proc_sample(world.target.child.pid()).unwrap_or_default();
    Ok(Takeover {
        kind: "",
        window,
        gets: s.total("get"),
        calls: s.total("get") + s.total("update") + s.total("generate"),
        peak_calls_per_second: s
            .accounts
            .iter()
            .map(|a| a.peak_calls_per_second)
            .max()
            .unwrap_or(0),
        apiserver_writes,
        status_writes,
        first_call: first,
        edit_to_call,
        peak_rss_mib: rss.hwm_kib as f64 / 1024.0,
        lease_duration_s: None,
        limit: scenario
            .peer
            .is_none()
            .then_some(dynamics_operator::cli::DEFAULT_API_CALLS_PER_SECOND),
    })
}

fn kubeconfig(world: &World) -> String {
    world.cp.kubeconfig_path().to_string_lossy().into_owned()
}

/// SIGTERM the target (this operator or the peer), start a new one at once, edit one object
/// while it starts.
pub async fn restart_phase(
    world: &mut World,
    args: &Args,
    scenario: &Scenario,
    window: Duration,
) -> anyhow::Result<Takeover> {
    world.target.child.stop(Duration::from_secs(10));
    let before_api = apiserver_requests(&world.cp, &world.apiserver_http).await;
    world.sim.reset_stats();
    let log = world.target.log.with_extension("restart.log");
    let t0 = Instant::now();
    world.target = match scenario.peer {
        None => start_operator(
            args,
            scenario,
            &world.ns,
            &world.sim,
            &kubeconfig(world),
            &log,
            &[],
        )?,
        // Built already (stamp-cached): this only finds the binary again.
        Some(_) => super::start_peer(
            scenario,
            super::peer::build(&super::target_dir())?,
            &kubeconfig(world),
            &log,
        )?,
    };
    let edit = (scenario.n / 3, 1_000_001);
    let mut result = measure(world, scenario, t0, window, edit, before_api).await?;
    result.kind = "restart";
    Ok(result)
}

/// Two replicas with leader election; once the standby's cache is synced, SIGKILL the leader
/// and edit one object at that moment.
pub async fn failover_phase(
    world: &mut World,
    args: &Args,
    scenario: &Scenario,
    window: Duration,
    lease_duration_s: u64,
) -> anyhow::Result<Takeover> {
    world.target.child.stop(Duration::from_secs(10));
    let lease_name = "bench-leader";
    let replica = |world: &World, id: &str| -> anyhow::Result<Target> {
        let flags: Vec<String> = [
            "--leader-elect",
            "--lease-namespace",
            &world.ns,
            "--lease-name",
            lease_name,
            "--lease-duration",
            &lease_duration_s.to_string(),
            "--identity",
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = world.target.log.with_extension(format!("{id}.log"));
        start_operator(
            args,
            scenario,
            &world.ns,
            &world.sim,
            &kubeconfig(world),
            &log,
            &flags,
        )
    };
    let mut replicas = vec![replica(world, "bench-a")?, replica(world, "bench-b")?];
    let leases: Api<Lease> = Api::namespaced(world.client.clone(), &world.ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    let holder = loop {
        let synced = replicas
            .iter()
            .all(|r| r.child.log_tail(1 << 20).contains("object cache synced"));
        let holder = leases
            .get_opt(lease_name)
            .await?
            .and_then(|l| l.spec?.holder_identity);
        if let (true, Some(holder)) = (synced, holder) {
            break holder;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no leader with both caches synced within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Let the leader's own start settle (it spreads the objects; nothing is due).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = if holder == "bench-a" { 0 } else { 1 };
    let mut old = replicas.remove(leader);
    world.target = replicas.remove(0);
    let before_api = apiserver_requests(&world.cp, &world.apiserver_http).await;
    world.sim.reset_stats();
    let t0 = Instant::now();
    old.child.kill_now();
    let edit = (2 * scenario.n / 3, 1_000_002);
    let result = measure(world, scenario, t0, window, edit, before_api).await;
    drop(old);
    let mut result = result?;
    result.kind = "failover";
    result.lease_duration_s = Some(lease_duration_s);
    Ok(result)
}
