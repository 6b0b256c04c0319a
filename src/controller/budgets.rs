//! The spend budgets are checked against: every agent's ledger record, followed by a watch. Started
//! only when budgets are set (`--budget`), and loaded in full before the first pass, so a restart
//! or a failover counts what was spent before it.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};

use crate::executor::Budgets;
use crate::reconcile::budget::Budget;
use crate::resource::DynamicsLedger;

/// The budgets with their spend loaded, following the ledger from then on; `None` without
/// budgets. Waits until the ledger has been read once (retrying with backoff while it cannot
/// be): until then nothing could be checked, so nothing may be bought.
pub async fn start(client: &Client, rules: &[Budget]) -> Option<Arc<Budgets>> {
    if rules.is_empty() {
        return None;
    }
    let budgets = Arc::new(Budgets::new(rules.to_vec()));
    let feed = budgets.clone();
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel::<usize>();
    let mut loaded_tx = Some(loaded_tx);
    let api: Api<DynamicsLedger> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut records = 0usize;
        // One record per agent: as many as objects, so streamed like them.
        let mut events = super::listing::watch(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(r) | Event::InitApply(r)) => {
                    feed.put(&r.name_any(), &r.spec);
                    records += 1;
                }
                Ok(Event::Delete(r)) => feed.remove(&r.name_any()),
                Ok(Event::Init) => records = 0,
                Ok(Event::InitDone) => {
                    if let Some(tx) = loaded_tx.take() {
                        let _ = tx.send(records);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "watch of the purchase ledger (for budgets) failed; retrying with backoff");
                }
            }
        }
    });
    match loaded.await {
        Ok(records) => {
            let names: Vec<String> = rules.iter().map(Budget::name).collect();
            tracing::info!(budgets = %names.join(", "), records, "budgets loaded from the purchase ledger");
            Some(budgets)
        }
        // The watch task ended before its first list: it only does on a runtime shutdown.
        Err(_) => Some(budgets),
    }
}
