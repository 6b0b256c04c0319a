//! The simulated service's state machine, free of HTTP and of real time: every
//! entry point takes `now`, and generations advance lazily from it, so tests
//! of this module are deterministic and the server needs no background task.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Map, Value};

mod faults;
mod validate;

pub(crate) use validate::agent_hint;
use validate::{validate_generate, validate_update};

use super::config::{
    ConvergedReply, Faults, Modes, ReplyShape, SimConfig, UpdateReplyShape, FIXED_MODEL_URL,
};
use super::stats::{
    AccountStats, CallCount, GenerationRecord, GenerationReply, SimAgent, SimStats,
};

/// An HTTP answer, before it becomes one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    /// The Retry-After header value, verbatim.
    pub retry_after: Option<String>,
    /// The agent the call was about, for stats and logs.
    pub agent: Option<String>,
    /// The `GenerationRecord` this call added, if it was an accepted generate.
    pub generation_seq: Option<u64>,
    /// Close the connection instead of answering, after processing (an agent's
    /// `drop-next-generate-reply`).
    pub drop: bool,
}

impl Reply {
    fn ok(agent: &str, body: Value) -> Self {
        Reply {
            status: 200,
            body,
            retry_after: None,
            agent: Some(agent.to_string()),
            generation_seq: None,
            drop: false,
        }
    }

    fn error(status: u16, agent: Option<&str>, error: &str, code: &str, details: String) -> Self {
        Reply {
            status,
            body: json!({"error": error, "code": code, "details": details}),
            retry_after: None,
            agent: agent.map(String::from),
            generation_seq: None,
            drop: false,
        }
    }

    fn invalid(agent: Option<&str>, details: impl Into<String>) -> Self {
        Reply::error(
            400,
            agent,
            "Invalid request",
            "INVALID_REQUEST",
            details.into(),
        )
    }

