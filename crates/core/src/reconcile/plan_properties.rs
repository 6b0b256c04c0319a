//! `plan` as a property, over random specs, statuses, remote observations and clocks: it never
//! panics, never buys a key that is bought or pending, never buys while the API works, and never
//! asks to be called again at once.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;

use super::desired::inputs_hash;
use super::ledger::{Asker, LedgerState};
use super::plan::*;
use crate::resource::{
    AgentDynamicsSpec, AgentDynamicsStatus, DynamicsLedgerSpec, GenerateOutcome, LedgerHolder,
    LedgerPurchase, PendingGeneration,
};
use crate::wire::{ApiErrorKind, DynamicsState, RemoteStatus};

const NOW: i64 = 1_800_000_000;

fn text(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(values).prop_map(|s| Some(s.to_string()))
    ]
}

fn spec() -> impl Strategy<Value = AgentDynamicsSpec> {
    (
        text(&["", "https://x/a.jpg"]),
        prop_oneof![Just(None), (1u32..=10).prop_map(Some)],
        text(&["", "kling", "seedance"]),
        prop_oneof![
            Just(None),
            Just(Some(vec![])),
            Just(Some(vec!["wave".to_string()]))
        ],
        text(&["", "a", "b"]),
        any::<bool>(),
    )
        .prop_map(
            |(image_url, duration, model, motion_prompts, regenerate, suspend)| AgentDynamicsSpec {
                agent_id: "A91XMB7113".into(),
                image_url,
                duration,
                model,
                motion_prompts,
                regenerate,
                suspend,
                ..Default::default()
            },
        )
}

fn remote_status() -> impl Strategy<Value = Option<String>> {
    text(&[
        "processing",
        "generating",
        "completed",
        "ready",
        "failed",
        "queued",
        "",
    ])
}

fn url() -> impl Strategy<Value = Option<String>> {
    text(&["https://m/1.bin", "https://m/2.bin"])
}

fn stamp() -> impl Strategy<Value = String> {
    prop_oneof![
        (-10_000_000i64..10_000_000)
            .prop_map(|d| Timestamp::from_second(NOW + d).unwrap().to_string()),
        Just("not a time".to_string()),
    ]
}

/// A status whose hashes come from other random specs (so they match the current one sometimes).
fn status() -> impl Strategy<Value = AgentDynamicsStatus> {
    let marker = (
        spec(),
        stamp(),
        prop_oneof![
            Just(None),
            Just(Some(GenerateOutcome::Accepted)),
            Just(Some(GenerateOutcome::Unknown))
        ],
        remote_status(),
        url(),
        any::<bool>(),
    )
        .prop_map(
            |(s, since, outcome, previous_remote_status, previous_model_url, previous_hidden)| {
                PendingGeneration {
                    inputs_hash: inputs_hash(&s),
                    since,
                    outcome,
                    previous_remote_status,
                    previous_model_url,
                    previous_gestures: vec![],
                    previous_hidden,
                    ledger_first: false,
                }
            },
        );
    (
        proptest::option::of(spec()),
        proptest::collection::vec(spec(), 0..3),
        proptest::option::of(marker),
        0i64..4,
        proptest::option::of(0i64..4),
        proptest::option::of(stamp()),
    )
        .prop_map(
            |(bought, earlier, pending_generation, generations, applied, last)| {
                AgentDynamicsStatus {
                    generate_hash: bought.as_ref().map(inputs_hash),
                    bought_keys: earlier.iter().chain(&bought).map(inputs_hash).collect(),
                    pending_generation,
                    generations,
                    applied_for_generation: applied,
                    last_generation_time: last,
                    ..Default::default()
                }
            },
        )
}

/// The agent's record: not read yet, unreadable, or holding some specs' keys (the last one
/// latest), held by this object, another one, or nobody.
fn ledger() -> impl Strategy<Value = Option<LedgerState>> {
    let record = (
        proptest::collection::vec(spec(), 0..3),
        proptest::sample::select(vec![None, Some("agents/me"), Some("team-b/other")]),
    )
        .prop_map(|(specs, holder)| {
            let record = DynamicsLedgerSpec {
                agent_id: "A91XMB7113".into(),
                holder: holder.map(|object| LedgerHolder {
                    object: object.into(),
                    uid: format!("uid-{object}"),
                }),
                purchases: specs
                    .iter()
                    .map(|s| LedgerPurchase {
                        key: inputs_hash(s),
                        inputs: None,
                        at: "2026-12-01T00:00:00Z".into(),
                        object: "agents/earlier".into(),
                        uid: "uid-earlier".into(),
                        calls: 1,
                    })
                    .collect(),
                spend: vec![],
            };
            Some(LedgerState::Read {
                record: Some(record),
                version: Some("1".into()),
            })
        });
    prop_oneof![
        Just(None),
        Just(Some(LedgerState::Unavailable("unreadable".into()))),
        Just(Some(LedgerState::Read {
            record: None,
            version: None
        })),
        record,
    ]
}

