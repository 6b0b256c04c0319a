//! Property tests: the parsers that read what the remote API and users send
//! (reply bodies, Retry-After, manifests) never panic, stay fast, and keep
//! their promises under random and hostile input.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dynamics_operator::api::{
    parse_generate, parse_retry_after, parse_state, parse_update, RemoteErrorBody, MAX_REMOTE_WAIT,
};
use dynamics_operator::filemode::manifests::{load_text, Loaded};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Arbitrary JSON, biased towards the keys the parsers look at.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("success".to_string()),
        Just("data".to_string()),
        Just("status".to_string()),
        Just("dynamics".to_string()),
        Just("url".to_string()),
        Just("gestures".to_string()),
        Just("agent_id".to_string()),
        Just("regeneration_status".to_string()),
        Just("error".to_string()),
        Just("code".to_string()),
        Just("details".to_string()),
        Just("name".to_string()),
        "\\PC{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        Just(json!("https://storage.supabase.co/dynamics-model.bin")),
        Just(json!("ready")),
        Just(json!("queued")),
        Just(json!("INSUFFICIENT_CREDITS")),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Every reply parser on the same body; none may panic.
fn parse_all(body: &[u8]) {
    let _ = parse_state(body, "agent");
    let _ = parse_generate(body);
    let _ = parse_update(body);
    let _ = RemoteErrorBody::parse(body);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn reply_parsers_survive_random_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&body);
    }

    #[test]
    fn reply_parsers_survive_random_json(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        parse_all(&body);
        // Wrapped as the API would, too.
        let wrapped = serde_json::to_vec(&json!({"success": true, "data": v})).unwrap();
        parse_all(&wrapped);
        // `data` is read when it is an object or null, refused otherwise.
        let state = parse_state(&wrapped, "agent");
        prop_assert_eq!(state.is_ok(), v.is_object() || v.is_null(), "{:?}", state);
    }

    #[test]
    fn success_false_is_always_an_error(v in json_value()) {
        let mut obj = json!({"success": false});
        obj["data"] = v;
        let body = serde_json::to_vec(&obj).unwrap();
        prop_assert!(parse_state(&body, "a").is_err());
        prop_assert!(parse_generate(&body).is_err());
        prop_assert!(parse_update(&body).is_err());
    }

    #[test]
    fn retry_after_never_panics_and_never_exceeds_the_cap(value in "\\PC{0,40}", now_secs in 0u64..=253_402_300_799) {
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        if let Some(d) = parse_retry_after(&value, now) {
            prop_assert!(d <= MAX_REMOTE_WAIT, "{value:?} gave {d:?}");
        }
    }

    #[test]
    fn retry_after_any_seconds(secs in any::<u64>(), pad in "[ \t]{0,3}") {
        let d = parse_retry_after(&format!("{pad}{secs}{pad}"), SystemTime::now());
        prop_assert_eq!(d, Some(Duration::from_secs(secs).min(MAX_REMOTE_WAIT)));
    }

    #[test]
    fn retry_after_any_date(
        year in 1i64..=9999,
        month in 0usize..12,
        day in 1u32..=31,
        (h, m, s) in (0u32..24, 0u32..60, 0u32..61),
        now_secs in 0u64..=253_402_300_799,
    ) {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let value = format!("Mon, {day:02} {} {year:04} {h:02}:{m:02}:{s:02} GMT", MONTHS[month]);
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let d = parse_retry_after(&value, now);
        prop_assert!(d.is_some_and(|d| d <= MAX_REMOTE_WAIT), "{value}: {d:?}");
    }

    #[test]
    fn retry_after_hostile_numbers(
        digits in "[0-9]{1,60}",
        sign in prop_oneof![Just(""), Just("-"), Just("+")],
        frac in prop_oneof![Just(String::new()), "\\.[0-9]{1,20}", "e[0-9]{1,4}", "e-[0-9]{1,4}"],
    ) {
        let value = format!("{sign}{digits}{frac}");
        let d = parse_retry_after(&value, SystemTime::now());
        if let Some(d) = d {
            prop_assert!(d <= MAX_REMOTE_WAIT, "{value}: {d:?}");
        }
        if sign == "-" && digits.bytes().any(|b| b != b'0') {
            prop_assert_eq!(d, None, "negative {}", value);
        }
    }

    #[test]
    fn manifests_survive_random_text(text in "\\PC{0,300}", json in any::<bool>()) {
        let mut loaded = Loaded::default();
        let t = Instant::now();
        load_text(&mut loaded, "random.yaml", &text, json);
        prop_assert!(t.elapsed() < Duration::from_secs(2));
        for e in &loaded.errors {
            let shown = e.to_string();
            prop_assert!(shown.starts_with("random.yaml (document "), "{shown}");
            prop_assert!(!e.error.field.is_empty());
        }
    }

    #[test]
    fn manifests_survive_yaml_shaped_noise(
        parts in prop::collection::vec(prop_oneof![
            Just("apiVersion: dynamics.bithuman.ai/v1alpha1\n"),
            Just("kind: AgentDynamics\n"),
            Just("metadata: {name: x}\n"),
            Just("spec:\n"),
            Just("  agentId: A1\n"),
            Just("  agentId: A2\n"),
            Just("  dynamics: {enabled: true}\n"),
            Just("---\n"),
            Just("[[[{"),
            Just("]}"),
            Just("&a [*a, *a]\n"),
            Just("<<: *a\n"),
            Just("!!binary x\n"),
            Just("- - - "),
            Just("'"),
            Just("\""),
            Just("\t"),
            Just("# c\n"),
            Just("? "),
            Just(": "),
        ], 0..40),
        json in any::<bool>(),
    ) {
        let text: String = parts.concat();
        let mut loaded = Loaded::default();
        let t = Instant::now();
        load_text(&mut loaded, "noise.yaml", &text, json);
        prop_assert!(t.elapsed() < Duration::from_secs(2), "{text:?}");
        for e in &loaded.errors {
            prop_assert!(e.to_string().starts_with("noise.yaml (document "));
        }
        // An object is only ever accepted with exactly one agentId.
        for m in &loaded.objects {
            prop_assert!(!m.object.spec.agent_id.is_empty());
        }
    }

    #[test]
    fn manifests_survive_random_json_documents(v in json_value()) {
        let text = serde_json::to_string(&v).unwrap();
        let mut loaded = Loaded::default();
        load_text(&mut loaded, "doc.json", &text, true);
        let mut again = Loaded::default();
        load_text(&mut again, "doc.json", &text, false);
    }
}
