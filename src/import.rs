//! `dynamics-operator import AGENT_ID...`: bring agents that already exist under management
//! without paying for them again. Each agent is read (GET only) and written out as an
//! AgentDynamics manifest to commit to Git: applied, its object adopts the dynamics the agent
//! has (nothing is bought). An agent with no dynamics is written with `managementPolicy:
//! Observe`, since managing it would buy its first generation.

use anyhow::Context as _;

use crate::api::{DynamicsClient, DynamicsState, RemoteStatus};
use crate::cli::ImportArgs;
use crate::reconcile::plan::url_identity;

/// A Kubernetes name for the agent: lower case, `-` for what names may not hold.
pub fn object_name(agent_id: &str) -> String {
    let mapped: String = agent_id
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' => c,
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let name = format!("agent-{trimmed}");
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// The manifest for one agent as GET showed it.
pub fn manifest(
    agent_id: &str,
    remote: &DynamicsState,
    namespace: Option<&str>,
    observe: bool,
    today: &str,
) -> String {
    let has = remote.has_dynamics();
    let observe = observe || !has;
    let shows = if has {
        format!(
            "status {}, model {}, {} gesture(s)",
            remote.status.as_ref().map_or("none", RemoteStatus::as_str),
            remote.model_url.as_deref().map_or("none", url_identity),
            remote.gestures.len()
        )
    } else {
        "no dynamics".to_string()
    };
    let what = match (observe, has) {
        (true, false) => "Managing it would buy its first generation (250 credits), so it only observes; set managementPolicy: Manage to buy on purpose.",
        (true, true) => "It only observes; remove managementPolicy to take it over (its dynamics are adopted, nothing is bought).",
        (false, _) => "Applying it adopts these dynamics: nothing is bought. Add generate inputs (imageUrl, model, motionPrompts, ...) only to buy new ones on purpose.",
    };
    let mut out = format!(
        "# Imported {today}: the API showed {shows} for agent {agent_id}.\n# {what}\napiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: {}\n",
        object_name(agent_id)
    );
    if let Some(ns) = namespace {
        out.push_str(&format!("  namespace: {ns}\n"));
    }
    out.push_str(&format!(
        "spec:\n  agentId: {}\n",
        serde_json::to_string(agent_id).unwrap_or_default()
    ));
    if observe {
        out.push_str("  managementPolicy: Observe\n");
    }
    out
}

pub async fn run(args: ImportArgs) -> anyhow::Result<i32> {
    let config = args.api.checked_client_config()?;
    let secret = args.api.secret()?.context(
        "no API secret: set BITHUMAN_API_SECRET or --api-secret-file (import reads each agent with it)",
    )?;
    let client = DynamicsClient::new(config).context("building the API client")?;
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let mut failed = 0;
    let mut documents = Vec::new();
    for agent in &args.agents {
        match client.get(&secret, agent).await {
            Ok(remote) => documents.push(manifest(
                agent,
                &remote,
                args.namespace.as_deref(),
                args.observe,
                &today,
            )),
            Err(err) => {
                failed += 1;
                eprintln!("error: agent {agent}: {err}");
            }
        }
    }
    print!("{}", documents.join("---\n"));
    Ok(if failed > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::AgentDynamics;

    fn state(status: Option<&str>, url: Option<&str>) -> DynamicsState {
        DynamicsState {
            agent_id: "A91XMB7113".into(),
            status: status.map(RemoteStatus::parse),
            model_url: url.map(str::to_string),
            gestures: Default::default(),
            error_message: None,
        }
    }

    #[test]
    fn manifests_adopt_what_exists_and_only_observe_what_would_cost() {
        let rows = [
            (
                "dynamics: managed (adopted)",
                state(Some("ready"), Some("https://m/1.bin?sig=x")),
                false,
                false,
            ),
            (
                "dynamics, --observe",
                state(Some("ready"), Some("https://m/1.bin")),
                true,
                true,
            ),
            ("no dynamics: observe only", state(None, None), false, true),
        ];
        for (name, remote, observe_flag, observes) in rows {
            let text = manifest(
                "A91XMB7113",
                &remote,
                Some("agents"),
                observe_flag,
                "2026-12-07",
            );
            let obj: AgentDynamics =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(obj.spec.agent_id, "A91XMB7113", "{name}");
            assert_eq!(obj.metadata.namespace.as_deref(), Some("agents"), "{name}");
            assert_eq!(
                obj.metadata.name.as_deref(),
                Some("agent-a91xmb7113"),
                "{name}"
            );
            assert_eq!(!obj.spec.management_policy.is_manage(), observes, "{name}");
            assert!(
                obj.spec.image_url.is_none() && obj.spec.regenerate.is_none(),
                "{name}: no inputs to buy"
            );
            assert!(
                !text.contains("sig=x"),
                "a signed URL's signature is not copied: {text}"
            );
        }
        assert_eq!(object_name("Agent_01.x"), "agent-agent-01-x");
        assert!(object_name(&"Z".repeat(100)).len() <= 63);
    }
}
