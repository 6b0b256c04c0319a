//! `dynamics-operator resolve NAMESPACE/NAME --accept|--retry`: the user's answer to a stall
//! about money, as an annotation the controller acts on once (see `resource::RESOLVE`).

use anyhow::Context as _;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use crate::cli::ResolveArgs;
use crate::resource::{AgentDynamics, RESOLVE};

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
