//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz`, `/readyz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::api::{CallObserver, Endpoint};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    endpoint: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabel {
    ready: String,
}

/// An object's state, and the namespace of the object (so an alert can route to its owners).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    namespace: String,
    state: String,
}

/// Whose credits: the namespace of the object that paid (as `object_states` labels it, so an
/// alert can route to its owners) and the account's fingerprint (never its key).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    namespace: String,
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabel {
    budget: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The states of `object_states`, as `reconciles` names them.
pub const OBJECT_STATES: [&str; 4] = ["ready", "progressing", "stalled", "suspended"];
/// The outcomes of `generate_calls`: the API took it, refused it, or the reply was lost.
pub const GENERATE_OUTCOMES: [&str; 3] = ["accepted", "refused", "unknown"];

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    remote_calls: Family<CallLabels, Counter>,
    remote_latency: Family<EndpointLabel, Histogram>,
    generations: Counter,
    regenerations_started: Counter,
    budget_waits: Family<BudgetLabel, Counter>,
    status_writes: Counter,
    ledger_writes: Counter,
    objects: Family<ReadyLabel, Gauge>,
    ready: AtomicBool,
    ready_gauge: Gauge,
    credits: Family<SpendLabels, Counter>,
    generate_calls: Family<OutcomeLabel, Counter>,
    object_states: Family<StateLabel, Gauge>,
    /// Each object's state: both gauges follow it, so one entry per object serves them.
    states: Mutex<HashMap<String, &'static str>>,
    queue_depth: Gauge,
    in_flight: Gauge,
    leader: Gauge,
    reconcile_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // The standard process_* metrics (CPU, memory, file descriptors, start time), unprefixed.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("dynamics_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ReasonLabel, Counter>::default();
        let remote_calls = Family::<CallLabels, Counter>::default();
        let remote_latency = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let generations = Counter::default();
        let regenerations_started = Counter::default();
        let budget_waits = Family::<BudgetLabel, Counter>::default();
        registry.register(
            "budget_waits",
            "Generations held back because a budget (--budget) had no room for them, by budget",
            budget_waits.clone(),
        );
        let status_writes = Counter::default();
        let ledger_writes = Counter::default();
        let objects = Family::<ReadyLabel, Gauge>::default();
        registry.register(
            "reconciles",
            "Reconcile passes by result (ready, progressing, stalled, suspended, released, error)",
            reconciles.clone(),
        );
        registry.register(
            "errors",
            "Passes that ended in an error or a stall, by reason",
            errors.clone(),
        );
        registry.register(
            "remote_calls",
            "Calls to the bitHuman Dynamics API by endpoint and HTTP status code (none: no reply)",
            remote_calls.clone(),
        );
        registry.register(
            "remote_call_duration_seconds",
            "Latency of calls to the bitHuman Dynamics API",
            remote_latency.clone(),
        );
        registry.register(
            "generations",
            "Generate calls that may have been charged (accepted, or with an unknown outcome); 250 credits each",
            generations.clone(),
        );
        registry.register(
            "regenerations_started",
            "PUTs of the dynamics block that the API answered with a regeneration of the movements",
            regenerations_started.clone(),
        );
        registry.register(
            "ledger_writes",
            "Writes of the purchase ledger (DynamicsLedger) to the Kubernetes API",
            ledger_writes.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes to the Kubernetes API",
            status_writes.clone(),
        );
        registry.register(
            "objects",
            "AgentDynamics objects by Ready condition",
            objects.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 when this replica answers /readyz with 200, the same on every replica: it is healthy, and either reconciles (its object cache synced) or stands by for the Lease. dynamics_operator_leader says which one reconciles",
            ready_gauge.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica reconciles: it holds the Lease, or runs without leader election",
            leader.clone(),
        );
        registry.register(
            "build",
            "The operator's version and the commit it was built from",
            Info::new(vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                (
                    "commit".to_string(),
                    env!("DYNAMICS_GIT_COMMIT").to_string(),
                ),
            ]),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one controller pass over one object (remote calls and status write included)",
            reconcile_duration.clone(),
        );
        let credits = Family::<SpendLabels, Counter>::default();
        registry.register(
            "credits_spent",
            "Credits the generate calls sent cost (250 each), by the paying object's namespace and account fingerprint",
            credits.clone(),
        );
        let generate_calls = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "generate_calls",
            "Generate calls by outcome: accepted, refused, or unknown (no reply: it may have been charged)",
            generate_calls.clone(),
        );
        for outcome in GENERATE_OUTCOMES {
            let _zero = generate_calls.get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            });
        }
        let object_states = Family::<StateLabel, Gauge>::default();
        registry.register(
            "object_states",
            "AgentDynamics objects by state (ready, progressing, stalled, suspended)",
            object_states.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "generation_queue_depth",
            "Objects waiting for a generation slot or the hourly budget (the generation guard's queue)",
            queue_depth.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "generations_in_flight",
            "Generate calls outstanding (running, or queued by the API), as the generation guard counts them",
            in_flight.clone(),
        );
        Metrics {
            registry: root,
            reconciles,
            errors,
            remote_calls,
            remote_latency,
            generations,
            regenerations_started,
            budget_waits,
            status_writes,
            ledger_writes,
            objects,
            ready: AtomicBool::new(false),
            ready_gauge,
            credits,
            generate_calls,
            object_states,
            states: Mutex::new(HashMap::new()),
            queue_depth,
            in_flight,
            leader,
            reconcile_duration,
        }
    }

    /// Whether this replica reconciles now (holds the Lease, or runs without leader election).
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// One controller pass took this long.
    pub fn reconcile_took(&self, elapsed: Duration) {
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    pub fn reconciled(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One generate call's outcome: `accepted`, `refused` or `unknown` ([`GENERATE_OUTCOMES`]).
    /// Every call that may have been charged (all but refused) also counts as a generation and
    /// its credits.
    pub fn generate_call(&self, outcome: &str, namespace: &str, account: &str) {
        self.generate_calls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        if outcome != "refused" {
            self.generations.inc();
            self.credits
                .get_or_create(&SpendLabels {
                    namespace: namespace.to_string(),
                    account: account.to_string(),
                })
                .inc_by(crate::reconcile::CREDITS_PER_GENERATION);
        }
    }

    /// Track one object's state (one of [`OBJECT_STATES`]; only "ready" counts as Ready);
    /// `None` when it is gone.
    pub fn object_state(&self, key: &str, state: Option<&str>) {
        let state = state.and_then(|s| OBJECT_STATES.into_iter().find(|known| *known == s));
        let mut map = self.states.lock().expect("states lock");
        let before = match (state, map.get_mut(key)) {
            (Some(s), Some(known)) => Some(std::mem::replace(known, s)),
            (Some(s), None) => map.insert(key.to_string(), s),
            (None, _) => map.remove(key),
        };
        // Counted as objects move, never by a scan: a pass costs the same at any number of objects.
        if before == state {
            return;
        }
        // Keys are namespace/name. A namespace seen for the first time shows every state, at 0.
        let namespace = key.split_once('/').map_or("", |(ns, _)| ns);
        let label = |s: &str| StateLabel {
            namespace: namespace.into(),
            state: s.into(),
        };
        if before.is_none() {
            for s in OBJECT_STATES {
                let _zero = self.object_states.get_or_create(&label(s));
            }
        }
        let state_gauge = |s: &str| self.object_states.get_or_create(&label(s)).clone();
        let ready_gauge = |s: &str| {
            self.objects
                .get_or_create(&ReadyLabel {
                    ready: if s == "ready" { "true" } else { "false" }.into(),
                })
                .clone()
        };
        if let Some(s) = before {
            state_gauge(s).dec();
            ready_gauge(s).dec();
        }
        if let Some(s) = state {
            state_gauge(s).inc();
            ready_gauge(s).inc();
        }
    }

    /// The generation guard's queue (objects waiting for a slot or budget) and slots in use.
    pub fn generation_guard(&self, waiting: usize, in_flight: usize) {
        self.queue_depth.set(waiting as i64);
        self.in_flight.set(in_flight as i64);
    }

    /// A generation held back by `budget` (as the user wrote it).
    pub fn budget_wait(&self, budget: &str) {
        self.budget_waits
            .get_or_create(&BudgetLabel {
                budget: budget.to_string(),
            })
            .inc();
    }

    pub fn regeneration_started(&self) {
        self.regenerations_started.inc();
    }

    pub fn ledger_written(&self) {
        self.ledger_writes.inc();
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// `/readyz` answers 200 from now on.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(ready));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl CallObserver for Metrics {
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, elapsed: Duration) {
        let code = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        self.remote_calls
            .get_or_create(&CallLabels {
                endpoint: endpoint.as_str().to_string(),
                code,
            })
            .inc();
        self.remote_latency
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.as_str().to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The standard process metrics, read from /proc at each scrape (nothing on other systems).
#[derive(Debug)]
struct ProcessCollector;

/// What /proc says about this process.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: i64,
    start_time_seconds: f64,
    threads: i64,
}

/// Clock ticks per second in /proc/*/stat: USER_HZ, 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
        Self::parse(&stat, &status, &limits, &boot, open_fds)
    }

    fn parse(stat: &str, status: &str, limits: &str, boot: &str, open_fds: i64) -> Option<Self> {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime, stime and starttime are fields 14, 15 and 22 of proc(5); fields[0] is field 3.
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let kib = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        };
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let boot_time = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
            resident_bytes: kib("VmRSS:").unwrap_or(0) * 1024,
            virtual_bytes: kib("VmSize:").unwrap_or(0) * 1024,
            open_fds,
            max_fds,
            start_time_seconds: boot_time + field(22)? / USER_HZ,
            threads: status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        })
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
            ("process_threads", "Number of OS threads", p.threads),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let start = ConstGauge::new(p.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // The bound address, not the requested one: with port 0 this is how tests find it.
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn ready_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_calls_generations_and_readiness() {
        let m = Metrics::new();
        m.observe(Endpoint::Generate, Some(200), Duration::from_millis(12));
        m.observe(Endpoint::Get, None, Duration::from_millis(3));
        m.generate_call("refused", "a", "f00d");
        m.generate_call("accepted", "a", "f00d");
        m.object_state("a/x", Some("progressing"));
        m.object_state("a/x", Some("ready"));
        m.object_state("a/y", Some("stalled"));
        m.object_state("a/z", Some("stalled"));
        m.object_state("a/y", None);
        m.object_state("b/w", Some("suspended"));
        m.generation_guard(3, 2);
        m.set_ready(true);
        m.set_leader(true);
        m.reconcile_took(Duration::from_millis(4));
        let text = m.encode();
        for line in [
            r#"dynamics_operator_generate_calls_total{outcome="accepted"} 1"#,
            r#"dynamics_operator_generate_calls_total{outcome="unknown"} 0"#,
            r#"dynamics_operator_object_states{namespace="a",state="ready"} 1"#,
            r#"dynamics_operator_object_states{namespace="a",state="stalled"} 1"#,
            r#"dynamics_operator_object_states{namespace="a",state="progressing"} 0"#,
            r#"dynamics_operator_object_states{namespace="b",state="suspended"} 1"#,
            r#"dynamics_operator_object_states{namespace="b",state="stalled"} 0"#,
            "dynamics_operator_leader 1",
            "dynamics_operator_reconcile_duration_seconds_count 1",
            r#"dynamics_operator_objects{ready="true"} 1"#,
            r#"dynamics_operator_objects{ready="false"} 2"#,
            r#"dynamics_operator_credits_spent_total{namespace="a",account="f00d"} 250"#,
            "dynamics_operator_generation_queue_depth 3",
            "dynamics_operator_generations_in_flight 2",
            "dynamics_operator_ready 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(
            text.contains(
                r#"dynamics_operator_remote_calls_total{endpoint="generate",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"dynamics_operator_remote_calls_total{endpoint="get",code="none"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("dynamics_operator_generations_total 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "dynamics_operator_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                env!("DYNAMICS_GIT_COMMIT")
            )),
            "{text}"
        );
        // The process metrics, unprefixed, once, and the exposition still ends once.
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
        ] {
            let samples = text.lines().filter(|l| l.starts_with(name)).count();
            assert_eq!(samples, 1, "{name} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
    }

    #[test]
    fn process_stats_parse_procfs() {
        let stat = "4242 (tokio-rt (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 3 0 12345 1000000 2000 18446744073709551615";
        let status = "Name:\tdynamics\nVmSize:\t  20480 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let p = ProcessStats::parse(stat, status, limits, boot, 7).unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 1024 * 1024,
                virtual_bytes: 20480 * 1024,
                open_fds: 7,
                max_fds: 1048576,
                start_time_seconds: 1_700_000_000.0 + 123.45,
                threads: 3,
            }
        );
        assert!(ProcessStats::parse("garbage", "", "", "", 0).is_none());
    }
}
