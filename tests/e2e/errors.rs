//! What the remote refuses and what admission refuses: stalls with a reason, no retry storm.

use std::time::Duration;

use crate::fast_sim;
use crate::support::operator::{manifest, Env, SECRET};

// 4. Unknown agent, no credits, wrong secret: Stalled with a reason naming the cause, few
//    calls per minute; fixing the Secret alone brings the object to Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_errors_stall_without_a_retry_storm_and_a_fixed_secret_recovers() {
    let env = Env::start("errors", fast_sim()).await;
    env.sim.mark_unknown("ERR0000404");
    env.apply(&manifest("unknown-agent", "ERR0000404", ""));
    let obj = env.wait_reason("unknown-agent", "AgentNotFound").await;
    let stalled = obj.status.unwrap().condition("Stalled").cloned().unwrap();
    assert_eq!(stalled.status, "True");
    assert!(
        stalled.message.contains("agentId"),
        "the message says what to fix: {}",
        stalled.message
    );

    // Wrong secret in a referenced Secret.
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-secret\n  labels:\n    dynamics.bithuman.ai/api-secret: \"true\"\nstringData:\n  api-secret: not-the-right-one\n---\n{}",
        manifest("wrong-secret", "ERR0000401", "  apiSecretRef:\n    name: team-secret\n")
    ));
    let obj = env.wait_reason("wrong-secret", "Unauthorized").await;
    let message = obj
        .status
        .unwrap()
        .condition("Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        !message.contains("not-the-right-one"),
        "no secret in status: {message}"
    );

    // No calls beyond the first few while stalled.
    let window = Duration::from_secs(10);
    let before = env.sim.stats();
    tokio::time::sleep(window).await;
    let after = env.sim.stats();
    let delta = |agent: &str| -> u64 {
        ["generate", "get", "update"]
            .iter()
            .map(|e| after.count(e, Some(agent), None) - before.count(e, Some(agent), None))
            .sum()
    };
    assert!(
        delta("ERR0000404") <= 2,
        "404 object made {} calls in {window:?}",
        delta("ERR0000404")
    );
    assert!(
        delta("ERR0000401") <= 2,
        "401 object made {} calls in {window:?}",
        delta("ERR0000401")
    );

    // Fix the Secret only: the object recovers without being touched.
    let generation = env.get("wrong-secret").await.metadata.generation;
    env.apply(&format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-secret\n  labels:\n    dynamics.bithuman.ai/api-secret: \"true\"\nstringData:\n  api-secret: {SECRET}\n"));
    let obj = env.wait_ready("wrong-secret").await;
    assert_eq!(
        obj.metadata.generation, generation,
        "the object itself was not edited"
    );

    // No credits left.
    env.sim.set_credits(0);
    env.apply(&manifest("no-credits", "ERR0000402", ""));
    let obj = env.wait_reason("no-credits", "InsufficientCredits").await;
    let message = obj
        .status
        .unwrap()
        .condition("Stalled")
        .unwrap()
        .message
        .clone();
    assert!(message.to_lowercase().contains("credits"), "{message}");
    assert!(
        !env.logs().contains(SECRET),
        "the operator's secret never appears in its logs"
    );
}

// 6. Invalid manifests are refused at admission with the field named; nothing reaches the remote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_refused_with_the_field_named() {
    let env = Env::start("invalid", fast_sim()).await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty agentId", manifest("bad-1", "\"\"", ""), "spec.agentId"),
        ("malformed agentId", manifest("bad-2", "\"has spaces!\"", ""), "spec.agentId"),
        ("missing agentId", "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: bad-3\nspec:\n  duration: 5\n".into(), "spec.agentId"),
        ("duration 0", manifest("bad-4", "A1", "  duration: 0\n"), "spec.duration"),
        ("duration 11", manifest("bad-5", "A1", "  duration: 11\n"), "spec.duration"),
        ("ftp imageUrl", manifest("bad-6", "A1", "  imageUrl: ftp://example.com/a.jpg\n"), "spec.imageUrl"),
        ("unknown field", manifest("bad-7", "A1", "  colour: blue\n"), "colour"),
        ("unknown deletionPolicy", manifest("bad-8", "A1", "  deletionPolicy: Delete\n"), "spec.deletionPolicy"),
        ("upper-case model", manifest("bad-9", "A1", "  model: Seedance\n"), "spec.model"),
        (
            "non-http video URL",
            manifest("bad-10", "A1", "  dynamics:\n    batchResults:\n      wave: {videoUrl: \"file:///etc/passwd\"}\n"),
            "videoUrl",
        ),
    ];
    for (what, yaml, field) in &cases {
        let out = env
            .cp
            .kubectl_stdin(["apply", "-n", &env.ns, "-f", "-"], yaml.as_bytes())
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            stderr.contains(field),
            "{what}: error does not name {field}: {stderr}"
        );
    }

    // agentId is immutable.
    env.sim.mark_unknown("IMMUTABLE1"); // keep it from generating; only admission matters here
    env.apply(&manifest("fixed-agent", "IMMUTABLE1", "  suspend: true\n"));
    let out = env
        .cp
        .kubectl_stdin(
            ["apply", "-n", &env.ns, "-f", "-"],
            manifest("fixed-agent", "IMMUTABLE2", "  suspend: true\n").as_bytes(),
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("immutable"),
        "agentId change accepted: {stderr}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = env.sim.stats();
    assert_eq!(
        stats.total("generate") + stats.total("get") + stats.total("update"),
        0,
        "nothing reached the remote"
    );
}
