//! Convergence, cost and memory of the operator (or of its peer, provider-http) at N objects.
//!
//! ```sh
//! cargo bench --bench convergence -- --objects 1000                # account profile
//! cargo bench --bench convergence -- --objects 1000 --accounts 2   # two accounts, 2 slots each
//! cargo bench --bench convergence -- --objects 1000 --unlimited    # the operator's own overhead
//! cargo bench --bench convergence -- --realistic                   # 30 s generations, defaults
//! cargo bench --bench convergence -- --peer provider-http --peer-mapping plain   # the peer
//! cargo bench --bench convergence -- --help
//! ```
//!
//! It starts a real control plane (tests/support, binaries from tests/controlplane/build.sh), the
//! simulator in this process and the target as a child process: this operator (release build)
//! or crossplane-contrib/provider-http (built by benches/peer/build.sh, driven by the Request
//! templates of benches/peer/). It creates N objects through the Kubernetes API and measures,
//! in phases (setup, create, converge, counters, idle, edits, lost reply, restart, failover,
//! report):
//!
//! * time from the first create until every object has converged on the simulator's record (a
//!   ready generation with the object's current inputs and its dynamics block applied) and, for
//!   this operator, is also Ready; against the floor the simulator sets;
//! * remote calls per object by endpoint (simulator counters), API-server writes per object
//!   (`apiserver_request_total`) and, for this operator, its status writes and passes;
//! * remote calls and API-server writes during an idle window after convergence;
//! * the target's peak RSS and CPU time (/proc);
//! * edit-to-call latency: a dynamics edit until the simulator has the new block (p50/p99/max);
//! * what the target does when the reply of a generate call is lost (one extra object);
//! * this operator only: a restart, then a failover between two replicas with leader election,
//!   over the converged objects: calls in the first minute and their peak per second per
//!   account, writes, time to the first call and for an edit made at that moment, peak RSS of
//!   the new process (`convergence/restart.rs`).
//!
//! Results go to stdout (a Markdown table) and to `target/bench/convergence-<...>.json`.
//! `cargo test --all-targets` runs this binary without `--bench`: it then does nothing.

// The report's `json!` is deep.
#![recursion_limit = "256"]

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "convergence/measure.rs"]
mod measure;
#[path = "convergence/oracle.rs"]
mod oracle;
#[path = "convergence/peer.rs"]
mod peer;
#[path = "convergence/report.rs"]
mod report;
#[path = "convergence/restart.rs"]
mod restart;
#[path = "convergence/watch.rs"]
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, SimConfig, SimHandle, SimStats};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use support::controlplane::ControlPlane;
use support::process::ManagedChild;

use measure::{
    apiserver_requests, operator_metrics, proc_sample, self_sample, OperatorMetrics, ProcSample,
};
use oracle::Expected;
use watch::{spawn_watch, WatchState};

/// Account 0's api-secret (the operator's own); account k > 0 is `bench-account-k`.
const SECRET: &str = "bench-operator-secret";
const CRD_NAME: &str = "agentdynamics.dynamics.bithuman.ai";
const SECRET_LABEL: &str = "dynamics.bithuman.ai/api-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    /// The account's limit: the simulator runs 2 generations at once per account, the operator
    /// starts at most 2 per account; 200 ms generations, polling scaled down to match.
    Account,
    /// No limit anywhere and short generations: what is left is the target's own overhead.
    Unlimited,
    /// 30 s generations, no limit, the targets' default poll flags, N=100 by default.
    Realistic,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Account => "account",
            Profile::Unlimited => "unlimited",
            Profile::Realistic => "realistic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerKind {
    /// crossplane-contrib/provider-http v1.0.14 (benches/peer/).
    ProviderHttp,
}

