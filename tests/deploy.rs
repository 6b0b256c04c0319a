//! deploy/ against a real API server (the control plane of tests/controlplane, always a local
//! one: these tests install cluster-scoped RBAC and run an operator that watches every namespace,
//! which they must not do to a cluster of yours).
//!
//! * The manifests: the CRD is the committed one, the Deployment is hardened and wired to the
//!   binary's real flags, overlays do what they say, the example Secret is only an example.
//! * `kubectl apply --dry-run=server -k` of the base and every overlay, with no Pod Security
//!   warning (the operator's namespace enforces "restricted").
//! * Least privilege, proven: the operator binary runs as the deploy's ServiceAccount (a token
//!   from the TokenRequest API) with the Deployment's own configuration through create, spec
//!   update and delete with leader election; the API server's audit log shows every verb the
//!   roles grant was used and none was refused. Then each granted verb is removed in turn and the
//!   operator fails without it (refused in the audit log, and "forbidden" in its log or the
//!   scenario does not complete).
//! * The operator writes only status and its finalizer (managedFields), never spec, labels or
//!   annotations: what Argo CD compares stays as applied.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, SimConfig, SimHandle};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value as Json};
use support::controlplane::ControlPlane;
use support::process::ManagedChild;
use support::wait::wait_for;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const OPERATOR_NS: &str = "dynamics-operator";
const SERVICE_ACCOUNT: &str = "dynamics-operator";
const OPERATOR_SECRET: &str = "deploy-test-operator-secret";
const TEAM_SECRET: &str = "deploy-test-team-secret";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Rendering

fn kubectl_bin() -> PathBuf {
    let dir = std::env::var_os("DYNAMICS_CONTROLPLANE_BIN")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(support::controlplane::default_bin_dir);
    let kubectl = dir.join("kubectl");
    assert!(
        kubectl.is_file(),
        "control plane binaries missing: run tests/controlplane/build.sh (no kubectl at {})",
        kubectl.display()
    );
    kubectl
}

