//! Loading manifests for `plan` / `apply`: files, directories (recursively) and standard input;
//! multi-document YAML, JSON (also several values in a row) and `List` documents such as
//! `kubectl get -o json` or `apply -o json` print. Every `AgentDynamics` is checked with the
//! CRD's own admission rules (`resource::validate`) before anything is sent; `Secret` documents
//! are kept so that `spec.apiSecretRef` can resolve against them; other kinds are skipped with a
//! note so that a whole GitOps folder can be given.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::resource::validate::{parse_agent_dynamics, validate_spec, FieldError};
use crate::resource::AgentDynamics;

pub const API_VERSION: &str = "dynamics.bithuman.ai/v1alpha1";
pub const KIND: &str = "AgentDynamics";
/// Namespace of a document that names none, as `kubectl apply` assumes without a context.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Deepest nesting of mappings and lists a document may have. Real manifests stay far below;
/// refusing deeper ones early keeps hostile input (100,000 levels) cheap and stack-safe.
pub const MAX_DEPTH: usize = 64;

/// Where a document came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The path as given (or found under a given directory); `-` for standard input.
    pub file: String,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// 1-based position inside a `List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = if self.file == "-" {
            "<stdin>"
        } else {
            &self.file
        };
        write!(f, "{file} (document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        f.write_str(")")
    }
}

/// One `AgentDynamics` read from the manifests, valid by the CRD's rules.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub source: Source,
    pub namespace: String,
    pub name: String,
    pub object: AgentDynamics,
}

impl Manifest {
    /// `namespace/name`, the key of the object everywhere in file mode.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A v1 `Secret` document, decoded (`data` is base64, `stringData` plain; `stringData` wins).
#[derive(Clone)]
pub struct SecretDoc {
    pub source: Source,
    pub data: BTreeMap<String, Vec<u8>>,
}

// Never print secret values, not even in debug output.
impl fmt::Debug for SecretDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretDoc")
            .field("source", &self.source)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A document that was not used, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub source: Source,
    pub what: String,
}

/// A refused document: `FILE (document N) NAME: FIELD: message`.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub source: Source,
    /// `namespace/name` when known.
    pub name: Option<String>,
    pub error: FieldError,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        write!(f, ": {}", self.error)
    }
}

/// Everything read from the `-f` arguments.
#[derive(Debug, Default)]
pub struct Loaded {
    /// In the order found: files sorted by path, documents in file order. Conflicts between
    /// objects naming the same agent are decided by this order (the later one loses).
    pub objects: Vec<Manifest>,
    /// Keyed by (namespace, name).
    pub secrets: BTreeMap<(String, String), SecretDoc>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<ManifestError>,
}

/// Reads every path. A path that cannot be read at all is an error of the command (`Err`);
/// problems inside documents are collected in `Loaded::errors`.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut stdin_used = false;
    for path in paths {
        if path.as_os_str() == "-" {
            anyhow::ensure!(!stdin_used, "-f - (standard input) can be given only once");
            stdin_used = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
            load_text(&mut loaded, "-", &text, guess_json(&text));
            continue;
        }
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect_dir(path, &mut files)?;
            anyhow::ensure!(
                !files.is_empty(),
                "{}: no *.yaml, *.yml or *.json files in this directory",
                path.display()
            );
            for file in files {
                load_file(&mut loaded, &file)?;
            }
        } else {
            // A file named explicitly is read whatever its extension.
            load_file(&mut loaded, path)?;
        }
    }
    Ok(loaded)
}

/// Manifest files under `dir`, sorted so that every run sees the same order. Hidden entries
/// (`.git`, `.dynamics-state.json`, ...) are not manifests.
fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if is_manifest_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("yaml" | "yml" | "json")
    )
}

fn load_file(loaded: &mut Loaded, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    load_text(loaded, &path.display().to_string(), &text, json);
    Ok(())
}

fn guess_json(text: &str) -> bool {
    text.trim_start().starts_with(['{', '['])
}

