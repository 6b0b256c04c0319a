//! The simulator itself rather than the client's contract: its `/_sim/...` control routes over
//! HTTP, its raw error bodies, and stopping it. (Its hard modes have their own binary:
//! tests/sim_hard_modes.rs.)

use std::time::{Duration, Instant};

use dynamics_operator::api::{ApiErrorKind, ClientConfig, DynamicsClient};
use dynamics_operator::sim;
use dynamics_operator::sim::{Faults, SimStats};

use crate::{client, config, fast_config, gen_req, secret, SECRET};

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
