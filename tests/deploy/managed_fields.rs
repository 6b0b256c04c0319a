//! The operator writes status and its finalizer (managedFields), never spec, labels or
//! annotations: what Argo CD compares stays as applied.

use std::collections::BTreeSet;
use std::time::Duration;

use dynamics_operator::resource::AgentDynamics;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value as Json};

use crate::audit::shared;
use crate::deployed::{create_team_secret, ready_at, start_as_deployed, start_sim};
use crate::grants::{install_rbac, rbac_in, service_account_kubeconfig};
use crate::support::process::ManagedChild;
use crate::support::tools::{find, kustomize};
use crate::support::wait::wait_for;
use crate::STEP_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_writes_only_status_and_its_finalizer() {
    let audited = shared().await;
    let cp = &audited.cp;
    let ha = kustomize("deploy/overlays/ha");
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
