//! `DynamicsLedger`: what was bought for one agent, kept apart from any `AgentDynamics` so that
//! deleting, re-creating, replacing or restoring an object, or a second install, cannot forget a
//! purchase. Cluster-scoped, one object per agent (named by `reconcile::ledger::record_name`),
//! written only by the operator, with the resourceVersion it read.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The purchases of one bitHuman agent, whichever object, install or operator version made them.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "dynamics.bithuman.ai",
    version = "v1alpha1",
    kind = "DynamicsLedger",
    plural = "dynamicsledgers",
    shortname = "dynledger",
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".spec.agentId"}"#,
    printcolumn = r#"{"name":"Holder","type":"string","jsonPath":".spec.holder.object"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DynamicsLedgerSpec {
    /// The agent, exactly as the API knows it (agent ids are case-sensitive).
    pub agent_id: String,
    /// The AgentDynamics that manages the agent now. Released (emptied) when it is deleted;
    /// the purchases stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<LedgerHolder>,
    /// Generate inputs bought (or adopted) for the agent, oldest first, the last
    /// `reconcile::ledger::PURCHASES_KEPT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purchases: Vec<LedgerPurchase>,
    /// Credits spent on the agent in the current hour, day and month (UTC), by namespace and
    /// account: what budgets are checked against (`reconcile::budget`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spend: Vec<LedgerSpend>,
}

/// Credits spent in one calendar period by one namespace with one account.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSpend {
    /// `2026-12-07T01` (an hour), `2026-12-07` (a day) or `2026-12` (a month), UTC.
    pub period: String,
    pub namespace: String,
    /// The account's fingerprint (a hash of its API key, never the key).
    pub account: String,
    pub credits: u64,
}

/// The object holding an agent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerHolder {
    /// namespace/name of the AgentDynamics.
    pub object: String,
    pub uid: String,
}

/// One set of generate inputs bought for the agent, recorded before the generate call is sent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPurchase {
    /// Hash of the normalized inputs (`status.generateHash` of the object that bought them).
    pub key: String,
    /// The normalized inputs themselves, so that a later release can compare them even if it
    /// hashes differently (absent only where they were derived from an older record that kept
    /// the key alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<GenerateInputs>,
    /// When the call was sent (or the inputs adopted), RFC 3339.
    pub at: String,
    /// namespace/name and uid of the object that asked.
    pub object: String,
    pub uid: String,
    /// Generate calls sent for these inputs (a deliberate `resolve retry` adds one); 0 when the
    /// agent's existing dynamics were adopted without a call.
    #[serde(default)]
    pub calls: u32,
}

/// The generate inputs, normalized: empty values are absent. The hash of this (every field
/// present, absent ones as null) is the key of a purchase.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GenerateInputs {
    pub image_url: Option<String>,
    pub duration: Option<u32>,
    pub model: Option<String>,
    pub motion_prompts: Option<Vec<String>>,
    pub regenerate: Option<String>,
}
