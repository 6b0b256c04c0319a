//! Budgets: a cap on credits per period stops a rollout where it is reached, and the rest go on
//! when the period ends; the spend report says what was paid, call by call.

use std::time::Duration;

use crate::fast_sim;
use crate::support::operator::{manifest, Env, Pace, TIMEOUT};
use crate::support::wait::wait_for;

fn reconciling_reason(obj: &dynamics_operator::resource::AgentDynamics) -> Option<String> {
    let c = obj.status.as_ref()?.condition("Reconciling")?;
    (c.status == "True").then(|| c.reason.clone())
}

// A budget of three generations a day (a day, not an hour: a run that straddles the
// period's end is then rare), reached mid-rollout: three objects are bought, the
// other two wait with a reason that names the budget (Reconciling, never Stalled), and nothing
// is bought beyond it, across a restart. A day later (the operator's clock moved on) the two
// are bought, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_reached_mid_rollout_holds_the_rest_until_its_period_ends() {
    let mut env = Env::new("budget", fast_sim(), Pace::Fast).await;
    let ns = env.ns.clone();
    // Each namespace on its own: the other tests' purchases (same API key, same ledger) are
    // not this namespace's.
    let budget = "namespace:750/day";
    env.start_operator_with(
        &ns,
        &["--budget", budget, "--max-concurrent-generations", "1"],
        &[],
    );
    let agents: Vec<String> = (1..=5).map(|i| format!("BUDGET0000{i}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        env.apply(&manifest(&format!("rollout-{i}"), agent, ""));
    }
    let generated = |env: &Env| -> u64 { agents.iter().map(|a| env.calls("generate", a)).sum() };
    let settled = wait_for(
        "three Ready and two held by the budget",
        TIMEOUT,
        || async {
            let objects = env.api.list(&Default::default()).await?;
            let ready = objects
                .items
                .iter()
                .filter(|o| o.status.as_ref().is_some_and(|s| s.is_ready()))
                .count();
            let held: Vec<_> = objects
                .items
                .iter()
                .filter(|o| reconciling_reason(o).as_deref() == Some("BudgetExceeded"))
                .cloned()
                .collect();
            Ok((ready == 3 && held.len() == 2).then_some(held))
        },
    )
    .await;
    let held = settled.unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert_eq!(generated(&env), 3, "nothing bought beyond the budget");
    let message = held[0]
        .status
        .as_ref()
        .and_then(|s| s.condition("Reconciling"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(budget) && message.contains("750 of 750") && message.contains("frees at"),
        "{message}"
    );
    assert!(held[0]
        .status
        .as_ref()
        .unwrap()
        .condition("Stalled")
        .is_none_or(|c| c.status != "True"));
    let metrics = reqwest::get(format!("{}/metrics", env.metrics_url(0)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "dynamics_operator_budget_waits_total{{budget=\"{budget}\"}} 2"
        )),
        "{metrics}"
    );

    // A restart counts what was spent before it (the ledger), so it buys nothing either.
    env.operators[0].kill_now();
    env.start_operator_with(&ns, &["--budget", budget], &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        generated(&env),
        3,
        "a restart does not reset the budget\n{}",
        env.logs()
    );

    // A day later the period has freed: the two are bought, once each.
    env.operators[1].kill_now();
    env.start_operator_with(
        &ns,
        &["--budget", budget],
        &[("DYNAMICS_CLOCK_SKEW", "86400")],
    );
    wait_for("all five Ready", TIMEOUT, || async {
        let objects = env.api.list(&Default::default()).await?;
        Ok(objects
            .items
            .iter()
            .all(|o| o.status.as_ref().is_some_and(|s| s.is_ready()))
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    for agent in &agents {
        assert_eq!(env.calls("generate", agent), 1, "{agent}");
    }

    // The spend report, from the ledger, matches the simulator's record of charged calls.
    let out = std::process::Command::new(crate::support::operator::operator_binary())
        .args(["spend", "-n", &ns, "-o", "json"])
        .env("KUBECONFIG", env.cp.kubeconfig_path())
        .output()
        .expect("spend runs");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut reported: Vec<(String, u64)> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["agentId"].as_str().unwrap().to_string(),
                r["credits"].as_u64().unwrap(),
            )
        })
        .collect();
    reported.sort();
    let mut charged: Vec<(String, u64)> = env
        .sim
        .generations()
        .iter()
        .filter(|g| g.is_charged() && agents.contains(&g.agent_id))
        .map(|g| (g.agent_id.clone(), 250))
        .collect();
    charged.sort();
    assert_eq!(reported, charged, "{report}");
    assert_eq!(report["credits"], 1250);
    assert_eq!(report["creditsByNamespace"][&ns], 1250);
}

fn reconciling_message(obj: &dynamics_operator::resource::AgentDynamics) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.condition("Reconciling"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

async fn wait_reconciling(
    env: &Env,
    name: &str,
    reason: &str,
) -> dynamics_operator::resource::AgentDynamics {
    wait_for(&format!("{name} Reconciling {reason}"), TIMEOUT, || async {
        let obj = env.api.get(name).await?;
        Ok((reconciling_reason(&obj).as_deref() == Some(reason)).then_some(obj))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()))
}

// With approval required, a change that would buy waits, naming its key and cost; `approve`
// approves that key and nothing else: the next edit waits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_buys_its_own_key_only() {
    let mut env = Env::new("approve", fast_sim(), Pace::Fast).await;
    let ns = env.ns.clone();
    env.start_operator_with(&ns, &["--require-approval", &ns], &[]);
    let agent = "APPROVE001";
    env.apply(&manifest(
        "reviewed",
        agent,
        "  imageUrl: https://example.com/a.jpg\n",
    ));
    let waiting = wait_reconciling(&env, "reviewed", "ApprovalRequired").await;
    let key = dynamics_operator::reconcile::desired::inputs_hash(&waiting.spec);
    let message = reconciling_message(&waiting);
    assert!(
        message.contains(&key) && message.contains("250 credits"),
        "{message}"
    );
    assert!(
        message.contains(&format!("dynamics-operator approve {ns}/reviewed")),
        "{message}"
    );
    assert_eq!(env.calls("generate", agent), 0);

    let approve = || {
        let out = std::process::Command::new(crate::support::operator::operator_binary())
            .args(["approve", &format!("{ns}/reviewed")])
            .env("KUBECONFIG", env.cp.kubeconfig_path())
            .output()
            .expect("approve runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = approve();
    assert!(said.contains(&key), "{said}");
    env.wait_ready("reviewed").await;
    assert_eq!(env.calls("generate", agent), 1);

    // The approval was for that key: an edit waits for its own.
    env.patch_spec(
        "reviewed",
        serde_json::json!({"imageUrl": "https://example.com/b.jpg"}),
    )
    .await;
    let again = wait_reconciling(&env, "reviewed", "ApprovalRequired").await;
    let message = reconciling_message(&again);
    assert!(message.contains("not this one"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.calls("generate", agent),
        1,
        "nothing bought without its approval"
    );
    approve();
    wait_for("the edit bought once", TIMEOUT, || async {
        let obj = env.api.get("reviewed").await?;
        let ready = obj
            .status
            .as_ref()
            .is_some_and(|s| s.is_ready() && s.observed_generation == obj.metadata.generation);
        Ok((ready && env.calls("generate", agent) == 1 + 1).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
}
