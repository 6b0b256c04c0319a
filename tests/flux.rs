//! The Flux example (deploy/flux): what it points at exists, the HelmRelease's values pass the
//! chart's schema, and the agents it applies read as Flux's `wait: true` health check reads them
//! (kstatus, as tests/health_engines.rs runs it): a converged agent and a suspended one are both
//! Current, so the Kustomization completes.

mod support;

use std::path::Path;
use std::time::Duration;

use dynamics_operator::resource::validate::parse_agent_dynamics;
use dynamics_operator::sim::SimConfig;
use serde_json::{json, Value as Json};
use support::operator::{is_ready, ready_reason, Env};
use support::tools::{find, kustomize, parse_docs, run, tool, ROOT};

fn flux_objects() -> Vec<Json> {
    parse_docs(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/flux/kustomizations.yaml")).unwrap(),
    )
}

fn helm_release() -> Json {
    find(
        &kustomize("deploy/flux/operator"),
        "HelmRelease",
        "dynamics-operator",
    )
    .clone()
}

#[test]
fn flux_objects_point_at_this_repository_its_paths_and_its_chart() {
    let docs = flux_objects();
    let source = find(&docs, "GitRepository", "dynamics-operator");
    assert_eq!(source["apiVersion"], "source.toolkit.fluxcd.io/v1");
    let chart_yaml: Json = serde_saphyr::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("charts/dynamics-operator/Chart.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(source["spec"]["url"], chart_yaml["home"]);
    for name in ["dynamics-operator", "agents"] {
        let k = find(&docs, "Kustomization", name);
        assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
        assert_eq!(k["spec"]["sourceRef"]["name"], "dynamics-operator");
        assert_eq!(k["spec"]["wait"], json!(true), "{name} waits for health");
        let path = k["spec"]["path"].as_str().unwrap().trim_start_matches("./");
        assert!(!kustomize(path).is_empty(), "{path} builds");
    }
    let agents = find(&docs, "Kustomization", "agents");
    assert_eq!(
        agents["spec"]["dependsOn"],
        json!([{"name": "dynamics-operator"}])
    );

    let release = helm_release();
    assert_eq!(release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    let chart = &release["spec"]["chart"]["spec"];
    let chart_dir = chart["chart"].as_str().unwrap().trim_start_matches("./");
    assert!(Path::new(ROOT).join(chart_dir).join("Chart.yaml").exists());
    assert_eq!(chart["sourceRef"]["kind"], "GitRepository");
    assert_eq!(chart["sourceRef"]["name"], "dynamics-operator");
    // Older charts kept the CRDs in crds/, which Helm never upgrades; Flux does when asked.
    assert_eq!(release["spec"]["install"]["crds"], "CreateReplace");
    assert_eq!(release["spec"]["upgrade"]["crds"], "CreateReplace");
}

#[test]
fn the_helm_release_values_pass_the_charts_schema() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        dynamics_operator::resource::to_yaml(&helm_release()["spec"]["values"]).unwrap(),
    )
    .unwrap();
    let chart = Path::new(ROOT).join("charts/dynamics-operator");
    let out = std::process::Command::new(tool("helm"))
        .args(["template", "dynamics-operator"])
        .arg(&chart)
        .args(["-n", "dynamics-operator", "-f"])
        .arg(&values)
        .args(["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"])
        .env("HELM_CACHE_HOME", dir.path().join("cache"))
        .env("HELM_CONFIG_HOME", dir.path().join("config"))
        .env("HELM_DATA_HOME", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template with the HelmRelease's values: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_docs(&String::from_utf8(out.stdout).unwrap());
    let deployment = find(&docs, "Deployment", "dynamics-operator");
    assert_eq!(deployment["spec"]["replicas"], json!(2));
    find(&docs, "ServiceMonitor", "dynamics-operator");
    find(&docs, "PrometheusRule", "dynamics-operator");
}

/// kstatus on each live object: (name, status).
fn kstatus(objects: &[(&str, Json)]) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = objects
        .iter()
        .map(|(name, obj)| {
            let path = dir.path().join(format!("{name}.json"));
            std::fs::write(&path, obj.to_string()).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    let out = run(&tool("kstatus"), &files);
    assert!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_wait_completes_on_the_example_agents_suspended_one_included() {
    let docs = kustomize("deploy/flux/agents");
    let agents: Vec<&Json> = docs
        .iter()
        .filter(|d| d["kind"] == "AgentDynamics")
        .collect();
    assert_eq!(agents.len(), 2);
    for a in &agents {
        parse_agent_dynamics((*a).clone()).unwrap_or_else(|e| panic!("{a}: {e:?}"));
    }
    let env = Env::start(
        "flux",
        SimConfig {
            generation_time: Duration::from_millis(300),
            ..SimConfig::default()
        },
    )
    .await;
    // The objects as the Kustomization applies them, in the test's namespace.
    let mut yaml = String::new();
    for a in &agents {
        let mut a = (*a).clone();
        a["metadata"].as_object_mut().unwrap().remove("namespace");
        yaml.push_str(&dynamics_operator::resource::to_yaml(&a).unwrap());
        yaml.push_str("---\n");
    }
    env.apply(&yaml);
    env.wait("support-agent", "Ready", is_ready).await;
    env.wait("paused-agent", "Suspended", |o| {
        ready_reason(o).as_deref() == Some("Suspended")
    })
    .await;
    let live = |name: &str| -> Json {
        serde_json::from_str(
            &env.cp
                .kubectl_ok(["get", "agentdynamics", name, "-n", &env.ns, "-o", "json"])
                .unwrap(),
        )
        .unwrap()
    };
    let read = kstatus(&[
        ("support-agent", live("support-agent")),
        ("paused-agent", live("paused-agent")),
    ]);
    assert_eq!(
        read,
        [
            (format!("{}/support-agent", env.ns), "Current".to_string()),
            (format!("{}/paused-agent", env.ns), "Current".to_string()),
        ],
        "Flux's wait: true completes only when every object is Current\n{}",
        env.logs()
    );
}
