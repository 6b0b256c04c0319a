//! The purchase ledger's rules: one record per agent, whoever bought for it. Pure: the
//! executor reads the record (`LedgerState`), `plan` decides with it, and the record to write
//! comes from the functions here. Where the record lives is the front end's business (a
//! cluster-scoped `DynamicsLedger` in a cluster, the state file in file mode).

use sha2::{Digest, Sha256};

use crate::resource::{DynamicsLedgerSpec, GenerateInputs, LedgerHolder, LedgerPurchase};

/// How many purchases a record keeps (oldest dropped first): enough to recognise a revert to
/// any recent inputs, and a record stays a few KiB.
pub const PURCHASES_KEPT: usize = 16;

/// What a pass knows of the agent's record.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerState {
    /// The record as read (`None`: nothing was ever recorded for the agent), with the version
    /// a write must be conditional on.
    Read {
        record: Option<DynamicsLedgerSpec>,
        version: Option<String>,
    },
    /// The record could not be read: nothing is bought until it can.
    Unavailable(String),
}

/// The object asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker<'a> {
    /// namespace/name.
    pub object: &'a str,
    pub uid: &'a str,
}

impl Asker<'_> {
    /// Whether `holder` is this object: the same uid, or the same namespace/name (the object
    /// deleted and created again, or replaced: the same declaration).
    pub fn is(&self, holder: &LedgerHolder) -> bool {
        holder.uid == self.uid || holder.object == self.object
    }

    fn holder(&self) -> LedgerHolder {
        LedgerHolder {
            object: self.object.to_string(),
            uid: self.uid.to_string(),
        }
    }
}

/// What the record says about buying `key` for this object.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Another object holds the agent (namespace/name).
    HeldBy(String),
    /// These inputs are the agent's latest purchase: adopt them, buy nothing.
    Bought,
    /// These inputs were bought before, and other inputs since: not bought again automatically.
    BoughtEarlier,
    /// Nothing on record for these inputs; `anything` tells whether the agent has any purchase.
    NotBought { anything: bool },
}

pub fn verdict(record: Option<&DynamicsLedgerSpec>, asker: Asker, key: &str) -> Verdict {
    let Some(record) = record else {
        return Verdict::NotBought { anything: false };
    };
    if let Some(holder) = record.holder.as_ref().filter(|h| !asker.is(h)) {
        return Verdict::HeldBy(holder.object.clone());
    }
    match record.purchases.iter().rposition(|p| p.key == key) {
        Some(i) if i + 1 == record.purchases.len() => Verdict::Bought,
        Some(_) => Verdict::BoughtEarlier,
        None => Verdict::NotBought {
            anything: !record.purchases.is_empty(),
        },
    }
}

/// Whether the latest purchase of `key` on `record` is a call this object (this uid) sent.
pub fn own_call(record: Option<&DynamicsLedgerSpec>, asker: Asker, key: &str) -> bool {
    record
        .and_then(|r| r.purchases.iter().rfind(|p| p.key == key))
        .is_some_and(|p| p.uid == asker.uid && p.calls > 0)
}

/// The record with this object holding the agent and `key` recorded: `calls` generate calls
/// about to be sent for it (0 when existing dynamics are adopted). A key already on record
/// moves to the end (it is the latest now) and adds its calls.
pub fn with_purchase(
    record: Option<&DynamicsLedgerSpec>,
    agent_id: &str,
    asker: Asker,
    key: &str,
    inputs: &GenerateInputs,
    at: &str,
    calls: u32,
) -> DynamicsLedgerSpec {
    let mut next = record.cloned().unwrap_or_else(|| DynamicsLedgerSpec {
        agent_id: agent_id.to_string(),
        ..Default::default()
    });
    next.holder = Some(asker.holder());
    let earlier_calls = match next.purchases.iter().position(|p| p.key == key) {
        Some(i) => next.purchases.remove(i).calls,
        None => 0,
    };
    next.purchases.push(LedgerPurchase {
        key: key.to_string(),
        inputs: Some(inputs.clone()),
        at: at.to_string(),
        object: asker.object.to_string(),
        uid: asker.uid.to_string(),
        calls: earlier_calls.saturating_add(calls),
    });
    let excess = next.purchases.len().saturating_sub(PURCHASES_KEPT);
    next.purchases.drain(..excess);
    next
}

/// The record with this object holding the agent (nothing else changed), or `None` when it
/// already does.
pub fn with_holder(
    record: Option<&DynamicsLedgerSpec>,
    agent_id: &str,
    asker: Asker,
) -> Option<DynamicsLedgerSpec> {
    let held = record
        .and_then(|r| r.holder.as_ref())
        .is_some_and(|h| h.uid == asker.uid && h.object == asker.object);
    if held {
        return None;
    }
    let mut next = record.cloned().unwrap_or_else(|| DynamicsLedgerSpec {
        agent_id: agent_id.to_string(),
        ..Default::default()
    });
    next.holder = Some(asker.holder());
    Some(next)
}

