//! The reconcile core: pure decisions, shared by the controller and the file mode.
//!
//! - `pass` walks one pass: what to gather (GET, ledger), then one decision (`plan` inside).
//! - `plan` decides the next step from spec, status and what the remote reported.
//! - `transitions` computes the status before and after each remote call.
//! - `conditions` turns a pass's outcome into kstatus conditions.
//! - `desired` maps the spec to request bodies and hashes.
//! - `ledger` keeps what was bought for each agent, whichever object bought it.
//! - `guard` caps generations per account (credits are money).
//! - `budget` caps the credits spent per hour, day or month, per account or namespace.
//! - `timing` estimates when a running generation ends, so it is looked at then.
//! - `ownership` decides which object owns an agent that several name.
//! - `start` decides when a process that just started first looks at an object.
//! - `reasons` spells the condition reasons once.

pub mod budget;
pub mod conditions;
pub mod desired;
pub mod guard;
pub mod ledger;
pub mod ownership;
pub mod pass;
pub mod plan;
pub mod reasons;
pub mod start;
pub mod timing;
pub mod transitions;

pub use conditions::Health;
pub use plan::{
    plan, Action, Blocker, GenerateCause, Input, Next, Observation, Purchase, RemoteError, Report,
    Settings, Write, CREDITS_PER_GENERATION, MAX_REMOTE_WAIT,
};

#[cfg(test)]
mod pass_tests;
#[cfg(test)]
mod plan_properties;
#[cfg(test)]
mod plan_tests;
