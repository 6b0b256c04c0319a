//! Convergence judged on the simulator's record, the same for every target: an object is
//! converged when its agent has a ready generation bought with the object's current generate
//! inputs and the object's current dynamics block applied. A target's own Ready condition is
//! reported too, but it is not what counts (provider-http's Ready only says its last GET
//! succeeded).

use dynamics_operator::sim::SimAgent;
use serde_json::{json, Value};

/// What one object asks of its agent.
#[derive(Debug, Clone)]
pub struct Expected {
    pub agent_id: String,
    pub image_url: String,
    pub duration: u64,
    pub model_path: String,
    pub model_hash: String,
}

impl Expected {
    pub fn for_object(i: usize) -> Self {
        Expected {
            agent_id: super::agent_id(i),
            image_url: format!("https://example.com/agents/{i}.jpg"),
            duration: 5,
            model_path: format!("https://example.com/agents/{i}/model.bin"),
            model_hash: format!("hash{i}"),
        }
    }

    /// The generate body a target must have sent (the keys the simulator records).
    pub fn generate_inputs(&self) -> Value {
        json!({
            "image_url": self.image_url,
            "duration": self.duration,
            "model": "auto",
            "motion_prompts": ["wave", "nod", "smile"],
        })
    }

    /// The dynamics block a target must have applied (the PUT's `dynamics`).
    pub fn dynamics(&self) -> Value {
        json!({
            "enabled": true,
            "result": {"model_path": self.model_path, "model_hash": self.model_hash},
        })
    }

    /// Whether the simulator's record of the agent satisfies this object.
    pub fn met_by(&self, agent: &SimAgent) -> bool {
        if agent.status.as_deref() != Some("ready") || agent.charged_generations == 0 {
            return false;
        }
        let inputs_match = agent.last_generate_request.as_ref().is_some_and(|req| {
            self.generate_inputs()
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| numbers_equal(req.get(k), v))
        });
        let applied = agent.dynamics.as_ref().is_some_and(|d| {
            d.get("enabled") == Some(&Value::Bool(true))
                && d.get("result") == self.dynamics().get("result")
        });
        inputs_match && applied
    }
}

/// `5` and `5.0` are the same duration.
fn numbers_equal(got: Option<&Value>, want: &Value) -> bool {
    match (got, want) {
        (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Some(a), b) => a == b,
        (None, _) => false,
    }
}
