//! dynamics-operator: converge bitHuman agents' dynamics from declarative `AgentDynamics` resources.
//!
//! Layout: `api` talks to the bitHuman Dynamics API, `sim` plays that API for tests and demos,
//! `resource` defines the custom resource, `reconcile` decides (pure, no I/O), `controller` runs
//! the decisions against Kubernetes and `filemode` runs them against a folder of manifests.

#![forbid(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod cli;
pub mod controller;
pub mod executor;
pub mod failpoint;
pub mod filemode;
pub mod import;
pub mod metrics;
pub mod reconcile;
pub mod resource;
pub mod shutdown;
pub mod sim;
pub mod spend;
pub mod telemetry;
