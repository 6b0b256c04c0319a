//! The operator against a real kube-apiserver (built from source by tests/controlplane/build.sh,
//! or an existing cluster, see tests/support/controlplane.rs) and the project's simulator.
//! Each test has its own namespace, simulator and operator process, so tests run side by side.
//! Assertions go through the simulator's call counters and the objects' status.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, Faults, ScriptedFault, SimConfig, SimHandle};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use support::controlplane::ControlPlane;
use support::process::ManagedChild;
use support::wait::wait_for;

const SECRET: &str = "e2e-operator-secret";
const TIMEOUT: Duration = Duration::from_secs(90);

/// A test's world: namespace, simulator, operator.
struct Env {
    cp: &'static ControlPlane,
    ns: String,
    sim: SimHandle,
    api: Api<AgentDynamics>,
    dir: tempfile::TempDir,
    operators: Vec<ManagedChild>,
}

async fn control_plane() -> &'static ControlPlane {
    static CRD_INSTALLED: OnceLock<()> = OnceLock::new();
    let cp = ControlPlane::shared()
        .await
        .expect("the control plane must start (see tests/controlplane/build.sh)");
    if CRD_INSTALLED.get().is_none() {
        cp.apply_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/agentdynamics.yaml"
        ))
        .expect("install the CRD");
        cp.wait_crd_established(
            "agentdynamics.dynamics.bithuman.ai",
            Duration::from_secs(30),
        )
        .await
        .expect("CRD established");
        let _ = CRD_INSTALLED.set(());
    }
    cp
}

impl Env {
    async fn start(prefix: &str, sim_config: SimConfig) -> Env {
        let cp = control_plane().await;
        let ns = cp.create_namespace(prefix).await.expect("namespace");
        let sim = sim::start(SimConfig {
            secret: SECRET.into(),
            ..sim_config
        })
        .await
        .expect("simulator");
        let api = Api::namespaced(cp.kube_client().await.expect("client"), &ns);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = Env {
            cp,
            ns,
            sim,
            api,
            dir,
            operators: Vec::new(),
        };
        env.start_operator(&[]);
        env
    }

