//! `AgentDynamics` status: what the operator observed and did. Nothing here ticks on its own
//! (no "last checked" times), so a converged object is never rewritten.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written only by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentDynamicsStatus {
    /// The metadata.generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled, following the Kubernetes API conventions (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Generation status the API last reported: processing, generating, completed, ready, failed,
    /// or whatever new value it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_status: Option<String>,

    /// Model URL the API last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_url: Option<String>,

    /// Gestures the API reports as available (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gestures: Vec<String>,

    /// Hash of the generate inputs (imageUrl, duration, model, motionPrompts, regenerate) of the last
    /// generation the API accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_hash: Option<String>,

    /// Hash of the dynamics block last applied with PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamics_hash: Option<String>,

    /// Value of `generations` when the dynamics block was last applied: a new generation must be
    /// switched on with one more PUT even if the block itself did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_for_generation: Option<i64>,

    /// Set before a generate call and cleared once its outcome is known. Found set after a crash,
    /// it makes the operator look before it sends again (credit safety).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_generation: Option<PendingGeneration>,

    /// When the last accepted generation was sent (RFC 3339); paces polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_generation_time: Option<String>,

    /// Generations this object has caused (each costs credits).
    #[serde(default)]
    pub generations: i64,

    /// The last value of the dynamics.bithuman.ai/reconcile-requested-at annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// The crash-safety marker written before a generate call.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingGeneration {
    /// Hash of the generate inputs being sent.
    pub inputs_hash: String,
    /// When the marker was written (RFC 3339).
    pub since: String,
    /// What the API reported just before the call, to tell afterwards whether the call landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_remote_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model_url: Option<String>,
}

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_RECONCILING: &str = "Reconciling";
pub const CONDITION_STALLED: &str = "Stalled";

impl AgentDynamicsStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_ready(&self) -> bool {
        self.condition(CONDITION_READY)
            .is_some_and(|c| c.status == "True")
    }
}
