//! What the convergence benchmark measures of processes, the operator and the API server.

use std::collections::BTreeMap;

use dynamics_test_process::clock_ticks;
use support::controlplane::ControlPlane;

use super::support;

// ---------------------------------------------------------------------------------------------
// Measurements of processes, the operator and the API server

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// utime+stime (all threads) and VmRSS/VmHWM of a process.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm)": state is field 3, utime 14, stime 15 (1-based, in proc(5)).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu_s: (utime + stime) / clock_ticks(),
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

pub fn self_sample() -> ProcSample {
    proc_sample(std::process::id()).unwrap_or_default()
}

/// The operator's counters from its /metrics.
#[derive(Debug, Clone, Default)]
pub struct OperatorMetrics {
    pub status_writes: f64,
    pub generations: f64,
    pub remote_calls: BTreeMap<String, f64>,
    pub reconciles: BTreeMap<String, f64>,
}

impl OperatorMetrics {
    pub fn remote(&self, endpoint: &str) -> f64 {
        self.remote_calls
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{endpoint}/")))
            .map(|(_, v)| v)
            .sum()
    }
    pub fn reconciles_total(&self) -> f64 {
        self.reconciles.values().sum()
    }
}

/// `name{labels} value` lines of the Prometheus/OpenMetrics text format.
pub fn metric_lines(text: &str) -> impl Iterator<Item = (&str, BTreeMap<&str, &str>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}')?;
                    let mut labels = BTreeMap::new();
                    // Label values here never contain `",`.
                    for pair in body.split("\",") {
                        let (k, v) = pair.split_once("=\"")?;
                        labels.insert(k.trim_start_matches(','), v.trim_end_matches('"'));
                    }
                    (name, labels)
                }
                None => (head, BTreeMap::new()),
            };
            Some((name, labels, value))
        })
}

pub async fn operator_metrics(
    http: &reqwest::Client,
    port: u16,
) -> anyhow::Result<OperatorMetrics> {
    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut m = OperatorMetrics::default();
    for (name, labels, value) in metric_lines(&text) {
        match name {
            "dynamics_operator_status_writes_total" => m.status_writes = value,
            "dynamics_operator_generations_total" => m.generations = value,
            "dynamics_operator_remote_calls_total" => {
                let key = format!(
                    "{}/{}",
                    labels.get("endpoint").unwrap_or(&"?"),
                    labels.get("code").unwrap_or(&"?")
                );
                *m.remote_calls.entry(key).or_default() += value;
            }
            "dynamics_operator_reconciles_total" => {
                let key = labels.get("result").unwrap_or(&"?").to_string();
                *m.reconciles.entry(key).or_default() += value;
            }
            _ => {}
        }
    }
    Ok(m)
}

/// The resources whose API-server requests the benchmark counts: the targets' own kinds, what
/// they write besides (Events, provider-http's ProviderConfigUsages) and Secrets. Not Leases:
/// the control plane renews its own all the time, and neither target elects a leader here.
pub const COUNTED_RESOURCES: [&str; 7] = [
    "agentdynamics",
    "dynamicsledgers",
    "requests",
    "disposablerequests",
    "providerconfigusages",
    "events",
    "secrets",
];

/// The API server's `apiserver_request_total` for [`COUNTED_RESOURCES`], summed by
/// "VERB resource[/subresource]" (all users: the benchmark's own creates and edits included).
/// Requests refused with 409 Conflict are also summed apart, as "409 VERB resource[/subresource]"
/// (never counted as writes by [`api_writes`]).
pub async fn apiserver_requests(
    cp: &ControlPlane,
    http: &reqwest::Client,
) -> Option<BTreeMap<String, f64>> {
    let token = cp.admin_token()?;
    let text = http
        .get(format!("{}/metrics", cp.server_url()))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    let mut out = BTreeMap::new();
    for (name, labels, value) in metric_lines(&text) {
        if name != "apiserver_request_total" {
            continue;
        }
        let resource = labels.get("resource").copied().unwrap_or("");
        if !COUNTED_RESOURCES.contains(&resource) {
            continue;
        }
        let verb = labels.get("verb").copied().unwrap_or("?");
        let key = match labels.get("subresource").copied().unwrap_or("") {
            "" => format!("{verb} {resource}"),
            sub => format!("{verb} {resource}/{sub}"),
        };
        if labels.get("code").copied() == Some("409") {
            *out.entry(format!("{CONFLICT_PREFIX}{key}")).or_default() += value;
        }
        *out.entry(key).or_default() += value;
    }
    Some(out)
}

/// How the requests refused with 409 Conflict are keyed in [`apiserver_requests`].
pub const CONFLICT_PREFIX: &str = "409 ";

/// Requests refused with 409 Conflict, all kinds.
pub fn api_conflicts(requests: &BTreeMap<String, f64>) -> f64 {
    requests
        .iter()
        .filter(|(k, _)| k.starts_with(CONFLICT_PREFIX))
        .map(|(_, v)| v)
        .sum()
}

pub fn api_writes(requests: &BTreeMap<String, f64>, resource: &str) -> f64 {
    requests
        .iter()
        .filter(|(k, _)| {
            let (verb, res) = k.split_once(' ').unwrap_or(("", ""));
            matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
                && (res == resource || res.starts_with(&format!("{resource}/")))
        })
        .map(|(_, v)| v)
        .sum()
}

pub fn diff_map(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}