/// After a definite refusal: the call recorded for `key` was not taken. A purchase left with
/// no call and not adopted is dropped. `None` when there is nothing to undo.
pub fn without_call(
    record: Option<&DynamicsLedgerSpec>,
    key: &str,
    asker: Asker,
) -> Option<DynamicsLedgerSpec> {
    let mut next = record?.clone();
    let i = next
        .purchases
        .iter()
        .rposition(|p| p.key == key && p.uid == asker.uid && p.calls > 0)?;
    next.purchases[i].calls -= 1;
    if next.purchases[i].calls == 0 {
        next.purchases.remove(i);
    }
    Some(next)
}

/// Whether `record` proves that the generate call a marker of `uid` for `key` stands for was
/// never sent: where the purchase is written after the marker and before the call
/// (`ledger_first`, the cluster's ledger), a marker whose pass died with no call of its own for
/// `key` on record (or no record at all) died before its call. A marker of a release before the
/// ledger proves nothing.
pub fn call_never_sent(
    record: Option<&DynamicsLedgerSpec>,
    key: &str,
    uid: &str,
    ledger_first: bool,
) -> bool {
    ledger_first
        && record.is_none_or(|r| {
            !r.purchases
                .iter()
                .any(|p| p.key == key && p.uid == uid && p.calls > 0)
        })
}

/// Deletion releases the claim, never the purchases. `None` when this object holds nothing.
pub fn released(record: Option<&DynamicsLedgerSpec>, asker: Asker) -> Option<DynamicsLedgerSpec> {
    let record = record?;
    if record.holder.as_ref().is_none_or(|h| h.uid != asker.uid) {
        return None;
    }
    Some(DynamicsLedgerSpec {
        holder: None,
        ..record.clone()
    })
}

/// Which generate inputs of the purchase `key` in `record` differ from those of the purchase
/// before it (`first` when it is the agent's first on record, `same` when none differ: a
/// deliberate retry, or inputs recorded before the normalized ones were kept).
pub fn changed_inputs(record: &DynamicsLedgerSpec, key: &str) -> Vec<&'static str> {
    let Some(i) = record.purchases.iter().rposition(|p| p.key == key) else {
        return vec!["unknown"];
    };
    let Some(before) = i.checked_sub(1).map(|j| &record.purchases[j]) else {
        return vec!["first"];
    };
    let (Some(a), Some(b)) = (&before.inputs, &record.purchases[i].inputs) else {
        return vec!["unknown"];
    };
    let mut changed = Vec::new();
    if a.image_url != b.image_url {
        changed.push("imageUrl");
    }
    if a.duration != b.duration {
        changed.push("duration");
    }
    if a.model != b.model {
        changed.push("model");
    }
    if a.motion_prompts != b.motion_prompts {
        changed.push("motionPrompts");
    }
    if a.regenerate != b.regenerate {
        changed.push("regenerate");
    }
    if changed.is_empty() {
        changed.push("same");
    }
    changed
}

