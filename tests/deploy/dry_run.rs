//! `kubectl apply --dry-run=server -k` of the base, every overlay and the examples, with no Pod
//! Security warning (the operator's namespace enforces "restricted").

use serde_json::{json, Value as Json};

use crate::audit::shared;
use crate::support::tools::{find, kustomize, ROOT};
use crate::{OPERATOR_NS, SERVICE_ACCOUNT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_of_base_overlays_and_examples_succeeds() {
    let audited = shared().await;
    let cp = &audited.cp;
    // A namespace and the objects in it cannot be dry-run in one apply the first time (the
    // namespace is not created by a dry run), so the namespaces are created for real first, with
    // their labels (the Pod Security level).
    let mut namespaces = Vec::new();
    for dir in ["deploy", "deploy/argocd/example"] {
        for doc in kustomize(dir)
            .into_iter()
            .filter(|d| d["kind"] == "Namespace")
        {
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
    let base = kustomize("deploy");
    cp.apply_yaml(&find(&base, "ServiceAccount", SERVICE_ACCOUNT).to_string())
        .unwrap();
    let pod = |deployment: &Json| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "dry-run", "namespace": OPERATOR_NS},
            "spec": deployment["spec"]["template"]["spec"],
        })
    };
    let simulator = kustomize("deploy/overlays/simulator");
    for deployment in [
        find(
            &kustomize("deploy/overlays/ha"),
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
