//! The generation guard and the stalls of credit safety, as `kubectl get` shows them.

use std::time::{Duration, Instant};

use dynamics_operator::sim::SimConfig;
use kube::api::{Patch, PatchParams};

use crate::fast_sim;
use crate::support::operator::{manifest, Env, TIMEOUT};

// The generation guard: with room for one generation, objects queue with a reason and the
// account never runs two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_guard_queues_objects_with_a_reason() {
    let mut env = Env::start(
        "guard",
        SimConfig {
            generation_time: Duration::from_millis(1500),
            max_concurrent: 0,
            ..SimConfig::default()
        },
    )
    .await;
    env.operators[0].kill_now();
    env.start_operator(&["--max-concurrent-generations", "1"]);
    let agents = ["GUARD00001", "GUARD00002", "GUARD00003"];
    for (i, agent) in agents.iter().enumerate() {
        env.apply(&manifest(&format!("queued-{i}"), agent, ""));
    }
    let mut saw_waiting = false;
    let started = Instant::now();
    let deadline = started + TIMEOUT;
    loop {
        let generating = agents
            .iter()
            .filter(|a| env.sim.agent(a).status.as_deref() == Some("generating"))
            .count();
        assert!(
            generating <= 1,
            "{generating} generations at once with --max-concurrent-generations 1"
        );
        let objects = env.api.list(&Default::default()).await.unwrap();
        saw_waiting |= objects.items.iter().any(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.condition("Reconciling"))
                .is_some_and(|c| c.reason == "WaitingForGenerationSlot")
        });
        let ready = objects
            .items
            .iter()
            .filter(|o| o.status.as_ref().is_some_and(|s| s.is_ready()))
            .count();
        if ready == agents.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all Ready in time\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_waiting, "a queued object said why it waits");
    // Waiters are woken when a slot frees, not by their 20 s fallback (--stalled-retry): three
    // 1.5 s generations in a row end well before the fallback would even fire once.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(18),
        "took {elapsed:?}: waiting objects were not woken\n{}",
        env.logs()
    );
    for agent in agents {
        assert_eq!(env.calls("generate", agent), 1);
    }
}

// Every way credit safety stops an object shows in `kubectl get agdyn` as users see it: the
// REASON column names it, READY is False, and nothing more is bought for any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_safety_stalls_read_plainly_in_kubectl_get() {
    use dynamics_operator::sim::{ConvergedReply, Modes};
    let env = Env::start(
        "stalls",
        SimConfig {
            honour_idempotency_key: false,
            ..fast_sim()
        },
    )
    .await;
    // Accepted, but the API never shows the job within the window (8 s here).
    env.sim.set_agent_modes(
        "STL0000001",
        Some(Modes {
            invisible_ms: 3_600_000,
            ..Modes::default()
        }),
    );
    // Processed, its reply held past the client's timeout (5 s), and never shown either.
    env.sim.set_agent_modes(
        "STL0000002",
        Some(Modes {
            invisible_ms: 3_600_000,
            reply_delay_ms: 7_000,
            ..Modes::default()
        }),
    );
    for (name, agent) in [
        ("lagging", "STL0000001"),
        ("lost-reply", "STL0000002"),
        ("vanished", "STL0000003"),
        ("reverted", "STL0000004"),
    ] {
        env.apply(&manifest(name, agent, ""));
    }
    env.wait_ready("vanished").await;
    env.wait_ready("reverted").await;
    // The API loses a converged agent's dynamics.
    env.sim.set_agent_modes(
        "STL0000003",
        Some(Modes {
            converged_reply: ConvergedReply::DataNull,
            ..Modes::default()
        }),
    );
    env.api
        .patch(
            "vanished",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "dynamics.bithuman.ai/reconcile-requested-at": "now"}}})),
        )
        .await
        .unwrap();
    // An edit, then the edit reverted: the first inputs were bought already.
    env.patch_spec("reverted", serde_json::json!({"regenerate": "second"}))
        .await;
    env.wait_ready("reverted").await;
    env.patch_spec("reverted", serde_json::json!({"regenerate": null}))
        .await;

    let want = [
        ("lagging", "GenerationNotVisible"),
        ("lost-reply", "GenerationOutcomeUnknown"),
        ("vanished", "RemoteDynamicsMissing"),
        ("reverted", "InputsAlreadyBought"),
    ];
    for (name, reason) in want {
        env.wait_reason(name, reason).await;
    }
    let table = env
        .cp
        .kubectl_ok(["-n", env.ns.as_str(), "get", "agdyn"])
        .expect("kubectl get agdyn");
    println!("{table}");
    for (name, reason) in want {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing in\n{table}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert!(columns.contains(&"False"), "{row}");
        assert!(columns.contains(&reason), "{row}");
    }
    for agent in ["STL0000001", "STL0000002", "STL0000003"] {
        let charged = env
            .sim
            .generations()
            .iter()
            .filter(|g| g.agent_id == agent && g.is_charged())
            .count();
        assert_eq!(charged, 1, "{agent}: one change, one purchase");
    }
    assert_eq!(
        env.sim
            .generations()
            .iter()
            .filter(|g| g.agent_id == "STL0000004")
            .count(),
        2,
        "two distinct inputs, two purchases; the revert buys nothing"
    );
}
