//! `plan`: for each object, GET the remote state (nothing else is sent), combine it with the state
//! file, and say what `apply` would do, why, and what it would cost.

use futures::{stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::executor::{Budgets, Executor, LedgerStore, Preview, SaveError};
use crate::reconcile::budget::{BudgetCheck, Charge};
use crate::reconcile::desired::{changed_inputs, dynamics_hash};
use crate::reconcile::guard::AccountGuards;
use crate::reconcile::ledger::LedgerState;
use crate::reconcile::plan::LedgerWrite;
use crate::reconcile::reasons;
use crate::reconcile::{Action, GenerateCause, Health, Settings};

use super::output::{self, OutputFormat};
use super::state::StateStore;
use super::{exit, prepare, Mode, Object, PlanArgs, Prepared};
use crate::reconcile::budget::Budget;
use crate::reconcile::CREDITS_PER_GENERATION;

/// GETs in flight at once: polite to the API, still quick for a large folder.
const CONCURRENT_READS: usize = 8;

/// What apply would do for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// POST a generation (costs credits).
    Generate,
    /// PUT the dynamics block.
    Update,
    /// A generation is running (or its outcome is being confirmed): poll until it is ready.
    Wait,
    /// In sync (or suspended).
    Nothing,
    /// Cannot progress until something changes; apply would stop on it.
    Stalled,
    /// The remote could not be read; what apply would do is unknown.
    Error,
}

/// One row of the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedObject {
    pub namespace: String,
    pub name: String,
    pub agent_id: String,
    pub action: Step,
    /// Condition-style reason, e.g. Generating, Unauthorized.
    pub reason: String,
    /// Why, in words.
    pub message: String,
    /// Credits apply would spend on this object.
    pub credits: u64,
    /// The key of the generate inputs the spec asks for (what a generation here would buy).
    pub key: String,
}

/// `plan -o json|yaml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDocument {
    pub items: Vec<PlannedObject>,
    pub credits: u64,
    pub changes_pending: bool,
    pub simulated: bool,
    /// SHA-256 of the items as they read: what `apply --plan` checks a saved plan by.
    pub digest: String,
}

/// The steps of a plan that `apply --plan` holds the present to: per object its action, key
/// and credits (reasons and messages are words, and may change without the plan changing).
fn steps(items: &[PlannedObject]) -> Vec<(String, String, Step, String, u64)> {
    items
        .iter()
        .map(|i| {
            (
                format!("{}/{}", i.namespace, i.name),
                i.agent_id.clone(),
                i.action,
                i.key.clone(),
                i.credits,
            )
        })
        .collect()
}

fn digest(items: &[PlannedObject]) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(&steps(items)).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What the manifests, the state and GET make of every object now, with the budgets.
pub(super) async fn compute(prepared: &Prepared, budgets: &[Budget]) -> PlanDocument {
    // Previews never start a generation; the guard is only there because the executor wants one.
    let guard = AccountGuards::new(0, None);
    let executor = Executor::new(prepared.remote.client.clone(), guard, Settings::default());
    let previews: Vec<Preview> = stream::iter(&prepared.objects)
        .map(|object| {
            let executor = &executor;
            let store = &prepared.store;
            async move {
                executor
                    .preview(&object.view, &mut StateLedger(store, &object.view.key))
                    .await
            }
        })
        .buffered(CONCURRENT_READS)
        .collect()
        .await;
    let mut items: Vec<PlannedObject> = prepared
        .objects
        .iter()
        .zip(previews)
        .map(|(object, preview)| planned_object(object, &preview))
        .collect();
    if let Some(budgets) = super::budgets(&prepared.store, budgets) {
        apply_budgets(&budgets, &prepared.objects, &mut items);
    }
    let credits: u64 = items.iter().map(|i| i.credits).sum();
    let pending = items
        .iter()
        .any(|i| matches!(i.action, Step::Generate | Step::Update | Step::Wait));
    PlanDocument {
        digest: digest(&items),
        items,
        credits,
        changes_pending: pending,
        simulated: prepared.remote.simulator.is_some(),
    }
}

/// A saved plan (`plan --out`) as `apply --plan` reads it: refused if it was edited by hand.
pub(super) fn read_saved(path: &std::path::Path) -> anyhow::Result<PlanDocument> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read --plan {}: {e}", path.display()))?;
    let saved: PlanDocument = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--plan {} is not a plan written by `plan --out`: {e}",
            path.display()
        )
    })?;
    if digest(&saved.items) != saved.digest {
        anyhow::bail!(
            "--plan {}: its digest does not match its steps (edited after `plan --out`?); make a new plan",
            path.display()
        );
    }
    Ok(saved)
}

