//! What the simulator exposes for assertions: call counters and agent records.
//! Plain serde types, so tests elsewhere can read them from `/_sim/...`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How often one (endpoint, agent, status) combination was answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCount {
    /// "generate", "get" or "update".
    pub endpoint: String,
    pub agent_id: Option<String>,
    /// The status the simulator decided on, also for calls whose connection
    /// was then dropped (see `dropped_connections`).
    pub status: u16,
    pub count: u64,
}

/// Counters since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub calls: Vec<CallCount>,
    pub credits_charged: u64,
    pub credits_remaining: u64,
    /// Generations started by POST /generate (each one charged).
    pub generations_started: u64,
    /// Generations started by a PUT that changed batch_results (not charged).
    #[serde(default)]
    pub regenerations_started: u64,
    /// Generations started while the agent already had one in progress: the
    /// operator should keep this at zero.
    #[serde(default)]
    pub overlapping_generations: u64,
    /// Calls processed but answered by closing the connection.
    #[serde(default)]
    pub dropped_connections: u64,
    /// Generate calls answered from the Idempotency-Key cache.
    #[serde(default)]
    pub idempotent_replays: u64,
    /// Calls answered with an injected 500, 503 or 429.
    #[serde(default)]
    pub injected_faults: u64,
    /// Per account (0 = `SimConfig::secret`, then `SimConfig::accounts` in order).
    #[serde(default)]
    pub accounts: Vec<AccountStats>,
}

/// One account's balance and workers (`GET /_sim/stats`, `accounts`). `running` and `queued`
/// are as of the last call that advanced the simulator's clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStats {
    pub account: usize,
    pub credits_remaining: u64,
    pub credits_charged: u64,
    /// Charged generations started by this account's secrets.
    pub generations_started: u64,
    pub running: usize,
    pub queued: usize,
    /// Time this account's workers waited for the next generation after finishing one, in
    /// total, and how many such waits there were. With a limit of L at once, a caller that
    /// keeps work queued converges in N x generation / L plus this / L.
    #[serde(default)]
    pub worker_idle_ms: u64,
    #[serde(default)]
    pub worker_idle_gaps: u64,
    /// The most calls (any endpoint, any status) that arrived with this account's secrets in
    /// any one-second window since start or the last reset.
    #[serde(default)]
    pub peak_calls_per_second: u64,
}

impl SimStats {
    /// Sum of calls matching the filters (`None` matches anything).
    pub fn count(&self, endpoint: &str, agent: Option<&str>, status: Option<u16>) -> u64 {
        self.calls
            .iter()
            .filter(|c| c.endpoint == endpoint)
            .filter(|c| agent.is_none() || c.agent_id.as_deref() == agent)
            .filter(|c| status.is_none() || Some(c.status) == status)
            .map(|c| c.count)
            .sum()
    }

    /// All calls to an endpoint.
    pub fn total(&self, endpoint: &str) -> u64 {
        self.count(endpoint, None, None)
    }
}

/// The simulator's full record of one agent (`GET /_sim/agents/{id}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimAgent {
    pub agent_id: String,
    /// Known agents are served; unknown ones get 404. Every agent is known
    /// until marked otherwise.
    pub known: bool,
    /// "processing", "generating", "ready", "failed", or none yet.
    pub status: Option<String>,
    pub model_url: Option<String>,
    pub error_message: Option<String>,
    /// The stored `dynamics` block, as merged from PUTs.
    pub dynamics: Option<Value>,
    /// `dynamics.enabled` as stored.
    pub enabled: Option<bool>,
    pub toggle_enabled: Option<bool>,
    /// Generations of any kind (POST and regeneration).
    pub generations: u64,
    /// Generations started by POST (charged).
    pub charged_generations: u64,
    pub gestures: BTreeMap<String, String>,
    /// The body of the last accepted generate request.
    pub last_generate_request: Option<Value>,
    pub updated_at: Option<String>,
    pub fail_next: bool,
    pub refuse_next_regeneration: bool,
    /// Its next accepted generate is answered by closing the connection.
    #[serde(default)]
    pub drop_next_generate_reply: bool,
    /// The agent's own hard modes, if set (else the global ones apply).
    #[serde(default)]
    pub modes: Option<super::config::Modes>,
    /// The account that owns it (the one whose secret first generated it), if any.
    #[serde(default)]
    pub account: Option<usize>,
}

/// How the simulator answered an accepted generate call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationReply {
    /// Answered at once.
    Ok,
    /// Processed, then the connection was closed without a reply.
    Dropped,
    /// Processed, then the reply was held back (`reply_delay_ms`); the
    /// client may have given up before it came.
    Delayed,
}

/// One generate call the simulator accepted (`GET /_sim/generations`): the
/// test oracle for "never buy the same change twice".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Increases by one per record; not reset by `DELETE /_sim/stats`.
    pub seq: u64,
    pub agent_id: String,
    /// The request body as received (a JSON string of the raw bytes if it
    /// was not JSON, which only a replay can be).
    pub body: Value,
    pub idempotency_key: Option<String>,
    /// Answered from the Idempotency-Key cache: NOT charged again.
    pub replayed: bool,
    pub reply: GenerationReply,
}

impl GenerationRecord {
    /// Whether this call was charged (it was not an Idempotency-Key replay).
    pub fn is_charged(&self) -> bool {
        !self.replayed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_filters_combine() {
        let c = |e: &str, a: Option<&str>, s, n| CallCount {
            endpoint: e.into(),
            agent_id: a.map(String::from),
            status: s,
            count: n,
        };
        let stats = SimStats {
            calls: vec![
                c("get", Some("a"), 200, 3),
                c("get", Some("a"), 500, 2),
                c("get", Some("b"), 200, 1),
                c("generate", None, 400, 1),
            ],
            ..Default::default()
        };
        assert_eq!(stats.total("get"), 6);
        assert_eq!(stats.count("get", Some("a"), None), 5);
        assert_eq!(stats.count("get", None, Some(200)), 4);
        assert_eq!(stats.count("get", Some("b"), Some(500)), 0);
        assert_eq!(stats.count("generate", None, Some(400)), 1);
        assert_eq!(stats.total("update"), 0);
    }

    #[test]
    fn generation_record_wire_format() {
        let r: GenerationRecord = serde_json::from_str(
            r#"{"seq":3,"agent_id":"a","body":{"agent_id":"a"},"idempotency_key":null,"replayed":false,"reply":"delayed"}"#,
        )
        .unwrap();
        assert_eq!(r.reply, GenerationReply::Delayed);
        assert_eq!(r.idempotency_key, None);
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["reply"], "delayed");
        assert_eq!(back["idempotency_key"], Value::Null);
        let replay = GenerationRecord {
            replayed: true,
            ..r.clone()
        };
        assert!(r.is_charged());
        assert!(!replay.is_charged());
    }
}
