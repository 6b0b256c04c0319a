//! HTTP surface of the simulator: the `/v1` Dynamics API routes (with fault
//! injection) and the `/_sim` control routes (no secret, no faults).

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path, State},
    http::{header::RETRY_AFTER, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, info};

use super::config::Faults;
use super::conn::ConnKiller;
use super::engine::{agent_hint, Engine, Reply};

pub(crate) type Shared = Arc<Mutex<Engine>>;

/// A panic in one handler must not wedge every later call.
pub(crate) fn lock(sh: &Shared) -> MutexGuard<'_, Engine> {
    sh.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/dynamics/generate", post(generate))
        .route("/v1/dynamics/{agent_id}", get(get_dynamics).put(update))
        .route("/_sim/stats", get(stats).delete(reset_stats))
        .route("/_sim/credits", put(set_credits).get(get_credits))
        .route("/_sim/faults", put(set_faults).get(get_faults))
        .route("/_sim/agents", get(list_agents))
        .route("/_sim/agents/{agent_id}", get(agent))
        .route("/_sim/agents/{agent_id}/{action}", post(agent_action))
        .with_state(shared)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

async fn generate(
    State(sh): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnKiller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let secret = header(&headers, "api-secret");
    let key = header(&headers, "idempotency-key");
    v1_call(&sh, &conn, "generate", agent_hint(&body), |e, now| {
        e.generate(now, secret.as_deref(), key.as_deref(), &body)
    })
    .await
}

async fn get_dynamics(
    State(sh): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnKiller>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let secret = header(&headers, "api-secret");
    v1_call(&sh, &conn, "get", Some(agent_id.clone()), |e, now| {
        e.get(now, secret.as_deref(), &agent_id)
    })
    .await
}

async fn update(
    State(sh): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnKiller>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let secret = header(&headers, "api-secret");
    v1_call(&sh, &conn, "update", Some(agent_id.clone()), |e, now| {
        e.update(now, secret.as_deref(), &agent_id, &body)
    })
    .await
}

/// Latency, then the fault dice, then the call itself, then maybe a drop.
async fn v1_call(
    sh: &Shared,
    conn: &ConnKiller,
    endpoint: &'static str,
    agent: Option<String>,
    call: impl FnOnce(&mut Engine, Instant) -> Reply,
) -> Response {
    let started = Instant::now();
    let latency = lock(sh).faults().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (reply, dropped) = {
        let mut e = lock(sh);
        let plan = e.plan_faults(agent.as_deref());
        let injected = plan.replace.is_some();
        let mut reply = match plan.replace {
            Some(r) => r,
            None => call(&mut e, Instant::now()),
        };
        if reply.agent.is_none() {
            reply.agent = agent;
        }
        e.record(endpoint, reply.agent.as_deref(), reply.status);
        info!(
            endpoint,
            agent = reply.agent.as_deref().unwrap_or("-"),
            status = reply.status,
            injected,
            dropped = plan.drop,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sim call"
        );
        (reply, plan.drop)
    };
    if dropped {
        conn.kill();
    }
    into_response(reply)
}

fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(reply.body)).into_response();
    if let Some(secs) = reply.retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

async fn stats(State(sh): State<Shared>) -> Response {
    Json(lock(&sh).stats()).into_response()
}

async fn reset_stats(State(sh): State<Shared>) -> StatusCode {
    lock(&sh).reset_stats();
    debug!("sim stats reset");
    StatusCode::NO_CONTENT
}

#[derive(Serialize, Deserialize)]
struct Credits {
    credits: u64,
}

async fn set_credits(State(sh): State<Shared>, Json(c): Json<Credits>) -> Json<Credits> {
    lock(&sh).set_credits(c.credits);
    debug!(credits = c.credits, "sim credits set");
    Json(c)
}

async fn get_credits(State(sh): State<Shared>) -> Json<Credits> {
    Json(Credits {
        credits: lock(&sh).stats().credits_remaining,
    })
}

async fn set_faults(State(sh): State<Shared>, Json(f): Json<Faults>) -> Json<Faults> {
    lock(&sh).set_faults(f.clone());
    debug!(faults = ?f, "sim faults set");
    Json(f)
}

async fn get_faults(State(sh): State<Shared>) -> Json<Faults> {
    Json(lock(&sh).faults().clone())
}

async fn list_agents(State(sh): State<Shared>) -> Response {
    Json(lock(&sh).agents(Instant::now())).into_response()
}

async fn agent(State(sh): State<Shared>, Path(agent_id): Path<String>) -> Response {
    Json(lock(&sh).agent(Instant::now(), &agent_id)).into_response()
}

async fn agent_action(
    State(sh): State<Shared>,
    Path((agent_id, action)): Path<(String, String)>,
) -> Response {
    let mut e = lock(&sh);
    match action.as_str() {
        "unknown" => e.set_known(&agent_id, false),
        "known" => e.set_known(&agent_id, true),
        "fail-next" => e.fail_next(&agent_id),
        "refuse-next-regeneration" => e.refuse_next_regeneration(&agent_id),
        _ => {
            let body = json!({
                "error": "unknown action",
                "details": "use unknown, known, fail-next or refuse-next-regeneration",
            });
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
    }
    debug!(agent = %agent_id, action = %action, "sim agent control");
    Json(e.agent(Instant::now(), &agent_id)).into_response()
}
