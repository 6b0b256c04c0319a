//! Which api-secret each object uses in file mode. Without a cluster, `spec.apiSecretRef` resolves
//! against the `Secret` documents given with `-f` (same namespace, same key rules as the
//! controller); objects without a reference use the operator's own secret
//! (`BITHUMAN_API_SECRET` or `--api-secret-file`). A secret that cannot be found blocks the object
//! before any remote call, with a message that says what to add.

use std::collections::BTreeMap;

use crate::api::ApiSecret;
use crate::reconcile::{reasons, Blocker};

use super::manifests::{Manifest, SecretDoc};

const SECRET_ENV: &str = "BITHUMAN_API_SECRET";

/// The secret for one object, or why there is none.
pub fn resolve(
    manifest: &Manifest,
    secrets: &BTreeMap<(String, String), SecretDoc>,
    operator: Option<&ApiSecret>,
) -> Result<ApiSecret, Blocker> {
    let blocked = |reason: &str, message: String| Blocker::Secret {
        reason: reason.into(),
        message,
    };
    let Some(reference) = &manifest.object.spec.api_secret_ref else {
        return operator.cloned().ok_or_else(|| {
            blocked(
                reasons::NO_API_SECRET,
                format!(
                    "no api-secret for agent {}: set {SECRET_ENV} (or --api-secret-file), or spec.apiSecretRef to a Secret given with -f",
                    manifest.object.spec.agent_id
                ),
            )
        });
    };
    let name = format!("{}/{}", manifest.namespace, reference.name);
    let Some(doc) = secrets.get(&(manifest.namespace.clone(), reference.name.clone())) else {
        return Err(blocked(
            reasons::SECRET_NOT_FOUND,
            format!(
                "Secret {name} is not among the manifests: in file mode spec.apiSecretRef resolves against Secret documents given with -f (apiVersion: v1, kind: Secret, metadata: {{name: {}, namespace: {}}}, stringData: {{{}: ...}})",
                reference.name, manifest.namespace, reference.key
            ),
        ));
    };
    let Some(bytes) = doc.data.get(&reference.key) else {
        return Err(blocked(
            reasons::SECRET_KEY_NOT_FOUND,
            format!(
                "Secret {name} ({}) has no key {:?}: set spec.apiSecretRef.key to one of its keys",
                doc.source, reference.key
            ),
        ));
    };
    ApiSecret::from_key_bytes(bytes).ok_or_else(|| {
        blocked(
            reasons::SECRET_KEY_NOT_FOUND,
            format!(
                "key {:?} of Secret {name} ({}) is empty",
                reference.key, doc.source
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{AgentDynamics, AgentDynamicsSpec, SecretKeyRef};

    fn manifest(reference: Option<(&str, &str)>) -> Manifest {
        let spec = AgentDynamicsSpec {
            agent_id: "A1".into(),
            api_secret_ref: reference.map(|(name, key)| SecretKeyRef {
                name: name.into(),
                key: key.into(),
                unknown_fields: Default::default(),
            }),
            ..Default::default()
        };
        Manifest {
            source: super::super::manifests::Source {
                file: "a.yaml".into(),
                document: 1,
                item: None,
            },
            namespace: "agents".into(),
            name: "a".into(),
            object: AgentDynamics::new("a", spec),
        }
    }

    fn secrets() -> BTreeMap<(String, String), SecretDoc> {
        let doc = SecretDoc {
            source: super::super::manifests::Source {
                file: "s.yaml".into(),
                document: 1,
                item: None,
            },
            data: [
                ("api-secret".to_string(), b"team-b\n".to_vec()),
                ("empty".to_string(), Vec::new()),
            ]
            .into(),
        };
        [(("agents".to_string(), "team-b".to_string()), doc)].into()
    }

    fn reason(r: Result<ApiSecret, Blocker>) -> String {
        match r {
            Ok(s) => format!("ok:{}", s.expose()),
            Err(Blocker::Secret { reason, .. }) => reason,
            Err(other) => format!("{other:?}"),
        }
    }

    #[test]
    fn each_way_to_find_or_miss_a_secret() {
        let op = ApiSecret::new("operator");
        let s = secrets();
        assert_eq!(
            reason(resolve(&manifest(None), &s, Some(&op))),
            "ok:operator"
        );
        assert_eq!(reason(resolve(&manifest(None), &s, None)), "NoApiSecret");
        assert_eq!(
            reason(resolve(&manifest(Some(("team-b", "api-secret"))), &s, None)),
            "ok:team-b"
        );
        assert_eq!(
            reason(resolve(
                &manifest(Some(("team-c", "api-secret"))),
                &s,
                Some(&op)
            )),
            "SecretNotFound"
        );
        assert_eq!(
            reason(resolve(&manifest(Some(("team-b", "other"))), &s, Some(&op))),
            "SecretKeyNotFound"
        );
        assert_eq!(
            reason(resolve(&manifest(Some(("team-b", "empty"))), &s, Some(&op))),
            "SecretKeyNotFound"
        );
    }
}
