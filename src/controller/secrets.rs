//! The API secret for an object: `spec.apiSecretRef` (a Secret in its namespace) or the
//! operator's own. A Secret that is missing or lacks the key stalls the object with a message
//! that says what to create; the secret's value never leaves `ApiSecret`.

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::api::ApiSecret;
use crate::reconcile::{reasons, Blocker};
use crate::resource::{AgentDynamics, API_SECRET_LABEL};

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
        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .cloned()
        })
        .map(ApiSecret::new)
        .filter(|s| !s.is_empty());
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
