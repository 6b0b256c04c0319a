//! The client against the in-process simulator (and, for replies the
//! simulator never sends, against a tiny canned-reply stub): every endpoint,
//! status, error class, reply shape, retry rule and the secret's redaction.
//!
//! The client's contract with the API: [`endpoints`], [`errors`], [`retries`], [`transport`],
//! [`charging`], [`canned`] (replies the simulator never sends) and [`redaction`]. Apart from it,
//! [`sim_control`]: the simulator's own `/_sim/...` control routes. The helpers below are shared.

mod canned;
mod charging;
mod endpoints;
mod errors;
mod redaction;
mod retries;
mod sim_control;
mod transport;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use dynamics_operator::api::{
    ApiError, ApiSecret, BatchResult, CallObserver, ClientConfig, DynamicsClient, DynamicsConfig,
    DynamicsState, Endpoint, GenerateRequest, RemoteStatus, UpdateRequest,
};
use dynamics_operator::sim::{Faults, ScriptedFault, SimConfig, SimHandle};

const SECRET: &str = "s3cr3t-Contract-Value-42";

fn secret() -> ApiSecret {
    ApiSecret::new(format!("{SECRET}\n"))
}

fn config(generation_ms: u64) -> SimConfig {
    SimConfig {
        secret: SECRET.into(),
        generation_time: Duration::from_millis(generation_ms),
        seed: Some(7),
        ..SimConfig::default()
    }
}

fn fast_config(base_url: String) -> ClientConfig {
    ClientConfig {
        base_url,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..ClientConfig::default()
    }
}

fn client(sim: &SimHandle) -> DynamicsClient {
    DynamicsClient::new(fast_config(sim.url())).unwrap()
}

fn gen_req(agent: &str) -> GenerateRequest {
    GenerateRequest {
        agent_id: agent.into(),
        ..Default::default()
    }
}

fn script(faults: &[ScriptedFault]) -> Faults {
    Faults {
        script: faults.iter().copied().collect(),
        ..Faults::default()
    }
}

fn batch(name: &str, url: &str) -> UpdateRequest {
    UpdateRequest {
        dynamics: DynamicsConfig {
            enabled: Some(true),
            batch_results: Some(
                [(
                    name.to_string(),
                    BatchResult {
                        video_url: Some(url.into()),
                        status: Some("success".into()),
                    },
                )]
                .into(),
            ),
            ..Default::default()
        },
        toggle_enabled: Some(true),
    }
}

/// Polls GET until the status is terminal (bounded, so a bug fails instead of hanging).
async fn wait_terminal(c: &DynamicsClient, agent: &str) -> DynamicsState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.get(&secret(), agent).await.unwrap();
        if s.status.as_ref().is_some_and(RemoteStatus::is_terminal) {
            return s;
        }
        assert!(Instant::now() < deadline, "{agent} never finished: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(Endpoint, Option<u16>)>>);

impl CallObserver for Recorder {
    fn observe(&self, endpoint: Endpoint, status: Option<u16>, _elapsed: Duration) {
        self.0.lock().unwrap().push((endpoint, status));
    }
}

impl Recorder {
    fn seen(&self) -> Vec<(Endpoint, Option<u16>)> {
        self.0.lock().unwrap().clone()
    }
}

/// Asserts that nothing printable about an error reveals the secret.
fn assert_redacted(e: &ApiError) {
    for text in [
        format!("{e}"),
        format!("{e:?}"),
        format!("{:#}", anyhow_of(e)),
    ] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }
}

fn anyhow_of(e: &ApiError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x} / {x:?}"));
        src = x.source();
    }
    s
}
