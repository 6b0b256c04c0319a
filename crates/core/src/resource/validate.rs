//! The CRD's admission rules, applied locally: `plan`/`apply` refuse bad manifests before any remote
//! call with the same field paths the API server would name. The schema attributes in `spec.rs`
//! and these checks must agree; `tests/crd.rs` and the real-apiserver suite hold them together.

use std::fmt;

use super::spec::{AgentDynamics, AgentDynamicsSpec, MAX_URL_LEN};

/// One refused field: where and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Parse an `AgentDynamics` from a JSON value, naming the offending field on failure (unknown
/// fields, wrong types) the way `kubectl apply` would.
pub fn parse_agent_dynamics(value: serde_json::Value) -> Result<AgentDynamics, FieldError> {
    let parsed: AgentDynamics = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "(document)".to_string()
        } else {
            path
        };
        FieldError {
            field,
            message: err.into_inner().to_string(),
        }
    })?;
    // The types keep unknown fields (so the controller can report one object instead of failing
    // its watch); a manifest is refused for them, as `kubectl apply` refuses it.
    if let Some(path) = parsed.spec.unknown_field_paths().into_iter().next() {
        let name = path.rsplit('.').next().unwrap_or(&path).to_string();
        return Err(FieldError {
            field: path,
            message: format!("unknown field {name:?}: check its spelling (`kubectl explain agentdynamics.spec` lists the fields) or remove it"),
        });
    }
    Ok(parsed)
}

/// Every rule the CRD enforces on a new object's spec.
pub fn validate_spec(spec: &AgentDynamicsSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };

    if spec.agent_id.is_empty() {
        fail(
            "spec.agentId",
            "required: set it to the bitHuman agent id, e.g. A91XMB7113".into(),
        );
    } else if !is_agent_id(&spec.agent_id) {
        fail(
            "spec.agentId",
            format!(
                "{:?} is not an agent id: use 1-64 letters, digits, '-' or '_', starting with a letter or digit",
                spec.agent_id
            ),
        );
    }
    if let Some(url) = &spec.image_url {
        check_url("spec.imageUrl", url, &mut fail);
    }
    if let Some(duration) = spec.duration {
        if !(1..=10).contains(&duration) {
            fail(
                "spec.duration",
                format!("{duration} is out of range: use 1 to 10 seconds"),
            );
        }
    }
    if let Some(model) = &spec.model {
        if !is_model(model) {
            fail(
                "spec.model",
                format!("{model:?} is not a model name: use lower-case letters, digits, '.', '_' or '-', e.g. seedance"),
            );
        }
    }
    if let Some(prompts) = &spec.motion_prompts {
        if prompts.len() > 32 {
            fail("spec.motionPrompts", "at most 32 motions".into());
        }
        for (i, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() || prompt.len() > 64 {
                fail(
                    &format!("spec.motionPrompts[{i}]"),
                    "must be 1 to 64 characters, e.g. wave".into(),
                );
            }
        }
    }
    if let Some(dynamics) = &spec.dynamics {
        for (name, result) in dynamics.batch_results.iter().flatten() {
            if let Some(url) = &result.video_url {
                check_url(
                    &format!("spec.dynamics.batchResults.{name}.videoUrl"),
                    url,
                    &mut fail,
                );
            }
        }
        for (field, model) in [("result", &dynamics.result), ("talking", &dynamics.talking)] {
            if let Some(path) = model.as_ref().and_then(|m| m.model_path.as_ref()) {
                check_url(&format!("spec.dynamics.{field}.modelPath"), path, &mut fail);
            }
        }
    }
    if let Some(secret) = &spec.api_secret_ref {
        if secret.name.is_empty() {
            fail(
                "spec.apiSecretRef.name",
                "required: the name of a Secret in this namespace".into(),
            );
        }
        if secret.key.is_empty() {
            fail(
                "spec.apiSecretRef.key",
                "must not be empty (default: api-secret)".into(),
            );
        }
    }
    errors
}

/// The immutability rule: an object keeps its agent.
pub fn validate_update(old: &AgentDynamicsSpec, new: &AgentDynamicsSpec) -> Vec<FieldError> {
    if old.agent_id != new.agent_id {
        return vec![FieldError {
            field: "spec.agentId".into(),
            message: "agentId is immutable; create a new AgentDynamics for another agent".into(),
        }];
    }
    Vec::new()
}