    fn not_found(agent: &str) -> Self {
        Reply::error(
            404,
            Some(agent),
            "Agent not found",
            "AGENT_NOT_FOUND",
            format!("no agent with id {agent} for this account"),
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ready,
    Failed,
}

#[derive(Clone, Debug)]
struct Job {
    id: u64,
    agent: String,
    /// The agent's generation number, used in the model URL.
    n: u64,
    /// Until then the job is invisible and not yet queued (`Modes::invisible_ms`).
    visible_at: Instant,
    queued_at: Instant,
    started_at: Instant,
    fails: bool,
    prompts: Vec<String>,
}

#[derive(Clone, Debug)]
struct Agent {
    known: bool,
    generations: u64,
    charged_generations: u64,
    current_job: Option<u64>,
    outcome: Option<Outcome>,
    model_url: Option<String>,
    error_message: Option<String>,
    generated_gestures: BTreeMap<String, String>,
    prompts: Vec<String>,
    dynamics: Option<Map<String, Value>>,
    toggle_enabled: Option<bool>,
    last_generate_request: Option<Value>,
    updated_at: Option<String>,
    fail_next: bool,
    refuse_next_regeneration: bool,
    /// The next accepted generate for it is processed (charged, started) and its connection
    /// closed without a reply.
    drop_next_generate_reply: bool,
    /// Replaces `SimConfig::modes` for this agent.
    modes: Option<Modes>,
    /// The account whose secret first generated it (index into `Engine::accounts`); other
    /// accounts get 404 for it. `None` until its first charged generate.
    account: Option<usize>,
}

/// What GET shows of an agent's generation.
enum Visible {
    /// Never generated (or only invisible jobs so far).
    Nothing,
    InProgress(String),
    Done(Outcome),
}

impl Agent {
    fn new() -> Self {
        Agent {
            known: true,
            generations: 0,
            charged_generations: 0,
            current_job: None,
            outcome: None,
            model_url: None,
            error_message: None,
            generated_gestures: BTreeMap::new(),
            prompts: Vec::new(),
            dynamics: None,
            toggle_enabled: None,
            last_generate_request: None,
            updated_at: None,
            fail_next: false,
            refuse_next_regeneration: false,
            drop_next_generate_reply: false,
            modes: None,
            account: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Counters {
    calls: BTreeMap<(String, Option<String>, u16), u64>,
    credits_charged: u64,
    generations_started: u64,
    regenerations_started: u64,
    overlapping_generations: u64,
    dropped_connections: u64,
    idempotent_replays: u64,
    injected_faults: u64,
}

/// One account: its credits and its own workers (`SimConfig::max_concurrent` of them).
#[derive(Clone, Debug, Default)]
struct Account {
    credits: u64,
    credits_charged: u64,
    generations_started: u64,
    /// Generations holding a worker.
    running: Vec<Job>,
    /// Generations waiting for a worker, first come first served.
    queue: VecDeque<Job>,
    /// Accepted generations not yet visible nor queued (`Modes::invisible_ms`).
    invisible: Vec<Job>,
    /// When each worker freed by a generation and not yet given another was freed, oldest first.
    freed: VecDeque<Instant>,
    /// Time workers waited between one generation and the next: what a caller that keeps the
    /// queue fed never loses (`AccountStats::worker_idle_ms`).
    worker_idle: Duration,
    worker_idle_gaps: u64,
    /// Calls that arrived within the last second, oldest first, and the most ever seen in one
    /// second (`AccountStats::peak_calls_per_second`).
    recent_calls: VecDeque<Instant>,
    peak_calls_per_second: u64,
}

impl Account {
    fn new(credits: u64) -> Self {
        Account {
            credits,
            ..Account::default()
        }
    }

    fn has_free_worker(&self, max: usize) -> bool {
        max == 0 || self.running.len() < max
    }

    /// Hands free workers to queued jobs at `at`.
    fn fill(&mut self, max: usize, at: Instant) {
        while self.has_free_worker(max) {
            let Some(mut job) = self.queue.pop_front() else {
                break;
            };
            job.started_at = at.max(job.queued_at);
            if let Some(freed) = self.freed.pop_front() {
                let gap = job.started_at.saturating_duration_since(freed);
                if !gap.is_zero() {
                    self.worker_idle += gap;
                    self.worker_idle_gaps += 1;
                }
            }
            self.running.push(job);
        }
    }

    /// The next event of this account no later than `now`: a generation that ends (`Ok`,
    /// index into `running`) or an invisible one that shows (`Err`, index into `invisible`).
    fn next_event(
        &self,
        gen_time: Duration,
        now: Instant,
    ) -> Option<(Instant, Result<usize, usize>)> {
        let done = self
            .running
            .iter()
            .enumerate()
            .map(|(i, j)| (j.started_at + gen_time, i))
            .min_by_key(|(t, _)| *t);
        let shown = self
            .invisible
            .iter()
            .enumerate()
            .map(|(i, j)| (j.visible_at, j.id, i))
            .min_by_key(|(t, id, _)| (*t, *id));
        match (done, shown) {
            (Some((t, i)), shown) if t <= now && shown.is_none_or(|(s, _, _)| t <= s) => {
                Some((t, Ok(i)))
            }
            (_, Some((t, _, i))) if t <= now => Some((t, Err(i))),
            _ => None,
        }
    }

    fn holds(&self, job: u64) -> Option<bool> {
        if self.queue.iter().any(|j| j.id == job) {
            return Some(false);
        }
        if self.running.iter().any(|j| j.id == job) {
            return Some(true);
        }
        None
    }
}

pub(crate) struct Engine {
    cfg: SimConfig,
    rng: StdRng,
    /// Account 0 answers to `SimConfig::secret` and `extra_secrets`; account `i + 1` to
    /// `SimConfig::accounts[i]`.
    accounts: Vec<Account>,
    agents: BTreeMap<String, Agent>,
    next_job: u64,
    idempotency: HashMap<String, Reply>,
    counters: Counters,
    generation_log: Vec<GenerationRecord>,
    next_seq: u64,
}

const MODEL_HOST: &str = "https://sim.bithuman.local";

impl Engine {
    pub fn new(cfg: SimConfig) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Engine {
            accounts: (0..=cfg.accounts.len())
                .map(|_| Account::new(cfg.credits))
                .collect(),
            cfg,
            rng,
            agents: BTreeMap::new(),
            next_job: 1,
            idempotency: HashMap::new(),
            counters: Counters::default(),
            generation_log: Vec::new(),
            next_seq: 1,
        }
    }

    /// The hard modes in force for an agent.
    pub fn modes_for(&self, agent: Option<&str>) -> &Modes {
        agent
            .and_then(|a| self.agents.get(a))
            .and_then(|a| a.modes.as_ref())
            .unwrap_or(&self.cfg.modes)
    }

    // ---- time ---------------------------------------------------------

    /// Replays every event up to `now` in time order: generations that
    /// finished (handing freed workers to queued ones at the moment they were
    /// freed) and invisible generations that became visible (joining the
    /// queue at that moment).
    pub fn advance(&mut self, now: Instant) {
        let gen_time = self.cfg.generation_time;
        let max = self.cfg.max_concurrent;
        // Accounts share no workers, so each one replays its own events.
        for a in 0..self.accounts.len() {
            while let Some((at, event)) = self.accounts[a].next_event(gen_time, now) {
                let account = &mut self.accounts[a];
                match event {
                    Ok(i) => {
                        let job = account.running.swap_remove(i);
                        if max > 0 {
                            account.freed.push_back(at);
                        }
                        self.complete(job);
                        self.accounts[a].fill(max, at);
                    }
                    Err(i) => {
                        let mut job = account.invisible.remove(i);
                        job.queued_at = at;
                        job.started_at = at;
                        account.queue.push_back(job);
                        account.fill(max, at);
                    }
                }
            }
        }
    }

    fn complete(&mut self, job: Job) {
        let fixed = self.modes_for(Some(&job.agent)).fixed_model_url;
        let Some(agent) = self.agents.get_mut(&job.agent) else {
            return;
        };
        // A newer generation for the same agent superseded this one: it used
        // a worker, but its result is discarded.
        if agent.current_job != Some(job.id) {
            return;
        }
        agent.current_job = None;
        if job.fails {
            agent.outcome = Some(Outcome::Failed);
            agent.error_message = Some(format!("dynamics generation {} failed (simulated)", job.n));
        } else {
            agent.outcome = Some(Outcome::Ready);
            agent.error_message = None;
            // The real service's URLs need not change between generations;
            // by default they do here, which makes resends easy to see.
            agent.model_url = Some(if fixed {
                FIXED_MODEL_URL.to_string()
            } else {
                format!("{MODEL_HOST}/models/{}/{}.bin", job.agent, job.n)
            });
            agent.generated_gestures = job
                .prompts
                .iter()
                .map(|p| {
                    let url = if fixed {
                        format!("{MODEL_HOST}/videos/{}/{p}.mp4", job.agent)
                    } else {
                        format!("{MODEL_HOST}/videos/{}/{}/{p}.mp4", job.agent, job.n)
                    };
                    (p.clone(), url)
                })
                .collect();
        }
    }

    /// Queues a generation for `agent`; returns whether one was already in
    /// progress (which the stats count as overlapping).
    fn start_generation(
        &mut self,
        account: usize,
        agent_id: &str,
        now: Instant,
        invisible: Duration,
    ) -> bool {
        let fail_rate = self.cfg.faults.fail_generation_rate;
        let random_fail = fail_rate > 0.0 && self.rng.random::<f64>() < fail_rate;
        let id = self.next_job;
        self.next_job += 1;
        let agent = self
            .agents
            .entry(agent_id.to_string())
            .or_insert_with(Agent::new);
        let overlapping = agent.current_job.is_some();
        agent.generations += 1;
        agent.current_job = Some(id);
        let fails = std::mem::take(&mut agent.fail_next) || random_fail;
        let prompts = if agent.prompts.is_empty() {
            self.cfg.default_prompts.clone()
        } else {
            agent.prompts.clone()
        };
        let job = Job {
            id,
            agent: agent_id.to_string(),
            n: agent.generations,
            visible_at: now.checked_add(invisible).unwrap_or(now),
            queued_at: now,
            started_at: now,
            fails,
            prompts,
        };
        if overlapping {
            self.counters.overlapping_generations += 1;
        }
        let max = self.cfg.max_concurrent;
        let pool = &mut self.accounts[account];
        if job.visible_at > now {
            pool.invisible.push(job);
        } else {
            pool.queue.push_back(job);
            pool.fill(max, now);
        }
        overlapping
    }

    /// The agent's generation as GET shows it, under the agent's modes.
    fn visible(&self, agent_id: &str, agent: &Agent) -> Visible {
        let modes = self.modes_for(Some(agent_id));
        if let Some(id) = agent.current_job {
            match self.job_state(agent, id) {
                Some(false) => {
                    let s = modes.waiting_status.as_deref().unwrap_or("processing");
                    return Visible::InProgress(s.to_string());
                }
                Some(true) => {
                    let s = modes.running_status.as_deref().unwrap_or("generating");
                    return Visible::InProgress(s.to_string());
                }
                // Invisible: the previous state shows through.
                None => {}
            }
        }
        match &agent.outcome {
            Some(o) => Visible::Done(o.clone()),
            None => Visible::Nothing,
        }
    }

    /// Whether the agent's job is running (`Some(true)`), queued (`Some(false)`) or not yet
    /// visible (`None`), in the agent's account.
    fn job_state(&self, agent: &Agent, job: u64) -> Option<bool> {
        self.accounts[agent.account.unwrap_or(0)].holds(job)
    }

    /// The agent's true status, for `/_sim/agents` (invisible jobs count as
    /// `processing`; hard modes' status names are not applied).
    fn status_of(&self, agent: &Agent) -> Option<&'static str> {
        if let Some(id) = agent.current_job {
            if self.job_state(agent, id) == Some(true) {
                return Some("generating");
            }
            return Some("processing");
        }
        agent.outcome.as_ref().map(|o| match o {
            Outcome::Ready => "ready",
            Outcome::Failed => "failed",
        })
    }

    // ---- faults -------------------------------------------------------

    pub fn faults(&self) -> &Faults {
        &self.cfg.faults
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.cfg.faults = faults;
    }

    // ---- the /v1 endpoints ----------------------------------------------

    /// A call with `secret` arrived at `now`: counted for its account's peak rate.
    pub fn note_call(&mut self, now: Instant, secret: Option<&str>) {
        let Ok(account) = self.check_secret(secret, None) else {
            return;
        };
        let Some(a) = self.accounts.get_mut(account) else {
            return;
        };
        while a
            .recent_calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            a.recent_calls.pop_front();
        }
        a.recent_calls.push_back(now);
        a.peak_calls_per_second = a.peak_calls_per_second.max(a.recent_calls.len() as u64);
    }

    /// The account a secret belongs to, or 401.
    fn check_secret(&self, secret: Option<&str>, agent: Option<&str>) -> Result<usize, Reply> {
        let details = match secret {
            None => "missing api-secret header",
            Some(s) if s == self.cfg.secret || self.cfg.extra_secrets.iter().any(|x| x == s) => {
                return Ok(0)
            }
            Some(s) => match self.cfg.accounts.iter().position(|x| x == s) {
                Some(i) => return Ok(i + 1),
                None => "invalid api-secret",
            },
        };
        Err(Reply::error(
            401,
            agent,
            "Unauthorized",
            "UNAUTHORIZED",
            details.to_string(),
        ))
    }

    /// Known, and not another account's: the real API answers 404 for an agent that is not
    /// yours. An agent no account generated yet is everyone's.
    fn is_known(&self, agent: &str, account: usize) -> bool {
        self.agents
            .get(agent)
            .is_none_or(|a| a.known && a.account.is_none_or(|o| o == account))
    }

    pub fn record(&mut self, endpoint: &str, agent: Option<&str>, status: u16) {
        let key = (endpoint.to_string(), agent.map(String::from), status);
        *self.counters.calls.entry(key).or_default() += 1;
    }

    /// POST /v1/dynamics/generate
    pub fn generate(
        &mut self,
        now: Instant,
        secret: Option<&str>,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let hint = agent_hint(body);
        let account = match self.check_secret(secret, hint.as_deref()) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let honour = self
            .modes_for(hint.as_deref())
            .honour_idempotency_key
            .unwrap_or(self.cfg.honour_idempotency_key);
        let key = idempotency_key.filter(|_| honour);
        if let Some(cached) = key.and_then(|k| self.idempotency.get(k)) {
            let mut reply = cached.clone();
            self.counters.idempotent_replays += 1;
            let agent_id = reply.agent.clone().or(hint).unwrap_or_default();
            reply.generation_seq = Some(self.log_generation(agent_id, body, key, true));
            return reply;
        }
        let req = match validate_generate(body) {
            Ok(r) => r,
            Err(details) => return Reply::invalid(hint.as_deref(), details),
        };
        let agent_id = req.agent_id.clone();
        if !self.is_known(&agent_id, account) {
            return Reply::not_found(&agent_id);
        }
        let credits = self.accounts[account].credits;
        if credits < self.cfg.cost {
            return Reply::error(
                402,
                Some(&agent_id),
                "Insufficient credits",
                "INSUFFICIENT_CREDITS",
                format!(
                    "dynamics generation costs {} credits; {credits} remaining",
                    self.cfg.cost
                ),
            );
        }
        self.advance(now);
        let pool = &mut self.accounts[account];
        pool.credits -= self.cfg.cost;
        pool.credits_charged += self.cfg.cost;
        pool.generations_started += 1;
        self.counters.credits_charged += self.cfg.cost;
        self.counters.generations_started += 1;
        let agent = self
            .agents
            .entry(agent_id.clone())
            .or_insert_with(Agent::new);
        agent.account.get_or_insert(account);
        agent.charged_generations += 1;
        let drop = std::mem::take(&mut agent.drop_next_generate_reply);
        agent.last_generate_request = Some(req.raw);
        if let Some(p) = req.prompts {
            agent.prompts = p;
        }
        let invisible = Duration::from_millis(self.modes_for(Some(&agent_id)).invisible_ms);
        self.start_generation(account, &agent_id, now, invisible);
        let mut reply = Reply::ok(
            &agent_id,
            json!({
                "success": true,
                "message": "Dynamics generation started",
                "agent_id": agent_id,
                "status": "processing",
            }),
        );
        if let Some(k) = key {
            self.idempotency.insert(k.to_string(), reply.clone());
        }
        reply.generation_seq = Some(self.log_generation(agent_id, body, idempotency_key, false));
        if drop {
            self.counters.dropped_connections += 1;
            reply.drop = true;
        }
        reply
    }

    fn log_generation(
        &mut self,
        agent_id: String,
        body: &[u8],
        key: Option<&str>,
        replayed: bool,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        self.generation_log.push(GenerationRecord {
            seq,
            agent_id,
            body,
            idempotency_key: key.map(String::from),
            replayed,
            reply: GenerationReply::Ok,
        });
        seq
    }

    /// Notes how an accepted generate call was finally answered.
    pub fn set_generation_reply(&mut self, seq: u64, reply: GenerationReply) {
        if let Some(r) = self.generation_log.iter_mut().rfind(|r| r.seq == seq) {
            r.reply = reply;
        }
    }

    /// `GET /_sim/generations`
    pub fn generations(&self) -> Vec<GenerationRecord> {
        self.generation_log.clone()
    }

    /// GET /v1/dynamics/{agent_id}
    pub fn get(&mut self, now: Instant, secret: Option<&str>, agent_id: &str) -> Reply {
        let account = match self.check_secret(secret, Some(agent_id)) {
            Ok(a) => a,
            Err(r) => return r,
        };
        if !self.is_known(agent_id, account) {
            return Reply::not_found(agent_id);
        }
        self.advance(now);
        let Some(agent) = self.agents.get(agent_id) else {
            return Reply::ok(agent_id, self.empty_data(agent_id));
        };
        let status = match self.visible(agent_id, agent) {
            Visible::Nothing => return Reply::ok(agent_id, self.empty_data(agent_id)),
            Visible::InProgress(s) => Some(s),
            Visible::Done(Outcome::Failed) => Some("failed".to_string()),
            Visible::Done(Outcome::Ready) => match self.modes_for(Some(agent_id)).converged_reply {
                ConvergedReply::Normal => Some("ready".to_string()),
                ConvergedReply::NoStatus => None,
                ConvergedReply::DataNull => {
                    return Reply::ok(agent_id, json!({"success": true, "data": null}))
                }
                ConvergedReply::Bare => return Reply::ok(agent_id, json!({"success": true})),
            },
        };
        let mut data = Map::new();
        data.insert("agent_id".into(), json!(agent_id));
        match self.cfg.reply_shape {
            ReplyShape::Seed => {
                data.insert("dynamics".into(), json!(agent.model_url));
            }
            ReplyShape::Newer => {
                data.insert("url".into(), json!(agent.model_url));
                data.insert("gestures".into(), json!(gestures_of(agent)));
            }
        }
        if let Some(status) = status {
            data.insert("status".into(), json!(status));
        }
        if let Some(e) = &agent.error_message {
            data.insert("error_message".into(), json!(e));
        }
        Reply::ok(agent_id, json!({"success": true, "data": data}))
    }

    /// A known agent that never had a generation: no status at all.
    fn empty_data(&self, agent_id: &str) -> Value {
        let key = match self.cfg.reply_shape {
            ReplyShape::Seed => "dynamics",
            ReplyShape::Newer => "url",
        };
        json!({"success": true, "data": {"agent_id": agent_id, key: null}})
    }

    /// PUT /v1/dynamics/{agent_id}
    pub fn update(
        &mut self,
        now: Instant,
        wall: SystemTime,
        secret: Option<&str>,
        agent_id: &str,
        body: &[u8],
    ) -> Reply {
        let account = match self.check_secret(secret, Some(agent_id)) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let (dynamics, toggle) = match validate_update(body) {
            Ok(v) => v,
            Err(details) => return Reply::invalid(Some(agent_id), details),
        };
        if !self.is_known(agent_id, account) {
            return Reply::not_found(agent_id);
        }
        self.advance(now);
        let updated_at = humantime::format_rfc3339_seconds(wall).to_string();
        let agent = self
            .agents
            .entry(agent_id.to_string())
            .or_insert_with(Agent::new);
        let stored = agent.dynamics.get_or_insert_with(Map::new);
        let new_batch = dynamics.get("batch_results").filter(|v| !v.is_null());
        let regenerate = new_batch.is_some() && new_batch != stored.get("batch_results");
        // Keys sent replace stored ones; keys not sent are kept, so a PUT of
        // just `enabled` does not wipe the rest of the block.
        for (k, v) in dynamics {
            if v.is_null() {
                stored.remove(&k);
            } else {
                stored.insert(k, v);
            }
        }
        if toggle.is_some() {
            agent.toggle_enabled = toggle;
        }
        agent.updated_at = Some(updated_at.clone());
        const UPDATED: &str = "Dynamics updated successfully";
        if regenerate {
            if std::mem::take(&mut agent.refuse_next_regeneration) {
                return Reply::ok(
                    agent_id,
                    json!({
                        "success": true,
                        "message": format!("{UPDATED} but movements regeneration failed to start"),
                        "agent_id": agent_id,
                        "regeneration_status": "failed",
                        "regeneration_error": "regeneration refused (simulated)",
                    }),
                );
            }
            // A regeneration runs on the owner's workers (the caller's, for an agent no
            // account generated yet).
            let owner = *agent.account.get_or_insert(account);
            self.counters.regenerations_started += 1;
            self.start_generation(owner, agent_id, now, Duration::ZERO);
            return Reply::ok(
                agent_id,
                json!({
                    "success": true,
                    "message": format!("{UPDATED} and movements regeneration started"),
                    "agent_id": agent_id,
                    "regeneration_status": "started",
                }),
            );
        }
        let body = match self.cfg.update_reply_shape {
            UpdateReplyShape::Data => json!({
                "success": true,
                "message": UPDATED,
                "data": {"agent_id": agent_id, "updated_at": updated_at},
            }),
            UpdateReplyShape::Regeneration => json!({
                "success": true,
                "message": UPDATED,
                "agent_id": agent_id,
                "updated_at": updated_at,
            }),
        };
        Reply::ok(agent_id, body)
    }

    // ---- control --------------------------------------------------------

    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        SimStats {
            calls: c
                .calls
                .iter()
                .map(|((endpoint, agent_id, status), count)| CallCount {
                    endpoint: endpoint.clone(),
                    agent_id: agent_id.clone(),
                    status: *status,
                    count: *count,
                })
                .collect(),
            credits_charged: c.credits_charged,
            credits_remaining: self.accounts.iter().map(|a| a.credits).sum(),
            generations_started: c.generations_started,
            regenerations_started: c.regenerations_started,
            overlapping_generations: c.overlapping_generations,
            dropped_connections: c.dropped_connections,
            idempotent_replays: c.idempotent_replays,
            injected_faults: c.injected_faults,
            accounts: self
                .accounts
                .iter()
                .enumerate()
                .map(|(i, a)| AccountStats {
                    account: i,
                    credits_remaining: a.credits,
                    credits_charged: a.credits_charged,
                    generations_started: a.generations_started,
                    running: a.running.len(),
                    queued: a.queue.len(),
                    worker_idle_ms: a.worker_idle.as_millis() as u64,
                    worker_idle_gaps: a.worker_idle_gaps,
                    peak_calls_per_second: a.peak_calls_per_second,
                })
                .collect(),
        }
    }

    pub fn reset_stats(&mut self) {
        self.counters = Counters::default();
        self.generation_log.clear();
        for a in &mut self.accounts {
            a.recent_calls.clear();
            a.peak_calls_per_second = 0;
        }
    }

    /// Sets every account's balance.
    pub fn set_credits(&mut self, credits: u64) {
        for a in &mut self.accounts {
            a.credits = credits;
        }
    }

    fn agent_mut(&mut self, id: &str) -> &mut Agent {
        self.agents.entry(id.to_string()).or_insert_with(Agent::new)
    }

    pub fn set_known(&mut self, id: &str, known: bool) {
        self.agent_mut(id).known = known;
    }

    pub fn fail_next(&mut self, id: &str) {
        self.agent_mut(id).fail_next = true;
    }

    pub fn refuse_next_regeneration(&mut self, id: &str) {
        self.agent_mut(id).refuse_next_regeneration = true;
    }

    pub fn drop_next_generate_reply(&mut self, id: &str) {
        self.agent_mut(id).drop_next_generate_reply = true;
    }

    /// Hard modes for one agent (`None`: back to the global set).
    pub fn set_agent_modes(&mut self, id: &str, modes: Option<Modes>) {
        self.agent_mut(id).modes = modes;
    }

    pub fn modes(&self) -> &Modes {
        &self.cfg.modes
    }

    pub fn set_modes(&mut self, modes: Modes) {
        self.cfg.modes = modes;
    }

    pub fn agent(&mut self, now: Instant, id: &str) -> SimAgent {
        self.advance(now);
        let Some(a) = self.agents.get(id) else {
            return SimAgent {
                agent_id: id.to_string(),
                known: true,
                ..Default::default()
            };
        };
        let enabled = a
            .dynamics
            .as_ref()
            .and_then(|d| d.get("enabled"))
            .and_then(Value::as_bool);
        SimAgent {
            agent_id: id.to_string(),
            known: a.known,
            status: self.status_of(a).map(String::from),
            model_url: a.model_url.clone(),
            error_message: a.error_message.clone(),
            dynamics: a.dynamics.clone().map(Value::Object),
            enabled,
            toggle_enabled: a.toggle_enabled,
            generations: a.generations,
            charged_generations: a.charged_generations,
            gestures: gestures_of(a),
            last_generate_request: a.last_generate_request.clone(),
            updated_at: a.updated_at.clone(),
            fail_next: a.fail_next,
            refuse_next_regeneration: a.refuse_next_regeneration,
            drop_next_generate_reply: a.drop_next_generate_reply,
            modes: a.modes.clone(),
            account: a.account,
        }
    }

    pub fn agents(&mut self, now: Instant) -> Vec<SimAgent> {
        let ids: BTreeSet<String> = self.agents.keys().cloned().collect();
        ids.iter().map(|id| self.agent(now, id)).collect()
    }
}

/// Generated gestures, overlaid with the stored batch_results' videos.
fn gestures_of(agent: &Agent) -> BTreeMap<String, String> {
    let mut g = agent.generated_gestures.clone();
    let batch = agent
        .dynamics
        .as_ref()
        .and_then(|d| d.get("batch_results"))
        .and_then(Value::as_object);
    for (name, r) in batch.into_iter().flatten() {
        if let Some(url) = r.get("video_url").and_then(Value::as_str) {
            g.insert(name.clone(), url.to_string());
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScriptedFault;
    use faults::FaultSchedule;
    use std::time::Duration;

    const S: Option<&str> = Some("sim-secret");
    /// 2024-01-02T03:04:05Z: the engine reads no clock, so this is what it stamps.
    fn wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
    }

    fn engine(gen_ms: u64, max: usize) -> Engine {
        Engine::new(SimConfig {
            generation_time: Duration::from_millis(gen_ms),
            max_concurrent: max,
            seed: Some(1),
            ..SimConfig::default()
        })
    }

    fn gen(e: &mut Engine, now: Instant, agent: &str) -> Reply {
        e.generate(
            now,
            S,
            None,
            format!(r#"{{"agent_id":"{agent}"}}"#).as_bytes(),
        )
    }

    fn status(e: &mut Engine, now: Instant, agent: &str) -> Option<String> {
        let r = e.get(now, S, agent);
        assert_eq!(r.status, 200);
        r.body["data"]["status"].as_str().map(String::from)
    }

    #[test]
    fn queue_respects_the_concurrency_limit_and_hands_over_workers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = engine(100, 2);
        for a in ["a", "b", "c"] {
            assert_eq!(gen(&mut e, t0, a).status, 200);
        }
        assert_eq!(status(&mut e, t0, "a").as_deref(), Some("generating"));
        assert_eq!(status(&mut e, t0, "b").as_deref(), Some("generating"));
        assert_eq!(status(&mut e, t0, "c").as_deref(), Some("processing"));
        // Observed late: c started when a and b finished (t0+100), so it is
        // done at t0+200, not 100ms after we happened to look.
        assert_eq!(
            status(&mut e, t0 + ms(150), "c").as_deref(),
            Some("generating")
        );
        assert_eq!(status(&mut e, t0 + ms(200), "c").as_deref(), Some("ready"));
        assert_eq!(status(&mut e, t0 + ms(200), "a").as_deref(), Some("ready"));
    }

    const T: Option<&str> = Some("team-secret");

    /// Account 0 (`S`, and `extra` as the same account) and account 1 (`T`), 2 workers each.
    fn two_accounts(gen_ms: u64) -> Engine {
        Engine::new(SimConfig {
            generation_time: Duration::from_millis(gen_ms),
            max_concurrent: 2,
            seed: Some(1),
            extra_secrets: vec!["extra".into()],
            accounts: vec!["team-secret".into()],
            credits: 1000,
            ..SimConfig::default()
        })
    }

    fn gen_as(e: &mut Engine, now: Instant, secret: Option<&str>, agent: &str) -> u16 {
        e.generate(
            now,
            secret,
            None,
            format!(r#"{{"agent_id":"{agent}"}}"#).as_bytes(),
        )
        .status
    }

    fn status_as(e: &mut Engine, now: Instant, secret: Option<&str>, agent: &str) -> String {
        let r = e.get(now, secret, agent);
        match r.body["data"]["status"].as_str() {
            Some(s) if r.status == 200 => s.to_string(),
            _ => r.status.to_string(),
        }
    }

    #[test]
    fn each_account_runs_its_own_two_and_queues_apart() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = two_accounts(100);
        // Account 0: a, b, c; account 1: x, y, z. Each runs 2 at once, the third waits for its
        // own account's worker only.
        for (secret, agent) in [(S, "a"), (S, "b"), (T, "x"), (T, "y"), (S, "c"), (T, "z")] {
            assert_eq!(gen_as(&mut e, t0, secret, agent), 200, "{agent}");
        }
        // (time ms, secret, agent, status)
        let table: &[(u64, Option<&str>, &str, &str)] = &[
            (0, S, "a", "generating"),
            (0, S, "b", "generating"),
            (0, S, "c", "processing"),
            (0, T, "x", "generating"),
            (0, T, "y", "generating"),
            (0, T, "z", "processing"),
            (100, S, "a", "ready"),
            (100, S, "c", "generating"),
            (100, T, "z", "generating"),
            (200, S, "c", "ready"),
            (200, T, "z", "ready"),
        ];
        for (at, secret, agent, want) in table {
            assert_eq!(
                status_as(&mut e, t0 + ms(*at), *secret, agent),
                *want,
                "{agent} at {at} ms"
            );
        }
        let st = e.stats();
        assert_eq!(st.accounts.len(), 2);
        assert_eq!(
            st.accounts
                .iter()
                .map(|a| (a.generations_started, a.credits_remaining))
                .collect::<Vec<_>>(),
            [(3, 250), (3, 250)]
        );
        assert_eq!(st.credits_remaining, 500);
        assert_eq!(st.generations_started, 6);
    }

    #[test]
    fn a_busy_account_never_delays_the_other() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = two_accounts(100);
        e.set_credits(100_000);
        // Account 0 queues 10 generations (5 rounds of 100 ms); account 1's one starts at once.
        for i in 0..10 {
            gen_as(&mut e, t0, S, &format!("s{i}"));
        }
        gen_as(&mut e, t0 + ms(10), T, "t");
        assert_eq!(status_as(&mut e, t0 + ms(10), T, "t"), "generating");
        assert_eq!(status_as(&mut e, t0 + ms(110), T, "t"), "ready");
        assert_eq!(status_as(&mut e, t0 + ms(110), S, "s9"), "processing");
        assert_eq!(status_as(&mut e, t0 + ms(500), S, "s9"), "ready");
    }

    #[test]
    fn another_accounts_agent_is_not_found() {
        let t0 = Instant::now();
        let mut e = two_accounts(0);
        let put = br#"{"dynamics":{"enabled":true}}"#;
        // Nobody generated it yet: every account sees an agent without dynamics.
        assert_eq!(e.get(t0, T, "a").status, 200);
        assert_eq!(gen_as(&mut e, t0, S, "a"), 200);
        // (secret, GET, PUT, generate): the owner, its extra secret, the other account, a
        // stranger.
        let table: &[(Option<&str>, u16, u16, u16)] = &[
            (S, 200, 200, 200),
            (Some("extra"), 200, 200, 200),
            (T, 404, 404, 404),
            (Some("nope"), 401, 401, 401),
        ];
        for (secret, get, update, generate) in table {
            let got = (
                e.get(t0, *secret, "a").status,
                e.update(t0, wall(), *secret, "a", put).status,
                gen_as(&mut e, t0, *secret, "a"),
            );
            assert_eq!(got, (*get, *update, *generate), "{secret:?}");
        }
        assert_eq!(e.get(t0, T, "a").body["code"], "AGENT_NOT_FOUND");
        assert_eq!(e.agent(t0, "a").account, Some(0));
        // The other account's agents are its own.
        assert_eq!(gen_as(&mut e, t0, T, "b"), 200);
        assert_eq!(e.get(t0, S, "b").status, 404);
        assert_eq!(e.agent(t0, "b").account, Some(1));
    }

    #[test]
    fn credits_are_per_account() {
        let t0 = Instant::now();
        let mut e = two_accounts(0);
        for i in 0..4 {
            assert_eq!(gen_as(&mut e, t0, S, &format!("a{i}")), 200);
        }
        assert_eq!(gen_as(&mut e, t0, S, "a4"), 402);
        assert_eq!(gen_as(&mut e, t0, T, "b0"), 200);
        assert_eq!(
            e.stats()
                .accounts
                .iter()
                .map(|a| a.credits_remaining)
                .collect::<Vec<_>>(),
            [0, 750]
        );
    }

    #[test]
    fn drop_next_generate_reply_charges_then_drops_once() {
        let t0 = Instant::now();
        let mut e = engine(0, 2);
        e.drop_next_generate_reply("a");
        // Other calls and other agents are not affected.
        assert!(!e.get(t0, S, "a").drop);
        assert!(!gen(&mut e, t0, "b").drop);
        let r = gen(&mut e, t0, "a");
        assert!(r.drop && r.status == 200 && r.generation_seq.is_some());
        assert!(!gen(&mut e, t0, "a").drop);
        assert_eq!(e.agent(t0, "a").charged_generations, 2);
        assert_eq!(e.stats().dropped_connections, 1);
    }

    #[test]
    fn workers_waiting_between_generations_are_counted() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = engine(100, 1);
        e.set_credits(100_000);
        gen(&mut e, t0, "a");
        // a ends at 100 ms; b comes at 150: the worker waited 50 ms.
        gen(&mut e, t0 + ms(150), "b");
        // c comes while b runs: it starts as b ends, without a wait.
        gen(&mut e, t0 + ms(200), "c");
        assert_eq!(status(&mut e, t0 + ms(400), "c").as_deref(), Some("ready"));
        let account = &e.stats().accounts[0];
        assert_eq!((account.worker_idle_ms, account.worker_idle_gaps), (50, 1));
    }

