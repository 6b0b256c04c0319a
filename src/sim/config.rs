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
        }
    }
}

/// Everything the simulator needs to start.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The one account's api-secret.
    pub secret: String,
    /// How long one generation runs once it has a worker.
    pub generation_time: Duration,
    /// Generations running at once per account; 0 = unlimited.
    pub max_concurrent: usize,
    /// Initial credit balance.
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
    /// Generations running at once; further ones wait in "processing" (0 = unlimited).
    #[arg(long, default_value_t = 2)]
    pub max_concurrent: usize,
    /// Initial credit balance.
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
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            secret: self.secret.trim_end().to_string(),
            generation_time: self.generation_time,
            max_concurrent: self.max_concurrent,
            credits: self.credits,
            cost: self.cost,
            reply_shape: self.reply_shape,
            update_reply_shape: self.update_reply_shape,
            faults: Faults {
                fail_rate_500: self.fail_rate_500,
                fail_rate_503: self.fail_rate_503,
                rate_limit_rate: self.rate_limit_rate,
                retry_after_secs: self.retry_after,
                latency_ms: self.latency.as_millis() as u64,
                drop_rate: self.drop_rate,
                fail_generation_rate: self.fail_generation_rate,
                script: VecDeque::new(),
            },
            seed: self.seed,
            ..SimConfig::default()
        }
    }
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
