//! The operator where users run it: a pod on a real node (tests/support/node.rs: kubelet,
//! containerd, runc, CNI, kube-proxy), its image and chart pulled from an OCI registry and
//! installed the way the README says (`helm install ... oci://...`), its remote the simulator
//! run as the README's demo runs it (`dynamics-operator sim`). With the simulator's record of
//! charged generate calls as the oracle, what users do to a running operator (a crashed
//! container, `kubectl rollout restart`, deleting the leader, a second replica) never buys a
//! change twice, and every object stays Ready. A pod deleted while the API server is unreachable
//! still exits within its grace period, and at once on a second signal.
//!
//! Before each install the release is signed with cosign and verified as users verify it
//! (deploy/release/{sbom,sign,verify}.sh): the image, the chart, and the image's SBOM attested.
//!
//! Needs root, the release binary and tests/{controlplane,node,tools}/build.sh: tests/run.sh
//! builds them all, and .ci/run installs the Debian packages. Nothing is skipped.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::node::{Node, NODE_IP, REGISTRY};
use support::tools::{command_ok, target_dir, tool, ROOT};

const NS: &str = "dynamics-operator";
const AGENTS: &str = "agents";
/// The simulator's own secret (deploy/overlays/simulator uses the same): not a bitHuman secret.
const SIM_SECRET: &str = "simulator-only-not-a-real-secret";
const SIM_URL: &str = "http://10.200.0.1:8090";

/// One node at a time: each test starts a whole cluster, and the machine has 2 cores.
static ONE_NODE: Mutex<()> = Mutex::new(());

/// An installed operator: the node, the simulator process in it, the image's digest.
struct Installed {
    node: Node,
    sim: Child,
    digest: String,
    chart_version: String,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.sim.kill();
        let _ = self.sim.wait();
    }
}

fn chart_version() -> String {
    let chart =
        std::fs::read_to_string(Path::new(ROOT).join("charts/dynamics-operator/Chart.yaml"))
            .expect("Chart.yaml");
    chart
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .expect("version in Chart.yaml")
        .trim()
        .to_string()
}

fn release_binary() -> PathBuf {
    let binary = target_dir().join("release/dynamics-operator");
    assert!(
        binary.is_file(),
        "no release binary at {}: cargo build --release --locked --bin dynamics-operator (tests/run.sh does)",
        binary.display()
    );
    binary
}

