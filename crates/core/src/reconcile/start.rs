//! When a process that has just started (or just became leader) first looks at an object.
//!
//! A look costs one GET on the customer's account. An object that is Ready for its current
//! generation with nothing pending was converged by the previous process, which looked at it
//! once per resync window from the moment it became Ready: the new process keeps that rhythm,
//! so its first look comes when the previous process would have looked next, not at its start.
//! Objects that became Ready at the same moment are spread over the tenth of the window after
//! that point by their uid; an object whose Ready time is unknown (or in the future: a skewed clock) gets a point
//! of the whole window fixed by its uid. Either way 10,000 settled objects are looked at as
//! they would have been without the restart, rollout or failover, not all at once. An object
//! with work pending (no finalizer yet, a spec not yet observed, a generation marker, a
//! generation running, an error being retried, a refresh or a resolution asked for, a
//! deletion) is looked at immediately.
//!
//! The same rule tells the account's rate limit which calls matter: those of an object with
//! work pending go ahead of the resyncs of settled ones.

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;

use crate::resource::status::{CONDITION_READY, CONDITION_RECONCILING, CONDITION_STALLED};
use crate::resource::{AgentDynamics, FINALIZER, RECONCILE_REQUESTED_AT, RESOLVE};

/// Whether `obj` is settled: converged for its current spec, nothing asked of it that its status
/// has not answered. Reads the object only (the annotations kept in the operator's cache).
pub fn is_settled(obj: &AgentDynamics) -> bool {
    let Some(status) = &obj.status else {
        return false;
    };
    let generation = obj.metadata.generation;
    let condition = |type_: &str| {
        status
            .condition(type_)
            .filter(|c| c.observed_generation == generation)
            .map(|c| c.status == "True")
    };
    let asked = |annotation: &str, handled: &Option<String>| {
        obj.annotations()
            .get(annotation)
            .is_some_and(|v| Some(v) != handled.as_ref())
    };
    obj.metadata.deletion_timestamp.is_none()
        && !obj.spec.suspend
        && obj.finalizers().iter().any(|f| f == FINALIZER)
        && generation.is_some()
        && status.observed_generation == generation
        && condition(CONDITION_READY) == Some(true)
        && condition(CONDITION_RECONCILING) != Some(true)
        && condition(CONDITION_STALLED) != Some(true)
        && status.pending_generation.is_none()
        && !asked(RECONCILE_REQUESTED_AT, &status.last_handled_reconcile_at)
        && !asked(RESOLVE, &status.last_handled_resolve)
}

/// Whether `obj` holds a change of its user's that no pass has answered yet (a spec edited
/// since its status was written, a refresh or a resolution asked for) on an object a pass has
/// taken in before (our finalizer and a status). Such an object is worth a pass before a
/// restart's first list is complete: its user is waiting, where the other unsettled objects
/// (a generation running, an error being retried) keep a rhythm of their own. New and deleted
/// objects are left to the list's end: their passes go through the finalizer first.
pub fn user_waiting(obj: &AgentDynamics) -> bool {
    let Some(status) = &obj.status else {
        return false;
    };
    let asked = |annotation: &str, handled: &Option<String>| {
        obj.annotations()
            .get(annotation)
            .is_some_and(|v| Some(v) != handled.as_ref())
    };
    obj.metadata.deletion_timestamp.is_none()
        && obj.finalizers().iter().any(|f| f == FINALIZER)
        && (obj.metadata.generation > status.observed_generation
            || asked(RECONCILE_REQUESTED_AT, &status.last_handled_reconcile_at)
            || asked(RESOLVE, &status.last_handled_resolve))
}

/// How long after `now` (a start) the first look at `obj` comes: at once when it is not
/// settled, else at the next point of its resync rhythm plus its place in the following tenth
/// of the window (see the module's comment).
pub fn first_look(obj: &AgentDynamics, resync: Duration, now: Timestamp) -> Duration {
    if !is_settled(obj) || resync.is_zero() {
        return Duration::ZERO;
    }
    let uid = obj.uid().unwrap_or_default();
    let ready_since = obj
        .status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_READY))
        .map(|c| c.last_transition_time.0)
        .filter(|since| *since <= now);
    let Some(since) = ready_since else {
        return spread(&uid, resync);
    };
    let window = resync.as_millis();
    let elapsed = (now - since)
        .total(jiff::Unit::Millisecond)
        .map_or(0, |ms| ms.max(0.0) as u128);
    // The rest of the current window, then the object's place among those Ready together
    // (never wrapped round to the start: an object just Ready is not looked at again soon).
    let left = window - elapsed % window;
    Duration::from_millis(left as u64) + spread(&uid, resync / 10)
}

