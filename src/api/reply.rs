//! Tolerant parsing of reply bodies: unknown fields are ignored, both URL keys
//! and both update shapes are accepted, and anything unreadable becomes a
//! `Decode` error instead of a panic.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{ApiError, ApiErrorKind, Endpoint, RemoteErrorBody};
use dynamics_core::wire::{DynamicsState, GenerateReply, Regeneration, RemoteStatus, UpdateReply};

type Obj = Map<String, Value>;

/// Parses the body as a JSON object and turns `success: false` into an error.
fn envelope(body: &[u8], endpoint: Endpoint) -> Result<Obj, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(ApiErrorKind::Decode, endpoint).with_detail(format!("reply is not JSON: {e}"))
    })?;
    let Value::Object(obj) = v else {
        return Err(
            ApiError::new(ApiErrorKind::Decode, endpoint).with_detail("reply is not a JSON object")
        );
    };
    if obj.get("success") == Some(&Value::Bool(false)) {
        let remote = RemoteErrorBody::from_value(&Value::Object(obj.clone()));
        let kind = remote
            .as_ref()
            .and_then(|r| r.code.as_deref())
            .and_then(ApiErrorKind::from_remote_code)
            .unwrap_or(ApiErrorKind::Server);
        return Err(ApiError::new(kind, endpoint)
            .with_remote(remote)
            .with_detail("reply said success: false"));
    }
    Ok(obj)
}

/// A non-empty string, or `None` for null, missing, empty and non-strings.
fn string(obj: &Obj, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn status(obj: &Obj) -> Option<RemoteStatus> {
    match obj.get("status")? {
        Value::Null => None,
        Value::String(s) => Some(RemoteStatus::parse(s)),
        other => Some(RemoteStatus::Unknown(other.to_string())),
    }
}

const URL_KEYS: [&str; 5] = ["url", "video_url", "videoUrl", "model_path", "href"];

/// Picks a URL out of an object: a well-known key first, else any value that
/// looks like an http(s) URL.
fn url_in(obj: &Obj) -> Option<String> {
    URL_KEYS.iter().find_map(|k| string(obj, k)).or_else(|| {
        obj.values().find_map(|v| match v {
            Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Some(s.clone())
            }
            _ => None,
        })
    })
}

