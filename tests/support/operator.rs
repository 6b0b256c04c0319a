//! The operator binary (`dynamics-operator run`) against a test control plane and the
//! project's simulator, one namespace each ([`Env`]: the end-to-end, monitoring and
//! health-engine suites), the CRD those need, and what the suites ask of objects.

use std::path::PathBuf;
use std::time::Duration;

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, SimConfig, SimHandle};
use kube::api::{Patch, PatchParams};
use kube::Api;

use super::controlplane::ControlPlane;
use super::process::ManagedChild;
use super::wait::wait_for;

pub const SECRET: &str = "observed-operator-secret";
pub const TIMEOUT: Duration = Duration::from_secs(90);
/// The CRD's name and the committed file it comes from.
pub const CRD_NAME: &str = "agentdynamics.dynamics.bithuman.ai";
pub const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/agentdynamics.yaml");
/// The purchase ledger's CRD, installed with it (the operator buys nothing without it).
pub const LEDGER_CRD_NAME: &str = "dynamicsledgers.dynamics.bithuman.ai";
pub const LEDGER_CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/dynamicsledgers.yaml");

/// Installs the committed CRDs (idempotent: server-side apply) and waits until they are served.
pub async fn install_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    cp.apply_file(CRD_FILE)?;
    cp.apply_file(LEDGER_CRD_FILE)?;
    crd_established(cp).await
}

/// Waits until the API server serves the CRDs (installed by whichever means).
pub async fn crd_established(cp: &ControlPlane) -> anyhow::Result<()> {
    cp.wait_crd_established(CRD_NAME, Duration::from_secs(30))
        .await?;
    cp.wait_crd_established(LEDGER_CRD_NAME, Duration::from_secs(30))
        .await
}

/// The shared control plane with the CRD installed (once per test process).
pub async fn control_plane() -> &'static ControlPlane {
    static CRD_INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let cp = ControlPlane::shared()
        .await
        .expect("the control plane must start (see tests/controlplane/build.sh)");
    CRD_INSTALLED
        .get_or_init(|| async { install_crd(cp).await.expect("install the CRD") })
        .await;
    cp
}

/// How fast the operators of an [`Env`] poll and give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The binary's own timings and log level: for tests that only observe.
    Binary,
    /// Polls every 200 ms to 1 s, retries stalled objects after 20 s, an 8 s visibility
    /// window, a 5 s API timeout, debug logs: for tests that wait on every transition.
    Fast,
}

/// A test's world: its own namespace, simulator, and operator processes watching that
/// namespace; tests that each start one run side by side.
pub struct Env {
    pub cp: &'static ControlPlane,
    pub ns: String,
    pub sim: SimHandle,
    pub api: Api<AgentDynamics>,
    pub dir: tempfile::TempDir,
    pub operators: Vec<ManagedChild>,
    pace: Pace,
}

impl Env {
    /// A namespace and the simulator with `sim_config` (its secret replaced); no operator yet.
    pub async fn new(prefix: &str, sim_config: SimConfig, pace: Pace) -> Env {
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
        Env {
            cp,
            ns,
            sim,
            api,
            dir,
            operators: Vec::new(),
            pace,
        }
    }

    /// One operator at the [`Pace::Fast`] pace (the end-to-end suite).
    pub async fn start(prefix: &str, sim_config: SimConfig) -> Env {
        let mut env = Env::new(prefix, sim_config, Pace::Fast).await;
        env.start_operator(&[]);
        env
    }

    /// One operator with the binary's own timings and `extra` flags: what the monitoring and
    /// health-engine tests observe does not need them shorter.
    pub async fn observe(prefix: &str, sim_config: SimConfig, extra: &[&str]) -> Env {
        let mut env = Env::new(prefix, sim_config, Pace::Binary).await;
        env.start_operator(extra);
        env
    }

    /// Starts one more operator process watching this namespace; returns its index.
    pub fn start_operator(&mut self, extra: &[&str]) -> usize {
        let ns = self.ns.clone();
        self.start_operator_in(&ns, extra)
    }

    /// Starts one more operator process watching namespace `ns` (a second install, scoped
    /// to another namespace, against the same API); returns its index.
    pub fn start_operator_in(&mut self, ns: &str, extra: &[&str]) -> usize {
        self.start_operator_with(ns, extra, &[])
    }

