//! What the simulator charges for repeated generate calls: a duplicate while generating, and
//! a repeated Idempotency-Key.

use dynamics_operator::api::ApiErrorKind;
use dynamics_operator::sim;

use crate::{client, config, gen_req, secret};

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
