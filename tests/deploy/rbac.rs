//! Least privilege, proven: the operator binary runs as the deploy's ServiceAccount through the
//! whole scenario and uses every granted verb and nothing else; without any one granted verb it
//! fails.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use futures::StreamExt;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::Value as Json;

use crate::argocd::lua_health;
use crate::audit::{shared, start_audited, Audited};
use crate::deployed::{
    agent, create_team_secret, metrics_url, ready_at, scenario, start_as_deployed, start_sim,
};
use crate::grants::{
    granted, install_rbac, named_rules_of, rbac_in, rules_of, service_account_kubeconfig,
    service_account_user, Permission,
};
use crate::render::{container, rbac_docs};
use crate::support::process::ManagedChild;
use crate::support::tools::{find, kustomize};
use crate::support::wait::wait_for;
use crate::{OPERATOR_NS, STEP_TIMEOUT};

// The full scenario as the ServiceAccount, exactly as deployed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_as_its_service_account_uses_every_granted_verb_and_nothing_else() {
    let t0 = Instant::now();
    // Its own control plane: this operator watches every namespace, as deployed.
    let audited = start_audited().await;
    let cp = &audited.cp;
    let dir = tempfile::tempdir().unwrap();
    let ha = kustomize("deploy/overlays/ha");
    let deployment = find(&ha, "Deployment", "dynamics-operator");
    let namespace = find(&ha, "Namespace", OPERATOR_NS);
    cp.apply_yaml(&serde_json::to_string(namespace).unwrap())
        .unwrap();
    install_rbac(cp, &rbac_docs(&ha), OPERATOR_NS);
    let kubeconfig = service_account_kubeconfig(cp, OPERATOR_NS, dir.path());
    let sim = start_sim().await;
    let client = cp.kube_client().await.unwrap();
    let ns = cp.create_namespace("agents").await.unwrap();
    create_team_secret(&client, &ns).await;
    // Secrets are granted per namespace: the operator's own (the base's RoleBinding), and the
    // agents' namespace as a user adds it, with one more RoleBinding and SECRET_NAMESPACES.
    let secrets_binding = |namespace: &str| {
        let mut b = find(&ha, "RoleBinding", "dynamics-operator-secrets").clone();
        b["metadata"]["namespace"] = serde_json::json!(namespace);
        b
    };
    install_rbac(
        cp,
        &[
            find(&ha, "ClusterRole", "dynamics-operator-secrets").clone(),
            secrets_binding(&ns),
        ],
        OPERATOR_NS,
    );
    // A namespace the operator watches but may not read Secrets in, with a Secret an object names.
    let elsewhere = cp.create_namespace("elsewhere").await.unwrap();
    create_team_secret(&client, &elsewhere).await;

    // The ha overlay's Deployment: two replicas with leader election, as two processes.
    let overrides = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("BITHUMAN_API_URL", sim.url()),
        ("METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("RUST_LOG", "info,dynamics_operator=debug".to_string()),
        ("SECRET_NAMESPACES", ns.clone()),
    ];
    let mut replicas: Vec<ManagedChild> = (0..2)
        .map(|i| {
            start_as_deployed(
                deployment,
                (&format!("dynamics-operator-test-{i}"), OPERATOR_NS),
                dir.path(),
                &overrides,
            )
        })
        .collect();
    let logs = |replicas: &[ManagedChild]| -> String {
        replicas
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(8000)))
            .collect()
    };

    // The probes of the Deployment answer on the port it exposes.
    let http = reqwest::Client::new();
    for r in &replicas {
        let url = wait_for(
            "the metrics address in the log",
            Duration::from_secs(20),
            || async { Ok(metrics_url(&r.log)) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&replicas)));
        for probe in ["livenessProbe", "readinessProbe"] {
            let path = container(deployment, "operator")[probe]["httpGet"]["path"]
                .as_str()
                .unwrap()
                .to_string();
            wait_for(&format!("{probe} {path}"), Duration::from_secs(20), || {
                let (http, url, path) = (http.clone(), url.clone(), path.clone());
                async move {
                    let reply = http.get(format!("{url}{path}")).send().await?;
                    Ok(reply.status().is_success().then_some(()))
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&replicas)));
        }
    }

    let api: Api<AgentDynamics> = Api::namespaced(client.clone(), &ns);
    // One object on the operator's own secret (the mounted file) while the scenario runs.
    api.create(
        &PostParams::default(),
        &agent("default-secret", "DEPLOYDEF01", false),
    )
    .await
    .unwrap();
    let never = || false;
    let result = scenario(&api, "team-agent", "DEPLOYTEAM01", STEP_TIMEOUT, &never).await;
    assert!(result.is_ok(), "{result:?}\n{}", logs(&replicas));
    let ready = wait_for("default-secret Ready", STEP_TIMEOUT, || async {
        Ok(ready_at(&api, "default-secret", 1).await.then_some(()))
    })
    .await;
    assert!(ready.is_ok(), "{ready:?}\n{}", logs(&replicas));
    // Argo CD's health check agrees with the operator's status.
    let live = serde_json::to_value(api.get("default-secret").await.unwrap()).unwrap();
    let (health, message) = lua_health(&live);
    assert_eq!(health, "Healthy", "{live}");
    assert!(message.contains("DEPLOYDEF01"), "{message}");
    api.delete("default-secret", &DeleteParams::default())
        .await
        .unwrap();
    let gone = wait_for("default-secret deleted", STEP_TIMEOUT, || async {
        Ok(api.get_opt("default-secret").await?.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_ok(), "{gone:?}\n{}", logs(&replicas));

    // A status write that conflicts while a generate call's outcome is recorded: the operator
    // re-reads the object and records it anyway, with the verbs it is granted. The API refuses
    // the call (402) after holding the reply long enough for another writer to touch status.
    sim.set_credits(0);
    sim.set_agent_modes(
        "DEPLOYCONF01",
        Some(dynamics_operator::sim::Modes {
            reply_delay_ms: 3_000,
            ..Default::default()
        }),
    );
    api.create(
        &PostParams::default(),
        &agent("conflicted", "DEPLOYCONF01", false),
    )
    .await
    .unwrap();
    let marked = wait_for("the marker written", STEP_TIMEOUT, || async {
        let obj = api.get("conflicted").await?;
        Ok(obj
            .status
            .as_ref()
            .is_some_and(|s| s.pending_generation.is_some())
            .then_some(()))
    })
    .await;
    assert!(marked.is_ok(), "{marked:?}\n{}", logs(&replicas));
    api.patch_status(
        "conflicted",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            serde_json::json!({"status": {"remoteStatus": "touched by another writer"}}),
        ),
    )
    .await
    .unwrap();
    let recorded = wait_for(
        "the refusal recorded despite the conflict",
        STEP_TIMEOUT,
        || async {
            let obj = api.get("conflicted").await?;
            let status = obj.status.unwrap_or_default();
            let stalled = status
                .condition("Stalled")
                .is_some_and(|c| c.status == "True" && c.reason == "InsufficientCredits");
            Ok(
                (stalled && status.pending_generation.is_none() && status.generations == 0)
                    .then_some(()),
            )
        },
    )
    .await;
    assert!(recorded.is_ok(), "{recorded:?}\n{}", logs(&replicas));
    let all = logs(&replicas);
    assert!(
        all.contains("conflict while recording a generate call"),
        "the write did conflict:\n{all}"
    );
    api.delete("conflicted", &DeleteParams::default())
        .await
        .unwrap();
    // A Secret outside the granted namespaces: Stalled, and never asked for (below, the audit).
    let outside: Api<AgentDynamics> = Api::namespaced(client.clone(), &elsewhere);
    outside
        .create(
            &PostParams::default(),
            &agent("outside", "DEPLOYOUT01", true),
        )
        .await
        .unwrap();
    let stalled = wait_for(
        "outside Stalled SecretNotPermitted",
        STEP_TIMEOUT,
        || async {
            let obj = outside.get("outside").await?;
            let cond = obj.status.and_then(|s| s.condition("Stalled").cloned());
            Ok(cond
                .filter(|c| c.status == "True" && c.reason == "SecretNotPermitted")
                .map(|c| c.message))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&replicas)));
    assert!(stalled.contains("secretNamespaces"), "{stalled}");
    outside
        .delete("outside", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("outside deleted", STEP_TIMEOUT, || async {
        Ok(outside.get_opt("outside").await?.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&replicas)));

    // What the scenario cost: one generation per change, a disable call per deletion.
    let stats = sim.stats();
    assert_eq!(stats.count("generate", Some("DEPLOYTEAM01"), None), 2);
    assert_eq!(stats.count("generate", Some("DEPLOYDEF01"), None), 1);
    for agent_id in ["DEPLOYTEAM01", "DEPLOYDEF01"] {
        assert!(
            stats.count("update", Some(agent_id), Some(200)) >= 2,
            "{agent_id}: switched on, then disabled on deletion"
        );
    }

    // Clean shutdown releases the Lease (a patch, too).
    crate::support::process::stop_all(&mut replicas, Duration::from_secs(15));
    let all_logs = logs(&replicas);
    assert!(
        !all_logs.to_lowercase().contains("forbidden"),
        "the operator was refused something:\n{all_logs}"
    );

    let user = service_account_user(OPERATOR_NS);
    let requests = audited.requests(&user);
    assert!(!requests.is_empty(), "no audited requests from {user}");
    let refused: BTreeSet<String> = requests
        .iter()
        .filter(|(_, code)| *code == 403)
        .map(|(p, _)| p.to_string())
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let used: BTreeSet<Permission> = requests.into_iter().map(|(p, _)| p).collect();
    // Secrets only where granted: every Secret request was in the operator's namespace or the
    // agents', none cluster-wide and none in the namespace it was not granted.
    let secret_namespaces: BTreeSet<Option<String>> = audited
        .requests_in(&user)
        .into_iter()
        .filter(|(p, _, _)| p.resource == "secrets")
        .map(|(_, namespace, _)| namespace)
        .collect();
    assert_eq!(
        secret_namespaces,
        [Some(OPERATOR_NS.to_string()), Some(ns.clone())].into(),
        "Secret requests by namespace (None: cluster-wide)"
    );
    let mut grants = granted(&rules_of(&ha, "ClusterRole"));
    grants.extend(granted(&rules_of(&ha, "Role")));
    assert!(
        grants.iter().any(fallback_only),
        "list on dynamicsledgers stays granted for API servers without streamed lists"
    );
    let unused: Vec<String> = grants
        .difference(&used)
        .filter(|p| !fallback_only(p))
        .map(|p| p.to_string())
        .collect();
    let ungranted: Vec<String> = used.difference(&grants).map(|p| p.to_string()).collect();
    assert!(
        unused.is_empty() && ungranted.is_empty(),
        "granted but never used: {unused:?}; used but not granted: {ungranted:?}"
    );
    eprintln!(
        "deploy: the operator used exactly {} permissions: {}; {:.1?}",
        used.len(),
        used.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        t0.elapsed()
    );
}

