//! From the spec to what goes on the wire, and the hashes that tell whether it was already sent.

use sha2::{Digest, Sha256};

use crate::api::{BatchResult, DynamicsConfig, GenerateRequest, ModelRef, UpdateRequest};
use crate::resource::{AgentDynamicsSpec, DynamicsBlock, ModelRefSpec};

/// The generate call for this spec.
pub fn generate_request(spec: &AgentDynamicsSpec) -> GenerateRequest {
    GenerateRequest {
        agent_id: spec.agent_id.clone(),
        image_url: spec.image_url.clone(),
        duration: spec.duration,
        model: spec.model.clone(),
        motion_prompts: spec.motion_prompts.clone(),
    }
}

/// The PUT body that applies `block`.
pub fn update_request(block: &DynamicsBlock) -> UpdateRequest {
    let model = |m: &ModelRefSpec| ModelRef {
        model_path: m.model_path.clone(),
        model_hash: m.model_hash.clone(),
    };
    UpdateRequest {
        dynamics: DynamicsConfig {
            enabled: Some(block.enabled),
            batch_results: block.batch_results.as_ref().map(|results| {
                results
                    .iter()
                    .map(|(name, r)| {
                        let wire = BatchResult {
                            video_url: r.video_url.clone(),
                            status: r.status.clone(),
                        };
                        (name.clone(), wire)
                    })
                    .collect()
            }),
            result: block.result.as_ref().map(model),
            talking: block.talking.as_ref().map(model),
        },
        // The API reads `enabled` only when this signal is set; we always send the value we want.
        toggle_enabled: Some(true),
    }
}

/// The PUT body sent on deletion with `deletionPolicy: Disable`: the same block, switched off.
pub fn disable_request(spec: &AgentDynamicsSpec) -> UpdateRequest {
    let block = DynamicsBlock {
        enabled: false,
        ..spec.dynamics_or_default()
    };
    update_request(&block)
}

/// The generate inputs, each under its field path, as the hash sees them: empty values (an empty
/// string, an empty list) count as absent, so adding `regenerate: ""` is not a paid change.
/// The one list behind both the hash and the diff that `plan -f` shows.
pub fn generate_inputs(spec: &AgentDynamicsSpec) -> [(&'static str, serde_json::Value); 5] {
    use serde_json::{json, Value};
    let text = |v: &Option<String>| match v.as_deref() {
        None | Some("") => Value::Null,
        Some(s) => json!(s),
    };
    let prompts = match spec.motion_prompts.as_deref() {
        None | Some([]) => Value::Null,
        Some(p) => json!(p),
    };
    [
        ("spec.imageUrl", text(&spec.image_url)),
        ("spec.duration", json!(spec.duration)),
        ("spec.model", text(&spec.model)),
        ("spec.motionPrompts", prompts),
        ("spec.regenerate", text(&spec.regenerate)),
    ]
}

/// Identifies the generate inputs: a change to any of them (or to `regenerate`) means one new generation.
pub fn inputs_hash(spec: &AgentDynamicsSpec) -> String {
    let inputs: serde_json::Map<String, serde_json::Value> = generate_inputs(spec)
        .into_iter()
        .map(|(path, value)| (path.trim_start_matches("spec.").to_string(), value))
        .collect();
    short_hash(&serde_json::Value::Object(inputs))
}

/// The generate inputs that differ between two specs, by field path.
pub fn changed_inputs(before: &AgentDynamicsSpec, after: &AgentDynamicsSpec) -> Vec<&'static str> {
    generate_inputs(before)
        .into_iter()
        .zip(generate_inputs(after))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((path, _), _)| path)
        .collect()
}

/// Identifies the dynamics block to apply (defaults filled in, so omitting it equals `enabled: true`).
pub fn dynamics_hash(spec: &AgentDynamicsSpec) -> String {
    let block = serde_json::to_value(spec.dynamics_or_default()).expect("block serializes");
    short_hash(&block)
}

