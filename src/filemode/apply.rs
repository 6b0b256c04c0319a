//! `apply`: passes over every object until each is Ready, suspended or Stalled, or `--timeout`.
//!
//! Each object has its own requeue time (what the executor returned) and its own count of
//! transient failures; the generation guard is per account, so at most
//! `--max-concurrent-generations` generations run at once on an account whatever the number of
//! objects. Status is saved to the state file by
//! the executor through `FileSink`, atomically, before and after every remote write.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::executor::{
    Executor, GenerateCall, LedgerStore, Note, ObjectView, PassError, PassResult, SaveError,
    StatusSink,
};
use crate::reconcile::guard::AccountGuards;
use crate::reconcile::ledger::LedgerState;
use crate::reconcile::plan::LedgerWrite;
use crate::reconcile::{Health, Settings};
use crate::resource::AgentDynamicsStatus;

use super::output::{self, OutputFormat};
use super::state::StateStore;
use super::{exit, prepare, ApplyArgs, Mode, Object};
use crate::reconcile::CREDITS_PER_GENERATION;

/// How often a line says what is still running, when nothing else was printed.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Where an object stands in this run.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    Pending,
    Done(Health),
    Working(Health),
}

struct Tracked {
    object: Object,
    progress: Progress,
    next_at: Instant,
    failures: u32,
    running: bool,
    last_printed: Option<(String, String)>,
}

/// Passes run at once. Enough to keep the API busy; few enough that an interrupted or timed-out
/// run only waits for these.
const PASSES_IN_FLIGHT: usize = 64;

pub(super) async fn run(args: ApplyArgs) -> anyhow::Result<i32> {
    if args.timeout.is_zero() {
        anyhow::bail!("--timeout must be greater than 0");
    }
    let common = &args.common;
    if common.output == OutputFormat::Markdown {
        anyhow::bail!("-o markdown is for plan; apply prints table, json or yaml");
    }
    let saved = args
        .plan
        .as_deref()
        .map(super::plan::read_saved)
        .transpose()?;
    let mut prepared = match prepare(common, Mode::Apply).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    // A saved plan: the present must make the same plan, or nothing is changed; then every
    // object may buy only the key the plan showed for it (an approval per object).
    if let Some(saved) = &saved {
        let now = super::plan::compute(&prepared, &common.budgets).await;
        let differences = super::plan::differences(saved, &now);
        if !differences.is_empty() {
            eprintln!(
                "error: the saved plan {} no longer holds; nothing was changed. Make a new plan. What differs:\n  {}",
                args.plan.as_deref().unwrap_or_else(|| std::path::Path::new("")).display(),
                differences.join("\n  ")
            );
            return Ok(exit::ERROR);
        }
        for object in &mut prepared.objects {
            let planned = saved.items.iter().find(|i| {
                i.action == super::plan::Step::Generate
                    && object.manifest.namespace == i.namespace
                    && object.manifest.name == i.name
            });
            object.view.approve = planned.map(|i| i.key.clone());
        }
    }
    let simulated = prepared.remote.simulator.is_some();
    let settings = settings(simulated);
    let guards = AccountGuards::new(args.max_concurrent_generations, args.generations_per_hour);
    // Objects waiting for a generation slot are woken when one frees, instead of polling.
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut executor =
        Executor::new(prepared.remote.client.clone(), guards, settings).with_wake(wake);
    if let Some(budgets) = super::budgets(&prepared.store, &common.budgets) {
        executor = executor.with_budgets(budgets);
    }
    if saved.is_some() {
        executor = executor.with_approval(crate::executor::ApprovalScope::new(vec!["*".into()]));
    }
    let executor = Arc::new(executor);
    let store = Arc::new(Mutex::new(prepared.store));
    let log = ProgressLog(Instant::now());

    // The current spec (and its generation) is recorded before anything is sent for it.
    let records = prepared
        .objects
        .iter()
        .map(|o| (o.view.key.clone(), o.record.clone()))
        .collect();
    if let Err(e) = lock(&store).put_all(records) {
        eprintln!("error: {e:#}");
        return Ok(exit::ERROR);
    }

    let start = Instant::now();
    let deadline = start + args.timeout;
    let mut passes = Scheduler::new(prepared.objects, executor, store.clone(), start);
    let mut stop: Option<i32> = None;
    let mut fatal: Option<String> = None;
    let mut last_heartbeat = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        let now = Instant::now();
        if stop.is_none() && now >= deadline {
            stop = Some(exit::PENDING);
        }
        if stop.is_none() {
            passes.start_due(now);
        }
        if passes.running.is_empty() && (stop.is_some() || passes.all_done()) {
            break;
        }
        let wake = if stop.is_some() {
            deadline.max(now) + Duration::from_secs(3600)
        } else {
            passes.next_due(deadline).min(last_heartbeat + HEARTBEAT)
        };
        tokio::select! {
            Some(joined) = passes.running.join_next() => {
                let (index, result, notes) = joined?;
                if let Err(message) = passes.finished(index, result, notes, &log) {
                    // The state file could not be written: stop, since a marker that is not
                    // on disk protects nothing.
                    fatal = Some(message);
                    stop.get_or_insert(exit::ERROR);
                }
            }
            Some(key) = woken.recv() => passes.wake(&key),
            _ = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= last_heartbeat + HEARTBEAT && stop.is_none() {
                    last_heartbeat = Instant::now();
                    passes.print_waiting(&log);
                }
            }
            _ = &mut ctrl_c, if stop.is_none() => {
                eprintln!("interrupted: finishing the calls in flight; the state is saved, run apply again to resume");
                stop = Some(exit::INTERRUPTED);
            }
        }
    }

    if let Some(message) = &fatal {
        eprintln!("error: {message}");
    }
    let timed_out = stop == Some(exit::PENDING);
    let mut store = lock(&store);
    // One state file again (the journal folded in); a failure here loses nothing: the journal
    // is replayed by the next run.
    if let Err(e) = store.compact() {
        eprintln!("warning: {e:#}");
    }
    report(
        &Outcome {
            output: common.output,
            tracked: &passes.tracked,
            initial_generations: &passes.initial_generations,
            simulated,
            elapsed: start.elapsed(),
            timeout: timed_out.then_some(args.timeout),
            stop,
        },
        &store,
    )
}

