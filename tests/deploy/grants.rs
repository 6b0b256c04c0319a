//! The RBAC of deploy/, verb by verb: moved into a test namespace, optionally without one verb,
//! and installed until the authorizer grants it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::rbac::Case;
use crate::render::rbac_docs;
use crate::support::controlplane::ControlPlane;
use crate::{OPERATOR_NS, SERVICE_ACCOUNT};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} ({group})", self.verb, self.resource)
    }
}

/// What RBAC rules grant, verb by verb.
pub fn granted(rules: &[Json]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert(Permission {
                        group: group.as_str().unwrap().to_string(),
                        resource: resource.as_str().unwrap().to_string(),
                        verb: verb.as_str().unwrap().to_string(),
                    });
                }
            }
        }
    }
    out
}

/// The rules of every `kind` document (ClusterRole, Role), with the name of the one each is in.
pub fn named_rules_of(docs: &[Json], kind: &str) -> Vec<(String, Json)> {
    let rules: Vec<(String, Json)> = docs
        .iter()
        .filter(|d| d["kind"] == kind)
        .flat_map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            d["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| (name.clone(), r.clone()))
        })
        .collect();
    assert!(!rules.is_empty(), "no {kind}");
    rules
}

pub fn rules_of(docs: &[Json], kind: &str) -> Vec<Json> {
    named_rules_of(docs, kind)
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

pub fn service_account_user(ns: &str) -> String {
    format!("system:serviceaccount:{ns}:{SERVICE_ACCOUNT}")
}

/// The deploy's RBAC, moved to `ns` (ServiceAccount, Role, RoleBindings) with cluster-scoped
/// names made unique, optionally without one verb of one rule.
pub fn rbac_in(docs: &[Json], ns: &str, without: Option<&Case>) -> Vec<Json> {
    let mut out = Vec::new();
    for mut doc in rbac_docs(docs) {
        let kind = doc["kind"].as_str().unwrap().to_string();
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        if ns != OPERATOR_NS {
            match kind.as_str() {
                "ClusterRole" | "ClusterRoleBinding" => {
                    doc["metadata"]["name"] = json!(format!("{name}-{ns}"));
                }
                _ => doc["metadata"]["namespace"] = json!(ns),
            }
            if kind.ends_with("Binding") && doc["roleRef"]["kind"] == "ClusterRole" {
                let role = doc["roleRef"]["name"].as_str().unwrap().to_string();
                doc["roleRef"]["name"] = json!(format!("{role}-{ns}"));
            }
            if kind.ends_with("Binding") {
                for s in doc["subjects"].as_array_mut().unwrap() {
                    s["namespace"] = json!(ns);
                }
            }
        }
        if let Some(case) = without {
            if case.kind == kind && case.name == name {
                let rules = doc["rules"].as_array_mut().unwrap();
                let verbs = rules[case.rule]["verbs"].as_array_mut().unwrap();
                verbs.retain(|v| v != case.permission.verb.as_str());
                if verbs.is_empty() {
                    rules.remove(case.rule);
                }
            }
        }
        out.push(doc);
    }
    out
}

/// Apply RBAC and wait until the authorizer grants what it should (its cache lags a little), so
/// that the operator never sees a transient refusal.
pub fn install_rbac(cp: &ControlPlane, docs: &[Json], ns: &str) {
    let yaml: String = docs
        .iter()
        .map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap()))
        .collect();
    cp.apply_yaml(&yaml).expect("apply RBAC");
    let user = service_account_user(ns);
    let mut checks = Vec::new();
    // Where each role is in force: a ClusterRole everywhere through a ClusterRoleBinding, or in
    // the namespaces of the RoleBindings that bind it; a Role in its own namespace.
    let mut scopes: Vec<(&Json, Option<String>)> = Vec::new();
    for doc in docs {
        let name = &doc["metadata"]["name"];
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" => {
                let bindings = docs.iter().filter(|b| {
                    b["kind"].as_str().unwrap_or("").ends_with("Binding")
                        && b["roleRef"]["kind"] == "ClusterRole"
                        && b["roleRef"]["name"] == *name
                });
                for b in bindings {
                    let scope = (b["kind"] == "RoleBinding")
                        .then(|| b["metadata"]["namespace"].as_str().unwrap().to_string());
                    scopes.push((doc, scope));
                }
            }
            "Role" => scopes.push((
                doc,
                Some(
                    doc["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(ns)
                        .to_string(),
                ),
            )),
            _ => {}
        }
    }
    for (doc, scope) in scopes {
        let scope = scope.as_deref();
        for rule in doc["rules"].as_array().unwrap() {
            let names: Vec<&str> = rule["resourceNames"]
                .as_array()
                .map(|n| n.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            for p in granted(std::slice::from_ref(rule)) {
                let (resource, sub) = match p.resource.split_once('/') {
                    Some((r, s)) => (r.to_string(), Some(s.to_string())),
                    None => (p.resource.clone(), None),
                };
                let mut target = if p.group.is_empty() {
                    resource
                } else {
                    format!("{resource}.{}", p.group)
                };
                if let Some(name) = names.first() {
                    target = format!("{target}/{name}");
                }
                let mut args = vec!["auth".to_string(), "can-i".into(), p.verb.clone(), target];
                if let Some(sub) = sub {
                    args.push(format!("--subresource={sub}"));
                }
                args.push(format!("--as={user}"));
                match scope {
                    Some(ns) => args.extend(["-n".to_string(), ns.to_string()]),
                    None => args.push("--all-namespaces".into()),
                }
                checks.push(args);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for args in checks {
        while !cp.kubectl(&args).status.success() {
            assert!(
                Instant::now() < deadline,
                "RBAC never granted: kubectl {}",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A kubeconfig holding a TokenRequest token of the ServiceAccount: the operator authenticates
/// exactly as it does in a pod.
pub fn service_account_kubeconfig(cp: &ControlPlane, ns: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("{ns}.kubeconfig"));
    cp.service_account_kubeconfig(SERVICE_ACCOUNT, ns, &["--duration=2h"], &path)
        .unwrap();
    path
}
