//! `dynamics-operator run`: the Kubernetes controller. It watches `AgentDynamics` (and the Secrets
//! they reference), and for each object runs one `executor` pass with the status subresource as
//! its store and Events as its notes.
//!
//! How an object travels, and the module for each step:
//!
//! ```text
//!  watch AgentDynamics ─┐   (lean: parsed without managedFields)
//!  watch Secrets ───────┼─> start ──> index ──> changes ──> kube Controller queue ─┐
//!  watch DynamicsLedger ┘  (budgets)   (agents, own writes)                        │
//!                                                                                  v
//!   lane (woken for a free slot, looks at a generation's expected end) ──> reconcile
//!                                                                                  │
//!           context::pass: Access (secrets), ObjectView ──> executor::Executor::pass
//!                                                                                  │
//!           kube_sink (status, ledger; conditional writes) ──> events (Events)  <──┘
//! ```
//!
//! - `start` (with `reconcile::start`): what the watches pass on and when, around a start or a
//!   takeover. Replaces the controller's own watch trigger, which after a restart or failover
//!   reconciles every object at once (one GET each at 10,000 objects: BENCHMARKS.md, restart
//!   and failover phases); settled objects are spread over their resync window instead, and a
//!   standby keeps its cache warm. It also feeds kube's cache (in place of `reflect`), so that an
//!   object edited while no operator ran is passed (by the lane) as the first list brings it,
//!   not when the whole list is in (the controller's queue waits for that).
//! - `index`: kept beside kube's cache from the same events: which objects name each agent (the
//!   ownership rule looks only there once a first list is complete, O(1) per pass), what of an object makes a pass worth it
//!   (so the operator's own status writes wake nothing), and the objects its writes returned
//!   until the watch delivers them (no 409 from a stale copy: 106 at first, 0 since).
//! - `lean`: the objects parsed without `managedFields`, half of their JSON (BENCHMARKS.md, peak
//!   memory at 10,000 objects).
//! - `listing`: the first list of each large watch streamed as watch events (WatchList) instead
//!   of kube's default list at resourceVersion=0, one 22 MB body at 10,000 objects that made a
//!   restart's peak memory (64.4 MiB; 52 to 55 MiB streamed).
//! - `lane`: passes that decide how soon a generation slot is used again run at their time in
//!   tasks of their own, not behind whatever the queue holds (watch-to-call latency); so do a
//!   start's passes before its first list is complete.
//! - `context`: what every pass shares, and the pass itself (the Access decision, the sink,
//!   Events, metrics, backoff after errors).
//! - `kube_sink`: the executor's store: status writes and ledger writes, each conditional on the
//!   resourceVersion read.
//! - `events`: Events created directly, instead of kube's `Recorder`, which keeps six minutes of
//!   them and scans that cache on every publish (tens of MiB at 10,000 objects).
//! - `secrets`: the api-secret of an object, read only where RBAC grants it.
//! - `budgets`: the spend of every ledger record, watched, for `--budget`.
//! - `leader`: the Lease; a replica that loses it exits.
//! - `resolve`: the `resolve` and `approve` commands (annotations the passes act on).
//! - `error`: the controller's error and its category.

mod budgets;
mod context;
mod error;
mod events;
mod index;
mod kube_sink;
mod lane;
mod leader;
mod lean;
mod listing;
mod resolve;
mod secrets;
mod start;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as ControllerAction, Controller};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::api::{ApiSecret, ClientConfig};
use crate::metrics::Metrics;
use crate::reconcile::Settings;
use crate::resource::{AgentDynamics, API_SECRET_LABEL, FINALIZER};

pub use context::{objects_naming, Context};
pub use error::Error;
pub use resolve::{approve, resolve};

/// Everything `run` needs, parsed from flags and environment by `crate::cli`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub api: ClientConfig,
    pub default_secret: Option<ApiSecret>,
    pub namespace: Option<String>,
    pub concurrency: u16,
    pub settings: Settings,
    pub max_concurrent_generations: usize,
    pub generations_per_hour: Option<usize>,
    /// Caps on credits per period (`--budget`), none by default.
    pub budgets: Vec<crate::reconcile::budget::Budget>,
    /// Namespaces whose paid changes wait for approval (`*`: all).
    pub require_approval: Vec<String>,
    pub metrics_addr: SocketAddr,
    pub leader_election: Option<leader::LeaderConfig>,
    /// Where Secrets are read (RBAC grants them there and nowhere else).
    pub secret_scope: secrets::SecretScope,
}