/// A node with the release published as the README says: the image (deploy/image/build.sh)
/// and the packaged chart pushed to its registry, and the simulator running on its address.
fn publish() -> Installed {
    support::node::check_built();
    let binary = release_binary();
    let helm = tool("helm");
    let crane = tool("crane");
    let node = Node::start();
    let work = node.dir().join("work");
    std::fs::create_dir_all(work.join("oci")).unwrap();

    // The image, as an OCI layout, pushed as it is (the digest the build printed is the one
    // pulled).
    let tar = work.join("dynamics-operator.oci.tar");
    let out = command_ok(
        Command::new(Path::new(ROOT).join("deploy/image/build.sh"))
            .arg(&tar)
            .env("BINARY", &binary),
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(digest.starts_with("sha256:"), "image digest: {digest}");
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(work.join("oci"))
        .status()
        .unwrap();
    assert!(untar.success());
    let version = chart_version();
    let image = format!("{REGISTRY}/dynamics-operator");
    let pushed = node.run_ok(
        &crane,
        &[
            "push",
            "--insecure",
            work.join("oci").to_str().unwrap(),
            &format!("{image}:{version}"),
        ],
    );
    assert!(
        pushed.contains(&digest),
        "crane pushed {pushed}, built {digest}"
    );

    // The chart, packaged and pushed as users publish it.
    let chart_dir = Path::new(ROOT).join("charts/dynamics-operator");
    node.run_ok(
        &helm,
        &[
            "package",
            chart_dir.to_str().unwrap(),
            "-d",
            work.to_str().unwrap(),
        ],
    );
    let tgz = work.join(format!("dynamics-operator-{version}.tgz"));
    node.run_ok(
        &helm,
        &[
            "push",
            tgz.to_str().unwrap(),
            &format!("oci://{REGISTRY}/charts"),
            "--plain-http",
        ],
    );
    let chart_digest = node
        .run_ok(
            &crane,
            &[
                "digest",
                "--insecure",
                &format!("{REGISTRY}/charts/dynamics-operator:{version}"),
            ],
        )
        .trim()
        .to_string();
    sign_and_verify(
        &node,
        &tar,
        &format!("{image}@{digest}"),
        &format!("{REGISTRY}/charts/dynamics-operator@{chart_digest}"),
    );

    // The remote: the simulator on the node's address, reachable from pods. The oracle counts
    // every charged call, so a repeated Idempotency-Key is charged too.
    let sim_log = std::fs::File::create(work.join("sim.log")).unwrap();
    let sim = node
        .command(&binary)
        .args([
            "sim",
            "--addr",
            &format!("{NODE_IP}:8090"),
            "--secret",
            SIM_SECRET,
        ])
        .args([
            "--generation-time",
            "2s",
            "--honour-idempotency-key",
            "false",
        ])
        .stdout(sim_log.try_clone().unwrap())
        .stderr(sim_log)
        .spawn()
        .expect("start the simulator");
    node.wait("the simulator", Duration::from_secs(20), || {
        node.run("curl", &["-sf", &format!("{SIM_URL}/_sim/generations")])
            .status
            .success()
            .then_some(())
    });

    Installed {
        node,
        sim,
        digest,
        chart_version: version,
    }
}

/// The release signed as deploy/release/sign.sh signs it, with a key pair made here and the
/// SBOM of deploy/release/sbom.sh attested, then checked as users check it before installing
/// (deploy/release/verify.sh): the install goes ahead only when the image, the chart and the
/// SBOM verify against the release's public key. The same check with another key must fail.
fn sign_and_verify(node: &Node, tar: &Path, image: &str, chart: &str) {
    let work = node.dir().join("work");
    let cosign = tool("cosign");
    let password = random_password();
    let (keys, other) = (work.join("keys"), work.join("other-keys"));
    for dir in [&keys, &other] {
        std::fs::create_dir_all(dir).unwrap();
        command_ok(
            Command::new(&cosign)
                .arg("generate-key-pair")
                .current_dir(dir)
                .env("COSIGN_PASSWORD", &password),
        );
    }
    let sbom = work.join("sbom.cdx.json");
    command_ok(
        Command::new(Path::new(ROOT).join("deploy/release/sbom.sh"))
            .arg(tar)
            .arg(&sbom)
            .env("SYFT", tool("syft")),
    );

    // sign.sh and verify.sh talk to the registry: inside the node's namespace.
    let release_script = |script: &str, key: &Path, extra: Option<&Path>| {
        let mut cmd = node.command(Path::new(ROOT).join("deploy/release").join(script));
        cmd.arg(key)
            .args([image, chart])
            .args(extra)
            .env("COSIGN", &cosign)
            .env("PLAIN_HTTP", "true")
            .env_remove("COSIGN_PASSWORD");
        cmd
    };
    let signed = command_ok(
        release_script("sign.sh", &keys.join("cosign.key"), Some(&sbom))
            .env("COSIGN_PASSWORD", &password),
    );
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&signed.stdout),
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        !shown.contains(&password),
        "sign.sh printed the key's password"
    );

    let attested = work.join("attested.cdx.json");
    let started = Instant::now();
    command_ok(&mut release_script(
        "verify.sh",
        &keys.join("cosign.pub"),
        Some(&attested),
    ));
    let read =
        |p: &Path| -> Json { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    assert_eq!(
        read(&attested),
        read(&sbom),
        "the attested SBOM is the one deploy/release/sbom.sh made"
    );
    eprintln!(
        "node: image, chart and SBOM verified in {:.1?}",
        started.elapsed()
    );

    let out = release_script("verify.sh", &other.join("cosign.pub"), None)
        .output()
        .expect("deploy/release/verify.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no matching signatures"),
        "the release verified against a key that did not sign it ({}):\n{stderr}",
        out.status
    );
}

