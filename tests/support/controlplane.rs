//! A real Kubernetes control plane for integration tests: etcd +
//! kube-apiserver (+ kube-controller-manager) built from upstream source by
//! `tests/controlplane/build.sh`, started on free loopback ports with real
//! authentication (static bearer tokens, TLS with a per-run CA) and
//! `--authorization-mode=Node,RBAC`.
//!
//! ```ignore
//! mod support;
//! use support::controlplane::ControlPlane;
//!
//! #[tokio::test]
//! async fn my_test() -> anyhow::Result<()> {
//!     let cp = ControlPlane::start().await?;          // own cluster, ~3-6 s
//!     // or: let cp = ControlPlane::shared().await?;  // one per test binary
//!     let client = cp.kube_client().await?;
//!     cp.apply_file("crds/agentdynamics.yaml")?;
//!     ...
//!     Ok(())
//! }   // drop: every child process is stopped and reaped
//! ```
//!
//! * `start()` is async (it polls `/readyz`); call it from a tokio runtime.
//! * Binaries come from `DYNAMICS_CONTROLPLANE_BIN` if set, else from
//!   `target/controlplane/<pinned version>/bin`. If they are missing, `start()`
//!   FAILS with "control plane binaries missing: run tests/controlplane/build.sh"
//!   (it never skips).
//! * Existing cluster: if `DYNAMICS_E2E_KUBECONFIG=<file>` is set (or
//!   `DYNAMICS_E2E_EXISTING=1` with `KUBECONFIG=<file>`), nothing is started and
//!   the handle points at that cluster (e.g. kind). Then `admin_token()` and
//!   `user_token()` are `None`.
//! * Logs and data live in a temp dir (`dir()`), deleted on drop unless
//!   `DYNAMICS_CONTROLPLANE_KEEP=1`.
//! * kube-controller-manager runs [`DEFAULT_CONTROLLERS`] (namespace deletion,
//!   garbage collection, service accounts); no scheduler, no kubelet.
//! * Kubeconfigs use token auth and the per-run CA (`certificate-authority`).
//! * `kubectl*`/`apply_*` helpers are blocking (except `kubectl_async`).
//! * Children are spawned with `PR_SET_PDEATHSIG=SIGKILL` from a long-lived
//!   thread, so they die with the test process even if it is SIGKILLed; `Drop`
//!   sends SIGTERM, waits up to 5 s, SIGKILLs and reaps them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use super::process::{self, ManagedChild};

/// `tests/controlplane/versions.env` at compile time.
const VERSIONS_ENV: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/controlplane/versions.env"
));

const BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];
const MISSING_MSG: &str = "control plane binaries missing: run tests/controlplane/build.sh";

/// Service CIDR of the local control plane.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// Name of the unprivileged static-token user (member of only
/// `system:authenticated` and [`USER_GROUP`]).
pub const USER_NAME: &str = "dynamics-test-user";
pub const USER_GROUP: &str = "dynamics:test-users";
/// Name of the admin static-token user (group `system:masters`).
pub const ADMIN_NAME: &str = "dynamics-test-admin";

/// Default kube-controller-manager controllers: namespace deletion, garbage
/// collection (ownerReferences), default service accounts + their tokens, and
/// the kube-root-ca.crt ConfigMap. No workload controllers, no scheduler, no
/// kubelet: Pods never run.
pub const DEFAULT_CONTROLLERS: &[&str] = &[
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
];

fn pinned(key: &str) -> &'static str {
    VERSIONS_ENV
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{key} missing in tests/controlplane/versions.env"))
}

/// Kubernetes version pinned in `tests/controlplane/versions.env`, e.g. `v1.36.3`.
pub fn pinned_kube_version() -> &'static str {
    pinned("KUBE_VERSION")
}

