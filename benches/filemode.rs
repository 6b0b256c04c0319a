//! How `apply -f` scales with the number of objects: one List of N `AgentDynamics` applied
//! against the simulator (in this process) with a real state file, by the release binary.
//!
//! ```sh
//! cargo bench --bench filemode                          # 500, 1000, 2000 and 5000 objects
//! cargo bench --bench filemode -- --objects 5000 --generation 100ms
//! ```
//!
//! For each N it reports the wall time from start to exit (every object Ready), the time per
//! object, the remote calls per object, the operator's peak RSS and the state file's size; then
//! it applies the largest List once more with a short `--timeout` on a fresh state and reports
//! when `apply` gave up. The simulator runs without an account limit (`max_concurrent 0`) and
//! `apply` with `--max-concurrent-generations 0`, so what is measured is the file mode itself.
//! `cargo test --all-targets` runs this binary without `--bench`: it then does nothing.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dynamics_operator::sim::{self, SimConfig};

const SECRET: &str = "filemode-bench-secret";

struct Args {
    objects: Vec<usize>,
    generation: Duration,
    timeout_check: Duration,
}

fn parse_args() -> Option<Args> {
    let argv: Vec<String> = std::env::args().collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let objects = value("--objects")
        .unwrap_or_else(|| "500,1000,2000,5000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("--objects: numbers separated by commas")
        })
        .collect();
    let duration = |flag: &str, default: &str| {
        humantime::parse_duration(&value(flag).unwrap_or_else(|| default.into()))
            .unwrap_or_else(|e| panic!("{flag}: {e}"))
    };
    Some(Args {
        objects,
        generation: duration("--generation", "100ms"),
        timeout_check: duration("--timeout-check", "3s"),
    })
}

/// A v1 List of `n` objects carrying every generate input and a dynamics block.
fn write_list(path: &Path, n: usize) {
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "dynamics.bithuman.ai/v1alpha1",
                "kind": "AgentDynamics",
                "metadata": {"name": format!("agent-{i:05}"), "namespace": "bench"},
                "spec": {
                    "agentId": format!("FMB{i:07}"),
                    "imageUrl": "https://example.com/agent.jpg",
                    "duration": 5,
                    "model": "seedance",
                    "motionPrompts": ["wave", "nod", "smile"],
                    "dynamics": {"result": {"modelPath": "https://example.com/m.bin", "modelHash": "abc"}}
                }
            })
        })
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec(&list).unwrap()).unwrap();
}

struct Run {
    code: i32,
    wall: Duration,
    peak_rss_kib: u64,
}

/// Run `apply`, sampling its peak RSS (VmHWM) until it exits.
async fn apply(list: &Path, state: &Path, url: &str, timeout: &str) -> Run {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynamics-operator"))
        .args(["apply", "-f"])
        .arg(list)
        .arg("--state")
        .arg(state)
        .args([
            "--api-url",
            url,
            "--max-concurrent-generations",
            "0",
            "--timeout",
            timeout,
        ])
        .env("BITHUMAN_API_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the operator binary");
    let pid = child.id().expect("pid");
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        tokio::select! {
            status = child.wait() => break status.expect("wait"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    Run {
        code: status.code().unwrap_or(-1),
        wall: start.elapsed(),
        peak_rss_kib: peak,
    }
}

#[tokio::main]
async fn main() {
    let Some(args) = parse_args() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut rows = Vec::new();
    println!(
        "| objects | apply (all Ready) | per object | GET / POST / PUT per object | peak RSS | state file |"
    );
    println!("| ---: | ---: | ---: | --- | ---: | ---: |");
    for &n in &args.objects {
        let sim = sim::start(SimConfig {
            secret: SECRET.into(),
            generation_time: args.generation,
            max_concurrent: 0,
            credits: u64::MAX / 2,
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let list = dir.path().join(format!("list-{n}.json"));
        write_list(&list, n);
        let state = dir.path().join(format!("state-{n}.json"));
        let run = apply(&list, &state, &sim.url(), "30m").await;
        let stats = sim.stats();
        let per = |endpoint: &str| stats.total(endpoint) as f64 / n as f64;
        let state_size = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
        assert_eq!(
            run.code, 0,
            "apply of {n} objects did not bring every object to Ready"
        );
        println!(
            "| {n} | {:.2} s | {:.2} ms | {:.2} / {:.2} / {:.2} | {:.1} MiB | {:.1} MiB |",
            run.wall.as_secs_f64(),
            run.wall.as_secs_f64() * 1000.0 / n as f64,
            per("get"),
            per("generate"),
            per("update"),
            run.peak_rss_kib as f64 / 1024.0,
            state_size as f64 / (1024.0 * 1024.0),
        );
        rows.push(serde_json::json!({
            "objects": n,
            "wall_s": run.wall.as_secs_f64(),
            "get_per_object": per("get"),
            "generate_per_object": per("generate"),
            "update_per_object": per("update"),
            "peak_rss_kib": run.peak_rss_kib,
            "state_bytes": state_size,
        }));
        sim.shutdown().await;
    }

    // --timeout is honoured at any size: the largest List, a fresh state, a short timeout.
    let largest = *args.objects.iter().max().unwrap_or(&0);
    let sim = sim::start(SimConfig {
        secret: SECRET.into(),
        generation_time: Duration::from_secs(3600),
        max_concurrent: 0,
        credits: u64::MAX / 2,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let list = dir.path().join("list-timeout.json");
    write_list(&list, largest);
    let timeout = humantime::format_duration(args.timeout_check).to_string();
    let run = apply(
        &list,
        &dir.path().join("state-timeout.json"),
        &sim.url(),
        &timeout,
    )
    .await;
    println!(
        "\n`--timeout {timeout}` with {largest} objects whose generations never end: exit {} after {:.2} s",
        run.code,
        run.wall.as_secs_f64()
    );
    sim.shutdown().await;

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let report = serde_json::json!({
        "generation_ms": args.generation.as_millis() as u64,
        "runs": rows,
        "timeout_check": {"objects": largest, "timeout": timeout, "exit": run.code, "wall_s": run.wall.as_secs_f64()},
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let path = out.join("filemode.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}