fn check_url(field: &str, url: &str, fail: &mut impl FnMut(&str, String)) {
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let rest_ok = url
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.is_empty());
    if !scheme_ok || !rest_ok || url.chars().any(char::is_whitespace) {
        fail(
            field,
            format!("{url:?} is not an http(s) URL: use https://..."),
        );
    } else if url.len() > MAX_URL_LEN as usize {
        fail(field, format!("longer than {MAX_URL_LEN} characters"));
    }
}

fn is_agent_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_model(model: &str) -> bool {
    let mut chars = model.chars();
    model.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(agent: &str) -> AgentDynamicsSpec {
        AgentDynamicsSpec {
            agent_id: agent.into(),
            ..Default::default()
        }
    }

    fn fields(spec: &AgentDynamicsSpec) -> Vec<String> {
        validate_spec(spec).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(&str, AgentDynamicsSpec, Vec<&str>)> = vec![
            ("valid minimal", spec("A91XMB7113"), vec![]),
            ("empty agent", spec(""), vec!["spec.agentId"]),
            ("malformed agent", spec("bad id!"), vec!["spec.agentId"]),
            (
                "agent too long",
                spec(&"a".repeat(65)),
                vec!["spec.agentId"],
            ),
            (
                "duration zero",
                AgentDynamicsSpec {
                    duration: Some(0),
                    ..spec("A1")
                },
                vec!["spec.duration"],
            ),
            (
                "duration eleven",
                AgentDynamicsSpec {
                    duration: Some(11),
                    ..spec("A1")
                },
                vec!["spec.duration"],
            ),
            (
                "duration ten ok",
                AgentDynamicsSpec {
                    duration: Some(10),
                    ..spec("A1")
                },
                vec![],
            ),
            (
                "ftp image",
                AgentDynamicsSpec {
                    image_url: Some("ftp://x/y.jpg".into()),
                    ..spec("A1")
                },
                vec!["spec.imageUrl"],
            ),
            (
                "scheme only",
                AgentDynamicsSpec {
                    image_url: Some("https://".into()),
                    ..spec("A1")
                },
                vec!["spec.imageUrl"],
            ),
            (
                "upper-case model",
                AgentDynamicsSpec {
                    model: Some("Seedance".into()),
                    ..spec("A1")
                },
                vec!["spec.model"],
            ),
            (
                "open model set",
                AgentDynamicsSpec {
                    model: Some("quality".into()),
                    ..spec("A1")
                },
                vec![],
            ),
            (
                "empty motion",
                AgentDynamicsSpec {
                    motion_prompts: Some(vec!["wave".into(), "".into()]),
                    ..spec("A1")
                },
                vec!["spec.motionPrompts[1]"],
            ),
        ];
        for (name, spec, want) in cases {
            assert_eq!(fields(&spec), want, "case {name}");
        }
    }

    #[test]
    fn nested_urls_are_checked() {
        let yaml = r#"
agentId: A1
dynamics:
  batchResults: {wave: {videoUrl: "file:///etc/passwd"}}
  result: {modelPath: "s3://bucket/model.bin"}
"#;
        let spec: AgentDynamicsSpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            fields(&spec),
            vec![
                "spec.dynamics.batchResults.wave.videoUrl",
                "spec.dynamics.result.modelPath"
            ]
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let value = serde_json::json!({
            "apiVersion": "dynamics.bithuman.ai/v1alpha1",
            "kind": "AgentDynamics",
            "metadata": {"name": "x"},
            "spec": {"agentId": "A1", "dynamics": {"enabld": true}}
        });
        let err = parse_agent_dynamics(value).unwrap_err();
        assert_eq!(err.field, "spec.dynamics.enabld");
        assert!(err.message.contains("enabld"), "{}", err.message);
    }

    #[test]
    fn unknown_deletion_policy_is_named() {
        let value = serde_json::json!({
            "apiVersion": "dynamics.bithuman.ai/v1alpha1",
            "kind": "AgentDynamics",
            "metadata": {"name": "x"},
            "spec": {"agentId": "A1", "deletionPolicy": "Delete"}
        });
        let err = parse_agent_dynamics(value).unwrap_err();
        assert_eq!(err.field, "spec.deletionPolicy");
    }

    #[test]
    fn agent_id_is_immutable() {
        assert!(validate_update(&spec("A1"), &spec("A1")).is_empty());
        assert_eq!(
            validate_update(&spec("A1"), &spec("A2"))[0].field,
            "spec.agentId"
        );
    }
}