/// The name of an agent's record: agent ids are case-sensitive and may hold `_`, which names
/// may not, so the readable part is lowered and mapped, and a hash of the exact id keeps two
/// ids that map alike apart (`Ab` and `ab`, `a_b` and `a-b`).
pub fn record_name(agent_id: &str) -> String {
    let readable: String = agent_id
        .chars()
        .take(40)
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' => c,
            _ => '-',
        })
        .collect();
    let digest = Sha256::digest(agent_id.as_bytes());
    format!(
        "agent-{}-{}",
        readable.trim_matches('-'),
        &hex::encode(digest)[..16]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Asker = Asker {
        object: "agents/support",
        uid: "uid-1",
    };

    fn record(holder: Option<(&str, &str)>, keys: &[&str]) -> DynamicsLedgerSpec {
        DynamicsLedgerSpec {
            agent_id: "A1".into(),
            holder: holder.map(|(object, uid)| LedgerHolder {
                object: object.into(),
                uid: uid.into(),
            }),
            purchases: keys
                .iter()
                .map(|k| LedgerPurchase {
                    key: k.to_string(),
                    inputs: None,
                    at: "2026-12-01T00:00:00Z".into(),
                    object: "agents/support".into(),
                    uid: "uid-0".into(),
                    calls: 1,
                })
                .collect(),
            spend: vec![],
        }
    }

    #[test]
    fn verdicts() {
        let rows: Vec<(&str, Option<DynamicsLedgerSpec>, Verdict)> = vec![
            ("no record", None, Verdict::NotBought { anything: false }),
            (
                "held by another object",
                Some(record(Some(("team-b/agent", "uid-9")), &["k1"])),
                Verdict::HeldBy("team-b/agent".into()),
            ),
            (
                "held by this name under an earlier uid (re-created, replaced): ours",
                Some(record(Some(("agents/support", "uid-0")), &["k1"])),
                Verdict::Bought,
            ),
            (
                "released, these inputs bought last",
                Some(record(None, &["k0", "k1"])),
                Verdict::Bought,
            ),
            (
                "bought before, other inputs since (a revert)",
                Some(record(None, &["k1", "k2"])),
                Verdict::BoughtEarlier,
            ),
            (
                "other inputs on record",
                Some(record(None, &["k2"])),
                Verdict::NotBought { anything: true },
            ),
        ];
        for (name, rec, want) in rows {
            assert_eq!(verdict(rec.as_ref(), ME, "k1"), want, "{name}");
        }
    }

    #[test]
    fn a_purchase_claims_moves_to_the_end_and_is_bounded() {
        let inputs = GenerateInputs::default();
        let rec = record(Some(("agents/support", "uid-0")), &["k1", "k2"]);
        let next = with_purchase(Some(&rec), "A1", ME, "k1", &inputs, "t", 1);
        assert_eq!(next.holder.as_ref().unwrap().uid, "uid-1");
        let keys: Vec<&str> = next.purchases.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["k2", "k1"]);
        assert_eq!(
            next.purchases[1].calls, 2,
            "a deliberate retry adds its call"
        );
        let mut many = None;
        for i in 0..40 {
            many = Some(with_purchase(
                many.as_ref(),
                "A1",
                ME,
                &format!("k{i}"),
                &inputs,
                "t",
                1,
            ));
        }
        let many = many.unwrap();
        assert_eq!(many.purchases.len(), PURCHASES_KEPT);
        assert_eq!(many.purchases.last().unwrap().key, "k39");
    }

    #[test]
    fn a_refusal_undoes_only_its_own_call() {
        let inputs = GenerateInputs::default();
        let bought = with_purchase(None, "A1", ME, "k1", &inputs, "t", 1);
        let undone = without_call(Some(&bought), "k1", ME).unwrap();
        assert!(undone.purchases.is_empty());
        assert!(undone.holder.is_some(), "the claim stays");
        let adopted = with_purchase(None, "A1", ME, "k1", &inputs, "t", 0);
        assert_eq!(without_call(Some(&adopted), "k1", ME), None);
        let other = Asker {
            object: "agents/other",
            uid: "uid-2",
        };
        assert_eq!(without_call(Some(&bought), "k1", other), None);
    }

    #[test]
    fn changed_inputs_name_the_fields_since_the_purchase_before() {
        let inputs = |image: &str, duration: Option<u32>| GenerateInputs {
            image_url: Some(image.into()),
            duration,
            ..Default::default()
        };
        let first = with_purchase(None, "A1", ME, "k1", &inputs("a.jpg", None), "t1", 1);
        assert_eq!(changed_inputs(&first, "k1"), ["first"]);
        let second = with_purchase(
            Some(&first),
            "A1",
            ME,
            "k2",
            &inputs("b.jpg", Some(3)),
            "t2",
            1,
        );
        assert_eq!(changed_inputs(&second, "k2"), ["imageUrl", "duration"]);
        assert_eq!(changed_inputs(&second, "k9"), ["unknown"]);
    }

    #[test]
    fn a_call_is_proven_unsent_only_by_a_record_without_it() {
        let inputs = GenerateInputs::default();
        let bought = with_purchase(None, "A1", ME, "k1", &inputs, "t", 1);
        let adopted = with_purchase(None, "A1", ME, "k1", &inputs, "t", 0);
        let by_other = with_purchase(
            None,
            "A1",
            Asker {
                object: "x/y",
                uid: "uid-9",
            },
            "k1",
            &inputs,
            "t",
            1,
        );
        let rows = [
            ("no record: the pass died before writing it", None, true),
            (
                "our call on record: it may have been sent",
                Some(&bought),
                false,
            ),
            ("adopted, no call of ours", Some(&adopted), true),
            ("another object's call only", Some(&by_other), true),
            ("nothing for this key", Some(&record(None, &["k2"])), true),
        ];
        for (name, rec, want) in rows {
            assert_eq!(call_never_sent(rec, "k1", "uid-1", true), want, "{name}");
            // A call of ours on record is one this object's status counts when it adopts it.
            assert_eq!(own_call(rec, ME, "k1"), !want, "{name}: own call");
            assert!(
                !call_never_sent(rec, "k1", "uid-1", false),
                "{name}: a marker of a release before the ledger proves nothing"
            );
        }
    }

    #[test]
    fn release_keeps_the_purchases() {
        let bought = with_purchase(None, "A1", ME, "k1", &GenerateInputs::default(), "t", 1);
        let released = released(Some(&bought), ME).unwrap();
        assert_eq!(released.holder, None);
        assert_eq!(released.purchases, bought.purchases);
        assert_eq!(super::released(Some(&released), ME), None);
    }

    #[test]
    fn record_names_are_valid_and_never_collide() {
        let ids = [
            "A91XMB7113",
            "a91xmb7113",
            "a_b",
            "a-b",
            "_x",
            &"Z".repeat(64),
        ];
        let names: Vec<String> = ids.iter().map(|id| record_name(id)).collect();
        for name in &names {
            assert!(name.len() <= 253, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.ends_with('-') && name.starts_with("agent-"), "{name}");
        }
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(record_name("A91XMB7113"), record_name("A91XMB7113"));
    }
}