pub use leader::LeaderConfig;
pub use secrets::SecretScope;

/// Run until SIGTERM/SIGINT (or, with leader election, until leadership is lost).
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    // Before anything that may wait on the API server: a stop must never depend on it.
    let stop = crate::shutdown::install(crate::shutdown::DEADLINE);
    let mut kube_config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!("cannot reach Kubernetes (KUBECONFIG or in-cluster config): {e}")
    })?;
    // Names the operator in managedFields and audit logs (else "unknown").
    kube_config.headers.push((
        reqwest::header::USER_AGENT,
        reqwest::header::HeaderValue::from_static(concat!(
            "dynamics-operator/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    let client = Client::try_from(kube_config)?;
    let metrics = Arc::new(Metrics::new());
    let server = tokio::spawn(crate::metrics::serve(config.metrics_addr, metrics.clone()));

    // The watches run from now on, leader or not: a standby keeps its cache warm and takes
    // over without a relist (see `start`).
    let watches = Watches::start(client.clone(), &config, metrics.clone());
    // Budgets count every ledger record: read before leading, and followed, like the cache.
    let budgets = budgets::start(&client, &config.budgets).await;
    let result = match &config.leader_election {
        Some(leader_config) => {
            // Followers are healthy and ready; they just do not reconcile.
            metrics.set_ready(true);
            // A follower waits here for as long as the leader lives: a signal ends the wait.
            let leadership = tokio::select! {
                acquired = leader::acquire(client.clone(), leader_config) => acquired?,
                signal = stop.requested() => {
                    tracing::info!(signal, "stopped before becoming leader");
                    server.abort();
                    return Ok(());
                }
            };
            tracing::info!(identity = %leader_config.identity, "became leader; starting the controller");
            let lost = leadership.lost();
            metrics.set_leader(true);
            run_controller(
                client,
                config.clone(),
                metrics.clone(),
                (watches, budgets),
                lost,
                stop,
            )
            .await;
            metrics.set_leader(false);
            leadership.release().await;
            Ok(())
        }
        None => {
            metrics.set_leader(true);
            run_controller(
                client,
                config.clone(),
                metrics.clone(),
                (watches, budgets),
                futures::future::pending(),
                stop,
            )
            .await;
            Ok(())
        }
    };
    server.abort();
    result
}

/// The watches of AgentDynamics and of the labelled Secrets, feeding kube's object cache and
/// the index, and the passes they ask for once this replica leads.
struct Watches {
    reader: reflector::Store<AgentDynamics>,
    index: Arc<index::ObjectIndex>,
    /// This replica leads: the start rule runs and changes pass from then on.
    lead: tokio::sync::oneshot::Sender<()>,
    /// Passes asked for, into the controller's queue (the start rule's delayed ones too).
    changes: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<AgentDynamics>>,
    /// Sends into `changes`, for the generation lane's hand-backs.
    to_controller: tokio::sync::mpsc::UnboundedSender<ObjectRef<AgentDynamics>>,
    /// Passes before the first list is complete, for the lane (the controller's queue waits
    /// for the list).
    before_list: tokio::sync::mpsc::UnboundedReceiver<String>,
    feed: tokio::task::JoinHandle<()>,
}

impl Watches {
    fn start(client: Client, config: &RunConfig, metrics: Arc<Metrics>) -> Watches {
        // Metadata only: the operator never keeps Secret values in memory; it reads one when a
        // pass needs it. One watch per namespace of the Secret scope, so RBAC can grant them
        // there only.
        secrets::set_scope(config.secret_scope.clone());
        let secret_apis: Vec<Api<PartialObjectMeta<Secret>>> =
            match config.secret_scope.watches(config.namespace.as_deref()) {
                None => vec![Api::all(client.clone())],
                Some(namespaces) => namespaces
                    .iter()
                    .map(|ns| Api::namespaced(client.clone(), ns))
                    .collect(),
            };

        let (reader, writer) = reflector::store();
        let index = Arc::new(index::ObjectIndex::beside(reader.clone()));
        // The index passes on only the events worth a pass: the operator's own status writes
        // change neither generation nor finalizers nor the refresh annotation, so they do not
        // wake it up. Parsed lean: without managedFields and labels (see `lean`).
        let lean_objects: Api<lean::LeanAgentDynamics> = match &config.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        // Streamed (see `listing`): at 10,000 objects a list in one body made a restart's peak
        // memory.
        let recent_objects = lean_objects.clone();
        let objects = listing::watch(lean_objects, watcher::Config::default().any_semantic())
            .default_backoff()
            .map_ok(lean::full_event)
            // Into kube's cache through the gate (see `start::Gate::before_list`).
            .map(|event| Input::Object(Box::new(event)));
        // Only Secrets labelled for this operator: it neither sees nor caches the others.
        let secret_selector = format!("{API_SECRET_LABEL}=true");
        let secrets = futures::stream::select_all(secret_apis.into_iter().map(|api| {
            watcher(
                api,
                watcher::Config::default()
                    .labels(&secret_selector)
                    .any_semantic(),
            )
            .default_backoff()
            .boxed()
        }))
        .map(|event| Input::Secret(Box::new(event)));
        let (lead, led) = tokio::sync::oneshot::channel::<()>();
        let led = futures::stream::once(led).map(|_| Input::Lead);
        let (to_controller, changes) = tokio::sync::mpsc::unbounded_channel();
        let (to_lane, before_list) = tokio::sync::mpsc::unbounded_channel();

        let mut gate = start::Gate::new(index.clone(), writer, config.settings.resync);
        let secret_users = reader.clone();
        let out = to_controller.clone();
        let inputs = futures::stream::select(futures::stream::select(objects, secrets), led);
        let (listed, first_list_done) = tokio::sync::oneshot::channel::<()>();
        let mut listed = Some(listed);
        let feed = tokio::spawn(async move {
            // Before the object watch sends its request (when `inputs` is first polled): an
            // edit made during the start is then in its list or among these changes.
            let recent = listing::changes_from_now(recent_objects, async move {
                let _ = first_list_done.await;
            })
            .await
            .map(|obj| Input::Recent(Box::new(obj.0)));
            let inputs = futures::stream::select(inputs, recent);
            futures::pin_mut!(inputs);
            while let Some(input) = inputs.next().await {
                let due = match input {
                    Input::Object(event) => match *event {
                        Ok(event) => {
                            if matches!(event, watcher::Event::InitDone) {
                                // The watch of recent changes has served its purpose.
                                if let Some(done) = listed.take() {
                                    let _ = done.send(());
                                }
                            }
                            gate.object_event(event)
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "watch of AgentDynamics failed; retrying with backoff");
                            continue;
                        }
                    },
                    Input::Secret(event) => match *event {
                        Ok(event) => match gate.secret_event(event) {
                            Some((ns, name)) => start::Due {
                                now: secrets::objects_using(&secret_users, &ns, &name),
                                ..start::Due::default()
                            },
                            None => continue,
                        },
                        Err(err) => {
                            tracing::warn!(error = %err, "watch of Secrets failed; retrying with backoff");
                            continue;
                        }
                    },
                    Input::Recent(obj) => gate.recent_change(*obj),
                    Input::Lead => gate.lead(),
                };
                for reference in due.now {
                    let _ = out.send(reference);
                }
                for key in due.before_list {
                    let _ = to_lane.send(key);
                }
                start::send_later(out.clone(), due.later);
            }
        });

        let ready_store = reader.clone();
        tokio::spawn(async move {
            // Ready once the first list is in the cache: before that, passes would see no
            // conflicts. The store's readiness wakes only its latest waiter (the controller
            // also waits on it), so ask again each second instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_secs(1), ready_store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        tracing::info!("object cache synced; ready");
                        metrics.set_ready(true);
                        return;
                    }
                    Ok(Err(err)) => {
                        return tracing::warn!(error = %err, "object cache never synced")
                    }
                    Err(_elapsed) => continue,
                }
            }
        });
        Watches {
            reader,
            index,
            lead,
            changes,
            to_controller,
            before_list,
            feed,
        }
    }
}

