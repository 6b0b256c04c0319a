//! The report, the benchmark's last phase: [`summarize`] computes the figures from the run's
//! snapshots once; [`print_table`] prints them as Markdown on stdout and [`write_json`] writes
//! them, with the parameters and the raw snapshots, as JSON under `target/bench/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dynamics_operator::sim::SimConfig;
use serde_json::{json, Value};

use super::measure::{self, api_conflicts, api_writes, diff_map, OperatorMetrics, ProcSample};
use super::support::controlplane;
use super::{
    agent_id, command_output, cpu_model, object_name, percentile, restart, secs, sim_calls,
    worker_idle, Args, Converged, Created, EditResult, LostReply, Scenario, Snapshot, World,
};

/// What the phases measured, handed from the run to the report.
pub(super) struct Phases {
    pub start: Snapshot,
    pub created: Created,
    pub converged: Converged,
    pub at_convergence: Snapshot,
    pub idle_start: Snapshot,
    pub idle_end: Snapshot,
    pub edits: Vec<EditResult>,
    pub after_edits: Snapshot,
    pub lost: Option<LostReply>,
    pub restart: Option<restart::Takeover>,
    pub failover: Option<restart::Takeover>,
    pub load_before: String,
    pub wall: Duration,
}

/// The figures both the table and the JSON show, computed once from the snapshots.
pub(super) struct Summary {
    n: usize,
    /// The target's own kinds, whose API-server writes count as object writes.
    kinds: &'static [&'static str],
    /// Simulator calls during convergence.
    posts: u64,
    gets: u64,
    puts: u64,
    /// (ms, waits) the simulator's workers were idle between generations.
    idle_ms: u64,
    idle_waits: u64,
    status_writes: Option<f64>,
    reconciles: Option<f64>,
    watch_changes: u64,
    api_conv: Option<BTreeMap<String, f64>>,
    object_writes: Option<f64>,
    event_writes: Option<f64>,
    conflicts: Option<f64>,
    /// Create to converged per object, sorted (s).
    latencies: Vec<f64>,
    last_create_to_done: Option<f64>,
    idle_posts: u64,
    idle_gets: u64,
    idle_puts: u64,
    idle_status_writes: Option<f64>,
    idle_reconciles: Option<f64>,
    idle_watch_changes: u64,
    idle_api: Option<BTreeMap<String, f64>>,
    idle_api_writes: Option<f64>,
    idle_cpu: f64,
    /// Edit to remote call and to Ready again, sorted (s).
    to_call: Vec<f64>,
    edits_missed: usize,
    to_ready: Vec<f64>,
    cpu_conv: f64,
    apiserver_cpu: Option<f64>,
    etcd_cpu: Option<f64>,
    bench_cpu: f64,
    peak_rss_mib: f64,
    rss_after_idle_mib: f64,
    cores: usize,
    converged_s: Option<f64>,
}

impl Summary {
    fn per_object(&self, x: f64) -> f64 {
        x / self.n as f64
    }
}

/// The `q` quantile of sorted seconds, in ms.
fn ms(sorted: &[f64], q: f64) -> f64 {
    percentile(sorted, q) * 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    match v {
        // `+ 0.0` turns -0.0 into 0.0.
        Some(v) if v.is_finite() => format!("{:.prec$}", v + 0.0),
        _ => "n/a".to_string(),
    }
}