/// Convergence benchmark of dynamics-operator (or its peer) against a real control plane and
/// the simulator.
#[derive(Debug, Parser)]
#[command(name = "convergence")]
struct Args {
    /// Number of objects.
    #[arg(long, default_value_t = 100)]
    objects: usize,
    /// Account (2 generations at once per account), unlimited, or realistic.
    #[arg(long, value_enum, default_value_t = Profile::Account)]
    profile: Profile,
    /// Shorthand for `--profile unlimited`.
    #[arg(long)]
    unlimited: bool,
    /// Shorthand for `--profile realistic`.
    #[arg(long)]
    realistic: bool,
    /// Simulated generation time (default: 200ms account, 100ms unlimited, 30s realistic).
    #[arg(long, value_parser = humantime::parse_duration)]
    generation_time: Option<Duration>,
    /// Generations at once per account in the account profile (simulator and operator alike).
    #[arg(long, default_value_t = 2)]
    max_concurrent: usize,
    /// Simulator accounts; objects are spread evenly over as many labelled Secrets, each
    /// referenced by `spec.apiSecretRef` (with 1, the operator's own secret, no Secret).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// Operator --poll-min (default 50ms; none in the realistic profile: the operator's 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    poll_min: Option<Duration>,
    /// Operator --poll-max (default 1s; none in the realistic profile: the operator's 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    poll_max: Option<Duration>,
    /// Operator --concurrency.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 32)]
    create_parallelism: usize,
    /// Idle window after convergence.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Dynamics edits for the edit-to-call latency (one at a time, on objects spread over N).
    #[arg(long, default_value_t = 50)]
    edits: usize,
    /// How long one edit may take to reach the simulator; after 3 misses in a row the edits stop.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    edit_timeout: Duration,
    /// Skip the lost-reply probe (one extra object whose generate reply is dropped).
    #[arg(long)]
    no_lost_reply: bool,
    /// How long to watch the lost-reply object (default 20s plus two generation times).
    #[arg(long, value_parser = humantime::parse_duration)]
    lost_reply_window: Option<Duration>,
    /// Operator --api-calls-per-second while objects are created and converge (0: no limit;
    /// the simulated generations and polls are 100 to 1,000 times faster than real ones, and so
    /// are their calls). The restart and failover phases run with the operator's default.
    #[arg(long, default_value_t = 0)]
    api_calls_per_second: u32,
    /// Skip the restart and failover phases (the peer runs the restart only).
    #[arg(long)]
    no_takeover: bool,
    /// How long the restart and failover phases each measure.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    takeover_window: Duration,
    /// --lease-duration of the two replicas in the failover phase (seconds).
    #[arg(long, default_value_t = 5)]
    lease_duration: u64,
    /// Give up waiting for convergence after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Run this peer instead of dynamics-operator.
    #[arg(long, value_enum)]
    peer: Option<PeerKind>,
    /// The peer's mapping (benches/peer/README.md): plain (out of the box) or best (best effort).
    #[arg(long, value_enum, default_value_t = peer::Mapping::Plain)]
    peer_mapping: peer::Mapping,
    /// provider-http --poll (default 1s; none in the realistic profile: its 1m).
    #[arg(long, value_parser = humantime::parse_duration)]
    peer_poll: Option<Duration>,
    /// provider-http --max-reconcile-rate (default 16; none in the realistic profile: its 10).
    #[arg(long)]
    peer_max_reconcile_rate: Option<u32>,
    /// Operator binary (default: the one cargo built for this bench, release under `cargo bench`).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// Run even if the operator binary is a debug build.
    #[arg(long)]
    allow_debug: bool,
    /// Extra operator flag (repeatable), e.g. --operator-arg=--resync=1m.
    #[arg(long = "operator-arg", allow_hyphen_values = true)]
    operator_args: Vec<String>,
    /// Where to write the JSON (default: <target>/bench/convergence-<N>-<profile>[...].json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`; without it (cargo test) the benchmark does not run.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The run asked for: size, profile, timing and target; everything the arguments decide,
/// resolved once.
#[derive(Debug, Clone)]
struct Scenario {
    n: usize,
    profile: Profile,
    generation_time: Duration,
    /// Generations at once per account (0 = unlimited), for the simulator and the operator.
    limit: usize,
    accounts: usize,
    poll_min: Option<Duration>,
    poll_max: Option<Duration>,
    peer: Option<peer::Mapping>,
    peer_poll: Option<Duration>,
    peer_rate: Option<u32>,
    floor: Duration,
    lost_reply_window: Option<Duration>,
}

impl Scenario {
    fn new(args: &Args) -> anyhow::Result<Scenario> {
        let profile = if args.realistic {
            Profile::Realistic
        } else if args.unlimited {
            Profile::Unlimited
        } else {
            args.profile
        };
        if args.accounts == 0 {
            bail!("--accounts must be at least 1");
        }
        if args.objects == 0 {
            bail!("--objects must be at least 1");
        }
        let generation_time = args.generation_time.unwrap_or(match profile {
            Profile::Account => Duration::from_millis(200),
            Profile::Unlimited => Duration::from_millis(100),
            Profile::Realistic => Duration::from_secs(30),
        });
        let limit = match profile {
            Profile::Account => args.max_concurrent,
            Profile::Unlimited | Profile::Realistic => 0,
        };
        let scaled = profile != Profile::Realistic;
        let n = args.objects;
        let floor = if limit == 0 {
            generation_time
        } else {
            generation_time.mul_f64((n as f64 / (limit * args.accounts) as f64).ceil())
        };
        Ok(Scenario {
            n,
            profile,
            generation_time,
            limit,
            accounts: args.accounts,
            poll_min: args
                .poll_min
                .or(scaled.then_some(Duration::from_millis(50))),
            poll_max: args.poll_max.or(scaled.then_some(Duration::from_secs(1))),
            peer: args.peer.map(|_| args.peer_mapping),
            peer_poll: args.peer_poll.or(scaled.then_some(Duration::from_secs(1))),
            peer_rate: args.peer_max_reconcile_rate.or(scaled.then_some(16)),
            floor,
            lost_reply_window: (!args.no_lost_reply).then(|| {
                args.lost_reply_window
                    .unwrap_or(Duration::from_secs(20) + generation_time * 2)
            }),
        })
    }

