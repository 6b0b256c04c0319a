//! `AgentDynamics` spec: what the user declares. Field names are camelCase here and in YAML; the
//! remote API's snake_case lives in `crate::api`, and `crate::reconcile::desired` maps between them.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::AgentDynamicsStatus;

/// Pattern shared by the schema and the local validator (`super::validate`).
pub const AGENT_ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$";
/// Model names are open-ended (seedance, kling, auto, quality, speed, ...): only the shape is checked.
pub const MODEL_PATTERN: &str = r"^[a-z0-9][a-z0-9._-]{0,62}$";
/// Every URL the resource carries must be http(s).
pub const URL_PATTERN: &str = r"^https?://[^\s]+$";
pub const MAX_URL_LEN: u32 = 2048;

/// Desired dynamics for one bitHuman agent.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "dynamics.bithuman.ai",
    version = "v1alpha1",
    kind = "AgentDynamics",
    plural = "agentdynamics",
    shortname = "agdyn",
    category = "bithuman",
    doc = "AgentDynamics declares the dynamics (generated movements) of one bitHuman avatar agent: the generate inputs (imageUrl, duration, model, motionPrompts) and the dynamics block to apply. The dynamics-operator buys a generation (250 credits) only when these inputs change, at most once per change, and reports Ready, Reconciling or Stalled with a reason; docs/troubleshooting.md explains each reason.",
    namespaced,
    status = "AgentDynamicsStatus",
    // `kubectl get agdyn --field-selector spec.agentId=A1` finds every object naming an
    // agent; a restarting operator asks it before its first list is complete.
    selectable = ".spec.agentId",
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".spec.agentId"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model"}"#,
    printcolumn = r#"{"name":"Remote","type":"string","jsonPath":".status.remoteStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Generations","type":"integer","priority":1,"description":"Generations this object has bought (250 credits each), unknown outcomes included","jsonPath":".status.generations"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"description":"What the object is doing or waiting for, and the fix","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentDynamicsSpec {
    /// The bitHuman agent whose dynamics this object manages, e.g. A91XMB7113. Letters, digits,
    /// '-' and '_', at most 64 characters. Immutable: to manage another agent, create another object.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("agentId is immutable; create a new AgentDynamics for another agent"))]
    pub agent_id: String,

    /// Image of the agent to animate (http or https URL). When empty the API uses the agent's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub image_url: Option<String>,

    /// Seconds per motion, 1 to 10: 1-3 quick gestures, 3-5 standard (the API's default is 5), 5-10 extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub duration: Option<u32>,

    /// Generation model, e.g. seedance, kling, auto (newer API: quality, speed). Lower-case name;
    /// the set is not closed so that new models need no operator upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9._-]{0,62}$")
    )]
    pub model: Option<String>,

    /// Motions to generate, e.g. [wave, nod, smile]. Known motions: wave, nod, smile, idle, talking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub motion_prompts: Option<Vec<String>>,

    /// The dynamics configuration sent with PUT once a generation is ready (mirrors the API's
    /// "dynamics" object). Omitted: dynamics are simply switched on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamics: Option<DynamicsBlock>,

    /// Secret (in this object's namespace) holding the bitHuman API secret. Omitted: the operator's own secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_secret_ref: Option<SecretKeyRef>,

    /// What deleting this object does remotely: Disable (one PUT with enabled=false) or Orphan (nothing).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// What to do when the agent already has dynamics and nothing is on record as bought for
    /// it: Adopt (take them as this spec's, nothing is bought) or Regenerate (buy once, 250
    /// credits).
    #[serde(default)]
    pub adoption_policy: AdoptionPolicy,

    /// Manage (the default: generate, apply and pay as the spec asks) or Observe (report what
    /// the API shows for the agent; never write to it, never pay, claim nothing). Switching
    /// from Observe to Manage takes the existing dynamics over without paying.
    #[serde(default, skip_serializing_if = "ManagementPolicy::is_manage")]
    pub management_policy: ManagementPolicy,

    /// When true the operator neither reads nor changes anything remotely for this object.
    #[serde(default)]
    pub suspend: bool,

    /// Change this value (any string, e.g. a date) to force exactly one new generation with the same inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub regenerate: Option<String>,
    /// Fields this version does not know (written with a newer CRD): kept so that one such object
    /// is reported on its own instead of failing the whole watch. Never part of the schema.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown_fields: BTreeMap<String, serde_json::Value>,
}

