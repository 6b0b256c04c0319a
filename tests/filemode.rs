//! `plan` and `apply` run as processes (the real binary) against a simulator started in this
//! test, asserting through the simulator's call counters and the commands' outputs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, SimConfig, SimHandle};

const SECRET: &str = "filemode-test-secret";
const BIN: &str = env!("CARGO_BIN_EXE_dynamics-operator");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A temporary working directory, its manifests folder, and a simulator.
struct Setup {
    dir: tempfile::TempDir,
    sim: SimHandle,
}

impl Setup {
    async fn new() -> Self {
        Self::with(SimConfig {
            generation_time: Duration::from_millis(300),
            ..SimConfig::default()
        })
        .await
    }

    async fn with(config: SimConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        let sim = sim::start(SimConfig {
            secret: SECRET.into(),
            ..config
        })
        .await
        .unwrap();
        Setup { dir, sim }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.manifests().join(file), text).unwrap();
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .arg("--api-url")
            .arg(self.sim.url())
            .arg("--state")
            .arg(self.state())
            .current_dir(self.dir.path())
            .env("BITHUMAN_API_SECRET", SECRET)
            .env_remove("BITHUMAN_API_SECRET_FILE")
            .env_remove("BITHUMAN_API_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `dynamics-operator ARGS -f manifests/` to the end.
    async fn run(&self, args: &[&str]) -> Out {
        let manifests = self.manifests();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-f", manifests.to_str().unwrap()]);
        output(self.command(&all)).await
    }

    /// `dynamics-operator spend -o json --state STATE`, parsed.
    async fn spend_report(&self) -> serde_json::Value {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["spend", "-o", "json", "--state"])
            .arg(self.state())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = output(cmd).await;
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    fn calls(&self, endpoint: &str, agent: &str) -> u64 {
        self.sim.stats().count(endpoint, Some(agent), None)
    }

    fn total(&self, endpoint: &str) -> u64 {
        self.sim.stats().total(endpoint)
    }
}

async fn output(mut cmd: tokio::process::Command) -> Out {
    let child = cmd.spawn().expect("the dynamics-operator binary runs");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command ends within a minute")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn agent(name: &str, agent_id: &str, extra: &str) -> String {
    format!(
        "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: {name}\nspec:\n  agentId: {agent_id}\n{extra}"
    )
}

fn items(json: &str) -> Vec<AgentDynamics> {
    let list: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["kind"], "List");
    serde_json::from_value(list["items"].clone()).unwrap()
}

#[tokio::test]
async fn first_apply_generates_and_switches_on_once_per_object_and_second_apply_only_reads() {
    let s = Setup::new().await;
    s.write(
        "a.yaml",
        &agent("alpha", "AGENT-A", "  duration: 3\n  model: seedance\n"),
    );
    s.write(
        "b.yaml",
        &agent(
            "beta",
            "AGENT-B",
            "  motionPrompts: [wave, nod]\n  dynamics:\n    enabled: true\n",
        ),
    );

    let first = s.run(&["apply"]).await;
    assert_eq!(first.code, 0, "{first:?}");
    for id in ["AGENT-A", "AGENT-B"] {
        assert_eq!(
            s.calls("generate", id),
            1,
            "one generation for {id}: {first:?}"
        );
        assert_eq!(
            s.calls("update", id),
            1,
            "one PUT to switch {id} on: {first:?}"
        );
    }
    assert_eq!(s.sim.stats().overlapping_generations, 0);
    assert!(
        first.stdout.contains("alpha") && first.stdout.contains("True"),
        "{first:?}"
    );
    assert!(
        first
            .stderr
            .contains("2 generation(s) started (500 credits)"),
        "{first:?}"
    );

    let gets_before = s.total("get");
    let second = s.run(&["apply"]).await;
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(
        s.total("generate"),
        2,
        "no POST on an unchanged folder: {second:?}"
    );
    assert_eq!(
        s.total("update"),
        2,
        "no PUT on an unchanged folder: {second:?}"
    );
    assert_eq!(
        s.total("get"),
        gets_before + 2,
        "one GET per object: {second:?}"
    );
    assert!(
        second
            .stderr
            .contains("0 generation(s) started (0 credits)"),
        "{second:?}"
    );
}