/// How the run ended, for the report.
struct Outcome<'a> {
    output: OutputFormat,
    tracked: &'a [Tracked],
    initial_generations: &'a [i64],
    simulated: bool,
    elapsed: Duration,
    /// Set when the run timed out.
    timeout: Option<Duration>,
    stop: Option<i32>,
}

/// Print the result (stdout) and the summary (stderr), and give the exit code.
fn report(run: &Outcome, store: &StateStore) -> anyhow::Result<i32> {
    let rows: Vec<Row> = run
        .tracked
        .iter()
        .map(|t| {
            let status = store
                .get(&t.object.view.key)
                .map(|r| r.status.clone())
                .unwrap_or_default();
            Row { t, status }
        })
        .collect();
    print_result(run.output, &rows, store, run.simulated)?;

    let started: i64 = rows
        .iter()
        .zip(run.initial_generations)
        .map(|(r, before)| (r.status.generations - before).max(0))
        .sum();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for row in &rows {
        *counts.entry(row.state()).or_default() += 1;
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let elapsed = humantime::format_duration(Duration::from_secs(run.elapsed.as_secs()));
    eprintln!(
        "apply: {} in {elapsed}; {started} generation(s) started ({} credits){}",
        if summary.is_empty() {
            "nothing to do".into()
        } else {
            summary.join(", ")
        },
        started as u64 * CREDITS_PER_GENERATION,
        if run.simulated {
            " on the SIMULATED API"
        } else {
            ""
        }
    );
    if let Some(timeout) = run.timeout {
        eprintln!(
            "error: timed out after {} before every object was Ready; run apply again to continue",
            humantime::format_duration(timeout)
        );
    }
    if let Some(code) = run.stop.filter(|c| *c != exit::PENDING) {
        return Ok(code);
    }
    let all_ready = rows
        .iter()
        .all(|r| matches!(r.state(), "Ready" | "Suspended"));
    Ok(if all_ready { exit::OK } else { exit::PENDING })
}

/// Which object's pass runs when: objects by the time of their next pass, at most
/// `PASSES_IN_FLIGHT` passes at once, and what each finished pass says about the next.
struct Scheduler {
    tracked: Vec<Tracked>,
    index_of: std::collections::HashMap<String, usize>,
    /// Soonest first. An entry whose time no longer matches its object's `next_at` is stale and
    /// skipped.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    done: usize,
    running: JoinSet<(usize, Result<PassResult, PassError>, Vec<Note>)>,
    /// Each object's `status.generations` before the run, for the summary.
    initial_generations: Vec<i64>,
    executor: Arc<Executor>,
    store: Arc<Mutex<StateStore>>,
}

impl Scheduler {
    fn new(
        objects: Vec<Object>,
        executor: Arc<Executor>,
        store: Arc<Mutex<StateStore>>,
        start: Instant,
    ) -> Self {
        let tracked: Vec<Tracked> = objects
            .into_iter()
            .map(|object| Tracked {
                object,
                progress: Progress::Pending,
                next_at: start,
                failures: 0,
                running: false,
                last_printed: None,
            })
            .collect();
        Scheduler {
            index_of: tracked
                .iter()
                .enumerate()
                .map(|(i, t)| (t.object.view.key.clone(), i))
                .collect(),
            due: (0..tracked.len()).map(|i| Reverse((start, i))).collect(),
            done: 0,
            running: JoinSet::new(),
            initial_generations: tracked
                .iter()
                .map(|t| t.object.record.status.generations)
                .collect(),
            tracked,
            executor,
            store,
        }
    }

    fn all_done(&self) -> bool {
        self.done == self.tracked.len()
    }

    /// Start the passes that are due. Bounded, so that at --timeout only a few calls are still
    /// to finish, and memory does not grow with the number of objects due at once.
    fn start_due(&mut self, now: Instant) {
        while let Some(&Reverse((at, index))) = self.due.peek() {
            if at > now || self.running.len() >= PASSES_IN_FLIGHT {
                break;
            }
            self.due.pop();
            let t = &mut self.tracked[index];
            if t.running || matches!(t.progress, Progress::Done(_)) || t.next_at != at {
                continue;
            }
            t.running = true;
            let view = t.object.view.clone();
            let sink = FileSink {
                store: self.store.clone(),
                key: view.key.clone(),
                read: view.status.clone(),
                notes: Vec::new(),
            };
            let pass = one_pass(self.executor.clone(), index, view, t.failures, sink);
            self.running.spawn(pass);
        }
    }

    /// When the next pass is due. With every pass slot taken, the next finished pass wakes the
    /// loop, not the clock.
    fn next_due(&self, deadline: Instant) -> Instant {
        match self.due.peek() {
            Some(Reverse((at, _))) if self.running.len() < PASSES_IN_FLIGHT => (*at).min(deadline),
            _ => deadline,
        }
    }

    fn requeue(&mut self, index: usize, after: Duration) {
        let t = &mut self.tracked[index];
        t.next_at = Instant::now() + after;
        self.due.push(Reverse((t.next_at, index)));
    }

    /// Take in a finished pass: print what it said, and schedule the object's next one. `Err`
    /// with the message when the run must stop (the state could not be written).
    fn finished(
        &mut self,
        index: usize,
        result: Result<PassResult, PassError>,
        notes: Vec<Note>,
        log: &ProgressLog,
    ) -> Result<(), String> {
        let t = &mut self.tracked[index];
        t.running = false;
        for note in notes {
            let prefix = if note.warning { "warning: " } else { "" };
            log.line(
                &t.object.view.key,
                &format!("{prefix}{}: {}", note.reason, note.message),
            );
            t.last_printed = Some((note.reason, String::new()));
        }
        // The status the pass saved is what the next pass starts from.
        if let Some(record) = lock(&self.store).get(&t.object.view.key) {
            t.object.view.status = record.status.clone();
        }
        match result {
            Ok(PassResult::Requeue { next, health }) => {
                t.failures = if next.is_backoff() {
                    t.failures.saturating_add(1)
                } else {
                    0
                };
                let printed = (health.reason().to_string(), health.message().to_string());
                let same_event = t.last_printed.as_ref().is_some_and(|(reason, message)| {
                    reason == &printed.0 && (message.is_empty() || message == &printed.1)
                });
                if !same_event {
                    log.line(&t.object.view.key, &format!("{}: {}", printed.0, printed.1));
                }
                t.last_printed = Some(printed);
                t.progress = match health {
                    // Nothing will change a stalled object during this run: the files and
                    // secrets are fixed, so waiting for the slow retry would only idle.
                    Health::Ready { .. } | Health::Suspended | Health::Stalled { .. } => {
                        self.done += 1;
                        Progress::Done(health)
                    }
                    Health::Progressing { .. } => Progress::Working(health),
                };
                self.requeue(index, next.after());
                Ok(())
            }
            Ok(PassResult::Released) => {
                self.done += 1;
                t.progress = Progress::Done(Health::Suspended);
                Ok(())
            }
            Err(PassError::Save(SaveError::Conflict)) => {
                log.line(
                    &t.object.view.key,
                    "its state changed during the pass; reading it again",
                );
                self.requeue(index, Duration::from_secs(1));
                Ok(())
            }
            Err(e) => Err(format!("{}: {e}", t.object.view.key)),
        }
    }

    /// A generation slot freed: the waiting object's turn may have come.
    fn wake(&mut self, key: &str) {
        if let Some(&index) = self.index_of.get(key) {
            let t = &self.tracked[index];
            if !t.running && !matches!(t.progress, Progress::Done(_)) {
                self.requeue(index, Duration::ZERO);
            }
        }
    }

    /// The objects still at work, on one line.
    fn print_waiting(&self, log: &ProgressLog) {
        let waiting: Vec<String> = self
            .tracked
            .iter()
            .filter_map(|t| match &t.progress {
                Progress::Working(h) => Some(format!("{} ({})", t.object.view.key, h.reason())),
                Progress::Pending => Some(format!("{} (starting)", t.object.view.key)),
                Progress::Done(_) => None,
            })
            .collect();
        if !waiting.is_empty() {
            log.line("waiting", &waiting.join(", "));
        }
    }
}

async fn one_pass(
    executor: Arc<Executor>,
    index: usize,
    view: ObjectView,
    failures: u32,
    mut sink: FileSink,
) -> (usize, Result<PassResult, PassError>, Vec<Note>) {
    let result = executor.pass(&view, failures, &mut sink).await;
    (index, result, sink.notes)
}

/// Requeue timings for a command someone watches: polls start sooner than the controller's, and
/// the simulator's fast generations are followed closely.
fn settings(simulated: bool) -> Settings {
    let defaults = Settings::default();
    Settings {
        poll_min: if simulated {
            Duration::from_millis(250)
        } else {
            defaults.poll_min
        },
        poll_max: if simulated {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(15)
        },
        ..defaults
    }
}

/// The executor's status store for one object: the state file, with the conditional write the
/// controller gets from resourceVersion (the apply lock makes a conflict all but impossible).
struct FileSink {
    store: Arc<Mutex<StateStore>>,
    key: String,
    /// The status as last read or saved by this pass.
    read: AgentDynamicsStatus,
    notes: Vec<Note>,
}

impl FileSink {
    fn save_now(&mut self, status: &AgentDynamicsStatus) -> Result<(), SaveError> {
        let mut store = lock(&self.store);
        let Some(mut record) = store.get(&self.key).cloned() else {
            return Err(SaveError::Gone(self.key.clone()));
        };
        if record.status != self.read {
            return Err(SaveError::Conflict);
        }
        record.status = status.clone();
        store
            .put(&self.key, record)
            .map_err(|e| SaveError::store("writing the state", e))?;
        self.read = status.clone();
        Ok(())
    }
}

/// The state file is the ledger: the marker and the status written with the apply lock held
/// record every purchase; a write adds only its spend to this object's tallies.
impl LedgerStore for FileSink {
    fn read_ledger(
        &mut self,
        agent_id: &str,
    ) -> impl std::future::Future<Output = LedgerState> + Send {
        let record = lock(&self.store).agent_record(agent_id, &self.key);
        std::future::ready(LedgerState::Read {
            record,
            version: None,
        })
    }

    fn write_ledger(
        &mut self,
        agent_id: &str,
        write: &LedgerWrite,
    ) -> impl std::future::Future<Output = Result<Option<String>, SaveError>> + Send {
        let result = lock(&self.store)
            .record_ledger(&self.key, agent_id, &write.record)
            .map(|()| None)
            .map_err(|e| SaveError::store("recording the purchase in the state", e));
        std::future::ready(result)
    }
}

impl StatusSink for FileSink {
    fn stored(&self) -> Option<&AgentDynamicsStatus> {
        Some(&self.read)
    }

    fn save(
        &mut self,
        status: &AgentDynamicsStatus,
    ) -> impl std::future::Future<Output = Result<(), SaveError>> + Send {
        // The file is small and written at once; nothing to await.
        std::future::ready(self.save_now(status))
    }

    fn reload(
        &mut self,
    ) -> impl std::future::Future<Output = Result<AgentDynamicsStatus, SaveError>> + Send {
        let stored = lock(&self.store).get(&self.key).map(|r| r.status.clone());
        let result = match stored {
            Some(status) => {
                self.read = status.clone();
                Ok(status)
            }
            None => Err(SaveError::Gone(self.key.clone())),
        };
        std::future::ready(result)
    }

    fn note(&mut self, note: Note) {
        self.notes.push(note);
    }

    /// The run's summary counts from the status (`generations`), which records every call that
    /// may have been charged.
    fn generate_called(&mut self, _outcome: GenerateCall, _account: &str) {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Progress lines on standard error (standard output is kept for the result).
struct ProgressLog(Instant);

impl ProgressLog {
    fn line(&self, key: &str, text: &str) {
        eprintln!("[{:>6.1}s] {key}: {text}", self.0.elapsed().as_secs_f64());
    }
}

struct Row<'a> {
    t: &'a Tracked,
    status: AgentDynamicsStatus,
}

impl Row<'_> {
    fn state(&self) -> &'static str {
        match &self.t.progress {
            Progress::Done(Health::Ready { .. }) => "Ready",
            Progress::Done(Health::Suspended) => "Suspended",
            Progress::Done(Health::Stalled { .. }) => "Stalled",
            Progress::Done(Health::Progressing { .. }) | Progress::Working(_) => "InProgress",
            Progress::Pending => "NotStarted",
        }
    }
}

