//! Faults on request: the fault dice rolled for each `/v1` call (500, 503 and 429 with
//! Retry-After, connections dropped after processing), a scripted sequence first.

use rand::Rng;

use super::{Engine, Reply};
use crate::config::ScriptedFault;

/// What the fault dice decided for one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FaultSchedule {
    /// Answer with this instead of processing the call.
    pub replace: Option<Reply>,
    /// Close the connection after processing.
    pub drop: bool,
}

impl Engine {
    /// Rolls the fault dice for one `/v1` call; the script goes first.
    pub fn roll_faults(&mut self, agent: Option<&str>) -> FaultSchedule {
        let retry = self
            .modes_for(agent)
            .retry_after_header
            .clone()
            .or_else(|| self.cfg.faults.retry_after_header.clone())
            .unwrap_or_else(|| self.cfg.faults.retry_after_secs.to_string());
        let injected = |status: u16| {
            let (error, code, details) = match status {
                500 => (
                    "Internal server error",
                    "INTERNAL_ERROR",
                    "simulated failure",
                ),
                503 => (
                    "Service unavailable",
                    "SERVICE_UNAVAILABLE",
                    "all dynamics workers are busy (simulated)",
                ),
                _ => (
                    "Too many requests",
                    "RATE_LIMITED",
                    "rate limit exceeded (simulated)",
                ),
            };
            let mut r = Reply::error(status, agent, error, code, details.to_string());
            if status != 500 {
                r.retry_after = Some(retry.clone());
            }
            r
        };
        let mut plan = FaultSchedule::default();
        if let Some(f) = self.cfg.faults.script.pop_front() {
            match f {
                ScriptedFault::Internal => plan.replace = Some(injected(500)),
                ScriptedFault::Unavailable => plan.replace = Some(injected(503)),
                ScriptedFault::RateLimited => plan.replace = Some(injected(429)),
                ScriptedFault::Drop => plan.drop = true,
                ScriptedFault::Pass => {}
            }
        } else {
            let f = self.cfg.faults.clone();
            if self.roll(f.fail_rate_500) {
                plan.replace = Some(injected(500));
            } else if self.roll(f.fail_rate_503) {
                plan.replace = Some(injected(503));
            } else if self.roll(f.rate_limit_rate) {
                plan.replace = Some(injected(429));
            }
            plan.drop = self.roll(f.drop_rate);
        }
        if plan.replace.is_some() {
            self.counters.injected_faults += 1;
        }
        if plan.drop {
            self.counters.dropped_connections += 1;
        }
        plan
    }

    /// Only draws from the RNG for non-zero rates, so a seeded run stays
    /// reproducible when unrelated knobs are off.
    fn roll(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.random::<f64>() < rate
    }
}
