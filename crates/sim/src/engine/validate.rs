//! What the simulated service accepts: the documented request bodies, checked field by field
//! with the errors the real service gives (400 with the field and what is wrong).

use serde_json::{Map, Value};

/// The agent id of a generate body, if one can be read, for stats only.
pub(crate) fn agent_hint(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(v.get("agent_id")?.as_str()?.to_string()).filter(|s| !s.is_empty())
}

pub(super) struct GenerateParams {
    pub agent_id: String,
    pub prompts: Option<Vec<String>>,
    pub raw: Value,
}

fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("request body must be a JSON object".into()),
        Err(e) => Err(format!("request body is not valid JSON: {e}")),
    }
}

fn is_http_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["http://", "https://"]
        .iter()
        .any(|p| lower.starts_with(p) && lower.len() > p.len())
}

pub(super) fn validate_generate(body: &[u8]) -> Result<GenerateParams, String> {
    let m = object(body)?;
    let present = |k: &str| m.get(k).filter(|v| !v.is_null());
    let agent_id = match present("agent_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) | None => return Err("agent_id is required".into()),
        Some(_) => return Err("agent_id must be a string".into()),
    };
    if let Some(v) = present("image_url") {
        if !v.as_str().is_some_and(is_http_url) {
            return Err("image_url must be an http(s) URL".into());
        }
    }
    if let Some(v) = present("duration") {
        if !v.as_f64().is_some_and(|d| (1.0..=10.0).contains(&d)) {
            return Err("duration must be a number of seconds between 1 and 10".into());
        }
    }
    if let Some(v) = present("model") {
        if v.as_str().is_none_or(|s| s.trim().is_empty()) {
            return Err("model must be a non-empty string".into());
        }
    }
    let prompts = match present("motion_prompts") {
        None => None,
        Some(Value::Array(items)) => {
            let p: Option<Vec<String>> = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .filter(|s| !s.trim().is_empty())
                        .map(String::from)
                })
                .collect();
            Some(p.ok_or("motion_prompts must be a list of non-empty strings")?)
        }
        Some(_) => return Err("motion_prompts must be a list of non-empty strings".into()),
    };
    Ok(GenerateParams {
        agent_id,
        prompts,
        raw: Value::Object(m),
    })
}

pub(super) fn validate_update(body: &[u8]) -> Result<(Map<String, Value>, Option<bool>), String> {
    let m = object(body)?;
    let toggle = match m.get("toggle_enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("toggle_enabled must be a boolean".into()),
    };
    let Some(Value::Object(d)) = m.get("dynamics") else {
        return Err("dynamics must be an object".into());
    };
    if !matches!(
        d.get("enabled"),
        None | Some(Value::Null) | Some(Value::Bool(_))
    ) {
        return Err("dynamics.enabled must be a boolean".into());
    }
    match d.get("batch_results") {
        None | Some(Value::Null) => {}
        Some(Value::Object(items)) => {
            for (name, r) in items {
                let Some(r) = r.as_object() else {
                    return Err(format!("dynamics.batch_results.{name} must be an object"));
                };
                if let Some(u) = r.get("video_url").filter(|v| !v.is_null()) {
                    if !u.as_str().is_some_and(is_http_url) {
                        return Err(format!(
                            "dynamics.batch_results.{name}.video_url must be an http(s) URL"
                        ));
                    }
                }
            }
        }
        Some(_) => return Err("dynamics.batch_results must be an object".into()),
    }
    for key in ["result", "talking"] {
        if !matches!(
            d.get(key),
            None | Some(Value::Null) | Some(Value::Object(_))
        ) {
            return Err(format!("dynamics.{key} must be an object"));
        }
    }
    Ok((d.clone(), toggle))
}
