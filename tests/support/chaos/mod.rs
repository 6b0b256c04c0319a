//! Crash tests and the chaos campaign: operator processes that die on purpose, the simulator's
//! record of every generate call it charged, and the campaign itself.
//!
//! Included with `#[path]` by `tests/crash_windows.rs`, `tests/chaos.rs` and
//! `benches/chaos.rs` (each of which also has `mod support;`).
//!
//! The campaign (see [`run_campaign`]): a real control plane, the simulator (Idempotency-Key
//! honouring off, so a resent generate call is charged again), two operator replicas with leader
//! election, SIGKILLed at seeded random moments and stopped by probabilistic failpoints,
//! kube-apiserver restarted, simulator faults on about 30% of calls, hard simulator modes on some
//! agents, unique edits, deletions and re-creations. Its oracle: no key charged twice, every
//! object ends converged or Stalled with a documented reason, and an idle window after in which
//! nothing is sent to the simulator or written to the API server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use dynamics_operator::failpoint;
use dynamics_operator::resource::AgentDynamics;
use dynamics_operator::sim::{self, Faults, GenerationRecord, Modes, SimConfig, SimHandle};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::support::controlplane::ControlPlane;
use crate::support::operator::ready_reason;
use crate::support::process::ManagedChild;

pub const SECRET: &str = "chaos-operator-secret";
pub const CRD_NAME: &str = crate::support::operator::CRD_NAME;
/// How far the second replica's clock is off, in seconds.
pub const CLOCK_SKEW: &str = "-3600";

/// Exit code of an operator stopped by a failpoint, and the failpoints: the library's own.
pub const FAILPOINT_EXIT: i32 = failpoint::EXIT_CODE;
pub const FAILPOINTS: [&str; 3] = [
    failpoint::AFTER_MARKER_SAVED,
    failpoint::AFTER_GENERATE_SENT,
    failpoint::AFTER_GENERATE_REPLY,
];
/// Stalled reasons the operator documents that a campaign may end with (`reconcile::reasons`).
pub fn documented_stalled() -> Vec<&'static str> {
    use dynamics_operator::reconcile::reasons;
    // The stalls of credit safety and nothing else: a campaign has one account with credits
    // enough, one object per agent at a time and valid specs, so Conflict, Unauthorized,
    // InsufficientCredits and the other refusals would each be a bug.
    let out = vec![
        reasons::GENERATION_NOT_VISIBLE,
        reasons::GENERATION_OUTCOME_UNKNOWN,
        reasons::REMOTE_DYNAMICS_MISSING,
        reasons::GENERATION_FAILED,
        reasons::INPUTS_ALREADY_BOUGHT,
        reasons::STATE_OUTDATED,
        reasons::REMOTE_STATUS_UNKNOWN,
    ];
    out
}

/// Share of objects that must end converged (the rest: a stall on the list above).
pub const CONVERGED_AT_LEAST: f64 = 0.8;

mod campaign;
mod objects;
mod operators;
mod record;

// Each suite that includes this folder uses part of it.
#[allow(unused_imports)]
pub use campaign::*;
#[allow(unused_imports)]
pub use objects::*;
#[allow(unused_imports)]
pub use operators::*;
#[allow(unused_imports)]
pub use record::*;
