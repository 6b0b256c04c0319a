//! What `plan` and `apply` print: a table for people; for programs, `-o json|yaml` prints the
//! objects with their status as a `v1` `List`, the shape `kubectl get -o json` prints, so that
//! the same tools (jq, yq, `kubectl` itself) read both.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Serialize;
use serde_json::{json, Value};

use crate::resource::status::CONDITION_READY;
use crate::resource::{AgentDynamics, AgentDynamicsStatus};

use super::manifests::Manifest;
use super::state::ObjectState;
pub use crate::cli::OutputFormat;

/// The object as the API server would return it: the manifest plus the metadata the server adds
/// (uid, generation, creationTimestamp) and the status from the state.
pub fn resource(manifest: &Manifest, record: &ObjectState) -> AgentDynamics {
    let mut object = manifest.object.clone();
    let meta = &mut object.metadata;
    meta.namespace = Some(manifest.namespace.clone());
    meta.uid = Some(record.uid.clone());
    meta.generation = Some(record.generation);
    meta.creation_timestamp = record.creation_timestamp.parse().ok().map(Time);
    meta.resource_version = None;
    meta.managed_fields = None;
    object.status = Some(record.status.clone());
    object
}

/// `{apiVersion: v1, kind: List, items: [...]}`.
pub fn list(items: &[AgentDynamics]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": items,
    })
}

/// Serialises a document for `-o json` / `-o yaml`.
pub fn render<T: Serialize>(format: OutputFormat, value: &T) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(value)?;
            text.push('\n');
            text
        }
        OutputFormat::Yaml => crate::resource::to_yaml(value)?,
        OutputFormat::Table | OutputFormat::Markdown => {
            anyhow::bail!("a table or Markdown is rendered by its command")
        }
    })
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}   ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// READY column: True / False / Suspended (suspended objects are done, not failed).
pub fn ready_cell(spec_suspended: bool, status: &AgentDynamicsStatus) -> String {
    if spec_suspended {
        return "Suspended".into();
    }
    status
        .condition(CONDITION_READY)
        .map_or_else(|| "Unknown".into(), |c| c.status.clone())
}

/// REASON column: the Ready condition's reason.
pub fn reason_cell(status: &AgentDynamicsStatus) -> String {
    status
        .condition(CONDITION_READY)
        .map_or_else(|| "-".into(), |c| c.reason.clone())
}

pub fn or_dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::AgentDynamicsSpec;

    #[test]
    fn table_aligns_columns() {
        let text = table(
            &["NAME", "READY"],
            &[
                vec!["long-name".into(), "True".into()],
                vec!["a".into(), "-".into()],
            ],
        );
        assert_eq!(text, "NAME        READY\nlong-name   True\na           -\n");
    }

    #[test]
    fn list_reads_back_as_agent_dynamics() {
        let manifest = Manifest {
            source: super::super::manifests::Source {
                file: "x.yaml".into(),
                document: 1,
                item: None,
            },
            namespace: "agents".into(),
            name: "a".into(),
            object: AgentDynamics::new(
                "a",
                AgentDynamicsSpec {
                    agent_id: "A1".into(),
                    ..Default::default()
                },
            ),
        };
        let record = ObjectState {
            uid: "u-1".into(),
            agent_id: "A1".into(),
            generation: 3,
            creation_timestamp: "2026-11-29T10:00:00Z".into(),
            spec: manifest.object.spec.clone(),
            status: AgentDynamicsStatus {
                generations: 2,
                ..Default::default()
            },
            spend: Vec::new(),
            purchases: Vec::new(),
        };
        let value = list(&[resource(&manifest, &record)]);
        for format in [OutputFormat::Json, OutputFormat::Yaml] {
            let text = render(format, &value).unwrap();
            let back: Value = if format == OutputFormat::Json {
                serde_json::from_str(&text).unwrap()
            } else {
                serde_saphyr::from_str(&text).unwrap()
            };
            assert_eq!(back["kind"], "List");
            let item: AgentDynamics = serde_json::from_value(back["items"][0].clone()).unwrap();
            assert_eq!(item.metadata.namespace.as_deref(), Some("agents"));
            assert_eq!(item.metadata.generation, Some(3));
            assert_eq!(item.status.unwrap().generations, 2);
            assert_eq!(
                back["items"][0]["apiVersion"],
                "dynamics.bithuman.ai/v1alpha1"
            );
        }
    }
}
