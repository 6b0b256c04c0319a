//! Create, edit, suspend and leave alone: each change sends exactly the calls it needs.

use std::collections::BTreeMap;
use std::time::Duration;

use dynamics_operator::sim::SimConfig;

use crate::fast_sim;
use crate::support::operator::{manifest, Env, TIMEOUT};
use crate::support::wait::wait_for;

// 1. Create: Ready with exactly one generate and one PUT; kubectl sees it as users would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_becomes_ready_with_one_generate_and_one_put() {
    let env = Env::start("create", fast_sim()).await;
    let full = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/full.yaml"))
        .unwrap();
    env.apply(&full);

    let out = env.cp.kubectl([
        "wait",
        "-n",
        &env.ns,
        "--for=condition=Ready",
        "agentdynamics/support-agent",
        "--timeout=90s",
    ]);
    assert!(
        out.status.success(),
        "kubectl wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.logs()
    );

    let obj = env.wait_ready("support-agent").await;
    let agent = "B72KQP4410";
    assert_eq!(env.calls("generate", agent), 1, "exactly one generate");
    assert_eq!(env.calls("update", agent), 1, "exactly one PUT");
    let status = obj.status.unwrap();
    assert_eq!(status.generations, 1);
    assert_eq!(status.remote_status.as_deref(), Some("ready"));
    assert!(status.model_url.is_some());
    assert!(obj
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&dynamics_operator::resource::FINALIZER.to_string()));
    // What the simulator received is what the spec says.
    let remote = env.sim.agent(agent);
    assert_eq!(remote.enabled, Some(true));
    let sent = remote
        .last_generate_request
        .expect("generate body recorded");
    assert_eq!(sent["duration"], 3);
    assert_eq!(sent["model"], "seedance");
    assert_eq!(
        sent["motion_prompts"],
        serde_json::json!(["wave", "nod", "smile"])
    );

    let table = env.cp.kubectl_ok(["get", "agdyn", "-n", &env.ns]).unwrap();
    for column in ["NAME", "AGENT", "MODEL", "REMOTE", "READY", "REASON", "AGE"] {
        assert!(
            table.contains(column),
            "printer column {column} missing:\n{table}"
        );
    }
    assert!(
        table.contains("B72KQP4410") && table.contains("ready") && table.contains("True"),
        "{table}"
    );

    // The operator's own view: health endpoints and metrics.
    let metrics_url = env.metrics_url(0);
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let reply = http
            .get(format!("{metrics_url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}\n{}", env.logs());
    }
    let metrics = http
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "dynamics_operator_generations_total 1",
        r#"dynamics_operator_remote_calls_total{endpoint="generate",code="200"} 1"#,
        r#"dynamics_operator_remote_calls_total{endpoint="update",code="200"} 1"#,
        r#"dynamics_operator_objects{ready="true"} 1"#,
        r#"dynamics_operator_reconciles_total{result="ready"}"#,
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }

    let explain = env
        .cp
        .kubectl_ok(["explain", "agentdynamics.spec.duration"])
        .unwrap();
    assert!(explain.contains("Seconds per motion"), "{explain}");
}

// 2. Edits: a generate input → one generate; only the dynamics block → one PUT; two edits
//    while a generation runs → one further generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_send_exactly_the_calls_they_need() {
    let env = Env::start(
        "edit",
        SimConfig {
            generation_time: Duration::from_secs(2),
            ..SimConfig::default()
        },
    )
    .await;
    let agent = "EDIT000001";
    env.apply(&manifest("edited", agent, "  duration: 5\n"));
    env.wait_ready("edited").await;
    assert_eq!(
        (env.calls("generate", agent), env.calls("update", agent)),
        (1, 1)
    );

    env.patch_spec("edited", serde_json::json!({"duration": 3}))
        .await;
    env.wait_ready("edited").await;
    assert_eq!(
        env.calls("generate", agent),
        2,
        "a duration edit costs exactly one generation"
    );
    assert_eq!(
        env.calls("update", agent),
        2,
        "the new generation is switched on with one PUT"
    );

    env.patch_spec(
        "edited",
        serde_json::json!({"dynamics": {"enabled": false}}),
    )
    .await;
    env.wait_ready("edited").await;
    assert_eq!(
        env.calls("generate", agent),
        2,
        "a dynamics-only edit generates nothing"
    );
    assert_eq!(
        env.calls("update", agent),
        3,
        "a dynamics-only edit is one PUT"
    );
    assert_eq!(env.sim.agent(agent).enabled, Some(false));

    // Two edits while a generation runs: coalesced into one more generation for the newest spec.
    env.patch_spec("edited", serde_json::json!({"duration": 4}))
        .await;
    wait_for("remote generating", TIMEOUT, || async {
        Ok((env.sim.agent(agent).status.as_deref() == Some("generating")).then_some(()))
    })
    .await
    .unwrap();
    env.patch_spec("edited", serde_json::json!({"duration": 6}))
        .await;
    env.patch_spec("edited", serde_json::json!({"duration": 7}))
        .await;
    let obj = env.wait_ready("edited").await;
    assert_eq!(
        env.calls("generate", agent),
        4,
        "duration 4, then one generation for 6 and 7 together"
    );
    assert_eq!(
        env.sim.agent(agent).last_generate_request.unwrap()["duration"],
        7
    );
    assert_eq!(
        env.sim.stats().overlapping_generations,
        0,
        "never a POST while the agent was generating"
    );
    assert_eq!(obj.status.unwrap().generations, 4);
}

// 5. suspend: true — no remote calls at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_objects_make_no_remote_calls() {
    let env = Env::start("suspend", fast_sim()).await;
    env.apply(&manifest("paused", "SUS0000001", "  suspend: true\n"));
    env.wait_reason("paused", "Suspended").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = env.sim.stats();
    assert_eq!(
        stats.total("generate") + stats.total("get") + stats.total("update"),
        0,
        "suspended: nothing sent"
    );

    // Unsuspending converges it.
    env.patch_spec("paused", serde_json::json!({"suspend": false}))
        .await;
    env.wait_ready("paused").await;
    assert_eq!(env.calls("generate", "SUS0000001"), 1);
}

// 8. A converged set of objects is quiet: no status writes and no POST or PUT while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converged_objects_cause_no_writes_when_idle() {
    let env = Env::start("idle", fast_sim()).await;
    let names: Vec<String> = (0..3).map(|i| format!("idle-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.apply(&manifest(
            name,
            &format!("IDLE00000{i}"),
            "  model: kling\n",
        ));
    }
    let mut versions = BTreeMap::new();
    for name in &names {
        env.wait_ready(name).await;
    }
    for name in &names {
        versions.insert(name.clone(), env.get(name).await.metadata.resource_version);
    }
    let before = env.sim.stats();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after = env.sim.stats();
    assert_eq!(
        after.total("generate"),
        before.total("generate"),
        "no POST while idle"
    );
    assert_eq!(
        after.total("update"),
        before.total("update"),
        "no PUT while idle"
    );
    for name in &names {
        assert_eq!(
            env.get(name).await.metadata.resource_version,
            versions[name],
            "{name} was rewritten while idle"
        );
    }
}
