//! dynamics-operator: converge bitHuman agents' dynamics from declarative `AgentDynamics` resources.
//!
//! Every module, in the order a pass meets them:
//! - `resource` and `reconcile` (the `dynamics-core` crate): the custom resources and the pure
//!   decisions: what to do next, the status before and after it, when to look again.
//! - `api`: the Dynamics API client (retries of idempotent calls, the rate limit per account,
//!   classified errors; the secret never printed). `backoff`: the jitter on every wait.
//! - `executor`: one pass with its I/O (GET, ledger, at most one POST or PUT, conditional
//!   status write), shared by both front ends through the `StatusSink` trait.
//! - the front ends: `controller` (Kubernetes: watches, queue, status subresource, Events) and
//!   `filemode` (`plan`/`apply` on a folder of manifests, a state file).
//! - the commands around them: `spend` (the report of every credit), `import` (adopting agents
//!   that exist), `cli` (every flag; `main.rs` only dispatches).
//! - process plumbing: `metrics` (Prometheus and health endpoints), `telemetry` (logs),
//!   `shutdown` (signals and the stop deadline), `failpoint` (crash points for the tests).
//! - `sim` (the `dynamics-sim` crate): the simulator that plays the API for tests and demos.

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
