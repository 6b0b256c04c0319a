//! Operator processes: started with failpoints, killed, waited for.

use super::*;

pub fn debug_operator_binary() -> PathBuf {
    crate::support::operator::operator_binary()
}

/// How to start an operator process.
#[derive(Debug, Clone)]
pub struct OperatorSpec {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub api_url: String,
    pub args: Vec<String>,
}

impl OperatorSpec {
    /// `failpoints`: `DYNAMICS_FAILPOINTS` (empty: none).
    pub fn spawn(
        &self,
        name: &str,
        log: &Path,
        extra: &[String],
        failpoints: &str,
        failpoint_seed: u64,
    ) -> anyhow::Result<ManagedChild> {
        self.spawn_skewed(name, log, extra, failpoints, failpoint_seed, None)
    }

    /// `spawn`, with the process's clock off by `clock_skew` seconds (`DYNAMICS_CLOCK_SKEW`).
    pub fn spawn_skewed(
        &self,
        name: &str,
        log: &Path,
        extra: &[String],
        failpoints: &str,
        failpoint_seed: u64,
        clock_skew: Option<&str>,
    ) -> anyhow::Result<ManagedChild> {
        let mut args = crate::support::operator::run_args(&self.namespace, &self.api_url);
        args.extend(self.args.iter().cloned());
        args.extend(extra.iter().cloned());
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let seed = failpoint_seed.to_string();
        let mut env: Vec<(&str, &str)> = vec![
            ("KUBECONFIG", &kubeconfig),
            ("BITHUMAN_API_SECRET", SECRET),
            ("RUST_LOG", "info,dynamics_operator=debug"),
            ("LOG_FORMAT", "text"),
        ];
        if !failpoints.is_empty() {
            env.push(("DYNAMICS_FAILPOINTS", failpoints));
            env.push(("DYNAMICS_FAILPOINT_SEED", &seed));
        }
        if let Some(skew) = clock_skew {
            env.push(("DYNAMICS_CLOCK_SKEW", skew));
        }
        ManagedChild::spawn(name, &self.binary, &args, log, &env)
    }
}

/// Waits for `child` to exit on its own; `None` if it still runs after `timeout`.
pub async fn wait_exit(
    child: &mut ManagedChild,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_status() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL and reap: a crash, no graceful shutdown, no lease release.
pub fn kill_now(child: &mut ManagedChild) {
    child.kill_now();
}

/// The failpoint named in a log ("failpoint NAME hit"), if any.
pub fn failpoint_in_log(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix("failpoint ")?;
        Some(rest.strip_suffix(" hit")?.to_string())
    })
}
