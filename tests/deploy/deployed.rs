//! The operator as its Deployment runs it (args, env, Secret volumes), and the scenario it must
//! get through: create with a Secret ref, spec update, delete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim;
use dynamics_operator::sim::{SimConfig, SimHandle};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value as Json};

use crate::render::container;
use crate::support::operator::metrics_url_in;
use crate::support::process::ManagedChild;
use crate::{OPERATOR_SECRET, TEAM_SECRET};

/// The `operator` container of `deployment` as a local process: its args and env, with the
/// downward API filled in, Secret volumes written to `dir` (paths in env rewritten), and
/// `overrides` applied (the API URL, the metrics address, the kubeconfig). `env -i`: nothing
/// leaks in from the test's own environment.
pub fn start_as_deployed(
    deployment: &Json,
    pod: (&str, &str),
    dir: &Path,
    overrides: &[(&str, String)],
) -> ManagedChild {
    let spec = &deployment["spec"]["template"]["spec"];
    let c = container(deployment, "operator");
    assert!(
        c["command"].is_null(),
        "the image's entrypoint is the binary"
    );
    let secrets: BTreeMap<(&str, &str), &str> =
        [(("bithuman-api", "api-secret"), OPERATOR_SECRET)].into();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let secret = &volume["secret"];
        assert!(
            secret.is_object(),
            "only Secret volumes are expected: {volume}"
        );
        let local = dir.join(format!("{}-{}", pod.0, m["name"].as_str().unwrap()));
        std::fs::create_dir_all(&local).unwrap();
        for item in secret["items"].as_array().unwrap() {
            let key = (
                secret["secretName"].as_str().unwrap(),
                item["key"].as_str().unwrap(),
            );
            let value = secrets
                .get(&key)
                .unwrap_or_else(|| panic!("no test value for {key:?}"));
            std::fs::write(local.join(item["path"].as_str().unwrap()), value).unwrap();
        }
        mounts.push((m["mountPath"].as_str().unwrap().to_string(), local));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let mut v = v.to_string();
            for (mount, local) in &mounts {
                if let Some(rest) = v.strip_prefix(mount.as_str()) {
                    v = format!("{}{rest}", local.display());
                }
            }
            v
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.0.to_string(),
                Some("metadata.namespace") => pod.1.to_string(),
                _ => panic!("unexpected env source: {e}"),
            }
        };
        env.push((name, value));
    }
    for (name, value) in overrides {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value.clone()));
    }
    let mut args: Vec<String> = vec!["-i".into()];
    args.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    args.push(env!("CARGO_BIN_EXE_dynamics-operator").to_string());
    args.extend(
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    let log = dir.join(format!("{}.log", pod.0));
    ManagedChild::spawn(pod.0, Path::new("/usr/bin/env"), &args, &log, &[])
        .expect("start the operator")
}

/// Where the operator logging to `log` serves /metrics, once it has said so.
pub fn metrics_url(log: &Path) -> Option<String> {
    metrics_url_in(&std::fs::read_to_string(log).ok()?)
}

pub async fn start_sim() -> SimHandle {
    sim::start(SimConfig {
        secret: OPERATOR_SECRET.into(),
        extra_secrets: vec![TEAM_SECRET.into()],
        generation_time: Duration::from_millis(300),
        max_concurrent: 0,
        ..SimConfig::default()
    })
    .await
    .expect("simulator")
}

pub fn agent(name: &str, agent_id: &str, secret_ref: bool) -> AgentDynamics {
    let mut spec = json!({"agentId": agent_id, "motionPrompts": ["wave", "nod"]});
    if secret_ref {
        spec["apiSecretRef"] = json!({"name": "team-bithuman", "key": "api-secret"});
    }
    serde_json::from_value(json!({
        "apiVersion": "dynamics.bithuman.ai/v1alpha1",
        "kind": "AgentDynamics",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

pub async fn create_team_secret(client: &kube::Client, ns: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "team-bithuman", "labels": {"dynamics.bithuman.ai/api-secret": "true"}},
        "stringData": {"api-secret": TEAM_SECRET},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the team Secret");
}

/// Waits for `done`, giving up early (Err) when `abort` says the outcome is already known.
pub async fn step<F, Fut>(
    what: &str,
    timeout: Duration,
    abort: &dyn Fn() -> bool,
    mut done: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if done().await {
            return Ok(());
        }
        if abort() {
            return Err(format!("{what}: stopped early, the failure is visible"));
        }
        if start.elapsed() > timeout {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn ready_at(api: &Api<AgentDynamics>, name: &str, generation: i64) -> bool {
    match api.get_opt(name).await {
        Ok(Some(obj)) => {
            let status = obj.status.unwrap_or_default();
            obj.metadata.generation == Some(generation)
                && status.is_ready()
                && status.observed_generation == Some(generation)
        }
        _ => false,
    }
}

/// Create, update the spec, delete: Ok, or the first step that did not happen.
pub async fn scenario(
    api: &Api<AgentDynamics>,
    name: &str,
    agent_id: &str,
    timeout: Duration,
    abort: &dyn Fn() -> bool,
) -> Result<(), String> {
    api.create(&PostParams::default(), &agent(name, agent_id, true))
        .await
        .map_err(|e| format!("create: {e}"))?;
    step("Ready after create", timeout, abort, || {
        ready_at(api, name, 1)
    })
    .await?;
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"imageUrl": "https://example.com/agent-v2.jpg"}})),
    )
    .await
    .map_err(|e| format!("update: {e}"))?;
    step("Ready after the spec update", timeout, abort, || {
        ready_at(api, name, 2)
    })
    .await?;
    api.delete(name, &DeleteParams::default())
        .await
        .map_err(|e| format!("delete: {e}"))?;
    step("gone after delete", timeout, abort, || async {
        matches!(api.get_opt(name).await, Ok(None))
    })
    .await
}
