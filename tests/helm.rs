//! The Helm chart (charts/dynamics-operator) with helm v4 built from module source
//! (tests/tools/build.sh):
//!
//! * its CRD is the committed one, byte for byte;
//! * `helm lint --strict`, with the default values and with the values a user would pass;
//! * `helm template` grants exactly the kustomize base's RBAC rules and hardens the pod the same
//!   way (parsed objects compared), and passes only flags `dynamics-operator run` knows;
//! * values.schema.json refuses bad values, naming them;
//! * `helm install --server-side` into a real API server with user values, the operator then
//!   run as the chart's ServiceAccount with the chart's own arguments and Secret converges an
//!   object in the watched namespace (so the namespaced RBAC suffices), and `helm uninstall`
//!   removes everything but the CRD.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, SimConfig};
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use serde_json::{json, Value as Json};
use support::controlplane::ControlPlane;
use support::operator::{is_ready, wait_gone, wait_object};
use support::process::ManagedChild;
use support::tools::{find, kustomize, parse_docs, run_ok, tool, ROOT};

const CHART: &str = "charts/dynamics-operator";

fn chart() -> PathBuf {
    Path::new(ROOT).join(CHART)
}

/// helm with its cache, config and data in `home` (nothing of the user's is read or written).
fn helm(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tool("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm")
}