/// serde_json::Value keeps object keys sorted, so equal content gives equal hashes.
fn short_hash(value: &serde_json::Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec() -> AgentDynamicsSpec {
        AgentDynamicsSpec {
            agent_id: "A1".into(),
            duration: Some(5),
            model: Some("seedance".into()),
            ..Default::default()
        }
    }

    #[test]
    fn inputs_hash_follows_each_generate_input_and_nothing_else() {
        let base = inputs_hash(&spec());
        let changed: Vec<AgentDynamicsSpec> = vec![
            AgentDynamicsSpec {
                duration: Some(3),
                ..spec()
            },
            AgentDynamicsSpec {
                model: Some("kling".into()),
                ..spec()
            },
            AgentDynamicsSpec {
                image_url: Some("https://x/y.jpg".into()),
                ..spec()
            },
            AgentDynamicsSpec {
                motion_prompts: Some(vec!["wave".into()]),
                ..spec()
            },
            AgentDynamicsSpec {
                regenerate: Some("2026-11-29".into()),
                ..spec()
            },
        ];
        for s in &changed {
            assert_ne!(inputs_hash(s), base, "{s:?}");
        }
        let unrelated = AgentDynamicsSpec {
            suspend: true,
            dynamics: Some(DynamicsBlock {
                enabled: false,
                ..Default::default()
            }),
            ..spec()
        };
        assert_eq!(inputs_hash(&unrelated), base);
    }

    #[test]
    fn empty_values_count_as_absent() {
        let base = inputs_hash(&spec());
        let empty = AgentDynamicsSpec {
            regenerate: Some(String::new()),
            image_url: Some(String::new()),
            motion_prompts: Some(vec![]),
            ..spec()
        };
        assert_eq!(
            inputs_hash(&empty),
            base,
            "adding empty values is not a paid change"
        );
        assert!(changed_inputs(&spec(), &empty).is_empty());
        let edited = AgentDynamicsSpec {
            regenerate: Some("1".into()),
            model: Some("kling".into()),
            ..spec()
        };
        assert_eq!(
            changed_inputs(&spec(), &edited),
            vec!["spec.model", "spec.regenerate"]
        );
    }

    #[test]
    fn dynamics_hash_treats_omitted_block_as_enabled() {
        let omitted = dynamics_hash(&spec());
        let explicit = dynamics_hash(&AgentDynamicsSpec {
            dynamics: Some(DynamicsBlock::default()),
            ..spec()
        });
        let disabled = dynamics_hash(&AgentDynamicsSpec {
            dynamics: Some(DynamicsBlock {
                enabled: false,
                ..Default::default()
            }),
            ..spec()
        });
        assert_eq!(omitted, explicit);
        assert_ne!(omitted, disabled);
    }

    #[test]
    fn update_request_maps_every_field_to_the_wire() {
        let mut results = BTreeMap::new();
        results.insert(
            "wave".to_string(),
            crate::resource::BatchResultSpec {
                video_url: Some("https://x/wave.mp4".into()),
                status: Some("success".into()),
                ..Default::default()
            },
        );
        let block = DynamicsBlock {
            enabled: true,
            batch_results: Some(results),
            result: Some(ModelRefSpec {
                model_path: Some("https://x/m.bin".into()),
                model_hash: Some("abc".into()),
                ..Default::default()
            }),
            talking: None,
            ..Default::default()
        };
        let wire = serde_json::to_value(update_request(&block)).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({
                "dynamics": {
                    "enabled": true,
                    "batch_results": {"wave": {"video_url": "https://x/wave.mp4", "status": "success"}},
                    "result": {"model_path": "https://x/m.bin", "model_hash": "abc"}
                },
                "toggle_enabled": true
            })
        );
    }

    #[test]
    fn disable_keeps_the_block_and_switches_it_off() {
        let wire = disable_request(&spec());
        assert_eq!(wire.dynamics.enabled, Some(false));
        assert_eq!(wire.toggle_enabled, Some(true));
    }
}
