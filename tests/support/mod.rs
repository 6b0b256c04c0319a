//! Shared helpers for integration tests: `mod support;` in a `tests/*.rs` file.
//!
//! * [`controlplane`]: a real etcd + kube-apiserver (+ kube-controller-manager)
//!   built by `tests/controlplane/build.sh`, or an existing cluster.
//! * [`wait`]: polling with timeouts.
//! * [`process`]: child processes that die with the test process.
#![allow(dead_code)]

pub mod controlplane;
pub mod process;
pub mod wait;