    fn target_name(&self) -> String {
        match self.peer {
            None => "dynamics-operator".into(),
            Some(m) => format!("provider-http ({} mapping)", m.name()),
        }
    }

    /// `convergence-100-account`, `-2acc`, `-provider-http-plain`.
    fn file_stem(&self) -> String {
        let mut s = format!("convergence-{}-{}", self.n, self.profile.name());
        if self.accounts > 1 {
            s += &format!("-{}acc", self.accounts);
        }
        if let Some(m) = self.peer {
            s += &format!("-provider-http-{}", m.name());
        }
        s
    }

    fn account_of(&self, i: usize) -> usize {
        i % self.accounts
    }

    /// Whether objects name a Secret (always for the peer, which reads its header from one).
    fn uses_secrets(&self) -> bool {
        self.accounts > 1 || self.peer.is_some()
    }

    fn floor_formula(&self) -> String {
        if self.limit == 0 {
            "one generation".into()
        } else {
            format!(
                "ceil(N/({} x {} accounts)) x generation",
                self.limit, self.accounts
            )
        }
    }
}

fn account_secret(k: usize) -> String {
    if k == 0 {
        SECRET.to_string()
    } else {
        format!("bench-account-{k}")
    }
}

fn secret_name(k: usize) -> String {
    format!("bench-api-{k}")
}

fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` builds and runs bench targets without `--bench` (and possibly
    // with libtest flags): do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("convergence benchmark: not run outside `cargo bench --bench convergence`");
        return Ok(());
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

// ---------------------------------------------------------------------------------------------
// The world: control plane, simulator, target

/// The process under test.
struct Target {
    child: ManagedChild,
    bin: PathBuf,
    version: Option<String>,
    build: &'static str,
    log: PathBuf,
    /// The operator's metrics port (none for the peer).
    metrics_port: Option<u16>,
}

#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    sim: SimStats,
    op: Option<OperatorMetrics>,
    api: Option<BTreeMap<String, f64>>,
    target: ProcSample,
    apiserver: Option<ProcSample>,
    etcd: Option<ProcSample>,
    bench: ProcSample,
    watch_changes: u64,
}

struct World {
    cp: ControlPlane,
    sim: SimHandle,
    ns: String,
    client: kube::Client,
    target: Target,
    http: reqwest::Client,
    apiserver_http: reqwest::Client,
    /// This operator's objects as the benchmark's watch sees them (empty for the peer).
    watch: Arc<Mutex<WatchState>>,
    watch_task: Option<tokio::task::JoinHandle<()>>,
    /// What each object asks for now (edits change it); index n is the lost-reply object.
    expected: Mutex<Vec<Expected>>,
}

impl World {
    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let op = match self.target.metrics_port {
            Some(port) => Some(operator_metrics(&self.http, port).await?),
            None => None,
        };
        let api = apiserver_requests(&self.cp, &self.apiserver_http).await;
        let pids = self.cp.pids();
        Ok(Snapshot {
            at: Instant::now(),
            sim: self.sim.stats(),
            op,
            api,
            target: proc_sample(self.target.child.pid()).unwrap_or_default(),
            // Start order in tests/support: etcd, kube-apiserver, kube-controller-manager.
            etcd: pids.first().and_then(|p| proc_sample(*p)),
            apiserver: pids.get(1).and_then(|p| proc_sample(*p)),
            bench: self_sample(),
            watch_changes: self.watch.lock().unwrap().changes,
        })
    }

    fn agent_api(&self) -> Api<AgentDynamics> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn object_vars(&self, scenario: &Scenario, i: usize) -> peer::ObjectVars {
        peer::ObjectVars {
            name: object_name(i),
            namespace: self.ns.clone(),
            api_url: self.sim.url(),
            secret_name: secret_name(scenario.account_of(i)),
        }
    }

    fn check_target_alive(&mut self, what: &str) -> anyhow::Result<()> {
        if let Some(status) = self.target.child.try_status() {
            bail!(
                "the target exited ({status}) {what}:\n{}",
                self.target.child.log_tail(4000)
            );
        }
        Ok(())
    }
}

fn sim_calls(a: &SimStats, b: &SimStats, endpoint: &str) -> u64 {
    a.total(endpoint) - b.total(endpoint)
}

/// (ms, waits) the simulator's workers waited between generations, over all accounts.
fn worker_idle(s: &SimStats) -> (u64, u64) {
    s.accounts.iter().fold((0, 0), |(ms, n), a| {
        (ms + a.worker_idle_ms, n + a.worker_idle_gaps)
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn agent_id(i: usize) -> String {
    format!("BENCH{i:06}")
}

fn object_name(i: usize) -> String {
    format!("agent-{i:06}")
}

/// A representative object: every generate input and a dynamics block without batchResults
/// (batchResults would make the simulator regenerate on the PUT, a second generation).
fn manifest(e: &Expected, i: usize, secret: Option<&str>) -> anyhow::Result<AgentDynamics> {
    let mut obj = json!({
        "apiVersion": "dynamics.bithuman.ai/v1alpha1",
        "kind": "AgentDynamics",
        "metadata": {"name": object_name(i)},
        "spec": {
            "agentId": e.agent_id,
            "imageUrl": e.image_url,
            "duration": e.duration,
            "model": "auto",
            "motionPrompts": ["wave", "nod", "smile"],
            "dynamics": {
                "enabled": true,
                "result": {"modelPath": e.model_path, "modelHash": e.model_hash}
            }
        }
    });
    if let Some(name) = secret {
        obj["spec"]["apiSecretRef"] = json!({"name": name, "key": "api-secret"});
    }
    Ok(serde_json::from_value(obj)?)
}

/// Retries a create on 429 and 5xx (the API server under load), counting retries.
async fn create_with_retries<F, Fut>(
    mut call: F,
    retries: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(e)) if (e.code == 429 || e.code >= 500) && attempt < 8 => {
                attempt += 1;
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates object `i` as the target expects it (an AgentDynamics, or the peer's Request and
/// DisposableRequest).
async fn create_object(
    world: &World,
    scenario: &Scenario,
    i: usize,
    retries: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    let e = world.expected.lock().unwrap()[i].clone();
    let name = object_name(i);
    match scenario.peer {
        None => {
            let secret = scenario
                .uses_secrets()
                .then(|| secret_name(scenario.account_of(i)));
            let obj = manifest(&e, i, secret.as_deref())?;
            let api = world.agent_api();
            create_with_retries(
                || async { api.create(&PostParams::default(), &obj).await.map(|_| ()) },
                retries,
            )
            .await
        }
        Some(mapping) => {
            for obj in peer::objects(mapping, &world.object_vars(scenario, i), &e)? {
                create_with_retries(|| peer::create(&world.client, &world.ns, &obj), retries)
                    .await?;
            }
            Ok(())
        }
    }
    .with_context(|| format!("creating {name}"))?;
    world
        .watch
        .lock()
        .unwrap()
        .created
        .insert(name, Instant::now());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phase 1: setup

async fn setup(args: &Args, scenario: &Scenario) -> anyhow::Result<World> {
    // The target binary first, so that a missing build fails before the control plane starts.
    let built_peer = match scenario.peer {
        Some(_) => {
            let built = peer::build(&target_dir())?;
            if !peer::port_8080_free() {
                bail!("provider-http serves its metrics on the fixed port 8080, which is in use here; free it and run again");
            }
            Some(built)
        }
        None => None,
    };

    let cp = ControlPlane::start().await?;
    match &built_peer {
        None => {
            cp.apply_file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/crds/agentdynamics.yaml"
            ))?;
            cp.apply_file(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/crds/dynamicsledgers.yaml"
            ))?;
            cp.wait_crd_established(CRD_NAME, Duration::from_secs(60))
                .await?;
            cp.wait_crd_established(
                "dynamicsledgers.dynamics.bithuman.ai",
                Duration::from_secs(60),
            )
            .await?;
        }
        Some(b) => {
            cp.kubectl_ok(["apply", "-f", &b.crds.to_string_lossy()])?;
            for crd in peer::CRD_NAMES {
                cp.wait_crd_established(crd, Duration::from_secs(60))
                    .await?;
            }
        }
    }
    let ns = cp.create_namespace("bench").await?;
    let client = cp.kube_client().await?;

    // One simulator account per Secret; each pays for its objects plus the edits.
    let cost = SimConfig::default().cost;
    let per_account = (scenario.n / scenario.accounts + 1 + args.edits) as u64 + 100;
    let sim = sim::start(SimConfig {
        secret: SECRET.into(),
        accounts: (1..scenario.accounts).map(account_secret).collect(),
        generation_time: scenario.generation_time,
        max_concurrent: scenario.limit,
        credits: SimConfig::default().credits.max(per_account * cost),
        ..SimConfig::default()
    })
    .await?;
    if scenario.uses_secrets() {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for k in 0..scenario.accounts {
            let s: Secret = serde_json::from_value(json!({
                "metadata": {"name": secret_name(k), "labels": {SECRET_LABEL: "true"}},
                "stringData": {"api-secret": account_secret(k)},
            }))?;
            secrets.create(&PostParams::default(), &s).await?;
        }
    }
    if scenario.peer.is_some() {
        peer::create(&client, &ns, &peer::provider_config(&ns)?).await?;
    }

    let log_dir = target_dir().join("bench");
    std::fs::create_dir_all(&log_dir)?;
    let stem = args
        .out
        .as_ref()
        .and_then(|o| o.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| scenario.file_stem());
    let log = log_dir.join(format!("{stem}.target.log"));
    let _ = std::fs::remove_file(&log);
    let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut target = match built_peer {
        None => {
            let limit = format!("--api-calls-per-second={}", args.api_calls_per_second);
            start_operator(args, scenario, &ns, &sim, &kubeconfig, &log, &[limit])?
        }
        Some(b) => start_peer(scenario, b, &kubeconfig, &log)?,
    };
    wait_target_ready(&http, &mut target).await?;

    let apiserver_http = match cp.ca_file() {
        Some(ca) => reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?)
            .timeout(Duration::from_secs(20))
            .build()?,
        None => reqwest::Client::new(),
    };
    let watch = Arc::new(Mutex::new(WatchState::default()));
    let watch_task = scenario
        .peer
        .is_none()
        .then(|| spawn_watch(Api::namespaced(client.clone(), &ns), watch.clone()));
    // Let the watch establish itself before the first create.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(World {
        cp,
        sim,
        ns,
        client,
        target,
        http,
        apiserver_http,
        watch,
        watch_task,
        expected: Mutex::new((0..=scenario.n).map(Expected::for_object).collect()),
    })
}

fn start_operator(
    args: &Args,
    scenario: &Scenario,
    ns: &str,
    sim: &SimHandle,
    kubeconfig: &str,
    log: &Path,
    extra: &[String],
) -> anyhow::Result<Target> {
    let bin = args
        .operator_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dynamics-operator")));
    let build = if bin.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else if bin.components().any(|c| c.as_os_str() == "debug") {
        "debug"
    } else {
        "unknown"
    };
    if build == "debug" && !args.allow_debug {
        bail!(
            "{} is a debug build; run under `cargo bench` (release) or pass --allow-debug",
            bin.display()
        );
    }
    let metrics_port = free_port()?;
    let mut argv: Vec<String> = vec![
        "run".into(),
        "--namespace".into(),
        ns.to_string(),
        "--api-url".into(),
        sim.url(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
        "--concurrency".into(),
        args.concurrency.to_string(),
        "--max-concurrent-generations".into(),
        scenario.limit.to_string(),
    ];
    if let Some(d) = scenario.poll_min {
        argv.extend([
            "--poll-min".into(),
            humantime::format_duration(d).to_string(),
        ]);
    }
    if let Some(d) = scenario.poll_max {
        argv.extend([
            "--poll-max".into(),
            humantime::format_duration(d).to_string(),
        ]);
    }
    argv.extend(extra.iter().cloned());
    argv.extend(args.operator_args.iter().cloned());
    let rust_log = std::env::var("BENCH_OPERATOR_LOG")
        .unwrap_or_else(|_| dynamics_operator::telemetry::SERVICE_FILTER.to_string());
    eprintln!("bench: operator {} {}", bin.display(), argv.join(" "));
    let child = ManagedChild::spawn(
        "operator",
        &bin,
        &argv,
        log,
        &[
            ("KUBECONFIG", kubeconfig),
            ("BITHUMAN_API_SECRET", SECRET),
            ("RUST_LOG", rust_log.as_str()),
        ],
    )?;
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Ok(Target {
        child,
        bin,
        version,
        build,
        log: log.to_path_buf(),
        metrics_port: Some(metrics_port),
    })
}

fn start_peer(
    scenario: &Scenario,
    built: peer::Built,
    kubeconfig: &str,
    log: &Path,
) -> anyhow::Result<Target> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(d) = scenario.peer_poll {
        argv.push(format!("--poll={}", humantime::format_duration(d)));
    }
    if let Some(r) = scenario.peer_rate {
        argv.push(format!("--max-reconcile-rate={r}"));
    }
    eprintln!(
        "bench: provider-http {} {} {}",
        built.version,
        built.bin.display(),
        argv.join(" ")
    );
    let child = ManagedChild::spawn(
        "provider-http",
        &built.bin,
        &argv,
        log,
        &[("KUBECONFIG", kubeconfig)],
    )?;
    Ok(Target {
        child,
        bin: built.bin,
        version: Some(format!("provider-http {}", built.version)),
        build: "go build -trimpath",
        log: log.to_path_buf(),
        metrics_port: None,
    })
}

/// The operator's /readyz, or the peer's /metrics on :8080.
async fn wait_target_ready(http: &reqwest::Client, target: &mut Target) -> anyhow::Result<()> {
    let url = match target.metrics_port {
        Some(port) => format!("http://127.0.0.1:{port}/readyz"),
        None => "http://127.0.0.1:8080/metrics".to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = target.child.try_status() {
            bail!(
                "the target exited ({status}):\n{}",
                target.child.log_tail(4000)
            );
        }
        let ok = http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the target was not ready within 60s ({url}):\n{}",
                target.child.log_tail(4000)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 2: create

struct Created {
    first: Instant,
    took: Duration,
    retries: u64,
}

async fn create_phase(
    world: &World,
    scenario: &Scenario,
    parallelism: usize,
) -> anyhow::Result<Created> {
    let retries = std::sync::atomic::AtomicU64::new(0);
    let first = Instant::now();
    futures::stream::iter(0..scenario.n)
        .map(|i| create_object(world, scenario, i, &retries))
        .buffer_unordered(parallelism.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let took = first.elapsed();
    let retries = retries.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "bench: created {} in {:.1}s ({:.0}/s, {retries} retries)",
        scenario.n,
        secs(took),
        scenario.n as f64 / secs(took)
    );
    Ok(Created {
        first,
        took,
        retries,
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 3: converge

struct Converged {
    /// From the first create until the simulator's record shows every object converged and
    /// (this operator) every object is Ready; `None` on timeout.
    all: Option<Duration>,
    /// On the simulator's record alone.
    record: Option<Duration>,
    /// This operator's Ready on the watch alone.
    ready: Option<Duration>,
    /// Per object: when the record first showed it converged.
    per_object: HashMap<String, Instant>,
}

async fn converge_phase(
    world: &mut World,
    scenario: &Scenario,
    created: &Created,
    timeout: Duration,
) -> anyhow::Result<Converged> {
    let n = scenario.n;
    let t0 = created.first;
    let expected: Vec<Expected> = world.expected.lock().unwrap()[..n].to_vec();
    let mut per_object: HashMap<String, Instant> = HashMap::new();
    let mut record = None;
    let mut ready = scenario.peer.is_some().then_some(Duration::ZERO);
    let mut last_progress = Instant::now();
    let mut last_change = (0, Instant::now());
    let all = loop {
        let now = Instant::now();
        if record.is_none() {
            let agents = world.sim.agents();
            let by_id: HashMap<&str, &dynamics_operator::sim::SimAgent> =
                agents.iter().map(|a| (a.agent_id.as_str(), a)).collect();
            for e in &expected {
                if per_object.contains_key(&e.agent_id) {
                    continue;
                }
                if by_id.get(e.agent_id.as_str()).is_some_and(|a| e.met_by(a)) {
                    per_object.insert(e.agent_id.clone(), now);
                }
            }
            if per_object.len() >= n {
                record = Some(t0.elapsed());
            }
        }
        let (ready_count, restarts) = {
            let st = world.watch.lock().unwrap();
            (st.ready_count(), st.restarts)
        };
        if ready.is_none() && ready_count >= n {
            ready = Some(t0.elapsed());
        }
        if let (Some(a), Some(b)) = (record, ready) {
            break Some(a.max(b));
        }
        if t0.elapsed() > timeout {
            eprintln!(
                "bench: timed out with {}/{n} converged on the record, {ready_count} Ready",
                per_object.len()
            );
            break None;
        }
        let progress = per_object.len() + ready_count;
        if progress != last_change.0 {
            last_change = (progress, Instant::now());
        } else if last_change.1.elapsed() > Duration::from_secs(180) {
            eprintln!(
                "bench: no progress for 180s; stuck at {}/{n} converged, {ready_count} Ready",
                per_object.len()
            );
            break None;
        }
        world.check_target_alive("before convergence")?;
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            let p = proc_sample(world.target.child.pid()).unwrap_or_default();
            let (idle_ms, _) = worker_idle(&world.sim.stats());
            eprintln!(
                "bench: {:>6.1}s {}/{n} converged on the record, {ready_count} Ready; target cpu {:.1}s rss {} MiB; watch lists {restarts}; API workers idle {:.1}s",
                secs(t0.elapsed()),
                per_object.len(),
                p.cpu_s,
                p.rss_kib / 1024,
                idle_ms as f64 / 1000.0
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(t) = all {
        eprintln!("bench: all {n} converged after {:.1}s", secs(t));
    }
    Ok(Converged {
        all,
        record,
        ready: ready.filter(|_| scenario.peer.is_none()),
        per_object,
    })
}

// ---------------------------------------------------------------------------------------------
// Phase 5: idle (phase 4, the counters, is a snapshot)

async fn idle_phase(world: &World, idle: Duration) -> anyhow::Result<(Snapshot, Snapshot)> {
    eprintln!("bench: idle for {idle:?}");
    let start = world.snapshot().await?;
    tokio::time::sleep(idle).await;
    let end = world.snapshot().await?;
    Ok((start, end))
}

// ---------------------------------------------------------------------------------------------
// Phase 6: edits

struct EditResult {
    /// From the start of the edit until the simulator stored the new dynamics block.
    to_call: Option<Duration>,
    /// This operator: until the object is Ready again for the edit.
    to_ready: Option<Duration>,
}

/// Edit object `i`'s dynamics block (a new modelHash) and time until the simulator has it.
async fn edit_one(
    world: &World,
    scenario: &Scenario,
    i: usize,
    k: usize,
    timeout: Duration,
) -> anyhow::Result<EditResult> {
    let name = object_name(i);
    let e = {
        let mut all = world.expected.lock().unwrap();
        all[i].model_hash = format!("hash{i}-edit{k}");
        all[i].clone()
    };
    let t0 = Instant::now();
    let generation = match scenario.peer {
        None => {
            let patched = world
                .agent_api()
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"spec": {"dynamics": {"result": {"modelHash": e.model_hash}}}}),
                    ),
                )
                .await?;
            patched.metadata.generation
        }
        Some(mapping) => {
            peer::edit_dynamics(
                &world.client,
                mapping,
                &world.object_vars(scenario, i),
                &e,
                k,
            )
            .await?;
            None
        }
    };
    let deadline = t0 + timeout;
    let applied = |world: &World| {
        world
            .sim
            .agent(&e.agent_id)
            .dynamics
            .as_ref()
            .and_then(|d| d.pointer("/result/model_hash").cloned())
            == Some(Value::String(e.model_hash.clone()))
    };
    let to_call = loop {
        if applied(world) {
            break Some(t0.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let to_ready = match (generation, to_call) {
        (Some(generation), Some(_)) => loop {
            if let Some(at) = world
                .watch
                .lock()
                .unwrap()
                .ready_at
                .get(&(name.clone(), generation))
            {
                break Some(at.saturating_duration_since(t0));
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        _ => None,
    };
    Ok(EditResult { to_call, to_ready })
}

async fn edits_phase(
    world: &World,
    scenario: &Scenario,
    edits: usize,
    timeout: Duration,
) -> Vec<EditResult> {
    let n = scenario.n;
    let mut out = Vec::new();
    let mut misses = 0;
    // Spread over N; when there are more edits than objects, objects are edited again.
    for k in 0..edits {
        let slot = k % n;
        let per = edits.min(n);
        let i = ((slot * n) / per + n / (2 * per)).min(n - 1);
        match edit_one(world, scenario, i, k, timeout).await {
            Ok(r) => {
                misses = if r.to_call.is_none() { misses + 1 } else { 0 };
                out.push(r);
            }
            Err(e) => eprintln!("bench: edit {k}: {e:#}"),
        }
        if misses >= 3 {
            eprintln!(
                "bench: 3 edits in a row did not reach the simulator within {timeout:?}; stopping the edits"
            );
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Phase 7: a lost generate reply

#[derive(Debug, Default)]
struct LostReply {
    window_s: f64,
    /// Charged generate calls for the object's agent at the end of the window.
    charged: u64,
    /// Generate calls the simulator answered (or dropped) for it.
    posts: u64,
    /// When the record showed the object converged, from its create.
    converged_after_s: Option<f64>,
    /// The target's own view of the object at the end (Ready condition: status, reason).
    target_view: Option<String>,
}

async fn lost_reply_phase(
    world: &World,
    scenario: &Scenario,
    window: Duration,
) -> anyhow::Result<LostReply> {
    let i = scenario.n;
    let e = world.expected.lock().unwrap()[i].clone();
    eprintln!(
        "bench: lost reply: object {} ({}), its generate reply dropped; watching {window:?}",
        object_name(i),
        e.agent_id
    );
    world.sim.drop_next_generate_reply(&e.agent_id);
    let posts_before = world.sim.stats().count("generate", Some(&e.agent_id), None);
    let retries = std::sync::atomic::AtomicU64::new(0);
    let t0 = Instant::now();
    create_object(world, scenario, i, &retries).await?;
    let mut converged_after_s = None;
    while t0.elapsed() < window {
        if converged_after_s.is_none() && e.met_by(&world.sim.agent(&e.agent_id)) {
            converged_after_s = Some(secs(t0.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agent = world.sim.agent(&e.agent_id);
    let name = object_name(i);
    let ready_of = |conds: Option<&Value>| {
        conds
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| {
                format!(
                    "Ready={} {}",
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or("")
                )
            })
    };
    let target_view = match scenario.peer {
        None => world
            .agent_api()
            .get(&name)
            .await
            .ok()
            .and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| ready_of(v.pointer("/status/conditions"))),
        Some(_) => peer::requests(world.client.clone(), &world.ns)
            .get(&name)
            .await
            .ok()
            .and_then(|o: DynamicObject| ready_of(o.data.pointer("/status/conditions"))),
    };
    Ok(LostReply {
        window_s: secs(window),
        charged: agent.charged_generations,
        posts: world.sim.stats().count("generate", Some(&e.agent_id), None) - posts_before,
        converged_after_s,
        target_view,
    })
}

// ---------------------------------------------------------------------------------------------

async fn run(args: Args) -> anyhow::Result<()> {
    let wall = Instant::now();
    let scenario = Scenario::new(&args)?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "bench: {} objects, profile {}, {} account(s), generation {:?}, limit {} per account, target {}; load {}",
        scenario.n,
        scenario.profile.name(),
        scenario.accounts,
        scenario.generation_time,
        if scenario.limit == 0 { "none".to_string() } else { scenario.limit.to_string() },
        scenario.target_name(),
        load_before.trim()
    );

    // 1. setup
    let mut world = setup(&args, &scenario).await?;
    let start = world.snapshot().await?;
    // 2. create
    let created = create_phase(&world, &scenario, args.create_parallelism).await?;
    // 3. converge
    let converged = converge_phase(&mut world, &scenario, &created, args.timeout).await?;
    // 4. counters
    let at_convergence = world.snapshot().await?;
    // 5. idle
    let (idle_start, idle_end) = idle_phase(&world, args.idle).await?;
    // 6. edits
    let edits = if converged.all.is_some() {
        edits_phase(&world, &scenario, args.edits, args.edit_timeout).await
    } else {
        Vec::new()
    };
    let after_edits = world.snapshot().await?;
    // 7. lost reply
    let lost = match scenario.lost_reply_window {
        Some(w) if converged.all.is_some() => match lost_reply_phase(&world, &scenario, w).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("bench: lost reply: {e:#}");
                None
            }
        },
        _ => None,
    };
    // 8, 9. restart, failover
    // The peer restarts too; its failover is not run (provider-http's leader election is a
    // controller-runtime one, and it has no standby to compare).
    let (restart, failover) = if !args.no_takeover && converged.all.is_some() {
        let restart = restart::restart_phase(&mut world, &args, &scenario, args.takeover_window)
            .await
            .map_err(|e| eprintln!("bench: failover: {e:#}"))
            .ok();
        let failover = match scenario.peer {
            Some(_) => None,
            None => restart::failover_phase(
                &mut world,
                &args,
                &scenario,
                args.takeover_window,
                args.lease_duration,
            )
            .await
            .map_err(|e| eprintln!("bench: failover: {e:#}"))
            .ok(),
        };
        (restart, failover)
    } else {
        (None, None)
    };
    if let Some(task) = world.watch_task.take() {
        task.abort();
    }
    // 10. report
    let phases = report::Phases {
        start,
        created,
        converged,
        at_convergence,
        idle_start,
        idle_end,
        edits,
        after_edits,
        lost,
        restart,
        failover,
        load_before,
        wall: wall.elapsed(),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        target_dir()
            .join("bench")
            .join(format!("{}.json", scenario.file_stem()))
    });
    let summary = report::summarize(&scenario, &world, &phases);
    report::print_table(&args, &scenario, &world, &phases, &summary);
    report::write_json(&args, &scenario, &world, &phases, &summary, &out)?;

    // Teardown: the target first (so it does not log the control plane going away), then the
    // simulator and the control plane (ManagedChild/ControlPlane drops reap them).
    let converged_ok = phases.converged.all.is_some();
    let World {
        cp,
        sim,
        mut target,
        ..
    } = world;
    target.child.stop(Duration::from_secs(5));
    drop(target);
    sim.shutdown().await;
    drop(cp);
    if !converged_ok {
        bail!("not all objects converged within {:?}", args.timeout);
    }
    Ok(())
}
