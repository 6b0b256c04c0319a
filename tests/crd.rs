//! The committed CRD is exactly what the Rust types generate, and it carries the rules users rely on.

use dynamics_operator::resource::{crd_yaml, ledger_crd_yaml, AgentDynamics, DynamicsLedger};
use kube::CustomResourceExt;

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/agentdynamics.yaml"
    ))
    .expect("crds/agentdynamics.yaml exists");
    assert!(
        committed == crd_yaml(),
        "crds/agentdynamics.yaml is out of date: run `cargo run -- crd > crds/agentdynamics.yaml` and commit it"
    );
}

#[test]
fn committed_ledger_crd_matches_the_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/dynamicsledgers.yaml"
    ))
    .expect("crds/dynamicsledgers.yaml exists");
    assert!(
        committed == ledger_crd_yaml(),
        "crds/dynamicsledgers.yaml is out of date: run `cargo run -- crd --ledger > crds/dynamicsledgers.yaml` and commit it"
    );
    let crd: serde_json::Value = serde_saphyr::from_str(&committed).unwrap();
    assert_eq!(
        crd["spec"]["scope"], "Cluster",
        "one record per agent for the whole cluster"
    );
}

/// The printed YAML reads back as exactly the CRD the types build: long and multi-line
/// descriptions, patterns and strings that look like numbers or booleans survive the
/// serializer's quoting and folding.
#[test]
fn crd_yaml_reads_back_as_the_types_crd() {
    for (yaml, crd) in [
        (
            crd_yaml(),
            serde_json::to_value(AgentDynamics::crd()).unwrap(),
        ),
        (
            ledger_crd_yaml(),
            serde_json::to_value(DynamicsLedger::crd()).unwrap(),
        ),
    ] {
        let read: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(read, crd, "{yaml}");
    }
}

#[test]
fn crd_carries_validation_and_printer_columns() {
    let crd: serde_json::Value = serde_saphyr::from_str(&crd_yaml()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "agdyn");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["agentId"]));
    assert_eq!(
        spec["properties"]["agentId"]["x-kubernetes-validations"][0]["rule"],
        "self == oldSelf"
    );
    assert_eq!(spec["properties"]["duration"]["minimum"], 1.0);
    assert_eq!(spec["properties"]["duration"]["maximum"], 10.0);
    assert_eq!(
        spec["properties"]["deletionPolicy"]["enum"],
        serde_json::json!(["Disable", "Orphan"])
    );
    assert_eq!(spec["properties"]["deletionPolicy"]["default"], "Disable");
    assert_eq!(
        spec["properties"]["dynamics"]["properties"]["enabled"]["default"],
        true
    );
    assert!(spec["properties"]["imageUrl"]["pattern"]
        .as_str()
        .unwrap()
        .starts_with("^https?://"));
    let columns = |priority: u64| -> Vec<&str> {
        version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["priority"].as_u64().unwrap_or(0) == priority)
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        columns(0),
        ["Agent", "Model", "Remote", "Ready", "Reason", "Age"]
    );
    // `kubectl get agdyn -o wide` adds what an operator on call needs first.
    assert_eq!(columns(1), ["Generations", "Message"]);
    // `kubectl get bithuman` lists them with the project's other kinds.
    assert_eq!(
        crd["spec"]["names"]["categories"],
        serde_json::json!(["bithuman"])
    );
    // The first line of `kubectl explain agentdynamics`, not the derive macro's placeholder.
    let root = version["schema"]["openAPIV3Schema"]["description"]
        .as_str()
        .unwrap();
    assert!(
        root.starts_with("AgentDynamics declares the dynamics") && !root.contains("derived type"),
        "{root}"
    );
    // Every spec field has a description for `kubectl explain`.
    for (name, field) in spec["properties"].as_object().unwrap() {
        assert!(
            field["description"].as_str().is_some_and(|d| !d.is_empty()),
            "spec.{name} has no description"
        );
    }
}

#[test]
fn every_example_is_a_valid_agent_dynamics() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for value in serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap() {
            if value["kind"] != "AgentDynamics" {
                continue;
            }
            let obj = dynamics_operator::resource::validate::parse_agent_dynamics(value)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let errors = dynamics_operator::resource::validate::validate_spec(&obj.spec);
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the five documented examples, found {seen}"
    );
}