fn parse_docs(yaml: &str) -> Vec<Json> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let value: Json = serde::Deserialize::deserialize(doc).expect("YAML document");
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize <dir>` (the kustomize built into the pinned kubectl), as documents.
fn render(dir: &str) -> Vec<Json> {
    let out = Command::new(kubectl_bin())
        .arg("kustomize")
        .arg(Path::new(ROOT).join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(&String::from_utf8(out.stdout).unwrap())
}

fn find<'a>(docs: &'a [Json], kind: &str, name: &str) -> &'a Json {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn kinds(docs: &[Json]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn container<'a>(deployment: &'a Json, name: &str) -> &'a Json {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env_value<'a>(container: &'a Json, name: &str) -> Option<&'a Json> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn rbac_docs(docs: &[Json]) -> Vec<Json> {
    docs.iter()
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap())
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Static checks of the manifests

#[test]
fn deploy_crd_is_the_committed_crd() {
    let committed = std::fs::read(Path::new(ROOT).join("crds/agentdynamics.yaml")).unwrap();
    let copy = std::fs::read(Path::new(ROOT).join("deploy/base/crd/agentdynamics.yaml")).unwrap();
    assert!(
        committed == copy,
        "deploy/base/crd/agentdynamics.yaml differs from crds/agentdynamics.yaml: \
         cp crds/agentdynamics.yaml deploy/base/crd/agentdynamics.yaml"
    );
    // And kustomize ships it unchanged.
    let base = render("deploy");
    let crd = find(
        &base,
        "CustomResourceDefinition",
        "agentdynamics.dynamics.bithuman.ai",
    );
    let want: Json = serde_yaml::from_slice(&committed).unwrap();
    assert!(
        numbers_as_f64(crd) == numbers_as_f64(&want),
        "kustomize changed the CRD"
    );
}

/// 10 and 10.0 are the same number to the API server.
fn numbers_as_f64(value: &Json) -> Json {
    match value {
        Json::Number(n) => json!(n.as_f64().unwrap()),
        Json::Array(items) => Json::Array(items.iter().map(numbers_as_f64).collect()),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn base_installs_a_hardened_operator_without_any_secret() {
    let docs = render("deploy");
    let want: BTreeSet<String> = [
        "Namespace/dynamics-operator",
        "CustomResourceDefinition/agentdynamics.dynamics.bithuman.ai",
        "ServiceAccount/dynamics-operator",
        "ClusterRole/dynamics-operator",
        "ClusterRoleBinding/dynamics-operator",
        "Role/dynamics-operator-leader-election",
        "RoleBinding/dynamics-operator-leader-election",
        "Deployment/dynamics-operator",
        "Service/dynamics-operator-metrics",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        kinds(&docs),
        want,
        "what `kubectl apply -k deploy/` installs"
    );
    for doc in &docs {
        let namespaced = ![
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ]
        .contains(&doc["kind"].as_str().unwrap());
        if namespaced {
            assert_eq!(doc["metadata"]["namespace"], OPERATOR_NS, "{}", doc["kind"]);
        }
    }
    let ns = find(&docs, "Namespace", OPERATOR_NS);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    let deployment = find(&docs, "Deployment", "dynamics-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "one replica without leader election must never overlap with its successor"
    );
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(deployment, "operator");
    assert_eq!(c["image"], "ghcr.io/bithuman/dynamics-operator:dev");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["runAsNonRoot"], true);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource} missing"
            );
        }
    }
    // Probes on the metrics port, which is where --metrics-addr / METRICS_ADDR listens.
    let port = c["ports"][0]["containerPort"].as_i64().unwrap();
    assert_eq!(c["ports"][0]["name"], "metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics");
    }
    let metrics_addr = env_value(c, "METRICS_ADDR").unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(
        metrics_addr.ends_with(&format!(":{port}")),
        "{metrics_addr}"
    );
    let service = find(&docs, "Service", "dynamics-operator-metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels(deployment)[k],
            v,
            "the Service selects the operator's pods"
        );
    }
    // The API secret: a file from the Secret bithuman-api/api-secret, not an env value.
    let file = env_value(c, "BITHUMAN_API_SECRET_FILE").unwrap()["value"]
        .as_str()
        .unwrap();
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("BITHUMAN_API_SECRET_FILE lies in a mounted volume");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "bithuman-api");
    let relative = file
        .strip_prefix(mount["mountPath"].as_str().unwrap())
        .unwrap()
        .trim_start_matches('/');
    assert!(
        volume["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["key"] == "api-secret" && i["path"] == relative),
        "the key api-secret is mounted at {file}"
    );
    assert!(env_value(c, "BITHUMAN_API_SECRET").is_none());
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(
            env_value(c, name).unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            path
        );
    }
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "the base must not ship a Secret"
    );
}

fn pod_labels(deployment: &Json) -> &serde_json::Map<String, Json> {
    deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap()
}

#[test]
fn overlays_do_what_they_say() {
    let base = render("deploy");
    let base_rbac = rbac_docs(&base);

    let ha = render("deploy/overlays/ha");
    let deployment = find(&ha, "Deployment", "dynamics-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let c = container(deployment, "operator");
    assert_eq!(env_value(c, "LEADER_ELECT").unwrap()["value"], "true");
    let pdb = find(&ha, "PodDisruptionBudget", "dynamics-operator");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "controller"
    );
    assert_eq!(
        rbac_docs(&ha),
        base_rbac,
        "the ha overlay uses the base's RBAC"
    );

    let simulator = render("deploy/overlays/simulator");
    assert_eq!(rbac_docs(&simulator), base_rbac);
    let sim = find(&simulator, "Deployment", "dynamics-api-simulator");
    let sim_c = container(sim, "simulator");
    assert_eq!(sim_c["args"][0], "sim");
    assert_eq!(
        sim_c["image"],
        container(
            find(&simulator, "Deployment", "dynamics-operator"),
            "operator"
        )["image"],
        "the simulator is the same image"
    );
    let sim_port = sim_c["ports"][0]["containerPort"].as_i64().unwrap();
    assert!(sim_c["args"]
        .as_array()
        .unwrap()
        .contains(&json!(format!("--addr=0.0.0.0:{sim_port}"))));
    let service = find(&simulator, "Service", "dynamics-api-simulator");
    let service_port = service["spec"]["ports"][0]["port"].as_i64().unwrap();
    let op = container(
        find(&simulator, "Deployment", "dynamics-operator"),
        "operator",
    );
    assert_eq!(
        env_value(op, "BITHUMAN_API_URL").unwrap()["value"],
        format!("http://dynamics-api-simulator.{OPERATOR_NS}.svc:{service_port}")
    );
    // Both read the same generated Secret, so the simulator accepts the operator's secret.
    let secret = find(&simulator, "Secret", "bithuman-api");
    assert_eq!(secret["metadata"]["namespace"], OPERATOR_NS);
    assert!(secret["data"]["api-secret"].is_string());
    let from = &env_value(sim_c, "BITHUMAN_API_SECRET").unwrap()["valueFrom"]["secretKeyRef"];
    assert_eq!(from["name"], "bithuman-api");
    assert_eq!(from["key"], "api-secret");
}

/// Every environment variable and flag the Deployments set is one the binary reads (a typo would
/// otherwise be silently ignored by clap's env handling or crash the pod).
#[test]
fn deployments_use_only_settings_the_binary_knows() {
    let bin = env!("CARGO_BIN_EXE_dynamics-operator");
    let help = |sub: &str| {
        let out = Command::new(bin).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let run_help = help("run");
    let sim_help = help("sim");
    for (dir, deployment, name, help) in [
        ("deploy", "dynamics-operator", "operator", &run_help),
        (
            "deploy/overlays/ha",
            "dynamics-operator",
            "operator",
            &run_help,
        ),
        (
            "deploy/overlays/simulator",
            "dynamics-operator",
            "operator",
            &run_help,
        ),
        (
            "deploy/overlays/simulator",
            "dynamics-api-simulator",
            "simulator",
            &sim_help,
        ),
    ] {
        let docs = render(dir);
        let c = container(find(&docs, "Deployment", deployment), name);
        for e in c["env"].as_array().into_iter().flatten() {
            let var = e["name"].as_str().unwrap();
            assert!(
                help.contains(&format!("[env: {var}")),
                "{dir}: {deployment} sets {var}, which `dynamics-operator {} --help` does not list",
                c["args"][0].as_str().unwrap()
            );
        }
        for arg in c["args"].as_array().unwrap().iter().skip(1) {
            let flag = arg.as_str().unwrap().split('=').next().unwrap();
            assert!(help.contains(flag), "{dir}: unknown flag {flag}");
        }
    }
}

#[test]
fn the_example_secret_is_a_placeholder_outside_every_kustomization() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/secret.example.yaml")).unwrap();
    let docs = parse_docs(&text);
    assert_eq!(docs.len(), 1);
    let secret = &docs[0];
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "bithuman-api");
    assert_eq!(secret["metadata"]["namespace"], OPERATOR_NS);
    let value = secret["stringData"]["api-secret"].as_str().unwrap();
    assert!(value.contains("REPLACE-ME"), "{value}");
    for dir in ["deploy", "deploy/overlays/ha", "deploy/argocd/example"] {
        assert!(
            !render(dir).iter().any(|d| d["kind"] == "Secret"),
            "{dir} must not ship a Secret"
        );
    }
}

#[test]
fn argocd_application_orders_crd_operator_then_agents() {
    let app = parse_docs(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/argocd/application.yaml")).unwrap(),
    );
    assert_eq!(app.len(), 1);
    let app = &app[0];
    assert_eq!(app["kind"], "Application");
    assert!(
        app["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .contains(&json!("resources-finalizer.argocd.argoproj.io")),
        "deleting the Application must delete its resources (in reverse wave order)"
    );
    let path = app["spec"]["source"]["path"].as_str().unwrap();
    let docs = render(path);
    let wave = |d: &Json| -> i64 {
        d["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap_or_else(|| panic!("{} {} has no sync wave", d["kind"], d["metadata"]["name"]))
            .parse()
            .unwrap()
    };
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "agentdynamics.dynamics.bithuman.ai",
    );
    assert!(
        crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
            .as_str()
            .unwrap()
            .contains("Delete=false")
    );
    let operator = find(&docs, "Deployment", "dynamics-operator");
    let agents: Vec<&Json> = docs
        .iter()
        .filter(|d| d["kind"] == "AgentDynamics")
        .collect();
    assert!(!agents.is_empty());
    let first_agent_wave = agents.iter().map(|a| wave(a)).min().unwrap();
    assert!(wave(crd) < first_agent_wave && wave(operator) < first_agent_wave);
    for doc in &docs {
        if doc["kind"] != "AgentDynamics" {
            assert!(
                wave(doc) < first_agent_wave,
                "{} {} must sync before the agents and be deleted after them",
                doc["kind"],
                doc["metadata"]["name"]
            );
        }
    }
    for agent in agents {
        assert!(
            agent["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
                .as_str()
                .unwrap()
                .contains("SkipDryRunOnMissingResource=true")
        );
    }
    // The operator and RBAC in the example are exactly the base's (waves aside).
    let strip = |docs: &[Json]| -> Vec<Json> {
        rbac_docs(docs)
            .into_iter()
            .map(|mut d| {
                d["metadata"].as_object_mut().unwrap().remove("annotations");
                d
            })
            .collect()
    };
    assert_eq!(strip(&docs), strip(&render("deploy")));
}

// ---------------------------------------------------------------------------------------------
// Control planes with an audit log

/// Records every request made by a ServiceAccount (the operator's), with its response code.
const AUDIT_POLICY: &str =
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
rules:\n- level: Metadata\n  userGroups: [\"system:serviceaccounts\"]\n- level: None\n";

struct Audited {
    cp: ControlPlane,
    audit_log: PathBuf,
    dir: PathBuf,
}

async fn start_audited() -> Audited {
    let dir = tempfile::Builder::new()
        .prefix("dynamics-deploy-audit-")
        .tempdir()
        .unwrap()
        .keep();
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY).unwrap();
    let audit_log = dir.join("audit.log");
    let cp = ControlPlane::builder()
        .allow_existing(false)
        .apiserver_arg(format!("--audit-policy-file={}", policy.display()))
        .apiserver_arg(format!("--audit-log-path={}", audit_log.display()))
        .apiserver_arg("--audit-log-mode=blocking")
        .start()
        .await
        .expect("the control plane must start (see tests/controlplane/build.sh)");
    let audited = Audited { cp, audit_log, dir };
    audited.install_crd().await;
    audited
}

impl Drop for Audited {
    fn drop(&mut self) {
        self.cp.shutdown();
        self.remove_dir();
    }
}

impl Audited {
    fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn install_crd(&self) {
        let crd = find(
            &render("deploy"),
            "CustomResourceDefinition",
            "agentdynamics.dynamics.bithuman.ai",
        )
        .clone();
        self.cp
            .apply_yaml(&serde_json::to_string(&crd).unwrap())
            .expect("install the CRD from deploy/");
        self.cp
            .wait_crd_established(
                "agentdynamics.dynamics.bithuman.ai",
                Duration::from_secs(30),
            )
            .await
            .expect("CRD established");
    }

    /// The requests `user` made, as (group, resource[/subresource], verb) with response codes.
    fn requests(&self, user: &str) -> Vec<(Permission, u16)> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Json>(line).ok())
            .filter(|e| e["user"]["username"] == user)
            .filter_map(|e| {
                let code = e["responseStatus"]["code"].as_u64()? as u16;
                let r = &e["objectRef"];
                let mut resource = r["resource"].as_str()?.to_string();
                if let Some(sub) = r["subresource"].as_str() {
                    resource = format!("{resource}/{sub}");
                }
                Some((
                    Permission {
                        group: r["apiGroup"].as_str().unwrap_or("").to_string(),
                        resource,
                        verb: e["verb"].as_str()?.to_string(),
                    },
                    code,
                ))
            })
            .collect()
    }
}

/// One control plane shared by the tests below that isolate themselves by namespace.
async fn shared() -> &'static Audited {
    static SHARED: tokio::sync::OnceCell<Audited> = tokio::sync::OnceCell::const_new();
    extern "C" fn stop_shared() {
        if let Some(a) = SHARED.get() {
            a.cp.shutdown();
            a.remove_dir();
        }
    }
    SHARED
        .get_or_init(|| async {
            let a = start_audited().await;
            support::process::at_exit(stop_shared);
            a
        })
        .await
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Permission {
    group: String,
    resource: String,
    verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} ({group})", self.verb, self.resource)
    }
}

/// What RBAC rules grant, verb by verb.
fn granted(rules: &[Json]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert(Permission {
                        group: group.as_str().unwrap().to_string(),
                        resource: resource.as_str().unwrap().to_string(),
                        verb: verb.as_str().unwrap().to_string(),
                    });
                }
            }
        }
    }
    out
}

fn rules_of(docs: &[Json], kind: &str) -> Vec<Json> {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))["rules"]
        .as_array()
        .unwrap()
        .clone()
}

fn service_account_user(ns: &str) -> String {
    format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}")
}

/// The deploy's RBAC, moved to `ns` (ServiceAccount, Role) with cluster-scoped names made unique,
/// optionally without one verb of one rule.
fn rbac_in(docs: &[Json], ns: &str, without: Option<&Case>) -> Vec<Json> {
    let mut out = Vec::new();
    for mut doc in rbac_docs(docs) {
        let kind = doc["kind"].as_str().unwrap().to_string();
        if ns != OPERATOR_NS {
            match kind.as_str() {
                "ClusterRole" | "ClusterRoleBinding" => {
                    doc["metadata"]["name"] = json!(format!("dynamics-operator-{ns}"));
                }
                _ => doc["metadata"]["namespace"] = json!(ns),
            }
            if kind == "ClusterRoleBinding" {
                doc["roleRef"]["name"] = json!(format!("dynamics-operator-{ns}"));
            }
            if kind.ends_with("Binding") {
                for s in doc["subjects"].as_array_mut().unwrap() {
                    s["namespace"] = json!(ns);
                }
            }
        }
        if let Some(case) = without {
            if case.kind == kind {
                let rules = doc["rules"].as_array_mut().unwrap();
                let verbs = rules[case.rule]["verbs"].as_array_mut().unwrap();
                verbs.retain(|v| v != case.permission.verb.as_str());
                if verbs.is_empty() {
                    rules.remove(case.rule);
                }
            }
        }
        out.push(doc);
    }
    out
}

/// Apply RBAC and wait until the authorizer grants what it should (its cache lags a little), so
/// that the operator never sees a transient refusal.
fn install_rbac(cp: &ControlPlane, docs: &[Json], ns: &str) {
    let yaml: String = docs
        .iter()
        .map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap()))
        .collect();
    cp.apply_yaml(&yaml).expect("apply RBAC");
    let user = service_account_user(ns);
    let mut checks = Vec::new();
    for doc in docs {
        let scope = match doc["kind"].as_str().unwrap() {
            "ClusterRole" => None,
            "Role" => Some(ns),
            _ => continue,
        };
        for rule in doc["rules"].as_array().unwrap() {
            let names: Vec<&str> = rule["resourceNames"]
                .as_array()
                .map(|n| n.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            for p in granted(std::slice::from_ref(rule)) {
                let (resource, sub) = match p.resource.split_once('/') {
                    Some((r, s)) => (r.to_string(), Some(s.to_string())),
                    None => (p.resource.clone(), None),
                };
                let mut target = if p.group.is_empty() {
                    resource
                } else {
                    format!("{resource}.{}", p.group)
                };
                if let Some(name) = names.first() {
                    target = format!("{target}/{name}");
                }
                let mut args = vec!["auth".to_string(), "can-i".into(), p.verb.clone(), target];
                if let Some(sub) = sub {
                    args.push(format!("--subresource={sub}"));
                }
                args.push(format!("--as={user}"));
                match scope {
                    Some(ns) => args.extend(["-n".to_string(), ns.to_string()]),
                    None => args.push("--all-namespaces".into()),
                }
                checks.push(args);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for args in checks {
        while !cp.kubectl(&args).status.success() {
            assert!(
                Instant::now() < deadline,
                "RBAC never granted: kubectl {}",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A kubeconfig holding a TokenRequest token of the ServiceAccount: the operator authenticates
/// exactly as it does in a pod.
fn service_account_kubeconfig(cp: &ControlPlane, ns: &str, dir: &Path) -> PathBuf {
    let token = cp
        .kubectl_ok([
            "create",
            "token",
            SERVICE_ACCOUNT,
            "-n",
            ns,
            "--duration=2h",
        ])
        .expect("TokenRequest for the ServiceAccount");
    let path = dir.join(format!("{ns}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {:?}\n\
             users:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: sa\n\
             current-context: c\n",
            cp.server_url(),
            cp.ca_file().unwrap().display().to_string(),
            token.trim()
        ),
    )
    .unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// The operator as its Deployment runs it

/// The `operator` container of `deployment` as a local process: its args and env, with the
/// downward API filled in, Secret volumes written to `dir` (paths in env rewritten), and
/// `overrides` applied (the API URL, the metrics address, the kubeconfig). `env -i`: nothing
/// leaks in from the test's own environment.
fn start_as_deployed(
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

fn metrics_url(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("serving /metrics"))?;
    let start = line.find("127.0.0.1:")?;
    let port: String = line[start + 10..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(format!("http://127.0.0.1:{port}"))
}

async fn start_sim() -> SimHandle {
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

// ---------------------------------------------------------------------------------------------
// The scenario: create (with a Secret ref), spec update, delete

fn agent(name: &str, agent_id: &str, secret_ref: bool) -> AgentDynamics {
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

async fn create_team_secret(client: &kube::Client, ns: &str) {
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
async fn step<F, Fut>(
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

async fn ready_at(api: &Api<AgentDynamics>, name: &str, generation: i64) -> bool {
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
async fn scenario(
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

// ---------------------------------------------------------------------------------------------
// RBAC: the full scenario as the ServiceAccount, exactly as deployed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_as_its_service_account_uses_every_granted_verb_and_nothing_else() {
    let t0 = Instant::now();
    // Its own control plane: this operator watches every namespace, as deployed.
    let audited = start_audited().await;
    let cp = &audited.cp;
    let dir = tempfile::tempdir().unwrap();
    let ha = render("deploy/overlays/ha");
    let deployment = find(&ha, "Deployment", "dynamics-operator");
    let namespace = find(&ha, "Namespace", OPERATOR_NS);
    cp.apply_yaml(&serde_json::to_string(namespace).unwrap())
        .unwrap();
    install_rbac(cp, &rbac_docs(&ha), OPERATOR_NS);
    let kubeconfig = service_account_kubeconfig(cp, OPERATOR_NS, dir.path());
    let sim = start_sim().await;
    let client = cp.kube_client().await.unwrap();
    let ns = cp.create_namespace("agents").await.unwrap();
    create_team_secret(&client, &ns).await;

    // The ha overlay's Deployment: two replicas with leader election, as two processes.
    let overrides = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("BITHUMAN_API_URL", sim.url()),
        ("METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("RUST_LOG", "info,dynamics_operator=debug".to_string()),
    ];
    let mut replicas: Vec<ManagedChild> = (0..2)
        .map(|i| {
            start_as_deployed(
                deployment,
                (&format!("dynamics-operator-test-{i}"), OPERATOR_NS),
                dir.path(),
                &overrides,
            )
        })
        .collect();
    let logs = |replicas: &[ManagedChild]| -> String {
        replicas
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(8000)))
            .collect()
    };

    // The probes of the Deployment answer on the port it exposes.
    let http = reqwest::Client::new();
    for r in &replicas {
        let url = wait_for(
            "the metrics address in the log",
            Duration::from_secs(20),
            || async { Ok(metrics_url(&r.log)) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&replicas)));
        for probe in ["livenessProbe", "readinessProbe"] {
            let path = container(deployment, "operator")[probe]["httpGet"]["path"]
                .as_str()
                .unwrap()
                .to_string();
            wait_for(&format!("{probe} {path}"), Duration::from_secs(20), || {
                let (http, url, path) = (http.clone(), url.clone(), path.clone());
                async move {
                    let reply = http.get(format!("{url}{path}")).send().await?;
                    Ok(reply.status().is_success().then_some(()))
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&replicas)));
        }
    }

    let api: Api<AgentDynamics> = Api::namespaced(client.clone(), &ns);
    // One object on the operator's own secret (the mounted file) while the scenario runs.
    api.create(
        &PostParams::default(),
        &agent("default-secret", "DEPLOYDEF01", false),
    )
    .await
    .unwrap();
    let never = || false;
    let result = scenario(&api, "team-agent", "DEPLOYTEAM01", STEP_TIMEOUT, &never).await;
    assert!(result.is_ok(), "{result:?}\n{}", logs(&replicas));
    let ready = wait_for("default-secret Ready", STEP_TIMEOUT, || async {
        Ok(ready_at(&api, "default-secret", 1).await.then_some(()))
    })
    .await;
    assert!(ready.is_ok(), "{ready:?}\n{}", logs(&replicas));
    // Argo CD's health check agrees with the operator's status.
    let live = serde_json::to_value(api.get("default-secret").await.unwrap()).unwrap();
    let (health, message) = lua_health(&live);
    assert_eq!(health, "Healthy", "{live}");
    assert!(message.contains("DEPLOYDEF01"), "{message}");
    api.delete("default-secret", &DeleteParams::default())
        .await
        .unwrap();
    let gone = wait_for("default-secret deleted", STEP_TIMEOUT, || async {
        Ok(api.get_opt("default-secret").await?.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_ok(), "{gone:?}\n{}", logs(&replicas));

    // What the scenario cost: one generation per change, a disable call per deletion.
    let stats = sim.stats();
    assert_eq!(stats.count("generate", Some("DEPLOYTEAM01"), None), 2);
    assert_eq!(stats.count("generate", Some("DEPLOYDEF01"), None), 1);
    for agent_id in ["DEPLOYTEAM01", "DEPLOYDEF01"] {
        assert!(
            stats.count("update", Some(agent_id), Some(200)) >= 2,
            "{agent_id}: switched on, then disabled on deletion"
        );
    }

    // Clean shutdown releases the Lease (a patch, too).
    support::process::stop_all(&mut replicas, Duration::from_secs(15));
    let all_logs = logs(&replicas);
    assert!(
        !all_logs.to_lowercase().contains("forbidden"),
        "the operator was refused something:\n{all_logs}"
    );

    let user = service_account_user(OPERATOR_NS);
    let requests = audited.requests(&user);
    assert!(!requests.is_empty(), "no audited requests from {user}");
    let refused: BTreeSet<String> = requests
        .iter()
        .filter(|(_, code)| *code == 403)
        .map(|(p, _)| p.to_string())
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let used: BTreeSet<Permission> = requests.into_iter().map(|(p, _)| p).collect();
    let mut grants = granted(&rules_of(&ha, "ClusterRole"));
    grants.extend(granted(&rules_of(&ha, "Role")));
    let unused: Vec<String> = grants.difference(&used).map(|p| p.to_string()).collect();
    let ungranted: Vec<String> = used.difference(&grants).map(|p| p.to_string()).collect();
    assert!(
        unused.is_empty() && ungranted.is_empty(),
        "granted but never used: {unused:?}; used but not granted: {ungranted:?}"
    );
    eprintln!(
        "deploy: the operator used exactly {} permissions: {}; {:.1?}",
        used.len(),
        used.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC: without any one granted verb, the operator fails

struct Case {
    kind: String,
    rule: usize,
    permission: Permission,
}

#[derive(Debug)]
struct Outcome {
    case: String,
    refused_in_audit: bool,
    scenario: Result<(), String>,
    forbidden_logged_at: Option<String>,
    log: String,
}

/// The most severe log line that says "forbidden", as "LEVEL: message" (the Deployment logs
/// JSON; a line that is not JSON is what the process printed when it exited).
fn forbidden_level(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .map(|l| match serde_json::from_str::<Json>(l) {
            Ok(j) => (
                j["level"].as_str().unwrap_or("?").to_string(),
                j["message"].as_str().unwrap_or("").to_string(),
            ),
            Err(_) => ("EXIT".to_string(), l.to_string()),
        })
        .min_by_key(|(level, _)| match level.as_str() {
            "EXIT" => 0,
            "ERROR" => 1,
            "WARN" => 2,
            "INFO" => 3,
            _ => 4,
        })
        .map(|(level, message)| {
            let short: String = message.chars().take(70).collect();
            format!("{level}: {short}")
        })
}

async fn run_case(audited: &'static Audited, ha: &[Json], case: Case, index: usize) -> Outcome {
    let cp = &audited.cp;
    let label = format!("without {}", case.permission);
    let ns = cp.create_namespace(&format!("rbac{index}")).await.unwrap();
    let rbac = rbac_in(ha, &ns, Some(&case));
    install_rbac(cp, &rbac, &ns);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(cp, &ns, dir.path());
    let sim = start_sim().await;
    let client = cp.kube_client().await.unwrap();
    create_team_secret(&client, &ns).await;
    let deployment = find(ha, "Deployment", "dynamics-operator");
    let operator = start_as_deployed(
        deployment,
        (&format!("operator-{index}"), &ns),
        dir.path(),
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("BITHUMAN_API_URL", sim.url()),
            ("METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("WATCH_NAMESPACE", ns.clone()),
            ("RUST_LOG", "info,dynamics_operator=debug".to_string()),
        ],
    );
    let user = service_account_user(&ns);
    let refused = || {
        audited
            .requests(&user)
            .iter()
            .any(|(p, code)| *code == 403 && *p == case.permission)
    };
    let log_path = operator.log.clone();
    let logged = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .to_lowercase()
            .contains("forbidden")
    };
    let visible = || refused() && logged();
    let api: Api<AgentDynamics> = Api::namespaced(client, &ns);
    let scenario = scenario(
        &api,
        "agent",
        &format!("RBAC{index:02}"),
        Duration::from_secs(25),
        &visible,
    )
    .await;
    // A refusal can come a moment after the step that gave up (a renewal, a resync).
    let _ = wait_for("the refusal", Duration::from_secs(5), || async {
        Ok((refused() && (logged() || scenario.is_err())).then_some(()))
    })
    .await;
    let mut operator = operator;
    operator.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
    Outcome {
        case: label,
        refused_in_audit: refused(),
        scenario,
        forbidden_logged_at: forbidden_level(&log),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_one_granted_verb_the_operator_fails() {
    let t0 = Instant::now();
    let audited = shared().await;
    let ha = render("deploy/overlays/ha");
    let mut cases = Vec::new();
    for kind in ["ClusterRole", "Role"] {
        for (rule_index, rule) in rules_of(&ha, kind).iter().enumerate() {
            for permission in granted(std::slice::from_ref(rule)) {
                cases.push(Case {
                    kind: kind.to_string(),
                    rule: rule_index,
                    permission,
                });
            }
        }
    }
    let total = cases.len();
    assert!(total >= 10, "fewer verbs than expected: {total}");
    let next = AtomicUsize::new(0);
    let outcomes: Vec<Outcome> = futures::stream::iter(cases)
        .map(|case| {
            let index = next.fetch_add(1, Ordering::SeqCst);
            run_case(audited, &ha, case, index)
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut report = String::new();
    let mut failures = Vec::new();
    for o in &outcomes {
        report.push_str(&format!(
            "  {:<60} audit 403: {:<5} scenario: {:<30} \"forbidden\" logged: {}\n",
            o.case,
            o.refused_in_audit,
            match &o.scenario {
                Ok(()) => "completed".to_string(),
                Err(e) => e.split(':').next().unwrap_or("").to_string(),
            },
            o.forbidden_logged_at.as_deref().unwrap_or("-"),
        ));
        let visible = o.forbidden_logged_at.is_some() || o.scenario.is_err();
        if !o.refused_in_audit || !visible {
            let tail: String = o
                .log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            failures.push(format!("{}: nothing broke\n{tail}", o.case));
        }
    }
    eprintln!(
        "deploy: {total} verbs removed one at a time in {:.1?}:\n{report}",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "these verbs look unnecessary (remove them from deploy/base/rbac.yaml, or make the \
         scenario use them):\n{}\n{report}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The operator writes status and its finalizer, nothing else

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_writes_only_status_and_its_finalizer() {
    let audited = shared().await;
    let cp = &audited.cp;
    let ha = render("deploy/overlays/ha");
    let ns = cp.create_namespace("fields").await.unwrap();
    install_rbac(cp, &rbac_in(&ha, &ns, None), &ns);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(cp, &ns, dir.path());
    let sim = start_sim().await;
    let client = cp.kube_client().await.unwrap();
    create_team_secret(&client, &ns).await;
    let mut operator = start_as_deployed(
        find(&ha, "Deployment", "dynamics-operator"),
        ("operator-fields", &ns),
        dir.path(),
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("BITHUMAN_API_URL", sim.url()),
            ("METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("WATCH_NAMESPACE", ns.clone()),
        ],
    );
    let api: Api<AgentDynamics> = Api::namespaced(client, &ns);

    // Applied as Argo CD applies with server-side apply: its own field manager, its tracking
    // annotation and label, a sync wave, spec fields left to defaults.
    let manifest = |image: &str| {
        json!({
            "apiVersion": "dynamics.bithuman.ai/v1alpha1",
            "kind": "AgentDynamics",
            "metadata": {
                "name": "gitops-agent",
                "namespace": ns,
                "labels": {"app.kubernetes.io/instance": "agents"},
                "annotations": {
                    "argocd.argoproj.io/tracking-id": "agents:dynamics.bithuman.ai/AgentDynamics:agents/gitops-agent",
                    "argocd.argoproj.io/sync-wave": "1",
                },
            },
            "spec": {
                "agentId": "FIELDS0001",
                "imageUrl": image,
                "motionPrompts": ["wave"],
                "apiSecretRef": {"name": "team-bithuman", "key": "api-secret"},
            },
        })
    };
    let apply = |image: &str| -> Json {
        let out = cp
            .kubectl_stdin(
                [
                    "apply",
                    "--server-side",
                    "--field-manager=argocd-controller",
                    "-o",
                    "json",
                    "-f",
                    "-",
                ],
                manifest(image).to_string().as_bytes(),
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let logs = |op: &ManagedChild| op.log_tail(6000);
    let compared = |obj: &Json| {
        json!({
            "spec": obj["spec"],
            "labels": obj["metadata"]["labels"],
            "annotations": obj["metadata"]["annotations"],
            "generation": obj["metadata"]["generation"],
        })
    };

    for (generation, image) in [
        (1, "https://example.com/a.jpg"),
        (2, "https://example.com/b.jpg"),
    ] {
        let applied = apply(image);
        let ok = wait_for("Ready", STEP_TIMEOUT, || async {
            Ok(ready_at(&api, "gitops-agent", generation)
                .await
                .then_some(()))
        })
        .await;
        assert!(ok.is_ok(), "{ok:?}\n{}", logs(&operator));
        let live: Json = serde_json::to_value(api.get("gitops-agent").await.unwrap()).unwrap();
        assert_eq!(
            compared(&live),
            compared(&applied),
            "the operator changed what Argo CD compares (spec, labels, annotations, generation)"
        );
        assert!(
            live["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.contains(&json!(dynamics_operator::resource::FINALIZER))),
            "{live}"
        );
    }

    // The refresh action (Argo CD's server patches the annotation): handled, echoed in status,
    // and still nothing else changes.
    let before: Json = serde_json::to_value(api.get("gitops-agent").await.unwrap()).unwrap();
    let requested = "2026-01-12T10:00:00Z";
    api.patch(
        "gitops-agent",
        &PatchParams {
            field_manager: Some("argocd-server".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"metadata": {"annotations": {
            dynamics_operator::resource::RECONCILE_REQUESTED_AT: requested
        }}})),
    )
    .await
    .unwrap();
    let handled = wait_for("the refresh handled", STEP_TIMEOUT, || async {
        let obj = api.get("gitops-agent").await?;
        let echoed = obj
            .status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.clone());
        Ok((echoed.as_deref() == Some(requested)).then_some(obj))
    })
    .await;
    let handled =
        serde_json::to_value(handled.unwrap_or_else(|e| panic!("{e}\n{}", logs(&operator))))
            .unwrap();
    let mut want = compared(&before);
    want["annotations"][dynamics_operator::resource::RECONCILE_REQUESTED_AT] = json!(requested);
    assert_eq!(compared(&handled), want);

    let live: Json = serde_json::to_value(api.get("gitops-agent").await.unwrap()).unwrap();
    let entries = live["metadata"]["managedFields"].as_array().unwrap();
    let mut status_writes = 0;
    let mut finalizer_writes = 0;
    let mut managers = Vec::new();
    for entry in entries {
        let manager = entry["manager"].as_str().unwrap();
        managers.push(format!(
            "{manager} ({}{})",
            entry["operation"].as_str().unwrap_or(""),
            entry["subresource"]
                .as_str()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        ));
        if manager == "argocd-controller" || manager == "argocd-server" {
            continue;
        }
        assert_eq!(
            manager, "dynamics-operator",
            "the operator names itself: {entry}"
        );
        let fields = entry["fieldsV1"].as_object().unwrap();
        let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        if entry["subresource"] == "status" {
            assert_eq!(keys, BTreeSet::from(["f:status"]), "{entry}");
            status_writes += 1;
        } else {
            assert!(entry["subresource"].is_null(), "{entry}");
            assert_eq!(
                entry["fieldsV1"],
                json!({"f:metadata": {"f:finalizers": {
                    ".": {},
                    format!("v:\"{}\"", dynamics_operator::resource::FINALIZER): {}
                }}}),
                "manager {manager} owns more than the finalizer: {entry}"
            );
            finalizer_writes += 1;
        }
    }
    eprintln!("deploy: managedFields: {}", managers.join("; "));
    assert!(
        status_writes >= 1 && finalizer_writes >= 1,
        "expected the operator's status and finalizer entries: {}",
        serde_json::to_string_pretty(entries).unwrap()
    );
    // The object still applies cleanly with Argo CD's manager and no force: no field of its is
    // owned by anyone else.
    let out = cp
        .kubectl_stdin(
            [
                "apply",
                "--server-side",
                "--field-manager=argocd-controller",
                "--dry-run=server",
                "-f",
                "-",
            ],
            manifest("https://example.com/b.jpg").to_string().as_bytes(),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "conflict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    operator.stop(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// Server dry-run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_of_base_overlays_and_examples_succeeds() {
    let audited = shared().await;
    let cp = &audited.cp;
    // A namespace and the objects in it cannot be dry-run in one apply the first time (the
    // namespace is not created by a dry run), so the namespaces are created for real first, with
    // their labels (the Pod Security level).
    let mut namespaces = Vec::new();
    for dir in ["deploy", "deploy/argocd/example"] {
        for doc in render(dir).into_iter().filter(|d| d["kind"] == "Namespace") {
            namespaces.push(doc);
        }
    }
    for ns in &namespaces {
        let mut ns = ns.clone();
        ns["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        cp.apply_yaml(&ns.to_string()).unwrap();
    }
    for dir in [
        "deploy",
        "deploy/overlays/simulator",
        "deploy/overlays/ha",
        "deploy/argocd/example",
    ] {
        let out = cp.kubectl(["apply", "--dry-run=server", "-k", &format!("{ROOT}/{dir}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=server -k {dir}:\n{stderr}"
        );
        // (kubectl's own note about objects created here without client-side apply aside)
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("Warning:") && !l.contains("last-applied-configuration"))
            .collect();
        assert!(
            warnings.is_empty(),
            "{dir}: the API server warned (Pod Security?):\n{stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("(server dry run)"), "{stdout}");
    }
    let out = cp.kubectl([
        "apply",
        "--dry-run=server",
        "-f",
        &format!("{ROOT}/deploy/secret.example.yaml"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The pods themselves pass the "restricted" Pod Security level, which the namespace enforces
    // (a Deployment only gets a warning; a Pod is refused). The ServiceAccount must exist for the
    // ServiceAccount admission plugin.
    let base = render("deploy");
    cp.apply_yaml(&find(&base, "ServiceAccount", SERVICE_ACCOUNT).to_string())
        .unwrap();
    let pod = |deployment: &Json| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "dry-run", "namespace": OPERATOR_NS},
            "spec": deployment["spec"]["template"]["spec"],
        })
    };
    let simulator = render("deploy/overlays/simulator");
    for deployment in [
        find(
            &render("deploy/overlays/ha"),
            "Deployment",
            "dynamics-operator",
        )
        .clone(),
        find(&simulator, "Deployment", "dynamics-api-simulator").clone(),
    ] {
        let out = cp
            .kubectl_stdin(
                ["create", "--dry-run=server", "-f", "-"],
                pod(&deployment).to_string().as_bytes(),
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            deployment["metadata"]["name"],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // ... and the check bites: the same pod with privilege escalation allowed is refused.
    let mut bad = pod(find(&base, "Deployment", "dynamics-operator"));
    bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let out = cp
        .kubectl_stdin(
            ["create", "--dry-run=server", "-f", "-"],
            bad.to_string().as_bytes(),
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "Pod Security is not enforced in {OPERATOR_NS}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("PodSecurity"));
}

// ---------------------------------------------------------------------------------------------
// deploy/argocd/health.lua on a live object (tests/argocd_health.rs tests it in depth)

fn lua_health(obj: &Json) -> (String, String) {
    fn to_lua(lua: &mlua::Lua, value: &Json) -> mlua::Value {
        match value {
            Json::Null => mlua::Value::Nil,
            Json::Bool(b) => mlua::Value::Boolean(*b),
            Json::Number(n) => mlua::Value::Number(n.as_f64().unwrap()),
            Json::String(s) => mlua::Value::String(lua.create_string(s).unwrap()),
            Json::Array(items) => {
                let t = lua.create_table().unwrap();
                for (i, item) in items.iter().enumerate() {
                    t.raw_set(i + 1, to_lua(lua, item)).unwrap();
                }
                mlua::Value::Table(t)
            }
            Json::Object(map) => {
                let t = lua.create_table().unwrap();
                for (k, v) in map {
                    t.raw_set(k.as_str(), to_lua(lua, v)).unwrap();
                }
                mlua::Value::Table(t)
            }
        }
    }
    let lua = mlua::Lua::new();
    lua.globals().set("obj", to_lua(&lua, obj)).unwrap();
    let script = std::fs::read_to_string(Path::new(ROOT).join("deploy/argocd/health.lua")).unwrap();
    let result: mlua::Table = lua.load(&script).eval().expect("health.lua runs");
    (
        result.get::<String>("status").unwrap(),
        result
            .get::<Option<String>>("message")
            .unwrap()
            .unwrap_or_default(),
    )
}
