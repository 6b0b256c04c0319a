//! Two objects naming one agent, and the refresh annotation.

use kube::api::{Patch, PatchParams};

use crate::fast_sim;
use crate::support::operator::{manifest, Env, TIMEOUT};
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
