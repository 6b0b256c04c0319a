//! The client against the in-process simulator (and, for replies the
//! simulator never sends, against a tiny canned-reply stub): every endpoint,
//! status, error class, reply shape, retry rule and the secret's redaction.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, http::HeaderMap, response::IntoResponse, Router};
use dynamics_operator::api::{
    ApiError, ApiErrorKind, ApiSecret, BatchResult, CallObserver, ClientConfig, DynamicsClient,
    DynamicsConfig, DynamicsState, Endpoint, GenerateRequest, Regeneration, RemoteStatus,
    UpdateRequest,
};
use dynamics_operator::sim::{
    self, Faults, ReplyShape, ScriptedFault, SimConfig, SimHandle, SimStats, UpdateReplyShape,
};

const SECRET: &str = "s3cr3t-Contract-Value-42";

fn secret() -> ApiSecret {
    ApiSecret::new(format!("{SECRET}\n"))
}

fn config(generation_ms: u64) -> SimConfig {
    SimConfig {
        secret: SECRET.into(),
        generation_time: Duration::from_millis(generation_ms),
        seed: Some(7),
        ..SimConfig::default()
    }
}

fn fast_config(base_url: String) -> ClientConfig {
    ClientConfig {
        base_url,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
    }
}

fn client(sim: &SimHandle) -> DynamicsClient {
    DynamicsClient::new(fast_config(sim.url())).unwrap()
}

fn gen_req(agent: &str) -> GenerateRequest {
    GenerateRequest {
        agent_id: agent.into(),
        ..Default::default()
    }
}

fn script(faults: &[ScriptedFault]) -> Faults {
    Faults {
        script: faults.iter().copied().collect(),
        ..Faults::default()
    }
}

fn batch(name: &str, url: &str) -> UpdateRequest {
    UpdateRequest {
        dynamics: DynamicsConfig {
            enabled: Some(true),
            batch_results: Some(
                [(
                    name.to_string(),
                    BatchResult {
                        video_url: Some(url.into()),
                        status: Some("success".into()),
                    },
                )]
                .into(),
            ),
            ..Default::default()
        },
        toggle_enabled: Some(true),
    }
}

/// Polls GET until the status is terminal (bounded, so a bug fails instead of hanging).
async fn wait_terminal(c: &DynamicsClient, agent: &str) -> DynamicsState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.get(&secret(), agent).await.unwrap();
        if s.status.as_ref().is_some_and(RemoteStatus::is_terminal) {
            return s;
        }
        assert!(Instant::now() < deadline, "{agent} never finished: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(Endpoint, Option<u16>)>>);

impl CallObserver for Recorder {
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, _elapsed: Duration) {
        self.0.lock().unwrap().push((endpoint, status));
    }
}

impl Recorder {
    fn seen(&self) -> Vec<(Endpoint, Option<u16>)> {
        self.0.lock().unwrap().clone()
    }
}

/// Asserts that nothing printable about an error reveals the secret.
fn assert_redacted(e: &ApiError) {
    for text in [
        format!("{e}"),
        format!("{e:?}"),
        format!("{:#}", anyhow_of(e)),
    ] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }
}

fn anyhow_of(e: &ApiError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x} / {x:?}"));
        src = x.source();
    }
    s
}

// ---- happy paths ---------------------------------------------------------

#[tokio::test]
async fn generate_then_poll_until_ready_seed_shape() {
    let sim = sim::start(config(40)).await.unwrap();
    let c = client(&sim);
    let never = c.get(&secret(), "A1").await.unwrap();
    assert_eq!(never.agent_id, "A1");
    assert!(!never.has_dynamics(), "{never:?}");

    let reply = c.generate(&secret(), &gen_req("A1"), None).await.unwrap();
    assert_eq!(reply.status, Some(RemoteStatus::Processing));
    assert_eq!(reply.agent_id.as_deref(), Some("A1"));
    assert_eq!(
        reply.message.as_deref(),
        Some("Dynamics generation started")
    );

    let done = wait_terminal(&c, "A1").await;
    assert_eq!(done.status, Some(RemoteStatus::Ready));
    let url = done.model_url.clone().unwrap();
    assert!(url.ends_with("/models/A1/1.bin"), "{url}");
    assert!(done.gestures.is_empty(), "seed shape has no gestures");

    // A second generation yields a different model URL.
    c.generate(&secret(), &gen_req("A1"), None).await.unwrap();
    let again = wait_terminal(&c, "A1").await;
    assert_ne!(again.model_url, done.model_url);

    let st = sim.stats();
    assert_eq!(st.generations_started, 2);
    assert_eq!(st.credits_charged, 500);
    assert_eq!(st.credits_remaining, 1_000_000 - 500);
    assert_eq!(st.count("generate", Some("A1"), Some(200)), 2);
    assert!(st.count("get", Some("A1"), Some(200)) >= 3);
    assert_eq!(st.overlapping_generations, 0);
}

