//! Deleting an object: the deletion policy decides what is sent.

use std::time::Duration;

use dynamics_operator::sim::Faults;
use kube::api::DeleteParams;

use crate::fast_sim;
use crate::support::operator::{manifest, Env};

// 3. Delete: Disable sends one PUT enabled=false; Orphan sends nothing; a remote already gone
//    does not keep the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_disables_orphans_or_releases() {
    let env = Env::start("delete", fast_sim()).await;
    env.apply(&manifest("disable-me", "DEL0000001", ""));
    env.apply(&manifest(
        "orphan-me",
        "DEL0000002",
        "  deletionPolicy: Orphan\n",
    ));
    env.apply(&manifest("gone-remote", "DEL0000003", ""));
    for name in ["disable-me", "orphan-me", "gone-remote"] {
        env.wait_ready(name).await;
    }

    env.api
        .delete("disable-me", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("disable-me").await;
    assert_eq!(
        env.calls("update", "DEL0000001"),
        2,
        "one PUT to apply, one to disable"
    );
    assert_eq!(env.sim.agent("DEL0000001").enabled, Some(false));

    let before = env.sim.stats();
    env.api
        .delete("orphan-me", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("orphan-me").await;
    let after = env.sim.stats();
    for endpoint in ["generate", "get", "update"] {
        assert_eq!(
            after.count(endpoint, Some("DEL0000002"), None),
            before.count(endpoint, Some("DEL0000002"), None),
            "Orphan: no {endpoint}"
        );
    }
    assert_eq!(env.sim.agent("DEL0000002").enabled, Some(true));

    env.sim.mark_unknown("DEL0000003");
    env.api
        .delete("gone-remote", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("gone-remote").await;
}

// An edit and a delete close together: the pass that began from the edit must not PUT it once
// the object is terminating; its deletion decides what the API gets (Orphan: nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_then_a_delete_never_applies_the_edit() {
    let env = Env::start("edit-delete", fast_sim()).await;
    let agent = "EDITDEL001";
    env.apply(&manifest(
        "edit-then-delete",
        agent,
        "  deletionPolicy: Orphan\n",
    ));
    env.wait_ready("edit-then-delete").await;
    let puts_before = env.calls("update", agent);

    // Every API call now takes 3 s: the edit's pass is still in its GET when the delete lands.
    env.sim.set_faults(Faults {
        latency_ms: 3_000,
        ..Faults::default()
    });
    env.patch_spec(
        "edit-then-delete",
        serde_json::json!({"dynamics": {"enabled": false}}),
    )
    .await;
    // The edit's pass starts within milliseconds and waits 3 s on its GET; the sim counts a
    // call only once it is answered, so the test gives the pass a second to be in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.api
        .delete("edit-then-delete", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("edit-then-delete").await;
    env.sim.set_faults(Faults::default());
    assert_eq!(
        env.calls("update", agent),
        puts_before,
        "no PUT after the delete (Orphan):\n{}",
        env.logs()
    );
    assert_eq!(
        env.sim.agent(agent).enabled,
        Some(true),
        "the edit never applied"
    );
}
