//! Smoke test of the integration-test control plane (tests/support/controlplane.rs):
//! real etcd + kube-apiserver + kube-controller-manager built by
//! tests/controlplane/build.sh. Fails (never skips) when the binaries are missing.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};

use support::controlplane::{self, ControlPlane};
use support::process::pid_alive;
use support::wait::wait_for;

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

fn is_forbidden<T: std::fmt::Debug>(r: &Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test]
async fn missing_binaries_fail_with_build_hint() {
    let empty = tempfile::tempdir().unwrap();
    let err = ControlPlane::builder()
        .bin_dir(empty.path())
        .allow_existing(false)
        .start()
        .await
        .expect_err("start() must fail without binaries");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("control plane binaries missing: run tests/controlplane/build.sh"),
        "unexpected error: {msg}"
    );
}

#[tokio::test]
async fn control_plane_smoke() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let cp = ControlPlane::start().await?;
    eprintln!("control plane started in {:.2?} ({:?})", t0.elapsed(), cp);
    let pinned = controlplane::pinned_kube_version();

    // kubectl and the apiserver report the pinned version.
    let version: serde_json::Value =
        serde_json::from_str(&cp.kubectl_ok(["version", "-o", "json"])?)?;
    if cp.is_existing() {
        eprintln!(
            "existing cluster: server {}",
            version["serverVersion"]["gitVersion"]
        );
    } else {
        assert_eq!(version["clientVersion"]["gitVersion"], pinned, "{version}");
        assert_eq!(version["serverVersion"]["gitVersion"], pinned, "{version}");
    }

    let client = cp.kube_client().await?;
    if !cp.is_existing() {
        assert_eq!(client.apiserver_version().await?.git_version, pinned);
    }

    // Namespace + ConfigMap through kube::Client, read back through kubectl.
    let ns = cp.create_namespace("smoke").await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &configmap("hello", &[("greeting", "world")]),
    )
    .await?;
    assert_eq!(cms.get("hello").await?.data.unwrap()["greeting"], "world");
    let via_kubectl = cp.kubectl_ok([
        "get",
        "configmap",
        "hello",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.greeting}",
    ])?;
    assert_eq!(via_kubectl, "world");

    // apply_yaml (server-side apply through kubectl).
    cp.apply_yaml(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: {ns}\ndata:\n  k: v\n"
    ))?;
    assert_eq!(cms.get("applied").await?.data.unwrap()["k"], "v");

    // RBAC is really on: admin may list secrets, unprivileged identities may not.
    Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await?;
    if cp.user_token().is_some() {
        let user = cp.user_client().await?;
        let r = Api::<Secret>::namespaced(user.clone(), &ns)
            .list(&Default::default())
            .await;
        assert!(is_forbidden(&r), "static-token user listing secrets: {r:?}");
        // 403 (not 401): the token authenticates, it just is not authorized.
        let r = Api::<ConfigMap>::namespaced(user, &ns).get("hello").await;
        assert!(
            is_forbidden(&r),
            "static-token user reading a configmap: {r:?}"
        );
    }
    // A fresh ServiceAccount token (TokenRequest API) has no permissions either.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("smoke".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create(&PostParams::default(), &sa).await?;
    // Built/read as JSON: required-vs-optional fields of these types differ
    // between k8s-openapi version features.
    let tr: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 600},
    }))?;
    let tr = sas
        .create_token_request("smoke", &PostParams::default(), &tr)
        .await?;
    let token = serde_json::to_value(&tr)?["status"]["token"]
        .as_str()
        .context("TokenRequest without status.token")?
        .to_string();
    let sa_client = cp.kube_client_with_token(&token).await?;
    let r = Api::<Secret>::namespaced(sa_client, &ns)
        .list(&Default::default())
        .await;
    assert!(is_forbidden(&r), "service account listing secrets: {r:?}");

    if !cp.is_existing() {
        // kube-controller-manager: garbage collection of owned objects ...
        let owner = cms
            .create(&PostParams::default(), &configmap("owner", &[]))
            .await?;
        let mut dependent = configmap("dependent", &[]);
        dependent.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            ..Default::default()
        }]);
        cms.create(&PostParams::default(), &dependent).await?;
        cms.delete("owner", &DeleteParams::background()).await?;
        wait_for(
            "garbage collection of the dependent ConfigMap",
            Duration::from_secs(60),
            || async { Ok(cms.get_opt("dependent").await?.is_none().then_some(())) },
        )
        .await?;

        // ... and namespace deletion (finalization by the namespace controller).
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.delete(&ns, &DeleteParams::default()).await?;
        wait_for("namespace deletion", Duration::from_secs(60), || async {
            Ok(nss.get_opt(&ns).await?.is_none().then_some(()))
        })
        .await?;
    } else {
        // Do not leave the test namespace behind in someone's cluster.
        Api::<Namespace>::all(client.clone())
            .delete(&ns, &DeleteParams::default())
            .await?;
    }
    cp.check_alive()?;

    // Teardown: every child process is gone after drop.
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    if !cp.is_existing() {
        assert_eq!(
            pids.len(),
            3,
            "etcd, kube-apiserver, kube-controller-manager"
        );
    }
    drop(client);
    let t = Instant::now();
    drop(cp);
    eprintln!("control plane stopped in {:.2?}", t.elapsed());
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} still alive after drop");
    }
    if std::env::var_os("DYNAMICS_CONTROLPLANE_KEEP").is_none() {
        assert!(!dir.exists(), "{} not removed", dir.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// No process is left behind even when the test process dies abruptly.
//
// The parent tests re-run this test binary as a child with only the ignored
// helper test selected; the helper starts a control plane, prints its pids and
// temp dir, then either hangs (the parent SIGKILLs it) or returns normally
// while using `ControlPlane::shared()` (stopped by the at-exit hook).

const HELPER_ENV: &str = "DYNAMICS_SMOKE_HELPER_MODE";

#[test]
#[ignore = "helper process for children_die_with_* tests; does nothing when run directly"]
fn helper_start_control_plane() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use std::io::Write;
        let report = |cp: &ControlPlane| {
            let pids: Vec<String> = cp.pids().iter().map(|p| p.to_string()).collect();
            println!("HELPER pids={} dir={}", pids.join(","), cp.dir().display());
            std::io::stdout().flush().unwrap();
        };
        match mode.as_str() {
            "hang" => {
                let cp = ControlPlane::builder()
                    .allow_existing(false)
                    .start()
                    .await
                    .unwrap();
                report(&cp);
                std::thread::sleep(Duration::from_secs(120)); // the parent kills us long before
            }
            "shared" => {
                let cp = ControlPlane::shared().await.unwrap();
                report(cp);
                // Return normally: the process exits with the control plane still up.
            }
            other => panic!("unknown helper mode {other}"),
        }
    });
}

