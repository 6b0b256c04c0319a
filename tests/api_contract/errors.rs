//! Error classes: 400, 401, 402 and 404, with their details, never retried.

use dynamics_operator::api::{ApiErrorKind, ApiSecret, Endpoint, GenerateRequest, UpdateRequest};
use dynamics_operator::sim;
use dynamics_operator::sim::SimConfig;

use crate::{assert_redacted, batch, client, config, gen_req, secret};

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