#[tokio::test]
async fn in_progress_statuses_and_the_concurrency_limit() {
    // Long generations: nothing finishes during the test.
    let sim = sim::start(config(60_000)).await.unwrap();
    let c = client(&sim);
    for a in ["a", "b", "c"] {
        c.generate(&secret(), &gen_req(a), None).await.unwrap();
    }
    let status = |s: DynamicsState| s.status.unwrap();
    assert_eq!(
        status(c.get(&secret(), "a").await.unwrap()),
        RemoteStatus::Generating
    );
    assert_eq!(
        status(c.get(&secret(), "b").await.unwrap()),
        RemoteStatus::Generating
    );
    let third = c.get(&secret(), "c").await.unwrap();
    assert_eq!(third.status, Some(RemoteStatus::Processing));
    assert!(third.status.unwrap().is_in_progress());
    assert_eq!(third.model_url, None);
    assert_eq!(sim.agent("c").status.as_deref(), Some("processing"));
}

#[tokio::test]
async fn unlimited_concurrency_runs_everything() {
    let sim = sim::start(SimConfig {
        max_concurrent: 0,
        ..config(60_000)
    })
    .await
    .unwrap();
    let c = client(&sim);
    for a in ["a", "b", "c", "d"] {
        c.generate(&secret(), &gen_req(a), None).await.unwrap();
    }
    let d = c.get(&secret(), "d").await.unwrap();
    assert_eq!(d.status, Some(RemoteStatus::Generating));
}

#[tokio::test]
async fn failed_generation_reports_its_error() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    sim.fail_next("F");
    c.generate(&secret(), &gen_req("F"), None).await.unwrap();
    let s = wait_terminal(&c, "F").await;
    assert_eq!(s.status, Some(RemoteStatus::Failed));
    assert!(s.error_message.as_deref().unwrap().contains("failed"));
    assert_eq!(s.model_url, None);
    // Only the next one fails.
    c.generate(&secret(), &gen_req("F"), None).await.unwrap();
    assert_eq!(
        wait_terminal(&c, "F").await.status,
        Some(RemoteStatus::Ready)
    );
}

#[tokio::test]
async fn fail_generation_rate_fails_every_generation_at_one() {
    let sim = sim::start(config(10)).await.unwrap();
    sim.set_faults(Faults {
        fail_generation_rate: 1.0,
        ..Faults::default()
    });
    let c = client(&sim);
    c.generate(&secret(), &gen_req("R"), None).await.unwrap();
    assert_eq!(
        wait_terminal(&c, "R").await.status,
        Some(RemoteStatus::Failed)
    );
}

#[tokio::test]
async fn newer_shape_reports_url_and_gestures() {
    let sim = sim::start(SimConfig {
        reply_shape: ReplyShape::Newer,
        ..config(20)
    })
    .await
    .unwrap();
    let c = client(&sim);
    let req = GenerateRequest {
        motion_prompts: Some(vec!["wave".into(), "idle".into()]),
        duration: Some(3),
        model: Some("quality".into()),
        image_url: Some("https://example.com/a.jpg".into()),
        ..gen_req("N")
    };
    c.generate(&secret(), &req, None).await.unwrap();
    let s = wait_terminal(&c, "N").await;
    assert!(s.model_url.as_deref().unwrap().ends_with("/N/1.bin"));
    assert_eq!(s.gestures.keys().collect::<Vec<_>>(), ["idle", "wave"]);
    // The stored batch_results' videos overlay the generated ones.
    c.update(&secret(), "N", &batch("wave", "https://cdn.example/w.mp4"))
        .await
        .unwrap();
    let s = wait_terminal(&c, "N").await;
    assert_eq!(s.gestures["wave"], "https://cdn.example/w.mp4");
    assert!(s.gestures["idle"].starts_with("https://sim.bithuman.local/"));
    // The simulator received the request the client built.
    let rec = sim.agent("N");
    let sent = rec.last_generate_request.unwrap();
    assert_eq!(sent["motion_prompts"], serde_json::json!(["wave", "idle"]));
    assert_eq!(sent["duration"], 3);
    assert!(sent.get("agent_id").is_some());
}

// ---- update ----------------------------------------------------------------

#[tokio::test]
async fn update_data_shape_and_stored_block() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    let req = UpdateRequest {
        dynamics: DynamicsConfig {
            enabled: Some(false),
            ..Default::default()
        },
        toggle_enabled: Some(true),
    };
    let r = c.update(&secret(), "U", &req).await.unwrap();
    assert_eq!(r.agent_id.as_deref(), Some("U"));
    assert!(r.updated_at.is_some());
    assert_eq!(r.regeneration, None);
    assert_eq!(r.message.as_deref(), Some("Dynamics updated successfully"));
    let rec = sim.agent("U");
    assert_eq!(rec.enabled, Some(false));
    assert_eq!(rec.toggle_enabled, Some(true));
    assert_eq!(sim.stats().count("update", Some("U"), Some(200)), 1);
}

#[tokio::test]
async fn update_top_level_shape() {
    let sim = sim::start(SimConfig {
        update_reply_shape: UpdateReplyShape::Regeneration,
        ..config(10)
    })
    .await
    .unwrap();
    let c = client(&sim);
    let r = c
        .update(&secret(), "T", &UpdateRequest::default())
        .await
        .unwrap();
    assert_eq!(r.agent_id.as_deref(), Some("T"));
    assert!(r.updated_at.is_some());
    assert_eq!(r.regeneration, None);
}

