//! Every endpoint against the simulator: generate, poll until terminal, the reply shapes
//! (seed and newer), update, and agent ids in paths.

use dynamics_operator::api::{
    ApiErrorKind, DynamicsConfig, DynamicsState, GenerateRequest, Regeneration, RemoteStatus,
    UpdateRequest,
};
use dynamics_operator::sim;
use dynamics_operator::sim::{Faults, ReplyShape, SimConfig, UpdateReplyShape};

use crate::{batch, client, config, gen_req, secret, wait_terminal};

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
