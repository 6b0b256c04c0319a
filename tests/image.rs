//! The OCI image of deploy/image/build.sh, built without a container daemon from the release
//! binary (`cargo build --release --locked --bin dynamics-operator`, which tests/run.sh builds
//! once per run):
//!
//! * reproducible: two builds from the same binary and packages are the same bytes and digest;
//! * valid: crane (go-containerregistry, built by tests/tools/build.sh) checks every layer and
//!   the config against their digests;
//! * what it says: OCI layout with a containerd image name, non-root user 65532, the binary as
//!   entrypoint, no shell;
//! * scannable: a dpkg record of each Debian package (/var/lib/dpkg/status.d/) and
//!   /etc/os-release, and the SBOM of deploy/release/sbom.sh (syft, built by
//!   tests/tools/build.sh) lists those packages and every crate of Cargo.lock at its version;
//! * it runs: its root filesystem unpacked, the entrypoint runs chrooted as uid 65532 (needs
//!   root to chroot, as CI runs): `--version`, `crd`, and `run` against the test API server and
//!   the simulator, converging an object.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use dynamics_operator::sim::{self, SimConfig};
use kube::Api;
use serde_json::Value as Json;
use support::controlplane::ControlPlane;
use support::operator::{is_ready, run_args, wait_object};
use support::process::ManagedChild;
use support::tools::{run_ok, target_dir, tool, ROOT};

fn release_binary() -> PathBuf {
    let binary = target_dir().join("release/dynamics-operator");
    assert!(
        binary.is_file(),
        "no release binary at {}: cargo build --release --locked --bin dynamics-operator (tests/run.sh does)",
        binary.display()
    );
    binary
}

