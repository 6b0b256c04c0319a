//! Secrets named by `spec.apiSecretRef`: the label they need, and deletion without them.

use std::time::Duration;

use kube::api::DeleteParams;

use crate::fast_sim;
use crate::support::operator::{manifest, Env, SECRET, TIMEOUT};
use crate::support::wait::wait_for;

// A referenced Secret must carry the label; deleting an object whose Secret is already gone
// (the usual order when a namespace is deleted) keeps the finalizer, Stalled SecretNotFound,
// until the Secret is back: the Disable PUT is never skipped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_holds_deletion_until_it_is_back() {
    let env = Env::start("secretdel", fast_sim()).await;
    let secret = |labelled: bool| {
        let labels = if labelled {
            "  labels:\n    dynamics.bithuman.ai/api-secret: \"true\"\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-secret\n{labels}stringData:\n  api-secret: {SECRET}\n"
        )
    };
    env.apply(&secret(false));
    env.apply(&manifest(
        "team-agent",
        "SEC0000001",
        "  apiSecretRef:\n    name: team-secret\n",
    ));
    let stalled = env.wait_reason("team-agent", "SecretNotLabeled").await;
    let message = &stalled
        .status
        .unwrap()
        .condition("Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("kubectl -n"),
        "says how to label it: {message}"
    );
    assert_eq!(env.calls("generate", "SEC0000001"), 0);
    // Labelling it is a Secret change the operator watches: the object converges.
    env.apply(&secret(true));
    env.wait_ready("team-agent").await;

    let ns = env.ns.clone();
    env.cp
        .kubectl_ok(["-n", ns.as_str(), "delete", "secret", "team-secret"])
        .expect("delete the Secret");
    env.api
        .delete("team-agent", &DeleteParams::default())
        .await
        .unwrap();
    // The deleting pass says how to let go without the Secret.
    let held = wait_for("team-agent held by its finalizer", TIMEOUT, || async {
        let obj = env.api.get("team-agent").await?;
        let message = obj
            .status
            .as_ref()
            .and_then(|s| s.condition("Stalled"))
            .filter(|c| c.status == "True" && c.reason == "SecretNotFound")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        Ok(message.contains("deletionPolicy: Orphan").then_some(obj))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert!(held.metadata.deletion_timestamp.is_some());
    let puts = env.calls("update", "SEC0000001");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.api.get_opt("team-agent").await.unwrap().is_some(),
        "finalizer kept"
    );
    assert_eq!(
        env.calls("update", "SEC0000001"),
        puts,
        "no call without a secret"
    );

    // The Secret is back: the Disable PUT is sent, then the object goes.
    env.apply(&secret(true));
    env.wait_gone("team-agent").await;
    assert_eq!(
        env.calls("update", "SEC0000001"),
        puts + 1,
        "one Disable PUT"
    );
    assert_eq!(env.sim.agent("SEC0000001").enabled, Some(false));
}
