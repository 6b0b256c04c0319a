//! The API secret for an object: `spec.apiSecretRef` (a Secret in its namespace) or the
//! operator's own. A Secret that is missing or lacks the key stalls the object with a message
//! that says what to create; the secret's value never leaves `ApiSecret`. Secrets are read only
//! in the namespaces of the [`SecretScope`] (`--secret-namespaces`), which RBAC grants; a
//! reference anywhere else stalls the object without a request.

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use std::collections::BTreeSet;
use std::sync::OnceLock;

use crate::api::ApiSecret;
use crate::reconcile::{reasons, Blocker};
use crate::resource::{AgentDynamics, API_SECRET_LABEL};

/// Where the operator reads Secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretScope {
    /// Every namespace (`--secret-namespaces '*'`; RBAC must grant Secrets cluster-wide).
    All,
    /// These namespaces only (RBAC grants Secrets in each, and nowhere else).
    Namespaces(BTreeSet<String>),
}

impl SecretScope {
    /// The operator's own namespace, the watched one (`--namespace`), and those listed; `*`
    /// anywhere in the list means every namespace.
    pub fn new(own: &str, watched: Option<&str>, listed: &[String]) -> Self {
        if listed.iter().any(|n| n.trim() == "*") {
            return SecretScope::All;
        }
        let mut set: BTreeSet<String> = listed
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        set.insert(own.to_string());
        set.extend(watched.map(str::to_string));
        SecretScope::Namespaces(set)
    }

    pub fn permits(&self, namespace: &str) -> bool {
        match self {
            SecretScope::All => true,
            SecretScope::Namespaces(set) => set.contains(namespace),
        }
    }

    /// The namespaces to watch Secrets in, given the namespace the operator watches objects in
    /// (None: all). `None` in the result: one watch over every namespace.
    pub fn watches(&self, watched: Option<&str>) -> Option<Vec<String>> {
        match (self, watched) {
            (SecretScope::All, None) => None,
            (SecretScope::All, Some(ns)) => Some(vec![ns.to_string()]),
            // Objects live only in the watched namespace: no other Secret is ever needed.
            (SecretScope::Namespaces(set), Some(ns)) => {
                Some(set.iter().filter(|n| *n == ns).cloned().collect())
            }
            (SecretScope::Namespaces(set), None) => Some(set.iter().cloned().collect()),
        }
    }
}

static SCOPE: OnceLock<SecretScope> = OnceLock::new();

/// Sets the scope of this process's controller, once (`controller::run`). Until then, and in
/// code that never sets it, every namespace is permitted.
pub fn set_scope(scope: SecretScope) {
    let _ = SCOPE.set(scope);
}

fn scope() -> &'static SecretScope {
    SCOPE.get().unwrap_or(&SecretScope::All)
}

/// The stall of an object whose Secret is in a namespace outside the scope.
pub fn not_permitted(namespace: &str, name: &str) -> Blocker {
    Blocker::Secret {
        reason: reasons::SECRET_NOT_PERMITTED.into(),
        message: format!(
            "Secret {namespace}/{name} (spec.apiSecretRef) is in a namespace where this operator does not read Secrets: add {namespace} to the chart value secretNamespaces (--secret-namespaces, with a RoleBinding there to its Secrets role), or drop spec.apiSecretRef to use the operator's own secret"
        ),
    }
}

pub async fn resolve(
    client: &Client,
    obj: &AgentDynamics,
    default: Option<&ApiSecret>,
) -> Result<ApiSecret, Blocker> {
    let namespace = obj.namespace().unwrap_or_default();
    let Some(reference) = &obj.spec.api_secret_ref else {
        return default.cloned().ok_or_else(|| Blocker::Secret {
            reason: reasons::NO_API_SECRET.into(),
            message: "no API secret: set spec.apiSecretRef, or give the operator one (BITHUMAN_API_SECRET or --api-secret-file)".into(),
        });
    };
    if !scope().permits(&namespace) {
        return Err(not_permitted(&namespace, &reference.name));
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = match api.get_opt(&reference.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(Blocker::Secret {
                reason: reasons::SECRET_NOT_FOUND.into(),
                message: format!(
                    "Secret {namespace}/{} (spec.apiSecretRef) not found: create it with the key {:?} holding the bitHuman API secret",
                    reference.name, reference.key
                ),
            })
        }
        Err(err) => {
            return Err(Blocker::Secret {
                reason: reasons::SECRET_UNREADABLE.into(),
                message: format!("cannot read Secret {namespace}/{}: {err}", reference.name),
            })
        }
    };
    if secret.labels().get(API_SECRET_LABEL).map(String::as_str) != Some("true") {
        return Err(Blocker::Secret {
            reason: reasons::SECRET_NOT_LABELED.into(),
            message: format!(
                "Secret {namespace}/{name} (spec.apiSecretRef) lacks the label {API_SECRET_LABEL}=true, which marks the Secrets this operator may use: kubectl -n {namespace} label secret {name} {API_SECRET_LABEL}=true",
                name = reference.name
            ),
        });
    }
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .map(|bytes| bytes.0.as_slice())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .map(String::as_bytes)
        })
        .and_then(ApiSecret::from_key_bytes);
    value.ok_or_else(|| Blocker::Secret {
        reason: reasons::SECRET_KEY_NOT_FOUND.into(),
        message: format!(
            "Secret {namespace}/{} has no non-empty key {:?} (spec.apiSecretRef.key)",
            reference.name, reference.key
        ),
    })
}

/// The objects that name this Secret, so that fixing a Secret retries them at once.
pub fn objects_using(
    store: &Store<AgentDynamics>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<AgentDynamics>> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(namespace))
        .filter(|o| {
            o.spec
                .api_secret_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        })
        .map(|o| super::context::reference_to(o))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_scope_is_the_own_namespace_the_watched_one_and_those_listed() {
        let scope = SecretScope::new("dynamics-operator", None, &names(&["agents", " team-b "]));
        for ns in ["dynamics-operator", "agents", "team-b"] {
            assert!(scope.permits(ns), "{ns}");
        }
        assert!(!scope.permits("elsewhere"));
        assert_eq!(
            scope.watches(None),
            Some(names(&["agents", "dynamics-operator", "team-b"]))
        );
        // Watching one namespace, only its Secrets are ever needed.
        assert_eq!(scope.watches(Some("agents")), Some(names(&["agents"])));
        let only_own = SecretScope::new("ops", Some("agents"), &[]);
        assert!(only_own.permits("agents") && only_own.permits("ops"));
        assert!(!only_own.permits("team-b"));
        let all = SecretScope::new("ops", None, &names(&["*"]));
        assert!(all.permits("anything"));
        assert_eq!(all.watches(None), None);
        assert_eq!(all.watches(Some("agents")), Some(names(&["agents"])));
    }

    #[test]
    fn a_secret_outside_the_scope_stalls_naming_the_way_out() {
        let Blocker::Secret { reason, message } = not_permitted("elsewhere", "team") else {
            panic!("a Secret blocker");
        };
        assert_eq!(reason, "SecretNotPermitted");
        assert!(message.contains("secretNamespaces") && message.contains("elsewhere/team"));
    }
}