    /// Start one more operator process watching this namespace.
    fn start_operator(&mut self, extra: &[&str]) -> usize {
        let index = self.operators.len();
        let log = self.dir.path().join(format!("operator-{index}.log"));
        let mut args: Vec<String> = [
            "run",
            "--namespace",
            &self.ns,
            "--api-url",
            &self.sim.url(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--poll-min",
            "200ms",
            "--poll-max",
            "1s",
            "--stalled-retry",
            "20s",
            "--visibility-window",
            "8s",
            "--api-timeout",
            "5s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let kubeconfig = self.cp.kubeconfig_path().to_string_lossy().into_owned();
        let child = ManagedChild::spawn(
            &format!("operator-{index}"),
            &operator_binary(),
            &args,
            &log,
            &[
                ("KUBECONFIG", &kubeconfig),
                ("BITHUMAN_API_SECRET", SECRET),
                ("RUST_LOG", "info,dynamics_operator=debug"),
            ],
        )
        .expect("start the operator");
        self.operators.push(child);
        index
    }

    /// Where operator `index` serves /metrics (it binds port 0 and logs the address).
    fn metrics_url(&self, index: usize) -> String {
        let log = std::fs::read_to_string(&self.operators[index].log).unwrap_or_default();
        let line = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .unwrap_or_else(|| panic!("no metrics address logged:\n{log}"));
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("addr=HOST:PORT");
        format!("http://{addr}")
    }

    fn logs(&self) -> String {
        self.operators
            .iter()
            .map(|o| format!("--- {} ---\n{}", o.name, o.log_tail(6000)))
            .collect()
    }

    fn apply(&self, yaml: &str) {
        self.cp
            .kubectl_stdin(["apply", "-n", &self.ns, "-f", "-"], yaml.as_bytes())
            .and_then(|out| {
                anyhow::ensure!(
                    out.status.success(),
                    "kubectl apply failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            })
            .expect("kubectl apply");
    }

    async fn get(&self, name: &str) -> AgentDynamics {
        self.api.get(name).await.expect("get object")
    }

    /// Wait until Ready=True for the object's current generation.
    async fn wait_ready(&self, name: &str) -> AgentDynamics {
        let result = wait_for(&format!("{name} Ready"), TIMEOUT, || async {
            let obj = self.api.get(name).await?;
            let current = obj.metadata.generation;
            let status = obj.status.clone().unwrap_or_default();
            let ready = status.is_ready() && status.observed_generation == current;
            Ok(ready.then_some(obj))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Wait until the Ready condition has `reason` (Stalled reasons show there too).
    async fn wait_reason(&self, name: &str, reason: &str) -> AgentDynamics {
        let result = wait_for(&format!("{name} reason {reason}"), TIMEOUT, || async {
            let obj = self.api.get(name).await?;
            let hit = obj
                .status
                .as_ref()
                .and_then(|s| s.condition("Ready"))
                .is_some_and(|c| c.reason == reason);
            Ok(hit.then_some(obj))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    async fn wait_gone(&self, name: &str) {
        let result = wait_for(&format!("{name} deleted"), TIMEOUT, || async {
            Ok(self.api.get_opt(name).await?.is_none().then_some(()))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .expect("patch spec");
    }

    fn calls(&self, endpoint: &str, agent: &str) -> u64 {
        self.sim.stats().count(endpoint, Some(agent), None)
    }
}

fn operator_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynamics-operator"))
}

fn manifest(name: &str, agent: &str, extra: &str) -> String {
    format!(
        "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: {name}\nspec:\n  agentId: {agent}\n{extra}"
    )
}

fn fast_sim() -> SimConfig {
    SimConfig {
        generation_time: Duration::from_millis(500),
        ..SimConfig::default()
    }
}

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

trait KillNow {
    fn kill_now(&mut self);
}

impl KillNow for ManagedChild {
    /// SIGKILL: no graceful shutdown, no lease release — a crash.
    fn kill_now(&mut self) {
        support::process::signal(self.pid(), 9);
        self.reap_by(Instant::now() + Duration::from_secs(5));
    }
}

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

// Two objects naming one agent: the later one is Stalled with reason Conflict and costs nothing.
// Also: the reconcile-requested-at annotation triggers a pass and is echoed in status.
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
}

// A referenced Secret must carry the label; deleting an object whose Secret is already gone
// (the usual order when a namespace is deleted) keeps the finalizer, Stalled SecretNotFound,
// until the Secret is back: the Disable PUT is never skipped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_holds_deletion_until_it_is_back() {
    let env = Env::start("secretdel", fast_sim()).await;
    let secret = |labelled: bool| {
        let labels = if labelled {
            "  labels:\n    dynamics.bithuman.ai/api-secret: \"true\"\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: team-secret\n{labels}stringData:\n  api-secret: {SECRET}\n"
        )
    };
    env.apply(&secret(false));
    env.apply(&manifest(
        "team-agent",
        "SEC0000001",
        "  apiSecretRef:\n    name: team-secret\n",
    ));
    let stalled = env.wait_reason("team-agent", "SecretNotLabeled").await;
    let message = &stalled
        .status
        .unwrap()
        .condition("Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("kubectl -n"),
        "says how to label it: {message}"
    );
    assert_eq!(env.calls("generate", "SEC0000001"), 0);
    // Labelling it is a Secret change the operator watches: the object converges.
    env.apply(&secret(true));
    env.wait_ready("team-agent").await;

    let ns = env.ns.clone();
    env.cp
        .kubectl_ok(["-n", ns.as_str(), "delete", "secret", "team-secret"])
        .expect("delete the Secret");
    env.api
        .delete("team-agent", &DeleteParams::default())
        .await
        .unwrap();
    // The deleting pass says how to let go without the Secret.
    let held = wait_for("team-agent held by its finalizer", TIMEOUT, || async {
        let obj = env.api.get("team-agent").await?;
        let message = obj
            .status
            .as_ref()
            .and_then(|s| s.condition("Stalled"))
            .filter(|c| c.status == "True" && c.reason == "SecretNotFound")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        Ok(message.contains("deletionPolicy: Orphan").then_some(obj))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
    assert!(held.metadata.deletion_timestamp.is_some());
    let puts = env.calls("update", "SEC0000001");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.api.get_opt("team-agent").await.unwrap().is_some(),
        "finalizer kept"
    );
    assert_eq!(
        env.calls("update", "SEC0000001"),
        puts,
        "no call without a secret"
    );

    // The Secret is back: the Disable PUT is sent, then the object goes.
    env.apply(&secret(true));
    env.wait_gone("team-agent").await;
    assert_eq!(
        env.calls("update", "SEC0000001"),
        puts + 1,
        "one Disable PUT"
    );
    assert_eq!(env.sim.agent("SEC0000001").enabled, Some(false));
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
