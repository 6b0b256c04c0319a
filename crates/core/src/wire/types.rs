//! Request and reply types of the Dynamics API (snake_case on the wire).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::status::RemoteStatus;

/// What GET reports about an agent's dynamics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicsState {
    pub agent_id: String,
    pub status: Option<RemoteStatus>,
    /// `data.dynamics` (seed docs) or `data.url` (newer docs).
    pub model_url: Option<String>,
    /// Gesture name -> video URL (newer docs only).
    #[serde(default)]
    pub gestures: BTreeMap<String, String>,
    pub error_message: Option<String>,
}

impl DynamicsState {
    /// Whether the remote has anything for this agent (a status or a model).
    pub fn has_dynamics(&self) -> bool {
        self.status.is_some() || self.model_url.is_some()
    }
}

/// Body of `POST /v1/dynamics/generate`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion_prompts: Option<Vec<String>>,
}

/// Reply of generate: `{success, message, agent_id, status}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateReply {
    pub message: Option<String>,
    pub agent_id: Option<String>,
    pub status: Option<RemoteStatus>,
}

/// One entry of `dynamics.batch_results`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `dynamics.result` and `dynamics.talking`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_hash: Option<String>,
}

/// The `dynamics` object of the PUT body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_results: Option<BTreeMap<String, BatchResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ModelRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talking: Option<ModelRef>,
}

/// Body of `PUT /v1/dynamics/{agent_id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub dynamics: DynamicsConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toggle_enabled: Option<bool>,
}

/// What an update said about movements regeneration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Regeneration {
    /// The agent goes back to generating.
    Started,
    /// Regeneration could not start (`regeneration_error`).
    Failed { error: Option<String> },
    /// A value the docs do not list, kept verbatim.
    Other(String),
}

impl Regeneration {
    pub fn parse(status: &str, error: Option<String>) -> Self {
        match status.trim().to_ascii_lowercase().as_str() {
            "started" => Regeneration::Started,
            "failed" => Regeneration::Failed { error },
            _ => Regeneration::Other(status.to_string()),
        }
    }
}

/// Reply of update, in either documented shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReply {
    pub message: Option<String>,
    pub agent_id: Option<String>,
    pub updated_at: Option<String>,
    pub regeneration: Option<Regeneration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_fields_are_omitted_on_the_wire() {
        let req = GenerateRequest {
            agent_id: "A1".into(),
            duration: Some(3),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"agent_id": "A1", "duration": 3})
        );
        let upd = UpdateRequest {
            dynamics: DynamicsConfig {
                enabled: Some(false),
                ..Default::default()
            },
            toggle_enabled: Some(true),
        };
        assert_eq!(
            serde_json::to_value(&upd).unwrap(),
            serde_json::json!({"dynamics": {"enabled": false}, "toggle_enabled": true})
        );
    }

    #[test]
    fn has_dynamics() {
        let mut s = DynamicsState::default();
        assert!(!s.has_dynamics());
        s.model_url = Some("u".into());
        assert!(s.has_dynamics());
        s = DynamicsState {
            status: Some(RemoteStatus::Processing),
            ..Default::default()
        };
        assert!(s.has_dynamics());
    }

    #[test]
    fn regeneration_values() {
        assert_eq!(Regeneration::parse("Started", None), Regeneration::Started);
        assert_eq!(
            Regeneration::parse("failed", Some("x".into())),
            Regeneration::Failed {
                error: Some("x".into())
            }
        );
        assert_eq!(
            Regeneration::parse("queued", None),
            Regeneration::Other("queued".into())
        );
    }
}