/// Splits a file into documents and sorts each into objects, secrets, skipped or errors.
pub fn load_text(loaded: &mut Loaded, file: &str, text: &str, json: bool) {
    let source = |document| Source {
        file: file.to_string(),
        document,
        item: None,
    };
    let documents =
        if json { json_documents(text) } else { None }.unwrap_or_else(|| yaml_documents(text));
    for (index, document) in documents.into_iter().enumerate() {
        match document {
            Ok(value) => classify(loaded, source(index + 1), value),
            Err(error) => loaded.errors.push(ManifestError {
                source: source(index + 1),
                name: None,
                error,
            }),
        }
    }
}

type Document = Result<Value, FieldError>;

fn document_error(message: String) -> FieldError {
    FieldError {
        field: "(document)".into(),
        message,
    }
}

/// Several JSON values in a row; `None` when the text is not JSON (then it is read as YAML,
/// which also covers JSON with comments or trailing YAML). A duplicated key or too deep a
/// nesting is reported here, with its field.
fn json_documents(text: &str) -> Option<Vec<Document>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut out = Vec::new();
    while de.end().is_err() {
        let problem = RefCell::new(None);
        match Strict::root(&problem).deserialize(&mut de) {
            Ok(value) => out.push(Ok(value)),
            Err(_) => {
                out.push(Err(problem.into_inner()?));
                break;
            }
        }
    }
    Some(out)
}

/// How each document is read: as YAML 1.2's core schema (`yes`, `0755` and `1_000` stay
/// strings, `<<` is an ordinary key), with duplicated keys passed on to [`Strict`], which
/// refuses them naming the field, and with one-line messages.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        merge_keys: serde_saphyr::MergeKeyPolicy::AsOrdinary,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        null_as_string: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        with_snippet: false,
    }
}

/// The byte ranges of the `---`-separated documents, found by streaming the parser's events
/// in linear time; each range also holds the comments and directives before its document.
/// Refuses nesting deeper than [`MAX_DEPTH`] here, before anything is built. A syntax error
/// ends the list: the rest of the text is one more range, whose parse reports it.
fn yaml_ranges(text: &str) -> Result<Vec<std::ops::Range<usize>>, FieldError> {
    use serde_saphyr::granit_parser::{ErrorKind, Event, Parser, StrInput};
    let too_deep = || {
        document_error(format!(
            "nested more than {MAX_DEPTH} levels deep; no manifest needs that"
        ))
    };
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    for item in Parser::new(StrInput::new(text)) {
        let (event, span) = match item {
            Ok(item) => item,
            // Its scanner stops flow collections at a fixed depth of its own.
            Err(e) if matches!(e.kind(), ErrorKind::RecursionLimitExceeded) => {
                return Err(too_deep())
            }
            Err(_) => {
                ranges.push(start..text.len());
                return Ok(ranges);
            }
        };
        match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep());
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth -= 1,
            Event::DocumentEnd => {
                let end = span.byte_range().map_or(text.len(), |r| r.end);
                ranges.push(start..end);
                start = end;
            }
            _ => {}
        }
    }
    Ok(ranges)
}

/// `---`-separated YAML documents, each parsed on its own so that one document's error
/// keeps the documents before it. A syntax error ends the file: the parser cannot resynchronise.
fn yaml_documents(text: &str) -> Vec<Document> {
    let ranges = match yaml_ranges(text) {
        Ok(ranges) => ranges,
        Err(error) => return vec![Err(error)],
    };
    let mut out = Vec::new();
    let mut lines_before = 0;
    let mut counted = 0;
    for range in ranges {
        lines_before += text[counted..range.start].matches('\n').count();
        counted = range.start;
        let problem = RefCell::new(None);
        let parsed = serde_saphyr::with_deserializer_from_str_with_options(
            &text[range],
            yaml_options(),
            |de| Strict::root(&problem).deserialize(de),
        );
        match parsed {
            Ok(value) => out.push(Ok(value)),
            Err(e) => {
                let error = problem.into_inner().unwrap_or_else(|| {
                    // Lines counted from the top of the file, not of the document.
                    let options = serde_saphyr::render_options! {
                        snippets: serde_saphyr::SnippetMode::Off,
                        line_offset: lines_before as u64,
                    };
                    document_error(format!(
                        "not valid YAML: {}",
                        e.render_with_options(options)
                    ))
                });
                out.push(Err(error));
                break;
            }
        }
    }
    out
}