/// What the feed task takes in. Events are boxed: every item of the merged stream would
/// otherwise be as large as the largest event.
enum Input {
    Object(Box<Result<watcher::Event<AgentDynamics>, watcher::Error>>),
    Secret(Box<Result<watcher::Event<PartialObjectMeta<Secret>>, watcher::Error>>),
    /// An object changed while the first list was coming (`listing::changes_from_now`).
    Recent(Box<AgentDynamics>),
    Lead,
}

async fn run_controller(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    (watches, budgets): (Watches, Option<Arc<crate::executor::Budgets>>),
    lost: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    stop: crate::shutdown::Stop,
) {
    let Watches {
        reader,
        index,
        lead,
        changes,
        to_controller,
        before_list,
        feed,
    } = watches;
    // Objects woken for a free generation slot, and looks at running generations, go through
    // the generation lane; what the lane hands back goes through the controller's queue.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (polls_tx, polls) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context::new(
        client.clone(),
        &config,
        metrics.clone(),
        index,
        wake,
        polls_tx,
        budgets,
    ));
    let lane = lane::Lane::new(
        ctx.clone(),
        reader.clone(),
        to_controller,
        config.concurrency.into(),
    );
    let lane = tokio::spawn(lane.run(woken, polls, before_list));
    let changes = futures::stream::unfold(changes, |mut rx| async move {
        let reference = rx.recv().await?;
        Some((reference, rx))
    });
    let _ = lead.send(());

    // Changes come in as plain references (`reference_to`), so the controller's own trigger
    // stream is empty; the cache it reads from is fed by the watches.
    let no_objects = futures::stream::pending::<Result<AgentDynamics, watcher::Error>>();
    Controller::for_stream(no_objects, reader)
        .reconcile_on(changes)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown_signal(stop, lost))
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile failed");
            }
        })
        .await;
    lane.abort();
    feed.abort();
    tracing::info!("controller stopped");
}

