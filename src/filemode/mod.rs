//! File mode: `dynamics-operator plan -f PATH` and `dynamics-operator apply -f PATH`.
//!
//! The reconcile core run over a folder of manifests instead of the Kubernetes API: the same
//! admission rules (`resource::validate`), the same plan function, generation guard, crash-safety
//! marker and error classes (`executor::Executor`), with status kept in a local state file
//! (`state`) instead of the status subresource.
//!
//! - `manifests`: reading files, directories and stdin; validation.
//! - `state`: the state file (atomic writes, one apply at a time).
//! - `secrets`: which api-secret each object uses.
//! - `plan` / `apply`: the two commands; `output`: table, JSON and YAML.

mod apply;
pub mod manifests;
pub mod output;
mod plan;
pub mod secrets;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::{ApiSecret, DynamicsClient};
use crate::executor::{Access, ObjectView};
use crate::reconcile::ownership::{owner_instead_of, Claimant};
use crate::reconcile::Blocker;
use crate::resource::refresh_request;
use crate::resource::validate::{validate_update, FieldError};
use crate::resource::RESOLVE;
use crate::sim::{SimConfig, SimHandle};

pub use crate::cli::{ApplyArgs, CommonArgs, OutputFormat, PlanArgs};
use manifests::{Manifest, ManifestError};
use state::{ObjectState, StateStore, DEFAULT_STATE_FILE};

/// Exit codes shared by both commands.
pub mod exit {
    /// `plan`: everything in sync. `apply`: every object Ready (or suspended).
    pub const OK: i32 = 0;
    /// `plan`: changes pending. `apply`: not every object became Ready (stalled, timed out).
    pub const PENDING: i32 = 1;
    /// Invalid manifests or flags, an unreadable or locked state file, or (`plan`) an object
    /// whose future cannot be told (remote error, conflict, missing secret, stalled).
    pub const ERROR: i32 = 2;
    /// `apply` stopped by Ctrl-C; the state is saved, run it again to resume.
    pub const INTERRUPTED: i32 = 130;
}

/// `plan`: returns the process exit code (0 in sync, 1 changes pending, 2 error).
pub async fn run_plan(args: PlanArgs) -> anyhow::Result<i32> {
    plan::run(args).await
}

/// `apply`: returns the process exit code (0 all Ready, 1 not all Ready, 2 error, 130 interrupted).
pub async fn run_apply(args: ApplyArgs) -> anyhow::Result<i32> {
    apply::run(args).await
}

/// One object ready for passes.
pub(crate) struct Object {
    pub manifest: Manifest,
    /// The record before this run (None: never applied).
    pub previous: Option<ObjectState>,
    /// The record for this run: previous plus the current spec (generation moved on a change).
    pub record: ObjectState,
    pub view: ObjectView,
}

/// The API to talk to.
pub(crate) struct Remote {
    pub client: DynamicsClient,
    /// Kept alive for the command's life with `--simulator`.
    pub simulator: Option<SimHandle>,
}

/// What both commands need once the input is known to be valid.
pub(crate) struct Prepared {
    pub objects: Vec<Object>,
    pub store: StateStore,
    pub remote: Remote,
}

#[derive(PartialEq, Eq, Clone, Copy)]
pub(crate) enum Mode {
    Plan,
    Apply,
}

/// Reads and validates everything, opens the state and the API. `Err(code)` when the command must
/// stop before any remote call (what was wrong is already printed). The phases, in order: flags,
/// manifests, state, every rule for every document, the API, then each object's access.
pub(crate) async fn prepare(
    common: &CommonArgs,
    mode: Mode,
) -> anyhow::Result<Result<Prepared, i32>> {
    let fail = |message: String| {
        eprintln!("error: {message}");
        Ok(Err(exit::ERROR))
    };
    if common.simulator && common.state.is_some() {
        return fail("--state cannot be used with --simulator: the simulated API forgets everything when the command ends, so its state is kept in memory only".into());
    }
    let loaded = match manifests::load(&common.filename) {
        Ok(loaded) => loaded,
        Err(e) => return fail(format!("{e:#}")),
    };
    for skipped in &loaded.skipped {
        eprintln!(
            "note: skipped {}: {} (not an AgentDynamics)",
            skipped.source, skipped.what
        );
    }
    let store = match open_state(common, mode) {
        Ok(store) => store,
        Err(e) => return fail(format!("{e:#}")),
    };
    // Every rule first, for every document: one bad manifest means nothing is sent for any.
    let errors = rule_errors(&loaded, &store);
    if !errors.is_empty() {
        report_invalid(&errors);
        return Ok(Err(exit::ERROR));
    }
    if loaded.objects.is_empty() {
        eprintln!("note: no AgentDynamics found in the given manifests");
    }
    let mut operator = match common.api.secret() {
        Ok(secret) => secret,
        Err(e) => return fail(format!("{e:#}")),
    };
    if common.simulator && operator.is_none() {
        // The simulated account's secret stands in for the operator's.
        operator = Some(ApiSecret::new(SimConfig::default().secret));
    }
    let (remote, sim_secret) = connect(common, &loaded, operator.as_ref()).await?;
    note_unmanaged(&loaded, &store);
    let objects = admit_objects(loaded, &store, operator.as_ref(), sim_secret.as_ref());
    Ok(Ok(Prepared {
        objects,
        store,
        remote,
    }))
}

