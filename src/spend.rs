//! `dynamics-operator spend`: every paid generate call on record, from the cluster's purchase
//! ledger or a file mode state file, with who asked, for which inputs, when and for how much.
//! The rows come from a pure function of the records; reading them is the command's only I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use serde::Serialize;

use crate::cli::SpendArgs;
use crate::reconcile::CREDITS_PER_GENERATION;
use crate::resource::{DynamicsLedger, DynamicsLedgerSpec, GenerateInputs};

/// One purchase that cost credits.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendRow {
    /// When its (last) generate call was sent, RFC 3339.
    pub at: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub agent_id: String,
    /// The purchase's key (hash of the normalized generate inputs).
    pub key: String,
    /// Generate calls sent for these inputs (a deliberate `resolve --retry` adds one).
    pub calls: u32,
    pub credits: u64,
    pub inputs: Option<GenerateInputs>,
}

/// The report: rows oldest first, and the credits by namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendReport {
    pub items: Vec<SpendRow>,
    pub credits: u64,
    pub credits_by_namespace: BTreeMap<String, u64>,
}

/// The paid purchases of `records` made at or after `since`, in `namespace` when given. A
/// purchase adopted without a call (calls 0) cost nothing and is not listed.
pub fn report(
    records: &[DynamicsLedgerSpec],
    since: Option<Timestamp>,
    namespace: Option<&str>,
) -> SpendReport {
    let mut items: Vec<SpendRow> = records
        .iter()
        .flat_map(|r| r.purchases.iter().map(move |p| (r, p)))
        .filter(|(_, p)| p.calls > 0)
        .filter(|(_, p)| match (since, p.at.parse::<Timestamp>()) {
            (Some(since), Ok(at)) => at >= since,
            // A time that does not parse is shown rather than hidden.
            _ => true,
        })
        .map(|(r, p)| {
            let (ns, name) = p.object.split_once('/').unwrap_or(("", &p.object));
            SpendRow {
                at: p.at.clone(),
                namespace: ns.to_string(),
                name: name.to_string(),
                uid: p.uid.clone(),
                agent_id: r.agent_id.clone(),
                key: p.key.clone(),
                calls: p.calls,
                credits: u64::from(p.calls) * CREDITS_PER_GENERATION,
                inputs: p.inputs.clone(),
            }
        })
        .filter(|row| namespace.is_none_or(|ns| row.namespace == ns))
        .collect();
    items.sort_by(|a, b| (&a.at, &a.agent_id).cmp(&(&b.at, &b.agent_id)));
    let mut credits_by_namespace = BTreeMap::new();
    for row in &items {
        *credits_by_namespace
            .entry(row.namespace.clone())
            .or_default() += row.credits;
    }
    SpendReport {
        credits: items.iter().map(|r| r.credits).sum(),
        items,
        credits_by_namespace,
    }
}

fn table(report: &SpendReport) -> String {
    let rows: Vec<Vec<String>> = report
        .items
        .iter()
        .map(|r| {
            let image = r
                .inputs
                .as_ref()
                .and_then(|i| i.image_url.clone())
                .unwrap_or_else(|| "-".into());
            vec![
                r.at.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.agent_id.clone(),
                r.key.chars().take(12).collect(),
                r.calls.to_string(),
                r.credits.to_string(),
                image,
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "No paid generate calls on record.\n".to_string()
    } else {
        crate::filemode::output::table(
            &[
                "TIME",
                "NAMESPACE",
                "NAME",
                "AGENT",
                "KEY",
                "CALLS",
                "CREDITS",
                "IMAGE",
            ],
            &rows,
        )
    };
    let by_namespace: Vec<String> = report
        .credits_by_namespace
        .iter()
        .map(|(ns, c)| format!("{ns} {c}"))
        .collect();
    out.push_str(&format!(
        "Credits: {}{}\n",
        report.credits,
        if by_namespace.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_namespace.join(", "))
        }
    ));
    out
}

pub async fn run(args: SpendArgs) -> anyhow::Result<()> {
    let records: Vec<DynamicsLedgerSpec> = match &args.state {
        Some(path) => {
            let store = crate::filemode::state::StateStore::read_only(path)
                .with_context(|| format!("reading the state file {}", path.display()))?;
            store
                .agents()
                .into_iter()
                .filter_map(|agent| store.agent_record(agent, ""))
                .collect()
        }
        None => {
            let client = kube::Client::try_default().await.context(
                "connecting to Kubernetes (KUBECONFIG or the in-cluster service account)",
            )?;
            let api: kube::Api<DynamicsLedger> = kube::Api::all(client);
            let list = api
                .list(&Default::default())
                .await
                .context("listing the purchase ledger (dynamicsledgers)")?;
            list.items.into_iter().map(|r| r.spec).collect()
        }
    };
    let since = args.since.map(|d: Duration| {
        let now = crate::failpoint::now();
        now.checked_sub(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN)
    });
    let report = report(&records, since, args.namespace.as_deref());
    match args.output {
        SpendFormat::Table => print!("{}", table(&report)),
        SpendFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

/// How `spend` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SpendFormat {
    #[default]
    Table,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::LedgerPurchase;

    fn purchase(object: &str, key: &str, at: &str, calls: u32) -> LedgerPurchase {
        LedgerPurchase {
            key: key.into(),
            inputs: None,
            at: at.into(),
            object: object.into(),
            uid: "u".into(),
            calls,
        }
    }

    #[test]
    fn paid_purchases_only_filtered_by_time_and_namespace() {
        let records = vec![
            DynamicsLedgerSpec {
                agent_id: "A1".into(),
                purchases: vec![
                    purchase("team-a/one", "k1", "2026-12-05T10:00:00Z", 1),
                    purchase("team-a/one", "k2", "2026-12-07T10:00:00Z", 2),
                ],
                ..Default::default()
            },
            DynamicsLedgerSpec {
                agent_id: "A2".into(),
                purchases: vec![
                    purchase("team-b/two", "k3", "2026-12-07T09:00:00Z", 1),
                    purchase("team-b/two", "adopted", "2026-12-07T11:00:00Z", 0),
                ],
                ..Default::default()
            },
        ];
        let all = report(&records, None, None);
        let keys: Vec<&str> = all.items.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k3", "k2"], "paid ones, oldest first");
        assert_eq!(all.credits, 1000);
        assert_eq!(all.credits_by_namespace["team-a"], 750);
        let since: Timestamp = "2026-12-06T00:00:00Z".parse().unwrap();
        let recent = report(&records, Some(since), Some("team-a"));
        assert_eq!(recent.items.len(), 1);
        assert_eq!(
            (recent.items[0].name.as_str(), recent.items[0].credits),
            ("one", 500)
        );
        assert!(table(&report(&[], None, None)).contains("No paid generate calls"));
    }
}
