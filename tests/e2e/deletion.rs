//! Deleting an object: the deletion policy decides what is sent.

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
