//! The operator against a real kube-apiserver (built from source by tests/controlplane/build.sh,
//! or an existing cluster, see tests/support/controlplane.rs) and the project's simulator.
//! Each test has its own namespace, simulator and operator process, so tests run side by side.
//! Assertions go through the simulator's call counters and the objects' status.
//!
//! The harness is [`support::operator::Env`] (shared with the monitoring and health-engine
//! suites); one module per concern:
//!
//! | module            | what it covers                                                      |
//! | ----------------- | ------------------------------------------------------------------- |
//! | [`lifecycle`]     | create, edits, suspend, a quiet converged set                       |
//! | [`deletion`]      | deletion policies: Disable, Orphan, a remote already gone           |
//! | [`errors`]        | remote errors stall without a retry storm; admission refuses input  |
//! | [`restarts`]      | a SIGKILLed operator, leader election handing over                  |
//! | [`api_budget`]    | restarts spread settled objects; pending work first; calls per second |
//! | [`credit_safety`] | the generation guard; credit-safety stalls in `kubectl get`         |
//! | [`ownership`]     | two objects for one agent; the refresh annotation                   |
//! | [`ledger`]        | re-creation, replace, wiped status, two installs, adoption, resolve |
//! | [`secrets`]       | labelled Secrets; a missing Secret holds deletion                   |
//! | [`budgets`]       | a budget reached mid-rollout holds the rest until its period ends   |
//! | [`upgrade`]       | what the last release left in a cluster reads and buys nothing      |

#[path = "../support/mod.rs"]
mod support;

mod api_budget;
mod budgets;
mod credit_safety;
mod deletion;
mod errors;
mod ledger;
mod lifecycle;
mod ownership;
mod restarts;
mod secrets;
mod upgrade;

use std::time::Duration;

use dynamics_operator::sim::SimConfig;

/// Generations that take half a second.
fn fast_sim() -> SimConfig {
    SimConfig {
        generation_time: Duration::from_millis(500),
        ..SimConfig::default()
    }
}