async fn shutdown_signal(stop: crate::shutdown::Stop, lost: impl std::future::Future<Output = ()>) {
    tokio::select! {
        signal = stop.requested() => tracing::info!(signal, "stopping the controller"),
        _ = lost => tracing::warn!("leadership lost; shutting down"),
    }
}

async fn reconcile(obj: Arc<AgentDynamics>, ctx: Arc<Context>) -> Result<ControllerAction, Error> {
    // The cache may not have caught up with this object's last status write yet.
    let key = context::key_of(&obj);
    let _lock = ctx.locks.lock(&key).await;
    // Read after the lock: a generation-lane pass may just have written.
    let obj = ctx.freshest(obj);
    if ctx.was_released(&obj) {
        // Our own finalizer removal has not reached the cache yet: the cleanup already ran.
        tracing::debug!(object = %key, "already released");
        return Ok(ControllerAction::await_change());
    }
    tracing::debug!(object = %key, "reconcile started");
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<AgentDynamics> = Api::namespaced(ctx.client.clone(), &namespace);
    let deleting = obj.metadata.deletion_timestamp.is_some()
        && obj.finalizers().iter().any(|f| f == FINALIZER);
    let released = obj.clone();
    let started = std::time::Instant::now();
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(obj) => ctx.controller_pass(&api, obj, false).await,
            FinalizerEvent::Cleanup(obj) => ctx.controller_pass(&api, obj, true).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if deleting && result.is_ok() {
        // The cleanup succeeded and kube removed the finalizer.
        ctx.mark_released(&released);
    }
    ctx.metrics.reconcile_took(started.elapsed());
    result
}

/// Unexpected errors (API server trouble, write conflicts, cleanup refused): retry with
/// per-object exponential backoff and jitter, never hot.
fn error_policy(obj: Arc<AgentDynamics>, err: &Error, ctx: Arc<Context>) -> ControllerAction {
    ControllerAction::requeue(retry_after_error(&obj, err, &ctx))
}

/// When to look again after a failed pass, from the controller or the generation lane.
fn retry_after_error(obj: &AgentDynamics, err: &Error, ctx: &Context) -> Duration {
    let key = context::key_of(obj);
    if let Some(after) = err.cleanup_wait() {
        // Not a failure: the pass said when to look again, and the status says why.
        return after;
    }
    let conflict = err.is_write_conflict();
    ctx.metrics.reconciled("error");
    if conflict {
        // Another writer changed the object: look again soon with a fresh copy.
        tracing::debug!(object = %key, "status write conflict; retrying");
        return Duration::from_millis(500);
    }
    ctx.metrics.error(err.category());
    let delay = ctx.backoff_after_error(&key);
    tracing::warn!(object = %key, category = err.category(), error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    delay
}
