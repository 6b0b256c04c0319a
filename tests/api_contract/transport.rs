//! Timeouts, dropped connections and an unreachable remote: what was sent, what was charged.

use std::sync::Arc;
use std::time::Duration;

use dynamics_operator::api::{
    ApiErrorKind, ClientConfig, DynamicsClient, Endpoint, RemoteStatus, UpdateRequest,
};
use dynamics_operator::sim;
use dynamics_operator::sim::{Faults, ScriptedFault};

use crate::{assert_redacted, client, config, fast_config, gen_req, script, secret, Recorder};

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
        e.kind().disposition().bought_nothing(),
        "a generate here bought nothing"
    );
    assert_eq!(e.attempts(), 2);
    assert!(e.to_string().contains("check the network"), "{e}");
}