/// 32 hex digits from the kernel's random source.
fn random_password() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Installed {
    fn image(&self) -> String {
        format!("{REGISTRY}/dynamics-operator")
    }

    /// The operator's Secret, holding the simulator's secret.
    fn api_secret(&self) {
        self.node.kubectl(&[
            "-n",
            NS,
            "create",
            "secret",
            "generic",
            "bithuman-api",
            &format!("--from-literal=api-secret={SIM_SECRET}"),
        ]);
    }

    /// `helm install` from the registry, image pinned by digest, leader election on.
    fn helm_install(&self) {
        self.node.kubectl(&["create", "namespace", NS]);
        self.api_secret();
        self.node.helm(&[
            "install",
            "dynamics-operator",
            &format!("oci://{REGISTRY}/charts/dynamics-operator"),
            "--version",
            &self.chart_version,
            "--plain-http",
            "-n",
            NS,
            "--set",
            &format!("image.repository={}", self.image()),
            "--set",
            &format!("image.digest={}", self.digest),
            "--set",
            &format!("operator.apiUrl={SIM_URL}"),
            "--set",
            "leaderElection.enabled=true",
        ]);
        self.rollout();
    }

    /// `kubectl apply -k` of deploy/ through deploy/overlay.sh: the image from the registry by
    /// digest, the API URL the simulator's.
    fn kustomize_install(&self) {
        let overlay = self.node.dir().join("work/overlay");
        let out = std::process::Command::new(Path::new(ROOT).join("deploy/overlay.sh"))
            .arg(&overlay)
            .arg(Path::new(ROOT).join("deploy"))
            .arg(format!("{}@{}", self.image(), self.digest))
            .arg(SIM_URL)
            .output()
            .expect("deploy/overlay.sh");
        assert!(
            out.status.success(),
            "deploy/overlay.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.node
            .kubectl(&["apply", "-k", overlay.to_str().unwrap()]);
        self.api_secret();
        self.rollout();
    }
}

impl Installed {
    fn rollout(&self) {
        let out = self.node.run(
            support::node::kubectl(),
            &[
                "--kubeconfig",
                self.node.kubeconfig.to_str().unwrap(),
                "-n",
                NS,
                "rollout",
                "status",
                "deploy/dynamics-operator",
                "--timeout=180s",
            ],
        );
        if !out.status.success() {
            panic!(
                "the operator did not roll out:\n{}\n{}\nevents:\n{}\noperator (last run):\n{}\nkubelet:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.node.kubectl(&["-n", NS, "get", "pods", "-o", "wide"]),
                self.node.kubectl(&["-n", NS, "get", "events"]),
                {
                    let logs = self.node.run(
                        support::node::kubectl(),
                        &[
                            "--kubeconfig",
                            self.node.kubeconfig.to_str().unwrap(),
                            "-n",
                            NS,
                            "logs",
                            "deploy/dynamics-operator",
                            "--previous",
                            "--tail=30",
                        ],
                    );
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&logs.stdout),
                        String::from_utf8_lossy(&logs.stderr)
                    )
                },
                self.node.log_tail("kubelet", 30)
            );
        }
    }

    /// The operator's pods that are not being deleted.
    fn pods(&self) -> Vec<Json> {
        let list = self.node.kubectl_json(&[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=dynamics-operator,app.kubernetes.io/component=controller",
        ]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }

    fn ready_pods(&self, want: usize) -> Vec<Json> {
        self.node.wait(
            &format!("{want} ready operator pod(s)"),
            Duration::from_secs(180),
            || {
                let pods = self.pods();
                let ready = pods.iter().filter(|p| container_ready(p)).count();
                (pods.len() == want && ready == want).then_some(pods)
            },
        )
    }

    fn lease_holder(&self) -> Option<String> {
        let out = self.node.run(
            support::node::kubectl(),
            &[
                "--kubeconfig",
                self.node.kubeconfig.to_str().unwrap(),
                "-n",
                NS,
                "get",
                "lease",
                "dynamics-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !holder.is_empty()).then_some(holder)
    }

    /// Wait until the Lease names one of the live pods, and return that pod.
    fn leader(&self) -> Json {
        self.node.wait(
            "a live pod holding the Lease",
            Duration::from_secs(120),
            || {
                let holder = self.lease_holder()?;
                self.pods()
                    .into_iter()
                    .find(|p| p["metadata"]["name"] == holder.as_str() && container_ready(p))
            },
        )
    }

    /// Package the chart again with one more printer column in the AgentDynamics CRD, push it
    /// as a new version and `helm upgrade` to it; the CRD in the cluster must show the column.
    fn upgrade_to_a_changed_crd(&self) {
        let next = self.node.dir().join("work/next");
        let chart = next.join("dynamics-operator");
        std::fs::create_dir_all(&next).unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-r")
            .arg(Path::new(ROOT).join("charts/dynamics-operator"))
            .arg(&next)
            .status()
            .unwrap();
        assert!(copied.success());
        let crd_file = chart.join("files/crds/agentdynamics.yaml");
        let mut crd: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&crd_file).unwrap()).unwrap();
        let column =
            serde_json::json!({"name": "Upgraded", "type": "string", "jsonPath": ".spec.agentId"});
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array_mut()
            .expect("printer columns")
            .push(column);
        std::fs::write(
            &crd_file,
            dynamics_operator::resource::to_yaml(&crd).unwrap(),
        )
        .unwrap();
        let version = format!("{}-crd-changed", self.chart_version);
        let helm = tool("helm");
        let work = self.node.dir().join("work");
        self.node.run_ok(
            &helm,
            &[
                "package",
                chart.to_str().unwrap(),
                "--version",
                &version,
                "-d",
                work.to_str().unwrap(),
            ],
        );
        let tgz = work.join(format!("dynamics-operator-{version}.tgz"));
        self.node.run_ok(
            &helm,
            &[
                "push",
                tgz.to_str().unwrap(),
                &format!("oci://{REGISTRY}/charts"),
                "--plain-http",
            ],
        );
        self.node.helm(&[
            "upgrade",
            "dynamics-operator",
            &format!("oci://{REGISTRY}/charts/dynamics-operator"),
            "--version",
            &version,
            "--plain-http",
            "-n",
            NS,
            "--reuse-values",
        ]);
        self.rollout();
        let columns = self.node.kubectl(&[
            "get",
            "crd",
            "agentdynamics.dynamics.bithuman.ai",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ]);
        assert!(
            columns.contains("Upgraded"),
            "printer columns after helm upgrade: {columns}"
        );
    }

    /// Delete the leader's pod and wait until another live pod holds the Lease.
    fn delete_leader(&self, leader: &Json) {
        let old = leader["metadata"]["name"].as_str().unwrap();
        self.node.kubectl(&[
            "-n",
            NS,
            "delete",
            "pod",
            old,
            "--wait=true",
            "--timeout=60s",
        ]);
        let next = self.leader();
        assert_ne!(next["metadata"]["name"], old, "the deleted pod still leads");
    }

    /// Charged generate calls per agent, from the simulator's record.
    fn charged(&self) -> BTreeMap<String, usize> {
        let text = self
            .node
            .run_ok("curl", &["-sf", &format!("{SIM_URL}/_sim/generations")]);
        let records: Vec<Json> = serde_json::from_str(&text).expect("generation record");
        let mut per_agent = BTreeMap::new();
        for r in records.iter().filter(|r| r["replayed"] != true) {
            *per_agent
                .entry(r["agent_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        per_agent
    }

    fn apply_agents(&self, ids: &[&str]) {
        let mut yaml = String::new();
        for id in ids {
            yaml.push_str(&format!(
                "---\napiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\n\
                 metadata: {{name: {}, namespace: {AGENTS}}}\nspec: {{agentId: {id}}}\n",
                id.to_lowercase()
            ));
        }
        let file = self
            .node
            .dir()
            .join(format!("agents-{}.yaml", ids.join("-")));
        std::fs::write(&file, yaml).unwrap();
        self.node.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// Every object Ready, and each agent charged exactly once: nothing was bought twice.
    fn all_ready_once(&self, ids: &[&str], after: &str) {
        let out = self.node.run(
            support::node::kubectl(),
            &[
                "--kubeconfig",
                self.node.kubeconfig.to_str().unwrap(),
                "-n",
                AGENTS,
                "wait",
                "--for=condition=Ready",
                "agdyn",
                "--all",
                "--timeout=180s",
            ],
        );
        assert!(
            out.status.success(),
            "after {after}: not every AgentDynamics is Ready:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.node
                .kubectl(&["-n", AGENTS, "get", "agdyn", "-o", "wide"])
        );
        let charged = self.charged();
        let want: BTreeMap<String, usize> = ids.iter().map(|id| (id.to_string(), 1)).collect();
        assert_eq!(
            charged, want,
            "after {after}: generate calls charged per agent"
        );
        eprintln!(
            "node: after {after}: {} objects Ready, each charged once",
            ids.len()
        );
    }
}

fn container_ready(pod: &Json) -> bool {
    pod["status"]["containerStatuses"]
        .as_array()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|c| c["ready"] == true))
}

fn container_id(pod: &Json) -> String {
    pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .expect("a running container")
        .to_string()
}

fn restarts(pod: &Json) -> u64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

/// The real uid and the options of "/" of a running process, read from /proc on the host.
fn process_identity(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .trim()
        .to_string();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    let options = root.split_whitespace().nth(5).unwrap().to_string();
    (uid, options)
}

fn pid_alive(pid: u32) -> bool {
    // A zombie has exited: it only waits for its parent (the shim) to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn operator_from_registry_runs_on_a_node_and_survives_what_users_do() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let op = publish();
    op.helm_install();
    let node = &op.node;

    // What the pod shows: the image pulled by digest from the registry, ready, not restarted.
    let pods = op.ready_pods(1);
    let pod = &pods[0];
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let image_id = pod["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap();
    assert!(
        image_id.ends_with(&op.digest) && image_id.starts_with(REGISTRY),
        "imageID {image_id}, pushed {}",
        op.digest
    );
    eprintln!(
        "node: pod events:\n{}",
        node.kubectl(&[
            "-n",
            NS,
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={pod_name}"),
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
        ])
    );
    let logs = node.kubectl(&["-n", NS, "logs", &pod_name]);
    eprintln!(
        "node: the operator's first log lines:\n{}",
        logs.lines().take(8).collect::<Vec<_>>().join("\n")
    );

    // As the chart's securityContext says: uid 65532, a read-only root filesystem.
    let first_container = container_id(pod);
    let pid = node.container_pid(&first_container);
    let (uid, root_options) = process_identity(pid);
    assert_eq!(
        uid.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "Uid: {uid}"
    );
    assert!(
        root_options.split(',').any(|o| o == "ro"),
        "the root filesystem is mounted {root_options}"
    );

    // Leader election: the pod holds the Lease.
    assert_eq!(op.leader()["metadata"]["name"], pod_name.as_str());

    // Objects converge; metrics are reachable through the Service.
    node.kubectl(&["create", "namespace", AGENTS]);
    let mut ids = vec!["NODEA001", "NODEA002", "NODEA003"];
    op.apply_agents(&ids);
    op.all_ready_once(&ids, "install");
    let metrics = node.kubectl(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/{NS}/services/dynamics-operator-metrics:metrics/proxy/metrics"
        ),
    ]);
    assert!(
        metrics.contains("dynamics_operator_generations_total 3"),
        "metrics through the Service:\n{metrics}"
    );

    // The container killed inside the pod: the kubelet restarts it, the probes pass again.
    support::process::signal(pid, 9);
    let pod = node.wait(
        "the kubelet to restart the container",
        Duration::from_secs(120),
        || {
            op.pods().into_iter().find(|p| {
                p["metadata"]["name"] == pod_name.as_str() && restarts(p) >= 1 && container_ready(p)
            })
        },
    );
    assert_ne!(
        container_id(&pod),
        first_container,
        "the same container after a kill"
    );
    op.all_ready_once(&ids, "a killed container");

    // kubectl rollout restart: a new pod takes over.
    node.kubectl(&["-n", NS, "rollout", "restart", "deploy/dynamics-operator"]);
    op.rollout();
    let leader = op.leader();
    assert_ne!(leader["metadata"]["name"], pod_name.as_str());
    ids.push("NODEB001");
    op.apply_agents(&ids);
    op.all_ready_once(&ids, "kubectl rollout restart");

    // The leader deleted: its replacement takes the Lease.
    op.delete_leader(&leader);
    ids.push("NODEC001");
    op.apply_agents(&ids);
    op.all_ready_once(&ids, "deleting the leader");

    // Two replicas: one leads, the other waits (and is ready).
    node.helm(&[
        "upgrade",
        "dynamics-operator",
        &format!("oci://{REGISTRY}/charts/dynamics-operator"),
        "--version",
        &op.chart_version,
        "--plain-http",
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "replicaCount=2",
    ]);
    op.rollout();
    op.ready_pods(2);
    let leader = op.leader();
    ids.extend(["NODED001", "NODED002"]);
    op.apply_agents(&ids);
    op.all_ready_once(&ids, "two replicas");
    // And the leader of two deleted: the follower takes over.
    op.delete_leader(&leader);
    ids.push("NODEE001");
    op.apply_agents(&ids);
    op.all_ready_once(&ids, "deleting the leader of two");

    // A chart whose CRD changed: `helm upgrade` upgrades the CRD (it is a template).
    op.upgrade_to_a_changed_crd();
    op.all_ready_once(&ids, "helm upgrade with a changed CRD");

    // helm uninstall keeps the CRD, the objects and what was bought.
    node.helm(&["uninstall", "dynamics-operator", "-n", NS, "--wait"]);
    node.kubectl(&["get", "crd", "agentdynamics.dynamics.bithuman.ai"]);
    let left = node.kubectl_json(&["-n", AGENTS, "get", "agdyn"]);
    assert_eq!(
        left["items"].as_array().unwrap().len(),
        ids.len(),
        "objects after helm uninstall"
    );
    let charged = op.charged();
    assert_eq!(
        charged.values().sum::<usize>(),
        ids.len(),
        "charged after helm uninstall: {charged:?}"
    );
    eprintln!("node: the whole run took {:.0?}", started.elapsed());
}

/// With the API server unreachable from the pod, a deleted pod's process still exits within
/// its grace period (30 s in the chart), on its own deadline; and at once on a second SIGTERM.
#[test]
fn operator_pod_stops_within_its_grace_period_when_the_api_server_is_unreachable() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let op = publish();
    op.helm_install();
    let node = &op.node;
    // Drop, not reject: connections hang, the worst case for a graceful stop.
    let block = [
        "-p",
        "tcp",
        "-s",
        "10.88.0.0/24",
        "--dport",
        "6443",
        "-j",
        "DROP",
    ];
    let iptables = |action: &str| {
        let mut args = vec![action, "INPUT"];
        args.extend_from_slice(&block);
        node.run_ok("iptables", &args);
    };

    for second_signal in [false, true] {
        let leader = op.leader();
        let name = leader["metadata"]["name"].as_str().unwrap().to_string();
        let pid = node.container_pid(&container_id(&leader));
        iptables("-I");
        let started = Instant::now();
        node.kubectl(&["-n", NS, "delete", "pod", &name, "--wait=false"]);
        if second_signal {
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                pid_alive(pid),
                "stopped before its second signal (the API server is blocked)"
            );
            support::process::signal(pid, 15);
        }
        let limit = if second_signal {
            Duration::from_secs(6)
        } else {
            Duration::from_secs(27)
        };
        while pid_alive(pid) && started.elapsed() < Duration::from_secs(40) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let took = started.elapsed();
        iptables("-D");
        eprintln!("node: pod deleted with the API server blocked, second signal {second_signal}: exited after {took:.1?}");
        assert!(
            took < limit,
            "the operator took {took:?} to exit (limit {limit:?}; the kubelet kills it at 30 s)"
        );
        op.ready_pods(1);
    }
}

/// The other install the README gives: `kubectl apply -k` with the image overridden to the
/// registry (deploy/overlay.sh, as tests/kind/run.sh uses it). One replica, no leader election.
#[test]
fn operator_from_registry_with_kustomize_converges_objects() {
    let _one = ONE_NODE.lock().unwrap_or_else(|e| e.into_inner());
    let op = publish();
    op.kustomize_install();
    let pods = op.ready_pods(1);
    let image_id = pods[0]["status"]["containerStatuses"][0]["imageID"]
        .as_str()
        .unwrap();
    assert!(
        image_id.ends_with(&op.digest),
        "imageID {image_id}, pushed {}",
        op.digest
    );
    op.node.kubectl(&["create", "namespace", AGENTS]);
    let ids = ["NODEK001", "NODEK002"];
    op.apply_agents(&ids);
    op.all_ready_once(&ids, "kubectl apply -k");
    let metrics = op.node.kubectl(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/{NS}/services/dynamics-operator-metrics:metrics/proxy/metrics"
        ),
    ]);
    assert!(
        metrics.contains("dynamics_operator_generations_total 2"),
        "metrics through the Service:\n{metrics}"
    );
}
