//! Replies the simulator never sends, from a tiny canned-reply stub: request headers and paths,
//! unknown statuses, unreadable bodies, redirects.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Router;
use dynamics_operator::api::{
    ApiErrorKind, ClientConfig, DynamicsClient, RemoteStatus, UpdateRequest,
};

use crate::{assert_redacted, fast_config, gen_req, secret, SECRET};

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
