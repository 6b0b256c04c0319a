//! A killed operator and a handed-over lease never buy a change twice.

use std::time::{Duration, Instant};

use dynamics_operator::sim::{Faults, ScriptedFault, SimConfig};
use kube::Api;

use crate::fast_sim;
use crate::support::operator::{manifest, Env, TIMEOUT};
use crate::support::wait::wait_for;

// 7. SIGKILL while a generation is in flight, then a restart: no second generate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_operator_restarts_without_a_second_generate() {
    let mut env = Env::start(
        "crash",
        SimConfig {
            generation_time: Duration::from_secs(3),
            ..SimConfig::default()
        },
    )
    .await;
    let agent = "CRASH00001";
    env.apply(&manifest("crashy", agent, ""));
    wait_for("generation in flight", TIMEOUT, || async {
        Ok((env.calls("generate", agent) == 1).then_some(()))
    })
    .await
    .unwrap();
    env.operators[0].kill_now();
    env.start_operator(&[]);
    env.wait_ready("crashy").await;
    assert_eq!(
        env.calls("generate", agent),
        1,
        "the restarted operator followed the running generation"
    );

    // Harder: the reply to the POST is lost (connection dropped after the API processed it) and
    // the operator is killed right after. The marker makes the next one look first.
    let agent = "CRASH00002";
    env.apply(&manifest("lost-reply", agent, "  suspend: true\n"));
    env.wait_reason("lost-reply", "Suspended").await;
    // Unsuspended, the object's first call is a GET (let it pass), its second the POST (drop it).
    env.sim.set_faults(Faults {
        script: [ScriptedFault::Pass, ScriptedFault::Drop].into(),
        ..Faults::default()
    });
    env.patch_spec("lost-reply", serde_json::json!({"suspend": false}))
        .await;
    wait_for("generate processed", TIMEOUT, || async {
        Ok((env.calls("generate", agent) == 1).then_some(()))
    })
    .await
    .unwrap();
    env.operators[1].kill_now();
    env.sim.set_faults(Faults::default());
    env.start_operator(&[]);
    let obj = env.wait_ready("lost-reply").await;
    assert_eq!(
        env.calls("generate", agent),
        1,
        "a lost reply is adopted, not sent again:\n{}",
        env.logs()
    );
    assert_eq!(obj.status.unwrap().generations, 1);
}

// 9. Two operators with leader election: one reconciles; kill it and the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over_and_still_generates_once() {
    let mut env = Env::start("leader", fast_sim()).await;
    // Env::start started a plain operator; replace it with two electing ones.
    env.operators[0].kill_now();
    let ns = env.ns.clone();
    let election = [
        "--leader-elect",
        "--lease-namespace",
        ns.as_str(),
        "--lease-name",
        "dynamics-e2e",
        "--lease-duration",
        "4",
    ];
    let first = env.start_operator(&election);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.cp.kube_client().await.unwrap(), &ns);
    let holder = wait_for("a leader", TIMEOUT, || async {
        Ok(leases
            .get_opt("dynamics-e2e")
            .await?
            .and_then(|l| l.spec?.holder_identity))
    })
    .await
    .unwrap();
    let second = env.start_operator(&election);

    env.apply(&manifest("led-1", "LEAD000001", ""));
    env.wait_ready("led-1").await;
    assert_eq!(env.calls("generate", "LEAD000001"), 1);
    let reconciled_by = |i: usize| {
        env.operators[i]
            .log_tail(1_000_000)
            .contains("GenerationStarted")
            || env.operators[i]
                .log_tail(1_000_000)
                .contains("generation 1 started")
    };
    assert!(
        reconciled_by(first),
        "the leader reconciled:\n{}",
        env.logs()
    );
    assert!(
        !reconciled_by(second),
        "the follower stayed idle:\n{}",
        env.logs()
    );

    env.operators[first].kill_now();
    let started = Instant::now();
    let new_holder = wait_for("a new leader", TIMEOUT, || async {
        Ok(leases
            .get_opt("dynamics-e2e")
            .await?
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| *h != holder))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert_ne!(new_holder, holder);
    env.apply(&manifest("led-2", "LEAD000002", ""));
    env.wait_ready("led-2").await;
    eprintln!("takeover and convergence took {:?}", started.elapsed());
    assert_eq!(
        env.calls("generate", "LEAD000001"),
        1,
        "the first object was not generated again"
    );
    assert_eq!(env.calls("generate", "LEAD000002"), 1);
}