    #[test]
    fn lazy_catch_up_over_a_long_gap() {
        let t0 = Instant::now();
        let mut e = engine(10, 1);
        for a in ["a", "b", "c", "d"] {
            gen(&mut e, t0, a);
        }
        let later = t0 + Duration::from_secs(5);
        for a in ["a", "b", "c", "d"] {
            assert_eq!(status(&mut e, later, a).as_deref(), Some("ready"), "{a}");
        }
    }

    #[test]
    fn unlimited_concurrency() {
        let t0 = Instant::now();
        let mut e = engine(100, 0);
        for a in ["a", "b", "c", "d"] {
            gen(&mut e, t0, a);
        }
        assert_eq!(status(&mut e, t0, "d").as_deref(), Some("generating"));
    }

    #[test]
    fn model_url_changes_per_generation_and_overlap_is_counted() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = engine(100, 2);
        gen(&mut e, t0, "a");
        let r = e.get(t0 + ms(100), S, "a");
        let first = r.body["data"]["dynamics"].as_str().unwrap().to_string();
        assert!(first.ends_with("/a/1.bin"), "{first}");
        gen(&mut e, t0 + ms(100), "a");
        // While generating, the previous model is still what the agent has.
        let r = e.get(t0 + ms(150), S, "a");
        assert_eq!(r.body["data"]["dynamics"], json!(first));
        gen(&mut e, t0 + ms(150), "a");
        assert_eq!(e.stats().overlapping_generations, 1);
        assert_eq!(e.stats().generations_started, 3);
        assert_eq!(e.stats().credits_charged, 750);
        // The superseded generation finishes first but is discarded.
        assert_eq!(
            status(&mut e, t0 + ms(200), "a").as_deref(),
            Some("generating")
        );
        let r = e.get(t0 + ms(250), S, "a");
        assert_eq!(r.body["data"]["status"], "ready");
        assert!(r.body["data"]["dynamics"]
            .as_str()
            .unwrap()
            .ends_with("/a/3.bin"));
    }

    #[test]
    fn never_generated_agent_has_no_status() {
        let mut e = engine(100, 2);
        let r = e.get(Instant::now(), S, "new");
        assert_eq!(
            r.body,
            json!({"success": true, "data": {"agent_id": "new", "dynamics": null}})
        );
    }

    #[test]
    fn validation_of_generate_bodies() {
        let cases: &[(&str, u16)] = &[
            ("not json", 400),
            ("[]", 400),
            ("{}", 400),
            (r#"{"agent_id":""}"#, 400),
            (r#"{"agent_id":5}"#, 400),
            (r#"{"agent_id":"a","duration":"5"}"#, 400),
            (r#"{"agent_id":"a","duration":0}"#, 400),
            (r#"{"agent_id":"a","duration":11}"#, 400),
            (r#"{"agent_id":"a","duration":2.5}"#, 200),
            (r#"{"agent_id":"a","image_url":"ftp://x/y.jpg"}"#, 400),
            (r#"{"agent_id":"a","image_url":"HTTPS://x/y.jpg"}"#, 200),
            (r#"{"agent_id":"a","model":7}"#, 400),
            (r#"{"agent_id":"a","model":"quality"}"#, 200),
            (r#"{"agent_id":"a","motion_prompts":"wave"}"#, 400),
            (r#"{"agent_id":"a","motion_prompts":["wave",""]}"#, 400),
            (
                r#"{"agent_id":"a","motion_prompts":["wave"],"extra":true}"#,
                200,
            ),
        ];
        let mut e = engine(100, 0);
        for (body, want) in cases {
            let r = e.generate(Instant::now(), S, None, body.as_bytes());
            assert_eq!(r.status, *want, "{body}: {}", r.body);
            if *want == 400 {
                assert_eq!(r.body["code"], "INVALID_REQUEST");
                assert!(r.body["details"].as_str().is_some());
            }
        }
    }

    #[test]
    fn auth_then_known_then_credits() {
        let now = Instant::now();
        let mut e = engine(100, 2);
        let body = br#"{"agent_id":"a"}"#;
        assert_eq!(e.generate(now, None, None, body).status, 401);
        assert_eq!(e.generate(now, Some("nope"), None, body).status, 401);
        e.set_known("a", false);
        assert_eq!(e.generate(now, S, None, body).status, 404);
        assert_eq!(e.get(now, S, "a").status, 404);
        assert_eq!(
            e.update(now, wall(), S, "a", br#"{"dynamics":{}}"#).status,
            404
        );
        e.set_known("a", true);
        e.set_credits(249);
        let r = e.generate(now, S, None, body);
        assert_eq!(r.status, 402);
        assert_eq!(r.body["code"], "INSUFFICIENT_CREDITS");
        assert_eq!(e.stats().credits_remaining, 249);
        assert_eq!(e.stats().generations_started, 0);
    }

    #[test]
    fn idempotency_key_replays_without_charging() {
        let now = Instant::now();
        let mut e = engine(100, 2);
        let body = br#"{"agent_id":"a"}"#;
        let r1 = e.generate(now, S, Some("k1"), body);
        let r2 = e.generate(now, S, Some("k1"), body);
        assert_eq!((r1.status, &r1.body), (r2.status, &r2.body));
        assert_eq!(e.stats().credits_charged, 250);
        assert_eq!(e.stats().idempotent_replays, 1);
        e.generate(now, S, Some("k2"), body);
        assert_eq!(e.stats().credits_charged, 500);
    }

    #[test]
    fn put_merges_and_regenerates_only_on_batch_change() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = engine(100, 2);
        let put = |e: &mut Engine, t, body: &str| e.update(t, wall(), S, "a", body.as_bytes());
        let batch = r#"{"dynamics":{"enabled":true,"batch_results":{"wave":{"video_url":"https://v/w.mp4","status":"success"}}},"toggle_enabled":true}"#;
        let r = put(&mut e, t0, batch);
        assert_eq!(r.body["regeneration_status"], "started");
        assert_eq!(e.stats().regenerations_started, 1);
        assert_eq!(e.stats().credits_charged, 0);
        assert_eq!(status(&mut e, t0, "a").as_deref(), Some("generating"));
        let r = put(&mut e, t0 + ms(100), batch);
        assert_eq!(r.body["data"]["agent_id"], "a");
        assert!(r.body.get("regeneration_status").is_none());
        // Disabling alone keeps the rest of the block.
        put(
            &mut e,
            t0 + ms(100),
            r#"{"dynamics":{"enabled":false},"toggle_enabled":true}"#,
        );
        let rec = e.agent(t0 + ms(100), "a");
        assert_eq!(rec.enabled, Some(false));
        assert_eq!(rec.toggle_enabled, Some(true));
        assert!(rec.dynamics.unwrap()["batch_results"]["wave"].is_object());
        assert_eq!(rec.gestures["wave"], "https://v/w.mp4");
        assert_eq!(rec.status.as_deref(), Some("ready"));
        assert_eq!(e.stats().regenerations_started, 1);
    }

    #[test]
    fn put_validation() {
        let mut e = engine(100, 2);
        for body in [
            "x",
            "{}",
            r#"{"dynamics":[]}"#,
            r#"{"dynamics":{"enabled":"yes"}}"#,
            r#"{"dynamics":{"batch_results":{"wave":"u"}}}"#,
            r#"{"dynamics":{"batch_results":{"wave":{"video_url":"file:///x"}}}}"#,
            r#"{"dynamics":{"result":"x"}}"#,
            r#"{"dynamics":{},"toggle_enabled":1}"#,
        ] {
            assert_eq!(
                e.update(Instant::now(), wall(), S, "a", body.as_bytes())
                    .status,
                400,
                "{body}"
            );
        }
    }

    #[test]
    fn fail_next_and_refused_regeneration() {
        let t0 = Instant::now();
        let mut e = engine(0, 2);
        e.fail_next("a");
        gen(&mut e, t0, "a");
        let r = e.get(t0, S, "a");
        assert_eq!(r.body["data"]["status"], "failed");
        assert!(r.body["data"]["error_message"].as_str().is_some());
        assert!(!e.agent(t0, "a").fail_next);
        gen(&mut e, t0, "a");
        assert_eq!(status(&mut e, t0, "a").as_deref(), Some("ready"));
        e.refuse_next_regeneration("a");
        let r = e.update(t0, wall(), S, "a", br#"{"dynamics":{"batch_results":{}}}"#);
        assert_eq!(r.body["regeneration_status"], "failed");
        assert!(r.body["regeneration_error"].is_string());
        assert_eq!(e.stats().regenerations_started, 0);
    }

    #[test]
    fn scripted_faults_come_first_then_rates() {
        let mut e = engine(0, 2);
        e.set_faults(Faults {
            script: [
                ScriptedFault::RateLimited,
                ScriptedFault::Pass,
                ScriptedFault::Drop,
            ]
            .into(),
            retry_after_secs: 3,
            // A pass entry also shields its call from the random faults.
            fail_rate_500: 1.0,
            ..Faults::default()
        });
        let p = e.roll_faults(Some("a"));
        let r = p.replace.unwrap();
        assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("3")));
        assert_eq!(e.roll_faults(Some("a")), FaultSchedule::default());
        let p = e.roll_faults(Some("a"));
        assert!(p.replace.is_none() && p.drop);
        e.set_faults(Faults::default());
        assert_eq!(e.roll_faults(None), FaultSchedule::default());
        e.set_faults(Faults {
            fail_rate_503: 1.0,
            ..Faults::default()
        });
        assert_eq!(e.roll_faults(None).replace.unwrap().status, 503);
        assert_eq!(e.stats().injected_faults, 2);
        assert_eq!(e.stats().dropped_connections, 1);
    }

    #[test]
    fn newer_shape_reports_url_and_gestures() {
        let t0 = Instant::now();
        let mut e = Engine::new(SimConfig {
            generation_time: Duration::ZERO,
            reply_shape: ReplyShape::Newer,
            ..SimConfig::default()
        });
        assert_eq!(
            e.get(t0, S, "a").body,
            json!({"success": true, "data": {"agent_id": "a", "url": null}})
        );
        e.generate(
            t0,
            S,
            None,
            br#"{"agent_id":"a","motion_prompts":["wave","idle"]}"#,
        );
        let d = e.get(t0, S, "a").body["data"].clone();
        assert_eq!(d["status"], "ready");
        assert!(d["url"].as_str().unwrap().ends_with("/a/1.bin"));
        let g = d["gestures"].as_object().unwrap();
        assert_eq!(g.keys().collect::<Vec<_>>(), ["idle", "wave"]);
        assert!(d.get("dynamics").is_none());
    }

    fn with_modes(modes: Modes) -> Engine {
        Engine::new(SimConfig {
            generation_time: Duration::from_millis(100),
            max_concurrent: 2,
            seed: Some(1),
            modes,
            ..SimConfig::default()
        })
    }

    #[test]
    fn updated_at_comes_from_the_wall_time_passed_in() {
        let mut e = engine(100, 2);
        let r = e.update(
            Instant::now(),
            wall(),
            S,
            "a",
            br#"{"dynamics":{"enabled":true}}"#,
        );
        assert_eq!(r.body["data"]["updated_at"], "2024-01-02T03:04:05Z");
        assert_eq!(
            e.agent(Instant::now(), "a").updated_at.as_deref(),
            Some("2024-01-02T03:04:05Z")
        );
    }

    #[test]
    fn invisible_job_shows_the_previous_state_then_queues() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = with_modes(Modes {
            invisible_ms: 500,
            ..Modes::default()
        });
        // Never generated: no status while invisible.
        assert_eq!(gen(&mut e, t0, "a").status, 200);
        assert_eq!(status(&mut e, t0 + ms(499), "a"), None);
        assert_eq!(
            e.get(t0, S, "a").body,
            json!({"success": true, "data": {"agent_id": "a", "dynamics": null}})
        );
        // Visible at 500, runs 100 ms from then (not from the POST).
        assert_eq!(
            status(&mut e, t0 + ms(500), "a").as_deref(),
            Some("generating")
        );
        assert_eq!(
            status(&mut e, t0 + ms(599), "a").as_deref(),
            Some("generating")
        );
        assert_eq!(status(&mut e, t0 + ms(600), "a").as_deref(), Some("ready"));
        let first = e.get(t0 + ms(600), S, "a").body["data"]["dynamics"].clone();
        // A second generation: the old ready state and model show through.
        gen(&mut e, t0 + ms(600), "a");
        let r = e.get(t0 + ms(1000), S, "a");
        assert_eq!(r.body["data"]["status"], "ready");
        assert_eq!(r.body["data"]["dynamics"], first);
        // Buying again because "nothing happened" is an overlap.
        gen(&mut e, t0 + ms(1000), "a");
        assert_eq!(e.stats().overlapping_generations, 1);
        assert_eq!(e.stats().credits_charged, 750);
    }

    #[test]
    fn invisible_jobs_join_the_queue_in_order_of_visibility() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = Engine::new(SimConfig {
            generation_time: ms(100),
            max_concurrent: 1,
            modes: Modes {
                invisible_ms: 50,
                waiting_status: Some("queued".into()),
                running_status: Some("in_progress".into()),
                ..Modes::default()
            },
            ..SimConfig::default()
        });
        gen(&mut e, t0, "a");
        gen(&mut e, t0 + ms(10), "b");
        assert_eq!(status(&mut e, t0 + ms(40), "b"), None);
        assert_eq!(
            status(&mut e, t0 + ms(60), "a").as_deref(),
            Some("in_progress")
        );
        assert_eq!(status(&mut e, t0 + ms(60), "b").as_deref(), Some("queued"));
        // a started at 50, done at 150; b starts then, done at 250.
        assert_eq!(status(&mut e, t0 + ms(150), "a").as_deref(), Some("ready"));
        assert_eq!(
            status(&mut e, t0 + ms(249), "b").as_deref(),
            Some("in_progress")
        );
        assert_eq!(status(&mut e, t0 + ms(250), "b").as_deref(), Some("ready"));
        // The oracle view keeps the true names.
        assert_eq!(e.agent(t0 + ms(250), "b").status.as_deref(), Some("ready"));
    }

    #[test]
    fn fixed_model_url_and_gestures_do_not_change() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = with_modes(Modes {
            fixed_model_url: true,
            ..Modes::default()
        });
        gen(&mut e, t0, "a");
        let one = e.get(t0 + ms(100), S, "a").body;
        gen(&mut e, t0 + ms(100), "a");
        let two = e.get(t0 + ms(200), S, "a").body;
        assert_eq!(one["data"]["dynamics"], FIXED_MODEL_URL);
        assert_eq!(one, two);
        assert_eq!(e.agent(t0 + ms(200), "a").generations, 2);
        assert_eq!(
            e.agent(t0, "a").gestures,
            e.agent(t0 + ms(200), "a").gestures
        );
    }

    #[test]
    fn converged_replies_switch_per_agent() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = engine(100, 2);
        gen(&mut e, t0, "a");
        gen(&mut e, t0, "b");
        let done = t0 + ms(100);
        let set = |e: &mut Engine, c| {
            e.set_agent_modes(
                "a",
                Some(Modes {
                    converged_reply: c,
                    ..Modes::default()
                }),
            )
        };
        set(&mut e, ConvergedReply::DataNull);
        assert_eq!(
            e.get(done, S, "a").body,
            json!({"success": true, "data": null})
        );
        // b keeps the global (normal) modes.
        assert_eq!(status(&mut e, done, "b").as_deref(), Some("ready"));
        set(&mut e, ConvergedReply::NoStatus);
        let d = e.get(done, S, "a").body["data"].clone();
        assert!(d.get("status").is_none(), "{d}");
        assert!(d["dynamics"].as_str().unwrap().ends_with("/a/1.bin"));
        set(&mut e, ConvergedReply::Bare);
        assert_eq!(e.get(done, S, "a").body, json!({"success": true}));
        // In progress is reported normally whatever the converged reply.
        gen(&mut e, done, "a");
        assert_eq!(status(&mut e, done, "a").as_deref(), Some("generating"));
        e.set_agent_modes("a", None);
        assert_eq!(
            status(&mut e, done + ms(100), "a").as_deref(),
            Some("ready")
        );
    }

    #[test]
    fn idempotency_key_ignored_when_switched_off_and_log_records_both() {
        let now = Instant::now();
        let mut e = Engine::new(SimConfig {
            honour_idempotency_key: false,
            ..SimConfig::default()
        });
        let body = br#"{"agent_id":"a","duration":3}"#;
        let r1 = e.generate(now, S, Some("k1"), body);
        let r2 = e.generate(now, S, Some("k1"), body);
        assert_eq!((r1.generation_seq, r2.generation_seq), (Some(1), Some(2)));
        assert_eq!(e.stats().credits_charged, 500);
        assert_eq!(e.stats().idempotent_replays, 0);
        // Per agent, honouring can come back on.
        e.set_agent_modes(
            "b",
            Some(Modes {
                honour_idempotency_key: Some(true),
                ..Modes::default()
            }),
        );
        let b = br#"{"agent_id":"b"}"#;
        e.generate(now, S, Some("k2"), b);
        let replay = e.generate(now, S, Some("k2"), b);
        assert_eq!(e.stats().credits_charged, 750);
        e.set_generation_reply(replay.generation_seq.unwrap(), GenerationReply::Dropped);
        let log = e.generations();
        let view: Vec<_> = log
            .iter()
            .map(|r| (r.seq, r.agent_id.as_str(), r.replayed, r.reply))
            .collect();
        assert_eq!(
            view,
            [
                (1, "a", false, GenerationReply::Ok),
                (2, "a", false, GenerationReply::Ok),
                (3, "b", false, GenerationReply::Ok),
                (4, "b", true, GenerationReply::Dropped),
            ]
        );
        assert_eq!(log[0].body, json!({"agent_id": "a", "duration": 3}));
        assert_eq!(log[0].idempotency_key.as_deref(), Some("k1"));
        // Refused calls are not recorded; a reset clears, seq keeps counting.
        e.set_credits(0);
        assert_eq!(e.generate(now, S, None, body).status, 402);
        assert_eq!(e.generations().len(), 4);
        e.reset_stats();
        assert!(e.generations().is_empty());
        e.set_credits(1000);
        assert_eq!(e.generate(now, S, None, body).generation_seq, Some(5));
    }

    #[test]
    fn retry_after_header_overrides_global_then_per_agent() {
        let mut e = engine(0, 2);
        e.set_faults(Faults {
            rate_limit_rate: 1.0,
            retry_after_header: Some("18446744073709551615".into()),
            ..Faults::default()
        });
        let r = e.roll_faults(Some("x")).replace.unwrap();
        assert_eq!(r.retry_after.as_deref(), Some("18446744073709551615"));
        e.set_agent_modes(
            "a",
            Some(Modes {
                retry_after_header: Some("Fri, 31 Dec 9999 23:59:59 GMT".into()),
                ..Modes::default()
            }),
        );
        let r = e.roll_faults(Some("a")).replace.unwrap();
        assert_eq!(
            r.retry_after.as_deref(),
            Some("Fri, 31 Dec 9999 23:59:59 GMT")
        );
    }
}