fn gestures(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match v {
        Some(Value::Object(map)) => {
            for (name, g) in map {
                let url = match g {
                    Value::Null => continue,
                    Value::String(s) => s.clone(),
                    Value::Object(o) => url_in(o).unwrap_or_else(|| g.to_string()),
                    other => other.to_string(),
                };
                out.insert(name.clone(), url);
            }
        }
        // A list of names (or of named objects) is also plausible.
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(name) => {
                        out.insert(name.clone(), String::new());
                    }
                    Value::Object(o) => {
                        if let Some(name) = string(o, "name") {
                            out.insert(name, url_in(o).unwrap_or_default());
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    out
}

/// Parses a GET reply. `requested_agent` fills `agent_id` when the reply
/// omits it. `data` must be present (an object or null): a reply without
/// it is refused rather than read as "no dynamics", which would invite a
/// paid generation on the strength of a reply we did not understand.
pub fn parse_state(body: &[u8], requested_agent: &str) -> Result<DynamicsState, ApiError> {
    let obj = envelope(body, Endpoint::Get)?;
    let empty = Obj::new();
    let data = match obj.get("data") {
        Some(Value::Object(d)) => d,
        Some(Value::Null) => &empty,
        Some(_) => {
            return Err(ApiError::new(ApiErrorKind::Decode, Endpoint::Get)
                .with_detail("reply's data is not an object"))
        }
        None => {
            return Err(ApiError::new(ApiErrorKind::Decode, Endpoint::Get)
                .with_detail("reply has no data object"))
        }
    };
    let model_url = match data.get("dynamics") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Object(o)) => url_in(o),
        _ => None,
    }
    .or_else(|| string(data, "url"));
    Ok(DynamicsState {
        agent_id: string(data, "agent_id").unwrap_or_else(|| requested_agent.to_string()),
        status: status(data),
        model_url,
        gestures: gestures(data.get("gestures")),
        error_message: string(data, "error_message").or_else(|| string(data, "error")),
    })
}

/// Parses a generate reply; fields may also sit under `data`.
pub fn parse_generate(body: &[u8]) -> Result<GenerateReply, ApiError> {
    let obj = envelope(body, Endpoint::Generate)?;
    let data = obj.get("data").and_then(Value::as_object);
    Ok(GenerateReply {
        message: string(&obj, "message"),
        agent_id: string(&obj, "agent_id").or_else(|| data.and_then(|d| string(d, "agent_id"))),
        status: status(&obj).or_else(|| data.and_then(status)),
    })
}

/// Parses an update reply in either shape: `data.{agent_id, updated_at}`
/// or top-level `agent_id, regeneration_status, regeneration_error`.
pub fn parse_update(body: &[u8]) -> Result<UpdateReply, ApiError> {
    let obj = envelope(body, Endpoint::Update)?;
    let data = obj.get("data").and_then(Value::as_object);
    let either = |k: &str| string(&obj, k).or_else(|| data.and_then(|d| string(d, k)));
    let regeneration = either("regeneration_status")
        .map(|s| Regeneration::parse(&s, either("regeneration_error")));
    Ok(UpdateReply {
        message: string(&obj, "message"),
        agent_id: either("agent_id"),
        updated_at: either("updated_at"),
        regeneration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_accepts_url_key_and_gesture_objects() {
        let body = br#"{"success":true,"data":{"url":"https://m/1.bin","status":"Ready",
            "gestures":{"wave":"https://v/wave.mp4","nod":{"video_url":"https://v/nod.mp4","status":"success"},
            "odd":{"k":1},"gone":null},"extra":[1,2]}}"#;
        let s = parse_state(body, "A1").unwrap();
        assert_eq!(s.agent_id, "A1");
        assert_eq!(s.model_url.as_deref(), Some("https://m/1.bin"));
        assert_eq!(s.status, Some(RemoteStatus::Ready));
        assert_eq!(s.gestures["wave"], "https://v/wave.mp4");
        assert_eq!(s.gestures["nod"], "https://v/nod.mp4");
        assert_eq!(s.gestures["odd"], r#"{"k":1}"#);
        assert!(!s.gestures.contains_key("gone"));
    }

    #[test]
    fn get_with_null_dynamics_has_none() {
        let s = parse_state(
            br#"{"success":true,"data":{"agent_id":"B","dynamics":null}}"#,
            "x",
        )
        .unwrap();
        assert_eq!(s.agent_id, "B");
        assert!(!s.has_dynamics());
        let s = parse_state(br#"{"success":true,"data":null}"#, "x").unwrap();
        assert!(!s.has_dynamics());
    }

    #[test]
    fn get_gesture_list_and_non_string_status() {
        let s = parse_state(
            br#"{"data":{"status":3,"gestures":["wave",{"name":"nod","url":"u"}]}}"#,
            "x",
        )
        .unwrap();
        assert_eq!(s.status, Some(RemoteStatus::Unknown("3".into())));
        assert_eq!(s.gestures.len(), 2);
        assert_eq!(s.gestures["nod"], "u");
    }

    #[test]
    fn unreadable_replies_are_decode_errors() {
        for body in [&b""[..], b"not json", b"[1,2]", b"{}", br#"{"data":"x"}"#] {
            let e = parse_state(body, "A").unwrap_err();
            assert_eq!(
                e.kind(),
                ApiErrorKind::Decode,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse_generate(b"<html>").unwrap_err().kind(),
            ApiErrorKind::Decode
        );
        assert_eq!(
            parse_update(b"42").unwrap_err().kind(),
            ApiErrorKind::Decode
        );
    }

    #[test]
    fn success_false_is_classified_by_code() {
        let e = parse_generate(
            br#"{"success":false,"error":"no money","code":"INSUFFICIENT_CREDITS"}"#,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ApiErrorKind::InsufficientCredits);
        assert_eq!(e.remote().unwrap().error.as_deref(), Some("no money"));
        let e = parse_update(br#"{"success":false}"#).unwrap_err();
        assert_eq!(e.kind(), ApiErrorKind::Server);
    }

    #[test]
    fn update_reply_shapes() {
        let a = parse_update(
            br#"{"success":true,"message":"ok","data":{"agent_id":"A","updated_at":"t"}}"#,
        )
        .unwrap();
        assert_eq!(a.agent_id.as_deref(), Some("A"));
        assert_eq!(a.updated_at.as_deref(), Some("t"));
        assert_eq!(a.regeneration, None);
        let b = parse_update(
            br#"{"success":true,"agent_id":"A","regeneration_status":"failed","regeneration_error":"boom"}"#,
        )
        .unwrap();
        assert_eq!(
            b.regeneration,
            Some(Regeneration::Failed {
                error: Some("boom".into())
            })
        );
    }
}
