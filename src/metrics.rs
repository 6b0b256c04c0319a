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
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabel {
    ready: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    remote_calls: Family<CallLabels, Counter>,
    remote_latency: Family<EndpointLabel, Histogram>,
    generations: Counter,
    generate_calls: Family<OutcomeLabel, Counter>,
    status_writes: Counter,
    objects: Family<ReadyLabel, Gauge>,
    readiness: Mutex<HashMap<String, bool>>,
    ready: AtomicBool,
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
        let generate_calls = Family::<OutcomeLabel, Counter>::default();
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
            "generate_calls",
            "Generate calls sent, by outcome (accepted, refused, unknown)",
            generate_calls.clone(),
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
        Metrics {
            registry,
            reconciles,
            errors,
            remote_calls,
            remote_latency,
            generations,
            generate_calls,
            status_writes,
            objects,
            readiness: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
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

    /// A generate call ended with `outcome` (accepted, refused or unknown).
    pub fn generate_call(&self, outcome: &str) {
        self.generate_calls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        if outcome != "refused" {
            self.generations.inc();
        }
    }

    pub fn status_written(&self) {
        self.status_writes.inc();
    }

    /// Track one object's readiness; `None` when it is gone.
    pub fn object_ready(&self, key: &str, ready: Option<bool>) {
        let mut map = self.readiness.lock().expect("readiness lock");
        match ready {
            Some(r) => map.insert(key.to_string(), r),
            None => map.remove(key),
        };
        let ready_count = map.values().filter(|r| **r).count() as i64;
        self.objects
            .get_or_create(&ReadyLabel {
                ready: "true".into(),
            })
            .set(ready_count);
        self.objects
            .get_or_create(&ReadyLabel {
                ready: "false".into(),
            })
            .set(map.len() as i64 - ready_count);
    }

    /// `/readyz` answers 200 from now on.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
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
        m.generate_call("accepted");
        m.generate_call("refused");
        m.object_ready("a/x", Some(true));
        m.object_ready("a/y", Some(false));
        m.object_ready("a/y", None);
        let text = m.encode();
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
            text.contains(r#"dynamics_operator_objects{ready="true"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dynamics_operator_objects{ready="false"} 0"#),
            "{text}"
        );
    }
}
