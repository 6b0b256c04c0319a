//! The simulator's hard modes, over HTTP, with the real client where it
//! matters: what the real service does that the friendly defaults hide
//! (invisible jobs, fixed URLs, unknown statuses, `data: null`, replies held
//! past the client's timeout, hostile Retry-After, no Idempotency-Key), the
//! record of accepted generate calls, and the idle connection timeout.

use std::time::{Duration, Instant};

use dynamics_operator::api::{
    ApiErrorKind, ApiSecret, ClientConfig, DynamicsClient, GenerateRequest, RemoteStatus,
    MAX_REMOTE_WAIT,
};
use dynamics_operator::sim::{
    self, ConvergedReply, Faults, GenerationRecord, GenerationReply, Modes, ScriptedFault,
    SimConfig, SimHandle, FIXED_MODEL_URL,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "hard-mode-secret";

fn secret() -> ApiSecret {
    ApiSecret::new(SECRET.to_string())
}

fn config(generation_ms: u64) -> SimConfig {
    SimConfig {
        secret: SECRET.into(),
        generation_time: Duration::from_millis(generation_ms),
        seed: Some(11),
        ..SimConfig::default()
    }
}

async fn start_with(modes: Modes, max_concurrent: usize, generation_ms: u64) -> SimHandle {
    sim::start(SimConfig {
        modes,
        max_concurrent,
        ..config(generation_ms)
    })
    .await
    .unwrap()
}

/// A GET of the Dynamics API, bypassing the client.
async fn raw_get(sim: &SimHandle, agent: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/v1/dynamics/{agent}", sim.url()))
        .header("api-secret", SECRET)
        .send()
        .await
        .unwrap()
}

fn client_with(sim: &SimHandle, timeout: Duration, retries: u32) -> DynamicsClient {
    DynamicsClient::new(ClientConfig {
        base_url: sim.url(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: timeout,
        max_retries: retries,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..ClientConfig::default()
    })
    .unwrap()
}

fn client(sim: &SimHandle) -> DynamicsClient {
    client_with(sim, Duration::from_secs(5), 3)
}

fn req(agent: &str) -> GenerateRequest {
    GenerateRequest {
        agent_id: agent.into(),
        ..Default::default()
    }
}

/// Sets an agent's modes through the control route, as a chaos test would.
async fn put_modes(sim: &SimHandle, agent: &str, modes: Value) -> Modes {
    let r = reqwest::Client::new()
        .put(format!("{}/_sim/agents/{agent}/modes", sim.url()))
        .json(&modes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn generations(sim: &SimHandle) -> Vec<GenerationRecord> {
    let r = reqwest::get(format!("{}/_sim/generations", sim.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn status_until(c: &DynamicsClient, agent: &str, want: &str) -> Duration {
    let t = Instant::now();
    loop {
        let s = c.get(&secret(), agent).await.unwrap();
        if s.status.as_ref().map(RemoteStatus::as_str) == Some(want) {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{agent}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn invisible_job_keeps_showing_the_previous_state() {
    let sim = sim::start(config(50)).await.unwrap();
    let c = client(&sim);
    let m = put_modes(&sim, "A", json!({"invisible_ms": 400})).await;
    assert_eq!(m.invisible_ms, 400);
    let t = Instant::now();
    c.generate(&secret(), &req("A"), None).await.unwrap();
    // Charged, yet GET says the agent never had dynamics.
    let s = c.get(&secret(), "A").await.unwrap();
    assert_eq!(s.status, None, "{s:?}");
    assert!(!s.has_dynamics());
    assert_eq!(sim.stats().credits_charged, 250);
    status_until(&c, "A", "ready").await;
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    // The next generation hides behind the ready state and its model.
    let before = c.get(&secret(), "A").await.unwrap();
    c.generate(&secret(), &req("A"), None).await.unwrap();
    let during = c.get(&secret(), "A").await.unwrap();
    assert_eq!(during.status, Some(RemoteStatus::Ready));
    assert_eq!(during.model_url, before.model_url);
    // Another agent keeps the global (friendly) modes.
    c.generate(&secret(), &req("B"), None).await.unwrap();
    let b = c.get(&secret(), "B").await.unwrap();
    assert!(b.status.as_ref().is_some_and(RemoteStatus::is_in_progress));
}

#[tokio::test]
async fn fixed_model_url_across_generations() {
    let modes = Modes {
        fixed_model_url: true,
        ..Modes::default()
    };
    let sim = start_with(modes, 2, 10).await;
    let c = client(&sim);
    c.generate(&secret(), &req("A"), None).await.unwrap();
    status_until(&c, "A", "ready").await;
    let one = c.get(&secret(), "A").await.unwrap();
    c.generate(&secret(), &req("A"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let two = c.get(&secret(), "A").await.unwrap();
    assert_eq!(one.model_url.as_deref(), Some(FIXED_MODEL_URL));
    assert_eq!(one, two);
    assert_eq!(sim.agent("A").generations, 2);
}

#[tokio::test]
async fn queued_and_other_unknown_statuses_while_waiting() {
    let modes = Modes {
        waiting_status: Some("queued".into()),
        running_status: Some("IN_PROGRESS".into()),
        ..Modes::default()
    };
    let sim = start_with(modes, 1, 150).await;
    let c = client(&sim);
    c.generate(&secret(), &req("A"), None).await.unwrap();
    c.generate(&secret(), &req("B"), None).await.unwrap();
    let a = c.get(&secret(), "A").await.unwrap().status.unwrap();
    let b = c.get(&secret(), "B").await.unwrap().status.unwrap();
    assert_eq!(a, RemoteStatus::Unknown("IN_PROGRESS".into()));
    assert_eq!(b, RemoteStatus::Unknown("queued".into()));
    assert!(!a.is_terminal() && !b.is_terminal());
    status_until(&c, "B", "ready").await;
}

#[tokio::test]
async fn converged_agent_answers_data_null_until_switched_back() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    c.generate(&secret(), &req("A"), None).await.unwrap();
    status_until(&c, "A", "ready").await;
    put_modes(&sim, "A", json!({"converged_reply": "data-null"})).await;
    let raw: Value = raw_get(&sim, "A").await.json().await.unwrap();
    assert_eq!(raw, json!({"success": true, "data": null}));
    let s = c.get(&secret(), "A").await.unwrap();
    assert!(s.status.is_none() && !s.has_dynamics(), "{s:?}");
    sim.set_agent_modes(
        "A",
        Some(Modes {
            converged_reply: ConvergedReply::NoStatus,
            ..Modes::default()
        }),
    );
    let s = c.get(&secret(), "A").await.unwrap();
    assert_eq!(s.status, None);
    assert!(s.has_dynamics(), "{s:?}");
    // Switched off again: the agent is ready as before, nothing was bought.
    let r = reqwest::Client::new()
        .delete(format!("{}/_sim/agents/A/modes", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let s = c.get(&secret(), "A").await.unwrap();
    assert_eq!(s.status, Some(RemoteStatus::Ready));
    assert_eq!(sim.stats().credits_charged, 250);
}

#[tokio::test]
async fn reply_held_past_the_client_timeout_after_the_work_was_done() {
    let sim = sim::start(config(10)).await.unwrap();
    put_modes(&sim, "A", json!({"reply_delay_ms": 1500})).await;
    let c = client_with(&sim, Duration::from_millis(300), 0);
    let t = Instant::now();
    let e = c.generate(&secret(), &req("A"), None).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.kind(), ApiErrorKind::Timeout, "{e}");
    // Charged and started although the client saw only a timeout.
    assert_eq!(sim.stats().credits_charged, 250);
    let log = generations(&sim).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].reply, GenerationReply::Delayed);
    assert!(log[0].is_charged());
    // GET is not held back: the work shows.
    status_until(&c, "A", "ready").await;
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn hostile_retry_after_values_are_sent_verbatim_and_capped_by_the_client() {
    let sim = sim::start(config(10)).await.unwrap();
    let c0 = client_with(&sim, Duration::from_secs(5), 0);
    let cases: [(&str, Option<Duration>); 5] = [
        ("18446744073709551615", Some(MAX_REMOTE_WAIT)),
        ("Fri, 31 Dec 9999 23:59:59 GMT", Some(MAX_REMOTE_WAIT)),
        ("-5", None),
        ("soon", None),
        ("1e999", None),
    ];
    for (value, want) in cases {
        for fault in [ScriptedFault::RateLimited, ScriptedFault::Unavailable] {
            sim.set_faults(Faults {
                retry_after_header: Some(value.into()),
                script: [fault, fault].into(),
                ..Faults::default()
            });
            let r = raw_get(&sim, "A").await;
            assert_eq!(r.headers()["retry-after"], value);
            let e = c0.get(&secret(), "A").await.unwrap_err();
            assert_eq!(e.retry_after(), want, "{value}");
        }
    }
    // With retries the client gets through at once (capped by its max backoff).
    put_modes(
        &sim,
        "B",
        json!({"retry_after_header": "18446744073709551615"}),
    )
    .await;
    sim.set_faults(Faults {
        script: [ScriptedFault::RateLimited].into(),
        ..Faults::default()
    });
    let t = Instant::now();
    client(&sim).get(&secret(), "B").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A value that cannot be a header at all still yields a 429 with a header.
    sim.set_faults(Faults {
        retry_after_header: Some("bad\nvalue".into()),
        script: [ScriptedFault::RateLimited].into(),
        ..Faults::default()
    });
    let r = raw_get(&sim, "A").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "invalid");
}

async fn raw_generate(sim: &SimHandle, agent: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/v1/dynamics/generate", sim.url()))
        .header("api-secret", SECRET)
        .header("Idempotency-Key", key)
        .json(&json!({"agent_id": agent, "motion_prompts": ["wave"]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn idempotency_key_can_be_ignored_and_the_record_shows_every_charge() {
    let sim = sim::start(SimConfig {
        honour_idempotency_key: false,
        ..config(10)
    })
    .await
    .unwrap();
    assert_eq!(raw_generate(&sim, "A", "k1").await, 200);
    assert_eq!(raw_generate(&sim, "A", "k1").await, 200);
    assert_eq!(sim.stats().credits_charged, 500);
    // Per agent, honouring comes back.
    put_modes(&sim, "B", json!({"honour_idempotency_key": true})).await;
    assert_eq!(raw_generate(&sim, "B", "k2").await, 200);
    assert_eq!(raw_generate(&sim, "B", "k2").await, 200);
    assert_eq!(sim.stats().credits_charged, 750);
    // A dropped reply is recorded as accepted and charged.
    sim.set_faults(Faults {
        script: [ScriptedFault::Drop].into(),
        ..Faults::default()
    });
    let e = client(&sim)
        .generate(&secret(), &req("C"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Transport, "{e}");
    let log = generations(&sim).await;
    let view: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r.agent_id.as_str(),
                r.idempotency_key.as_deref(),
                r.replayed,
                r.reply,
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            ("A", Some("k1"), false, GenerationReply::Ok),
            ("A", Some("k1"), false, GenerationReply::Ok),
            ("B", Some("k2"), false, GenerationReply::Ok),
            ("B", Some("k2"), true, GenerationReply::Ok),
            ("C", None, false, GenerationReply::Dropped),
        ]
    );
    assert_eq!(
        log[0].body,
        json!({"agent_id": "A", "motion_prompts": ["wave"]})
    );
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(log.iter().filter(|r| r.is_charged()).count(), 4);
    assert_eq!(sim.stats().credits_charged, 1000);
    // Refused calls are not in it; DELETE /_sim/stats clears it.
    sim.set_credits(0);
    assert_eq!(raw_generate(&sim, "D", "k3").await, 402);
    assert_eq!(generations(&sim).await.len(), 5);
    let r = reqwest::Client::new()
        .delete(format!("{}/_sim/stats", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(generations(&sim).await.is_empty());
}

#[tokio::test]
async fn honoured_by_default_for_existing_tests() {
    let sim = sim::start(config(10)).await.unwrap();
    assert_eq!(raw_generate(&sim, "A", "k").await, 200);
    assert_eq!(raw_generate(&sim, "A", "k").await, 200);
    assert_eq!(sim.stats().credits_charged, 250);
    let log = sim.generations();
    assert_eq!(log.len(), 2);
    assert!(log[1].replayed && !log[1].is_charged());
}

#[tokio::test]
async fn global_modes_route_round_trips() {
    let sim = sim::start(config(10)).await.unwrap();
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/_sim/modes", sim.url()))
        .json(&json!({"fixed_model_url": true, "waiting_status": "queued"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: Modes = reqwest::get(format!("{}/_sim/agents/Z/modes", sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(m.fixed_model_url);
    assert_eq!(m.waiting_status.as_deref(), Some("queued"));
    let r = http
        .put(format!("{}/_sim/modes", sim.url()))
        .json(&json!({"converged_reply": "sometimes"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
}

/// Reads until EOF or error; returns how long that took.
async fn time_to_close(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed_but_slow_replies_are_not_cut() {
    let sim = sim::start(SimConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..config(10)
    })
    .await
    .unwrap();
    // A socket that never sends anything.
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let closed = time_to_close(&mut s, Duration::from_secs(3)).await;
    assert!(
        closed.is_some_and(|d| d >= Duration::from_millis(150)),
        "{closed:?}"
    );
    // A request whose reply is held longer than the idle timeout still gets it,
    // then the keep-alive connection is closed once idle.
    put_modes(&sim, "A", json!({"reply_delay_ms": 600})).await;
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let body = r#"{"agent_id":"A"}"#;
    let request = format!(
        "POST /v1/dynamics/generate HTTP/1.1\r\nhost: x\r\napi-secret: {SECRET}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while !String::from_utf8_lossy(&got).contains("processing") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("reply within 3s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the reply: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(time_to_close(&mut s, Duration::from_secs(3))
        .await
        .is_some());
}

#[tokio::test]
async fn without_an_idle_timeout_connections_stay_open() {
    let sim = sim::start(SimConfig {
        idle_timeout: None,
        ..config(10)
    })
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    assert_eq!(
        time_to_close(&mut s, Duration::from_millis(500)).await,
        None
    );
}
