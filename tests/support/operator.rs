//! The operator binary (`dynamics-operator run`) against a test control plane and the
//! project's simulator, one namespace each: what the monitoring and health-engine tests observe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, SimConfig, SimHandle};
use kube::Api;

use super::controlplane::ControlPlane;
use super::process::ManagedChild;
use super::wait::wait_for;

pub const SECRET: &str = "observed-operator-secret";
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// A namespace, a simulator and one operator watching that namespace.
pub struct Observed {
    pub cp: &'static ControlPlane,
    pub ns: String,
    pub sim: SimHandle,
    pub api: Api<AgentDynamics>,
    pub dir: tempfile::TempDir,
    pub operator: ManagedChild,
}

/// The shared control plane with the CRD installed.
pub async fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared()
        .await
        .expect("the control plane must start (see tests/controlplane/build.sh)");
    cp.apply_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/agentdynamics.yaml"))
        .expect("install the CRD");
    cp.wait_crd_established(
        "agentdynamics.dynamics.bithuman.ai",
        Duration::from_secs(30),
    )
    .await
    .expect("CRD established");
    cp
}

impl Observed {
    /// Starts the simulator with `sim_config` (its secret replaced) and the operator with
    /// `extra` flags.
    pub async fn start(prefix: &str, sim_config: SimConfig, extra: &[&str]) -> Observed {
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
        // The binary's own timings: what these tests observe does not need them shorter.
        let mut args = run_args(&ns, &sim.url());
        args.extend(extra.iter().map(|s| s.to_string()));
        let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
        let operator = ManagedChild::spawn(
            "operator",
            &operator_binary(),
            &args,
            &dir.path().join("operator.log"),
            &[("KUBECONFIG", &kubeconfig), ("BITHUMAN_API_SECRET", SECRET)],
        )
        .expect("start the operator");
        Observed {
            cp,
            ns,
            sim,
            api,
            dir,
            operator,
        }
    }

    pub fn apply(&self, yaml: &str) {
        let out = self
            .cp
            .kubectl_stdin(["apply", "-n", &self.ns, "-f", "-"], yaml.as_bytes())
            .expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until `check` holds for object `name`, then returns it.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&AgentDynamics) -> bool,
    ) -> AgentDynamics {
        wait_object(&self.api, name, what, &self.operator, check).await
    }

    /// Where the operator serves /metrics (it binds port 0 and logs the address).
    pub async fn metrics_url(&self) -> String {
        let log = &self.operator.log;
        let addr = wait_for("the operator logs its metrics address", TIMEOUT, || async {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Ok(text
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string))
        })
        .await
        .expect("metrics address");
        format!("http://{addr}")
    }
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