    /// Starts one more operator process watching namespace `ns` with `extra` flags and
    /// environment variables (`DYNAMICS_CLOCK_SKEW`, say); returns its index.
    pub fn start_operator_with(
        &mut self,
        ns: &str,
        extra: &[&str],
        extra_env: &[(&str, &str)],
    ) -> usize {
        let index = self.operators.len();
        let log = self.dir.path().join(format!("operator-{index}.log"));
        let mut args = run_args(ns, &self.sim.url());
        if self.pace == Pace::Fast {
            args.extend(
                [
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
                .map(|s| s.to_string()),
            );
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let kubeconfig = self.cp.kubeconfig_path().to_string_lossy().into_owned();
        let mut env = vec![
            ("KUBECONFIG", kubeconfig.as_str()),
            ("BITHUMAN_API_SECRET", SECRET),
        ];
        if self.pace == Pace::Fast {
            env.push(("RUST_LOG", "info,dynamics_operator=debug"));
        }
        env.extend_from_slice(extra_env);
        let child = ManagedChild::spawn(
            &format!("operator-{index}"),
            &operator_binary(),
            &args,
            &log,
            &env,
        )
        .expect("start the operator");
        self.operators.push(child);
        index
    }

    /// Where operator `index` serves /metrics; it must have logged it already.
    pub fn metrics_url(&self, index: usize) -> String {
        let log = std::fs::read_to_string(&self.operators[index].log).unwrap_or_default();
        metrics_url_in(&log).unwrap_or_else(|| panic!("no metrics address logged:\n{log}"))
    }

    /// Where operator `index` serves /metrics, once it has logged it.
    pub async fn wait_metrics_url(&self, index: usize) -> String {
        let log = &self.operators[index].log;
        wait_for("the operator logs its metrics address", TIMEOUT, || async {
            Ok(metrics_url_in(
                &std::fs::read_to_string(log).unwrap_or_default(),
            ))
        })
        .await
        .expect("metrics address")
    }

    /// The tail of every operator's log, for failure messages.
    pub fn logs(&self) -> String {
        self.operators
            .iter()
            .map(|o| format!("--- {} ---\n{}", o.name, o.log_tail(6000)))
            .collect()
    }

    /// `kubectl apply` of `yaml` in this namespace.
    pub fn apply(&self, yaml: &str) {
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

    pub async fn get(&self, name: &str) -> AgentDynamics {
        self.api.get(name).await.expect("get object")
    }

    /// Waits until `check` holds for object `name`, then returns it.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&AgentDynamics) -> bool,
    ) -> AgentDynamics {
        let result = wait_for(&format!("{name}: {what}"), TIMEOUT, || async {
            let obj = self.api.get(name).await?;
            Ok(check(&obj).then_some(obj))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Waits until Ready=True for the object's current generation.
    pub async fn wait_ready(&self, name: &str) -> AgentDynamics {
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

    /// Waits until the Ready condition has `reason` (Stalled reasons show there too).
    pub async fn wait_reason(&self, name: &str, reason: &str) -> AgentDynamics {
        let result = wait_for(&format!("{name} reason {reason}"), TIMEOUT, || async {
            let obj = self.api.get(name).await?;
            Ok((ready_reason(&obj).as_deref() == Some(reason)).then_some(obj))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    pub async fn wait_gone(&self, name: &str) {
        let result = wait_for(&format!("{name} deleted"), TIMEOUT, || async {
            Ok(self.api.get_opt(name).await?.is_none().then_some(()))
        })
        .await;
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// A merge patch of the object's spec.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .expect("patch spec");
    }

    /// Calls the simulator counted on `endpoint` for `agent`.
    pub fn calls(&self, endpoint: &str, agent: &str) -> u64 {
        self.sim.stats().count(endpoint, Some(agent), None)
    }
}

/// Where the operator serves /metrics, from its log (it binds port 0 and logs the address:
/// `addr=HOST:PORT` as text, `"addr":"HOST:PORT"` as JSON), as `http://HOST:PORT`.
pub fn metrics_url_in(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("serving /metrics"))?;
    let addr = match line.split("addr=").nth(1) {
        Some(rest) => rest.split_whitespace().next()?,
        None => line.split("\"addr\":\"").nth(1)?.split('"').next()?,
    };
    Some(format!("http://{addr}"))
}

/// `dynamics-operator run` watching `ns` against the API at `api_url`, metrics on a free port.
pub fn run_args(ns: &str, api_url: &str) -> Vec<String> {
    [
        "run",
        "--namespace",
        ns,
        "--api-url",
        api_url,
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Waits until `check` holds for object `name` and returns it; on timeout, panics with
/// `operator`'s log.
pub async fn wait_object(
    api: &Api<AgentDynamics>,
    name: &str,
    what: &str,
    operator: &ManagedChild,
    check: impl Fn(&AgentDynamics) -> bool,
) -> AgentDynamics {
    let result = wait_for(&format!("{name}: {what}"), TIMEOUT, || async {
        let obj = api.get(name).await?;
        Ok(check(&obj).then_some(obj))
    })
    .await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(6000)))
}

/// Waits until object `name` is gone (its finalizer released); on timeout, panics with
/// `operator`'s log.
pub async fn wait_gone(api: &Api<AgentDynamics>, name: &str, operator: &ManagedChild) {
    let result = wait_for(&format!("{name} finalized"), TIMEOUT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(6000)));
}

/// Ready=True.
pub fn is_ready(obj: &AgentDynamics) -> bool {
    obj.status.as_ref().is_some_and(|s| s.is_ready())
}

/// `kind: AgentDynamics` named `name` for `agent`, with `extra` spec lines (indented 2).
pub fn manifest(name: &str, agent: &str, extra: &str) -> String {
    format!(
        "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: {name}\nspec:\n  agentId: {agent}\n{extra}"
    )
}

pub fn operator_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dynamics-operator"))
}

/// The Ready condition's reason, if any.
pub fn ready_reason(obj: &AgentDynamics) -> Option<String> {
    Some(obj.status.as_ref()?.condition("Ready")?.reason.clone())
}