/// The state file (read-only for `plan`, locked for `apply`), or memory with `--simulator`.
/// The budgets with what the state records as spent for each agent (as the cluster's ledger
/// holds it per agent); `None` without budgets.
fn budgets(
    store: &StateStore,
    rules: &[crate::reconcile::budget::Budget],
) -> Option<std::sync::Arc<crate::executor::Budgets>> {
    if rules.is_empty() {
        return None;
    }
    let budgets = crate::executor::Budgets::new(rules.to_vec());
    for agent in store.agents() {
        if let Some(record) = store.agent_record(agent, "") {
            budgets.put(&crate::reconcile::ledger::record_name(agent), &record);
        }
    }
    Some(std::sync::Arc::new(budgets))
}

fn open_state(common: &CommonArgs, mode: Mode) -> anyhow::Result<StateStore> {
    if common.simulator {
        return Ok(StateStore::ephemeral());
    }
    let path = common
        .state
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
    match mode {
        Mode::Plan => StateStore::read_only(&path),
        Mode::Apply => StateStore::open_locked(&path),
    }
}

/// Every manifest error: what loading found, duplicates, and an agentId changed against the
/// spec last applied (the rule the API server applies on update).
fn rule_errors(loaded: &manifests::Loaded, store: &StateStore) -> Vec<ManifestError> {
    let mut errors = loaded.errors.clone();
    errors.extend(duplicates(&loaded.objects));
    for manifest in &loaded.objects {
        let Some(previous) = store.get(&manifest.key()) else {
            continue;
        };
        for error in validate_update(&previous.spec, &manifest.object.spec) {
            let error = FieldError {
                message: format!(
                    "{} (the state file has agent {})",
                    error.message, previous.agent_id
                ),
                ..error
            };
            errors.push(ManifestError {
                source: manifest.source.clone(),
                name: Some(manifest.key()),
                error,
            });
        }
    }
    errors
}

fn report_invalid(errors: &[ManifestError]) {
    for error in errors {
        eprintln!("{error}");
    }
    let documents = errors
        .iter()
        .map(|e| (&e.source.file, e.source.document, e.source.item))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    eprintln!("error: {documents} invalid document(s); nothing was sent for any object");
}

/// The API: the real one, or the built-in simulator with `--simulator` (then also the secret
/// that stands in for a missing one).
async fn connect(
    common: &CommonArgs,
    loaded: &manifests::Loaded,
    operator: Option<&ApiSecret>,
) -> anyhow::Result<(Remote, Option<ApiSecret>)> {
    if !common.simulator {
        let remote = Remote {
            client: client(&common.api, None)?,
            simulator: None,
        };
        return Ok((remote, None));
    }
    let secret = operator
        .cloned()
        .unwrap_or_else(|| ApiSecret::new(SimConfig::default().secret));
    // Each Secret document is another key to the same simulated account.
    let extra_secrets = loaded
        .secrets
        .values()
        .flat_map(|doc| doc.data.values())
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let config = SimConfig {
        secret: secret.expose().to_string(),
        generation_time: Duration::from_millis(800),
        extra_secrets,
        ..SimConfig::default()
    };
    let handle = crate::sim::start(config).await?;
    eprintln!(
        "SIMULATED API: the built-in simulator runs at {}; nothing is sent to bitHuman and no real credits are spent.",
        handle.url()
    );
    let remote = Remote {
        client: client(&common.api, Some(&handle.url()))?,
        simulator: Some(handle),
    };
    Ok((remote, Some(secret)))
}

/// Objects the state knows that no manifest names are left alone, and said so.
fn note_unmanaged(loaded: &manifests::Loaded, store: &StateStore) {
    let manifest_keys: std::collections::BTreeSet<String> =
        loaded.objects.iter().map(Manifest::key).collect();
    for key in store.keys().filter(|k| !manifest_keys.contains(*k)) {
        eprintln!(
            "note: {key} is in the state file but in none of the manifests; it is left alone"
        );
    }
}