/// A verb granted for API servers other than this one: the ledger watch takes its first list
/// as a stream of watch events (WatchList) where the API server serves that, as this test
/// control plane (1.36) does, and lists where it does not (Kubernetes 1.30, 1.31 and 1.33 by
/// default). Nothing here can use it, so neither test asks for it to be used; the first asserts
/// it is granted.
fn fallback_only(p: &Permission) -> bool {
    p.group == "dynamics.bithuman.ai" && p.resource == "dynamicsledgers" && p.verb == "list"
}

// Without any one granted verb, the operator fails

pub struct Case {
    pub kind: String,
    /// The role the rule is in.
    pub name: String,
    pub rule: usize,
    pub permission: Permission,
}

#[derive(Debug)]
struct Outcome {
    case: String,
    refused_in_audit: bool,
    scenario: Result<(), String>,
    forbidden_logged_at: Option<String>,
    log: String,
}

/// The most severe log line that says "forbidden", as "LEVEL: message" (the Deployment logs
/// JSON; a line that is not JSON is what the process printed when it exited).
fn forbidden_level(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .map(|l| match serde_json::from_str::<Json>(l) {
            Ok(j) => (
                j["level"].as_str().unwrap_or("?").to_string(),
                j["message"].as_str().unwrap_or("").to_string(),
            ),
            Err(_) => ("EXIT".to_string(), l.to_string()),
        })
        .min_by_key(|(level, _)| match level.as_str() {
            "EXIT" => 0,
            "ERROR" => 1,
            "WARN" => 2,
            "INFO" => 3,
            _ => 4,
        })
        .map(|(level, message)| {
            let short: String = message.chars().take(70).collect();
            format!("{level}: {short}")
        })
}

