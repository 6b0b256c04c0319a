//! Argo CD: the Application's sync waves, and deploy/argocd/health.lua on a live object
//! (tests/argocd_health.rs tests the script in depth).

use std::path::Path;

use serde_json::{json, Value as Json};

use crate::render::rbac_docs;
use crate::support::tools::{find, kustomize, parse_docs, ROOT};

#[test]
fn argocd_application_orders_crd_operator_then_agents() {
    let app = parse_docs(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/argocd/application.yaml")).unwrap(),
    );
    assert_eq!(app.len(), 1);
    let app = &app[0];
    assert_eq!(app["kind"], "Application");
    assert!(
        app["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .contains(&json!("resources-finalizer.argocd.argoproj.io")),
        "deleting the Application must delete its resources (in reverse wave order)"
    );
    let path = app["spec"]["source"]["path"].as_str().unwrap();
    let docs = kustomize(path);
    let wave = |d: &Json| -> i64 {
        d["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap_or_else(|| panic!("{} {} has no sync wave", d["kind"], d["metadata"]["name"]))
            .parse()
            .unwrap()
    };
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "agentdynamics.dynamics.bithuman.ai",
    );
    assert!(
        crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
            .as_str()
            .unwrap()
            .contains("Delete=false")
    );
    let operator = find(&docs, "Deployment", "dynamics-operator");
    let agents: Vec<&Json> = docs
        .iter()
        .filter(|d| d["kind"] == "AgentDynamics")
        .collect();
    assert!(!agents.is_empty());
    let first_agent_wave = agents.iter().map(|a| wave(a)).min().unwrap();
    assert!(wave(crd) < first_agent_wave && wave(operator) < first_agent_wave);
    for doc in &docs {
        if doc["kind"] != "AgentDynamics" {
            assert!(
                wave(doc) < first_agent_wave,
                "{} {} must sync before the agents and be deleted after them",
                doc["kind"],
                doc["metadata"]["name"]
            );
        }
    }
    for agent in agents {
        assert!(
            agent["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
                .as_str()
                .unwrap()
                .contains("SkipDryRunOnMissingResource=true")
        );
    }
    // The operator and RBAC in the example are exactly the base's (waves aside).
    let strip = |docs: &[Json]| -> Vec<Json> {
        rbac_docs(docs)
            .into_iter()
            .map(|mut d| {
                d["metadata"].as_object_mut().unwrap().remove("annotations");
                d
            })
            .collect()
    };
    assert_eq!(strip(&docs), strip(&kustomize("deploy")));
}

pub fn lua_health(obj: &Json) -> (String, String) {
    fn to_lua(lua: &mlua::Lua, value: &Json) -> mlua::Value {
        match value {
            Json::Null => mlua::Value::Nil,
            Json::Bool(b) => mlua::Value::Boolean(*b),
            Json::Number(n) => mlua::Value::Number(n.as_f64().unwrap()),
            Json::String(s) => mlua::Value::String(lua.create_string(s).unwrap()),
            Json::Array(items) => {
                let t = lua.create_table().unwrap();
                for (i, item) in items.iter().enumerate() {
                    t.raw_set(i + 1, to_lua(lua, item)).unwrap();
                }
                mlua::Value::Table(t)
            }
            Json::Object(map) => {
                let t = lua.create_table().unwrap();
                for (k, v) in map {
                    t.raw_set(k.as_str(), to_lua(lua, v)).unwrap();
                }
                mlua::Value::Table(t)
            }
        }
    }
    let lua = mlua::Lua::new();
    lua.globals().set("obj", to_lua(&lua, obj)).unwrap();
    let script = std::fs::read_to_string(Path::new(ROOT).join("deploy/argocd/health.lua")).unwrap();
    let result: mlua::Table = lua.load(&script).eval().expect("health.lua runs");
    (
        result.get::<String>("status").unwrap(),
        result
            .get::<Option<String>>("message")
            .unwrap()
            .unwrap_or_default(),
    )
}
