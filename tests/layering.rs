//! The layering is a rule the build keeps. The reconcile core and the resource types
//! (`crates/core`) decide from their inputs alone: their crate cannot reach the Kubernetes
//! client, the async runtime or HTTP (it does not depend on them), nor the clock (its
//! `clippy.toml`, which CI's clippy run applies). The simulator (`crates/sim`) cannot use the
//! client it stands in for. These tests check the resolved dependency trees, so that a
//! dependency added later, directly or through another crate, fails here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The packages `package` depends on to build (not its tests), by name.
fn dependency_tree(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["-p", package])
        .current_dir(ROOT)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Packages that do I/O or talk to a server: none of them may be in a pure tree.
const CLIENTS: &[(&str, &str)] = &[
    ("tokio", "the async runtime (I/O, timers)"),
    ("mio", "I/O"),
    ("reqwest", "HTTP"),
    ("hyper", "HTTP"),
    ("kube-client", "the Kubernetes client"),
    ("kube-runtime", "the controller runtime"),
];

#[test]
fn the_core_depends_on_no_client_runtime_or_network() {
    let tree = dependency_tree("dynamics-core");
    // The tree was read: the core's own dependencies are in it.
    for needed in ["kube-core", "kube-derive", "serde", "jiff"] {
        assert!(tree.contains(needed), "{needed} missing from {tree:?}");
    }
    let found: Vec<String> = CLIENTS
        .iter()
        .filter(|(name, _)| tree.contains(*name))
        .map(|(name, what)| format!("{name} ({what})"))
        .collect();
    assert!(found.is_empty(), "the core depends on {found:?}");
}

#[test]
fn the_simulator_shares_nothing_with_the_operator_or_its_clients() {
    let tree = dependency_tree("dynamics-sim");
    assert!(
        tree.contains("axum"),
        "the simulator's tree was read: {tree:?}"
    );
    let found: Vec<&String> = tree
        .iter()
        .filter(|name| {
            name.starts_with("dynamics-") && *name != "dynamics-sim"
                || name.starts_with("kube")
                || *name == "reqwest"
        })
        .collect();
    assert!(found.is_empty(), "the simulator depends on {found:?}");
}

#[test]
fn the_core_reads_no_clock() {
    // What the core's clippy configuration refuses; clippy runs with `-D warnings` in CI.
    let config = std::fs::read_to_string(Path::new(ROOT).join("crates/core/clippy.toml"))
        .expect("crates/core/clippy.toml");
    for clock in [
        "jiff::Timestamp::now",
        "std::time::Instant::now",
        "std::time::SystemTime::now",
    ] {
        assert!(
            config.contains(&format!("path = \"{clock}\"")),
            "{clock} is not refused"
        );
    }
}

#[test]
fn every_crate_but_the_test_harness_forbids_unsafe_code() {
    let manifest = |path: &str| {
        std::fs::read_to_string(Path::new(ROOT).join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let root = manifest("Cargo.toml");
    assert!(
        root.contains("[workspace.lints.rust]\nunsafe_code = \"forbid\""),
        "the workspace forbids unsafe code"
    );
    for path in [
        "Cargo.toml",
        "crates/core/Cargo.toml",
        "crates/sim/Cargo.toml",
    ] {
        assert!(
            manifest(path).contains("[lints]\nworkspace = true"),
            "{path} takes the workspace's lints"
        );
    }
}
