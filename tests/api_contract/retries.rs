//! Retry rules: transient 500s retried within `max_retries`, generate never, 429 and 503
//! honour Retry-After up to the client's cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamics_operator::api::{ApiErrorKind, ClientConfig, DynamicsClient, Endpoint, UpdateRequest};
use dynamics_operator::sim;
use dynamics_operator::sim::{Faults, ScriptedFault};

use crate::{client, config, fast_config, gen_req, script, secret, Recorder};

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