fn print_result(
    format: OutputFormat,
    rows: &[Row],
    store: &StateStore,
    simulated: bool,
) -> anyhow::Result<()> {
    if format != OutputFormat::Table {
        let items: Vec<_> = rows
            .iter()
            .filter_map(|r| {
                store
                    .get(&r.t.object.view.key)
                    .map(|record| output::resource(&r.t.object.manifest, record))
            })
            .collect();
        print!("{}", output::render(format, &output::list(&items))?);
        return Ok(());
    }
    let header = [
        "NAMESPACE",
        "NAME",
        "AGENT",
        "MODEL",
        "REMOTE",
        "READY",
        "REASON",
        "GENERATIONS",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let m = &r.t.object.manifest;
            vec![
                m.namespace.clone(),
                m.name.clone(),
                m.object.spec.agent_id.clone(),
                output::or_dash(m.object.spec.model.as_deref()),
                output::or_dash(r.status.remote_status.as_deref()),
                output::ready_cell(m.object.spec.suspend, &r.status),
                output::reason_cell(&r.status),
                r.status.generations.to_string(),
            ]
        })
        .collect();
    if cells.is_empty() {
        println!("No AgentDynamics to apply.");
        return Ok(());
    }
    print!("{}", output::table(&header, &cells));
    // What to do about each object that did not make it, in words.
    let mut explained = BTreeSet::new();
    for row in rows {
        let health = match &row.t.progress {
            Progress::Done(h @ Health::Stalled { .. })
            | Progress::Working(h)
            | Progress::Done(h @ Health::Progressing { .. }) => h,
            _ => continue,
        };
        if explained.insert(row.t.object.view.key.clone()) {
            println!(
                "{}: {}: {}",
                row.t.object.view.key,
                health.reason(),
                health.message()
            );
        }
    }
    if simulated {
        println!("SIMULATED API: these results come from the built-in simulator (--simulator), not from bitHuman.");
    }
    Ok(())
}
