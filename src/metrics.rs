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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
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
    status_writes: Counter,
    objects: Family<ReadyLabel, Gauge>,
    ready: AtomicBool,
    ready_gauge: Gauge,
    credits: Counter,
    generate_calls: Family<OutcomeLabel, Counter>,
    object_states: Family<StateLabel, Gauge>,
    /// Each object's state: both gauges follow it, so one entry per object serves them.
    states: Mutex<HashMap<String, &'static str>>,
    queue_depth: Gauge,
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dynamics_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ReasonLabel, Counter>::default();
        let remote_calls = Family::<CallLabels, Counter>::default();
        let remote_latency = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let generations = Counter::default();
        let regenerations_started = Counter::default();
        let status_writes = Counter::default();
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
            "1 when /readyz answers 200 (the object cache is synced, or this replica waits for the Lease)",
            ready_gauge.clone(),
        );
        let credits = Counter::default();
        registry.register(
            "credits_spent",
            "Credits the generate calls sent cost (250 each)",
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
        for state in OBJECT_STATES {
            let _zero = object_states.get_or_create(&StateLabel {
                state: state.into(),
            });
        }
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
            registry,
            reconciles,
            errors,
            remote_calls,
            remote_latency,
            generations,
            regenerations_started,
            status_writes,
            objects,
            ready: AtomicBool::new(false),
            ready_gauge,
            credits,
            generate_calls,
            object_states,
            states: Mutex::new(HashMap::new()),
            queue_depth,
            in_flight,
        }
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
    pub fn generate_call(&self, outcome: &str) {
        self.generate_calls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        if outcome != "refused" {
            self.generations.inc();
            self.credits.inc_by(crate::filemode::CREDITS_PER_GENERATION);
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
        let state_gauge = |s: &str| {
            self.object_states
                .get_or_create(&StateLabel { state: s.into() })
                .clone()
        };
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

    pub fn regeneration_started(&self) {
        self.regenerations_started.inc();
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
        m.generate_call("refused");
        m.generate_call("accepted");
        m.object_state("a/x", Some("progressing"));
        m.object_state("a/x", Some("ready"));
        m.object_state("a/y", Some("stalled"));
        m.object_state("a/z", Some("stalled"));
        m.object_state("a/y", None);
        m.generation_guard(3, 2);
        m.set_ready(true);
        let text = m.encode();
        for line in [
            r#"dynamics_operator_generate_calls_total{outcome="accepted"} 1"#,
            r#"dynamics_operator_generate_calls_total{outcome="unknown"} 0"#,
            r#"dynamics_operator_object_states{state="ready"} 1"#,
            r#"dynamics_operator_object_states{state="stalled"} 1"#,
            r#"dynamics_operator_object_states{state="progressing"} 0"#,
            r#"dynamics_operator_objects{ready="true"} 1"#,
            r#"dynamics_operator_objects{ready="false"} 1"#,
            "dynamics_operator_credits_spent_total 250",
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
    }
}