/// How the plan made now differs from the saved one, step by step (empty: the same).
pub(super) fn differences(saved: &PlanDocument, now: &PlanDocument) -> Vec<String> {
    let (before, after) = (steps(&saved.items), steps(&now.items));
    let mut out = Vec::new();
    for step in &before {
        match after.iter().find(|s| s.0 == step.0) {
            None => out.push(format!(
                "{}: in the saved plan, not among the manifests now",
                step.0
            )),
            Some(now) if now != step => out.push(format!(
                "{}: saved {:?} key {} ({} credits), now {:?} key {} ({} credits)",
                step.0,
                step.2,
                short(&step.3),
                step.4,
                now.2,
                short(&now.3),
                now.4
            )),
            Some(_) => {}
        }
    }
    for step in &after {
        if !before.iter().any(|s| s.0 == step.0) {
            out.push(format!(
                "{}: among the manifests now, not in the saved plan",
                step.0
            ));
        }
    }
    out
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

pub(super) async fn run(args: PlanArgs) -> anyhow::Result<i32> {
    let common = &args.common;
    let prepared = match prepare(common, Mode::Plan).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let document = compute(&prepared, &common.budgets).await;
    let errors = document
        .items
        .iter()
        .filter(|i| matches!(i.action, Step::Stalled | Step::Error))
        .count();
    let pending = document.changes_pending;
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&document)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write --out {}: {e}", path.display()))?;
        eprintln!(
            "Plan saved to {} (digest {}): `apply --plan {}` does exactly this, or changes nothing.",
            path.display(),
            short(&document.digest),
            path.display()
        );
    }

    if common.output == OutputFormat::Table {
        print_table(&document);
    } else if common.output == OutputFormat::Markdown {
        print!("{}", markdown(&document));
    } else {
        print!("{}", output::render(common.output, &document)?);
    }
    Ok(if errors > 0 {
        exit::ERROR
    } else if pending {
        exit::PENDING
    } else {
        exit::OK
    })
}

