//! The user's answers about money, as annotations the controller acts on:
//! `dynamics-operator resolve NAMESPACE/NAME --accept|--retry` answers a stall once (see
//! `resource::RESOLVE`); `dynamics-operator approve NAMESPACE/NAME` approves the paid change the
//! spec asks for now, by its key (see `resource::APPROVE`).

use anyhow::Context as _;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::cli::{ApproveArgs, ResolveArgs};
use crate::reconcile::desired::{inputs_hash, normalized_inputs};
use crate::resource::{AgentDynamics, APPROVE, RESOLVE};

/// The annotation value: the choice, made new by the time so that each command resolves once.
pub fn resolve_value(accept: bool, now: jiff::Timestamp) -> String {
    let choice = if accept { "accept" } else { "retry" };
    format!(
        "{choice}@{}",
        jiff::Timestamp::from_second(now.as_second()).unwrap_or(now)
    )
}

/// NAMESPACE/NAME, or an error that names the argument.
pub fn parse_object(object: &str) -> anyhow::Result<(&str, &str)> {
    match object.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns, name))
        }
        _ => anyhow::bail!(
            "OBJECT must be NAMESPACE/NAME (for example agents/support-agent), got {object:?}"
        ),
    }
}

pub async fn resolve(args: ResolveArgs) -> anyhow::Result<()> {
    let (namespace, name) = parse_object(&args.object)?;
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or the in-cluster service account)")?;
    let api: Api<AgentDynamics> = Api::namespaced(client, namespace);
    let value = resolve_value(args.accept, jiff::Timestamp::now());
    let patch = serde_json::json!({"metadata": {"annotations": {RESOLVE: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating AgentDynamics {namespace}/{name}"))?;
    println!(
        "AgentDynamics {namespace}/{name} annotated {RESOLVE}={value}; the operator acts on it at its next pass (kubectl -n {namespace} describe agdyn {name})"
    );
    Ok(())
}

/// Approve the generation the object's spec asks for as it stands: its key, and no other.
pub async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let (namespace, name) = parse_object(&args.object)?;
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or the in-cluster service account)")?;
    let api: Api<AgentDynamics> = Api::namespaced(client, namespace);
    let obj = api
        .get(name)
        .await
        .with_context(|| format!("reading AgentDynamics {namespace}/{name}"))?;
    let key = inputs_hash(&obj.spec);
    let inputs = serde_json::to_string(&normalized_inputs(&obj.spec)).unwrap_or_default();
    // Only while the spec is the one read: an edit in between would approve inputs never shown.
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": obj.metadata.resource_version,
        "annotations": {APPROVE: key},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating AgentDynamics {namespace}/{name} (edited meanwhile? run the command again)"))?;
    println!(
        "AgentDynamics {namespace}/{name}: approved one generation (250 credits) for key {key}, inputs {inputs}; a later edit needs its own approval"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_new_each_time_and_objects_are_checked() {
        let t = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(resolve_value(true, t), "accept@2027-01-15T08:00:00Z");
        assert_eq!(resolve_value(false, t), "retry@2027-01-15T08:00:00Z");
        assert_eq!(parse_object("agents/a").unwrap(), ("agents", "a"));
        for bad in ["a", "/a", "agents/", "a/b/c"] {
            let err = parse_object(bad).unwrap_err().to_string();
            assert!(err.contains("NAMESPACE/NAME"), "{err}");
        }
    }
}
