//! Shared helpers for integration tests: `mod support;` in a `tests/*.rs` file.
//!
//! * [`controlplane`]: a real etcd + kube-apiserver (+ kube-controller-manager)
//!   built by `tests/controlplane/build.sh`, or an existing cluster.
//! * [`wait`]: polling with timeouts.
//! * [`process`]: child processes that die with the test process.
//! * [`operator`]: the operator binary against the control plane and the simulator.
//! * [`tools`]: the Go tools of tests/tools/build.sh (helm, crane, promtool, kstatus, argocd-lua).
#![allow(dead_code)]

pub mod controlplane;
pub mod operator;
pub mod process;
pub mod tools;
pub mod wait;