#[tokio::test]
async fn edits_make_exactly_the_call_they_need() {
    let s = Setup::new().await;
    s.write("a.yaml", &agent("alpha", "AGENT-A", "  duration: 3\n"));
    s.write(
        "b.yaml",
        &agent("beta", "AGENT-B", "  dynamics:\n    enabled: true\n"),
    );
    assert_eq!(s.run(&["apply"]).await.code, 0);
    s.sim.reset_stats();

    // A generate input: one new generation (and the one PUT that switches it on).
    s.write("a.yaml", &agent("alpha", "AGENT-A", "  duration: 5\n"));
    let plan = s.run(&["plan"]).await;
    assert_eq!(plan.code, 1, "changes pending: {plan:?}");
    assert!(
        plan.stdout.contains("generate") && plan.stdout.contains("spec.duration changed"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains("Credits: 250."), "{plan:?}");
    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(s.calls("generate", "AGENT-A"), 1, "{apply:?}");
    assert_eq!(s.calls("update", "AGENT-A"), 1, "{apply:?}");
    assert_eq!(
        s.calls("generate", "AGENT-B") + s.calls("update", "AGENT-B"),
        0,
        "{apply:?}"
    );
    s.sim.reset_stats();

    // The dynamics block: one PUT, no generation.
    s.write(
        "b.yaml",
        &agent("beta", "AGENT-B", "  dynamics:\n    enabled: false\n"),
    );
    let plan = s.run(&["plan"]).await;
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(
        plan.stdout.contains("update") && plan.stdout.contains("Credits: 0."),
        "{plan:?}"
    );
    let apply = s.run(&["apply"]).await;
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(s.total("generate"), 0, "{apply:?}");
    assert_eq!(s.calls("update", "AGENT-B"), 1, "{apply:?}");
    assert_eq!(s.calls("update", "AGENT-A"), 0, "{apply:?}");
    assert_eq!(s.sim.agent("AGENT-B").enabled, Some(false));

    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.state()).unwrap()).unwrap();
    assert_eq!(
        state["objects"]["default/beta"]["generation"], 2,
        "the spec changed once"
    );
    assert_eq!(state["objects"]["default/alpha"]["generation"], 2);
}

#[tokio::test]
async fn invalid_manifests_are_refused_before_any_remote_call() {
    let s = Setup::new().await;
    s.write("good.yaml", &agent("good", "AGENT-G", ""));
    s.write(
        "bad.yaml",
        &format!(
            "{}---\n{}",
            agent("fine", "AGENT-F", ""),
            agent(
                "broken",
                "AGENT-X",
                "  duration: 11\n  imageUrl: ftp://example.com/a.jpg\n"
            )
        ),
    );
    s.write(
        "typo.yaml",
        &agent("typo", "AGENT-T", "  dynamics:\n    enabeld: true\n"),
    );

    for command in ["apply", "plan"] {
        let out = s.run(&[command]).await;
        assert_eq!(out.code, 2, "{command}: {out:?}");
        let bad = s.manifests().join("bad.yaml");
        let typo = s.manifests().join("typo.yaml");
        for expected in [
            format!(
                "{} (document 2) default/broken: spec.duration: 11 is out of range",
                bad.display()
            ),
            format!(
                "{} (document 2) default/broken: spec.imageUrl: ",
                bad.display()
            ),
            format!(
                "{} (document 1) default/typo: spec.dynamics.enabeld: ",
                typo.display()
            ),
        ] {
            assert!(
                out.stderr.contains(&expected),
                "{command}: missing {expected:?} in {out:?}"
            );
        }
        assert!(out.stderr.contains("nothing was sent"), "{out:?}");
        assert_eq!(s.sim.stats().calls, vec![], "{command}: zero remote calls");
    }
    assert!(!s.state().exists(), "nothing recorded for a refused folder");
}

