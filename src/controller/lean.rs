//! AgentDynamics as the controller reads it from the API server: parsed lean. Every watch event
//! and every status write's reply carries the whole object, and about half of its JSON is
//! `managedFields` (a tree of every field each writer set), which kube would build into maps
//! only for the cache to drop them. Here they and the labels are skipped while parsing; what is
//! left is what `index::trim_for_cache` keeps. Same kind and URL as `AgentDynamics`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher::Event;
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::index::trim_for_cache;
use crate::resource::{AgentDynamics, AgentDynamicsSpec, AgentDynamicsStatus};

#[derive(Clone, Debug)]
pub struct LeanAgentDynamics(pub AgentDynamics);

impl<'de> Deserialize<'de> for LeanAgentDynamics {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: Meta,
            spec: serde_json::Value,
            #[serde(default)]
            status: Option<AgentDynamicsStatus>,
        }
        /// ObjectMeta without managedFields and labels: serde skips unknown fields unbuilt.
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            annotations: Option<BTreeMap<String, String>>,
            creation_timestamp: Option<Time>,
            deletion_grace_period_seconds: Option<i64>,
            deletion_timestamp: Option<Time>,
            finalizers: Option<Vec<String>>,
            generate_name: Option<String>,
            generation: Option<i64>,
            name: Option<String>,
            namespace: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            resource_version: Option<String>,
            uid: Option<String>,
        }
        let Wire {
            metadata: m,
            spec,
            status,
        } = Wire::deserialize(deserializer)?;
        let spec = tolerant_spec(spec);
        let mut obj = AgentDynamics {
            metadata: ObjectMeta {
                annotations: m.annotations,
                creation_timestamp: m.creation_timestamp,
                deletion_grace_period_seconds: m.deletion_grace_period_seconds,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers,
                generate_name: m.generate_name,
                generation: m.generation,
                name: m.name,
                namespace: m.namespace,
                owner_references: m.owner_references,
                resource_version: m.resource_version,
                uid: m.uid,
                ..ObjectMeta::default()
            },
            spec,
            status,
        };
        trim_for_cache(&mut obj);
        Ok(LeanAgentDynamics(obj))
    }
}

/// The spec, or, when a field does not parse (an enum value or a type from a newer CRD), the
/// fields that do with the others kept as unknown: `plan` then stalls this object alone,
/// naming them (UnknownSpecField), and the watch goes on for every other object.
pub fn tolerant_spec(raw: serde_json::Value) -> AgentDynamicsSpec {
    let fields = match serde_json::from_value::<AgentDynamicsSpec>(raw.clone()) {
        Ok(spec) => return spec,
        Err(_) => match raw {
            serde_json::Value::Object(fields) => fields,
            other => {
                let mut spec = AgentDynamicsSpec::default();
                spec.unknown_fields.insert("spec".into(), other);
                return spec;
            }
        },
    };
    let agent_id = fields.get("agentId").cloned();
    let (mut good, mut bad) = (serde_json::Map::new(), BTreeMap::new());
    for (key, value) in fields {
        let mut alone = serde_json::Map::new();
        if let Some(id) = &agent_id {
            alone.insert("agentId".into(), id.clone());
        }
        alone.insert(key.clone(), value.clone());
        if serde_json::from_value::<AgentDynamicsSpec>(serde_json::Value::Object(alone)).is_ok() {
            good.insert(key, value);
        } else {
            bad.insert(key, value);
        }
    }
    let mut spec: AgentDynamicsSpec =
        serde_json::from_value(serde_json::Value::Object(good)).unwrap_or_default();
    spec.unknown_fields.extend(bad);
    spec
}

impl Serialize for LeanAgentDynamics {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl Resource for LeanAgentDynamics {
    type DynamicType = ();
    type Scope = <AgentDynamics as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        AgentDynamics::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        AgentDynamics::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        AgentDynamics::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        AgentDynamics::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// A watch event of lean objects as one of the cache's type.
pub fn full_event(event: Event<LeanAgentDynamics>) -> Event<AgentDynamics> {
    match event {
        Event::Apply(o) => Event::Apply(o.0),
        Event::Delete(o) => Event::Delete(o.0),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.0),
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the API server sends, with two writers' managedFields, labels and a kubectl
    /// annotation: parsed lean, it is exactly the full parse trimmed for the cache.
    #[test]
    fn the_lean_parse_keeps_what_the_cache_keeps() {
        let wire = json!({
            "apiVersion": "dynamics.bithuman.ai/v1alpha1",
            "kind": "AgentDynamics",
            "metadata": {
                "name": "a", "namespace": "ns", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "deletionTimestamp": "2026-01-02T00:00:00Z", "deletionGracePeriodSeconds": 0,
                "finalizers": ["dynamics.bithuman.ai/cleanup"],
                "labels": {"app": "x"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    crate::resource::RECONCILE_REQUESTED_AT: "now"
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-0"}],
                "managedFields": [
                    {"manager": "kubectl", "operation": "Apply", "apiVersion": "dynamics.bithuman.ai/v1alpha1",
                     "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {".": {}, "f:agentId": {}}}},
                    {"manager": "dynamics-operator", "operation": "Update", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}}}}}}
                ]
            },
            "spec": {"agentId": "A91XMB7113"},
            "status": {"generations": 2, "observedGeneration": 3}
        });
        let lean: LeanAgentDynamics = serde_json::from_value(wire.clone()).unwrap();
        let mut full: AgentDynamics = serde_json::from_value(wire).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        trim_for_cache(&mut full);
        assert_eq!(lean.0.metadata, full.metadata);
        assert_eq!(lean.0.spec, full.spec);
        assert_eq!(lean.0.status, full.status);
        assert_eq!(lean.0.status.as_ref().unwrap().generations, 2);
        assert_eq!(lean.0.metadata.owner_references.as_ref().unwrap().len(), 1);
        // It writes as the full type does.
        assert_eq!(
            serde_json::to_value(&lean).unwrap(),
            serde_json::to_value(&full).unwrap()
        );
        assert_eq!(LeanAgentDynamics::plural(&()), "agentdynamics");
    }

    /// An object written with a newer CRD (an enum value or a type this version does not know)
    /// still parses: the field is kept as unknown, so the object alone is stalled.
    #[test]
    fn a_field_from_a_newer_crd_is_kept_as_unknown_not_a_failed_watch() {
        let wire = json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"agentId": "A1", "deletionPolicy": "Archive", "duration": "long", "model": "kling"}
        });
        let lean: LeanAgentDynamics = serde_json::from_value(wire).unwrap();
        let spec = lean.0.spec;
        assert_eq!(spec.agent_id, "A1");
        assert_eq!(spec.model.as_deref(), Some("kling"));
        assert_eq!(
            spec.unknown_field_paths(),
            vec!["spec.deletionPolicy", "spec.duration"]
        );
        // And a list of objects parses whole, the good ones as they are.
        let list: Vec<LeanAgentDynamics> = serde_json::from_value(json!([
            {"metadata": {"name": "new"}, "spec": {"agentId": "A2", "suspend": "maybe"}},
            {"metadata": {"name": "ok"}, "spec": {"agentId": "A3"}}
        ]))
        .unwrap();
        assert_eq!(list[0].0.spec.unknown_field_paths(), vec!["spec.suspend"]);
        assert!(list[1].0.spec.unknown_field_paths().is_empty());
    }
}