/// deploy/image/build.sh OUT, returning the manifest digest it prints.
fn build_image(out: &Path) -> String {
    let stdout = run_ok(
        Path::new("/usr/bin/env"),
        [
            format!("BINARY={}", release_binary().display()),
            Path::new(ROOT)
                .join("deploy/image/build.sh")
                .to_string_lossy()
                .into_owned(),
            out.to_string_lossy().into_owned(),
        ],
    );
    stdout.trim().to_string()
}

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn sha256(path: &Path) -> String {
    run_ok(Path::new("sha256sum"), [path])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn am_root() -> bool {
    run_ok(Path::new("id"), ["-u"]).trim() == "0"
}

/// `chroot --userspec=65532:65532 ROOTFS /dynamics-operator ARGS...`
fn in_image(rootfs: &Path, args: &[&str]) -> std::process::Output {
    Command::new("/usr/sbin/chroot")
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .arg("/dynamics-operator")
        .args(args)
        .env_clear()
        .output()
        .expect("chroot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_reproducible_valid_and_runs_as_non_root() {
    assert!(
        am_root(),
        "this test unpacks the image and chroots into it as uid 65532, which needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    let digest = build_image(&a);
    assert_eq!(build_image(&b), digest, "same input, same manifest digest");
    assert_eq!(sha256(&a), sha256(&b), "same input, same archive bytes");
    let out = run_ok(
        &tool("crane"),
        ["validate", "--tarball", a.to_str().unwrap()],
    );
    assert!(out.contains("PASS"), "{out}");

    // The layout.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run_ok(
        Path::new("tar"),
        ["-xf", a.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], digest.as_str());
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "ghcr.io/bithuman/dynamics-operator:dev"
    );
    let manifest = read_json(&blob(&layout, &digest));
    assert_eq!(
        sha256(&blob(&layout, &digest)),
        digest.strip_prefix("sha256:").unwrap()
    );
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/dynamics-operator"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));

    // The root filesystem, layer over layer.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        run_ok(
            Path::new("tar"),
            [
                "--numeric-owner",
                "-xzf",
                blob(&layout, layer["digest"].as_str().unwrap())
                    .to_str()
                    .unwrap(),
                "-C",
                rootfs.to_str().unwrap(),
            ],
        );
    }
    assert_eq!(
        sha256(&rootfs.join("dynamics-operator")),
        sha256(&release_binary()),
        "the image carries the release binary"
    );
    for shell in [
        "bin/sh",
        "bin/bash",
        "usr/bin/sh",
        "usr/bin/bash",
        "bin/dash",
    ] {
        assert!(!rootfs.join(shell).exists(), "the image has /{shell}");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert!(
        std::fs::metadata(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .unwrap()
            .len()
            > 100_000,
        "a CA bundle"
    );

    // What scanners read: a dpkg record per package, and the distribution.
    let packages = dpkg_records(&rootfs);
    let names: Vec<&str> = packages.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["ca-certificates", "libc6", "libgcc-s1"],
        "dpkg records"
    );
    for name in packages.keys() {
        let md5sums =
            std::fs::read_to_string(rootfs.join(format!("var/lib/dpkg/status.d/{name}.md5sums")))
                .unwrap();
        assert!(
            md5sums.lines().count() > 0,
            "{name}.md5sums lists the package's files"
        );
    }
    let os_release = std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap();
    assert!(os_release.lines().any(|l| l == "ID=debian"), "{os_release}");

    // The SBOM of the image (deploy/release/sbom.sh, syft): its Debian packages at the versions
    // the image records, and the crates of Cargo.lock at their locked versions.
    let sbom_file = dir.path().join("sbom.cdx.json");
    run_ok(
        Path::new("/usr/bin/env"),
        [
            format!("SYFT={}", tool("syft").display()),
            Path::new(ROOT)
                .join("deploy/release/sbom.sh")
                .to_string_lossy()
                .into_owned(),
            a.to_string_lossy().into_owned(),
            sbom_file.to_string_lossy().into_owned(),
        ],
    );
    check_sbom(&read_json(&sbom_file), &digest, &packages);

    // The entrypoint, as uid 65532.
    let version = in_image(&rootfs, &["--version"]);
    let version_text = String::from_utf8_lossy(&version.stdout);
    assert!(version.status.success(), "{version:?}");
    assert!(
        version_text.starts_with(&format!(
            "dynamics-operator {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version_text}"
    );
    let crd = in_image(&rootfs, &["crd"]);
    assert!(crd.status.success(), "{crd:?}");
    assert_eq!(
        String::from_utf8(crd.stdout).unwrap(),
        std::fs::read_to_string(Path::new(ROOT).join("crds/agentdynamics.yaml")).unwrap()
    );

    // `run` against the test API server: a kubeconfig and the CA inside the image's /tmp.
    let cp = support::operator::control_plane().await;
    run_in_image(cp, &rootfs).await;
}

/// Package name to its dpkg record (`Field: value` lines) in `/var/lib/dpkg/status.d/`.
fn dpkg_records(rootfs: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let dir = rootfs.join("var/lib/dpkg/status.d");
    let mut records = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md5sums") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for field in ["Package", "Version", "Architecture", "Maintainer"] {
            assert!(fields.contains_key(field), "{field} in {}", path.display());
        }
        assert_eq!(
            fields["Status"],
            "install ok installed",
            "{}",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(fields["Package"], name, "{}", path.display());
        records.insert(name, fields);
    }
    records
}

/// (name, version) of every package in Cargo.lock.
/// The crates of Cargo.lock that come from a registry, at their locked versions: the
/// workspace's own crates (no `source`) are the operator itself, which the SBOM names as its
/// subject's contents, not as packages with a purl.
fn locked_crates() -> Vec<(String, String)> {
    let lock = std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock")).unwrap();
    lock.split("[[package]]")
        .skip(1)
        .filter(|block| block.lines().any(|l| l.starts_with("source = ")))
        .filter_map(|block| {
            let field = |key: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim_matches('"').to_string())
            };
            Some((field("name = ")?, field("version = ")?))
        })
        .collect()
}

