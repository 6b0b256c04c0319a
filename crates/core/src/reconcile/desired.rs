//! From the spec to what goes on the wire, and the hashes that tell whether it was already sent.

use sha2::{Digest, Sha256};

use crate::resource::{
    AgentDynamicsSpec, AgentDynamicsStatus, DynamicsBlock, GenerateInputs, ModelRefSpec,
};
use crate::wire::{BatchResult, DynamicsConfig, GenerateRequest, ModelRef, UpdateRequest};

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

/// Identifies the generate inputs: a change to any of them (or to `regenerate`) means one new
/// generation. The key of a purchase; pinned by golden tests (see "Keys of purchases" in
/// docs/design.md): a change here must keep accepting what earlier releases recorded.
pub fn inputs_hash(spec: &AgentDynamicsSpec) -> String {
    short_hash(&serde_json::to_value(normalized_inputs(spec)).expect("inputs serialize"))
}

/// The generate inputs as a purchase records them: normalized (empty values absent), every
/// field present so that the JSON form (and so the hash) has one shape.
pub fn normalized_inputs(spec: &AgentDynamicsSpec) -> GenerateInputs {
    let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    GenerateInputs {
        image_url: text(&spec.image_url),
        duration: spec.duration,
        model: text(&spec.model),
        motion_prompts: spec.motion_prompts.clone().filter(|p| !p.is_empty()),
        regenerate: text(&spec.regenerate),
    }
}

/// The keys earlier releases computed for this spec, where they differ from today's. Releases
/// before empty values counted as absent hashed each field as written (`regenerate: ""` as an
/// empty string): a status or state file that recorded such a key bought these same inputs.
pub fn earlier_keys(spec: &AgentDynamicsSpec) -> Vec<String> {
    let raw = serde_json::json!({
        "imageUrl": spec.image_url,
        "duration": spec.duration,
        "model": spec.model,
        "motionPrompts": spec.motion_prompts,
        "regenerate": spec.regenerate,
    });
    let raw = short_hash(&raw);
    if raw == inputs_hash(spec) {
        Vec::new()
    } else {
        vec![raw]
    }
}

/// A status as earlier releases wrote it, with every key they computed for `spec` rewritten to
/// today's key for the same inputs, so an upgrade never takes recorded inputs for new ones.
pub fn upgrade_recorded_keys(
    status: &AgentDynamicsStatus,
    spec: &AgentDynamicsSpec,
) -> AgentDynamicsStatus {
    let earlier = earlier_keys(spec);
    if earlier.is_empty() {
        return status.clone();
    }
    let current = inputs_hash(spec);
    let fix = |key: &mut String| {
        if earlier.contains(key) {
            *key = current.clone();
        }
    };
    let mut status = status.clone();
    if let Some(key) = &mut status.generate_hash {
        fix(key);
    }
    status.bought_keys.iter_mut().for_each(fix);
    status.bought_keys.dedup();
    if let Some(pending) = &mut status.pending_generation {
        fix(&mut pending.inputs_hash);
    }
    status
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

    /// The keys of purchases, pinned: a change here would make every object buy again after an
    /// upgrade. Never edit an expected value; add a rule to `earlier_keys` instead.
    #[test]
    fn purchase_keys_are_pinned() {
        let minimal = AgentDynamicsSpec {
            agent_id: "A91XMB7113".into(),
            ..Default::default()
        };
        let full = AgentDynamicsSpec {
            agent_id: "A91XMB7113".into(),
            image_url: Some("https://example.com/agent.jpg".into()),
            duration: Some(5),
            model: Some("seedance".into()),
            motion_prompts: Some(vec!["wave".into(), "nod".into(), "smile".into()]),
            regenerate: Some("2026-12-01".into()),
            ..Default::default()
        };
        let readme_template = AgentDynamicsSpec {
            regenerate: Some(String::new()),
            ..spec()
        };
        let cases = [
            (&minimal, "72a4e06b7db222a9"),
            (&spec(), "4fdaadf498856368"),
            (&full, "e9d4678e7fface47"),
            (&readme_template, "4fdaadf498856368"),
        ];
        for (spec, key) in cases {
            assert_eq!(inputs_hash(spec), key, "{spec:?}");
        }
        assert_eq!(
            serde_json::to_string(&normalized_inputs(&readme_template)).unwrap(),
            r#"{"imageUrl":null,"duration":5,"model":"seedance","motionPrompts":null,"regenerate":null}"#
        );
    }

    /// Releases before empty values counted as absent hashed `regenerate: ""` as written.
    #[test]
    fn keys_of_earlier_releases_are_recognised_and_rewritten() {
        let template = AgentDynamicsSpec {
            regenerate: Some(String::new()),
            ..spec()
        };
        assert_eq!(
            earlier_keys(&template),
            vec!["67c92bd5b520a3a0".to_string()]
        );
        assert!(earlier_keys(&spec()).is_empty(), "no empty value: one key");
        let recorded = AgentDynamicsStatus {
            generate_hash: Some("67c92bd5b520a3a0".into()),
            bought_keys: vec!["67c92bd5b520a3a0".into()],
            generations: 1,
            ..Default::default()
        };
        let upgraded = upgrade_recorded_keys(&recorded, &template);
        assert_eq!(upgraded.generate_hash.as_deref(), Some("4fdaadf498856368"));
        assert_eq!(upgraded.bought_keys, vec!["4fdaadf498856368".to_string()]);
        assert_eq!(upgraded.generations, 1);
        // Another spec's key is left alone.
        let other = AgentDynamicsStatus {
            generate_hash: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        assert_eq!(upgrade_recorded_keys(&other, &template), other);
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