/// Computes the figures of the run from its snapshots: differences between the phases'
/// counters, latencies and CPU and memory of the target.
pub(super) fn summarize(scenario: &Scenario, world: &World, p: &Phases) -> Summary {
    let n = scenario.n;
    let nf = n as f64;
    let (start, conv) = (&p.start, &p.at_convergence);
    let (idle_ms, idle_waits) = {
        let (a, b) = (worker_idle(&conv.sim), worker_idle(&start.sim));
        (a.0 - b.0, a.1 - b.1)
    };
    let op = |s: &Snapshot, f: &dyn Fn(&OperatorMetrics) -> f64| s.op.as_ref().map(f);
    let op_delta = |f: &dyn Fn(&OperatorMetrics) -> f64, a: &Snapshot, b: &Snapshot| match (
        op(a, f),
        op(b, f),
    ) {
        (Some(x), Some(y)) => Some(x - y),
        _ => None,
    };
    let api_conv = match (&conv.api, &start.api) {
        (Some(a), Some(b)) => Some(diff_map(a, b)),
        _ => None,
    };
    // The target's own kinds; the benchmark's N creates (per kind) are subtracted.
    let kinds: &'static [&'static str] = match scenario.peer {
        // The purchase ledger is the operator's kind too: its writes count.
        None => &["agentdynamics", "dynamicsledgers"],
        Some(_) => &["requests", "disposablerequests"],
    };
    let bench_creates = nf * scenario.peer.map_or(1, |m| m.objects_per_object()) as f64;
    let object_writes = api_conv.as_ref().map(|m| {
        kinds.iter().map(|k| api_writes(m, k)).sum::<f64>() - bench_creates
            + api_writes(m, "providerconfigusages")
    });
    let event_writes = api_conv.as_ref().map(|m| api_writes(m, "events"));
    let conflicts = api_conv.as_ref().map(api_conflicts);

    let latencies: Vec<f64> = {
        let st = world.watch.lock().unwrap();
        let created_at = |i: usize| st.created.get(&object_name(i)).copied();
        (0..n)
            .filter_map(|i| {
                let done = p.converged.per_object.get(&agent_id(i))?;
                Some(secs(done.saturating_duration_since(created_at(i)?)))
            })
            .collect()
    };
    let last_create = {
        let st = world.watch.lock().unwrap();
        (0..n)
            .filter_map(|i| st.created.get(&object_name(i)).copied())
            .max()
    };
    let last_done = p.converged.per_object.values().max().copied();
    let last_create_to_done = match (last_create, last_done) {
        (Some(c), Some(d)) => Some(secs(d.saturating_duration_since(c))),
        _ => None,
    };

    let (is, ie) = (&p.idle_start, &p.idle_end);
    let idle_api = match (&ie.api, &is.api) {
        (Some(a), Some(b)) => Some(diff_map(a, b)),
        _ => None,
    };
    let idle_api_writes = idle_api.as_ref().map(|m| {
        measure::COUNTED_RESOURCES
            .iter()
            .map(|r| api_writes(m, r))
            .sum::<f64>()
    });

    let delta_cpu = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    Summary {
        n,
        kinds,
        posts: sim_calls(&conv.sim, &start.sim, "generate"),
        gets: sim_calls(&conv.sim, &start.sim, "get"),
        puts: sim_calls(&conv.sim, &start.sim, "update"),
        idle_ms,
        idle_waits,
        status_writes: op_delta(&|m| m.status_writes, conv, start),
        reconciles: op_delta(&|m| m.reconciles_total(), conv, start),
        watch_changes: conv.watch_changes - start.watch_changes,
        api_conv,
        object_writes,
        event_writes,
        conflicts,
        latencies: sorted(latencies),
        last_create_to_done,
        idle_posts: sim_calls(&ie.sim, &is.sim, "generate"),
        idle_gets: sim_calls(&ie.sim, &is.sim, "get"),
        idle_puts: sim_calls(&ie.sim, &is.sim, "update"),
        idle_status_writes: op_delta(&|m| m.status_writes, ie, is),
        idle_reconciles: op_delta(&|m| m.reconciles_total(), ie, is),
        idle_watch_changes: ie.watch_changes - is.watch_changes,
        idle_api,
        idle_api_writes,
        idle_cpu: ie.target.cpu_s - is.target.cpu_s,
        to_call: sorted(p.edits.iter().filter_map(|e| e.to_call.map(secs)).collect()),
        edits_missed: p.edits.iter().filter(|e| e.to_call.is_none()).count(),
        to_ready: sorted(
            p.edits
                .iter()
                .filter_map(|e| e.to_ready.map(secs))
                .collect(),
        ),
        cpu_conv: conv.target.cpu_s - start.target.cpu_s,
        apiserver_cpu: delta_cpu(conv.apiserver, start.apiserver),
        etcd_cpu: delta_cpu(conv.etcd, start.etcd),
        bench_cpu: conv.bench.cpu_s - start.bench.cpu_s,
        peak_rss_mib: p.after_edits.target.hwm_kib as f64 / 1024.0,
        rss_after_idle_mib: ie.target.rss_kib as f64 / 1024.0,
        cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
        converged_s: p.converged.all.map(secs),
    }
}