fn helm_ok(home: &Path, args: &[&str]) -> String {
    let out = helm(home, args);
    assert!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template dynamics-operator <chart> -n dynamics-operator <extra>` as documents.
fn template(extra: &[&str]) -> Vec<Json> {
    let home = tempfile::tempdir().unwrap();
    let chart = chart();
    let mut args = vec![
        "template",
        "dynamics-operator",
        chart.to_str().unwrap(),
        "--namespace",
        "dynamics-operator",
    ];
    args.extend(extra);
    parse_docs(&helm_ok(home.path(), &args))
}

/// The values a user installing with two replicas, one watched namespace, a created Secret and
/// the Prometheus objects would pass.
const USER_VALUES: &str = r#"
replicaCount: 2
image:
  tag: v0.1.0
watchNamespace: agents
apiSecret:
  create: true
  value: chart-test-secret
operator:
  maxConcurrentGenerations: 1
  generationsPerHour: 20
  apiCallsPerSecond: 3
  stalledRetry: 20s
metrics:
  serviceMonitor:
    enabled: true
  prometheusRule:
    enabled: true
    creditsPerHourThreshold: 2500
  grafanaDashboard:
    enabled: true
"#;

fn user_values_file(dir: &Path) -> PathBuf {
    let path = dir.join("values.yaml");
    std::fs::write(&path, USER_VALUES).unwrap();
    path
}

fn container(deployment: &Json) -> &Json {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn chart_crds_are_the_committed_crds() {
    for file in ["agentdynamics.yaml", "dynamicsledgers.yaml"] {
        let committed = std::fs::read(Path::new(ROOT).join("crds").join(file)).unwrap();
        let chart = std::fs::read(chart().join("files/crds").join(file)).unwrap();
        assert!(
            committed == chart,
            "{CHART}/files/crds/{file} differs from crds/{file}: cp crds/{file} {CHART}/files/crds/{file}"
        );
    }
}

/// The CRDs are templates (so `helm upgrade` upgrades them), rendered with the committed specs,
/// kept on uninstall unless `crds.keep=false`, left out with `crds.enabled=false`.
#[test]
fn crds_are_templates_kept_on_uninstall_unless_told() {
    let crds = |docs: &[Json]| -> Vec<Json> {
        docs.iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .cloned()
            .collect()
    };
    let rendered = crds(&template(&[]));
    assert_eq!(rendered.len(), 2, "CRDs rendered by default");
    for file in ["agentdynamics.yaml", "dynamicsledgers.yaml"] {
        let committed: Json = serde_saphyr::from_str(
            &std::fs::read_to_string(Path::new(ROOT).join("crds").join(file)).unwrap(),
        )
        .unwrap();
        let name = &committed["metadata"]["name"];
        let crd = rendered
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} not rendered"));
        // Numbers pass through Helm as floats: compare as numbers, not as text.
        assert_eq!(
            normalize_numbers(&crd["spec"]),
            normalize_numbers(&committed["spec"]),
            "{name}: the rendered spec differs from crds/{file}"
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name} kept on uninstall"
        );
    }
    let not_kept = crds(&template(&["--set", "crds.keep=false"]));
    assert_eq!(not_kept.len(), 2);
    assert!(not_kept
        .iter()
        .all(|c| c["metadata"]["annotations"]["helm.sh/resource-policy"].is_null()));
    assert!(crds(&template(&["--set", "crds.enabled=false"])).is_empty());
}

fn normalize_numbers(value: &Json) -> Json {
    match value {
        Json::Number(n) => json!(n.as_f64().unwrap()),
        Json::Array(items) => Json::Array(items.iter().map(normalize_numbers).collect()),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalize_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn lint_strict_passes_with_default_and_user_values() {
    let home = tempfile::tempdir().unwrap();
    let chart = chart();
    helm_ok(home.path(), &["lint", "--strict", chart.to_str().unwrap()]);
    let values = user_values_file(home.path());
    helm_ok(
        home.path(),
        &[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "-f",
            values.to_str().unwrap(),
        ],
    );
}

#[test]
fn template_grants_the_kustomize_rules_and_hardens_the_pod_the_same() {
    let base = kustomize("deploy/overlays/ha");
    // Two replicas: the chart adds leader election, as the ha overlay does.
    let chart = template(&["--set", "replicaCount=2"]);

    let rules = |docs: &[Json], kind: &str, name: &str| find(docs, kind, name)["rules"].clone();
    assert_eq!(
        rules(&chart, "ClusterRole", "dynamics-operator"),
        rules(&base, "ClusterRole", "dynamics-operator"),
        "ClusterRole rules"
    );
    assert_eq!(
        rules(&chart, "Role", "dynamics-operator-leader-election"),
        rules(&base, "Role", "dynamics-operator-leader-election"),
        "leader election Role rules"
    );
    // Secrets: the same rules, bound in the operator's namespace only (the chart with a Role,
    // the base with a RoleBinding to a ClusterRole that users bind in more namespaces).
    assert_eq!(
        rules(&chart, "Role", "dynamics-operator-secrets"),
        rules(&base, "ClusterRole", "dynamics-operator-secrets"),
        "Secrets rules"
    );
    assert_eq!(
        find(&chart, "RoleBinding", "dynamics-operator-secrets")["metadata"]["namespace"],
        find(&base, "RoleBinding", "dynamics-operator-secrets")["metadata"]["namespace"],
    );
    for (kind, name) in [
        ("ClusterRoleBinding", "dynamics-operator"),
        ("RoleBinding", "dynamics-operator-leader-election"),
    ] {
        let (c, b) = (find(&chart, kind, name), find(&base, kind, name));
        assert_eq!(c["roleRef"], b["roleRef"], "{kind} roleRef");
        assert_eq!(c["subjects"], b["subjects"], "{kind} subjects");
    }

    let (c, b) = (
        find(&chart, "Deployment", "dynamics-operator"),
        find(&base, "Deployment", "dynamics-operator"),
    );
    let (cp, bp) = (
        &c["spec"]["template"]["spec"],
        &b["spec"]["template"]["spec"],
    );
    for field in [
        "securityContext",
        "serviceAccountName",
        "enableServiceLinks",
        "terminationGracePeriodSeconds",
        "volumes",
    ] {
        assert_eq!(cp[field], bp[field], "pod {field}");
    }
    for field in [
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "volumeMounts",
        "ports",
    ] {
        assert_eq!(
            container(c)[field],
            container(b)[field],
            "container {field}"
        );
    }
    assert_eq!(c["spec"]["replicas"], json!(2));
    let args = container(c)["args"].as_array().unwrap();
    assert!(args.contains(&json!("--leader-elect")), "{args:?}");

    // One replica: no leader election, no Lease permissions, Recreate.
    let single = template(&[]);
    let d = find(&single, "Deployment", "dynamics-operator");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    assert!(!container(d)["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--leader-elect")));
    assert!(!single.iter().any(
        |d| d["kind"] == "Role" && d["metadata"]["name"] == "dynamics-operator-leader-election"
    ));
}

#[test]
fn template_passes_only_flags_the_binary_knows() {
    let help = run_ok(
        Path::new(env!("CARGO_BIN_EXE_dynamics-operator")),
        ["run", "--help"],
    );
    let home = tempfile::tempdir().unwrap();
    let values = user_values_file(home.path());
    let docs = template(&["-f", values.to_str().unwrap()]);
    let c = container(find(&docs, "Deployment", "dynamics-operator"));
    let args = c["args"].as_array().unwrap();
    assert_eq!(args[0], "run");
    for arg in &args[1..] {
        let flag = arg.as_str().unwrap().split('=').next().unwrap();
        assert!(help.contains(&format!("{flag} ")), "unknown flag {flag}");
    }
    for e in c["env"].as_array().unwrap() {
        let var = e["name"].as_str().unwrap();
        assert!(help.contains(&format!("[env: {var}")), "unknown env {var}");
    }
    for want in [
        "--namespace=agents",
        "--generations-per-hour=20",
        "--api-calls-per-second=3",
        "--max-concurrent-generations=1",
        "--stalled-retry=20s",
        "--log-format=json",
    ] {
        assert!(args.contains(&json!(want)), "{want} missing in {args:?}");
    }
    // The watched namespace gets Roles, not cluster-wide grants; only the purchase ledger,
    // which is the cluster's, is granted cluster-wide.
    let cluster_roles: Vec<&Json> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(cluster_roles.len(), 1, "{cluster_roles:?}");
    assert_eq!(
        cluster_roles[0]["rules"],
        json!([{"apiGroups": ["dynamics.bithuman.ai"], "resources": ["dynamicsledgers"], "verbs": ["get", "list", "watch", "create", "update"]}])
    );
    assert_eq!(
        find(&docs, "Role", "dynamics-operator")["metadata"]["namespace"],
        "agents"
    );
    let dashboard = find(&docs, "ConfigMap", "dynamics-operator-dashboard");
    let json_text = dashboard["data"]["dynamics-operator.json"]
        .as_str()
        .unwrap();
    let shipped: Json = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(serde_json::from_str::<Json>(json_text).unwrap(), shipped);
}

#[test]
fn the_schema_refuses_bad_values() {
    let home = tempfile::tempdir().unwrap();
    let chart = chart();
    for (set, names) in [
        ("replicaCount=0", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("operator.apiUrl=ftp://example.com", "apiUrl"),
        ("operator.resync=often", "resync"),
        ("watchNamespace=Agents_1", "watchNamespace"),
        ("imagee.tag=v1", "imagee"),
        ("apiSecret.create=true", "value"),
        ("image.digest=latest", "digest"),
        ("logLevel=loud", "logLevel"),
        ("caBundle.configMap=a,caBundle.secret=b", "caBundle"),
        (
            "podDisruptionBudget.minAvailable=1,podDisruptionBudget.maxUnavailable=1",
            "podDisruptionBudget",
        ),
        ("serviceAccount.create=maybe", "create"),
        ("secretNamespaces={Team_A}", "secretNamespaces"),
    ] {
        let out = helm(
            home.path(),
            &["template", "x", chart.to_str().unwrap(), "--set", set],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains("schema") && stderr.contains(names),
            "--set {set}: the error should name {names}:\n{stderr}"
        );
    }
}

fn kinds(docs: &[Json], kind: &str) -> usize {
    docs.iter().filter(|d| d["kind"] == kind).count()
}

/// A parent chart that holds this one as a dependency, with shared `global` values and the
/// usual `condition`, renders it, and switches it off.
#[test]
fn the_chart_composes_as_a_dependency_of_an_umbrella_chart() {
    let home = tempfile::tempdir().unwrap();
    let parent = home.path().join("platform");
    std::fs::create_dir_all(parent.join("charts")).unwrap();
    std::fs::create_dir_all(parent.join("templates")).unwrap();
    std::fs::write(
        parent.join("templates/settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: platform-settings\ndata:\n  registry: {{ .Values.global.imageRegistry }}\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: dynamics-operator\n    version: 0.1.0\n    condition: dynamics-operator.enabled\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: registry.example.com\n  storageClass: fast\ndynamics-operator:\n  enabled: true\n  replicaCount: 2\n",
    )
    .unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(chart())
        .arg(parent.join("charts/dynamics-operator"))
        .status()
        .unwrap();
    assert!(status.success());
    let parent_dir = parent.to_str().unwrap();
    let on = parse_docs(&helm_ok(
        home.path(),
        &["template", "p", parent_dir, "-n", "platform"],
    ));
    let d = find(&on, "Deployment", "p-dynamics-operator");
    assert_eq!(d["spec"]["replicas"], json!(2));
    helm_ok(home.path(), &["lint", "--strict", parent_dir]);
    let off = parse_docs(&helm_ok(
        home.path(),
        &[
            "template",
            "p",
            parent_dir,
            "-n",
            "platform",
            "--set",
            "dynamics-operator.enabled=false",
        ],
    ));
    assert_eq!(
        kinds(&off, "Deployment"),
        0,
        "the condition switches it off"
    );
}

/// Secrets are granted per namespace: the release's, those listed, or (asked for) all of them.
#[test]
fn secrets_are_granted_only_in_the_namespaces_listed() {
    let secret_roles = |docs: &[Json]| -> Vec<(String, String)> {
        docs.iter()
            .filter(|d| d["metadata"]["name"] == "dynamics-operator-secrets")
            .map(|d| {
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    };
    let pair = |kind: &str, ns: &str| (kind.to_string(), ns.to_string());
    let args =
        |docs: &[Json]| container(find(docs, "Deployment", "dynamics-operator"))["args"].clone();
    // The cluster-wide role grants nothing on Secrets.
    let default = template(&[]);
    let cluster_rules = find(&default, "ClusterRole", "dynamics-operator")["rules"].to_string();
    assert!(!cluster_rules.contains("secrets"), "{cluster_rules}");
    assert_eq!(
        secret_roles(&default),
        [
            pair("Role", "dynamics-operator"),
            pair("RoleBinding", "dynamics-operator")
        ]
    );
    assert!(!args(&default).to_string().contains("--secret-namespaces"));
    let listed = template(&["--set", "secretNamespaces={team-a,team-b}"]);
    let roles = secret_roles(&listed);
    for ns in ["dynamics-operator", "team-a", "team-b"] {
        assert!(roles.contains(&pair("Role", ns)), "{roles:?}");
        assert!(roles.contains(&pair("RoleBinding", ns)), "{roles:?}");
    }
    assert_eq!(roles.len(), 6);
    let binding = listed
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == "team-a")
        .unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], "dynamics-operator");
    assert!(args(&listed)
        .as_array()
        .unwrap()
        .contains(&json!("--secret-namespaces=team-a,team-b")));
    let all = template(&["--set", "secretNamespaces={*}"]);
    assert_eq!(
        secret_roles(&all),
        [pair("ClusterRole", ""), pair("ClusterRoleBinding", "")]
    );
    // Watching one namespace: only its Secrets, with no cluster-wide grant at all.
    let one = template(&["--set", "watchNamespace=agents"]);
    assert_eq!(
        secret_roles(&one),
        [pair("Role", "agents"), pair("RoleBinding", "agents")]
    );
}

#[test]
fn service_account_can_be_brought_by_the_user() {
    let docs = template(&[
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=platform-operator",
    ]);
    assert_eq!(kinds(&docs, "ServiceAccount"), 0);
    let d = find(&docs, "Deployment", "dynamics-operator");
    assert_eq!(
        d["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-operator"
    );
    let binding = find(&docs, "ClusterRoleBinding", "dynamics-operator");
    assert_eq!(binding["subjects"][0]["name"], "platform-operator");
    // By default the chart makes it.
    let default = template(&[]);
    find(&default, "ServiceAccount", "dynamics-operator");
}

#[test]
fn network_policy_allows_dns_the_api_server_the_bithuman_api_and_metrics_only() {
    assert_eq!(kinds(&template(&[]), "NetworkPolicy"), 0, "off by default");
    let docs = template(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.apiServer.cidrs={10.96.0.1/32}",
        "--set",
        "networkPolicy.bithumanApi.cidrs={203.0.113.0/24}",
    ]);
    let policy = find(&docs, "NetworkPolicy", "dynamics-operator");
    let spec = &policy["spec"];
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        find(&docs, "Deployment", "dynamics-operator")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        spec["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}]}])
    );
    let egress = spec["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 3, "{egress:?}");
    let ports = |rule: &Json| -> Vec<(i64, String)> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_i64().unwrap(),
                    p["protocol"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        ports(&egress[0]),
        [(53, "UDP".to_string()), (53, "TCP".to_string())]
    );
    assert_eq!(
        egress[0]["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
        "kube-dns"
    );
    assert_eq!(
        egress[1]["to"],
        json!([{"ipBlock": {"cidr": "10.96.0.1/32"}}])
    );
    assert_eq!(
        ports(&egress[1]),
        [(443, "TCP".to_string()), (6443, "TCP".to_string())]
    );
    assert_eq!(
        egress[2]["to"],
        json!([{"ipBlock": {"cidr": "203.0.113.0/24"}}])
    );
    assert_eq!(ports(&egress[2]), [(443, "TCP".to_string())]);
}

#[test]
fn extra_volumes_and_a_ca_bundle_reach_the_pod() {
    let home = tempfile::tempdir().unwrap();
    let values = home.path().join("v.yaml");
    std::fs::write(
        &values,
        "extraVolumes:\n  - name: tmp\n    emptyDir: {}\nextraVolumeMounts:\n  - name: tmp\n    mountPath: /tmp\ncaBundle:\n  configMap: proxy-ca\n  key: proxy.pem\n",
    )
    .unwrap();
    let docs = template(&["-f", values.to_str().unwrap()]);
    let pod = &find(&docs, "Deployment", "dynamics-operator")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes.contains(&json!({"name": "tmp", "emptyDir": {}})));
    assert!(volumes.contains(&json!({
        "name": "ca-bundle",
        "configMap": {"name": "proxy-ca", "items": [{"key": "proxy.pem", "path": "proxy.pem"}]}
    })));
    let c = &pod["containers"][0];
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(mounts.contains(&json!({"name": "tmp", "mountPath": "/tmp"})));
    assert!(mounts.contains(
        &json!({"name": "ca-bundle", "mountPath": "/etc/dynamics-operator/ca", "readOnly": true})
    ));
    assert!(c["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--api-ca-file=/etc/dynamics-operator/ca/proxy.pem")));
    // A Secret works the same; without a bundle there is no flag and no volume.
    let secret = template(&["--set", "caBundle.secret=proxy-ca"]);
    let pod = &find(&secret, "Deployment", "dynamics-operator")["spec"]["template"]["spec"];
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"] == "proxy-ca"));
    let none = template(&[]);
    let c = container(find(&none, "Deployment", "dynamics-operator"));
    assert!(!c["args"].to_string().contains("--api-ca-file"));
}

#[test]
fn service_monitor_only_where_its_crd_is_served_with_namespace_timeout_and_relabelings() {
    let home = tempfile::tempdir().unwrap();
    let values = home.path().join("v.yaml");
    std::fs::write(
        &values,
        "metrics:\n  serviceMonitor:\n    enabled: true\n    namespace: monitoring\n    scrapeTimeout: 5s\n    relabelings:\n      - targetLabel: team\n        replacement: avatars\n    metricRelabelings:\n      - sourceLabels: [__name__]\n        regex: go_.*\n        action: drop\n",
    )
    .unwrap();
    let v = values.to_str().unwrap();
    // Enabled, but the cluster does not serve the CRD: nothing that would fail the install.
    assert_eq!(kinds(&template(&["-f", v]), "ServiceMonitor"), 0);
    let docs = template(&[
        "-f",
        v,
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    let sm = find(&docs, "ServiceMonitor", "dynamics-operator");
    assert_eq!(sm["metadata"]["namespace"], "monitoring");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"],
        json!(["dynamics-operator"]),
        "it still selects the operator's Service in the release namespace"
    );
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["scrapeTimeout"], "5s");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "team");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
}

#[test]
fn pdb_takes_min_available_or_max_unavailable() {
    let pdb = |extra: &[&str]| {
        let mut args = vec!["--set", "replicaCount=3"];
        args.extend(extra);
        find(&template(&args), "PodDisruptionBudget", "dynamics-operator")["spec"].clone()
    };
    let default = pdb(&[]);
    assert_eq!(default["minAvailable"], json!(1));
    assert!(default.get("maxUnavailable").is_none());
    let max = pdb(&["--set", "podDisruptionBudget.maxUnavailable=1"]);
    assert_eq!(max["maxUnavailable"], json!(1));
    assert!(max.get("minAvailable").is_none(), "{max}");
    let min = pdb(&["--set", "podDisruptionBudget.minAvailable=2"]);
    assert_eq!(min["minAvailable"], json!(2));
    assert_eq!(
        kinds(&template(&[]), "PodDisruptionBudget"),
        0,
        "one replica: none"
    );
}

#[test]
fn log_level_node_selector_strategy_and_history_reach_the_deployment() {
    let d = template(&[]);
    let d = find(&d, "Deployment", "dynamics-operator");
    assert_eq!(
        d["spec"]["template"]["spec"]["nodeSelector"],
        json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(d["spec"]["revisionHistoryLimit"], json!(10));
    assert!(container(d)["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--log-level=info")));
    let home = tempfile::tempdir().unwrap();
    let values = home.path().join("v.yaml");
    std::fs::write(
        &values,
        "logLevel: debug\nrevisionHistoryLimit: 2\nstrategy:\n  type: RollingUpdate\n  rollingUpdate:\n    maxSurge: 0\n    maxUnavailable: 1\n",
    )
    .unwrap();
    let docs = template(&["-f", values.to_str().unwrap()]);
    let d = find(&docs, "Deployment", "dynamics-operator");
    assert_eq!(d["spec"]["revisionHistoryLimit"], json!(2));
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})
    );
    assert!(container(d)["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--log-level=debug")));
}

/// Minimal CRDs for prometheus-operator's kinds, so the chart's ServiceMonitor and
/// PrometheusRule can be installed into the test API server.
fn prometheus_operator_crds() -> String {
    let mut yaml = String::new();
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let singular = kind.to_lowercase();
        let plural = format!("{singular}s");
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": singular, "listKind": format!("{kind}List")},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                }],
            },
        });
        yaml.push_str(&dynamics_operator::resource::to_yaml(&crd).unwrap());
        yaml.push_str("---\n");
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_run_as_installed_and_uninstall() {
    // Its own control plane: the chart installs cluster-scoped objects.
    let cp = ControlPlane::builder()
        .allow_existing(false)
        .start()
        .await
        .expect("the control plane must start (see tests/controlplane/build.sh)");
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = cp.kubeconfig_path().to_str().unwrap().to_string();
    cp.apply_yaml(&prometheus_operator_crds()).unwrap();
    for crd in [
        "servicemonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ] {
        cp.wait_crd_established(crd, Duration::from_secs(30))
            .await
            .unwrap();
    }
    cp.kubectl_ok(["create", "namespace", "agents"]).unwrap();
    let values = user_values_file(home.path());
    let chart = chart();
    let installed = helm_ok(
        home.path(),
        &[
            "install",
            "dyn",
            chart.to_str().unwrap(),
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            "dynamics-operator",
            "--create-namespace",
            "--server-side=true",
            "-f",
            values.to_str().unwrap(),
        ],
    );
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    assert!(
        installed.contains("rollout status deploy/dyn-dynamics-operator"),
        "NOTES say how to check it works:\n{installed}"
    );

    // What the API server now holds.
    let get = |args: &[&str]| -> Json {
        let mut a = vec!["get", "-o", "json"];
        a.extend(args);
        serde_json::from_str(&cp.kubectl_ok(a).unwrap()).unwrap()
    };
    let deployment = get(&[
        "-n",
        "dynamics-operator",
        "deploy/dyn-dynamics-operator",
        "--show-managed-fields",
    ]);
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        container(&deployment)["image"],
        "ghcr.io/bithuman/dynamics-operator:v0.1.0"
    );
    let managers: Vec<String> = deployment["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        managers.contains(&"helm/Apply".to_string()),
        "installed with server-side apply: {managers:?}"
    );
    for (ns, what) in [
        ("dynamics-operator", "secret/dyn-dynamics-operator-api"),
        ("dynamics-operator", "serviceaccount/dyn-dynamics-operator"),
        ("dynamics-operator", "service/dyn-dynamics-operator-metrics"),
        (
            "dynamics-operator",
            "role/dyn-dynamics-operator-leader-election",
        ),
        (
            "dynamics-operator",
            "poddisruptionbudget/dyn-dynamics-operator",
        ),
        ("dynamics-operator", "servicemonitor/dyn-dynamics-operator"),
        ("dynamics-operator", "prometheusrule/dyn-dynamics-operator"),
        (
            "dynamics-operator",
            "configmap/dyn-dynamics-operator-dashboard",
        ),
        ("agents", "role/dyn-dynamics-operator"),
        ("agents", "rolebinding/dyn-dynamics-operator"),
    ] {
        get(&["-n", ns, what]);
    }
    get(&["crd", "agentdynamics.dynamics.bithuman.ai"]);

    // The operator as the Deployment runs it: the chart's args, its ServiceAccount's token,
    // its Secret's value as the mounted file; only the API URL and metrics address change.
    let sim = sim::start(SimConfig {
        secret: "chart-test-secret".into(),
        generation_time: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let dir = home.path();
    let secret = get(&[
        "-n",
        "dynamics-operator",
        "secret/dyn-dynamics-operator-api",
    ]);
    let encoded = secret["data"]["api-secret"].as_str().unwrap();
    let secret_file = dir.join("api-secret");
    std::fs::write(&secret_file, base64_decode(encoded)).unwrap();
    let sa_kubeconfig = dir.join("sa.kubeconfig");
    cp.service_account_kubeconfig(
        "dyn-dynamics-operator",
        "dynamics-operator",
        &[],
        &sa_kubeconfig,
    )
    .unwrap();
    let c = container(&deployment);
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            if a.starts_with("--api-url=") {
                format!("--api-url={}", sim.url())
            } else if a.starts_with("--metrics-addr=") {
                "--metrics-addr=127.0.0.1:0".into()
            } else {
                a.to_string()
            }
        })
        .collect();
    let sa_kubeconfig = sa_kubeconfig.to_str().unwrap().to_string();
    let secret_file = secret_file.to_str().unwrap().to_string();
    let mut operator = ManagedChild::spawn(
        "operator",
        Path::new(env!("CARGO_BIN_EXE_dynamics-operator")),
        &args,
        &dir.join("operator.log"),
        &[
            ("KUBECONFIG", sa_kubeconfig.as_str()),
            ("BITHUMAN_API_SECRET_FILE", secret_file.as_str()),
            ("POD_NAME", "dyn-dynamics-operator-0"),
            ("POD_NAMESPACE", "dynamics-operator"),
        ],
    )
    .expect("start the operator");
    cp.apply_yaml(
        "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: chart-agent\n  namespace: agents\nspec:\n  agentId: CHART00001\n",
    )
    .unwrap();
    let client = cp.kube_client().await.unwrap();
    let api: Api<AgentDynamics> = Api::namespaced(client.clone(), "agents");
    wait_object(&api, "chart-agent", "Ready", &operator, is_ready).await;
    // Uninstall in the order NOTES.txt gives: objects first, while the operator runs.
    api.delete("chart-agent", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&api, "chart-agent", &operator).await;
    operator.stop(Duration::from_secs(5));

    let out = helm_ok(
        home.path(),
        &[
            "uninstall",
            "dyn",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            "dynamics-operator",
            "--wait",
        ],
    );
    assert!(out.contains("uninstalled"), "{out}");
    let left = cp
        .kubectl_ok([
            "get",
            "deploy,secret,serviceaccount,service,role,rolebinding,configmap,servicemonitor,prometheusrule,pdb",
            "-n",
            "dynamics-operator",
            "-l",
            "app.kubernetes.io/instance=dyn",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(left.trim(), "", "left after uninstall: {left}");
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), "agents");
    assert!(roles
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    // crds.keep: Helm leaves the CRDs, and with them the objects of other releases.
    get(&["crd", "agentdynamics.dynamics.bithuman.ai"]);
}

/// Standard base64 (a Secret's data), without a crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let v = ALPHABET.iter().position(|a| *a == byte).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
