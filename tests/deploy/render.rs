//! What the tests read in the documents of `kubectl kustomize` (support::tools::kustomize).

use std::collections::BTreeSet;

use serde_json::Value as Json;

pub fn kinds(docs: &[Json]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

pub fn container<'a>(deployment: &'a Json, name: &str) -> &'a Json {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

pub fn env_value<'a>(container: &'a Json, name: &str) -> Option<&'a Json> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

pub fn rbac_docs(docs: &[Json]) -> Vec<Json> {
    docs.iter()
        .filter(|d| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap())
        })
        .cloned()
        .collect()
}
