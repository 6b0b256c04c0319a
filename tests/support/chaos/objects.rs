//! The control plane and the objects a test or campaign creates, and how each one ended.

use super::*;

/// Installs the CRD (idempotent: server-side apply) and waits until it is served.
pub async fn install_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    crate::support::operator::install_crd(cp).await
}

/// An AgentDynamics whose generate body is unique to `tag`: the tag is both `spec.regenerate`
/// and part of `spec.imageUrl`, so every user change is a different (agent, body) at the API.
pub fn object(name: &str, agent: &str, tag: &str, orphan: bool) -> anyhow::Result<AgentDynamics> {
    let mut spec = json!({
        "agentId": agent,
        "imageUrl": image_url(agent, tag),
        "regenerate": tag,
    });
    if orphan {
        spec["deletionPolicy"] = json!("Orphan");
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "dynamics.bithuman.ai/v1alpha1",
        "kind": "AgentDynamics",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

pub fn image_url(agent: &str, tag: &str) -> String {
    format!("https://example.com/chaos/{agent}/{tag}.jpg")
}

/// Merge patch of the generate inputs to a new unique `tag`.
pub fn edit_patch(agent: &str, tag: &str) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"spec": {"regenerate": tag, "imageUrl": image_url(agent, tag)}}))
}

/// Reason of a condition that is True, if any.
pub fn true_condition(obj: &AgentDynamics, type_: &str) -> Option<(String, String)> {
    let c = obj.status.as_ref()?.condition(type_)?;
    (c.status == "True").then(|| (c.reason.clone(), c.message.clone()))
}

/// How an object ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndState {
    /// Ready for its current spec: observedGeneration current and the generate inputs of the
    /// last accepted generation are those of the spec.
    Converged,
    /// Stalled for its current spec, with this reason.
    Stalled(String),
    /// Anything else (still working, or status for an older spec): `why`.
    Open(String),
}

pub fn end_state(obj: &AgentDynamics) -> EndState {
    let generation = obj.metadata.generation;
    let Some(status) = obj.status.as_ref() else {
        return EndState::Open("no status".into());
    };
    if status.observed_generation != generation {
        return EndState::Open(format!(
            "observedGeneration {:?} behind generation {:?}",
            status.observed_generation, generation
        ));
    }
    if let Some((reason, _)) = true_condition(obj, "Stalled") {
        return EndState::Stalled(reason);
    }
    if status.is_ready() {
        let want = dynamics_operator::reconcile::desired::inputs_hash(&obj.spec);
        if status.generate_hash.as_deref() == Some(want.as_str()) {
            return EndState::Converged;
        }
        return EndState::Open(format!(
            "Ready, but generateHash {:?} is not the spec's {want}",
            status.generate_hash
        ));
    }
    let ready = status
        .condition("Ready")
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default();
    EndState::Open(format!("not Ready ({ready})"))
}
