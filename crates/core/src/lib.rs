//! The pure core of dynamics-operator: what the operator decides, with nothing it does.
//!
//! - `resource`: the `AgentDynamics` and `DynamicsLedger` custom resources and their admission
//!   rules.
//! - `wire`: the Dynamics API's request and reply types and how its failures are classified.
//! - `reconcile`: the decisions, as pure functions of their inputs (the spec, the stored
//!   status, what GET showed, the ledger record, the time): which call to make next, the status
//!   to write before and after it, and when to look again.
//!
//! The build keeps it pure: this crate's manifest has no Kubernetes client, async runtime or
//! HTTP client, and its clippy configuration refuses the clock. The executor (in the
//! `dynamics-operator` crate) gathers the inputs, asks, and acts.

pub mod backoff;
pub mod reconcile;
pub mod resource;
pub mod wire;
