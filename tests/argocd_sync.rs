//! A real Argo CD syncs a Git repository of AgentDynamics against the test API server.
//!
//! Argo CD v3.1 is built from module source by tests/argocd/build.sh (one multi-call binary:
//! application controller, repo server and API server, and the kustomize the repo server runs).
//! Here it runs as processes: Debian's redis-server, the repo server, the application
//! controller, and the API server with authentication off (only to run the refresh action, as a
//! user would from the UI or `argocd app actions run`); every one on 127.0.0.1. Argo CD's CRDs
//! and config come from its own manifests, the AgentDynamics health check and refresh action
//! are merged into argocd-cm with the command docs/deploy.md gives, and the Application is the
//! README's: automated sync with prune and self-heal, server-side apply, no ignoreDifferences.
//!
//! The Git repository is served by `git daemon` on loopback and holds the project's examples
//! (suspended.yaml left out: a suspended object makes the Application Suspended, by design)
//! with a kustomization. The operator binary runs against the simulator, whose record of
//! charged calls is the oracle. The steps, in one run (each needs the state the last left):
//!
//! 1. first sync, sync waves: the Secret an agent needs (wave -1) is created before every
//!    AgentDynamics, a second or more before (a later wave, not only kind order), and the agent
//!    never sees SecretNotFound; the Application is Progressing while generations run and
//!    Healthy only once every AgentDynamics is Ready; one generation each;
//! 2. it stays Synced and Healthy for two resyncs (no drift from status, the CRD's defaults or
//!    field order), with no new sync and nothing sent to the API;
//! 3. a commit that edits a spec: Synced to it, Progressing, Healthy; exactly one generation;
//! 4. the refresh action (run through Argo CD's API server): the operator echoes the annotation
//!    in status, no generation, the Application stays Synced;
//! 5. a commit adding an agent whose Secret holds a wrong api-secret: Degraded, with the
//!    Stalled condition's reason and message as the resource's health message;
//! 6. a commit removing four agents and two Secrets: pruned in reverse wave order, each agent
//!    before its Secret, so team-b-agent's Disable PUT still has its api-secret; Disable sends
//!    one PUT, Orphan nothing; the Application ends Synced and Healthy.
//!
//! Each step ends when the sync operation to its commit has Succeeded. Per-resource health
//! comes from the resource tree the API server serves (what the UI and `argocd app get` show).
//! `DYNAMICS_ARGOCD_KEEP_LOGS=<dir>` keeps every component's log.
//!
//! The Application's status at each step is printed (`--nocapture` shows it).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::SimConfig;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{json, Value as Json};
use support::controlplane::ControlPlane;
use support::operator::{Env, Pace, SECRET};
use support::process::{tail_file, ManagedChild};
use support::tools::{target_dir, ROOT};

/// Argo CD's control namespace: the name docs/deploy.md's `kubectl -n argocd patch` uses.
const ARGOCD_NS: &str = "argocd";
const APP: &str = "agents";
/// How often the application controller compares the Application with Git by itself.
const RESYNC_SECONDS: u64 = 15;
/// Generations are slow enough to see the Application Progressing.
const GENERATION_TIME: Duration = Duration::from_secs(4);
const STEP_TIMEOUT: Duration = Duration::from_secs(240);

// The agents of the examples the repository holds (agentId: name).
const SUPPORT: (&str, &str) = ("support-agent", "B72KQP4410"); // full.yaml
const MINIMAL: (&str, &str) = ("minimal-agent", "A91XMB7113"); // minimal.yaml, Disable
const KIOSK: (&str, &str) = ("kiosk-agent", "C13ZXW9001"); // orphan.yaml, Orphan
const TEAM_B: (&str, &str) = ("team-b-agent", "E08RTY6632"); // with-secret-ref.yaml
const BAD: (&str, &str) = ("bad-secret-agent", "F40BAD0001"); // added in step 5
const EXAMPLES: [&str; 4] = [
    "full.yaml",
    "minimal.yaml",
    "orphan.yaml",
    "with-secret-ref.yaml",
];

fn argocd_dir() -> PathBuf {
    target_dir().join("argocd")
}

/// `<target>/argocd/bin/<name>`, or a panic that says how to build it.
fn argocd_bin(name: &str) -> PathBuf {
    let path = argocd_dir().join("bin").join(name);
    assert!(
        path.exists(),
        "{name} missing at {}: run tests/argocd/build.sh (tests/run.sh does)",
        path.display()
    );
    path
}

fn redis_server() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .expect(
            "redis-server missing: run tests/argocd/build.sh (it installs Debian's redis-server)",
        )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

async fn wait_port(port: u16, child: &mut ManagedChild) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Some(status) = child.try_status() {
            panic!(
                "{} exited ({status}) before listening on {port}:\n{}",
                child.name,
                child.log_tail(6000)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} does not listen on 127.0.0.1:{port}:\n{}",
            child.name,
            child.log_tail(6000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&support::tools::command_ok(cmd).stdout).into_owned()
}

