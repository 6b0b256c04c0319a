//! The purchase ledger: what GitOps users do every week (re-create an object, replace it,
//! lose its status, run two installs, point a new object at an agent that already has
//! dynamics) buys nothing again, and every stall about money has two explicit ways out. The
//! simulator charges every generate call here (idempotency honouring off), so its call count
//! is the bill.

use std::time::Duration;

use dynamics_operator::api::{ApiSecret, ClientConfig, DynamicsClient, GenerateRequest};
use dynamics_operator::reconcile::ledger::record_name;
use dynamics_operator::resource::{AgentDynamics, DynamicsLedger, RECONCILE_REQUESTED_AT};
use dynamics_operator::sim::{Modes, SimConfig};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;

use crate::fast_sim;
use crate::support::operator::{manifest, operator_binary, ready_reason, Env, SECRET, TIMEOUT};
use crate::support::wait::wait_for;

fn charged() -> SimConfig {
    SimConfig {
        honour_idempotency_key: false,
        ..fast_sim()
    }
}

async fn ledger(env: &Env, agent: &str) -> Option<DynamicsLedger> {
    let api: Api<DynamicsLedger> = Api::all(env.cp.kube_client().await.unwrap());
    api.get_opt(&record_name(agent)).await.unwrap()
}

async fn delete_and_wait(env: &Env, name: &str) {
    env.api
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    env.wait_gone(name).await;
}

/// Waits until `name` is Ready with a uid other than `old_uid`.
async fn wait_ready_again(env: &Env, name: &str, old_uid: &str) -> AgentDynamics {
    env.wait(name, "Ready as a new object", |o| {
        o.metadata.uid.as_deref() != Some(old_uid)
            && o.status.as_ref().is_some_and(|s| s.is_ready())
    })
    .await
}

/// `dynamics-operator resolve NAMESPACE/NAME --accept|--retry`, as a user runs it.
fn resolve(env: &Env, name: &str, choice: &str) {
    let out = std::process::Command::new(operator_binary())
        .args(["resolve", &format!("{}/{name}", env.ns), choice])
        .env("KUBECONFIG", env.cp.kubeconfig_path())
        .output()
        .expect("run resolve");
    assert!(
        out.status.success(),
        "resolve failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stalled_message(obj: &AgentDynamics) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.condition("Stalled"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

// Delete and re-create with the same spec, `kubectl replace --force`, and a wiped status with
// a refresh: one purchase in all, and the ledger keeps it while its objects come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_replaced_and_wiped_objects_buy_nothing_again() {
    const AGENT: &str = "LEDGER0001";
    let env = Env::start("ledger-recreate", charged()).await;
    let yaml = manifest("support", AGENT, "");
    env.apply(&yaml);
    let first = env.wait_ready("support").await;
    assert_eq!(env.calls("generate", AGENT), 1);
    let record = ledger(&env, AGENT)
        .await
        .expect("the purchase is on record");
    assert_eq!(record.spec.purchases.len(), 1);
    assert_eq!(
        record.spec.holder.as_ref().map(|h| h.object.clone()),
        Some(format!("{}/support", env.ns))
    );

    // Deleted (the Disable PUT runs) and created again from the same manifest.
    delete_and_wait(&env, "support").await;
    let released = ledger(&env, AGENT)
        .await
        .expect("the ledger outlives the object");
    assert_eq!(released.spec.holder, None, "deletion releases the claim");
    assert_eq!(
        released.spec.purchases, record.spec.purchases,
        "and keeps the purchase"
    );
    env.apply(&yaml);
    let again = wait_ready_again(&env, "support", first.metadata.uid.as_deref().unwrap()).await;
    assert_eq!(ready_reason(&again).as_deref(), Some("Adopted"));
    assert_eq!(
        env.calls("generate", AGENT),
        1,
        "re-created: nothing bought"
    );

    // kubectl replace --force: deleted and created in one command.
    let file = env.dir.path().join("support.yaml");
    std::fs::write(&file, &yaml).unwrap();
    env.cp
        .kubectl_ok([
            "replace",
            "--force",
            "-n",
            &env.ns,
            "-f",
            file.to_str().unwrap(),
        ])
        .expect("kubectl replace --force");
    let replaced = wait_ready_again(&env, "support", again.metadata.uid.as_deref().unwrap()).await;
    assert_eq!(env.calls("generate", AGENT), 1, "replaced: nothing bought");

    // The status wiped (a restore that drops it), then a refresh.
    env.api
        .patch_status(
            "support",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": null})),
        )
        .await
        .expect("wipe status");
    let refresh =
        serde_json::json!({"metadata": {"annotations": {RECONCILE_REQUESTED_AT: "wiped"}}});
    env.api
        .patch("support", &PatchParams::default(), &Patch::Merge(refresh))
        .await
        .unwrap();
    env.wait("support", "Ready after the wipe", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.is_ready() && s.last_handled_reconcile_at.as_deref() == Some("wiped")
        })
    })
    .await;
    assert_eq!(
        env.calls("generate", AGENT),
        1,
        "wiped status: nothing bought"
    );
    assert_eq!(env.get("support").await.metadata.uid, replaced.metadata.uid);
}

