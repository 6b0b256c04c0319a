//! Named crash points (and a clock that can be set wrong) for the crash-window tests and the chaos campaign. A process started with
//! `DYNAMICS_FAILPOINTS=after-marker-saved,after-generate-sent@0.2` exits at once (code 86, no
//! cleanup, like a SIGKILL) when it reaches a named point: always, or with the given probability,
//! drawn from `DYNAMICS_FAILPOINT_SEED` so a campaign replays. Unset, `hit` is one atomic load.

use std::sync::{Mutex, OnceLock};

use rand::{rngs::StdRng, Rng, SeedableRng};

/// The pending marker is saved; the generate call is not sent yet.
pub const AFTER_MARKER_SAVED: &str = "after-marker-saved";
/// The generate call is sent and the server answered its headers; the body is not read yet.
pub const AFTER_GENERATE_SENT: &str = "after-generate-sent";
/// The generate reply is read; the status that records it is not written yet.
pub const AFTER_GENERATE_REPLY: &str = "after-generate-reply";

/// Exit code of a process stopped by a failpoint.
pub const EXIT_CODE: i32 = 86;

struct Points {
    armed: Vec<(String, f64)>,
    rng: Mutex<StdRng>,
}

fn points() -> &'static Option<Points> {
    static POINTS: OnceLock<Option<Points>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("DYNAMICS_FAILPOINTS").ok()?;
        let seed = std::env::var("DYNAMICS_FAILPOINT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Some(Points {
            armed: parse(&spec),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    })
}

/// `name` or `name@probability`, comma-separated; a probability that does not parse counts as 1.
fn parse(spec: &str) -> Vec<(String, f64)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('@') {
            Some((name, p)) => (name.to_string(), p.parse().unwrap_or(1.0)),
            None => (item.to_string(), 1.0),
        })
        .collect()
}

/// Exit the process here if `name` is armed (and its draw says so).
pub fn hit(name: &str) {
    let Some(points) = points() else { return };
    let Some((_, p)) = points.armed.iter().find(|(n, _)| n == name) else {
        return;
    };
    let fire = *p >= 1.0
        || points
            .rng
            .lock()
            .map(|mut r| r.random_bool(p.clamp(0.0, 1.0)))
            .unwrap_or(true);
    if fire {
        eprintln!("failpoint {name} hit");
        std::process::exit(EXIT_CODE);
    }
}

/// The time this process takes for now: the system clock, shifted by `DYNAMICS_CLOCK_SKEW`
/// seconds (signed) when set, so the chaos campaign can run one replica with a wrong clock.
/// Unset, it is the system clock plus one atomic load.
pub fn now() -> jiff::Timestamp {
    static SKEW: OnceLock<i64> = OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("DYNAMICS_CLOCK_SKEW")
            .ok()
            .and_then(|s| s.trim().trim_start_matches('+').parse().ok())
            .unwrap_or(0)
    });
    let now = jiff::Timestamp::now();
    if skew == 0 {
        return now;
    }
    now.checked_add(jiff::SignedDuration::from_secs(skew))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_probabilities() {
        assert_eq!(
            parse("after-marker-saved, after-generate-sent@0.25,,x@nope"),
            vec![
                ("after-marker-saved".to_string(), 1.0),
                ("after-generate-sent".to_string(), 0.25),
                ("x".to_string(), 1.0),
            ]
        );
    }
}