/// Builds a JSON value like `Value::deserialize`, but refuses a key given twice in one
/// mapping (which would otherwise let the last one win silently) and nesting deeper than
/// [`MAX_DEPTH`], recording which field it was in `problem`.
struct Strict<'a> {
    depth: usize,
    path: String,
    problem: &'a RefCell<Option<FieldError>>,
}

impl<'a> Strict<'a> {
    fn root(problem: &'a RefCell<Option<FieldError>>) -> Self {
        Strict {
            depth: 0,
            path: String::new(),
            problem,
        }
    }

    fn child(&self, segment: String) -> Self {
        Strict {
            depth: self.depth + 1,
            path: segment,
            problem: self.problem,
        }
    }

    fn field(&self) -> String {
        if self.path.is_empty() {
            "(document)".into()
        } else {
            self.path.clone()
        }
    }

    fn fail<E: de::Error>(&self, field: String, message: String) -> E {
        *self.problem.borrow_mut() = Some(FieldError {
            field,
            message: message.clone(),
        });
        E::custom(message)
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(
                self.field(),
                format!("nested more than {MAX_DEPTH} levels deep; no manifest needs that"),
            ));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::new();
        while let Some(v) =
            seq.next_element_seed(self.child(format!("{}[{}]", self.path, items.len())))?
        {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if out.contains_key(&key) {
                return Err(self.fail(
                    path,
                    "given more than once in the same mapping; keep one".into(),
                ));
            }
            let value = map.next_value_seed(self.child(path))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn classify(loaded: &mut Loaded, source: Source, value: Value) {
    let Value::Object(map) = &value else {
        // `---` at the end of a file, or a comment-only document.
        if !value.is_null() {
            loaded.errors.push(ManifestError {
                source,
                name: None,
                error: FieldError {
                    field: "(document)".into(),
                    message:
                        "not a Kubernetes object (expected a mapping with apiVersion and kind)"
                            .into(),
                },
            });
        }
        return;
    };
    let text = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    match kind.as_str() {
        "List" | "AgentDynamicsList" if source.item.is_none() => {
            let items = map
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                classify(
                    loaded,
                    Source {
                        item: Some(i + 1),
                        ..source.clone()
                    },
                    item,
                );
            }
        }
        KIND if api_version.starts_with("dynamics.bithuman.ai/") => {
            agent_dynamics(loaded, source, &api_version, value)
        }
        "Secret" if api_version == "v1" => secret(loaded, source, value),
        "" => loaded.skipped.push(Skipped {
            source,
            what: "a document without kind".into(),
        }),
        _ => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)");
            let what = if api_version.is_empty() {
                kind
            } else {
                format!("{kind} ({api_version})")
            };
            loaded.skipped.push(Skipped {
                source,
                what: format!("{what} {name}"),
            });
        }
    }
}

/// metadata.name and metadata.namespace as the API server checks them (they make the key).
fn metadata(value: &Value) -> (Option<String>, String, Vec<FieldError>) {
    let meta = value.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut errors = Vec::new();
    let name = get("name").filter(|n| !n.is_empty());
    match &name {
        None => errors.push(FieldError {
            field: "metadata.name".into(),
            message: "required: every object needs a name".into(),
        }),
        Some(n) if !is_dns_subdomain(n) => errors.push(FieldError {
            field: "metadata.name".into(),
            message: format!(
                "{n:?} is not a valid name: use at most 253 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"
            ),
        }),
        Some(_) => {}
    }
    let namespace = get("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if !is_dns_label(&namespace) {
        errors.push(FieldError {
            field: "metadata.namespace".into(),
            message: format!(
                "{namespace:?} is not a valid namespace: use at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit"
            ),
        });
    }
    (name, namespace, errors)
}

