//! A one-node Kubernetes cluster (tests/node/cluster.sh): etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet, kube-proxy, containerd with runc and the CNI
//! bridge, and an OCI registry on 127.0.0.1:5000, all inside a network and mount namespace of
//! its own. Commands that talk to it run in that namespace ([`Node::command`]). Dropping the
//! [`Node`] stops everything it started, pods included, and removes its cgroups and mounts.
//!
//! Needs root, the binaries of tests/controlplane, tests/node and tests/tools (build.sh each),
//! and Debian's containerd, runc, containernetworking-plugins and iptables. A missing part
//! FAILS the test with what to install: nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::tools::{target_dir, ROOT};

/// The node's address in its namespace (pods reach the node's processes there).
pub const NODE_IP: &str = "10.200.0.1";
/// The registry inside the namespace, as images and charts name it.
pub const REGISTRY: &str = "127.0.0.1:5000";

pub struct Node {
    dir: tempfile::TempDir,
    holder: u32,
    pub kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(ROOT).join("tests/node/cluster.sh")
}

impl Node {
    /// Start the cluster and wait until the node is Ready.
    pub fn start() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("dynamics-node-")
            .tempdir()
            .expect("temp dir");
        let started = Instant::now();
        let out = Command::new(script())
            .arg("up")
            .arg(dir.path())
            .env("NODE_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("run tests/node/cluster.sh");
        assert!(
            out.status.success(),
            "tests/node/cluster.sh up failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("node: up in {:.1?}", started.elapsed());
        let env = std::fs::read_to_string(dir.path().join("env")).expect("cluster env");
        let holder = env
            .lines()
            .find_map(|l| l.strip_prefix("HOLDER_PID="))
            .and_then(|p| p.parse().ok())
            .expect("HOLDER_PID in the cluster env");
        Node {
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir,
            holder,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` run inside the node's namespaces, from this crate's root.
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder))
            .args(["--net", "--mount"])
            .arg(format!("--wd={ROOT}"))
            .arg("--")
            .arg(program.as_ref());
        cmd
    }

    /// Run inside the namespace and return stdout; panic with stderr when it fails.
    pub fn run_ok(&self, program: impl AsRef<Path>, args: &[&str]) -> String {
        let out = self.run(program.as_ref(), args);
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}{}",
            program.as_ref().display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    pub fn run(&self, program: impl AsRef<Path>, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .expect("run a command in the node's namespace")
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run_ok(kubectl(), &all)
    }

    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl -o json")
    }

    pub fn helm(&self, args: &[&str]) -> String {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run_ok(super::tools::tool("helm"), &all)
    }

    /// containerd's own client, for what the API does not show (a container's process).
    pub fn ctr(&self, args: &[&str]) -> String {
        let socket = self.dir().join("run/containerd/containerd.sock");
        let mut all = vec!["--address", socket.to_str().unwrap(), "-n", "k8s.io"];
        all.extend_from_slice(args);
        self.run_ok("ctr", &all)
    }

    /// The host PID of a running container (`containerd://ID` from a pod's status).
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let tasks = self.ctr(&["tasks", "ls"]);
        tasks
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id)).then(|| f.next().and_then(|p| p.parse().ok()))?
            })
            .unwrap_or_else(|| panic!("no running task {id} in containerd:\n{tasks}"))
    }

    /// The tail of one component's log (kubelet, containerd, kube-apiserver, ...).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir().join("logs").join(format!("{component}.log")))
                .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Poll `check` every half second until it returns Some, or panic naming `what`.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let out = Command::new(script())
            .arg("down")
            .arg(self.dir.path())
            .output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!("node down: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// The control plane's kubectl (tests/controlplane/build.sh).
pub fn kubectl() -> PathBuf {
    super::tools::kubectl()
}

/// `<target>/node/<version>/bin/<name>` must exist: tests/node/build.sh builds it.
pub fn check_built() {
    let bin = target_dir()
        .join("node")
        .join(super::controlplane::pinned_kube_version())
        .join("bin");
    for b in ["kubelet", "kube-scheduler", "kube-proxy", "pause"] {
        assert!(
            bin.join(b).is_file(),
            "{b} missing in {}: run tests/node/build.sh (tests/run.sh does)",
            bin.display()
        );
    }
}
