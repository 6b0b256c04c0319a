//! Every JSON example of the API document (tests/fixtures/api, see its
//! README) parses into the client's types, unknown fields are ignored, and the
//! simulator accepts the documented requests and answers in the documented shapes.

use std::collections::BTreeSet;

use dynamics_operator::api::{
    parse_generate, parse_state, parse_update, ApiError, ApiErrorKind, BatchResult, Endpoint,
    GenerateReply, GenerateRequest, ModelRef, Regeneration, RemoteErrorBody, RemoteStatus,
    UpdateReply, UpdateRequest,
};
use dynamics_operator::sim::{self, SimConfig};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/api/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

/// Adds fields a future API version might send, at the top and under `data`.
fn with_unknown_fields(mut v: Value) -> Vec<u8> {
    let extra = json!({"nested": [1, {"deep": true}], "n": 1.5});
    v["x_future_field"] = extra.clone();
    if let Some(d) = v.get_mut("data").and_then(Value::as_object_mut) {
        d.insert("x_future_field".into(), extra);
    }
    serde_json::to_vec(&v).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn generate_reply_example() {
    let body = fixture("generate-reply.json");
    let r = parse_generate(body.as_bytes()).unwrap();
    assert_eq!(
        r,
        GenerateReply {
            message: Some("Dynamics generation started".into()),
            agent_id: Some("A91XMB7113".into()),
            status: Some(RemoteStatus::Processing),
        }
    );
    let again = parse_generate(&with_unknown_fields(fixture_json("generate-reply.json")));
    assert_eq!(again.unwrap(), r);
}

#[test]
fn get_reply_example() {
    let body = fixture("get-reply.json");
    let s = parse_state(body.as_bytes(), "other-id").unwrap();
    assert_eq!(s.agent_id, "A91XMB7113", "the reply's agent id wins");
    assert_eq!(s.status, Some(RemoteStatus::Generating));
    assert_eq!(
        s.model_url.as_deref(),
        Some("https://storage.supabase.co/dynamics-model.bin")
    );
    assert!(s.gestures.is_empty());
    assert_eq!(s.error_message, None);
    assert!(s.has_dynamics());
    assert!(s.status.as_ref().unwrap().is_in_progress());
    let again = parse_state(&with_unknown_fields(fixture_json("get-reply.json")), "x");
    assert_eq!(again.unwrap(), s);
}

#[test]
fn get_reply_newer_docs_shape() {
    let body = fixture("get-reply-newer.json");
    let s = parse_state(body.as_bytes(), "x").unwrap();
    assert_eq!(s.status, Some(RemoteStatus::Ready));
    assert_eq!(
        s.model_url.as_deref(),
        Some("https://storage.supabase.co/dynamics-model.bin")
    );
    assert_eq!(s.gestures["wave"], "https://storage.supabase.co/wave.mp4");
    assert_eq!(s.gestures["nod"], "https://storage.supabase.co/nod.mp4");
    let again = parse_state(
        &with_unknown_fields(fixture_json("get-reply-newer.json")),
        "x",
    );
    assert_eq!(again.unwrap(), s);
}

#[test]
fn update_request_example_round_trips() {
    let v = fixture_json("update-request.json");
    let req: UpdateRequest = serde_json::from_value(v.clone()).unwrap();
    let d = &req.dynamics;
    assert_eq!(d.enabled, Some(true));
    assert_eq!(req.toggle_enabled, Some(true));
    assert_eq!(
        d.batch_results.as_ref().unwrap()["wave"],
        BatchResult {
            video_url: Some("https://storage.supabase.co/wave.mp4".into()),
            status: Some("success".into()),
        }
    );
    assert_eq!(
        d.result,
        Some(ModelRef {
            model_path: Some("https://storage.supabase.co/dynamics-model.bin".into()),
            model_hash: Some("abc123def456".into()),
        })
    );
    assert_eq!(
        d.talking.as_ref().unwrap().model_hash.as_deref(),
        Some("def456ghi789")
    );
    // Field names on the wire are exactly the document's.
    assert_eq!(serde_json::to_value(&req).unwrap(), v);
}

#[test]
fn update_request_python_example_round_trips() {
    let v = fixture_json("update-request-example.json");
    let req: UpdateRequest = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(req.dynamics.result, None);
    assert_eq!(req.dynamics.talking, None);
    assert_eq!(
        serde_json::to_value(&req).unwrap(),
        v,
        "None fields are omitted"
    );
}

#[test]
fn generate_request_examples_round_trip() {
    for name in [
        "generate-request-example.json",
        "generate-request-integration.json",
    ] {
        let v = fixture_json(name);
        let req: GenerateRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(req.agent_id, "A91XMB7113");
        assert_eq!(serde_json::to_value(&req).unwrap(), v, "{name}");
    }
    let integ: GenerateRequest =
        serde_json::from_value(fixture_json("generate-request-integration.json")).unwrap();
    assert_eq!(
        integ.motion_prompts,
        Some(vec!["wave".into(), "nod".into(), "smile".into()])
    );
    assert_eq!(integ.duration, Some(3));
}

#[test]
fn generate_request_field_names_match_the_schema_sketch() {
    let schema = fixture_json("generate-request-schema.json");
    let full = GenerateRequest {
        agent_id: "a".into(),
        image_url: Some("https://x/y.jpg".into()),
        duration: Some(5),
        model: Some("seedance".into()),
        motion_prompts: Some(vec!["wave".into()]),
    };
    let ours = keys(&serde_json::to_value(&full).unwrap());
    let documented = keys(&schema);
    assert!(
        documented.is_subset(&ours),
        "documented {documented:?} vs ours {ours:?}"
    );
    assert_eq!(
        ours.difference(&documented).collect::<Vec<_>>(),
        ["motion_prompts"],
        "only the integration example's extra field"
    );
}

#[test]
fn update_reply_examples() {
    let a = parse_update(fixture("update-reply-data.json").as_bytes()).unwrap();
    assert_eq!(
        a,
        UpdateReply {
            message: Some("Dynamics updated successfully".into()),
            agent_id: Some("A91XMB7113".into()),
            updated_at: Some("2025-01-15T10:30:00Z".into()),
            regeneration: None,
        }
    );
    let b = parse_update(fixture("update-reply-regeneration.json").as_bytes()).unwrap();
    assert_eq!(b.agent_id.as_deref(), Some("A91XMB7113"));
    assert_eq!(b.regeneration, Some(Regeneration::Started));
    assert_eq!(b.updated_at, None);
    assert!(b.message.unwrap().contains("regeneration started"));
    for name in ["update-reply-data.json", "update-reply-regeneration.json"] {
        let plain = parse_update(fixture(name).as_bytes()).unwrap();
        let extra = parse_update(&with_unknown_fields(fixture_json(name))).unwrap();
        assert_eq!(plain, extra, "{name}");
    }
}

#[test]
fn error_body_example() {
    let body = RemoteErrorBody::parse(fixture("error-body.json").as_bytes()).unwrap();
    assert_eq!(
        body,
        RemoteErrorBody {
            error: Some("Dynamics generation failed".into()),
            code: Some("INTERNAL_ERROR".into()),
            details: Some("Agent not found or insufficient credits".into()),
        }
    );
    assert_eq!(
        ApiErrorKind::from_remote_code(body.code.as_deref().unwrap()),
        Some(ApiErrorKind::Server)
    );
    let e = ApiError::new(ApiErrorKind::Server, Endpoint::Generate)
        .with_http_status(500)
        .with_remote(Some(body));
    assert!(e
        .to_string()
        .contains("Agent not found or insufficient credits"));
    let extra = RemoteErrorBody::parse(&with_unknown_fields(fixture_json("error-body.json")));
    assert_eq!(extra.unwrap().code.as_deref(), Some("INTERNAL_ERROR"));
}

/// The simulator accepts the documented requests and answers with the documented keys.
#[tokio::test]
async fn simulator_speaks_the_documented_shapes() {
    let sim = sim::start(SimConfig {
        secret: "doc-secret".into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", sim.url());

    let gen = http
        .post(url("/v1/dynamics/generate"))
        .header("api-secret", "doc-secret")
        .header("Content-Type", "application/json")
        .body(fixture("generate-request-example.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(gen.status(), 200);
    let gen: Value = gen.json().await.unwrap();
    assert_eq!(keys(&gen), keys(&fixture_json("generate-reply.json")));
    assert_eq!(gen["status"], "processing");

    let integ = http
        .post(url("/v1/dynamics/generate"))
        .header("api-secret", "doc-secret")
        .body(fixture("generate-request-integration.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(integ.status(), 200);

    let got: Value = http
        .get(url("/v1/dynamics/A91XMB7113"))
        .header("api-secret", "doc-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented_get = fixture_json("get-reply.json");
    assert_eq!(keys(&got), keys(&documented_get));
    assert_eq!(keys(&got["data"]), keys(&documented_get["data"]));

    for (body, reply_fixture) in [
        ("update-request.json", "update-reply-regeneration.json"),
        ("update-request.json", "update-reply-data.json"),
    ] {
        let put: Value = http
            .put(url("/v1/dynamics/A91XMB7113"))
            .header("api-secret", "doc-secret")
            .body(fixture(body))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let want = fixture_json(reply_fixture);
        assert_eq!(keys(&put), keys(&want), "{reply_fixture}: {put}");
        if let Some(d) = want.get("data") {
            assert_eq!(keys(&put["data"]), keys(d));
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.generations_started, 2);
    assert_eq!(stats.regenerations_started, 1);
    assert_eq!(stats.credits_charged, 500);
}

/// The documented error body keys are what the simulator sends on errors.
#[tokio::test]
async fn simulator_errors_use_the_documented_error_format() {
    let sim = sim::start(SimConfig::default()).await.unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/dynamics/A91XMB7113", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(keys(&body), keys(&fixture_json("error-body.json")));
}