struct Helper {
    child: std::process::Child,
    pids: Vec<u32>,
    dir: std::path::PathBuf,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_helper(mode: &str) -> anyhow::Result<Helper> {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "--ignored",
        "--exact",
        "helper_start_control_plane",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HELPER_ENV, mode)
    .env_remove("DYNAMICS_E2E_KUBECONFIG")
    .env_remove("DYNAMICS_CONTROLPLANE_KEEP")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit());
    let mut child = support::process::spawn_tied_to_process(cmd)?;
    let stdout = child.stdout.take().unwrap();
    let mut helper = Helper {
        child,
        pids: vec![],
        dir: Default::default(),
    };
    // Read stdout on a thread that keeps draining it after the HELPER line
    // (closing the pipe early would make the helper's libtest fail with EPIPE).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // libtest prints "test helper_start_control_plane ... " before it.
            if let Some((_, rest)) = line.split_once("HELPER ") {
                let _ = tx.send(rest.to_string());
            }
        }
    });
    let rest = rx.recv_timeout(Duration::from_secs(120)).map_err(|e| {
        anyhow::anyhow!("helper did not report its control plane ({e}); see stderr")
    })?;
    for kv in rest.split(' ') {
        match kv.split_once('=') {
            Some(("pids", v)) => helper.pids = v.split(',').map(|p| p.parse().unwrap()).collect(),
            Some(("dir", v)) => helper.dir = v.into(),
            _ => {}
        }
    }
    anyhow::ensure!(
        helper.pids.len() == 3,
        "helper did not report 3 pids (see stderr)"
    );
    Ok(helper)
}

fn wait_all_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| support::process::pid_running(*p))
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn children_die_with_sigkilled_test_process() -> anyhow::Result<()> {
    if let Some(kc) = controlplane::existing_kubeconfig() {
        eprintln!(
            "existing cluster ({}): no local processes to check",
            kc.display()
        );
        return Ok(());
    }
    let mut helper = start_helper("hang")?;
    for &pid in &helper.pids {
        assert!(
            support::process::pid_running(pid),
            "pid {pid} not running before the kill"
        );
    }
    helper.child.kill()?; // SIGKILL: no Drop, no at-exit hook; only PDEATHSIG can help
    helper.child.wait()?;
    let alive = wait_all_gone(&helper.pids, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&helper.dir); // nobody else will
    assert!(
        alive.is_empty(),
        "still running after the test process was SIGKILLed: {alive:?}"
    );
    Ok(())
}

#[test]
fn shared_control_plane_is_stopped_at_exit() -> anyhow::Result<()> {
    if let Some(kc) = controlplane::existing_kubeconfig() {
        eprintln!(
            "existing cluster ({}): no local processes to check",
            kc.display()
        );
        return Ok(());
    }
    let mut helper = start_helper("shared")?;
    let status = helper.child.wait()?;
    assert!(status.success(), "helper failed: {status}");
    let alive = wait_all_gone(&helper.pids, Duration::from_secs(10));
    assert!(
        alive.is_empty(),
        "still running after the test process exited: {alive:?}"
    );
    // Only the at-exit hook (not PDEATHSIG) removes the temp dir.
    assert!(
        !helper.dir.exists(),
        "{} not removed at exit",
        helper.dir.display()
    );
    Ok(())
}