async fn run_case(audited: &'static Audited, ha: &[Json], case: Case, index: usize) -> Outcome {
    let cp = &audited.cp;
    let label = format!("without {}", case.permission);
    let ns = cp.create_namespace(&format!("rbac{index}")).await.unwrap();
    let rbac = rbac_in(ha, &ns, Some(&case));
    install_rbac(cp, &rbac, &ns);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(cp, &ns, dir.path());
    let sim = start_sim().await;
    let client = cp.kube_client().await.unwrap();
    create_team_secret(&client, &ns).await;
    let deployment = find(ha, "Deployment", "dynamics-operator");
    let operator = start_as_deployed(
        deployment,
        (&format!("operator-{index}"), &ns),
        dir.path(),
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("BITHUMAN_API_URL", sim.url()),
            ("METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("WATCH_NAMESPACE", ns.clone()),
            ("RUST_LOG", "info,dynamics_operator=debug".to_string()),
        ],
    );
    let user = service_account_user(&ns);
    let refused = || {
        audited
            .requests(&user)
            .iter()
            .any(|(p, code)| *code == 403 && *p == case.permission)
    };
    let log_path = operator.log.clone();
    let logged = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .to_lowercase()
            .contains("forbidden")
    };
    let visible = || refused() && logged();
    let api: Api<AgentDynamics> = Api::namespaced(client, &ns);
    let scenario = scenario(
        &api,
        "agent",
        &format!("RBAC{index:02}"),
        Duration::from_secs(25),
        &visible,
    )
    .await;
    // A refusal can come a moment after the step that gave up (a renewal, a resync).
    let _ = wait_for("the refusal", Duration::from_secs(5), || async {
        Ok((refused() && (logged() || scenario.is_err())).then_some(()))
    })
    .await;
    let mut operator = operator;
    operator.stop(Duration::from_secs(5));
    let log = std::fs::read_to_string(&operator.log).unwrap_or_default();
    Outcome {
        case: label,
        refused_in_audit: refused(),
        scenario,
        forbidden_logged_at: forbidden_level(&log),
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_one_granted_verb_the_operator_fails() {
    let t0 = Instant::now();
    let audited = shared().await;
    let ha = kustomize("deploy/overlays/ha");
    let mut cases = Vec::new();
    for kind in ["ClusterRole", "Role"] {
        let mut index_in_role = std::collections::BTreeMap::<String, usize>::new();
        for (name, rule) in named_rules_of(&ha, kind) {
            let rule_index = index_in_role.entry(name.clone()).or_default();
            for permission in granted(std::slice::from_ref(&rule)) {
                if fallback_only(&permission) {
                    continue;
                }
                cases.push(Case {
                    kind: kind.to_string(),
                    name: name.clone(),
                    rule: *rule_index,
                    permission,
                });
            }
            *rule_index += 1;
        }
    }
    let total = cases.len();
    assert!(total >= 10, "fewer verbs than expected: {total}");
    let next = AtomicUsize::new(0);
    let outcomes: Vec<Outcome> = futures::stream::iter(cases)
        .map(|case| {
            let index = next.fetch_add(1, Ordering::SeqCst);
            run_case(audited, &ha, case, index)
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut report = String::new();
    let mut failures = Vec::new();
    for o in &outcomes {
        report.push_str(&format!(
            "  {:<60} audit 403: {:<5} scenario: {:<30} \"forbidden\" logged: {}\n",
            o.case,
            o.refused_in_audit,
            match &o.scenario {
                Ok(()) => "completed".to_string(),
                Err(e) => e.split(':').next().unwrap_or("").to_string(),
            },
            o.forbidden_logged_at.as_deref().unwrap_or("-"),
        ));
        let visible = o.forbidden_logged_at.is_some() || o.scenario.is_err();
        if !o.refused_in_audit || !visible {
            let tail: String = o
                .log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            failures.push(format!("{}: nothing broke\n{tail}", o.case));
        }
    }
    eprintln!(
        "deploy: {total} verbs removed one at a time in {:.1?}:\n{report}",
        t0.elapsed()
    );
    assert!(
        failures.is_empty(),
        "these verbs look unnecessary (remove them from deploy/base/rbac.yaml, or make the \
         scenario use them):\n{}\n{report}",
        failures.join("\n")
    );
}