// An agent whose dynamics exist before any object names it is adopted, unless the object asks
// to regenerate on first sight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_dynamics_are_adopted_unless_the_object_asks_to_regenerate() {
    const ADOPTED: &str = "LEDGER0002";
    const REGENERATED: &str = "LEDGER0003";
    let env = Env::start("ledger-adopt", charged()).await;
    let client = DynamicsClient::new(ClientConfig {
        base_url: env.sim.url(),
        ..ClientConfig::default()
    })
    .unwrap();
    let secret = ApiSecret::new(SECRET);
    for agent in [ADOPTED, REGENERATED] {
        let request = GenerateRequest {
            agent_id: agent.into(),
            ..Default::default()
        };
        client.generate(&secret, &request, None).await.unwrap();
    }
    wait_for("the agents' own dynamics are ready", TIMEOUT, || async {
        let ready = [ADOPTED, REGENERATED]
            .iter()
            .all(|a| env.sim.agent(a).status.as_deref() == Some("ready"));
        Ok(ready.then_some(()))
    })
    .await
    .unwrap();

    env.apply(&manifest("adopter", ADOPTED, ""));
    env.apply(&manifest(
        "regenerator",
        REGENERATED,
        "  adoptionPolicy: Regenerate\n",
    ));
    let adopter = env.wait_ready("adopter").await;
    assert_eq!(ready_reason(&adopter).as_deref(), Some("Adopted"));
    let message = adopter
        .status
        .as_ref()
        .and_then(|s| s.condition("Ready"))
        .map(|c| c.message.clone())
        .unwrap();
    assert!(message.contains("spec.regenerate"), "{message}");
    assert_eq!(adopter.status.as_ref().unwrap().generations, 0);
    let regenerator = env.wait_ready("regenerator").await;
    assert_eq!(ready_reason(&regenerator).as_deref(), Some("Ready"));
    assert_eq!(env.calls("generate", ADOPTED), 1, "only the agent's own");
    assert_eq!(
        env.calls("generate", REGENERATED),
        2,
        "its own, and the one asked for"
    );
    assert_eq!(
        ledger(&env, ADOPTED).await.unwrap().spec.purchases[0].calls,
        0,
        "recorded as adopted, not bought"
    );
}