/// A point in `[0, window)` fixed by `uid`: the same after every restart and on every replica,
/// and even over the window for uids (random by the API server) of any number of objects.
pub fn spread(uid: &str, window: Duration) -> Duration {
    // FNV-1a: stable across builds and processes, unlike the std hasher's random keys.
    let hash = uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let window_ms = window.as_millis().min(u128::from(u64::MAX)) as u64;
    if window_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(hash % window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{AgentDynamicsSpec, AgentDynamicsStatus, PendingGeneration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const RESYNC: Duration = Duration::from_secs(600);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    /// The start in the tests; the objects became Ready at `at(0)`.
    fn now() -> Timestamp {
        at(1_000_000)
    }

    fn condition(type_: &str, status: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: Time(at(0)),
            observed_generation: Some(generation),
        }
    }

    /// Ready for generation 3, with its finalizer: what a previous process left behind.
    fn settled() -> AgentDynamics {
        let mut o = AgentDynamics::new(
            "a",
            AgentDynamicsSpec {
                agent_id: "A1".into(),
                ..Default::default()
            },
        );
        o.metadata.namespace = Some("ns".into());
        o.metadata.uid = Some("0b7d2c1e-5a4f-4f7e-9f1a-3c2b1d0e9f8a".into());
        o.metadata.generation = Some(3);
        o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        o.status = Some(AgentDynamicsStatus {
            observed_generation: Some(3),
            conditions: vec![
                condition(CONDITION_READY, "True", 3),
                condition(CONDITION_RECONCILING, "False", 3),
                condition(CONDITION_STALLED, "False", 3),
            ],
            remote_status: Some("ready".into()),
            generations: 1,
            ..Default::default()
        });
        o
    }

    fn status(o: &mut AgentDynamics) -> &mut AgentDynamicsStatus {
        o.status.as_mut().unwrap()
    }

    fn annotate(o: &mut AgentDynamics, key: &str, value: &str) {
        o.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
    }

    #[test]
    fn only_settled_objects_wait_for_their_point_in_the_window() {
        type Change = fn(&mut AgentDynamics);
        // (what differs from a settled object, settled?)
        let rows: Vec<(&str, Change, bool)> = vec![
            ("nothing", |_| {}, true),
            (
                "a newer spec not yet observed",
                |o| o.metadata.generation = Some(4),
                false,
            ),
            ("no status at all", |o| o.status = None, false),
            ("no finalizer yet", |o| o.metadata.finalizers = None, false),
            (
                "being deleted",
                |o| o.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH)),
                false,
            ),
            ("suspended", |o| o.spec.suspend = true, false),
            (
                "Ready=False (a generation running)",
                |o| status(o).conditions[0].status = "False".into(),
                false,
            ),
            (
                "Ready for an older generation",
                |o| status(o).conditions[0].observed_generation = Some(2),
                false,
            ),
            (
                "still Reconciling",
                |o| status(o).conditions[1].status = "True".into(),
                false,
            ),
            (
                "Stalled (an error being retried)",
                |o| status(o).conditions[2].status = "True".into(),
                false,
            ),
            (
                "a generate marker",
                |o| {
                    status(o).pending_generation = Some(PendingGeneration {
                        inputs_hash: "h".into(),
                        since: "2026-01-01T00:00:00Z".into(),
                        outcome: None,
                        previous_remote_status: None,
                        previous_model_url: None,
                        previous_gestures: vec![],
                        previous_hidden: false,
                        ledger_first: false,
                    })
                },
                false,
            ),
            (
                "a refresh asked for",
                |o| annotate(o, RECONCILE_REQUESTED_AT, "t1"),
                false,
            ),
            (
                "a refresh already handled",
                |o| {
                    annotate(o, RECONCILE_REQUESTED_AT, "t1");
                    status(o).last_handled_reconcile_at = Some("t1".into());
                },
                true,
            ),
            (
                "a resolution asked for",
                |o| annotate(o, RESOLVE, "accept-1"),
                false,
            ),
            (
                "a resolution already handled",
                |o| {
                    annotate(o, RESOLVE, "accept-1");
                    status(o).last_handled_resolve = Some("accept-1".into());
                },
                true,
            ),
        ];
        for (why, change, expected) in rows {
            let mut o = settled();
            change(&mut o);
            assert_eq!(is_settled(&o), expected, "{why}");
            let at = first_look(&o, RESYNC, now());
            if expected {
                assert!(
                    !at.is_zero() && at < RESYNC,
                    "{why}: within the window, {at:?}"
                );
            } else {
                assert_eq!(at, Duration::ZERO, "{why}: at once");
            }
        }
    }

    #[test]
    fn a_users_unanswered_change_is_worth_a_pass_before_the_list_ends() {
        type Change = fn(&mut AgentDynamics);
        // (what differs from a settled object, its user waits?)
        let rows: Vec<(&str, Change, bool)> = vec![
            ("nothing", |_| {}, false),
            ("an edit", |o| o.metadata.generation = Some(4), true),
            (
                "an edit to suspend",
                |o| {
                    o.metadata.generation = Some(4);
                    o.spec.suspend = true;
                },
                true,
            ),
            (
                "a refresh asked for",
                |o| annotate(o, RECONCILE_REQUESTED_AT, "t1"),
                true,
            ),
            (
                "a refresh already handled",
                |o| {
                    annotate(o, RECONCILE_REQUESTED_AT, "t1");
                    status(o).last_handled_reconcile_at = Some("t1".into());
                },
                false,
            ),
            (
                "a resolution asked for",
                |o| annotate(o, RESOLVE, "accept-1"),
                true,
            ),
            (
                "an error being retried (its own rhythm)",
                |o| status(o).conditions[2].status = "True".into(),
                false,
            ),
            (
                "an edit of an object never taken in (no status)",
                |o| {
                    o.metadata.generation = Some(4);
                    o.status = None;
                },
                false,
            ),
            (
                "an edit before the finalizer",
                |o| {
                    o.metadata.generation = Some(4);
                    o.metadata.finalizers = None;
                },
                false,
            ),
            (
                "an edit of an object being deleted",
                |o| {
                    o.metadata.generation = Some(4);
                    o.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
                },
                false,
            ),
        ];
        for (why, change, expected) in rows {
            let mut o = settled();
            change(&mut o);
            assert_eq!(user_waiting(&o), expected, "{why}");
        }
    }

    /// (Ready since, seconds to the first look), the uid's place among objects Ready together
    /// aside: the previous process's rhythm goes on.
    #[test]
    fn a_settled_object_is_first_looked_at_when_its_resync_would_have_come() {
        let o = settled();
        let jitter = spread(&o.uid().unwrap(), RESYNC / 10).as_millis() as u64;
        let start = 1_000_000;
        let rows: &[(i64, u64, &str)] = &[
            (start - 60, 540, "Ready a minute ago: nine minutes left"),
            (
                start - 600 - 60,
                540,
                "and a whole window earlier: the same",
            ),
            (start - 1, 599, "Ready just now: the whole window"),
        ];
        for (since, left, why) in rows {
            let mut o = o.clone();
            status(&mut o).conditions[0].last_transition_time = Time(at(*since));
            let expected = left * 1000 + jitter;
            assert_eq!(
                first_look(&o, RESYNC, at(start)).as_millis() as u64,
                expected,
                "{why}"
            );
        }
        // A Ready time in the future (a skewed clock): the uid's point in the whole window.
        let mut skewed = o.clone();
        status(&mut skewed).conditions[0].last_transition_time = Time(at(start + 5));
        assert_eq!(
            first_look(&skewed, RESYNC, at(start)),
            spread(&o.uid().unwrap(), RESYNC)
        );
    }

    /// Objects that became Ready at the same moment (a bulk import) are spread over a tenth of
    /// the window, about evenly, rather than all looked at together.
    #[test]
    fn objects_ready_together_are_spread_over_a_tenth_of_the_window() {
        let mut seconds = std::collections::BTreeMap::<u64, u32>::new();
        for i in 0..6000u32 {
            let mut o = settled();
            o.metadata.uid = Some(format!(
                "{:08x}-1d2e-4f3a-8b9c-{:012x}",
                i.wrapping_mul(2_654_435_761),
                i
            ));
            let first = first_look(&o, RESYNC, at(300));
            assert!(
                first >= Duration::from_secs(300) && first < Duration::from_secs(360),
                "{first:?}"
            );
            *seconds.entry(first.as_secs()).or_default() += 1;
        }
        assert_eq!(seconds.len(), 60, "every second of the tenth gets some");
        assert!(
            seconds.values().all(|n| (50..=150).contains(n)),
            "{seconds:?}"
        );
    }

    #[test]
    fn the_point_is_fixed_by_the_uid_and_even_over_the_window() {
        let uid = "0b7d2c1e-5a4f-4f7e-9f1a-3c2b1d0e9f8a";
        assert_eq!(
            spread(uid, RESYNC),
            spread(uid, RESYNC),
            "the same every time"
        );
        assert_eq!(spread(uid, Duration::ZERO), Duration::ZERO);
        // 10,000 uids shaped like the API server's, in 60 one-tenth buckets of the window: a
        // minute of a ten-minute resync gets about a tenth of them, never a burst.
        let n = 10_000u32;
        let mut buckets = [0u32; 10];
        for i in 0..n {
            let uid = format!(
                "{:08x}-1d2e-4f3a-8b9c-{:012x}",
                i.wrapping_mul(2_654_435_761),
                i
            );
            let at = spread(&uid, RESYNC);
            assert!(at < RESYNC);
            buckets[(at.as_secs() / 60) as usize] += 1;
        }
        for (minute, count) in buckets.iter().enumerate() {
            assert!(
                (800..=1200).contains(count),
                "minute {minute} of the window holds {count} of {n}: {buckets:?}"
            );
        }
    }
}