#[tokio::test]
async fn batch_results_change_regenerates_without_charge() {
    let sim = sim::start(config(30)).await.unwrap();
    let c = client(&sim);
    c.generate(&secret(), &gen_req("G"), None).await.unwrap();
    let first = wait_terminal(&c, "G").await;

    let req = batch("wave", "https://cdn.example/wave.mp4");
    let r = c.update(&secret(), "G", &req).await.unwrap();
    assert_eq!(r.regeneration, Some(Regeneration::Started));
    assert_eq!(r.agent_id.as_deref(), Some("G"));
    let during = c.get(&secret(), "G").await.unwrap();
    assert!(
        during.status.as_ref().unwrap().is_in_progress()
            || during.status == Some(RemoteStatus::Ready),
        "{during:?}"
    );
    let after = wait_terminal(&c, "G").await;
    assert_eq!(after.status, Some(RemoteStatus::Ready));
    assert_ne!(after.model_url, first.model_url);

    // Same batch_results again: a plain update.
    let r = c.update(&secret(), "G", &req).await.unwrap();
    assert_eq!(r.regeneration, None);

    // Refused regeneration surfaces as Failed with its error.
    sim.refuse_next_regeneration("G");
    let r = c
        .update(&secret(), "G", &batch("nod", "https://cdn.example/nod.mp4"))
        .await
        .unwrap();
    match r.regeneration {
        Some(Regeneration::Failed { error: Some(e) }) => assert!(!e.is_empty()),
        other => panic!("expected failed regeneration, got {other:?}"),
    }

    let st = sim.stats();
    assert_eq!(st.generations_started, 1);
    assert_eq!(st.regenerations_started, 1);
    assert_eq!(st.credits_charged, 250);
    assert_eq!(sim.agent("G").charged_generations, 1);
    assert_eq!(sim.agent("G").generations, 2);
}

// ---- errors ------------------------------------------------------------------

#[tokio::test]
async fn invalid_requests_are_400_with_details_and_not_retried() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    let cases = [
        (
            GenerateRequest {
                duration: Some(11),
                ..gen_req("V")
            },
            "duration",
        ),
        (
            GenerateRequest {
                image_url: Some("ftp://example.com/a.jpg".into()),
                ..gen_req("V")
            },
            "image_url",
        ),
        (gen_req(""), "agent_id"),
    ];
    for (req, field) in cases {
        let e = c.generate(&secret(), &req, None).await.unwrap_err();
        assert_eq!(e.kind(), ApiErrorKind::InvalidRequest);
        assert_eq!(e.http_status(), Some(400));
        assert!(!e.is_retryable());
        assert_eq!(e.reason(), "InvalidRequest");
        assert!(e
            .remote()
            .unwrap()
            .details
            .as_deref()
            .unwrap()
            .contains(field));
        assert!(e.to_string().contains(field), "{e}");
        assert_eq!(e.endpoint(), Endpoint::Generate);
        assert_redacted(&e);
    }
    assert_eq!(sim.stats().total("generate"), 3);
    assert_eq!(sim.stats().generations_started, 0);

    // A 400 on PUT is not retried either.
    let bad = UpdateRequest {
        dynamics: batch("wave", "file:///etc/passwd").dynamics,
        toggle_enabled: None,
    };
    let e = c.update(&secret(), "V", &bad).await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::InvalidRequest);
    assert_eq!(e.attempts(), 1);
    assert_eq!(sim.stats().total("update"), 1);
}

#[tokio::test]
async fn wrong_or_empty_secret_is_unauthorized() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    let wrong = ApiSecret::new("wrong-secret-value-xyz");
    for e in [
        c.get(&wrong, "A").await.unwrap_err(),
        c.generate(&wrong, &gen_req("A"), None).await.unwrap_err(),
        c.update(&wrong, "A", &UpdateRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ApiErrorKind::Unauthorized);
        assert_eq!(e.http_status(), Some(401));
        assert_eq!(e.attempts(), 1, "401 is not retried");
        assert!(e.to_string().contains("check the api-secret"), "{e}");
        assert!(!e.to_string().contains("wrong-secret-value-xyz"));
        assert_eq!(e.remote().unwrap().code.as_deref(), Some("UNAUTHORIZED"));
    }
    assert_eq!(sim.stats().count("get", Some("A"), Some(401)), 1);
    // An empty secret fails before any call is made.
    let e = c.get(&ApiSecret::new(" \n"), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Unauthorized);
    assert_eq!(e.http_status(), None);
    assert_eq!(sim.stats().total("get"), 1);
}

