//! Shared helpers for integration tests: `mod support;` in a `tests/*.rs` file,
//! `#[path = "../support/mod.rs"] mod support;` in the `main.rs` of a directory suite
//! (`tests/e2e/`, `tests/deploy/`). A helper that a second suite needs moves here.
//!
//! * [`controlplane`]: a real etcd + kube-apiserver (+ kube-controller-manager)
//!   built by `tests/controlplane/build.sh`, or an existing cluster.
//! * [`wait`]: polling with timeouts.
//! * [`process`]: child processes that die with the test process.
//! * [`operator`]: the operator binary against the control plane and the simulator
//!   (`Env`, one namespace each), the CRD, the metrics address in the operator's log.
//! * [`node`]: a one-node cluster (kubelet, containerd, kube-proxy, a registry) in namespaces of
//!   its own, by tests/node/cluster.sh.
//! * [`tools`]: the Go tools of tests/tools/build.sh (helm, crane, promtool, kstatus, argocd-lua,
//!   syft, cosign), the harness's kubectl and its kustomize.
//!
//! `chaos.rs` (the chaos campaign) is not a module here: tests/chaos.rs, tests/crash_windows.rs
//! and benches/chaos.rs include it by `#[path]` next to this one.
#![allow(dead_code)]

pub mod controlplane;
pub mod node;
pub mod operator;
pub use dynamics_test_process as process;
pub mod tools;
pub mod wait;
