//! Exit codes a CI gate can trust: a configuration error is 2, never 1 (which `plan` uses for
//! "changes pending" and `apply` for "not every object Ready"), and `run` refuses a malformed
//! `--api-url` at start, naming the flag, before it reaches Kubernetes.

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_dynamics-operator");

const MANIFEST: &str = "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata:\n  name: one\n  namespace: agents\nspec:\n  agentId: A1\n";

fn run(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("BITHUMAN_API_SECRET", "test-secret")
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env_remove("BITHUMAN_API_URL")
        .env_remove("BITHUMAN_API_SECRET_FILE")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("the dynamics-operator binary runs")
}

fn explain(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one.yaml"), MANIFEST).unwrap();
    dir
}

#[test]
fn plan_and_apply_exit_2_on_a_malformed_api_url() {
    let dir = folder();
    for command in ["plan", "apply"] {
        for url in ["ftp://x", "not a url", "https://"] {
            let out = run(&[command, "-f", "one.yaml", "--api-url", url], dir.path());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} {url}: {}",
                explain(&out)
            );
            assert!(
                stderr.contains("--api-url") && stderr.contains(url),
                "{command} {url}: the error names the flag and its value: {}",
                explain(&out)
            );
            assert!(!stderr.contains("panicked"), "{}", explain(&out));
        }
    }
    assert!(
        !dir.path().join(".dynamics-state.json").exists(),
        "nothing was applied"
    );
}

#[test]
fn plan_still_exits_1_for_changes_pending() {
    // The same folder with a usable API (the built-in simulator): a new object is a change.
    let dir = folder();
    let out = run(&["plan", "-f", "one.yaml", "--simulator"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
}

#[test]
fn run_refuses_a_malformed_api_url_before_reaching_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["ftp://x", "not a url"] {
        let started = std::time::Instant::now();
        let out = run(
            &["run", "--api-url", url, "--metrics-addr", "127.0.0.1:0"],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", explain(&out));
        assert!(
            stderr.contains("refusing to start") && stderr.contains("--api-url"),
            "{url}: {}",
            explain(&out)
        );
        // KUBECONFIG names no file: a run that got as far as Kubernetes would say so instead.
        assert!(
            !stderr.to_lowercase().contains("kubeconfig") && !stderr.contains("panicked"),
            "{}",
            explain(&out)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}

#[test]
fn run_refuses_other_bad_flags_with_exit_2_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["run", "--concurrency", "0"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--concurrency"),
        "{}",
        explain(&out)
    );
}
