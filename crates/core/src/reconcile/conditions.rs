//! The three kstatus conditions (Ready, Reconciling, Stalled) from one summary of the object's
//! health. A condition's lastTransitionTime moves only when its status flips, so an unchanged
//! object gets byte-identical conditions and no status write.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::resource::status::{CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED};

/// Where an object stands after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Generated (or adopted), applied and in sync with the spec. `reason` is `Ready`, or
    /// `Adopted` when the dynamics were there before this object and it bought nothing.
    Ready { reason: String, message: String },
    /// Work is under way (generating, waiting for a slot, backing off after a transient error).
    Progressing { reason: String, message: String },
    /// Cannot progress until something outside changes (the spec, a Secret, the account).
    Stalled { reason: String, message: String },
    /// `spec.suspend` is true. Ready is True (reason Suspended): nothing is pending, so tools
    /// that wait for every object (kstatus: Flux `wait: true`, kpt, Config Sync) finish; it
    /// says nothing about the remote, which is neither read nor changed.
    Suspended,
}

impl Health {
    pub fn ready(message: impl Into<String>) -> Self {
        Health::Ready {
            reason: "Ready".into(),
            message: message.into(),
        }
    }

    pub fn progressing(reason: &str, message: impl Into<String>) -> Self {
        Health::Progressing {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Health::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Health::Ready { reason, .. }
            | Health::Progressing { reason, .. }
            | Health::Stalled { reason, .. } => reason,
            Health::Suspended => "Suspended",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Health::Ready { message, .. }
            | Health::Progressing { message, .. }
            | Health::Stalled { message, .. } => message,
            Health::Suspended => "spec.suspend is true: nothing is read or changed remotely",
        }
    }

    /// (type, status) triples as kstatus reads them.
    fn statuses(&self) -> [(&'static str, bool); 3] {
        let (ready, reconciling, stalled) = match self {
            Health::Ready { .. } => (true, false, false),
            Health::Progressing { .. } => (false, true, false),
            Health::Stalled { .. } => (false, false, true),
            Health::Suspended => (true, false, false),
        };
        [
            (CONDITION_READY, ready),
            (CONDITION_RECONCILING, reconciling),
            (CONDITION_STALLED, stalled),
        ]
    }
}

/// The conditions for `health` at `generation`, keeping the transition times of those whose status
/// did not change. `now` is truncated to seconds, as the API server stores it.
pub fn conditions(
    existing: &[Condition],
    health: &Health,
    generation: i64,
    now: Timestamp,
) -> Vec<Condition> {
    let now = Timestamp::from_second(now.as_second()).expect("whole seconds are in range");
    health
        .statuses()
        .into_iter()
        .map(|(type_, is_true)| {
            let status = if is_true { "True" } else { "False" };
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: health.reason().to_string(),
                message: health.message().to_string(),
                observed_generation: Some(generation),
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn status_of<'a>(conds: &'a [Condition], t: &str) -> &'a str {
        &conds.iter().find(|c| c.type_ == t).unwrap().status
    }

    #[test]
    fn each_health_sets_kstatus_conditions() {
        let cases = [
            (Health::ready("ok"), ["True", "False", "False"]),
            (
                Health::progressing("Generating", "g"),
                ["False", "True", "False"],
            ),
            (
                Health::stalled("Unauthorized", "u"),
                ["False", "False", "True"],
            ),
            // Done as far as waiting tools go: kstatus reads it Current.
            (Health::Suspended, ["True", "False", "False"]),
        ];
        for (health, want) in cases {
            let conds = conditions(&[], &health, 3, at(100));
            let got = [
                status_of(&conds, "Ready"),
                status_of(&conds, "Reconciling"),
                status_of(&conds, "Stalled"),
            ];
            assert_eq!(got, want, "{health:?}");
            assert!(conds
                .iter()
                .all(|c| c.observed_generation == Some(3) && c.reason == health.reason()));
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = conditions(&[], &Health::progressing("Generating", "a"), 1, at(100));
        let again = conditions(&first, &Health::progressing("Generating", "a"), 1, at(200));
        assert_eq!(
            first, again,
            "an unchanged pass must produce identical conditions"
        );

        let ready = conditions(&again, &Health::ready("ok"), 1, at(300));
        let ready_cond = ready.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready_cond.last_transition_time, Time(at(300)));
        // Stalled stayed False: its time is kept.
        let stalled = ready.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.last_transition_time, Time(at(100)));
    }

    #[test]
    fn sub_second_clock_does_not_leak_into_status() {
        let now = Timestamp::from_millisecond(100_750).unwrap();
        let conds = conditions(&[], &Health::Suspended, 1, now);
        assert_eq!(conds[0].last_transition_time, Time(at(100)));
    }
}