/// A Git repository served read-only by `git daemon` on 127.0.0.1; commits are made in a work
/// tree and pushed to it through the file system.
struct GitRepo {
    work: PathBuf,
    url: String,
    _daemon: ManagedChild,
}

impl GitRepo {
    async fn serve(dir: &Path) -> GitRepo {
        let root = dir.join("git");
        let work = dir.join("work");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        run_ok(
            Command::new("git")
                .args(["init", "-q", "--bare", "-b", "main"])
                .arg(root.join("agents.git")),
        );
        run_ok(
            Command::new("git")
                .args(["init", "-q", "-b", "main"])
                .arg(&work),
        );
        run_ok(
            Command::new("git")
                .current_dir(&work)
                .args(["remote", "add", "origin"])
                .arg(root.join("agents.git")),
        );
        let port = free_port();
        let args: Vec<String> = vec![
            "daemon".into(),
            "--reuseaddr".into(),
            "--listen=127.0.0.1".into(),
            format!("--port={port}"),
            format!("--base-path={}", root.display()),
            "--export-all".into(),
            root.display().to_string(),
        ];
        let mut daemon = ManagedChild::spawn(
            "git-daemon",
            Path::new("git"),
            &args,
            &dir.join("git-daemon.log"),
            &[],
        )
        .expect("start git daemon");
        wait_port(port, &mut daemon).await;
        GitRepo {
            work,
            url: format!("git://127.0.0.1:{port}/agents.git"),
            _daemon: daemon,
        }
    }

