//! HTTP surface of the simulator: the `/v1` Dynamics API routes (with fault
//! injection) and the `/_sim` control routes (no secret, no faults).

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path, Request, State},
    http::{header::RETRY_AFTER, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, info};

use super::config::{Faults, Modes};
use super::conn::ConnKiller;
use super::engine::{agent_hint, Engine, Reply};
use super::stats::GenerationReply;

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
        .route("/_sim/generations", get(generations))
        .route("/_sim/modes", put(set_modes).get(get_modes))
        .route("/_sim/agents", get(list_agents))
        .route("/_sim/agents/{agent_id}", get(agent))
        .route(
            "/_sim/agents/{agent_id}/modes",
            put(set_agent_modes)
                .get(get_agent_modes)
                .delete(clear_agent_modes),
        )
        .route("/_sim/agents/{agent_id}/{action}", post(agent_action))
        .layer(middleware::from_fn(mark_busy))
        .with_state(shared)
}

/// Holds the connection busy while a request is handled, so the idle
/// timeout never cuts a slow reply (latency, `reply_delay_ms`).
async fn mark_busy(
    ConnectInfo(conn): ConnectInfo<ConnKiller>,
    req: Request,
    next: Next,
) -> Response {
    let _busy = conn.busy();
    next.run(req).await
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
    v1_call(
        &sh,
        &conn,
        "generate",
        agent_hint(&body),
        secret.clone(),
        |e, now| e.generate(now, secret.as_deref(), key.as_deref(), &body),
    )
    .await
}

async fn get_dynamics(
    State(sh): State<Shared>,
    ConnectInfo(conn): ConnectInfo<ConnKiller>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let secret = header(&headers, "api-secret");
    v1_call(
        &sh,
        &conn,
        "get",
        Some(agent_id.clone()),
        secret.clone(),
        |e, now| e.get(now, secret.as_deref(), &agent_id),
    )
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
    let wall = SystemTime::now();
    v1_call(
        &sh,
        &conn,
        "update",
        Some(agent_id.clone()),
        secret.clone(),
        |e, now| e.update(now, wall, secret.as_deref(), &agent_id, &body),
    )
    .await
}

/// Latency, then the fault dice, then the call itself, then maybe a drop or
/// (for generate and update) a held-back reply.
async fn v1_call(
    sh: &Shared,
    conn: &ConnKiller,
    endpoint: &'static str,
    agent: Option<String>,
    secret: Option<String>,
    call: impl FnOnce(&mut Engine, Instant) -> Reply,
) -> Response {
    let started = Instant::now();
    // Counted on arrival, before any latency or fault: what the account's rate limit sees.
    lock(sh).note_call(started, secret.as_deref());
    let latency = lock(sh).faults().latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (reply, dropped, delay) = {
        let mut e = lock(sh);
        let faults = e.roll_faults(agent.as_deref());
        let injected = faults.replace.is_some();
        let mut reply = match faults.replace {
            Some(r) => r,
            None => call(&mut e, Instant::now()),
        };
        if reply.agent.is_none() {
            reply.agent = agent;
        }
        let drop = faults.drop || reply.drop;
        let delay = match endpoint {
            "generate" | "update" if !injected && !drop => {
                Duration::from_millis(e.modes_for(reply.agent.as_deref()).reply_delay_ms)
            }
            _ => Duration::ZERO,
        };
        if let Some(seq) = reply.generation_seq {
            if drop {
                e.set_generation_reply(seq, GenerationReply::Dropped);
            } else if !delay.is_zero() {
                e.set_generation_reply(seq, GenerationReply::Delayed);
            }
        }
        e.record(endpoint, reply.agent.as_deref(), reply.status);
        info!(
            endpoint,
            agent = reply.agent.as_deref().unwrap_or("-"),
            status = reply.status,
            injected,
            dropped = drop,
            delay_ms = delay.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sim call"
        );
        (reply, drop, delay)
    };
    if dropped {
        conn.kill();
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    into_response(reply)
}

fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(reply.body)).into_response();
    if let Some(value) = reply.retry_after {
        let value =
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        resp.headers_mut().insert(RETRY_AFTER, value);
    }
    resp
}

async fn generations(State(sh): State<Shared>) -> Response {
    Json(lock(&sh).generations()).into_response()
}

async fn set_modes(State(sh): State<Shared>, Json(m): Json<Modes>) -> Json<Modes> {
    lock(&sh).set_modes(m.clone());
    debug!(modes = ?m, "sim modes set");
    Json(m)
}

async fn get_modes(State(sh): State<Shared>) -> Json<Modes> {
    Json(lock(&sh).modes().clone())
}

async fn set_agent_modes(
    State(sh): State<Shared>,
    Path(agent_id): Path<String>,
    Json(m): Json<Modes>,
) -> Json<Modes> {
    lock(&sh).set_agent_modes(&agent_id, Some(m.clone()));
    debug!(agent = %agent_id, modes = ?m, "sim agent modes set");
    Json(m)
}

/// The modes in force for the agent (its own, else the global ones).
async fn get_agent_modes(State(sh): State<Shared>, Path(agent_id): Path<String>) -> Json<Modes> {
    Json(lock(&sh).modes_for(Some(&agent_id)).clone())
}

async fn clear_agent_modes(State(sh): State<Shared>, Path(agent_id): Path<String>) -> Json<Modes> {
    let mut e = lock(&sh);
    e.set_agent_modes(&agent_id, None);
    Json(e.modes().clone())
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
        "drop-next-generate-reply" => e.drop_next_generate_reply(&agent_id),
        _ => {
            let body = json!({
                "error": "unknown action",
                "details": "use unknown, known, fail-next, refuse-next-regeneration or drop-next-generate-reply",
            });
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
    }
    debug!(agent = %agent_id, action = %action, "sim agent control");
    Json(e.agent(Instant::now(), &agent_id)).into_response()
}