// Two installs, each scoped to its own namespace, with an object each for one agent: one buys,
// the other is a Conflict that names it. Neither can see the other's objects; the ledger is
// the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_in_two_namespaces_buy_an_agent_once() {
    const AGENT: &str = "LEDGER0004";
    let mut env = Env::start("ledger-install-a", charged()).await;
    let other_ns = env.cp.create_namespace("ledger-install-b").await.unwrap();
    env.start_operator_in(&other_ns, &[]);
    let other: Api<AgentDynamics> = Api::namespaced(env.cp.kube_client().await.unwrap(), &other_ns);
    let yaml = manifest("support", AGENT, "");
    env.apply(&yaml);
    env.cp
        .kubectl_stdin(["apply", "-n", &other_ns, "-f", "-"], yaml.as_bytes())
        .unwrap();
    let outcome = wait_for("one Ready, one Conflict", TIMEOUT, || async {
        let a = env.api.get("support").await?;
        let b = other.get("support").await?;
        let reasons = [ready_reason(&a), ready_reason(&b)];
        let stalled = [&a, &b].map(|o| {
            o.status
                .as_ref()
                .and_then(|s| s.condition("Stalled"))
                .filter(|c| c.status == "True")
                .map(|c| c.reason.clone())
        });
        let done = reasons.iter().any(|r| r.as_deref() == Some("Ready"))
            && stalled.iter().any(|r| r.as_deref() == Some("Conflict"));
        Ok(done.then_some((a, b)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    // Give the loser every chance to buy after all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.calls("generate", AGENT), 1, "{}", env.logs());
    let loser = if ready_reason(&outcome.0).as_deref() == Some("Ready") {
        &outcome.1
    } else {
        &outcome.0
    };
    let message = stalled_message(loser);
    assert!(message.contains("/support"), "{message}");
    assert!(message.contains("resolve"), "{message}");
}

// A money stall's two ways out: `resolve --retry` sends the call once more (counted) and never
// again on its own; `resolve --accept` takes what the API shows, sending nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_retry_sends_once_more_and_accept_sends_nothing() {
    const INVISIBLE: &str = "LEDGER0005";
    const REVERTED: &str = "LEDGER0006";
    let env = Env::start("ledger-resolve", charged()).await;
    // Accepted, but the job never shows within the window (8 s here).
    env.sim.set_agent_modes(
        INVISIBLE,
        Some(Modes {
            invisible_ms: 3_600_000,
            ..Modes::default()
        }),
    );
    env.apply(&manifest("lagging", INVISIBLE, ""));
    let stalled = env.wait_reason("lagging", "GenerationNotVisible").await;
    let message = stalled_message(&stalled);
    assert!(
        message.contains("resolve") && message.contains("--accept") && message.contains("--retry"),
        "{message}"
    );
    assert_eq!(env.calls("generate", INVISIBLE), 1);
    resolve(&env, "lagging", "--retry");
    wait_for("the retried call", TIMEOUT, || async {
        Ok((env.calls("generate", INVISIBLE) == 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    // It stalls again (the job still does not show) and sends nothing more on its own.
    env.wait("lagging", "stalled again after the retry", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.generations == 2
                && s.condition("Stalled")
                    .is_some_and(|c| c.status == "True" && c.reason == "GenerationNotVisible")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.calls("generate", INVISIBLE), 2);

    // Inputs bought, edited, reverted: InputsAlreadyBought. Accept takes the API's current
    // dynamics as these inputs'.
    env.apply(&manifest("reverted", REVERTED, ""));
    env.wait_ready("reverted").await;
    env.patch_spec("reverted", serde_json::json!({"duration": 3}))
        .await;
    env.wait("reverted", "Ready for the edit", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.is_ready() && s.generations == 2)
    })
    .await;
    env.patch_spec("reverted", serde_json::json!({"duration": null}))
        .await;
    env.wait_reason("reverted", "InputsAlreadyBought").await;
    resolve(&env, "reverted", "--accept");
    let accepted = env
        .wait("reverted", "Ready after accept", |o| {
            o.status
                .as_ref()
                .is_some_and(|s| s.is_ready() && s.observed_generation == o.metadata.generation)
        })
        .await;
    assert_eq!(env.calls("generate", REVERTED), 2, "accept sends nothing");
    assert!(accepted
        .status
        .unwrap()
        .last_handled_resolve
        .is_some_and(|v| v.starts_with("accept@")));
}

// Agents that exist are brought under management with `import`: its manifests, applied, adopt
// what each agent has and buy nothing. One imported with --observe only reports, sends no PUT,
// and when switched to Manage takes the agent over without paying; an agent with no dynamics
// is imported observing, since managing it would buy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_agents_are_adopted_or_observed_and_nothing_is_bought() {
    const MANAGED: &str = "IMPORT0001";
    const OBSERVED: &str = "IMPORT0002";
    const EMPTY: &str = "IMPORT0003";
    let env = Env::start("import", charged()).await;
    let client = DynamicsClient::new(ClientConfig {
        base_url: env.sim.url(),
        ..ClientConfig::default()
    })
    .unwrap();
    let secret = ApiSecret::new(SECRET);
    for agent in [MANAGED, OBSERVED] {
        let request = GenerateRequest {
            agent_id: agent.into(),
            ..Default::default()
        };
        client.generate(&secret, &request, None).await.unwrap();
    }
    env.sim.mark_known(EMPTY);
    wait_for("the agents' own dynamics are ready", TIMEOUT, || async {
        let ready = [MANAGED, OBSERVED]
            .iter()
            .all(|a| env.sim.agent(a).status.as_deref() == Some("ready"));
        Ok(ready.then_some(()))
    })
    .await
    .unwrap();
    let bought_before = env.sim.generations().len();

    let import = |args: &[&str]| {
        let out = std::process::Command::new(operator_binary())
            .arg("import")
            .args(args)
            .args(["--namespace", &env.ns, "--api-url", &env.sim.url()])
            .env("BITHUMAN_API_SECRET", SECRET)
            .output()
            .expect("import runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let managed = import(&[MANAGED, EMPTY]);
    let observed = import(&["--observe", OBSERVED]);
    env.apply(&managed);
    env.apply(&observed);

    let name = |agent: &str| dynamics_operator::import::object_name(agent);
    let adopted = env.wait_ready(&name(MANAGED)).await;
    assert_eq!(ready_reason(&adopted).as_deref(), Some("Adopted"));
    for agent in [OBSERVED, EMPTY] {
        let obj = env.wait_reason(&name(agent), "Observed").await;
        assert!(obj.status.unwrap().is_ready(), "{agent}");
        assert_eq!(
            env.calls("update", agent),
            0,
            "{agent}: observing sends no PUT"
        );
    }
    assert!(
        ledger(&env, OBSERVED)
            .await
            .is_none_or(|l| l.spec.holder.is_none()),
        "an observing object claims nothing"
    );

    // Observe -> Manage: taken over, nothing bought.
    env.patch_spec(
        &name(OBSERVED),
        serde_json::json!({"managementPolicy": "Manage"}),
    )
    .await;
    wait_for("taken over", TIMEOUT, || async {
        let obj = env.api.get(&name(OBSERVED)).await?;
        Ok((ready_reason(&obj).as_deref() == Some("Adopted")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert_eq!(
        env.sim.generations().len(),
        bought_before,
        "import, observe and take-over bought nothing\n{}",
        env.logs()
    );
}
