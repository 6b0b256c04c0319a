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

    /// Hashes of every generate-input set this object has sent a call for that may have been
    /// charged (accepted, or with an unknown outcome), oldest first, the last 32: none of them is
    /// ever bought again automatically, so two specs that keep replacing each other (two tools
    /// fighting over the object) cost at most one generation each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bought_keys: Vec<String>,

    /// Hash of the dynamics block last applied with PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamics_hash: Option<String>,

    /// Value of `generations` when the dynamics block was last applied: a new generation must be
    /// switched on with one more PUT even if the block itself did not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_for_generation: Option<i64>,

    /// Written before a generate call and kept until GET shows the job (or the user buys again on
    /// purpose). While it is set nothing is sent for its inputs again, whatever GET shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_generation: Option<PendingGeneration>,

    /// When the last accepted generation was sent (RFC 3339); paces polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_generation_time: Option<String>,

    /// Generate calls this object sent that may have been charged (accepted, or with an unknown
    /// outcome); each costs 250 credits. Refused calls are not counted.
    #[serde(default)]
    pub generations: i64,

    /// PUTs of the dynamics block that the API answered by regenerating the movements
    /// (`regeneration_status: started`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub regenerations: i64,

    /// The last value of the dynamics.bithuman.ai/reconcile-requested-at annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// The last value of the dynamics.bithuman.ai/resolve annotation that was handled: each
    /// value resolves one stall, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_resolve: Option<String>,

    /// A remote status this operator does not know that the user accepted as finished
    /// (`resolve accept` of RemoteStatusUnknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_remote_status: Option<String>,
}

/// The crash-safety marker written before a generate call, with the resourceVersion read, so
/// that of two racing writers only one goes on to call.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingGeneration {
    /// Hash of the generate inputs being sent (with the object's uid, the key of the purchase).
    pub inputs_hash: String,
    /// When the marker was written (RFC 3339).
    pub since: String,
    /// What the call's reply said: absent while the call is (or was, before a crash) in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<GenerateOutcome>,
    /// What the API reported just before the call: a GET that differs afterwards is evidence
    /// that the job exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_remote_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_gestures: Vec<String>,
    /// The API showed nothing for the agent just before the call although it had dynamics (an
    /// API that says little, `data: null`): a later GET that shows them again is no evidence of
    /// this job, only work under way is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub previous_hidden: bool,
    /// The purchase goes on the agent's ledger record after this marker and before the call: a
    /// record without a call of this object for the key (or no record at all) proves that the
    /// call was never sent. Absent in markers of releases before the ledger, which prove nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ledger_first: bool,
}

/// What a generate call's reply proved.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerateOutcome {
    /// 2xx: bought. Waiting for GET to show the job.
    Accepted,
    /// No definite answer (timeout, dropped connection, 5xx, a crash): it may have been bought.
    Unknown,
}

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_RECONCILING: &str = "Reconciling";
pub const CONDITION_STALLED: &str = "Stalled";

/// How many bought keys a status remembers.
pub const BOUGHT_KEYS_KEPT: usize = 32;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl AgentDynamicsStatus {
    /// Remember that a call for `key` may have been charged.
    pub fn remember_bought(&mut self, key: &str) {
        if !self.bought_keys.iter().any(|k| k == key) {
            self.bought_keys.push(key.to_string());
        }
        let excess = self.bought_keys.len().saturating_sub(BOUGHT_KEYS_KEPT);
        self.bought_keys.drain(..excess);
    }

    /// Whether a call for `key` was ever sent and may have been charged.
    pub fn was_bought(&self, key: &str) -> bool {
        self.generate_hash.as_deref() == Some(key) || self.bought_keys.iter().any(|k| k == key)
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_ready(&self) -> bool {
        self.condition(CONDITION_READY)
            .is_some_and(|c| c.status == "True")
    }
}