#[tokio::test]
async fn insufficient_credits_is_402_and_charges_nothing() {
    let sim = sim::start(SimConfig {
        credits: 500,
        ..config(10)
    })
    .await
    .unwrap();
    let c = client(&sim);
    c.generate(&secret(), &gen_req("a"), None).await.unwrap();
    c.generate(&secret(), &gen_req("b"), None).await.unwrap();
    let e = c
        .generate(&secret(), &gen_req("c"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::InsufficientCredits);
    assert_eq!(e.http_status(), Some(402));
    assert_eq!(e.reason(), "InsufficientCredits");
    assert!(
        e.to_string()
            .contains("add credits to the bitHuman account"),
        "{e}"
    );
    let st = sim.stats();
    assert_eq!(
        (
            st.credits_remaining,
            st.credits_charged,
            st.generations_started
        ),
        (0, 500, 2)
    );
    // Topping up makes it work again.
    sim.set_credits(250);
    c.generate(&secret(), &gen_req("c"), None).await.unwrap();
    assert_eq!(sim.stats().credits_remaining, 0);
}

#[tokio::test]
async fn unknown_agent_is_404_on_every_endpoint() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    sim.mark_unknown("X");
    let errors = [
        c.get(&secret(), "X").await.unwrap_err(),
        c.generate(&secret(), &gen_req("X"), None)
            .await
            .unwrap_err(),
        c.update(&secret(), "X", &UpdateRequest::default())
            .await
            .unwrap_err(),
    ];
    for e in &errors {
        assert_eq!(e.kind(), ApiErrorKind::NotFound);
        assert_eq!(e.reason(), "AgentNotFound");
        assert_eq!(e.agent_id(), Some("X"));
        assert!(e.to_string().contains("check spec.agentId"), "{e}");
    }
    assert_eq!(sim.stats().generations_started, 0);
    sim.mark_known("X");
    assert!(c.get(&secret(), "X").await.is_ok());
}

#[tokio::test]
async fn get_is_retried_through_transient_500s() {
    let sim = sim::start(config(10)).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let c = client(&sim).with_observer(rec.clone());
    sim.set_faults(script(&[ScriptedFault::Internal, ScriptedFault::Internal]));
    let s = c.get(&secret(), "A").await.unwrap();
    assert_eq!(s.agent_id, "A");
    let st = sim.stats();
    assert_eq!(st.count("get", Some("A"), Some(500)), 2);
    assert_eq!(st.count("get", Some("A"), Some(200)), 1);
    assert_eq!(st.injected_faults, 2);
    assert_eq!(
        rec.seen(),
        [
            (Endpoint::Get, Some(500)),
            (Endpoint::Get, Some(500)),
            (Endpoint::Get, Some(200))
        ]
    );
}

#[tokio::test]
async fn retries_are_bounded_by_max_retries() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = DynamicsClient::new(ClientConfig {
        max_retries: 1,
        ..fast_config(sim.url())
    })
    .unwrap();
    sim.set_faults(Faults {
        fail_rate_500: 1.0,
        ..Faults::default()
    });
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Server);
    assert_eq!(e.reason(), "RemoteError");
    assert_eq!(e.http_status(), Some(500));
    assert_eq!(e.attempts(), 2);
    assert!(e.is_retryable());
    assert_eq!(e.remote().unwrap().code.as_deref(), Some("INTERNAL_ERROR"));
    assert_eq!(sim.stats().total("get"), 2);
    let e = c
        .update(&secret(), "A", &UpdateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.attempts(), 2);
    assert_eq!(sim.stats().total("update"), 2);
}

#[tokio::test]
async fn generate_is_never_retried() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    for fault in [
        ScriptedFault::Internal,
        ScriptedFault::Unavailable,
        ScriptedFault::RateLimited,
    ] {
        sim.reset_stats();
        sim.set_faults(script(&[fault]));
        let e = c
            .generate(&secret(), &gen_req("P"), None)
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{fault:?}");
        assert_eq!(e.attempts(), 1);
        assert_eq!(sim.stats().total("generate"), 1, "{fault:?}");
        assert_eq!(sim.stats().generations_started, 0);
    }
}

#[tokio::test]
async fn rate_limit_retry_after_is_honoured() {
    let sim = sim::start(config(10)).await.unwrap();
    sim.set_faults(Faults {
        retry_after_secs: 1,
        script: [ScriptedFault::RateLimited].into(),
        ..Faults::default()
    });
    // max_backoff above Retry-After, so the client must wait the full second.
    let c = DynamicsClient::new(ClientConfig {
        max_backoff: Duration::from_secs(3),
        ..fast_config(sim.url())
    })
    .unwrap();
    let t = Instant::now();
    c.get(&secret(), "A").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(sim.stats().count("get", Some("A"), Some(429)), 1);

    // Without retries the error carries Retry-After and says so.
    let c0 = DynamicsClient::new(ClientConfig {
        max_retries: 0,
        ..fast_config(sim.url())
    })
    .unwrap();
    sim.set_faults(Faults {
        retry_after_secs: 7,
        script: [ScriptedFault::RateLimited].into(),
        ..Faults::default()
    });
    let e = c0.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::RateLimited);
    assert_eq!(e.http_status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert!(e.to_string().contains("retry after 7s"), "{e}");
}

#[tokio::test]
async fn retry_after_is_capped_at_max_backoff() {
    let sim = sim::start(config(10)).await.unwrap();
    sim.set_faults(Faults {
        retry_after_secs: 30,
        script: [ScriptedFault::Unavailable, ScriptedFault::RateLimited].into(),
        ..Faults::default()
    });
    let c = client(&sim); // max_backoff 50ms
    let t = Instant::now();
    c.get(&secret(), "A").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(sim.stats().count("get", Some("A"), Some(503)), 1);
    assert_eq!(sim.stats().count("get", Some("A"), Some(429)), 1);
}