fn check_sbom(sbom: &Json, digest: &str, packages: &BTreeMap<String, BTreeMap<String, String>>) {
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let subject = &sbom["metadata"]["component"];
    assert_eq!(subject["type"], "container", "{subject}");
    assert_eq!(subject["version"], digest, "the SBOM is about this image");
    let components = sbom["components"].as_array().unwrap();
    let purls: BTreeSet<&str> = components
        .iter()
        .filter_map(|c| c["purl"].as_str())
        .collect();
    let with_prefix = |prefix: &str| -> Vec<&str> {
        purls
            .iter()
            .copied()
            .filter(|p| p.starts_with(prefix))
            .collect()
    };

    // Debian: exactly the image's packages, each at its recorded version and architecture.
    let debs = with_prefix("pkg:deb/");
    assert_eq!(debs.len(), packages.len(), "{debs:?}");
    for (name, fields) in packages {
        let c = components
            .iter()
            .find(|c| {
                c["name"] == name.as_str()
                    && c["purl"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("pkg:deb/debian/"))
            })
            .unwrap_or_else(|| panic!("no Debian package {name} in the SBOM: {debs:?}"));
        assert_eq!(c["version"], fields["Version"].as_str(), "{name}: {c}");
        let purl = c["purl"].as_str().unwrap();
        assert!(
            purl.contains(&format!("arch={}", fields["Architecture"])),
            "{purl}"
        );
        assert!(purl.contains("distro=debian-"), "{purl}");
    }

    // Cargo.lock: every crate at its locked version, as a cargo purl (the operator's own crate,
    // which is no registry package, has none).
    let crates = locked_crates();
    let kube = crates
        .iter()
        .find(|(n, _)| n == "kube")
        .expect("kube in Cargo.lock");
    assert!(
        purls.contains(format!("pkg:cargo/kube@{}", kube.1).as_str()),
        "kube {} in the SBOM",
        kube.1
    );
    let listed: BTreeSet<(&str, &str)> = components
        .iter()
        .filter(|c| {
            c["purl"]
                .as_str()
                .is_some_and(|p| p.starts_with("pkg:cargo/"))
        })
        .map(|c| (c["name"].as_str().unwrap(), c["version"].as_str().unwrap()))
        .collect();
    let locked: BTreeSet<(&str, &str)> = crates
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(listed, locked, "the SBOM's crates are those of Cargo.lock");
    assert_eq!(
        with_prefix("pkg:cargo/").len(),
        locked.len(),
        "one purl per locked crate"
    );

    // A well-formed graph: every reference names a component or the image.
    let mut refs: BTreeSet<&str> = components
        .iter()
        .filter_map(|c| c["bom-ref"].as_str())
        .collect();
    refs.insert(subject["bom-ref"].as_str().unwrap());
    for dep in sbom["dependencies"].as_array().unwrap() {
        let named =
            std::iter::once(&dep["ref"]).chain(dep["dependsOn"].as_array().into_iter().flatten());
        for r in named {
            assert!(refs.contains(r.as_str().unwrap()), "dangling reference {r}");
        }
    }
}

async fn run_in_image(cp: &'static ControlPlane, rootfs: &Path) {
    let ns = cp.create_namespace("image").await.unwrap();
    let sim = sim::start(SimConfig {
        secret: "image-test-secret".into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let kube_dir = rootfs.join("tmp/kube");
    std::fs::create_dir_all(&kube_dir).unwrap();
    std::fs::copy(cp.ca_file().unwrap(), kube_dir.join("ca.crt")).unwrap();
    std::fs::write(
        kube_dir.join("config"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: /tmp/kube/ca.crt\n\
             users:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            cp.server_url(),
            cp.admin_token().expect("a local control plane")
        ),
    )
    .unwrap();
    let mut args = vec![
        "--userspec=65532:65532".to_string(),
        rootfs.to_string_lossy().into_owned(),
        "/dynamics-operator".into(),
    ];
    args.extend(run_args(&ns, &sim.url()));
    let log = rootfs.parent().unwrap().join("operator.log");
    let operator = ManagedChild::spawn(
        "operator-in-image",
        Path::new("/usr/sbin/chroot"),
        &args,
        &log,
        &[
            ("KUBECONFIG", "/tmp/kube/config"),
            ("BITHUMAN_API_SECRET", "image-test-secret"),
            ("LOG_FORMAT", "json"),
        ],
    )
    .expect("start the image's entrypoint");
    cp.kubectl_stdin(
        ["apply", "-n", &ns, "-f", "-"],
        support::operator::manifest("image-agent", "IMAGE00001", "").as_bytes(),
    )
    .unwrap();
    let api: Api<dynamics_operator::resource::AgentDynamics> =
        Api::namespaced(cp.kube_client().await.unwrap(), &ns);
    wait_object(&api, "image-agent", "Ready", &operator, is_ready).await;
    let log_text = operator.log_tail(100_000);
    assert!(
        log_text.lines().any(|l| l.starts_with('{')),
        "json logs: {log_text}"
    );
}
