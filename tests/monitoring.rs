//! Dashboards and alerts (charts/dynamics-operator/files/grafana-dashboard.json, the chart's
//! PrometheusRule and its rendering deploy/monitoring/alerts.yaml):
//!
//! * deploy/monitoring/alerts.yaml is the chart's PrometheusRule rendered with the default
//!   values (`DYNAMICS_BLESS=1 cargo test --test monitoring` rewrites it);
//! * `promtool check rules` on it and on a rendering with other values, and `promtool test
//!   rules` on deploy/monitoring/alerts_test.yaml (each alert fires when it should, not before);
//! * every metric the dashboard and the rules use is exported by a running operator
//!   (`dynamics-operator run` against the test API server and the simulator, /metrics scraped).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dynamics_operator::sim::SimConfig;
use serde_json::Value as Json;
use support::operator::{is_ready, manifest, ready_reason, Env};
use support::tools::{find, metric_names, parse_docs, run_ok, tool, ROOT};
use support::wait::wait_for;

fn root(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

/// The chart's PrometheusRule `spec` (a Prometheus rule file) rendered with `extra` values.
fn rendered_rules(extra: &[&str]) -> Json {
    let home = tempfile::tempdir().unwrap();
    let chart = root("charts/dynamics-operator");
    let mut args = vec![
        "template".to_string(),
        "dynamics-operator".into(),
        chart.to_string_lossy().into_owned(),
        "--show-only".into(),
        "templates/prometheusrule.yaml".into(),
        "--set".into(),
        "metrics.prometheusRule.enabled=true".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = std::process::Command::new(tool("helm"))
        .args(&args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_docs(&String::from_utf8(out.stdout).unwrap());
    find(&docs, "PrometheusRule", "dynamics-operator")["spec"].clone()
}

const ALERTS_FILE: &str = "deploy/monitoring/alerts.yaml";
const HEADER: &str = "# Generated from charts/dynamics-operator/templates/prometheusrule.yaml with the default values\n\
# (DYNAMICS_BLESS=1 cargo test --test monitoring rewrites it). For a Prometheus without\n\
# prometheus-operator: add it to rule_files. deploy/monitoring/alerts_test.yaml unit-tests it.\n";

#[test]
fn alerts_file_is_the_charts_rule_rendered() {
    let want = format!(
        "{HEADER}{}",
        dynamics_operator::resource::to_yaml(&rendered_rules(&[])).unwrap()
    );
    let path = root(ALERTS_FILE);
    if std::env::var("DYNAMICS_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{ALERTS_FILE} differs from the chart's PrometheusRule: DYNAMICS_BLESS=1 cargo test --test monitoring"
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let promtool = tool("promtool");
    let out = run_ok(
        &promtool,
        ["check", "rules", root(ALERTS_FILE).to_str().unwrap()],
    );
    assert!(out.contains("SUCCESS: 5 rules found"), "{out}");
    let out = run_ok(
        &promtool,
        [
            "test",
            "rules",
            root("deploy/monitoring/alerts_test.yaml").to_str().unwrap(),
        ],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Values a user would change still make valid rules.
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("custom.yaml");
    let rules = rendered_rules(&[
        "--set",
        "metrics.prometheusRule.creditsPerHourThreshold=750",
        "--set",
        "metrics.prometheusRule.stalledFor=1h",
    ]);
    let text = dynamics_operator::resource::to_yaml(&rules).unwrap();
    assert!(text.contains("> 750"), "{text}");
    std::fs::write(&custom, text).unwrap();
    run_ok(&promtool, ["check", "rules", custom.to_str().unwrap()]);
}

/// Every alert is per install (`by (namespace, job)`), carries a runbook_url into the
/// troubleshooting page that has a section for it, and the page lists no alert the rules lack.
#[test]
fn alerts_route_per_install_and_link_their_runbook() {
    use dynamics_operator::reconcile::reasons::{troubleshooting_markdown, ALERTS, PAGE_URL};
    let rules: Json =
        serde_saphyr::from_str(&std::fs::read_to_string(root(ALERTS_FILE)).unwrap()).unwrap();
    let page = troubleshooting_markdown();
    let mut names = Vec::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        names.push(name);
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            expr.contains("by (namespace, job)"),
            "{name} is not grouped per install: {expr}"
        );
        assert!(
            !expr.contains("sum(") && !expr.contains("max("),
            "{name} aggregates over every install: {expr}"
        );
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        assert_eq!(url, format!("{PAGE_URL}#{}", name.to_lowercase()), "{name}");
        assert!(
            page.contains(&format!("\n### {name}\n")),
            "docs/troubleshooting.md has no section for {name}"
        );
    }
    let documented: Vec<&str> = ALERTS.iter().map(|a| a.name).collect();
    assert_eq!(names, documented, "the page's alerts are the rules' alerts");
    // A mirror of the page can be named.
    let custom = rendered_rules(&[
        "--set",
        "metrics.prometheusRule.runbookBaseUrl=https://wiki.example.com/dynamics/",
    ]);
    assert_eq!(
        custom["groups"][0]["rules"][0]["annotations"]["runbook_url"],
        "https://wiki.example.com/dynamics#agentdynamicsstalled"
    );
}

fn dashboard() -> Json {
    serde_json::from_str(
        &std::fs::read_to_string(root(
            "charts/dynamics-operator/files/grafana-dashboard.json",
        ))
        .unwrap(),
    )
    .expect("the dashboard is JSON")
}

/// Every expression of the dashboard's panels and of the alerting rules.
fn expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for panel in dashboard()["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_string();
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            exprs.push((
                format!("panel {title:?}"),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    let rules: Json =
        serde_saphyr::from_str(&std::fs::read_to_string(root(ALERTS_FILE)).unwrap()).unwrap();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            exprs.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    exprs
}

#[test]
fn dashboard_covers_what_operators_watch() {
    let d = dashboard();
    assert_eq!(d["uid"], "dynamics-operator");
    let used: BTreeSet<String> = expressions()
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .collect();
    for metric in [
        "dynamics_operator_reconciles_total",
        "dynamics_operator_errors_total",
        "dynamics_operator_remote_calls_total",
        "dynamics_operator_remote_call_duration_seconds_bucket",
        "dynamics_operator_generations_total",
        "dynamics_operator_generate_calls_total",
        "dynamics_operator_credits_spent_total",
        "dynamics_operator_object_states",
        "dynamics_operator_generation_queue_depth",
        "dynamics_operator_ready",
        "dynamics_operator_leader",
        "dynamics_operator_build_info",
    ] {
        assert!(used.contains(metric), "nothing shows {metric}");
    }
}

/// Sample names in a Prometheus/OpenMetrics text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let env = Env::observe(
        "metrics",
        SimConfig {
            generation_time: std::time::Duration::from_millis(300),
            ..SimConfig::default()
        },
        &[],
    )
    .await;
    // One object converges (calls, generation, status writes); one names a missing Secret
    // (a stall: errors by reason).
    env.apply(&manifest("observed", "METRIC0001", ""));
    env.apply(&manifest(
        "no-secret",
        "METRIC0002",
        "  apiSecretRef:\n    name: missing\n",
    ));
    env.wait("observed", "Ready", is_ready).await;
    env.wait("no-secret", "SecretNotFound", |o| {
        ready_reason(o).as_deref() == Some("SecretNotFound")
    })
    .await;
    let url = format!("{}/metrics", env.wait_metrics_url(0).await);
    let exposition = wait_for("/metrics answers", support::operator::TIMEOUT, || async {
        Ok(Some(reqwest::get(&url).await?.text().await?))
    })
    .await
    .unwrap();
    let samples = exported(&exposition);
    let mut missing = Vec::new();
    for (place, expr) in expressions() {
        for name in metric_names(&expr) {
            if !samples.contains(&name) {
                missing.push(format!("{name} (used by {place})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by the operator: {missing:#?}\n/metrics:\n{exposition}"
    );
}