/// Prints the summary as a Markdown table (metric, value, notes) on stdout.
pub(super) fn print_table(
    args: &Args,
    scenario: &Scenario,
    world: &World,
    p: &Phases,
    s: &Summary,
) {
    let n = scenario.n;
    let nf = n as f64;
    let per_obj = |x: f64| s.per_object(x);
    // "a / b", each per object.
    let per_obj_pair = |a: Option<f64>, b: Option<f64>| {
        format!(
            "{} / {}",
            fmt_opt(a.map(per_obj), 2),
            fmt_opt(b.map(per_obj), 2)
        )
    };
    let (start, conv) = (&p.start, &p.at_convergence);
    let mut rows: Vec<(String, String, String)> = vec![
        (
            "target".into(),
            scenario.target_name(),
            match scenario.peer {
                None => format!(
                    "--concurrency {} --max-concurrent-generations {} {}",
                    args.concurrency,
                    scenario.limit,
                    [("--poll-min", scenario.poll_min), ("--poll-max", scenario.poll_max)]
                        .iter()
                        .filter_map(|(f, d)| d.map(|d| format!("{f} {}", humantime::format_duration(d))))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                Some(_) => format!(
                    "{} {}",
                    scenario.peer_poll
                        .map(|d| format!("--poll {}", humantime::format_duration(d)))
                        .unwrap_or_else(|| "--poll (default 1m)".into()),
                    scenario.peer_rate
                        .map(|r| format!("--max-reconcile-rate {r}"))
                        .unwrap_or_else(|| "--max-reconcile-rate (default 10)".into())
                ),
            },
        ),
        (
            "objects / profile / accounts".into(),
            format!("{n} / {} / {}", scenario.profile.name(), scenario.accounts),
            format!(
                "generation {}, limit {} per account",
                humantime::format_duration(scenario.generation_time),
                if scenario.limit == 0 { "none".to_string() } else { scenario.limit.to_string() },
            ),
        ),
        (
            "create N (s)".into(),
            format!("{:.2}", secs(p.created.took)),
            format!(
                "{:.0} creates/s, parallelism {}, {} retries",
                nf / secs(p.created.took),
                args.create_parallelism,
                p.created.retries
            ),
        ),
        (
            "first create -> all converged (s)".into(),
            fmt_opt(s.converged_s, 2),
            format!(
                "floor {:.2}s ({}); x{} of floor; simulator record {} s, Ready {} s",
                secs(scenario.floor),
                scenario.floor_formula(),
                fmt_opt(s.converged_s.map(|c| c / secs(scenario.floor)), 2),
                fmt_opt(p.converged.record.map(secs), 2),
                fmt_opt(p.converged.ready.map(secs), 2),
            ),
        ),
        (
            "API workers idle between generations (s)".into(),
            format!("{:.2}", s.idle_ms as f64 / 1000.0),
            format!(
                "{} waits; each second here costs 1/limit s over the floor (limited profiles only)",
                s.idle_waits
            ),
        ),
        (
            "last create -> all converged (s)".into(),
            fmt_opt(s.last_create_to_done, 2),
            "on the simulator's record, after the last create returned".into(),
        ),
        (
            "create -> converged per object p50/p90/p99/max (s)".into(),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                percentile(&s.latencies, 0.5),
                percentile(&s.latencies, 0.9),
                percentile(&s.latencies, 0.99),
                percentile(&s.latencies, 1.0)
            ),
            "from its create call returning to the simulator's record showing it".into(),
        ),
        (
            "remote calls per object POST / GET / PUT".into(),
            format!(
                "{:.2} / {:.2} / {:.2}",
                per_obj(s.posts as f64),
                per_obj(s.gets as f64),
                per_obj(s.puts as f64)
            ),
            format!(
                "simulator counters; totals {} / {} / {}{}; generations started {}, overlapping {}",
                s.posts,
                s.gets,
                s.puts,
                match (&conv.op, &start.op) {
                    (Some(a), Some(b)) => format!(
                        " (operator metric {:.0} / {:.0} / {:.0})",
                        a.remote("generate") - b.remote("generate"),
                        a.remote("get") - b.remote("get"),
                        a.remote("update") - b.remote("update")
                    ),
                    _ => String::new(),
                },
                conv.sim.generations_started - start.sim.generations_started,
                conv.sim.overlapping_generations - start.sim.overlapping_generations
            ),
        ),
        (
            "API-server writes per object (objects / Events)".into(),
            per_obj_pair(s.object_writes, s.event_writes),
            format!(
                "apiserver_request_total for {}, the benchmark's creates subtracted",
                s.kinds.join(" + ")
            ),
        ),
        (
            "409 Conflicts from the API server".into(),
            fmt_opt(s.conflicts, 0),
            "apiserver_request_total with code 409 during convergence, all users and kinds".into(),
        ),
        (
            "status writes / reconcile passes per object".into(),
            per_obj_pair(s.status_writes, s.reconciles),
            format!(
                "operator metrics; AgentDynamics changes on the watch {:.2}/object",
                per_obj(s.watch_changes as f64)
            ),
        ),
        (
            format!("idle {}s: remote calls POST / GET / PUT", args.idle.as_secs()),
            format!("{} / {} / {}", s.idle_posts, s.idle_gets, s.idle_puts),
            format!("reconcile passes {}", fmt_opt(s.idle_reconciles, 0)),
        ),
        (
            format!("idle {}s: API-server writes", args.idle.as_secs()),
            fmt_opt(s.idle_api_writes, 0),
            format!(
                "status writes {}, watch changes {}, target CPU {:.2}s",
                fmt_opt(s.idle_status_writes, 0),
                s.idle_watch_changes,
                s.idle_cpu
            ),
        ),
        (
            "target peak RSS (MiB)".into(),
            format!("{:.1}", s.peak_rss_mib),
            format!("VmHWM; RSS after idle {:.1} MiB", s.rss_after_idle_mib),
        ),
        (
            "target CPU, convergence (s)".into(),
            format!("{:.2}", s.cpu_conv),
            format!(
                "{:.1} ms/object; kube-apiserver {} s, etcd {} s, bench+simulator {:.2} s",
                s.cpu_conv * 1000.0 / nf,
                fmt_opt(s.apiserver_cpu, 2),
                fmt_opt(s.etcd_cpu, 2),
                s.bench_cpu
            ),
        ),
        (
            "edit-to-call latency p50/p99/max (ms)".into(),
            format!(
                "{:.0} / {:.0} / {:.0}",
                ms(&s.to_call, 0.5),
                ms(&s.to_call, 0.99),
                ms(&s.to_call, 1.0)
            ),
            format!(
                "{} dynamics edits reached the simulator, {} not within {:?}; edit -> Ready again p50 {} ms",
                s.to_call.len(),
                s.edits_missed,
                args.edit_timeout,
                fmt_opt(Some(ms(&s.to_ready, 0.5)), 0)
            ),
        ),
    ];
    if let Some(l) = &p.lost {
        rows.push((
            "lost generate reply: charged / POSTs".into(),
            format!("{} / {}", l.charged, l.posts),
            format!(
                "converged after {} s (window {:.0} s); target says {}",
                fmt_opt(l.converged_after_s, 2),
                l.window_s,
                l.target_view.as_deref().unwrap_or("n/a")
            ),
        ));
    }
    rows.push((
        "wall time of the run (s)".into(),
        format!("{:.0}", secs(p.wall)),
        format!(
            "{} cores; load before {}",
            s.cores,
            p.load_before
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ));
    for t in p.restart.iter().chain(&p.failover) {
        rows.extend(takeover_rows(t, n).into_iter().map(|[a, b, c]| (a, b, c)));
    }
    if s.converged_s.is_none() {
        rows.insert(
            0,
            (
                "NOT CONVERGED".into(),
                format!(
                    "{}/{n} on the record, {} Ready",
                    p.converged.per_object.len(),
                    world.watch.lock().unwrap().ready_count()
                ),
                format!("after {:?}", args.timeout),
            ),
        );
    }
    println!("\n| metric | value | notes |\n| --- | --- | --- |");
    for (k, v, note) in &rows {
        println!("| {k} | {v} | {note} |");
    }
}

/// Writes the run as JSON to `out`: machine, versions, parameters, the summary and the raw
/// snapshots of each phase.
pub(super) fn write_json(
    args: &Args,
    scenario: &Scenario,
    world: &World,
    p: &Phases,
    s: &Summary,
    out: &Path,
) -> anyhow::Result<()> {
    let n = scenario.n;
    let nf = n as f64;
    let per_obj = |x: f64| s.per_object(x);
    let (start, conv) = (&p.start, &p.at_convergence);
    let (is, ie) = (&p.idle_start, &p.idle_end);
    let snapshot_json = |snap: &Snapshot, base: &Snapshot| {
        json!({
            "seconds": secs(snap.at.saturating_duration_since(base.at)),
            "sim_calls": {
                "generate": snap.sim.total("generate"),
                "get": snap.sim.total("get"),
                "update": snap.sim.total("update"),
            },
            "sim_generations_started": snap.sim.generations_started,
            "sim_overlapping_generations": snap.sim.overlapping_generations,
            "sim_accounts": snap.sim.accounts,
            "operator_status_writes": snap.op.as_ref().map(|m| m.status_writes),
            "operator_generations": snap.op.as_ref().map(|m| m.generations),
            "operator_remote_calls": snap.op.as_ref().map(|m| &m.remote_calls),
            "operator_reconciles": snap.op.as_ref().map(|m| &m.reconciles),
            "apiserver_requests": snap.api,
            "target_cpu_s": snap.target.cpu_s,
            "target_rss_kib": snap.target.rss_kib,
            "target_hwm_kib": snap.target.hwm_kib,
            "apiserver_cpu_s": snap.apiserver.map(|p| p.cpu_s),
            "etcd_cpu_s": snap.etcd.map(|p| p.cpu_s),
            "bench_cpu_s": snap.bench.cpu_s,
            "watch_changes": snap.watch_changes,
        })
    };
    let t = &world.target;
    let report = json!({
        "benchmark": "convergence",
        "target": scenario.peer.map_or("dynamics-operator", |_| "provider-http"),
        "peer_mapping": scenario.peer.map(|m| m.name()),
        "objects": n,
        "profile": scenario.profile.name(),
        "accounts": scenario.accounts,
        "converged": s.converged_s.is_some(),
        "machine": {
            "cores": s.cores,
            "cpu": cpu_model(),
            "loadavg_before": p.load_before.trim(),
        },
        "versions": {
            "target": t.version,
            "target_binary": t.bin.display().to_string(),
            "target_build": t.build,
            // `git` is the tree when the benchmark ran; the binary may have been built earlier.
            "target_binary_modified": std::fs::metadata(&t.bin)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| jiff::Timestamp::try_from(t).ok())
                .map(|t| t.to_string()),
            "git": command_output("git", &["describe", "--always", "--dirty"]),
            "rustc": command_output("rustc", &["--version"]),
            "kubernetes": controlplane::pinned_kube_version(),
            "etcd": controlplane::pinned_etcd_version(),
        },
        "parameters": {
            "generation_time_ms": scenario.generation_time.as_millis() as u64,
            "max_concurrent_generations_per_account": scenario.limit,
            "operator_concurrency": args.concurrency,
            "poll_min_ms": scenario.poll_min.map(|d| d.as_millis() as u64),
            "poll_max_ms": scenario.poll_max.map(|d| d.as_millis() as u64),
            "operator_extra_args": args.operator_args,
            "operator_api_calls_per_second": args.api_calls_per_second,
            "takeover_api_calls_per_second": dynamics_operator::cli::DEFAULT_API_CALLS_PER_SECOND,
            "takeover_window_s": args.takeover_window.as_secs_f64(),
            "failover_lease_duration_s": args.lease_duration,
            "peer_poll_ms": scenario.peer.and(scenario.peer_poll).map(|d| d.as_millis() as u64),
            "peer_max_reconcile_rate": scenario.peer.and(scenario.peer_rate),
            "create_parallelism": args.create_parallelism,
            "idle_s": args.idle.as_secs_f64(),
            "edits": args.edits,
            "edit_timeout_s": args.edit_timeout.as_secs_f64(),
            "timeout_s": args.timeout.as_secs_f64(),
            "sim_idle_timeout_s": SimConfig::default().idle_timeout.map(|d| d.as_secs_f64()),
        },
        "results": {
            "create_s": secs(p.created.took),
            "create_per_s": nf / secs(p.created.took),
            "create_retries": p.created.retries,
            "converge_s": s.converged_s,
            "converge_record_s": p.converged.record.map(secs),
            "converge_ready_s": p.converged.ready.map(secs),
            "floor_s": secs(scenario.floor),
            "converge_over_floor": s.converged_s.map(|c| c / secs(scenario.floor)),
            "last_create_to_all_converged_s": s.last_create_to_done,
            "api_worker_idle": {
                "seconds": s.idle_ms as f64 / 1000.0,
                "waits": s.idle_waits,
                "mean_ms": (s.idle_waits > 0).then(|| s.idle_ms as f64 / s.idle_waits as f64),
            },
            "create_to_converged_s": {
                "p50": percentile(&s.latencies, 0.5),
                "p90": percentile(&s.latencies, 0.9),
                "p99": percentile(&s.latencies, 0.99),
                "max": percentile(&s.latencies, 1.0),
            },
            "remote_calls_per_object": {
                "generate": per_obj(s.posts as f64),
                "get": per_obj(s.gets as f64),
                "update": per_obj(s.puts as f64),
            },
            "status_writes_per_object": s.status_writes.map(per_obj),
            "watch_changes_per_object": per_obj(s.watch_changes as f64),
            "apiserver_object_writes_per_object": s.object_writes.map(per_obj),
            "apiserver_event_writes_per_object": s.event_writes.map(per_obj),
            "apiserver_conflicts_during_convergence": s.conflicts,
            "apiserver_requests_during_convergence": s.api_conv,
            "reconciles_per_object": s.reconciles.map(per_obj),
            "idle": {
                "seconds": args.idle.as_secs_f64(),
                "remote_calls": {"generate": s.idle_posts, "get": s.idle_gets, "update": s.idle_puts},
                "status_writes": s.idle_status_writes,
                "watch_changes": s.idle_watch_changes,
                "apiserver_writes": s.idle_api_writes,
                "apiserver_requests": s.idle_api,
                "reconciles": s.idle_reconciles,
                "target_cpu_s": s.idle_cpu,
            },
            "target_peak_rss_mib": s.peak_rss_mib,
            "target_rss_after_idle_mib": s.rss_after_idle_mib,
            "target_cpu_convergence_s": s.cpu_conv,
            "target_cpu_ms_per_object": s.cpu_conv * 1000.0 / nf,
            "apiserver_cpu_convergence_s": s.apiserver_cpu,
            "etcd_cpu_convergence_s": s.etcd_cpu,
            "bench_and_simulator_cpu_convergence_s": s.bench_cpu,
            "edit_to_call_ms": {
                "p50": ms(&s.to_call, 0.5),
                "p99": ms(&s.to_call, 0.99),
                "max": ms(&s.to_call, 1.0),
                "reached": s.to_call.len(),
                "missed": s.edits_missed,
                "all": s.to_call.iter().map(|x| x * 1000.0).collect::<Vec<_>>(),
            },
            "edit_to_ready_ms": s.to_ready.iter().map(|x| x * 1000.0).collect::<Vec<_>>(),
            "lost_reply": p.lost.as_ref().map(|l| json!({
                "window_s": l.window_s,
                "charged": l.charged,
                "posts": l.posts,
                "converged_after_s": l.converged_after_s,
                "target_view": l.target_view,
            })),
            "restart": p.restart.as_ref().map(takeover_json),
            "failover": p.failover.as_ref().map(takeover_json),
            "wall_s": secs(p.wall),
        },
        "snapshots": {
            "start": snapshot_json(start, start),
            "converged": snapshot_json(conv, start),
            "idle_start": snapshot_json(is, start),
            "idle_end": snapshot_json(ie, start),
            "after_edits": snapshot_json(&p.after_edits, start),
        },
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nJSON: {}\ntarget log: {}", out.display(), t.log.display());
    Ok(())
}

fn takeover_json(t: &restart::Takeover) -> Value {
    json!({
        "window_s": t.window.as_secs_f64(),
        "remote_gets": t.gets,
        "remote_calls": t.calls,
        "peak_calls_per_second": t.peak_calls_per_second,
        "calls_per_second_limit": t.limit,
        "apiserver_writes_besides_the_edit": t.apiserver_writes,
        "status_writes": t.status_writes,
        "first_call_ms": t.first_call.map(|d| secs(d) * 1000.0),
        "edit_to_call_ms": t.edit_to_call.map(|d| secs(d) * 1000.0),
        "peak_rss_mib": t.peak_rss_mib,
        "lease_duration_s": t.lease_duration_s,
    })
}

/// Markdown rows of a restart or failover phase.
fn takeover_rows(t: &restart::Takeover, n: usize) -> Vec<[String; 3]> {
    let w = t.window.as_secs();
    let from = match t.kind {
        "failover" => format!(
            "from the SIGKILL of the leader, lease {} s",
            t.lease_duration_s.unwrap_or(0)
        ),
        _ => "from the end of the old process".to_string(),
    };
    let ms = |d: Option<Duration>| fmt_opt(d.map(|d| secs(d) * 1000.0), 0);
    vec![
        [
            format!("{}: remote GETs / calls in the first {w} s", t.kind),
            format!("{} / {}", t.gets, t.calls),
            format!(
                "{:.2}% of the {n} objects' GETs; the edit made at that moment included",
                t.gets as f64 * 100.0 / n as f64
            ),
        ],
        [
            format!("{}: peak calls per second per account", t.kind),
            t.peak_calls_per_second.to_string(),
            match t.limit {
                Some(limit) => format!("limit {limit} (the operator's default)"),
                None => "no per-account limit".into(),
            },
        ],
        [
            format!("{}: API-server writes in the first {w} s", t.kind),
            fmt_opt(t.apiserver_writes, 0),
            format!(
                "the benchmark's edit subtracted; the new process's status writes: {}",
                fmt_opt(t.status_writes, 0)
            ),
        ],
        [
            format!("{}: first remote call / edit reaches the API (ms)", t.kind),
            format!("{} / {}", ms(t.first_call), ms(t.edit_to_call)),
            from,
        ],
        [
            format!("{}: new process peak RSS (MiB)", t.kind),
            format!("{:.1}", t.peak_rss_mib),
            "VmHWM after the window".into(),
        ],
    ]
}
