//! Simulator settings: the in-process `SimConfig`, the runtime-switchable
//! `Faults`, and the `SimArgs` flags of `dynamics-operator sim`.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

/// Shape of GET replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyShape {
    /// Seed document: `data.dynamics` + `data.status`.
    #[default]
    Seed,
    /// Newer docs: `data.url` + `data.gestures` + `data.status`.
    Newer,
}

/// Shape of a PUT reply that did not start a regeneration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateReplyShape {
    /// `{success, message, data: {agent_id, updated_at}}`.
    #[default]
    Data,
    /// The top-level shape of the regeneration reply:
    /// `{success, message, agent_id, updated_at}` (no `regeneration_status`).
    Regeneration,
}

/// One scripted fault, consumed by the next `/v1` call (before random faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScriptedFault {
    #[serde(rename = "500")]
    Internal,
    #[serde(rename = "503")]
    Unavailable,
    #[serde(rename = "429")]
    RateLimited,
    /// Process the call, then close the connection without a reply.
    #[serde(rename = "drop")]
    Drop,
    /// No fault: lets one call through, so later entries hit later calls.
    #[serde(rename = "pass")]
    Pass,
}

/// Fault knobs; apply to `/v1` routes only. Rates are probabilities in 0..=1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub fail_rate_500: f64,
    /// 503 with Retry-After.
    pub fail_rate_503: f64,
    /// 429 with Retry-After.
    pub rate_limit_rate: f64,
    /// Retry-After seconds sent with 429 and 503.
    pub retry_after_secs: u64,
    /// Added before every `/v1` call is processed.
    pub latency_ms: u64,
    /// Close the connection after the call was processed.
    pub drop_rate: f64,
    /// Share of generations that end `failed`.
    pub fail_generation_rate: f64,
    /// Deterministic faults for tests, taken in order by the next `/v1` calls
    /// (JSON: "500", "503", "429", "drop", "pass").
    pub script: VecDeque<ScriptedFault>,
    /// Sent verbatim as Retry-After with 429 and 503 instead of
    /// `retry_after_secs`, for hostile values (`18446744073709551615`,
    /// `Fri, 31 Dec 9999 23:59:59 GMT`, `-5`, `soon`). A value that cannot be
    /// an HTTP header value at all is sent as `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_header: Option<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_rate_500: 0.0,
            fail_rate_503: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            drop_rate: 0.0,
            fail_generation_rate: 0.0,
            script: VecDeque::new(),
            retry_after_header: None,
        }
    }
}

/// What a GET answers for a converged agent (last generation finished, none
/// in progress): the normal reply, or one of the shapes seen during an
/// incident or a migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConvergedReply {
    /// `data` with the model, gestures and `status`.
    #[default]
    Normal,
    /// `{"success": true, "data": null}`.
    DataNull,
    /// `data` with `agent_id` and the model, but no `status`.
    NoStatus,
    /// `{"success": true}`: no `data` at all.
    Bare,
}

/// Behaviours of the real service that make resends and misreadings costly.
/// All off by default. Set for every agent through `SimConfig::modes` (the
/// `sim` flags) or `PUT /_sim/modes`, and for one agent through
/// `PUT /_sim/agents/{id}/modes`, which replaces the global set for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Modes {
    /// After an accepted generate, the job is invisible for this long: GET
    /// keeps answering the previous state (or no status for an agent that
    /// never had dynamics), and the job only then joins the queue.
    pub invisible_ms: u64,
    /// Every generation produces the same model URL
    /// ([`FIXED_MODEL_URL`]) and the same gesture URLs, so a finished
    /// generation cannot be told from the previous one by its URLs.
    pub fixed_model_url: bool,
    /// Status reported while a job waits for a worker (instead of
    /// `processing`), e.g. `queued`.
    pub waiting_status: Option<String>,
    /// Status reported while a job runs (instead of `generating`).
    pub running_status: Option<String>,
    /// What GET answers once the agent has converged.
    pub converged_reply: ConvergedReply,
    /// Generate and PUT calls are processed (charged, started) at once, but
    /// the reply is held back this long, e.g. past the client's timeout.
    pub reply_delay_ms: u64,
    /// Whether a generate call's Idempotency-Key is honoured (a repeat is
    /// answered from a cache and not charged). `None` = the simulator-wide
    /// `SimConfig::honour_idempotency_key`.
    pub honour_idempotency_key: Option<bool>,
    /// Retry-After value sent verbatim with injected 429 and 503 for this
    /// agent (overrides `Faults::retry_after_header`).
    pub retry_after_header: Option<String>,
}