/// The API's "dynamics" object, in camelCase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DynamicsBlock {
    /// Whether the agent uses its dynamics. Default true: generate, then switch on.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Per-motion results, keyed by motion name (e.g. wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_results: Option<BTreeMap<String, BatchResultSpec>>,

    /// The dynamics model to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ModelRefSpec>,

    /// The talking model to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talking: Option<ModelRefSpec>,
    /// Fields this version does not know (written with a newer CRD): kept so that one such object
    /// is reported on its own instead of failing the whole watch. Never part of the schema.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown_fields: BTreeMap<String, serde_json::Value>,
}

impl Default for DynamicsBlock {
    fn default() -> Self {
        DynamicsBlock {
            enabled: true,
            batch_results: None,
            result: None,
            talking: None,
            unknown_fields: BTreeMap::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// One motion's video.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BatchResultSpec {
    /// Video of the motion (http or https URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub video_url: Option<String>,
    /// Status of the motion's result as the API reports it, e.g. success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub status: Option<String>,
    /// Fields this version does not know (written with a newer CRD): kept so that one such object
    /// is reported on its own instead of failing the whole watch. Never part of the schema.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown_fields: BTreeMap<String, serde_json::Value>,
}

/// A model file and its hash.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelRefSpec {
    /// Where the model file is (http or https URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub model_path: Option<String>,
    /// Hash of the model file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub model_hash: Option<String>,
    /// Fields this version does not know (written with a newer CRD): kept so that one such object
    /// is reported on its own instead of failing the whole watch. Never part of the schema.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown_fields: BTreeMap<String, serde_json::Value>,
}

/// A key of a Secret in the object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret. Default: api-secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Fields this version does not know (written with a newer CRD): kept so that one such object
    /// is reported on its own instead of failing the whole watch. Never part of the schema.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown_fields: BTreeMap<String, serde_json::Value>,
}

pub fn default_secret_key() -> String {
    "api-secret".to_string()
}

/// What happens remotely when the object is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Send one PUT with enabled=false, then release the object.
    #[default]
    Disable,
    /// Leave the remote dynamics as they are.
    Orphan,
}

/// Whether the operator acts for the agent or only looks.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManagementPolicy {
    /// Converge the agent to the spec (generate, apply, pay).
    #[default]
    Manage,
    /// Report what the API shows; send nothing but GET, pay nothing, hold no claim.
    Observe,
}

impl ManagementPolicy {
    pub fn is_manage(&self) -> bool {
        *self == ManagementPolicy::Manage
    }
}

/// What an object does on first sight of an agent that already has dynamics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AdoptionPolicy {
    /// Take the existing dynamics as this spec's; nothing is bought.
    #[default]
    Adopt,
    /// Generate once for this spec (250 credits), as if the agent had none.
    Regenerate,
}

impl AgentDynamicsSpec {
    /// The dynamics block to PUT once a generation is ready.
    pub fn dynamics_or_default(&self) -> DynamicsBlock {
        self.dynamics.clone().unwrap_or_default()
    }

    /// Paths (`spec.x.y`) of the fields this operator does not know, sorted.
    pub fn unknown_field_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        let mut add = |prefix: &str, fields: &BTreeMap<String, serde_json::Value>| {
            paths.extend(fields.keys().map(|k| format!("{prefix}.{k}")));
        };
        add("spec", &self.unknown_fields);
        if let Some(r) = &self.api_secret_ref {
            add("spec.apiSecretRef", &r.unknown_fields);
        }
        if let Some(d) = &self.dynamics {
            add("spec.dynamics", &d.unknown_fields);
            for (name, m) in [("result", &d.result), ("talking", &d.talking)] {
                if let Some(m) = m {
                    add(&format!("spec.dynamics.{name}"), &m.unknown_fields);
                }
            }
            for (motion, r) in d.batch_results.iter().flatten() {
                add(
                    &format!("spec.dynamics.batchResults.{motion}"),
                    &r.unknown_fields,
                );
            }
        }
        paths.sort();
        paths
    }
}