/// Each manifest as an object ready for passes: its record (admitted into the state, not yet
/// saved) and its access (a conflict by the ownership rule, its secret, or why it has none).
fn admit_objects(
    loaded: manifests::Loaded,
    store: &StateStore,
    operator: Option<&ApiSecret>,
    sim_secret: Option<&ApiSecret>,
) -> Vec<Object> {
    let now = crate::failpoint::now();
    // Two objects for one agent would fight (and pay twice): the controller's ownership rule,
    // with what the state file knows (has it acted, since when).
    let mut claimants: BTreeMap<String, Vec<Claimant>> = BTreeMap::new();
    for manifest in &loaded.objects {
        let key = manifest.key();
        let previous = store.get(&key);
        let created = previous.and_then(|p| p.creation_timestamp.parse().ok());
        claimants
            .entry(manifest.object.spec.agent_id.clone())
            .or_default()
            .push(Claimant::new(
                key,
                previous.map(|p| &p.status),
                created,
                // An object that only observes owns nothing.
                !manifest.object.spec.management_policy.is_manage(),
            ));
    }
    let mut objects = Vec::new();
    for manifest in loaded.objects {
        let key = manifest.key();
        let spec = &manifest.object.spec;
        let rivals = &claimants[&spec.agent_id];
        let me = rivals
            .iter()
            .find(|c| c.key == key)
            .expect("every manifest is a claimant");
        let conflict = owner_instead_of(me, rivals).map(|owner| Blocker::Conflict { owner });
        let access = Access::before_secret(spec.suspend, conflict).unwrap_or_else(|| {
            let secret = secrets::resolve(&manifest, &loaded.secrets, operator);
            Access::from_secret(secret.or_else(|blocker| match sim_secret {
                // The simulator has no real accounts: an object whose secret is missing still
                // shows the rest of the flow, and says so.
                Some(sim) => {
                    if let Blocker::Secret { message, .. } = &blocker {
                        eprintln!("note: {key}: {message}; --simulator uses the simulated account's secret instead");
                    }
                    Ok(sim.clone())
                }
                None => Err(blocker),
            }))
        });
        let previous = store.get(&key).cloned();
        let record = store.admit(&key, spec, now);
        let view = ObjectView {
            key,
            uid: record.uid.clone(),
            spec: spec.clone(),
            status: record.status.clone(),
            generation: record.generation,
            deleting: false,
            requested_at: manifest
                .object
                .metadata
                .annotations
                .as_ref()
                .and_then(refresh_request)
                .cloned(),
            resolve: manifest
                .object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RESOLVE))
                .cloned(),
            approve: manifest
                .object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::resource::APPROVE))
                .cloned(),
            access,
        };
        objects.push(Object {
            manifest,
            previous,
            record,
            view,
        });
    }
    objects
}

/// The API client as `run` builds it; `--simulator` only swaps the base URL.
fn client(
    api: &crate::cli::ApiArgs,
    simulator_url: Option<&str>,
) -> anyhow::Result<DynamicsClient> {
    // With --simulator, --api-url is not used.
    let mut config = match simulator_url {
        Some(_) => api.client_config(),
        None => api.checked_client_config()?,
    };
    if let Some(url) = simulator_url {
        config.base_url = url.to_string();
    }
    let url = config.base_url.clone();
    DynamicsClient::new(config).map_err(|e| anyhow::anyhow!("--api-url {url:?}: {e}"))
}

/// Two documents for the same namespace/name: the API server would keep only the last; here it
/// is refused, since it is almost always a copy-paste mistake.
fn duplicates(objects: &[Manifest]) -> Vec<ManifestError> {
    let mut seen: BTreeMap<String, &Manifest> = BTreeMap::new();
    let mut errors = Vec::new();
    for manifest in objects {
        match seen.get(&manifest.key()) {
            Some(first) => errors.push(ManifestError {
                source: manifest.source.clone(),
                name: Some(manifest.key()),
                error: FieldError {
                    field: "metadata.name".into(),
                    message: format!(
                        "AgentDynamics {} is already defined in {}",
                        manifest.key(),
                        first.source
                    ),
                },
            }),
            None => {
                seen.insert(manifest.key(), manifest);
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{AgentDynamics, AgentDynamicsSpec};

    fn manifest(file: &str, name: &str) -> Manifest {
        Manifest {
            source: manifests::Source {
                file: file.into(),
                document: 1,
                item: None,
            },
            namespace: "default".into(),
            name: name.into(),
            object: AgentDynamics::new(
                name,
                AgentDynamicsSpec {
                    agent_id: "A1".into(),
                    ..Default::default()
                },
            ),
        }
    }

    #[test]
    fn the_same_object_twice_is_refused_naming_both_places() {
        let errors = duplicates(&[
            manifest("a.yaml", "x"),
            manifest("b.yaml", "y"),
            manifest("c.yaml", "x"),
        ]);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "c.yaml (document 1) default/x: metadata.name: AgentDynamics default/x is already defined in a.yaml (document 1)"
        );
    }
}