/// The model URL of the API document's example, returned by every
/// generation when `Modes::fixed_model_url` is on.
pub const FIXED_MODEL_URL: &str = "https://storage.supabase.co/dynamics-model.bin";

/// Default for `SimConfig::idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the simulator needs to start.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The first account's api-secret.
    pub secret: String,
    /// How long one generation runs once it has a worker.
    pub generation_time: Duration,
    /// Generations running at once per account; 0 = unlimited.
    pub max_concurrent: usize,
    /// Initial credit balance of each account.
    pub credits: u64,
    /// Credits charged per generate call.
    pub cost: u64,
    pub reply_shape: ReplyShape,
    pub update_reply_shape: UpdateReplyShape,
    pub faults: Faults,
    /// Seed of the fault RNG; `None` = from the OS.
    pub seed: Option<u64>,
    /// Gestures generated when a request names no `motion_prompts`.
    pub default_prompts: Vec<String>,
    /// Further api-secrets accepted for the same account (file mode's `--simulator`, where
    /// objects carry the secrets of their Secret documents).
    pub extra_secrets: Vec<String>,
    /// Further accounts, one api-secret each. Each has its own credits (`credits`), its own
    /// `max_concurrent` workers and queue, and its own agents: an agent belongs to the account
    /// whose secret first generated it, and GET, PUT or generate with another account's secret
    /// answer 404 for it, as the real API does for an agent that is not yours.
    pub accounts: Vec<String>,
    /// Hard modes for every agent without its own (see [`Modes`]).
    pub modes: Modes,
    /// Whether generate honours Idempotency-Key (the real API does not
    /// document it). On by default here; `sim --hard` turns it off.
    pub honour_idempotency_key: bool,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed. `None` = never.
    pub idle_timeout: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            secret: "sim-secret".to_string(),
            generation_time: Duration::from_millis(300),
            max_concurrent: 2,
            credits: 1_000_000,
            cost: 250,
            reply_shape: ReplyShape::Seed,
            update_reply_shape: UpdateReplyShape::Data,
            faults: Faults::default(),
            seed: None,
            default_prompts: ["wave", "nod", "smile"].map(String::from).to_vec(),
            extra_secrets: Vec::new(),
            accounts: Vec::new(),
            modes: Modes::default(),
            honour_idempotency_key: true,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be a probability between 0 and 1".to_string())
    }
}

