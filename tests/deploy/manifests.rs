//! Static checks of the manifests: the CRD is the committed one, the Deployment is hardened
//! and wired to the binary's real flags, overlays do what they say, the example Secret is only an
//! example.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value as Json};

use crate::render::{container, env_value, kinds, rbac_docs};
use crate::support::tools::{find, kustomize, parse_docs, ROOT};
use crate::{OPERATOR_NS, SERVICE_ACCOUNT};

#[test]
fn deploy_crds_are_the_committed_crds() {
    let base = kustomize("deploy");
    for (file, name) in [
        ("agentdynamics.yaml", "agentdynamics.dynamics.bithuman.ai"),
        (
            "dynamicsledgers.yaml",
            "dynamicsledgers.dynamics.bithuman.ai",
        ),
    ] {
        let committed = std::fs::read(Path::new(ROOT).join("crds").join(file)).unwrap();
        let copy = std::fs::read(Path::new(ROOT).join("deploy/base/crd").join(file)).unwrap();
        assert!(
            committed == copy,
            "deploy/base/crd/{file} differs from crds/{file}: cp crds/{file} deploy/base/crd/{file}"
        );
        // And kustomize ships it unchanged.
        let crd = find(&base, "CustomResourceDefinition", name);
        let want: Json = serde_saphyr::from_slice(&committed).unwrap();
        assert!(
            numbers_as_f64(crd) == numbers_as_f64(&want),
            "kustomize changed {file}"
        );
    }
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
    let docs = kustomize("deploy");
    let want: BTreeSet<String> = [
        "Namespace/dynamics-operator",
        "CustomResourceDefinition/agentdynamics.dynamics.bithuman.ai",
        "CustomResourceDefinition/dynamicsledgers.dynamics.bithuman.ai",
        "ServiceAccount/dynamics-operator",
        "ClusterRole/dynamics-operator",
        "ClusterRoleBinding/dynamics-operator",
        // Secrets in the operator's own namespace only: a RoleBinding to a ClusterRole that
        // grants nothing until bound.
        "ClusterRole/dynamics-operator-secrets",
        "RoleBinding/dynamics-operator-secrets",
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
    let base = kustomize("deploy");
    let base_rbac = rbac_docs(&base);

    let ha = kustomize("deploy/overlays/ha");
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

    let simulator = kustomize("deploy/overlays/simulator");
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
        let docs = kustomize(dir);
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
            !kustomize(dir).iter().any(|d| d["kind"] == "Secret"),
            "{dir} must not ship a Secret"
        );
    }
}