#[tokio::test]
async fn interrupted_apply_resumes_without_a_second_generation() {
    let s = Setup::with(SimConfig {
        generation_time: Duration::from_secs(3),
        ..SimConfig::default()
    })
    .await;
    s.write("a.yaml", &agent("alpha", "AGENT-A", ""));
    let manifests = s.manifests();
    let mut child = s
        .command(&["apply", "-f", manifests.to_str().unwrap()])
        .spawn()
        .unwrap();

    // Kill it (no chance to clean up) once the generation is running remotely.
    let start = Instant::now();
    while s.sim.stats().generations_started == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the generation never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    assert_eq!(
        s.sim.agent("AGENT-A").status.as_deref(),
        Some("generating"),
        "killed mid-generation"
    );

    // plan while the job runs shows no credits: the generation is bought already.
    let planned = s.run(&["plan"]).await;
    assert!(
        planned.stdout.contains("Credits: 0."),
        "a running generation is not planned as a purchase: {planned:?}"
    );
    let resumed = s.run(&["apply"]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(
        s.calls("generate", "AGENT-A"),
        1,
        "no second generation: {resumed:?}"
    );
    assert_eq!(s.calls("update", "AGENT-A"), 1, "{resumed:?}");
    assert_eq!(s.sim.stats().credits_charged, 250);
    let list = items(&s.run(&["apply", "-o", "json"]).await.stdout);
    assert!(list[0].status.as_ref().unwrap().is_ready());
    assert_eq!(list[0].status.as_ref().unwrap().generations, 1);
}

#[tokio::test]
async fn timeout_ends_apply_with_what_is_still_running() {
    let s = Setup::with(SimConfig {
        generation_time: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    s.write("a.yaml", &agent("alpha", "AGENT-A", ""));
    let started = Instant::now();
    let out = s.run(&["apply", "--timeout", "1s"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{out:?}");
    assert!(out.stderr.contains("timed out after 1s"), "{out:?}");
    assert!(out.stdout.contains("default/alpha: Generat"), "{out:?}");

    let plan = s.run(&["plan"]).await;
    assert_eq!(plan.code, 1, "{plan:?}");
    assert!(plan.stdout.contains("wait"), "{plan:?}");
    assert_eq!(
        s.total("generate"),
        1,
        "plan and the timed-out apply sent one generation: {plan:?}"
    );
}

#[tokio::test]
async fn unauthorized_out_of_credits_and_unknown_agents_are_explained_per_object() {
    let s = Setup::new().await;
    s.sim.mark_unknown("AGENT-GONE");
    s.sim.set_credits(0);
    s.write("gone.yaml", &agent("gone", "AGENT-GONE", ""));
    s.write("broke.yaml", &agent("broke", "AGENT-BROKE", ""));
    s.write(
        "wrong-secret.yaml",
        &format!(
            "{}  apiSecretRef: {{name: team-b, key: api-secret}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: team-b}}\nstringData: {{api-secret: not-the-right-secret-value}}\n",
            agent("denied", "AGENT-DENIED", "")
        ),
    );

    let out = s.run(&["apply"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    for expected in [
        "default/gone: AgentNotFound: ",
        "default/broke: InsufficientCredits: ",
        "default/denied: Unauthorized: ",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?}: {out:?}"
        );
    }
    assert!(
        !out.all().contains("not-the-right-secret-value"),
        "a secret was printed: {out:?}"
    );
    assert!(!out.all().contains(SECRET), "a secret was printed: {out:?}");
    assert_eq!(
        s.calls("get", "AGENT-DENIED"),
        1,
        "401 is not retried: {out:?}"
    );
    assert_eq!(
        s.sim
            .stats()
            .count("generate", Some("AGENT-BROKE"), Some(402)),
        1,
        "{out:?}"
    );
    assert_eq!(s.total("update"), 0);

    let plan = s.run(&["plan"]).await;
    assert_eq!(
        plan.code, 2,
        "plan cannot promise anything for these: {plan:?}"
    );
}

#[tokio::test]
async fn json_and_yaml_output_read_back_as_agent_dynamics() {
    let s = Setup::new().await;
    s.write("a.yaml", &agent("alpha", "AGENT-A", "  model: kling\n"));
    s.write(
        "more.yaml",
        &format!(
            "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\n---\n{}",
            agent("paused", "AGENT-P", "  suspend: true\n"),
            agent("other", "AGENT-O", "")
                .replace("name: other", "name: other\n  namespace: agents"),
        ),
    );

    let out = s.run(&["apply", "-o", "json"]).await;
    assert_eq!(out.code, 0, "a suspended object counts as done: {out:?}");
    assert!(
        out.stderr.contains("skipped") && out.stderr.contains("Deployment (apps/v1) web"),
        "{out:?}"
    );
    let list = items(&out.stdout);
    let keys: Vec<String> = list
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap(),
                o.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    assert_eq!(keys, ["default/alpha", "default/paused", "agents/other"]);
    let alpha = &list[0];
    assert_eq!(alpha.spec.model.as_deref(), Some("kling"));
    assert_eq!(alpha.metadata.generation, Some(1));
    assert!(alpha.metadata.uid.is_some());
    let status = alpha.status.as_ref().unwrap();
    assert!(status.is_ready(), "{status:?}");
    assert_eq!(status.remote_status.as_deref(), Some("ready"));
    assert_eq!(
        list[1]
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .reason,
        "Suspended"
    );
    assert_eq!(s.calls("get", "AGENT-P"), 0, "suspended: nothing read");

    let yaml = s.run(&["apply", "-o", "yaml"]).await;
    assert_eq!(yaml.code, 0, "{yaml:?}");
    let value: serde_json::Value = serde_saphyr::from_str(&yaml.stdout).unwrap();
    let from_yaml: Vec<AgentDynamics> = serde_json::from_value(value["items"].clone()).unwrap();
    assert_eq!(
        from_yaml[0].metadata.uid, alpha.metadata.uid,
        "the uid is kept between runs"
    );

    // The printed List is itself a valid input.
    std::fs::write(s.dir.path().join("printed.json"), &out.stdout).unwrap();
    let again = output(s.command(&[
        "plan",
        "-f",
        s.dir.path().join("printed.json").to_str().unwrap(),
    ]))
    .await;
    assert_eq!(again.code, 0, "{again:?}");
}

#[tokio::test]
async fn plan_reads_only_and_exits_like_kubectl_diff() {
    let s = Setup::new().await;
    s.write("a.yaml", &agent("alpha", "AGENT-A", ""));
    s.write("b.yaml", &agent("beta", "AGENT-B", ""));

    let pending = s.run(&["plan"]).await;
    assert_eq!(pending.code, 1, "{pending:?}");
    assert!(
        pending.stdout.contains("Plan: 2 to generate"),
        "{pending:?}"
    );
    assert!(pending.stdout.contains("Credits: 500."), "{pending:?}");
    assert_eq!(
        (s.total("generate"), s.total("update")),
        (0, 0),
        "plan never writes remotely"
    );
    assert!(!s.state().exists(), "plan never writes the state");

    let json = s.run(&["plan", "-o", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["credits"], 500);
    assert_eq!(doc["items"][0]["action"], "generate");

    assert_eq!(s.run(&["apply"]).await.code, 0);
    let in_sync = s.run(&["plan"]).await;
    assert_eq!(in_sync.code, 0, "{in_sync:?}");
    assert!(
        in_sync.stdout.contains("2 in sync") && in_sync.stdout.contains("Credits: 0."),
        "{in_sync:?}"
    );
}

#[tokio::test]
async fn the_later_of_two_objects_for_one_agent_is_a_conflict() {
    let s = Setup::new().await;
    s.write("a.yaml", &agent("first", "AGENT-SHARED", ""));
    s.write(
        "b.yaml",
        &agent("second", "AGENT-SHARED", "  duration: 2\n"),
    );
    let out = s.run(&["apply"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("default/second: Conflict: agent AGENT-SHARED is already managed by AgentDynamics default/first"), "{out:?}");
    assert_eq!(s.calls("generate", "AGENT-SHARED"), 1, "{out:?}");
}

#[tokio::test]
async fn secret_documents_and_stdin_are_used() {
    let s = Setup::new().await;
    let text = format!(
        "{}  apiSecretRef: {{name: team-b}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: team-b}}\ndata: {{api-secret: {}}}\n",
        agent("alpha", "AGENT-A", ""),
        base64(SECRET)
    );
    let mut cmd = s.command(&["apply", "-f", "-"]);
    // No operator secret: the object must use the one from its Secret document.
    cmd.env_remove("BITHUMAN_API_SECRET").stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(s.calls("generate", "AGENT-A"), 1, "{stderr}");
}

#[tokio::test]
async fn simulator_flag_brings_every_example_to_ready() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["apply", "--simulator", "-f", examples.to_str().unwrap()])
        .current_dir(dir.path())
        .env_remove("BITHUMAN_API_SECRET")
        .env_remove("BITHUMAN_API_SECRET_FILE")
        .env_remove("BITHUMAN_API_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("SIMULATED API") && out.stderr.contains("SIMULATED API"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("False"), "{out:?}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "--simulator writes no state file"
    );
}

/// Standard base64 (the test needs no crate for four lines).
fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The reported failure, as a new user met it: `apply -f` of one object against an API whose
/// accepted job GET does not show for seconds (behind the account's queue), with the fixed
/// model URL of the API document and no Idempotency-Key honoured. One change, one purchase,
/// and the summary says so.
#[tokio::test]
async fn apply_against_a_lagging_api_buys_each_change_once_and_says_so() {
    use dynamics_operator::sim::Modes;
    let setup = Setup::with(SimConfig {
        generation_time: Duration::from_millis(300),
        honour_idempotency_key: false,
        modes: Modes {
            invisible_ms: 3_000,
            fixed_model_url: true,
            waiting_status: Some("queued".into()),
            ..Modes::default()
        },
        ..SimConfig::default()
    })
    .await;
    setup.write("agent.yaml", &agent("lagging", "LAG0000001", ""));
    let out = setup.run(&["apply", "--timeout", "40s"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let charged: Vec<_> = setup
        .sim
        .generations()
        .into_iter()
        .filter(|g| g.is_charged())
        .collect();
    assert_eq!(charged.len(), 1, "{charged:?}\n{}", out.all());
    assert!(
        out.all().contains("1 generation(s) started (250 credits)"),
        "{}",
        out.all()
    );
}

/// The simulator charging every call (no idempotency honouring): its count is the bill.
async fn charging() -> Setup {
    Setup::with(SimConfig {
        generation_time: Duration::from_millis(300),
        honour_idempotency_key: false,
        ..SimConfig::default()
    })
    .await
}

/// The state file and its journal, as a CI cache or a backup keeps them.
fn copy_state(from: &Path, to: &Path) {
    for suffix in ["", ".journal"] {
        let source = PathBuf::from(format!("{}{suffix}", from.display()));
        let target = PathBuf::from(format!("{}{suffix}", to.display()));
        let _ = std::fs::remove_file(&target);
        if source.exists() {
            std::fs::copy(&source, &target).unwrap();
        }
    }
}

// A lost state file adopts what the API shows; a restored older copy buys nothing and says
// why, and the resolve annotation in the manifest takes the way out the user chose.
#[tokio::test]
async fn a_lost_or_restored_state_file_buys_nothing() {
    let s = charging().await;
    s.write("a.yaml", &agent("alpha", "STATE-1", ""));
    let first = s.run(&["apply"]).await;
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(s.calls("generate", "STATE-1"), 1);
    let backup = s.dir.path().join("backup.json");
    copy_state(&s.state(), &backup);

    // Lost: the state file and its journal deleted.
    copy_state(&s.dir.path().join("nothing-here.json"), &s.state());
    let lost = s.run(&["apply"]).await;
    assert_eq!(lost.code, 0, "{lost:?}");
    assert!(lost.stdout.contains("Adopted"), "{lost:?}");
    assert_eq!(
        s.calls("generate", "STATE-1"),
        1,
        "lost state: nothing bought"
    );

    // An edit buys once; then the copy from before it comes back (a CI cache).
    s.write("a.yaml", &agent("alpha", "STATE-1", "  duration: 3\n"));
    let edited = s.run(&["apply"]).await;
    assert_eq!(edited.code, 0, "{edited:?}");
    assert_eq!(s.calls("generate", "STATE-1"), 2);
    copy_state(&backup, &s.state());
    let restored = s.run(&["apply"]).await;
    assert_eq!(restored.code, 1, "{restored:?}");
    assert!(restored.stdout.contains("StateOutdated"), "{restored:?}");
    assert!(restored.stdout.contains("--accept"), "{restored:?}");
    assert_eq!(
        s.calls("generate", "STATE-1"),
        2,
        "restored copy: nothing bought"
    );

    // The user accepts what the API shows, in the manifest.
    s.write(
        "a.yaml",
        &agent("alpha", "STATE-1", "  duration: 3\n").replace(
            "metadata:\n",
            "metadata:\n  annotations:\n    dynamics.bithuman.ai/resolve: accept\n",
        ),
    );
    let accepted = s.run(&["apply"]).await;
    assert_eq!(accepted.code, 0, "{accepted:?}");
    assert_eq!(s.calls("generate", "STATE-1"), 2, "accept sends nothing");
    // The value was handled once: applying again changes nothing and buys nothing.
    let again = s.run(&["apply"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(s.calls("generate", "STATE-1"), 2);
}

// Two folders naming one agent, applied one after the other with one state file: every record
// of the state counts, so the second is a conflict and buys nothing.
#[tokio::test]
async fn two_folders_on_one_agent_with_one_state_buy_once() {
    let s = charging().await;
    let other = s.dir.path().join("other-team");
    std::fs::create_dir(&other).unwrap();
    s.write("a.yaml", &agent("alpha", "STATE-2", ""));
    std::fs::write(other.join("b.yaml"), agent("beta", "STATE-2", "")).unwrap();
    let first = s.run(&["apply"]).await;
    assert_eq!(first.code, 0, "{first:?}");
    let second = output(s.command(&["apply", "-f", other.to_str().unwrap()])).await;
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stdout.contains("Conflict") && second.stdout.contains("default/alpha"),
        "{second:?}"
    );
    assert_eq!(s.calls("generate", "STATE-2"), 1, "{second:?}");
}

// Two applies at once, one through a symlink to the state file: one lock on the real file,
// so the second refuses to start and nothing is bought twice.
#[tokio::test]
async fn two_applies_through_a_symlink_take_one_lock() {
    let s = Setup::with(SimConfig {
        generation_time: Duration::from_secs(2),
        honour_idempotency_key: false,
        ..SimConfig::default()
    })
    .await;
    s.write("a.yaml", &agent("alpha", "STATE-3", ""));
    let link = s.dir.path().join("linked-state.json");
    std::os::unix::fs::symlink(s.state(), &link).unwrap();
    let manifests = s.manifests();
    let first = s
        .command(&["apply", "-f", manifests.to_str().unwrap()])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !PathBuf::from(format!("{}.lock", s.state().display())).exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no lock taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut via_link = tokio::process::Command::new(BIN);
    via_link
        .args(["apply", "-f", manifests.to_str().unwrap(), "--api-url"])
        .arg(s.sim.url())
        .arg("--state")
        .arg(&link)
        .env("BITHUMAN_API_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let second = output(via_link).await;
    let first = first.wait_with_output().await.unwrap();
    assert_eq!(first.status.code(), Some(0));
    assert_eq!(second.code, 2, "{second:?}");
    assert!(
        second
            .stderr
            .contains("another apply is using the state file"),
        "{second:?}"
    );
    assert_eq!(s.calls("generate", "STATE-3"), 1);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still a link (writes went to the real file)"
    );
}

// What earlier releases wrote still reads and buys nothing: state files written by the release
// before empty values counted as absent (regenerate: "" hashed as written), by the release
// before the ledger and by the release that brought it (with the journal it left), applied by
// this one against an API that has the agents' dynamics.
#[tokio::test]
async fn states_written_by_earlier_releases_buy_nothing() {
    use dynamics_operator::api::{ApiSecret, ClientConfig, DynamicsClient, GenerateRequest};
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade");
    let agents = ["UPGRADE001", "UPGRADE002", "UPGRADE003"];
    for release in ["86891f3", "fb0cf75", "a47e41c"] {
        let s = charging().await;
        std::fs::copy(
            fixtures.join("manifests/agents.yaml"),
            s.manifests().join("agents.yaml"),
        )
        .unwrap();
        std::fs::copy(fixtures.join(release).join("state.json"), s.state()).unwrap();
        let journal = fixtures.join(release).join("state.json.journal");
        if journal.exists() {
            std::fs::copy(&journal, format!("{}.journal", s.state().display())).unwrap();
        }
        // The API as that release left it: one generation per agent.
        let client = DynamicsClient::new(ClientConfig {
            base_url: s.sim.url(),
            ..ClientConfig::default()
        })
        .unwrap();
        for agent in agents {
            let request = GenerateRequest {
                agent_id: agent.into(),
                ..Default::default()
            };
            client
                .generate(&ApiSecret::new(SECRET), &request, None)
                .await
                .unwrap();
        }
        let start = Instant::now();
        while !agents
            .iter()
            .all(|a| s.sim.agent(a).status.as_deref() == Some("ready"))
        {
            assert!(start.elapsed() < Duration::from_secs(20), "seeding");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = s.run(&["apply"]).await;
        assert_eq!(out.code, 0, "{release}: {out:?}");
        for agent in agents {
            assert_eq!(
                s.calls("generate", agent),
                1,
                "{release}: {agent} bought again after the upgrade: {out:?}"
            );
        }
        assert!(
            out.stderr.contains("0 generation(s) started (0 credits)"),
            "{release}: {out:?}"
        );
    }
}

// A budget in file mode: plan shows which change it would hold back and where the budget
// stands after the others; apply buys up to it and waits, naming it; the state counts what was
// spent, so a second apply buys nothing more; a day later (the clock moved on) the rest is
// bought, once.
#[tokio::test]
async fn a_budget_holds_what_is_past_it_in_plan_and_apply() {
    let s = charging().await;
    for (i, id) in ["BUDGET-1", "BUDGET-2", "BUDGET-3"].iter().enumerate() {
        s.write(&format!("{i}.yaml"), &agent(&format!("agent-{i}"), id, ""));
    }
    let budget = ["--budget", "namespace:500/day"];
    let plan = s.run(&[&["plan"][..], &budget].concat()).await;
    assert_eq!(plan.code, 1, "changes pending: {plan:?}");
    assert!(
        plan.stdout.contains("namespace:500/day 0 -> 250 of 500"),
        "{plan:?}"
    );
    assert!(
        plan.stdout.contains("namespace:500/day 250 -> 500 of 500"),
        "{plan:?}"
    );
    assert!(
        plan.stdout
            .contains("BudgetExceeded: budget namespace:500/day has no room"),
        "{plan:?}"
    );
    assert!(plan.stdout.contains("Credits: 500."), "{plan:?}");
    assert_eq!(s.total("generate"), 0, "plan sends nothing");

    let apply = s
        .run(&[&["apply", "--timeout", "5s"][..], &budget].concat())
        .await;
    assert_eq!(apply.code, 1, "{apply:?}");
    assert!(apply.stdout.contains("BudgetExceeded"), "{apply:?}");
    assert_eq!(s.total("generate"), 2, "nothing bought past the budget");
    let again = s
        .run(&[&["apply", "--timeout", "3s"][..], &budget].concat())
        .await;
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(s.total("generate"), 2, "the state keeps the spend");

    let mut tomorrow = s.command(&[&["apply", "--timeout", "20s"][..], &budget].concat());
    tomorrow
        .arg("-f")
        .arg(s.manifests())
        .env("DYNAMICS_CLOCK_SKEW", "86400");
    let tomorrow = output(tomorrow).await;
    assert_eq!(tomorrow.code, 0, "{tomorrow:?}");
    assert_eq!(s.total("generate"), 3);
    for id in ["BUDGET-1", "BUDGET-2", "BUDGET-3"] {
        assert_eq!(s.calls("generate", id), 1, "{id}");
    }
    // The spend report from the state file: one row per charged call, as the simulator saw.
    let report = s.spend_report().await;
    let mut agents: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["agentId"].as_str().unwrap())
        .collect();
    agents.sort();
    assert_eq!(agents, ["BUDGET-1", "BUDGET-2", "BUDGET-3"]);
    assert_eq!(report["credits"], 250 * s.total("generate"));
}

// Terraform's saved plan: `plan --out` writes what apply would do; `apply --plan` does exactly
// that, and refuses, changing nothing, once the manifests (or the state, or GET) make another
// plan. `plan -o markdown` is the same plan for a pull-request comment.
#[tokio::test]
async fn a_saved_plan_is_applied_as_reviewed_or_refused_when_it_no_longer_holds() {
    let s = charging().await;
    s.write("a.yaml", &agent("alpha", "SAVED-1", ""));
    s.write("b.yaml", &agent("beta", "SAVED-2", ""));
    let saved = s.dir.path().join("reviewed.json");
    let planned = s.run(&["plan", "--out", saved.to_str().unwrap()]).await;
    assert_eq!(planned.code, 1, "changes pending: {planned:?}");
    assert!(planned.stderr.contains("Plan saved to"), "{planned:?}");
    let markdown = s.run(&["plan", "-o", "markdown"]).await;
    assert!(
        markdown
            .stdout
            .contains("| `default/alpha` | `SAVED-1` | generate | 250 |")
            && markdown.stdout.contains("**Credits: 500**"),
        "{markdown:?}"
    );
    let applied = s
        .run(&[
            "apply",
            "--plan",
            saved.to_str().unwrap(),
            "--timeout",
            "20s",
        ])
        .await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(s.total("generate"), 2);

    // Reviewed: an edit of alpha. Then beta is edited too before apply: refused, nothing sent.
    s.write("a.yaml", &agent("alpha", "SAVED-1", "  duration: 4\n"));
    let reviewed = s.dir.path().join("edit.json");
    let planned = s.run(&["plan", "--out", reviewed.to_str().unwrap()]).await;
    assert_eq!(planned.code, 1, "{planned:?}");
    s.write("b.yaml", &agent("beta", "SAVED-2", "  duration: 5\n"));
    let refused = s
        .run(&[
            "apply",
            "--plan",
            reviewed.to_str().unwrap(),
            "--timeout",
            "20s",
        ])
        .await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("no longer holds") && refused.stderr.contains("default/beta"),
        "{refused:?}"
    );
    assert_eq!(s.total("generate"), 2, "a refused plan sends nothing");

    // Back to what was reviewed: the plan holds again and buys exactly its one generation.
    s.write("b.yaml", &agent("beta", "SAVED-2", ""));
    let applied = s
        .run(&[
            "apply",
            "--plan",
            reviewed.to_str().unwrap(),
            "--timeout",
            "20s",
        ])
        .await;
    assert_eq!(applied.code, 0, "{applied:?}");
    assert_eq!(s.calls("generate", "SAVED-1"), 2);
    assert_eq!(s.calls("generate", "SAVED-2"), 1);
    // Every charged call is in the spend report, the one bought before the edit too.
    let report = s.spend_report().await;
    let mut rows: Vec<(String, Option<u64>)> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["agentId"].as_str().unwrap().to_string(),
                r["inputs"]["duration"].as_u64(),
            )
        })
        .collect();
    rows.sort();
    let mut charged: Vec<(String, Option<u64>)> = s
        .sim
        .generations()
        .iter()
        .filter(|g| g.is_charged())
        .map(|g| (g.agent_id.clone(), g.body["duration"].as_u64()))
        .collect();
    charged.sort();
    assert_eq!(rows, charged, "{report}");

    // A plan edited by hand is refused before anything is read.
    let text = std::fs::read_to_string(&reviewed).unwrap();
    std::fs::write(
        &reviewed,
        text.replace("\"credits\": 250", "\"credits\": 0"),
    )
    .unwrap();
    let tampered = s
        .run(&["apply", "--plan", reviewed.to_str().unwrap()])
        .await;
    assert_eq!(tampered.code, 2, "{tampered:?}");
    assert!(tampered.stderr.contains("digest"), "{tampered:?}");
}