/// Flags of `dynamics-operator sim`: a local stand-in for the Dynamics API.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// The api-secret clients must send.
    #[arg(
        long,
        env = "BITHUMAN_API_SECRET",
        default_value = "sim-secret",
        hide_env_values = true
    )]
    pub secret: String,
    /// How long one generation takes once running (e.g. "300ms", "2m").
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300ms")]
    pub generation_time: Duration,
    /// Generations running at once per account; further ones wait in "processing" (0 = unlimited).
    #[arg(long, default_value_t = 2)]
    pub max_concurrent: usize,
    /// The api-secret of a further account (repeatable): its own credits, workers and agents.
    #[arg(long = "account-secret", value_name = "SECRET", hide_env_values = true)]
    pub account_secrets: Vec<String>,
    /// Initial credit balance of each account.
    #[arg(long, default_value_t = 1_000_000)]
    pub credits: u64,
    /// Credits charged per generation.
    #[arg(long, default_value_t = 250)]
    pub cost: u64,
    /// GET reply shape.
    #[arg(long, value_enum, default_value_t = ReplyShape::Seed)]
    pub reply_shape: ReplyShape,
    /// Shape of PUT replies that start no regeneration.
    #[arg(long, value_enum, default_value_t = UpdateReplyShape::Data)]
    pub update_reply_shape: UpdateReplyShape,
    /// Share of /v1 calls answered 500.
    #[arg(long, value_parser = parse_rate, default_value_t = 0.0)]
    pub fail_rate_500: f64,
    /// Share of /v1 calls answered 503 with Retry-After.
    #[arg(long, value_parser = parse_rate, default_value_t = 0.0)]
    pub fail_rate_503: f64,
    /// Share of /v1 calls answered 429 with Retry-After.
    #[arg(long, value_parser = parse_rate, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Retry-After seconds for 429 and 503.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Latency added to every /v1 call (e.g. "200ms").
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Share of /v1 calls whose connection is closed after processing, without a reply.
    #[arg(long, value_parser = parse_rate, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Share of generations that end "failed".
    #[arg(long, value_parser = parse_rate, default_value_t = 0.0)]
    pub fail_generation_rate: f64,
    /// Seed of the fault RNG, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Retry-After sent verbatim with 429 and 503 instead of --retry-after, e.g.
    /// "18446744073709551615", "Fri, 31 Dec 9999 23:59:59 GMT", "-5", "soon".
    #[arg(long, allow_hyphen_values = true)]
    pub retry_after_header: Option<String>,
    /// Close connections idle (no request in flight, no bytes) this long ("0s" = never).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub idle_timeout: Duration,

    // ---- hard modes: how the real service differs from the friendly default ----
    /// Hard preset: --invisible-for 5s, --fixed-model-url, --waiting-status queued, and
    /// Idempotency-Key ignored (unless --honour-idempotency-key says otherwise).
    /// Explicit flags below win over the preset.
    #[arg(long)]
    pub hard: bool,
    /// After an accepted generate, GET shows the previous state for this long (e.g. "5s");
    /// the job joins the queue only then.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub invisible_for: Option<Duration>,
    /// Every generation returns the same model URL (https://storage.supabase.co/dynamics-model.bin)
    /// and the same gesture URLs.
    #[arg(long)]
    pub fixed_model_url: bool,
    /// Status reported while a job waits for a worker, instead of "processing" (e.g. "queued").
    #[arg(long)]
    pub waiting_status: Option<String>,
    /// Status reported while a job runs, instead of "generating".
    #[arg(long)]
    pub running_status: Option<String>,
    /// What GET answers for a converged agent.
    #[arg(long, value_enum, default_value_t = ConvergedReply::Normal)]
    pub converged_reply: ConvergedReply,
    /// Generate and PUT are processed (charged, started) at once; the reply is held this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reply_delay: Option<Duration>,
    /// Answer a repeated generate Idempotency-Key from a cache without charging
    /// (default: true, false with --hard).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub honour_idempotency_key: Option<bool>,
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            secret: self.secret.trim_end().to_string(),
            generation_time: self.generation_time,
            max_concurrent: self.max_concurrent,
            accounts: self
                .account_secrets
                .iter()
                .map(|s| s.trim_end().to_string())
                .collect(),
            credits: self.credits,
            cost: self.cost,
            reply_shape: self.reply_shape,
            update_reply_shape: self.update_reply_shape,
            faults: Faults {
                fail_rate_500: self.fail_rate_500,
                fail_rate_503: self.fail_rate_503,
                rate_limit_rate: self.rate_limit_rate,
                retry_after_secs: self.retry_after,
                latency_ms: millis(self.latency),
                drop_rate: self.drop_rate,
                fail_generation_rate: self.fail_generation_rate,
                script: VecDeque::new(),
                retry_after_header: self.retry_after_header.clone(),
            },
            seed: self.seed,
            modes: self.modes(),
            honour_idempotency_key: self.honour_idempotency_key.unwrap_or(!self.hard),
            idle_timeout: Some(self.idle_timeout).filter(|d| !d.is_zero()),
            ..SimConfig::default()
        }
    }

    fn modes(&self) -> Modes {
        let invisible = self
            .invisible_for
            .or(self.hard.then_some(Duration::from_secs(5)))
            .unwrap_or_default();
        Modes {
            invisible_ms: millis(invisible),
            fixed_model_url: self.fixed_model_url || self.hard,
            waiting_status: self
                .waiting_status
                .clone()
                .or(self.hard.then(|| "queued".to_string())),
            running_status: self.running_status.clone(),
            converged_reply: self.converged_reply,
            reply_delay_ms: self.reply_delay.map(millis).unwrap_or(0),
            honour_idempotency_key: None,
            retry_after_header: None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn flags_map_onto_the_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--secret",
            "s3",
            "--generation-time",
            "2m",
            "--reply-shape",
            "newer",
            "--update-reply-shape",
            "regeneration",
            "--fail-rate-503",
            "0.25",
            "--latency",
            "150ms",
            "--seed",
            "7",
        ])
        .unwrap();
        let c = cli.sim.to_config();
        assert_eq!(c.secret, "s3");
        assert_eq!(c.generation_time, Duration::from_secs(120));
        assert_eq!(c.reply_shape, ReplyShape::Newer);
        assert_eq!(c.update_reply_shape, UpdateReplyShape::Regeneration);
        assert_eq!(c.faults.fail_rate_503, 0.25);
        assert_eq!(c.faults.latency_ms, 150);
        assert_eq!(c.seed, Some(7));
        assert_eq!(c.max_concurrent, 2);
        assert_eq!(c.cost, 250);
        assert!(c.accounts.is_empty());
        let c = Cli::try_parse_from(["x", "--account-secret", "t1", "--account-secret", "t2\n"])
            .unwrap()
            .sim
            .to_config();
        assert_eq!(c.accounts, ["t1", "t2"]);
    }

    #[test]
    fn hard_modes_are_off_by_default_and_idempotency_is_honoured() {
        let c = Cli::try_parse_from(["x"]).unwrap().sim.to_config();
        assert_eq!(c.modes, Modes::default());
        assert!(c.honour_idempotency_key);
        assert_eq!(c.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(c.faults.retry_after_header, None);
    }

    #[test]
    fn hard_preset_and_explicit_flags() {
        let c = Cli::try_parse_from(["x", "--hard"])
            .unwrap()
            .sim
            .to_config();
        assert_eq!(c.modes.invisible_ms, 5000);
        assert!(c.modes.fixed_model_url);
        assert_eq!(c.modes.waiting_status.as_deref(), Some("queued"));
        assert!(!c.honour_idempotency_key);
        let c = Cli::try_parse_from([
            "x",
            "--hard",
            "--honour-idempotency-key",
            "--invisible-for",
            "2s",
            "--waiting-status",
            "pending",
            "--running-status",
            "in_progress",
            "--converged-reply",
            "data-null",
            "--reply-delay",
            "40s",
            "--retry-after-header",
            "-5",
            "--idle-timeout",
            "0s",
        ])
        .unwrap()
        .sim
        .to_config();
        assert!(c.honour_idempotency_key);
        assert_eq!(c.modes.invisible_ms, 2000);
        assert_eq!(c.modes.waiting_status.as_deref(), Some("pending"));
        assert_eq!(c.modes.running_status.as_deref(), Some("in_progress"));
        assert_eq!(c.modes.converged_reply, ConvergedReply::DataNull);
        assert_eq!(c.modes.reply_delay_ms, 40_000);
        assert_eq!(c.faults.retry_after_header.as_deref(), Some("-5"));
        assert_eq!(c.idle_timeout, None);
        let c = Cli::try_parse_from(["x", "--honour-idempotency-key=false"])
            .unwrap()
            .sim
            .to_config();
        assert!(!c.honour_idempotency_key);
        assert_eq!(c.modes, Modes::default());
    }

    #[test]
    fn modes_json_defaults_missing_fields() {
        let m: Modes =
            serde_json::from_str(r#"{"invisible_ms": 10, "converged_reply": "no-status"}"#)
                .unwrap();
        assert_eq!(m.invisible_ms, 10);
        assert_eq!(m.converged_reply, ConvergedReply::NoStatus);
        assert!(!m.fixed_model_url);
        assert_eq!(m.honour_idempotency_key, None);
        assert!(serde_json::from_str::<Modes>(r#"{"converged_reply": "sometimes"}"#).is_err());
    }

    #[test]
    fn rates_outside_0_1_are_refused() {
        assert!(Cli::try_parse_from(["x", "--drop-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["x", "--drop-rate", "abc"]).is_err());
    }

    #[test]
    fn faults_json_defaults_missing_fields() {
        let f: Faults =
            serde_json::from_str(r#"{"fail_rate_500": 1, "script": ["503", "drop", "pass"]}"#)
                .unwrap();
        assert_eq!(f.fail_rate_500, 1.0);
        assert_eq!(f.retry_after_secs, 1);
        assert_eq!(
            f.script,
            VecDeque::from([
                ScriptedFault::Unavailable,
                ScriptedFault::Drop,
                ScriptedFault::Pass
            ])
        );
    }
}
