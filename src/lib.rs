//! dynamics-operator: converge bitHuman agents' dynamics from declarative `AgentDynamics` resources.
//!
//! Layout: `api` talks to the bitHuman Dynamics API, `sim` plays that API for tests and demos,
//! `resource` defines the custom resource, `reconcile` decides (pure, no I/O), `controller` runs
//! the decisions against Kubernetes and `filemode` runs them against a folder of manifests.

pub mod api;
pub mod backoff;
pub mod cli;
pub mod controller;
pub mod executor;
pub mod failpoint;
pub mod filemode;
pub mod import;
pub mod metrics;
pub mod shutdown;
pub mod spend;
pub mod telemetry;

// The pure core and the simulator are crates of their own (the build keeps them apart from the
// clients); their modules are re-exported under the names the rest of the code uses.
pub use dynamics_core::{reconcile, resource};
pub use dynamics_sim as sim;