/// etcd version pinned in `tests/controlplane/versions.env`, e.g. `v3.6.8`.
pub fn pinned_etcd_version() -> &'static str {
    pinned("ETCD_VERSION")
}

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
        };
    }
    // Set by cargo for integration tests: <target>/tmp.
    if let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR") {
        if let Some(parent) = Path::new(tmp).parent() {
            return parent.to_path_buf();
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// Where the harness looks for binaries when `DYNAMICS_CONTROLPLANE_BIN` is unset.
pub fn default_bin_dir() -> PathBuf {
    target_dir()
        .join("controlplane")
        .join(pinned_kube_version())
        .join("bin")
}

fn resolve_bin_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (dir, from_env) = match (explicit, std::env::var_os("DYNAMICS_CONTROLPLANE_BIN")) {
        (Some(d), _) => (d.to_path_buf(), true),
        (None, Some(d)) if !d.is_empty() => (PathBuf::from(d), true),
        _ => (default_bin_dir(), false),
    };
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect();
    if !missing.is_empty() {
        let mut others = Vec::new();
        if let Ok(rd) = std::fs::read_dir(target_dir().join("controlplane")) {
            for e in rd.flatten() {
                if is_executable(&e.path().join("bin/kube-apiserver")) {
                    others.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        bail!(
            "{MISSING_MSG} (looked in {}{}: missing {}; pinned kubernetes {} / etcd {}{})",
            dir.display(),
            if from_env {
                ""
            } else {
                ", override with DYNAMICS_CONTROLPLANE_BIN"
            },
            missing.join(", "),
            pinned_kube_version(),
            pinned_etcd_version(),
            if others.is_empty() {
                String::new()
            } else {
                format!("; built versions present: {}", others.join(", "))
            },
        );
    }
    if !from_env {
        // build.sh copies versions.env next to bin/; a mismatch means the pin
        // changed (e.g. an etcd bump) without a rebuild.
        let built =
            std::fs::read_to_string(dir.parent().unwrap().join("versions.env")).unwrap_or_default();
        if built.trim() != VERSIONS_ENV.trim() {
            bail!(
                "control plane binaries in {} are stale (built for {:?}, pinned {:?}): run tests/controlplane/build.sh",
                dir.display(),
                built.trim(),
                VERSIONS_ENV.trim()
            );
        }
    }
    Ok(dir)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Kubeconfig of an existing cluster to use instead of starting one
/// (`DYNAMICS_E2E_KUBECONFIG`, or `KUBECONFIG` with `DYNAMICS_E2E_EXISTING=1`).
pub fn existing_kubeconfig() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DYNAMICS_E2E_KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if env_flag("DYNAMICS_E2E_EXISTING") {
        if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let home = std::env::var_os("HOME").unwrap_or_default();
        return Some(Path::new(&home).join(".kube/config"));
    }
    None
}

/// Options for [`ControlPlane`]; `ControlPlane::start()` uses the defaults.
#[derive(Debug, Clone)]
pub struct Builder {
    bin_dir: Option<PathBuf>,
    controller_manager: bool,
    controllers: Vec<String>,
    extra_apiserver_args: Vec<String>,
    ready_timeout: Duration,
    allow_existing: bool,
}

impl Default for Builder {
    fn default() -> Self {
        let ready_timeout = std::env::var("DYNAMICS_CONTROLPLANE_START_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(90));
        Self {
            bin_dir: None,
            controller_manager: true,
            controllers: DEFAULT_CONTROLLERS.iter().map(|s| s.to_string()).collect(),
            extra_apiserver_args: Vec::new(),
            ready_timeout,
            allow_existing: true,
        }
    }
}

impl Builder {
    /// Use binaries from `dir` (overrides `DYNAMICS_CONTROLPLANE_BIN`).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }
    /// Start kube-controller-manager (default: true).
    pub fn controller_manager(mut self, on: bool) -> Self {
        self.controller_manager = on;
        self
    }
    /// kube-controller-manager `--controllers` (default [`DEFAULT_CONTROLLERS`]).
    pub fn controllers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.controllers = c.into_iter().map(Into::into).collect();
        self
    }
    /// Extra kube-apiserver flags, e.g. `--feature-gates=...` (later flags win).
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_apiserver_args.push(arg.into());
        self
    }
    /// How long to wait for `/readyz` (default 90 s or
    /// `DYNAMICS_CONTROLPLANE_START_TIMEOUT_SECS`).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }
    /// Honour `DYNAMICS_E2E_KUBECONFIG` / `DYNAMICS_E2E_EXISTING` (default true).
    pub fn allow_existing(mut self, on: bool) -> Self {
        self.allow_existing = on;
        self
    }

    pub async fn start(self) -> anyhow::Result<ControlPlane> {
        if self.allow_existing {
            if let Some(kc) = existing_kubeconfig() {
                return ControlPlane::existing(&kc, self.bin_dir.as_deref());
            }
        }
        let bin = resolve_bin_dir(self.bin_dir.as_deref())?;
        check_openssl()?;
        // Ports are picked by binding :0 and released before the servers bind
        // them; on the rare collision, retry with fresh ports.
        let mut last: Option<anyhow::Error> = None;
        for _attempt in 0..3 {
            match ControlPlane::start_local(&self, &bin).await {
                Ok(cp) => return Ok(cp),
                Err(StartError::PortInUse(e)) => last = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last.unwrap())
    }
}

enum StartError {
    PortInUse(anyhow::Error),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for StartError {
    fn from(e: E) -> Self {
        StartError::Other(e.into())
    }
}

fn check_openssl() -> anyhow::Result<()> {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!("`openssl` is needed to create the test control plane's certificates and service-account key (apt-get install openssl)"),
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// CA, apiserver serving cert (127.0.0.1/localhost/kubernetes.default.svc)
/// and service-account signing key, all EC P-256 (fast to generate).
fn make_pki(pki: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(pki)?;
    std::fs::write(
        pki.join("openssl.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier = hash\n\
         [v3_server]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
         subjectAltName = IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec![
        "req",
        "-x509",
        "-config",
        "openssl.cnf",
        "-extensions",
        "v3_ca",
    ];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=dynamics-test-ca",
    ]);
    openssl(pki, &a)?;
    let mut a = vec!["req", "-new", "-config", "openssl.cnf"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    openssl(pki, &a)?;
    let serial = format!("0x{}", random_hex(8)?);
    openssl(
        pki,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "3650",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "v3_server",
            "-out",
            "apiserver.crt",
        ],
    )?;
    openssl(
        pki,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(pki, &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

fn kubeconfig_yaml(server: &str, ca: Option<&Path>, user: &str, token: &str) -> String {
    let tls = match ca {
        Some(ca) => format!("certificate-authority: {:?}", ca.display().to_string()),
        None => "insecure-skip-tls-verify: true".to_string(),
    };
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: dynamics-test\n  cluster:\n    server: {server}\n    {tls}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: dynamics-test\n  context:\n    cluster: dynamics-test\n    user: {user}\n    namespace: default\n\
         current-context: dynamics-test\n"
    )
}

enum Mode {
    Local,
    Existing,
}

/// A running (or borrowed, see module docs) Kubernetes control plane.
pub struct ControlPlane {
    mode: Mode,
    server_url: String,
    kubeconfig: PathBuf,
    user_kubeconfig: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    admin_token: Option<String>,
    user_token: Option<String>,
    kubectl_bin: PathBuf,
    /// How kube-apiserver was started (local only), for [`ControlPlane::restart_apiserver`].
    apiserver_cmd: Option<(PathBuf, Vec<String>)>,
    work_dir: PathBuf,
    startup: Duration,
    // Order matters for Drop: children are stopped before the dir is removed.
    children: Mutex<Vec<ManagedChild>>,
    dir: Mutex<Option<tempfile::TempDir>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("kubeconfig", &self.kubeconfig)
            .field("existing", &self.is_existing())
            .finish()
    }
}

impl ControlPlane {
    /// Starts etcd + kube-apiserver + kube-controller-manager with default
    /// options (or attaches to an existing cluster, see module docs) and waits
    /// until `/readyz` is ok.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        Builder::default().start().await
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// One control plane shared by all tests of this test binary (started on
    /// first use, stopped when the test process exits). Much cheaper than one
    /// per test; isolate tests with [`ControlPlane::create_namespace`]. Create
    /// a `kube_client()` per test (a client is tied to the tokio runtime that
    /// created it, and each `#[tokio::test]` has its own runtime).
    pub async fn shared() -> anyhow::Result<&'static ControlPlane> {
        static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();
        extern "C" fn stop_shared() {
            if let Some(cp) = SHARED.get() {
                cp.shutdown();
            }
        }
        SHARED
            .get_or_try_init(|| async {
                let cp = ControlPlane::start().await?;
                process::at_exit(stop_shared);
                Ok(cp)
            })
            .await
    }

    fn existing(kubeconfig: &Path, bin_dir: Option<&Path>) -> anyhow::Result<ControlPlane> {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| {
            format!(
                "reading existing-cluster kubeconfig {}",
                kubeconfig.display()
            )
        })?;
        let ctx_name = kc
            .current_context
            .clone()
            .ok_or_else(|| anyhow!("{}: no current-context", kubeconfig.display()))?;
        let ctx = kc
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .and_then(|c| c.context.clone())
            .ok_or_else(|| anyhow!("{}: context {ctx_name} not found", kubeconfig.display()))?;
        let server_url = kc
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .and_then(|c| c.cluster.as_ref()?.server.clone())
            .ok_or_else(|| {
                anyhow!(
                    "{}: cluster {} has no server",
                    kubeconfig.display(),
                    ctx.cluster
                )
            })?;
        let built = bin_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(default_bin_dir)
            .join("kubectl");
        let kubectl_bin = if is_executable(&built) {
            built
        } else {
            PathBuf::from("kubectl")
        };
        let dir = tempfile::Builder::new()
            .prefix("dynamics-cp-existing-")
            .tempdir()?;
        Ok(ControlPlane {
            mode: Mode::Existing,
            server_url,
            kubeconfig: kubeconfig.to_path_buf(),
            user_kubeconfig: None,
            ca_file: None,
            admin_token: None,
            user_token: None,
            kubectl_bin,
            apiserver_cmd: None,
            work_dir: dir.path().to_path_buf(),
            startup: Duration::ZERO,
            children: Mutex::new(Vec::new()),
            dir: Mutex::new(Some(dir)),
        })
    }

    async fn start_local(opts: &Builder, bin: &Path) -> Result<ControlPlane, StartError> {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new().prefix("dynamics-cp-").tempdir()?;
        let root = dir.path().to_path_buf();
        let pki = root.join("pki");
        make_pki(&pki)?;

        let admin_token = random_hex(16)?;
        let user_token = random_hex(16)?;
        let tokens = root.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{admin_token},{ADMIN_NAME},{ADMIN_NAME},\"system:masters\"\n\
                 {user_token},{USER_NAME},{USER_NAME},\"{USER_GROUP}\"\n"
            ),
        )?;

        let mut cp = ControlPlane {
            mode: Mode::Local,
            server_url: String::new(),
            kubeconfig: root.join("admin.kubeconfig"),
            user_kubeconfig: Some(root.join("user.kubeconfig")),
            ca_file: Some(pki.join("ca.crt")),
            admin_token: Some(admin_token.clone()),
            user_token: Some(user_token.clone()),
            kubectl_bin: bin.join("kubectl"),
            apiserver_cmd: None,
            work_dir: root.clone(),
            startup: Duration::ZERO,
            children: Mutex::new(Vec::new()),
            dir: Mutex::new(Some(dir)),
        };
        if env_flag("DYNAMICS_CONTROLPLANE_KEEP") {
            if let Some(d) = cp.dir.lock().unwrap().take() {
                let kept = d.keep();
                eprintln!("controlplane: keeping {}", kept.display());
            }
        }

        // etcd
        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args: Vec<String> = vec![
            "--name=test".into(),
            format!("--data-dir={}", root.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=test={peer_url}"),
            "--initial-cluster-state=new".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let etcd = ManagedChild::spawn(
            "etcd",
            &bin.join("etcd"),
            &etcd_args,
            &root.join("etcd.log"),
            &[],
        )?;
        cp.children.get_mut().unwrap().push(etcd);
        cp.wait_port(etcd_client, Duration::from_secs(20)).await?;

        // kube-apiserver
        let port = free_port()?;
        cp.server_url = format!("https://127.0.0.1:{port}");
        let mut api_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", pki.join("apiserver.crt").display()),
            format!(
                "--tls-private-key-file={}",
                pki.join("apiserver.key").display()
            ),
            format!("--client-ca-file={}", pki.join("ca.crt").display()),
            format!("--token-auth-file={}", tokens.display()),
            "--anonymous-auth=false".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // The default lease reconciler would try to publish 127.0.0.1 as
            // the endpoint of the "kubernetes" Service, which is rejected.
            "--endpoint-reconciler-type=none".into(),
        ];
        if !opts.controller_manager {
            // Nobody would create the "default" ServiceAccounts Pods need.
            api_args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        api_args.extend(opts.extra_apiserver_args.iter().cloned());
        cp.apiserver_cmd = Some((bin.join("kube-apiserver"), api_args.clone()));
        let api = ManagedChild::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &api_args,
            &root.join("kube-apiserver.log"),
            &[],
        )?;
        cp.children.get_mut().unwrap().push(api);

        std::fs::write(
            &cp.kubeconfig,
            kubeconfig_yaml(
                &cp.server_url,
                cp.ca_file.as_deref(),
                ADMIN_NAME,
                &admin_token,
            ),
        )?;
        std::fs::write(
            cp.user_kubeconfig.as_ref().unwrap(),
            kubeconfig_yaml(
                &cp.server_url,
                cp.ca_file.as_deref(),
                USER_NAME,
                &user_token,
            ),
        )?;

        cp.wait_ready(opts.ready_timeout, t0).await?;

        if opts.controller_manager {
            let kcm_args: Vec<String> = vec![
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                format!("--controllers={}", opts.controllers.join(",")),
                format!(
                    "--service-account-private-key-file={}",
                    pki.join("sa.key").display()
                ),
                format!("--root-ca-file={}", pki.join("ca.crt").display()),
                "--use-service-account-credentials=false".into(),
                "--concurrent-gc-syncs=5".into(),
                "--namespace-sync-period=10s".into(),
            ];
            let kcm = ManagedChild::spawn(
                "kube-controller-manager",
                &bin.join("kube-controller-manager"),
                &kcm_args,
                &root.join("kube-controller-manager.log"),
                &[],
            )?;
            cp.children.get_mut().unwrap().push(kcm);
        }

        cp.startup = t0.elapsed();
        eprintln!(
            "controlplane: kubernetes {} ready at {} in {:.1?} (logs in {})",
            pinned_kube_version(),
            cp.server_url,
            cp.startup,
            root.display()
        );
        Ok(cp)
    }

    /// Error if a child exited; with a log tail. `PortInUse` if it looks like a bind race.
    fn check_children(&self) -> Result<(), StartError> {
        let mut children = self.children.lock().unwrap();
        for c in children.iter_mut() {
            if let Some(status) = c.try_status() {
                let tail = c.log_tail(6000);
                let err = anyhow!(
                    "{} exited during startup ({status}); log {}:\n{tail}",
                    c.name,
                    c.log.display()
                );
                return Err(if tail.contains("address already in use") {
                    StartError::PortInUse(err)
                } else {
                    StartError::Other(err)
                });
            }
        }
        Ok(())
    }

    async fn wait_port(&self, port: u16, timeout: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_children()?;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow!(
                    "timed out waiting for 127.0.0.1:{port}; logs:\n{}",
                    self.logs_tail(4000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self, timeout: Duration, t0: Instant) -> Result<(), StartError> {
        let ca = std::fs::read(self.ca_file.as_ref().unwrap())?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(5))
            .build()?;
        let token = self.admin_token.as_deref().unwrap();
        let deadline = t0 + timeout;
        let mut last: String;
        // /readyz includes etcd, RBAC bootstrap roles and the other post-start
        // hooks; the "default" namespace is created right after by a
        // controller, so wait for it too.
        let mut ready = false;
        loop {
            self.check_children()?;
            let path = if ready {
                "/api/v1/namespaces/default"
            } else {
                "/readyz"
            };
            match http
                .get(format!("{}{path}", self.server_url))
                .bearer_auth(token)
                .send()
                .await
            {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        if ready {
                            return Ok(());
                        }
                        ready = true;
                        continue;
                    }
                    last = format!(
                        "GET {path}: HTTP {status}: {}",
                        body.chars().take(2000).collect::<String>()
                    );
                }
                Err(e) => last = format!("GET {path}: {e}"),
            }
            if Instant::now() > deadline {
                return Err(StartError::Other(anyhow!(
                    "kube-apiserver not ready after {timeout:?} ({last}); logs:\n{}",
                    self.logs_tail(8000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs_tail(&self, max_bytes: u64) -> String {
        let children = self.children.lock().unwrap();
        children
            .iter()
            .map(|c| {
                format!(
                    "==> {} ({}) <==\n{}",
                    c.name,
                    c.log.display(),
                    c.log_tail(max_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Returns an error naming any child process that has exited (with its log
    /// tail). Useful in a failing test to see whether the control plane died.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        match self.check_children() {
            Ok(()) => Ok(()),
            Err(StartError::PortInUse(e) | StartError::Other(e)) => Err(e),
        }
    }

    /// Kills kube-apiserver (SIGKILL: no graceful shutdown, open watches and requests are cut),
    /// starts it again with the same flags on the same port, and waits until it serves again.
    /// etcd keeps the data, so every object, resourceVersion and Lease survives. Local only.
    /// Returns how long the API server was unreachable.
    pub async fn restart_apiserver(&self) -> anyhow::Result<Duration> {
        let (bin, args) = self.apiserver_cmd.clone().ok_or_else(|| {
            anyhow!("restart_apiserver needs a control plane started by the harness")
        })?;
        let t0 = Instant::now();
        let log = {
            let mut children = self.children.lock().unwrap();
            let api = children
                .iter_mut()
                .find(|c| c.name == "kube-apiserver")
                .ok_or_else(|| anyhow!("kube-apiserver is not running"))?;
            process::signal(api.pid(), 9);
            api.reap_by(Instant::now() + Duration::from_secs(5));
            api.log.clone()
        };
        // The listening socket is closed with the process; the same port binds again at once
        // (Go sets SO_REUSEADDR), but retry in case the kernel has not released it yet.
        let mut last = None;
        for _attempt in 0..20 {
            let child = ManagedChild::spawn("kube-apiserver", &bin, &args, &log, &[])?;
            let pid = child.pid();
            {
                let mut children = self.children.lock().unwrap();
                let slot = children
                    .iter_mut()
                    .find(|c| c.name == "kube-apiserver")
                    .expect("the slot of kube-apiserver");
                // The old handle is already reaped; dropping it is a no-op.
                *slot = child;
            }
            match self
                .wait_ready(Duration::from_secs(60), Instant::now())
                .await
            {
                Ok(()) => return Ok(t0.elapsed()),
                Err(StartError::PortInUse(e)) => {
                    last = Some(e);
                    if let Some(c) = self
                        .children
                        .lock()
                        .unwrap()
                        .iter_mut()
                        .find(|c| c.pid() == pid)
                    {
                        c.reap_by(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("kube-apiserver did not come back")))
    }

    /// Stops all child processes (SIGTERM, 5 s grace, SIGKILL, reap) and
    /// removes the temp dir. Idempotent; also done by `Drop`.
    pub fn shutdown(&self) {
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        // Reverse start order, one after the other: controller-manager, then
        // kube-apiserver (its graceful shutdown needs etcd), then etcd.
        for child in children.iter_mut().rev() {
            child.stop(Duration::from_secs(5));
        }
        drop(children);
        drop(self.dir.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// Pids of the child processes (empty for an existing cluster).
    pub fn pids(&self) -> Vec<u32> {
        self.children
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.pid())
            .collect()
    }

    /// True when attached to an existing cluster (`DYNAMICS_E2E_KUBECONFIG`).
    pub fn is_existing(&self) -> bool {
        matches!(self.mode, Mode::Existing)
    }

    /// Admin kubeconfig (user in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Kubeconfig of the unprivileged user [`USER_NAME`] (local only).
    pub fn user_kubeconfig_path(&self) -> Option<&Path> {
        self.user_kubeconfig.as_deref()
    }

    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// CA certificate of the apiserver (local only).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Bearer token of the admin user (local only).
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// Bearer token of the unprivileged user [`USER_NAME`] (local only).
    pub fn user_token(&self) -> Option<&str> {
        self.user_token.as_deref()
    }

    /// Scratch dir of this control plane (logs: `etcd.log`,
    /// `kube-apiserver.log`, `kube-controller-manager.log`).
    pub fn dir(&self) -> &Path {
        &self.work_dir
    }

    /// Time from `start()` to ready.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl_bin
    }

    /// Admin `kube::Client` built from `kubeconfig_path()`. Create one per test
    /// (it belongs to the current tokio runtime).
    pub async fn kube_client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// `kube::Client` authenticating with `token` (e.g. a ServiceAccount token
    /// from the TokenRequest API, or [`Self::user_token`]). Local only.
    pub async fn kube_client_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let path = self
            .work_dir
            .join(format!("token-{}.kubeconfig", random_hex(6)?));
        std::fs::write(
            &path,
            kubeconfig_yaml(
                &self.server_url,
                self.ca_file.as_deref(),
                "token-user",
                token,
            ),
        )?;
        let client = client_from_kubeconfig(&path).await;
        let _ = std::fs::remove_file(&path);
        client
    }

    /// Client of the unprivileged static-token user (local only).
    pub async fn user_client(&self) -> anyhow::Result<kube::Client> {
        let token = self
            .user_token
            .as_deref()
            .ok_or_else(|| anyhow!("no user token on an existing cluster"))?;
        self.kube_client_with_token(token).await
    }

    fn kubectl_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(&self.kubectl_bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        // Keep kubectl's discovery cache out of $HOME (ports change every run).
        cmd.arg("--cache-dir")
            .arg(self.work_dir.join("kubectl-cache"));
        cmd.args(args);
        cmd
    }

    /// Runs kubectl (the built one) against this cluster; blocking.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.kubectl_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.kubectl_bin.display()))
    }

    /// Runs kubectl with `stdin` as its standard input; blocking.
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &[u8]) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.kubectl_bin.display()))?;
        let mut pipe = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || pipe.write_all(&data));
        let out = child.wait_with_output()?;
        writer
            .join()
            .map_err(|_| anyhow!("stdin writer panicked"))??;
        Ok(out)
    }

    /// Runs kubectl; `Ok(stdout)` on exit 0, else an error with stderr.
    pub fn kubectl_ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        check_output(&args, self.kubectl(&args))
    }

    /// Async kubectl (does not block the tokio runtime).
    pub async fn kubectl_async<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let cmd = self.kubectl_command(args);
        Ok(tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .output()
            .await?)
    }

    /// `kubectl apply --server-side -f <path>` (file, dir or URL-less glob as
    /// kubectl accepts). Server-side apply avoids the annotation size limit of
    /// client-side apply for large CRDs.
    pub fn apply_file(&self, path: impl AsRef<Path>) -> anyhow::Result<String> {
        let path = path.as_ref();
        let args: Vec<std::ffi::OsString> = vec![
            "apply".into(),
            "--server-side".into(),
            "--force-conflicts".into(),
            "--field-manager=dynamics-tests".into(),
            "-f".into(),
            path.into(),
        ];
        check_output(&args, self.kubectl(&args))
    }

    /// `kubectl apply --server-side -f -` with `yaml` (one or more documents).
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<String> {
        let args = [
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=dynamics-tests",
            "-f",
            "-",
        ];
        let out = self.kubectl_stdin(args, yaml.as_bytes())?;
        check_output(&args, out)
    }

    /// Waits until the CRD `name` (e.g. `agentdynamics.example.com`) is
    /// Established, i.e. its resources can be served.
    pub async fn wait_crd_established(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let client = self.kube_client().await?;
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
        super::wait::wait_for(
            &format!("CRD {name} to be Established"),
            timeout,
            || async {
                let crd = crds.get_opt(name).await?;
                let established = crd
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await
    }

    /// Creates a namespace `<prefix>-<random>` and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> anyhow::Result<String> {
        use k8s_openapi::api::core::v1::Namespace;
        let name = format!("{prefix}-{}", random_hex(4)?);
        let client = self.kube_client().await?;
        let nss: kube::Api<Namespace> = kube::Api::all(client);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        nss.create(&Default::default(), &ns).await?;
        Ok(name)
    }

    /// Writes to `path` a kubeconfig holding a TokenRequest token of ServiceAccount
    /// `namespace/service_account` (`token_args`, e.g. `--duration=2h`, go to `kubectl create
    /// token`): a process using it authenticates exactly as it does in a pod.
    pub fn service_account_kubeconfig(
        &self,
        service_account: &str,
        namespace: &str,
        token_args: &[&str],
        path: &Path,
    ) -> anyhow::Result<()> {
        let mut args = vec!["create", "token", service_account, "-n", namespace];
        args.extend_from_slice(token_args);
        let token = self
            .kubectl_ok(args)
            .context("TokenRequest for the ServiceAccount")?;
        let ca = self
            .ca_file()
            .context("a local control plane has a CA file")?;
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {:?}\n\
                 users:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: sa\n\
                 current-context: c\n",
                self.server_url(),
                ca.display().to_string(),
                token.trim()
            ),
        )
        .with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn check_output(args: &[impl AsRef<std::ffi::OsStr>], out: Output) -> anyhow::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        bail!(
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
    }
}
