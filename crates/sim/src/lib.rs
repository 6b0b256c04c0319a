//! A faithful local stand-in for bitHuman's Dynamics API.
//!
//! Serves `POST /v1/dynamics/generate` and `GET`/`PUT /v1/dynamics/{agent_id}`
//! as documented (api-secret, validation, credits, a per-account concurrency
//! limit, asynchronous generation, both reply shapes), injects faults on
//! request (500, 503 and 429 with Retry-After, latency, connections dropped
//! after processing), and exposes counters and controls under `/_sim/`.
//! Hard modes ([`Modes`], off by default, global or per agent) take away what
//! the real service does not promise: new URLs per generation, jobs visible at
//! once, known status names, Idempotency-Key. `GET /_sim/generations` records
//! every generate call accepted and charged. See docs/simulator.md.
//! Tests start it in-process with [`start`]; `dynamics-operator sim` runs it
//! in the foreground with [`run_foreground`].
//!
//! A crate of its own, so that it cannot use the client it stands in for: it shares no code
//! with the operator, not even the wire types, and reads requests as the real service would.

mod config;
mod conn;
mod engine;
mod http;
mod stats;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing::{info, warn};

pub use config::{
    ConvergedReply, Faults, Modes, ReplyShape, ScriptedFault, SimArgs, SimConfig, UpdateReplyShape,
    DEFAULT_IDLE_TIMEOUT, FIXED_MODEL_URL,
};
pub use stats::{AccountStats, CallCount, GenerationRecord, GenerationReply, SimAgent, SimStats};

use conn::{ConnKiller, KillableListener};
use engine::Engine;
use http::{lock, Shared};

async fn serve(
    listener: TcpListener,
    idle_timeout: Option<Duration>,
    shared: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = http::router(shared).into_make_service_with_connect_info::<ConnKiller>();
    axum::serve(KillableListener::new(listener, idle_timeout), app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Starts a simulator on 127.0.0.1 with an ephemeral port, in this runtime.
pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator")?;
    let addr = listener.local_addr()?;
    let idle_timeout = config.idle_timeout;
    let shared: Shared = Arc::new(Mutex::new(Engine::new(config)));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, idle_timeout, shared.clone(), async move {
        let _ = rx.await;
    }));
    let task = tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            warn!(error = %e, "simulator stopped with an error");
        }
    });
    Ok(SimHandle {
        addr,
        shared,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Runs the simulator until `shutdown` resolves (the command passes Ctrl-C or SIGTERM).
pub async fn run_foreground(
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = args.to_config();
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding the simulator to {}", args.addr))?;
    let addr = listener.local_addr()?;
    info!(
        url = %format!("http://{addr}"),
        generation_time = %humantime::format_duration(config.generation_time),
        max_concurrent = config.max_concurrent,
        accounts = 1 + config.accounts.len(),
        credits = config.credits,
        reply_shape = ?config.reply_shape,
        update_reply_shape = ?config.update_reply_shape,
        honour_idempotency_key = config.honour_idempotency_key,
        modes = ?config.modes,
        idle_timeout = ?config.idle_timeout,
        "Dynamics API simulator listening (controls under /_sim/)"
    );
    let idle_timeout = config.idle_timeout;
    let shared: Shared = Arc::new(Mutex::new(Engine::new(config)));
    serve(listener, idle_timeout, shared, shutdown)
        .await
        .context("serving the simulator")?;
    info!("simulator stopped");
    Ok(())
}

/// A running in-process simulator. Controls act directly on its state (no
/// HTTP) and mirror the `/_sim/` routes. Dropping the handle stops it.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimHandle {
    /// Base URL for `ClientConfig::base_url`, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET /_sim/stats`
    pub fn stats(&self) -> SimStats {
        lock(&self.shared).stats()
    }

    /// `DELETE /_sim/stats`
    pub fn reset_stats(&self) {
        lock(&self.shared).reset_stats();
    }

    /// `PUT /_sim/credits`: every account's balance.
    pub fn set_credits(&self, credits: u64) {
        lock(&self.shared).set_credits(credits);
    }

    /// `PUT /_sim/faults`
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.shared).set_faults(faults);
    }

    /// `GET /_sim/faults`
    pub fn faults(&self) -> Faults {
        lock(&self.shared).faults().clone()
    }

    /// `POST /_sim/agents/{id}/unknown`: later calls for it answer 404.
    pub fn mark_unknown(&self, agent_id: &str) {
        lock(&self.shared).set_known(agent_id, false);
    }

    /// `POST /_sim/agents/{id}/known`
    pub fn mark_known(&self, agent_id: &str) {
        lock(&self.shared).set_known(agent_id, true);
    }

    /// `POST /_sim/agents/{id}/fail-next`: its next generation ends `failed`.
    pub fn fail_next(&self, agent_id: &str) {
        lock(&self.shared).fail_next(agent_id);
    }

    /// `POST /_sim/agents/{id}/refuse-next-regeneration`: its next PUT that
    /// would regenerate answers `regeneration_status: failed` instead.
    pub fn refuse_next_regeneration(&self, agent_id: &str) {
        lock(&self.shared).refuse_next_regeneration(agent_id);
    }

    /// `POST /_sim/agents/{id}/drop-next-generate-reply`: its next accepted
    /// generate is processed and charged, then the connection is closed
    /// without a reply (a lost reply, for one agent only).
    pub fn drop_next_generate_reply(&self, agent_id: &str) {
        lock(&self.shared).drop_next_generate_reply(agent_id);
    }

    /// `GET /_sim/generations`: every generate call accepted (charged or
    /// replayed) since start or the last `reset_stats`.
    pub fn generations(&self) -> Vec<GenerationRecord> {
        lock(&self.shared).generations()
    }

    /// `PUT /_sim/modes`: hard modes for every agent without its own.
    pub fn set_modes(&self, modes: Modes) {
        lock(&self.shared).set_modes(modes);
    }

    /// `PUT /_sim/agents/{id}/modes` (`Some`) or `DELETE` (`None`).
    pub fn set_agent_modes(&self, agent_id: &str, modes: Option<Modes>) {
        lock(&self.shared).set_agent_modes(agent_id, modes);
    }

    /// `GET /_sim/agents/{id}/modes`: the modes in force for the agent.
    pub fn agent_modes(&self, agent_id: &str) -> Modes {
        lock(&self.shared).modes_for(Some(agent_id)).clone()
    }

    /// `GET /_sim/agents/{id}`
    pub fn agent(&self, agent_id: &str) -> SimAgent {
        lock(&self.shared).agent(Instant::now(), agent_id)
    }

    /// `GET /_sim/agents`
    pub fn agents(&self) -> Vec<SimAgent> {
        lock(&self.shared).agents(Instant::now())
    }

    /// Stops accepting, lets open connections finish (bounded), and waits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