fn print_table(plan: &PlanDocument) {
    if plan.items.is_empty() {
        println!("No AgentDynamics to plan.");
        return;
    }
    let rows: Vec<Vec<String>> = plan
        .items
        .iter()
        .map(|i| {
            let credits = if i.credits > 0 {
                i.credits.to_string()
            } else {
                "-".into()
            };
            let action = serde_json::to_value(i.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            vec![
                i.namespace.clone(),
                i.name.clone(),
                i.agent_id.clone(),
                action,
                credits,
                format!("{}: {}", i.reason, i.message),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["NAMESPACE", "NAME", "AGENT", "ACTION", "CREDITS", "WHY"],
            &rows
        )
    );
    let count = |step: Step| plan.items.iter().filter(|i| i.action == step).count();
    println!(
        "Plan: {} to generate, {} to update, {} to wait for, {} in sync, {} stalled, {} unreadable. Credits: {}.{}",
        count(Step::Generate),
        count(Step::Update),
        count(Step::Wait),
        count(Step::Nothing),
        count(Step::Stalled),
        count(Step::Error),
        plan.credits,
        if plan.simulated { " (SIMULATED API)" } else { "" }
    );
}

/// Each change's effect on its budgets, in the order apply would buy: a generation past a
/// budget becomes a wait that names it (as apply would hold it back); the others say where
/// their budgets stand after them.
fn apply_budgets(budgets: &Budgets, objects: &[Object], items: &mut [PlannedObject]) {
    let now = crate::failpoint::now();
    for (object, item) in objects.iter().zip(items.iter_mut()) {
        if item.action != Step::Generate {
            continue;
        }
        let account = object
            .view
            .access
            .secret()
            .map(|s| s.fingerprint())
            .unwrap_or_default();
        let charge = Charge {
            namespace: &item.namespace,
            account: &account,
            credits: CREDITS_PER_GENERATION,
            now,
        };
        let before = budgets.standings(charge);
        match budgets.reserve(&object.view.key, charge) {
            BudgetCheck::Over(standing) => {
                item.action = Step::Wait;
                item.credits = 0;
                item.reason = reasons::BUDGET_EXCEEDED.to_string();
                item.message = format!(
                    "budget {} has no room for this generation ({} of {} credits spent in its period with the changes above); apply would wait until {}",
                    standing.budget, standing.spent, standing.limit, standing.frees_at
                );
            }
            BudgetCheck::Within { .. } => {
                let effects: Vec<String> = before
                    .iter()
                    .map(|b| {
                        format!(
                            "{} {} -> {} of {}",
                            b.budget,
                            b.spent,
                            b.spent + CREDITS_PER_GENERATION,
                            b.limit
                        )
                    })
                    .collect();
                if !effects.is_empty() {
                    item.message = format!("{} (budgets: {})", item.message, effects.join(", "));
                }
            }
        }
    }
}

/// Turns the executor's preview into a step with a reason a person can act on.
fn planned_object(object: &Object, preview: &Preview) -> PlannedObject {
    let spec = &object.view.spec;
    let status = &object.view.status;
    let (action, reason, message, credits) = match &preview.action {
        Action::Generate(generate) => {
            let (reason, why) = match generate.cause {
                _ if object.previous.is_none() => (
                    "NotGeneratedYet",
                    "not in the state file yet: apply would generate its dynamics".to_string(),
                ),
                GenerateCause::FirstGeneration => (
                    "NotGeneratedYet",
                    "no generation was bought for it yet".to_string(),
                ),
                GenerateCause::Retry => (
                    "ResolvedRetry",
                    "the resolve annotation asks to send the generate call once more".to_string(),
                ),
                GenerateCause::ReplacesStalledCall => (
                    "GenerateInputsChanged",
                    "the generate inputs changed after an earlier call was given up on".to_string(),
                ),
                GenerateCause::InputsChanged => {
                    let changed = object
                        .previous
                        .as_ref()
                        .map(|p| changed_inputs(&p.spec, spec))
                        .unwrap_or_default();
                    let why = if changed.is_empty() {
                        "the generate inputs differ from those of the last generation bought"
                            .to_string()
                    } else {
                        format!("{} changed", changed.join(", "))
                    };
                    ("GenerateInputsChanged", why)
                }
            };
            (
                Step::Generate,
                reason.to_string(),
                why,
                CREDITS_PER_GENERATION,
            )
        }
        Action::Update { .. } => {
            let why = if status.dynamics_hash.as_deref() != Some(dynamics_hash(spec).as_str())
                && status.dynamics_hash.is_some()
            {
                "spec.dynamics changed: apply would PUT the new block".to_string()
            } else {
                format!(
                    "generation {} is ready and not switched on yet: apply would PUT spec.dynamics",
                    status.generations.max(1)
                )
            };
            (Step::Update, "DynamicsChanged".to_string(), why, 0)
        }
        Action::Report(report) => match &report.health {
            Health::Ready { reason, message } => {
                (Step::Nothing, reason.clone(), message.clone(), 0)
            }
            Health::Suspended => (
                Step::Nothing,
                "Suspended".to_string(),
                report.health.message().to_string(),
                0,
            ),
            Health::Stalled { reason, message } => {
                (Step::Stalled, reason.clone(), message.clone(), 0)
            }
            Health::Progressing { reason, message } if report.next.is_backoff() => {
                (Step::Error, reason.clone(), message.clone(), 0)
            }
            Health::Progressing { reason, message } => {
                // An edit made while a generation runs is coalesced into one more generation:
                // `plan` says so; nothing here guesses it from a status it did not read.
                let credits = if report.follow_up {
                    CREDITS_PER_GENERATION
                } else {
                    0
                };
                (Step::Wait, reason.clone(), message.clone(), credits)
            }
        },
        // Not reachable for an object that is not being deleted; shown rather than hidden.
        other => (
            Step::Error,
            "Unexpected".to_string(),
            format!("unexpected plan {other:?}"),
            0,
        ),
    };
    PlannedObject {
        namespace: object.manifest.namespace.clone(),
        name: object.manifest.name.clone(),
        agent_id: spec.agent_id.clone(),
        action,
        reason,
        message,
        credits,
        key: crate::reconcile::desired::inputs_hash(spec),
    }
}

/// The plan as a pull-request comment: a table of the changes, the credits, the digest.
fn markdown(plan: &PlanDocument) -> String {
    let mut out = String::from("### dynamics-operator plan\n\n");
    let changes: Vec<&PlannedObject> = plan
        .items
        .iter()
        .filter(|i| i.action != Step::Nothing)
        .collect();
    if changes.is_empty() {
        out.push_str("No changes: every object is in sync.\n");
    } else {
        out.push_str(
            "| object | agent | action | credits | why |\n| --- | --- | --- | ---: | --- |\n",
        );
        for i in changes {
            let action = serde_json::to_value(i.action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            out.push_str(&format!(
                "| `{}/{}` | `{}` | {} | {} | {}: {} |\n",
                i.namespace,
                i.name,
                i.agent_id,
                action,
                i.credits,
                i.reason,
                i.message.replace('|', "\\|")
            ));
        }
    }
    out.push_str(&format!(
        "\n**Credits: {}**{} · {} object(s) in sync · plan digest `{}`\n",
        plan.credits,
        if plan.simulated {
            " (simulated API)"
        } else {
            ""
        },
        plan.items
            .iter()
            .filter(|i| i.action == Step::Nothing)
            .count(),
        short(&plan.digest)
    ));
    out
}

/// The state as the ledger for a preview: read, never written.
struct StateLedger<'a>(&'a StateStore, &'a str);

impl LedgerStore for StateLedger<'_> {
    fn read_ledger(
        &mut self,
        agent_id: &str,
    ) -> impl std::future::Future<Output = LedgerState> + Send {
        std::future::ready(LedgerState::Read {
            record: self.0.agent_record(agent_id, self.1),
            version: None,
        })
    }

    fn write_ledger(
        &mut self,
        _agent_id: &str,
        _write: &LedgerWrite,
    ) -> impl std::future::Future<Output = Result<Option<String>, SaveError>> + Send {
        std::future::ready(Err(SaveError::Preview))
    }
}