fn observation() -> impl Strategy<Value = Option<Observation>> {
    let kinds = ApiErrorKind::ALL;
    let found = (remote_status(), url()).prop_map(|(status, model_url)| {
        Some(Observation::Found(DynamicsState {
            agent_id: "A91XMB7113".into(),
            status: status.map(|s| RemoteStatus::parse(&s)),
            model_url,
            gestures: BTreeMap::new(),
            error_message: None,
        }))
    });
    let failed = (
        proptest::sample::select(kinds.to_vec()),
        proptest::option::of(prop_oneof![Just(u64::MAX), 0u64..100_000]),
    )
        .prop_map(|(kind, after)| {
            Some(Observation::Failed(RemoteError {
                retry_after: after.map(Duration::from_secs),
                ..RemoteError::of_kind(kind, "error")
            }))
        });
    prop_oneof![Just(None), found, failed]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn plan_never_buys_a_bought_or_pending_key_nor_loops_hot(
        spec in spec(),
        status in status(),
        remote in observation(),
        ledger in ledger(),
        record_outdated in any::<bool>(),
        deleting in any::<bool>(),
        clock in -10_000_000i64..10_000_000,
        failures in 0u32..64,
    ) {
        let settings = Settings::default();
        let input = Input {
            approval: Approval::default(),
            asker: Asker { object: "agents/me", uid: "uid-agents/me" },
            spec: &spec,
            status: &status,
            generation: 1,
            requested_at: None,
            resolve: None,
            deleting,
            blocker: None,
            remote: remote.as_ref(),
            ledger: ledger.as_ref(),
            record_outdated,
            failures,
            timing: None,
            now: Timestamp::from_second(NOW + clock).unwrap(),
            settings: &settings,
        };
        let action = plan(&input);
        let key = inputs_hash(&spec);
        if let Action::Generate(generate) = &action {
            prop_assert_eq!(&generate.inputs_hash, &key);
            prop_assert!(!status.was_bought(&key), "bought key bought again");
            let pending = status.pending_generation.as_ref().map(|p| p.inputs_hash.as_str());
            prop_assert_ne!(pending, Some(key.as_str()), "pending key bought again");
            prop_assert!(!deleting && !spec.suspend);
            let busy = matches!(&remote, Some(Observation::Found(r))
                if r.status.as_ref().is_some_and(RemoteStatus::is_in_progress));
            prop_assert!(!busy, "bought while the API works");
            prop_assert!(matches!(remote, Some(Observation::Found(_))), "bought without a GET");
            // Never against the ledger: read, not held by another object, the key not on it.
            let Some(LedgerState::Read { record, .. }) = &ledger else {
                return Err(TestCaseError::fail("bought without reading the ledger"));
            };
            if let Some(record) = record {
                prop_assert!(record.holder.as_ref().is_none_or(|h| h.object == "agents/me"), "bought for an agent another object holds");
                prop_assert!(record.purchases.iter().all(|p| p.key != key), "bought a key on the ledger");
            }
            // And the record written first carries it.
            prop_assert_eq!(&generate.ledger.record.purchases.last().map(|p| p.key.clone()), &Some(key.clone()));
        }
        if let Action::Adopt(adopt) = &action {
            prop_assert_eq!(&adopt.inputs_hash, &key);
            prop_assert!(!deleting && !spec.suspend);
        }
        if let Action::Report(report) = &action {
            let floor = settings.poll_min.min(settings.backoff_base);
            prop_assert!(report.requeue() >= floor, "requeue {:?}", report.requeue());
            prop_assert!(report.requeue() <= settings.resync.max(MAX_REMOTE_WAIT).max(settings.stalled_retry));
        }
    }
}
