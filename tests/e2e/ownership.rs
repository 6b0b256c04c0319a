//! Two objects naming one agent, and the refresh annotation.

use kube::api::{Patch, PatchParams};

use crate::fast_sim;
use crate::support::operator::{manifest, Env, Pace, TIMEOUT};
use crate::support::wait::wait_for;

// Two objects naming one agent: the later one is Stalled with reason Conflict and costs nothing.
// Also: the reconcile-requested-at annotation, and Flux's reconcile.fluxcd.io/requestedAt,
// trigger a pass and are echoed in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_object_for_an_agent_is_a_conflict_and_refresh_is_echoed() {
    let env = Env::start("conflict", fast_sim()).await;
    env.apply(&manifest("owner", "CONFLICT01", ""));
    env.wait_ready("owner").await;
    env.apply(&manifest("intruder", "CONFLICT01", "  duration: 2\n"));
    let obj = env.wait_reason("intruder", "Conflict").await;
    let message = obj
        .status
        .unwrap()
        .condition("Stalled")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("owner"),
        "the message names the owner: {message}"
    );
    assert_eq!(
        env.calls("generate", "CONFLICT01"),
        1,
        "nothing was generated for the intruder"
    );
    assert!(env
        .sim
        .agent("CONFLICT01")
        .last_generate_request
        .unwrap()
        .get("duration")
        .is_none());

    let gets_before = env.calls("get", "CONFLICT01");
    let annotation = serde_json::json!({"metadata": {"annotations": {dynamics_operator::resource::RECONCILE_REQUESTED_AT: "2026-11-29T10:00:00Z"}}});
    env.api
        .patch("owner", &PatchParams::default(), &Patch::Merge(annotation))
        .await
        .unwrap();
    wait_for("refresh echoed", TIMEOUT, || async {
        let obj = env.api.get("owner").await?;
        let echoed = obj.status.and_then(|s| s.last_handled_reconcile_at);
        Ok((echoed.as_deref() == Some("2026-11-29T10:00:00Z")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert!(
        env.calls("get", "CONFLICT01") > gets_before,
        "the refresh looked at the remote again"
    );
    assert_eq!(
        env.calls("generate", "CONFLICT01"),
        1,
        "a refresh is not a regeneration"
    );

    // Flux's annotation is a refresh too, echoed the same way, on an object without ours.
    let gets_before = env.calls("get", "CONFLICT01");
    let flux = serde_json::json!({"metadata": {"annotations": {
        dynamics_operator::resource::RECONCILE_REQUESTED_AT: null,
        dynamics_operator::resource::FLUX_RECONCILE_REQUESTED_AT: "2026-11-29T11:00:00.123456789Z"}}});
    env.api
        .patch("owner", &PatchParams::default(), &Patch::Merge(flux))
        .await
        .unwrap();
    wait_for("Flux refresh echoed", TIMEOUT, || async {
        let obj = env.api.get("owner").await?;
        let echoed = obj.status.and_then(|s| s.last_handled_reconcile_at);
        Ok((echoed.as_deref() == Some("2026-11-29T11:00:00.123456789Z")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert!(
        env.calls("get", "CONFLICT01") > gets_before,
        "the Flux refresh looked at the remote again"
    );
    assert_eq!(env.calls("generate", "CONFLICT01"), 1);
}

/// A start passes an object whose user waits before its first list is complete, asking the API
/// server for every object naming its agent (the index has seen only part of them). That needs
/// the CRD to make `spec.agentId` selectable, and the answer to hold exactly those objects, in
/// every namespace the operator watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_lists_every_object_naming_an_agent() {
    use dynamics_operator::controller::objects_naming;
    let env = Env::new("naming", fast_sim(), Pace::Fast).await;
    let other = Env::new("naming2", fast_sim(), Pace::Fast).await;
    env.apply(&manifest("a", "NAMING01", ""));
    env.apply(&manifest("b", "NAMING02", ""));
    env.apply(&manifest("c", "NAMING01", ""));
    other.apply(&manifest("d", "NAMING01", ""));
    let names = |objects: Vec<dynamics_operator::resource::AgentDynamics>| {
        let mut names: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or("")
                )
            })
            .collect();
        names.sort();
        names
    };
    let in_namespace = objects_naming(&env.api, "NAMING01")
        .await
        .expect("the field is selectable");
    assert_eq!(
        names(in_namespace),
        [format!("{}/a", env.ns), format!("{}/c", env.ns)]
    );
    let everywhere: kube::Api<dynamics_operator::resource::AgentDynamics> =
        kube::Api::all(env.cp.kube_client().await.unwrap());
    let mut expected = vec![
        format!("{}/a", env.ns),
        format!("{}/c", env.ns),
        format!("{}/d", other.ns),
    ];
    expected.sort();
    assert_eq!(
        names(objects_naming(&everywhere, "NAMING01").await.unwrap()),
        expected
    );
    assert!(objects_naming(&env.api, "NAMING03")
        .await
        .unwrap()
        .is_empty());
}