#[tokio::test]
async fn unavailable_is_503_with_retry_after() {
    let sim = sim::start(config(10)).await.unwrap();
    sim.set_faults(Faults {
        fail_rate_503: 1.0,
        retry_after_secs: 2,
        ..Faults::default()
    });
    let c = DynamicsClient::new(ClientConfig {
        max_retries: 2,
        ..fast_config(sim.url())
    })
    .unwrap();
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Unavailable);
    assert_eq!(e.reason(), "RemoteUnavailable");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(e.attempts(), 3);
    assert!(e.to_string().contains("retry after 2s"), "{e}");
    // Switching faults off at runtime heals it.
    sim.set_faults(Faults::default());
    assert!(c.get(&secret(), "A").await.is_ok());
}

#[tokio::test]
async fn latency_beyond_the_request_timeout_is_a_timeout() {
    let sim = sim::start(config(10)).await.unwrap();
    sim.set_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    });
    let rec = Arc::new(Recorder::default());
    let c = DynamicsClient::new(ClientConfig {
        request_timeout: Duration::from_millis(100),
        max_retries: 1,
        ..fast_config(sim.url())
    })
    .unwrap()
    .with_observer(rec.clone());
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Timeout);
    assert_eq!(e.http_status(), None);
    assert_eq!(e.attempts(), 2);
    assert_eq!(rec.seen(), [(Endpoint::Get, None), (Endpoint::Get, None)]);
    let e = c
        .generate(&secret(), &gen_req("A"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Timeout);
    assert_eq!(e.attempts(), 1);
    assert!(e.to_string().contains("check with GET"), "{e}");
    assert_redacted(&e);
}

#[tokio::test]
async fn dropped_connection_after_generate_charged_exactly_once() {
    let sim = sim::start(config(60_000)).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let c = client(&sim).with_observer(rec.clone());
    sim.set_faults(script(&[ScriptedFault::Drop]));
    let e = c
        .generate(&secret(), &gen_req("D"), Some("key-D-1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Transport, "{e}");
    assert_eq!(e.reason(), "TransportError");
    assert_eq!(e.attempts(), 1);
    assert_eq!(rec.seen(), [(Endpoint::Generate, None)]);
    assert_redacted(&e);

    let st = sim.stats();
    assert_eq!(st.generations_started, 1);
    assert_eq!(st.credits_charged, 250);
    assert_eq!(st.dropped_connections, 1);
    assert_eq!(st.count("generate", Some("D"), Some(200)), 1);

    // GET reveals that the POST landed.
    let s = c.get(&secret(), "D").await.unwrap();
    assert!(s.status.unwrap().is_in_progress());

    // Re-sending with the same Idempotency-Key replays the reply for free.
    let r = c
        .generate(&secret(), &gen_req("D"), Some("key-D-1"))
        .await
        .unwrap();
    assert_eq!(r.status, Some(RemoteStatus::Processing));
    let st = sim.stats();
    assert_eq!(st.generations_started, 1);
    assert_eq!(st.credits_charged, 250);
    assert_eq!(st.idempotent_replays, 1);
    assert_eq!(st.overlapping_generations, 0);
}

#[tokio::test]
async fn dropped_connection_on_put_is_retried() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    sim.set_faults(script(&[ScriptedFault::Drop]));
    let r = c
        .update(&secret(), "Q", &UpdateRequest::default())
        .await
        .unwrap();
    assert_eq!(r.agent_id.as_deref(), Some("Q"));
    let st = sim.stats();
    assert_eq!(st.dropped_connections, 1);
    assert_eq!(st.count("update", Some("Q"), Some(200)), 2);
}

#[tokio::test]
async fn random_drops_are_transport_errors() {
    let sim = sim::start(config(10)).await.unwrap();
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let c = DynamicsClient::new(ClientConfig {
        max_retries: 1,
        ..fast_config(sim.url())
    })
    .unwrap();
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Transport);
    assert_eq!(sim.stats().dropped_connections, 2);
}

#[tokio::test]
async fn duplicate_generate_while_generating_is_charged_and_visible() {
    let sim = sim::start(config(60_000)).await.unwrap();
    let c = client(&sim);
    c.generate(&secret(), &gen_req("W"), None).await.unwrap();
    c.generate(&secret(), &gen_req("W"), None).await.unwrap();
    let st = sim.stats();
    assert_eq!(st.generations_started, 2);
    assert_eq!(st.credits_charged, 500);
    assert_eq!(st.overlapping_generations, 1);
    assert_eq!(sim.agent("W").charged_generations, 2);
}

#[tokio::test]
async fn idempotency_key_same_reply_no_second_charge() {
    let sim = sim::start(config(60_000)).await.unwrap();
    let c = client(&sim);
    let a = c
        .generate(&secret(), &gen_req("I"), Some("k1"))
        .await
        .unwrap();
    let b = c
        .generate(&secret(), &gen_req("I"), Some("k1"))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(sim.stats().credits_charged, 250);
    assert_eq!(sim.stats().idempotent_replays, 1);
    c.generate(&secret(), &gen_req("I"), Some("k2"))
        .await
        .unwrap();
    assert_eq!(sim.stats().credits_charged, 500);
    let e = c
        .generate(&secret(), &gen_req("I"), Some("bad\nkey"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::InvalidRequest);
}

#[tokio::test]
async fn agent_ids_are_url_encoded() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    let id = "team a/agent?1#x";
    c.generate(&secret(), &gen_req(id), None).await.unwrap();
    let s = wait_terminal(&c, id).await;
    assert_eq!(s.agent_id, id);
    c.update(&secret(), id, &UpdateRequest::default())
        .await
        .unwrap();
    assert_eq!(
        sim.stats().count("get", Some(id), Some(200)),
        sim.stats().total("get")
    );
    for bad in ["", "..", "."] {
        let e = c.get(&secret(), bad).await.unwrap_err();
        assert_eq!(e.kind(), ApiErrorKind::InvalidRequest, "{bad:?}");
    }
}

