//! What the last release's controller left in a cluster still reads and buys nothing: its
//! DynamicsLedger record and its AgentDynamics (spec and status), from
//! tests/fixtures/upgrade/a47e41c/cluster/, are put back as they were, and this release's
//! operator takes over from it. The simulator charges every generate call, so its record is
//! the bill.

use std::path::Path;

use dynamics_operator::api::{ApiSecret, ClientConfig, DynamicsClient, GenerateRequest};
use dynamics_operator::resource::{DynamicsLedger, RECONCILE_REQUESTED_AT};
use dynamics_operator::sim::SimConfig;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

use crate::fast_sim;
use crate::support::operator::{Env, Pace, SECRET, TIMEOUT};
use crate::support::wait::wait_for;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upgrade");

fn fixture(release: &str, file: &str) -> Value {
    let path = Path::new(FIXTURES).join(release).join("cluster").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// `kubectl create` of `object` as it is (no typed round trip that could drop or add fields).
fn create(env: &Env, object: &Value) {
    let out = env
        .cp
        .kubectl_stdin(["create", "-f", "-"], object.to_string().as_bytes())
        .expect("kubectl create");
    assert!(
        out.status.success(),
        "kubectl create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// An upgrade in place keeps the object, its status and the cluster's ledger record: the record
// and the object are created from what release a47e41c wrote (in this test's namespace, the
// record pointing at the new object's uid, as it pointed at the old one's), the API has the
// agent's dynamics from that release's purchase, and this release's operator, started on it,
// reconciles it (a refresh proves a full pass) without buying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_release_a47e41c_left_in_a_cluster_buys_nothing() {
    const RELEASE: &str = "a47e41c";
    let mut env = Env::new(
        "upgrade-a47e41c",
        SimConfig {
            honour_idempotency_key: false,
            ..fast_sim()
        },
        Pace::Fast,
    )
    .await;
    let mut object = fixture(RELEASE, "agentdynamics.yaml");
    let mut record = fixture(RELEASE, "dynamicsledger.yaml");
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let agent = object["spec"]["agentId"].as_str().unwrap().to_string();
    let old_object = format!(
        "{}/{name}",
        object["metadata"]["namespace"].as_str().unwrap()
    );
    let old_uid = record["spec"]["holder"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(record["spec"]["holder"]["object"], old_object.as_str());

    // The API as that release left it: the agent generated once, with the spec's inputs.
    let spec = &object["spec"];
    let request = GenerateRequest {
        agent_id: agent.clone(),
        image_url: spec["imageUrl"].as_str().map(String::from),
        duration: spec["duration"].as_u64().map(|d| d as u32),
        model: spec["model"].as_str().map(String::from),
        motion_prompts: spec["motionPrompts"]
            .as_array()
            .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect()),
    };
    let client = DynamicsClient::new(ClientConfig {
        base_url: env.sim.url(),
        ..ClientConfig::default()
    })
    .unwrap();
    client
        .generate(&ApiSecret::new(SECRET), &request, None)
        .await
        .unwrap();
    wait_for("the agent's dynamics are ready", TIMEOUT, || async {
        Ok((env.sim.agent(&agent).status.as_deref() == Some("ready")).then_some(()))
    })
    .await
    .unwrap();
    let status = object
        .as_object_mut()
        .unwrap()
        .remove("status")
        .expect("the fixture has the status that release wrote");
    assert_eq!(
        env.sim.agent(&agent).model_url.as_deref(),
        status["modelUrl"].as_str(),
        "the simulator shows the model that release saw"
    );
    let bought_before = env.sim.generations().len();
    assert_eq!(bought_before, 1);

    // The object, then its status through the status subresource (a create drops it).
    object["metadata"]["namespace"] = json!(env.ns);
    create(&env, &object);
    let created = env.get(&name).await;
    assert_eq!(
        created.metadata.generation,
        status["observedGeneration"].as_i64()
    );
    env.api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("put back the status");

    // The record, pointing at the object as it is now named.
    let new_object = format!("{}/{name}", env.ns);
    let new_uid = created.metadata.uid.clone().unwrap();
    let holder = &mut record["spec"]["holder"];
    holder["object"] = json!(new_object);
    holder["uid"] = json!(new_uid);
    for purchase in record["spec"]["purchases"].as_array_mut().unwrap() {
        if purchase["uid"] == old_uid.as_str() {
            purchase["object"] = json!(new_object);
            purchase["uid"] = json!(new_uid);
        }
    }
    create(&env, &record);
    let ledger: Api<DynamicsLedger> = Api::all(env.cp.kube_client().await.unwrap());
    let record_name = record["metadata"]["name"].as_str().unwrap();
    let before = ledger.get(record_name).await.unwrap();
    assert!(!before.spec.purchases.is_empty());

    // This release takes over; a refresh proves it has been through the object since.
    env.start_operator(&[]);
    let refresh = json!({"metadata": {"annotations": {RECONCILE_REQUESTED_AT: "upgraded"}}});
    env.api
        .patch(&name, &PatchParams::default(), &Patch::Merge(refresh))
        .await
        .unwrap();
    let after = env
        .wait(&name, "Ready for its generation, refreshed", |o| {
            o.status.as_ref().is_some_and(|s| {
                s.is_ready()
                    && s.observed_generation == o.metadata.generation
                    && s.last_handled_reconcile_at.as_deref() == Some("upgraded")
            })
        })
        .await;
    assert_eq!(
        env.sim.generations().len(),
        bought_before,
        "bought again after the upgrade\n{}",
        env.logs()
    );
    assert_eq!(env.calls("generate", &agent), 1, "{}", env.logs());
    let status = after.status.unwrap();
    assert_eq!(status.generations, 1, "no generation counted since");
    let kept = ledger.get(record_name).await.unwrap();
    assert_eq!(
        kept.spec.purchases, before.spec.purchases,
        "the ledger keeps its purchase as written"
    );
    assert_eq!(
        kept.spec.holder.map(|h| h.object),
        Some(new_object),
        "and the object still holds the agent"
    );
}