    /// Writes (`Some`) or removes (`None`) files under agents/, commits, pushes; the new
    /// revision.
    fn commit(&self, files: &[(&str, Option<String>)], message: &str) -> String {
        let dir = self.work.join("agents");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            match content {
                Some(text) => std::fs::write(dir.join(name), text).unwrap(),
                None => std::fs::remove_file(dir.join(name)).unwrap(),
            }
        }
        let git = |args: &[&str]| {
            run_ok(
                Command::new("git")
                    .current_dir(&self.work)
                    .args(["-c", "user.name=tests", "-c", "user.email=tests@127.0.0.1"])
                    .args(args),
            )
        };
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", message]);
        git(&["push", "-q", "origin", "main"]);
        git(&["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// Redis, the repo server, the application controller and the API server.
struct ArgoCd {
    children: Vec<ManagedChild>,
    server: String,
    home: PathBuf,
}

impl ArgoCd {
    /// Installs Argo CD's CRDs and config as its manifests do, merges deploy/argocd/argocd-cm.yaml
    /// the way docs/deploy.md says, and starts the components.
    async fn start(cp: &ControlPlane, dir: &Path) -> ArgoCd {
        let manifests = argocd_dir().join("manifests");
        for crd in [
            "application-crd.yaml",
            "appproject-crd.yaml",
            "applicationset-crd.yaml",
        ] {
            cp.apply_file(manifests.join(crd)).expect("Argo CD CRD");
        }
        for crd in ["applications.argoproj.io", "appprojects.argoproj.io"] {
            cp.wait_crd_established(crd, Duration::from_secs(30))
                .await
                .expect("Argo CD CRDs served");
        }
        let created = cp.kubectl(["create", "namespace", ARGOCD_NS]);
        assert!(
            created.status.success(),
            "create namespace {ARGOCD_NS} (an Argo CD already installed there?): {}",
            String::from_utf8_lossy(&created.stderr)
        );
        for file in std::fs::read_dir(&manifests).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("argocd-") {
                cp.kubectl_ok([
                    "apply".as_ref(),
                    "-n".as_ref(),
                    ARGOCD_NS.as_ref(),
                    "-f".as_ref(),
                    path.as_os_str(),
                ])
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
            }
        }
        // docs/deploy.md: kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm.yaml
        let cm_patch = Path::new(ROOT).join("deploy/argocd/argocd-cm.yaml");
        cp.kubectl_ok([
            "-n".as_ref(),
            ARGOCD_NS.as_ref(),
            "patch".as_ref(),
            "configmap".as_ref(),
            "argocd-cm".as_ref(),
            "--patch-file".as_ref(),
            cm_patch.as_os_str(),
        ])
        .expect("merge the health check and the refresh action into argocd-cm");

        let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
        let home = dir.join("home");
        let tmp = dir.join("tmp");
        for d in [
            &home,
            &tmp,
            &dir.join("tls"),
            &dir.join("ssh"),
            &dir.join("static"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let bin = argocd_dir().join("bin");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let askpass = dir.join("askpass.sock").display().to_string();
        let tls = dir.join("tls").display().to_string();
        let ssh = dir.join("ssh").display().to_string();
        let home_s = home.display().to_string();
        let tmp_s = tmp.display().to_string();
        let env: Vec<(&str, &str)> = vec![
            ("PATH", &path),
            ("HOME", &home_s),
            ("TMPDIR", &tmp_s),
            ("KUBECONFIG", &kubeconfig),
            // The in-cluster destination (https://kubernetes.default.svc) is the API server of
            // KUBECONFIG, as in Argo CD's own local development setup.
            ("ARGOCD_FAKE_IN_CLUSTER", "true"),
            ("ARGOCD_GPG_ENABLED", "false"),
            ("ARGOCD_ASK_PASS_SOCK", &askpass),
            ("ARGOCD_TLS_DATA_PATH", &tls),
            ("ARGOCD_SSH_DATA_PATH", &ssh),
        ];
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut children = Vec::new();

        let redis_port = free_port();
        let redis_addr = format!("127.0.0.1:{redis_port}");
        let mut redis = ManagedChild::spawn(
            "redis",
            &redis_server(),
            &strings(&[
                "--bind",
                "127.0.0.1",
                "--port",
                &redis_port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &tmp_s,
            ]),
            &dir.join("redis.log"),
            &[],
        )
        .expect("start redis-server");
        wait_port(redis_port, &mut redis).await;
        children.push(redis);

        let repo_port = free_port();
        let repo_addr = format!("127.0.0.1:{repo_port}");
        let mut repo = ManagedChild::spawn(
            "argocd-repo-server",
            &argocd_bin("argocd-repo-server"),
            &strings(&[
                "--address",
                "127.0.0.1",
                "--port",
                &repo_port.to_string(),
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                &free_port().to_string(),
                "--disable-tls",
                "--redis",
                &redis_addr,
                "--logformat",
                "text",
            ]),
            &dir.join("repo-server.log"),
            &env,
        )
        .expect("start the repo server");
        wait_port(repo_port, &mut repo).await;
        children.push(repo);

        let controller = ManagedChild::spawn(
            "argocd-application-controller",
            &argocd_bin("argocd-application-controller"),
            &strings(&[
                "--kubeconfig",
                &kubeconfig,
                "--namespace",
                ARGOCD_NS,
                "--repo-server",
                &repo_addr,
                "--repo-server-plaintext",
                "--redis",
                &redis_addr,
                "--metrics-port",
                &free_port().to_string(),
                "--app-resync",
                &RESYNC_SECONDS.to_string(),
                "--app-resync-jitter",
                "0",
                "--status-processors",
                "2",
                "--operation-processors",
                "2",
                "--logformat",
                "text",
            ]),
            &dir.join("application-controller.log"),
            &env,
        )
        .expect("start the application controller");
        children.push(controller);

        let server_port = free_port();
        let mut server = ManagedChild::spawn(
            "argocd-server",
            &argocd_bin("argocd-server"),
            &strings(&[
                "--kubeconfig",
                &kubeconfig,
                "--namespace",
                ARGOCD_NS,
                "--address",
                "127.0.0.1",
                "--port",
                &server_port.to_string(),
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                &free_port().to_string(),
                "--insecure",
                "--disable-auth",
                "--repo-server",
                &repo_addr,
                "--repo-server-plaintext",
                "--redis",
                &redis_addr,
                "--staticassets",
                &dir.join("static").display().to_string(),
                "--logformat",
                "text",
            ]),
            &dir.join("server.log"),
            &env,
        )
        .expect("start the API server");
        wait_port(server_port, &mut server).await;
        children.push(server);

        ArgoCd {
            children,
            server: format!("127.0.0.1:{server_port}"),
            home,
        }
    }

    /// Every component's log tail, for failure messages.
    fn logs(&mut self) -> String {
        self.children
            .iter_mut()
            .map(|c| {
                let state = match c.try_status() {
                    Some(s) => format!("exited: {s}"),
                    None => "running".into(),
                };
                format!(
                    "--- {} ({state}) ---\n{}\n",
                    c.name,
                    tail_file(&c.log, 5000)
                )
            })
            .collect()
    }

    /// The Application's resource tree as the API server serves it to the UI and the CLI: since
    /// v3.0 the controller keeps each resource's health there (in Redis), not in the
    /// Application's status.resources (unless --persist-resource-health).
    async fn resource_tree(&self) -> anyhow::Result<Json> {
        let url = format!(
            "http://{}/api/v1/applications/{APP}/resource-tree",
            self.server
        );
        let reply = reqwest::get(&url).await?;
        anyhow::ensure!(reply.status().is_success(), "GET {url}: {}", reply.status());
        Ok(reply.json().await?)
    }

    /// `argocd app actions run`, as a user runs an action, through the API server.
    fn run_action(&self, ns: &str, name: &str, action: &str) -> String {
        run_ok(
            Command::new(argocd_bin("argocd"))
                .env("HOME", &self.home)
                .args(["app", "actions", "run", APP, action])
                .args(["--kind", "AgentDynamics", "--group", "dynamics.bithuman.ai"])
                .args(["--resource-name", name, "--namespace", ns])
                .args(["--server", &self.server, "--plaintext"]),
        )
    }
}

/// What the Application reports, as `kubectl get application` and the UI show it.
#[derive(Clone, Debug, Default)]
struct AppState {
    sync: String,
    health: String,
    revision: String,
    reconciled_at: String,
    op_phase: String,
    op_message: String,
    op_revision: String,
    history: usize,
    resources: Vec<Json>,
    conditions: Vec<Json>,
}

impl AppState {
    fn of(app: &DynamicObject) -> AppState {
        let s = &app.data["status"];
        let text = |v: &Json| v.as_str().unwrap_or("").to_string();
        AppState {
            sync: text(&s["sync"]["status"]),
            health: text(&s["health"]["status"]),
            revision: text(&s["sync"]["revision"]),
            reconciled_at: text(&s["reconciledAt"]),
            op_phase: text(&s["operationState"]["phase"]),
            op_message: text(&s["operationState"]["message"]),
            op_revision: text(&s["operationState"]["syncResult"]["revision"]),
            history: s["history"].as_array().map_or(0, Vec::len),
            resources: s["resources"].as_array().cloned().unwrap_or_default(),
            conditions: s["conditions"].as_array().cloned().unwrap_or_default(),
        }
    }

    /// Synced to `revision`, `health`, and the sync operation to it finished.
    fn settled(&self, revision: &str, health: &str) -> bool {
        self.sync == "Synced"
            && self.revision == revision
            && self.health == health
            && self.op_phase == "Succeeded"
            && self.op_revision == revision
    }

    /// The Application's entry for AgentDynamics `name`.
    fn resource(&self, name: &str) -> Option<&Json> {
        self.resources
            .iter()
            .find(|r| r["kind"] == "AgentDynamics" && r["name"] == name)
    }

    /// The status line; `tree` adds the health of every AgentDynamics that is not Healthy.
    fn line(&self, tree: &Json) -> String {
        let short = |r: &str| r.get(..7).unwrap_or(r).to_string();
        let mut line = format!(
            "sync {} ({}), health {}, last sync {} ({}): {}",
            or_none(&self.sync),
            short(&self.revision),
            or_none(&self.health),
            or_none(&self.op_phase),
            short(&self.op_revision),
            or_none(&self.op_message)
        );
        let unhealthy: Vec<String> = tree["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] == "AgentDynamics")
            .filter(|r| r["health"]["status"].is_string() && r["health"]["status"] != "Healthy")
            .map(|r| {
                format!(
                    "{} {}: {}",
                    r["name"].as_str().unwrap_or(""),
                    r["health"]["status"].as_str().unwrap_or(""),
                    r["health"]["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        if !unhealthy.is_empty() {
            line.push_str(&format!(" [{}]", unhealthy.join("; ")));
        }
        for c in &self.conditions {
            line.push_str(&format!(
                " (condition {}: {})",
                c["type"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            ));
        }
        line
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Ready=True for the object's current generation.
fn ready_now(o: &AgentDynamics) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.is_ready()
            && s.observed_generation == o.metadata.generation
            && s.condition("Ready")
                .is_some_and(|c| c.observed_generation == o.metadata.generation)
    })
}

/// One event the test's watches saw: (kind, name, type, resourceVersion, Ready reason).
#[derive(Clone, Debug)]
struct Seen {
    kind: String,
    name: String,
    event: &'static str,
    resource_version: u64,
    ready_reason: Option<String>,
}

/// Records every event of `ar` objects in `ns` from now on (restarting the watch when the
/// server ends it).
fn record_events(client: kube::Client, ns: &str, ar: ApiResource, into: Arc<Mutex<Vec<Seen>>>) {
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
    tokio::spawn(async move {
        let mut rv = "0".to_string();
        loop {
            let Ok(stream) = api.watch(&WatchParams::default().timeout(120), &rv).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut stream = stream.boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                let (kind, obj) = match event {
                    WatchEvent::Added(o) => ("ADDED", o),
                    WatchEvent::Modified(o) => ("MODIFIED", o),
                    WatchEvent::Deleted(o) => ("DELETED", o),
                    WatchEvent::Bookmark(b) => {
                        rv = b.metadata.resource_version;
                        continue;
                    }
                    WatchEvent::Error(_) => {
                        rv = "0".into();
                        break;
                    }
                };
                let version = obj.metadata.resource_version.clone().unwrap_or_default();
                let reason = obj.data["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["reason"].as_str())
                    .map(String::from);
                into.lock().unwrap().push(Seen {
                    kind: ar.kind.clone(),
                    name: obj.metadata.name.clone().unwrap_or_default(),
                    event: kind,
                    resource_version: version.parse().unwrap_or(0),
                    ready_reason: reason,
                });
                rv = version;
            }
        }
    });
}

/// The test's view: the Application, the agents, the simulator, and what was seen.
struct Run {
    env: Env,
    argocd: ArgoCd,
    repo: GitRepo,
    apps: Api<DynamicObject>,
    timeline: Vec<String>,
    last_line: String,
    step: String,
}

impl Run {
    async fn app(&self) -> AppState {
        AppState::of(&self.apps.get(APP).await.expect("get the Application"))
    }

    /// Reads the Application and notes its status in the timeline when it changed.
    async fn observe(&mut self) -> AppState {
        let state = self.app().await;
        // The timeline only: a tree not served yet shows no resource health.
        let tree = self.argocd.resource_tree().await.unwrap_or_default();
        let line = state.line(&tree);
        if line != self.last_line {
            self.timeline.push(format!("[{}] {line}", self.step));
            self.last_line = line;
        }
        state
    }

    fn begin(&mut self, step: &str) {
        self.step = step.to_string();
        self.last_line.clear();
        println!("== {step}");
    }

    /// Everything a failure message needs.
    fn report(&mut self) -> String {
        format!(
            "timeline:\n  {}\n{}\n{}",
            self.timeline.join("\n  "),
            self.argocd.logs(),
            self.env.logs()
        )
    }

    fn fail(&mut self, what: &str) -> ! {
        keep_logs(self.env.dir.path());
        let report = self.report();
        panic!("{what}\n{report}");
    }

    /// Polls the Application (and the agents, for `check`) until `done` holds.
    async fn until(
        &mut self,
        what: &str,
        mut check: impl FnMut(&AppState, &[AgentDynamics]) -> Result<bool, String>,
    ) -> AppState {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            // The Application first, then the agents: the Application's health was computed
            // before the agents are read, and agents here only move towards Ready.
            let state = self.observe().await;
            let agents = self
                .env
                .api
                .list(&Default::default())
                .await
                .expect("list agents")
                .items;
            match check(&state, &agents) {
                Ok(true) => return state,
                Ok(false) => {}
                Err(wrong) => self.fail(&format!("{what}: {wrong}")),
            }
            if Instant::now() > deadline {
                self.fail(&format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Asks the controller to compare with Git now (what a Git webhook does).
    async fn refresh(&self) {
        self.apps
            .patch(
                APP,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"argocd.argoproj.io/refresh": "normal"}}}),
                ),
            )
            .await
            .expect("annotate the Application for a refresh");
    }

    fn charged(&self, agent: (&str, &str)) -> u64 {
        self.env.sim.agent(agent.1).charged_generations
    }

    fn calls(&self, endpoint: &str, agent: (&str, &str)) -> u64 {
        self.env.calls(endpoint, agent.1)
    }
}

/// Copies every log of `dir` to `DYNAMICS_ARGOCD_KEEP_LOGS`, if set.
fn keep_logs(dir: &Path) {
    let Some(keep) = std::env::var_os("DYNAMICS_ARGOCD_KEEP_LOGS") else {
        return;
    };
    let keep = PathBuf::from(keep);
    std::fs::create_dir_all(&keep).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            std::fs::copy(&path, keep.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn kustomization(resources: &[&str]) -> String {
    let mut text = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for r in resources {
        text.push_str(&format!("  - {r}\n"));
    }
    text
}

/// A Secret the operator may use (labelled), synced in wave -1, before the agents (wave 0).
fn api_secret(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels:\n    dynamics.bithuman.ai/api-secret: \"true\"\n  annotations:\n    argocd.argoproj.io/sync-wave: \"-1\"\ntype: Opaque\nstringData:\n  api-secret: {value}\n"
    )
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("examples").join(name))
        .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_syncs_a_git_repository_of_agent_dynamics() {
    // Fail now, with the command that builds them, rather than after starting half of it.
    for name in [
        "argocd",
        "argocd-repo-server",
        "argocd-application-controller",
        "argocd-server",
        "kustomize",
    ] {
        argocd_bin(name);
    }
    redis_server();

    let mut env = Env::new(
        "argocd-agents",
        SimConfig {
            generation_time: GENERATION_TIME,
            max_concurrent: 0,
            ..SimConfig::default()
        },
        Pace::Fast,
    )
    .await;
    env.start_operator(&[]);
    let ns = env.ns.clone();
    let dir = env.dir.path().to_path_buf();
    let cp = env.cp;
    let client = cp.kube_client().await.expect("client");

    let seen = Arc::new(Mutex::new(Vec::new()));
    record_events(
        client.clone(),
        &ns,
        ApiResource::erase::<Secret>(&()),
        seen.clone(),
    );
    record_events(
        client.clone(),
        &ns,
        ApiResource::erase::<AgentDynamics>(&()),
        seen.clone(),
    );

    let argocd = ArgoCd::start(cp, &dir).await;
    let repo = GitRepo::serve(&dir).await;

    // The repository: the examples, the Secret with-secret-ref.yaml names, a kustomization.
    let mut files: Vec<(&str, Option<String>)> = EXAMPLES
        .iter()
        .map(|name| (*name, Some(example(name))))
        .collect();
    files.push((
        "team-b-secret.yaml",
        Some(api_secret("team-b-bithuman", SECRET)),
    ));
    let mut resources: Vec<&str> = vec!["team-b-secret.yaml"];
    resources.extend(EXAMPLES);
    files.push(("kustomization.yaml", Some(kustomization(&resources))));
    let first = repo.commit(&files, "agents: the examples");

    let app_ar = ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Application".into(),
        plural: "applications".into(),
    };
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), ARGOCD_NS, &app_ar);
    let mut run = Run {
        env,
        argocd,
        repo,
        apps,
        timeline: Vec::new(),
        last_line: String::new(),
        step: String::new(),
    };

    // The default project, which Argo CD's API server creates when it starts.
    let projects: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ARGOCD_NS,
        &ApiResource {
            kind: "AppProject".into(),
            plural: "appprojects".into(),
            ..app_ar.clone()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while projects.get_opt("default").await.ok().flatten().is_none() {
        if Instant::now() > deadline {
            run.fail("Argo CD's API server did not create the default AppProject");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The Application as the README's deploy/argocd/application.yaml has it, for this repository.
    let application = format!(
        "apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: {APP}
  namespace: {ARGOCD_NS}
spec:
  project: default
  source:
    repoURL: {url}
    targetRevision: main
    path: agents
  destination:
    server: https://kubernetes.default.svc
    namespace: {ns}
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - ServerSideApply=true
    retry:
      limit: 5
      backoff:
        duration: 5s
        factor: 2
        maxDuration: 1m
",
        url = run.repo.url
    );
    cp.apply_yaml(&application).expect("create the Application");

    // 1. First sync: Progressing while generating, Healthy only when every agent is Ready.
    run.begin("first sync");
    let agents = [SUPPORT, MINIMAL, KIOSK, TEAM_B];
    let mut progressing_seen = false;
    let state = run
        .until("the first sync to end Synced and Healthy", |app, live| {
            let ready: Vec<&str> = live
                .iter()
                .filter(|o| ready_now(o))
                .filter_map(|o| o.metadata.name.as_deref())
                .collect();
            let all_ready = agents.iter().all(|(name, _)| ready.contains(name));
            if app.health == "Healthy" && !all_ready {
                return Err(format!(
                    "Healthy while only {ready:?} of {agents:?} are Ready"
                ));
            }
            if app.health == "Progressing" && live.len() == agents.len() && !all_ready {
                progressing_seen = true;
            }
            Ok(app.settled(&first, "Healthy"))
        })
        .await;
    if !progressing_seen {
        run.fail("the Application was never Progressing while the agents generated");
    }
    for agent in agents {
        if run.charged(agent) != 1 {
            let n = run.charged(agent);
            run.fail(&format!("{}: {n} charged generations, expected 1", agent.0));
        }
    }
    // Sync waves: the Secret (wave -1) exists before any AgentDynamics (wave 0), so the agent
    // that names it never reported SecretNotFound.
    {
        let seen = seen.lock().unwrap().clone();
        let created = |kind: &str, name: &str| {
            seen.iter()
                .find(|s| s.kind == kind && s.name == name && s.event == "ADDED")
                .map(|s| s.resource_version)
        };
        let secret = created("Secret", "team-b-bithuman");
        let Some(secret) = secret else {
            run.fail("the watch saw no Secret team-b-bithuman created");
        };
        for (name, _) in agents {
            match created("AgentDynamics", name) {
                Some(v) if v > secret => {}
                other => run.fail(&format!(
                    "{name} created at resourceVersion {other:?}, not after the Secret ({secret})"
                )),
            }
        }
        // And in a later wave: Argo CD applies a wave, waits for it to be healthy and then
        // about 2 s (ARGOCD_SYNC_WAVE_DELAY) before the next. Kind order alone (one wave) would
        // also put a Secret before custom resources, but in the same second.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret_created = secrets
            .get_metadata("team-b-bithuman")
            .await
            .expect("the Secret")
            .metadata
            .creation_timestamp
            .expect("creationTimestamp")
            .0
            .as_second();
        for (name, _) in agents {
            let created = run
                .env
                .get(name)
                .await
                .metadata
                .creation_timestamp
                .expect("creationTimestamp")
                .0
                .as_second();
            if created < secret_created + 1 {
                run.fail(&format!(
                    "{name} created {} s after the Secret: not in a later sync wave",
                    created - secret_created
                ));
            }
        }
        let reasons: Vec<String> = seen
            .iter()
            .filter(|s| s.name == TEAM_B.0)
            .filter_map(|s| s.ready_reason.clone())
            .collect();
        if reasons.iter().any(|r| r == "SecretNotFound") {
            run.fail(&format!("{} saw SecretNotFound: {reasons:?}", TEAM_B.0));
        }
    }
    let synced_history = state.history;

    // 2. Stays Synced and Healthy for two resyncs: no drift from status, defaults or order.
    run.begin("two resyncs later");
    let calls_before: u64 = ["generate", "get", "update"]
        .iter()
        .map(|e| run.env.sim.stats().total(e))
        .sum();
    let mut comparisons = vec![state.reconciled_at.clone()];
    let state = run
        .until("two comparisons with Git", |app, _| {
            if app.sync != "Synced" || app.health != "Healthy" {
                return Err(format!("{} / {} after a resync", app.sync, app.health));
            }
            if app.history != synced_history {
                return Err(format!("synced again: {} history entries", app.history));
            }
            if let Some(r) = app
                .resources
                .iter()
                .find(|r| r["status"].as_str() != Some("Synced"))
            {
                return Err(format!("resource out of sync: {r}"));
            }
            if comparisons.last() != Some(&app.reconciled_at) {
                comparisons.push(app.reconciled_at.clone());
            }
            Ok(comparisons.len() >= 3)
        })
        .await;
    assert_eq!(state.revision, first);
    let calls_after: u64 = ["generate", "get", "update"]
        .iter()
        .map(|e| run.env.sim.stats().total(e))
        .sum();
    if calls_after != calls_before {
        run.fail(&format!(
            "the operator called the API {} times while nothing changed",
            calls_after - calls_before
        ));
    }

    // 3. A commit that edits a spec: one generation, Progressing then Healthy.
    run.begin("commit: support-agent duration 3 -> 4");
    let edited = example("full.yaml").replace("duration: 3", "duration: 4");
    assert_ne!(edited, example("full.yaml"), "full.yaml has duration: 3");
    let second = run.repo.commit(
        &[("full.yaml", Some(edited))],
        "support-agent: 4 s per motion",
    );
    run.refresh().await;
    let mut progressing = false;
    run.until("the edit synced, Progressing, then Healthy", |app, live| {
        let support = live
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(SUPPORT.0));
        let edited_ready = support.is_some_and(|o| ready_now(o) && o.spec.duration == Some(4));
        if app.revision == second && app.health == "Progressing" {
            progressing = true;
        }
        // Until the edit is applied the Application is OutOfSync at the new revision and
        // still Healthy (the live object is the old one); Synced means it is applied.
        if app.sync == "Synced"
            && app.revision == second
            && app.health == "Healthy"
            && !edited_ready
        {
            return Err("Synced and Healthy before the edited agent is Ready".into());
        }
        Ok(app.settled(&second, "Healthy"))
    })
    .await;
    if !progressing {
        run.fail("the Application was not Progressing while the edit generated");
    }
    if run.charged(SUPPORT) != 2 {
        let n = run.charged(SUPPORT);
        run.fail(&format!(
            "the edit bought {} generations, expected 1",
            n - 1
        ));
    }
    for agent in [MINIMAL, KIOSK, TEAM_B] {
        assert_eq!(run.charged(agent), 1, "{} untouched", agent.0);
    }

    // 4. The refresh action, as a user runs it: the operator echoes the annotation in status.
    run.begin("refresh action on minimal-agent");
    let history = run.app().await.history;
    let out = run.argocd.run_action(&ns, MINIMAL.0, "refresh");
    println!("argocd app actions run: {}", out.trim());
    let requested = run
        .env
        .wait(MINIMAL.0, "the refresh annotation set by Argo CD", |o| {
            o.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("dynamics.bithuman.ai/reconcile-requested-at"))
        })
        .await
        .metadata
        .annotations
        .unwrap()["dynamics.bithuman.ai/reconcile-requested-at"]
        .clone();
    run.env
        .wait(MINIMAL.0, "the refresh echoed in status", |o| {
            o.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some(requested.as_str())
        })
        .await;
    run.refresh().await;
    let before = run.app().await.reconciled_at;
    // The annotation is not in Git: compared again, the Application is still Synced, and
    // self-heal synced nothing.
    run.until("a comparison after the action", |app, _| {
        if app.sync != "Synced" || app.health != "Healthy" || app.history != history {
            return Err(format!(
                "{} / {} with {} syncs (was {history})",
                app.sync, app.health, app.history
            ));
        }
        Ok(app.reconciled_at != before)
    })
    .await;
    assert_eq!(run.charged(MINIMAL), 1, "the refresh bought nothing");

    // 5. An agent whose Secret holds a wrong api-secret: Degraded, with the condition's message.
    run.begin("commit: bad-secret-agent with a wrong api-secret");
    let bad_agent = format!(
        "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: {}\nspec:\n  agentId: {}\n  apiSecretRef:\n    name: team-c-bithuman\n  deletionPolicy: Orphan\n",
        BAD.0, BAD.1
    );
    let mut resources_bad = resources.clone();
    resources_bad.extend(["team-c-secret.yaml", "bad-secret-agent.yaml"]);
    let third = run.repo.commit(
        &[
            (
                "team-c-secret.yaml",
                Some(api_secret("team-c-bithuman", "not-the-api-secret")),
            ),
            ("bad-secret-agent.yaml", Some(bad_agent)),
            ("kustomization.yaml", Some(kustomization(&resources_bad))),
        ],
        "bad-secret-agent, with a wrong api-secret",
    );
    run.refresh().await;
    run.until("Degraded for the bad secret", |app, _| {
        Ok(app.settled(&third, "Degraded"))
    })
    .await;
    let live = run.env.get(BAD.0).await;
    let stalled = live
        .status
        .as_ref()
        .and_then(|s| s.condition("Stalled"))
        .filter(|c| c.status == "True")
        .cloned();
    let Some(stalled) = stalled else {
        run.fail("the Application is Degraded but bad-secret-agent is not Stalled");
    };
    let tree = match run.argocd.resource_tree().await {
        Ok(tree) => tree,
        Err(e) => run.fail(&format!("the resource tree: {e}")),
    };
    let entry = tree["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["kind"] == "AgentDynamics" && n["name"] == BAD.0)
        .cloned()
        .unwrap_or_default();
    let want = format!("{}: {}", stalled.reason, stalled.message);
    if entry["health"]["status"] != "Degraded" || entry["health"]["message"] != want.as_str() {
        run.fail(&format!(
            "bad-secret-agent's health in the Application: {}, expected Degraded: {want}",
            entry["health"]
        ));
    }
    assert_eq!(run.charged(BAD), 0, "a refused secret buys nothing");

    // 6. A commit removing manifests prunes them: Disable sends one PUT, Orphan nothing. The
    // team-b agent goes with its Secret: its Disable PUT needs that Secret.
    run.begin("commit: remove minimal, kiosk, team-b (with its Secret) and bad-secret agents");
    let updates_minimal = run.calls("update", MINIMAL);
    let updates_team_b = run.calls("update", TEAM_B);
    let kiosk_calls: u64 = ["generate", "get", "update"]
        .iter()
        .map(|e| run.calls(e, KIOSK))
        .sum();
    let remaining: Vec<&str> = resources
        .iter()
        .copied()
        .filter(|r| {
            ![
                "minimal.yaml",
                "orphan.yaml",
                "with-secret-ref.yaml",
                "team-b-secret.yaml",
            ]
            .contains(r)
        })
        .collect();
    let fourth = run.repo.commit(
        &[
            ("minimal.yaml", None),
            ("orphan.yaml", None),
            ("with-secret-ref.yaml", None),
            ("team-b-secret.yaml", None),
            ("team-c-secret.yaml", None),
            ("bad-secret-agent.yaml", None),
            ("kustomization.yaml", Some(kustomization(&remaining))),
        ],
        "remove minimal-agent, kiosk-agent, team-b-agent and bad-secret-agent",
    );
    run.refresh().await;
    let gone = [MINIMAL.0, KIOSK.0, TEAM_B.0, BAD.0];
    run.until("pruned, Synced and Healthy", |app, live| {
        let left = live
            .iter()
            .filter(|o| gone.contains(&o.metadata.name.as_deref().unwrap_or("")))
            .count();
        Ok(left == 0 && app.settled(&fourth, "Healthy"))
    })
    .await;
    let state = run.app().await;
    for (agent, before) in [(MINIMAL, updates_minimal), (TEAM_B, updates_team_b)] {
        if run.calls("update", agent) != before + 1 {
            let n = run.calls("update", agent) - before;
            run.fail(&format!(
                "pruning {} (Disable) sent {n} PUTs, expected 1",
                agent.0
            ));
        }
        assert_eq!(
            run.env.sim.agent(agent.1).enabled,
            Some(false),
            "{} disabled",
            agent.0
        );
    }
    let kiosk_after: u64 = ["generate", "get", "update"]
        .iter()
        .map(|e| run.calls(e, KIOSK))
        .sum();
    if kiosk_after != kiosk_calls {
        run.fail(&format!(
            "pruning kiosk-agent (Orphan) sent {} calls, expected none",
            kiosk_after - kiosk_calls
        ));
    }
    assert_eq!(
        run.env.sim.agent(KIOSK.1).enabled,
        Some(true),
        "orphaned as it was"
    );
    for name in gone {
        assert!(state.resource(name).is_none(), "{name} still listed");
    }
    let support = run.env.get(SUPPORT.0).await;
    assert!(ready_now(&support), "{} still Ready", SUPPORT.0);

    // Pruned in reverse wave order: the agent (wave 0) is gone before its Secret (wave -1) is
    // deleted, so the finalizer of an agent pruned together with its Secret still finds it.
    let deleted = |kind: &str, name: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .find(|s| s.kind == kind && s.name == name && s.event == "DELETED")
            .map(|s| s.resource_version)
    };
    for (agent, secret) in [(BAD.0, "team-c-bithuman"), (TEAM_B.0, "team-b-bithuman")] {
        let (agent_gone, secret_gone) =
            (deleted("AgentDynamics", agent), deleted("Secret", secret));
        println!("pruned: {agent} at {agent_gone:?}, Secret {secret} at {secret_gone:?}");
        match (agent_gone, secret_gone) {
            (Some(a), Some(s)) if a < s => {}
            other => run.fail(&format!(
                "{agent} deleted at {:?}, its Secret at {:?}: the Secret went first",
                other.0, other.1
            )),
        }
    }

    keep_logs(&dir);
    println!(
        "Application status, step by step:\n  {}",
        run.timeline.join("\n  ")
    );
    let stop = Instant::now();
    let mut children = std::mem::take(&mut run.argocd.children);
    support::process::stop_all(&mut children, Duration::from_secs(5));
    println!("stopped Argo CD in {:?}", stop.elapsed());
}