fn agent_dynamics(loaded: &mut Loaded, source: Source, api_version: &str, value: Value) {
    let (name, namespace, mut errors) = metadata(&value);
    let display = name.as_ref().map(|n| format!("{namespace}/{n}"));
    if api_version != API_VERSION {
        errors.push(FieldError {
            field: "apiVersion".into(),
            message: format!("{api_version:?} is not served: use {API_VERSION}"),
        });
    }
    match parse_agent_dynamics(value) {
        Ok(object) => {
            errors.extend(validate_spec(&object.spec));
            if errors.is_empty() {
                if let Some(name) = name {
                    loaded.objects.push(Manifest {
                        source,
                        namespace,
                        name,
                        object,
                    });
                }
                return;
            }
        }
        Err(e) => errors.push(e),
    }
    for error in errors {
        loaded.errors.push(ManifestError {
            source: source.clone(),
            name: display.clone(),
            error,
        });
    }
}

fn secret(loaded: &mut Loaded, source: Source, value: Value) {
    let (name, namespace, mut errors) = metadata(&value);
    let display = name.as_ref().map(|n| format!("{namespace}/{n}"));
    // k8s-openapi's Secret decodes `data` from base64, and names the field that is wrong.
    match serde_path_to_error::deserialize::<_, Secret>(value) {
        Ok(parsed) if errors.is_empty() => {
            let mut data: BTreeMap<String, Vec<u8>> = parsed
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            // As the API server does: stringData is merged over data.
            for (k, v) in parsed.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            // metadata() found no errors, so the name is there.
            let key = (namespace, name.unwrap_or_default());
            match loaded.secrets.get(&key) {
                // Two values for one Secret: refuse rather than pick one silently.
                Some(first) => errors.push(FieldError {
                    field: "metadata.name".into(),
                    message: format!(
                        "Secret {}/{} is already defined in {}",
                        key.0, key.1, first.source
                    ),
                }),
                None => {
                    loaded.secrets.insert(key, SecretDoc { source, data });
                    return;
                }
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(FieldError {
            field: e.path().to_string(),
            message: e.into_inner().to_string(),
        }),
    }
    for error in errors {
        loaded.errors.push(ManifestError {
            source: source.clone(),
            name: display.clone(),
            error,
        });
    }
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_part(s, false)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && is_dns_part(s, true)
}

fn is_dns_part(s: &str, dots: bool) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(ok)
        && s.ends_with(ok)
        && s.chars().all(|c| ok(c) || c == '-' || (dots && c == '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, json: bool) -> Loaded {
        let mut loaded = Loaded::default();
        load_text(&mut loaded, "agents.yaml", text, json);
        loaded
    }

    #[test]
    fn multi_document_yaml_sorts_kinds() {
        let loaded = load_str(
            r#"
apiVersion: dynamics.bithuman.ai/v1alpha1
kind: AgentDynamics
metadata: {name: a, namespace: agents}
spec: {agentId: A1}
---
apiVersion: v1
kind: Secret
metadata: {name: team-b}
data: {api-secret: c2VjcmV0}
stringData: {other: plain}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
# only a comment
"#,
            false,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.objects.len(), 1);
        assert_eq!(loaded.objects[0].key(), "agents/a");
        let secret = &loaded.secrets[&("default".to_string(), "team-b".to_string())];
        assert_eq!(secret.data["api-secret"], b"secret");
        assert_eq!(secret.data["other"], b"plain");
        assert!(
            !format!("{secret:?}").contains("plain"),
            "values stay out of Debug"
        );
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].what, "Deployment (apps/v1) web");
        assert_eq!(loaded.skipped[0].source.document, 3);
    }

    #[test]
    fn json_stream_and_lists() {
        let loaded = load_str(
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"dynamics.bithuman.ai/v1alpha1","kind":"AgentDynamics","metadata":{"name":"a"},"spec":{"agentId":"A1"},"status":{"generations":1}},
                {"apiVersion":"dynamics.bithuman.ai/v1alpha1","kind":"AgentDynamics","metadata":{"name":"b"},"spec":{"agentId":"B1","duration":0}}]}
               {"apiVersion":"dynamics.bithuman.ai/v1alpha1","kind":"AgentDynamics","metadata":{"name":"c"},"spec":{"agentId":"C1"}}"#,
            true,
        );
        assert_eq!(
            loaded.objects.iter().map(Manifest::key).collect::<Vec<_>>(),
            ["default/a", "default/c"]
        );
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(
            loaded.errors[0].to_string(),
            "agents.yaml (document 1, item 2) default/b: spec.duration: 0 is out of range: use 1 to 10 seconds"
        );
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let loaded = load_str(
            r#"
apiVersion: dynamics.bithuman.ai/v1alpha1
kind: AgentDynamics
metadata: {name: ok}
spec: {agentId: A1}
---
apiVersion: dynamics.bithuman.ai/v1alpha1
kind: AgentDynamics
metadata: {name: bad}
spec: {agentId: A2, imageUrl: "ftp://x/y.jpg", dynamics: {enabld: true}}
---
apiVersion: dynamics.bithuman.ai/v1alpha1
kind: AgentDynamics
metadata: {name: Bad_Name}
spec: {agentId: ""}
---
apiVersion: dynamics.bithuman.ai/v1beta9
kind: AgentDynamics
metadata: {name: future}
spec: {agentId: A3}
"#,
            false,
        );
        let messages: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(loaded.objects.len(), 1);
        assert!(
            messages[0].starts_with("agents.yaml (document 2) default/bad: spec.dynamics.enabld: "),
            "{messages:?}"
        );
        assert!(
            messages[1].starts_with("agents.yaml (document 3) default/Bad_Name: metadata.name: "),
            "{messages:?}"
        );
        assert!(
            messages[2]
                .starts_with("agents.yaml (document 3) default/Bad_Name: spec.agentId: required"),
            "{messages:?}"
        );
        assert!(
            messages[3].starts_with("agents.yaml (document 4) default/future: apiVersion: "),
            "{messages:?}"
        );
        assert_eq!(messages.len(), 4, "{messages:?}");
    }

    const OK_DOC: &str = "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata: {name: ok}\nspec: {agentId: A1}\n";

    #[test]
    fn a_duplicated_key_is_refused_naming_file_document_and_field() {
        let dup = "apiVersion: dynamics.bithuman.ai/v1alpha1\nkind: AgentDynamics\nmetadata: {name: twice}\nspec:\n  agentId: A1\n  agentId: A2\n";
        let loaded = load_str(&format!("{OK_DOC}---\n{dup}"), false);
        assert_eq!(loaded.objects.len(), 1, "{:?}", loaded.errors);
        assert_eq!(loaded.errors.len(), 1);
        let e = &loaded.errors[0];
        assert_eq!(e.error.field, "spec.agentId");
        assert_eq!(
            e.to_string(),
            "agents.yaml (document 2): spec.agentId: given more than once in the same mapping; keep one"
        );
        // The same in JSON, at the top level and inside a list.
        let json = r#"{"kind":"List","items":[{"kind":"Secret","kind":"Secret"}]}"#;
        let loaded = load_str(json, true);
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].error.field, "items[0].kind");
        let loaded = load_str(r#"{"apiVersion":"v1"} {"a":1,"a":1}"#, true);
        assert_eq!(loaded.errors[0].source.document, 2);
        assert_eq!(loaded.errors[0].error.field, "a");
    }

    #[test]
    fn deep_nesting_is_refused_fast_with_a_clear_error() {
        let depth = 100_000;
        let cases = [
            (format!("{}{}", "[".repeat(depth), "]".repeat(depth)), true),
            (format!("{}{}", "[".repeat(depth), "]".repeat(depth)), false),
            (
                format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth)),
                false,
            ),
            (format!("{}x", "- ".repeat(depth)), false),
        ];
        for (text, json) in cases {
            let t = std::time::Instant::now();
            let loaded = load_str(&text, json);
            let took = t.elapsed();
            // Typically milliseconds; the bound is for a loaded machine.
            assert!(took < std::time::Duration::from_secs(1), "{took:?}");
            assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
            let message = loaded.errors[0].to_string();
            assert!(
                message.starts_with("agents.yaml (document 1): ")
                    && message.ends_with("nested more than 64 levels deep; no manifest needs that"),
                "{message}"
            );
        }
        // Just inside the limit is read as usual.
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let loaded = load_str(&ok, true);
        assert!(loaded.errors[0]
            .to_string()
            .contains("not a Kubernetes object"));
    }

    #[test]
    fn broken_yaml_is_reported_not_panicked() {
        let loaded = load_str("kind: [unclosed\n", false);
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].to_string().contains("not valid YAML"));
    }

    #[test]
    fn empty_documents_keep_the_numbering() {
        // As `helm template` prints a template that renders nothing.
        let loaded = load_str(
            &format!("---\n# Source: a.yaml\n---\n{OK_DOC}---\n---\nkind: [unclosed\n"),
            false,
        );
        assert_eq!(loaded.objects.len(), 1, "{:?}", loaded.errors);
        assert_eq!(loaded.objects[0].source.document, 2);
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].source.document, 4);
        // The line is counted from the top of the file.
        let message = loaded.errors[0].to_string();
        assert!(
            message.contains("not valid YAML: ") && message.contains("line 10"),
            "{message}"
        );
    }

    #[test]
    fn scalars_are_read_as_yaml_1_2_core_schema() {
        let loaded = load_str(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {a: yes, b: '1', c: 0755, d: 1_000}\n",
            false,
        );
        let secret = &loaded.secrets[&("default".to_string(), "s".to_string())];
        assert_eq!(secret.data["a"], b"yes");
        assert_eq!(secret.data["c"], b"0755");
        assert_eq!(secret.data["d"], b"1_000");
    }

    #[test]
    fn bad_secret_data_names_the_field() {
        let loaded = load_str(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {api-secret: '%%%not base64'}\n",
            false,
        );
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(
            loaded.errors[0].to_string().contains("default/s: data"),
            "{}",
            loaded.errors[0]
        );
    }

    #[test]
    fn a_secret_defined_twice_is_refused() {
        let doc =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {api-secret: x}\n";
        let loaded = load_str(&format!("{doc}---\n{doc}"), false);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert_eq!(
            loaded.errors[0].to_string(),
            "agents.yaml (document 2) default/s: metadata.name: Secret default/s is already defined in agents.yaml (document 1)"
        );
    }

    #[test]
    fn directories_are_read_recursively_in_order_skipping_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let doc = |id: &str| {
            format!("apiVersion: {API_VERSION}\nkind: AgentDynamics\nmetadata: {{name: {}}}\nspec: {{agentId: {id}}}\n", id.to_lowercase())
        };
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("b/c/z.yml"), doc("Z1")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), doc("A1")).unwrap();
        std::fs::write(dir.path().join("b/m.json"), r#"{"apiVersion":"dynamics.bithuman.ai/v1alpha1","kind":"AgentDynamics","metadata":{"name":"m1"},"spec":{"agentId":"M1"}}"#).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a manifest").unwrap();
        std::fs::write(dir.path().join(".git/x.yaml"), doc("X1")).unwrap();
        let loaded = load(&[dir.path().to_path_buf()]).unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let names: Vec<_> = loaded.objects.iter().map(|m| m.name.as_str()).collect();
        // Sorted by path: b/c/z.yml comes before b/m.json.
        assert_eq!(names, ["a1", "z1", "m1"]);
    }
}