#[tokio::test]
async fn unreachable_remote_is_a_connect_failure_that_sent_nothing() {
    // Bind then drop to get a port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = DynamicsClient::new(ClientConfig {
        max_retries: 1,
        ..fast_config(format!("http://127.0.0.1:{port}"))
    })
    .unwrap();
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Connect);
    assert!(
        e.kind().refused_before_processing(),
        "a generate here bought nothing"
    );
    assert_eq!(e.attempts(), 2);
    assert!(e.to_string().contains("check the network"), "{e}");
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_simulator() {
    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    c.get(&secret(), "A").await.unwrap();
    sim.shutdown().await;
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert!(
        matches!(e.kind(), ApiErrorKind::Connect | ApiErrorKind::Transport),
        "{e}"
    );

    let sim2 = sim::start(config(10)).await.unwrap();
    let url = sim2.url();
    drop(sim2);
    let c2 = DynamicsClient::new(ClientConfig {
        max_retries: 0,
        ..fast_config(url)
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c2.get(&secret(), "A").await {
            Err(e) if matches!(e.kind(), ApiErrorKind::Connect | ApiErrorKind::Transport) => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("simulator still answering after drop: {other:?}"),
        }
    }
}

// ---- the /_sim control surface over HTTP -------------------------------------

#[tokio::test]
async fn control_endpoints_over_http() {
    let sim = sim::start(config(60_000)).await.unwrap();
    let c = client(&sim);
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}{p}", sim.url());

    c.generate(&secret(), &gen_req("H"), None).await.unwrap();
    let stats: SimStats = http
        .get(u("/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, sim.stats());
    assert_eq!(stats.count("generate", Some("H"), Some(200)), 1);

    let r = http.delete(u("/_sim/stats")).send().await.unwrap();
    assert!(r.status().is_success());
    let stats = sim.stats();
    assert_eq!((stats.total("generate"), stats.credits_charged), (0, 0));
    assert_eq!(
        stats.credits_remaining,
        1_000_000 - 250,
        "reset keeps the balance"
    );

    let r = http
        .put(u("/_sim/credits"))
        .json(&serde_json::json!({"credits": 100}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let e = c
        .generate(&secret(), &gen_req("H"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::InsufficientCredits);

    let r = http
        .put(u("/_sim/faults"))
        .json(&serde_json::json!({"script": ["503"], "retry_after_secs": 4}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(sim.faults().retry_after_secs, 4);
    let c0 = DynamicsClient::new(ClientConfig {
        max_retries: 0,
        ..fast_config(sim.url())
    })
    .unwrap();
    let e = c0.get(&secret(), "H").await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));

    for (action, check) in [("unknown", false), ("known", true)] {
        let r = http
            .post(u(&format!("/_sim/agents/H/{action}")))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        assert_eq!(c.get(&secret(), "H").await.is_ok(), check, "{action}");
    }
    let r = http
        .post(u("/_sim/agents/H/fail-next"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let rec: sim::SimAgent = http
        .get(u("/_sim/agents/H"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(rec.fail_next);
    assert_eq!(rec.status.as_deref(), Some("generating"));
    assert_eq!(rec.charged_generations, 1);
    let r = http.post(u("/_sim/agents/H/explode")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Control routes do not count as API calls.
    assert_eq!(sim.stats().total("get"), 3);
}

#[tokio::test]
async fn raw_http_error_bodies_from_the_simulator() {
    let sim = sim::start(config(10)).await.unwrap();
    let http = reqwest::Client::new();
    let gen = |body: &'static str, secret: Option<&'static str>| {
        let mut rb = http
            .post(format!("{}/v1/dynamics/generate", sim.url()))
            .body(body);
        if let Some(s) = secret {
            rb = rb.header("api-secret", s);
        }
        rb.send()
    };
    let r = gen(r#"{"agent_id":"a"}"#, None).await.unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["details"], "missing api-secret header");
    let r = gen("{not json", Some(SECRET)).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "INVALID_REQUEST");
    assert!(v["details"].as_str().unwrap().contains("JSON"));
    let r = gen(r#"{"agent_id":"a","duration":"5"}"#, Some(SECRET))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Injected faults apply to /v1 only, never to /_sim.
    sim.set_faults(Faults {
        fail_rate_500: 1.0,
        ..Faults::default()
    });
    let r = http
        .get(format!("{}/_sim/stats", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---- replies the simulator never sends: a canned stub ------------------------

type Canned = (u16, Vec<(&'static str, String)>, String);
/// method, raw path, headers, body
type Seen = (String, String, HeaderMap, String);

#[derive(Clone, Default)]
struct Stub {
    replies: Arc<Mutex<VecDeque<Canned>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn stub_handler(
    State(st): State<Stub>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    st.seen.lock().unwrap().push((
        parts.method.to_string(),
        parts.uri.path().to_string(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ));
    let (status, headers, body) =
        st.replies
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or((200, vec![], "{}".into()));
    let mut resp = (axum::http::StatusCode::from_u16(status).unwrap(), body).into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

async fn stub(replies: Vec<Canned>) -> (Stub, String) {
    let st = Stub::default();
    st.replies.lock().unwrap().extend(replies);
    let app = Router::new().fallback(stub_handler).with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (st, url)
}

fn stub_client(url: String, retries: u32) -> DynamicsClient {
    DynamicsClient::new(ClientConfig {
        max_retries: retries,
        ..fast_config(url)
    })
    .unwrap()
}

#[tokio::test]
async fn requests_carry_secret_key_content_type_and_encoded_paths() {
    let (st, url) = stub(vec![
        (
            200,
            vec![],
            r#"{"success":true,"status":"processing"}"#.into(),
        ),
        (200, vec![], r#"{"success":true,"data":{}}"#.into()),
        (200, vec![], r#"{"success":true}"#.into()),
    ])
    .await;
    let c = stub_client(format!("{url}/base/"), 0);
    c.generate(&secret(), &gen_req("a b/c"), Some("idem-1"))
        .await
        .unwrap();
    c.get(&secret(), "a b/c").await.unwrap();
    c.update(&secret(), "a b/c", &UpdateRequest::default())
        .await
        .unwrap();
    let seen = st.seen.lock().unwrap().clone();
    let (m, p, h, b) = &seen[0];
    assert_eq!(
        (m.as_str(), p.as_str()),
        ("POST", "/base/v1/dynamics/generate")
    );
    assert_eq!(h["api-secret"], SECRET, "sent trimmed");
    assert_eq!(h["idempotency-key"], "idem-1");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(b, r#"{"agent_id":"a b/c"}"#);
    let (m, p, h, _) = &seen[1];
    assert_eq!(
        (m.as_str(), p.as_str()),
        ("GET", "/base/v1/dynamics/a%20b%2Fc")
    );
    assert_eq!(h["api-secret"], SECRET);
    assert!(h.get("idempotency-key").is_none());
    let (m, p, _, b) = &seen[2];
    assert_eq!(
        (m.as_str(), p.as_str()),
        ("PUT", "/base/v1/dynamics/a%20b%2Fc")
    );
    assert_eq!(b, r#"{"dynamics":{}}"#);
}

#[tokio::test]
async fn unknown_remote_status_is_kept_and_not_ready() {
    let (_st, url) = stub(vec![(
        200,
        vec![],
        r#"{"success":true,"data":{"agent_id":"A","dynamics":"https://m/1.bin","status":"Queued_v2"}}"#.into(),
    )])
    .await;
    let s = stub_client(url, 0).get(&secret(), "A").await.unwrap();
    let status = s.status.unwrap();
    assert_eq!(status, RemoteStatus::Unknown("Queued_v2".into()));
    assert!(!status.is_terminal() && status.is_in_progress());
    assert_eq!(serde_json::to_string(&status).unwrap(), "\"Queued_v2\"");
}

#[tokio::test]
async fn completed_status_is_in_progress() {
    let (_st, url) = stub(vec![(
        200,
        vec![],
        r#"{"data":{"status":"COMPLETED"}}"#.into(),
    )])
    .await;
    let s = stub_client(url, 0).get(&secret(), "A").await.unwrap();
    assert_eq!(s.status, Some(RemoteStatus::Completed));
    assert!(s.status.unwrap().is_in_progress());
}

#[tokio::test]
async fn unreadable_success_replies_are_decode_and_not_retried() {
    let (st, url) = stub(vec![
        (200, vec![], "<html>hello</html>".into()),
        (200, vec![], r#"{"success":true}"#.into()),
        (200, vec![], "".into()),
    ])
    .await;
    let c = stub_client(url, 3);
    for _ in 0..2 {
        let e = c.get(&secret(), "A").await.unwrap_err();
        assert_eq!(e.kind(), ApiErrorKind::Decode);
        assert_eq!(e.reason(), "BadReply");
        assert_eq!(e.http_status(), Some(200));
        assert_eq!(e.attempts(), 1);
    }
    let e = c
        .generate(&secret(), &gen_req("A"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Decode);
    assert_eq!(st.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn success_false_with_200_is_an_error() {
    let (_st, url) = stub(vec![
        (
            200,
            vec![],
            r#"{"success":false,"error":"nope","code":"INSUFFICIENT_CREDITS","details":"0 left"}"#
                .into(),
        ),
        (200, vec![], r#"{"success":false,"error":"mystery"}"#.into()),
    ])
    .await;
    let c = stub_client(url, 0);
    let e = c
        .generate(&secret(), &gen_req("A"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::InsufficientCredits);
    assert_eq!(e.remote().unwrap().details.as_deref(), Some("0 left"));
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Server);
    assert!(e.to_string().contains("mystery"), "{e}");
}

#[tokio::test]
async fn error_bodies_may_be_absent_or_not_json() {
    let (_st, url) = stub(vec![
        (500, vec![], "<html>bad gateway</html>".into()),
        (403, vec![], "".into()),
        (418, vec![], "teapot".into()),
        (
            429,
            vec![("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT".into())],
            "".into(),
        ),
        (
            503,
            vec![("retry-after", "garbage".into())],
            r#"{"error":"busy"}"#.into(),
        ),
    ])
    .await;
    let c = stub_client(url, 0);
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(
        (e.kind(), e.http_status()),
        (ApiErrorKind::Server, Some(500))
    );
    assert!(e.remote().is_none());
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(
        (e.kind(), e.http_status()),
        (ApiErrorKind::Unauthorized, Some(403))
    );
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(
        (e.kind(), e.http_status()),
        (ApiErrorKind::Server, Some(418))
    );
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::ZERO), "a past HTTP date");
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::Unavailable);
    assert_eq!(e.retry_after(), None);
    assert_eq!(e.remote().unwrap().error.as_deref(), Some("busy"));
}

#[tokio::test]
async fn redirects_are_not_followed_so_the_secret_stays_home() {
    let (other, other_url) = stub(vec![]).await;
    let (_st, url) = stub(vec![(
        307,
        vec![("location", format!("{other_url}/v1/dynamics/A"))],
        "".into(),
    )])
    .await;
    let e = stub_client(url, 0).get(&secret(), "A").await.unwrap_err();
    assert_eq!(
        (e.kind(), e.http_status()),
        (ApiErrorKind::Server, Some(307))
    );
    assert!(other.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn remote_text_echoing_the_secret_is_redacted() {
    let (_st, url) = stub(vec![
        (
            400,
            vec![],
            format!(
                r#"{{"error":"bad secret {SECRET}","code":"{SECRET}","details":"got {SECRET}"}}"#
            ),
        ),
        (
            200,
            vec![],
            format!(r#"{{"success":false,"error":"{SECRET}"}}"#),
        ),
    ])
    .await;
    let c = stub_client(url, 0);
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_eq!(e.kind(), ApiErrorKind::InvalidRequest);
    assert!(e
        .remote()
        .unwrap()
        .details
        .as_deref()
        .unwrap()
        .contains("***"));
    assert_redacted(&e);
    let e = c.get(&secret(), "A").await.unwrap_err();
    assert_redacted(&e);
}

// ---- the secret never shows --------------------------------------------------

/// Everything any test in this binary logs, at TRACE, once installed.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    use std::sync::OnceLock;
    use tracing_subscriber::fmt::MakeWriter;

    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();

    struct Sink(&'static Mutex<Vec<u8>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct MakeSink(&'static Mutex<Vec<u8>>);
    impl<'a> MakeWriter<'a> for MakeSink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            Sink(self.0)
        }
    }

    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        // Process-wide rather than `set_default`: a thread-local subscriber
        // races with other test threads over tracing's cached callsite interest.
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(MakeSink(buf))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        buf
    })
}

#[tokio::test]
async fn secret_never_appears_in_debug_display_errors_or_logs() {
    let logs = captured_logs();

    let s = secret();
    assert_eq!(format!("{s:?}"), "ApiSecret(***)");
    assert_eq!(format!("{s}"), "***");

    let sim = sim::start(config(10)).await.unwrap();
    let c = client(&sim);
    assert!(!format!("{c:?}").contains(SECRET));

    let mut errors = Vec::new();
    c.generate(&s, &gen_req("L"), Some("k")).await.unwrap();
    c.get(&s, "L").await.unwrap();
    c.update(&s, "L", &batch("wave", "https://v/w.mp4"))
        .await
        .unwrap();
    errors.push(c.get(&ApiSecret::new("wrong"), "L").await.unwrap_err());
    errors.push(
        c.generate(
            &s,
            &GenerateRequest {
                duration: Some(99),
                ..gen_req("L")
            },
            None,
        )
        .await
        .unwrap_err(),
    );
    sim.mark_unknown("Z");
    errors.push(c.get(&s, "Z").await.unwrap_err());
    sim.set_faults(script(&[
        ScriptedFault::Internal,
        ScriptedFault::Internal,
        ScriptedFault::Internal,
        ScriptedFault::Internal,
    ]));
    errors.push(c.get(&s, "L").await.unwrap_err());
    sim.set_faults(script(&[ScriptedFault::RateLimited]));
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    sim.set_faults(script(&[ScriptedFault::Unavailable]));
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    sim.set_faults(script(&[ScriptedFault::Drop]));
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    sim.set_faults(Faults::default());
    sim.set_credits(0);
    errors.push(c.generate(&s, &gen_req("L"), None).await.unwrap_err());
    let slow = DynamicsClient::new(ClientConfig {
        request_timeout: Duration::from_millis(50),
        max_retries: 0,
        ..fast_config(sim.url())
    })
    .unwrap();
    sim.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    errors.push(slow.get(&s, "L").await.unwrap_err());
    sim.set_faults(Faults::default());

    let kinds: std::collections::BTreeSet<&str> = errors.iter().map(|e| e.reason()).collect();
    assert_eq!(kinds.len(), 9, "{kinds:?}");
    for e in &errors {
        assert_redacted(e);
    }
    sim.shutdown().await;

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("Dynamics API call"), "client logs captured");
    assert!(logs.contains("sim call"), "simulator logs captured");
    assert!(logs.contains("retrying Dynamics API call"));
    assert!(!logs.contains(SECRET), "secret in logs");
}
