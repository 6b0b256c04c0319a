//! The benchmark's peer: crossplane-contrib/provider-http, built by benches/peer/build.sh and
//! driven with the Request templates of benches/peer/ (see benches/peer/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Api;
use serde_json::json;

use super::oracle::Expected;

const PEER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer");
const PROVIDER_CONFIG: &str = include_str!("../peer/providerconfig.yaml");
const PLAIN: &str = include_str!("../peer/request-plain.yaml");
const BEST: &str = include_str!("../peer/request-best.yaml");

/// Which of the two mappings of benches/peer/ drives provider-http.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mapping {
    /// Out of the box (request-plain.yaml): one Request; GET and PUT on every poll.
    Plain,
    /// Best effort (request-best.yaml): a Request that never PUTs, plus a DisposableRequest
    /// that PUTs the dynamics block once.
    Best,
}

impl Mapping {
    pub fn name(self) -> &'static str {
        match self {
            Mapping::Plain => "plain",
            Mapping::Best => "best",
        }
    }

    /// Kubernetes objects per benchmark object.
    pub fn objects_per_object(self) -> usize {
        match self {
            Mapping::Plain => 1,
            Mapping::Best => 2,
        }
    }
}

/// The built provider and its CRDs.
pub struct Built {
    pub bin: PathBuf,
    pub crds: PathBuf,
    pub version: String,
}

/// Runs benches/peer/build.sh (a no-op taking seconds when its stamp matches).
pub fn build(target_dir: &Path) -> anyhow::Result<Built> {
    eprintln!("bench: building the peer (benches/peer/build.sh; a cold build takes about 4 minutes on 2 cores, later runs seconds)");
    let status = Command::new("bash")
        .arg(Path::new(PEER_DIR).join("build.sh"))
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .context("running benches/peer/build.sh")?;
    if !status.success() {
        bail!("benches/peer/build.sh failed ({status})");
    }
    let tools = target_dir.join("tools");
    Ok(Built {
        bin: tools.join("bin/provider-http"),
        crds: tools.join("provider-http-crds"),
        version: std::fs::read_to_string(tools.join("provider-http.version"))
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

/// provider-http serves its metrics on a fixed :8080 and exits when it cannot bind it.
pub fn port_8080_free() -> bool {
    std::net::TcpListener::bind("0.0.0.0:8080").is_ok()
}

/// The namespaced CRDs the benchmark waits for after applying the module's package/crds/.
pub const CRD_NAMES: [&str; 3] = [
    "requests.http.m.crossplane.io",
    "disposablerequests.http.m.crossplane.io",
    "providerconfigs.http.m.crossplane.io",
];

fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("http.m.crossplane.io", "v1alpha2", kind),
        plural,
    )
}

pub fn requests(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, ns, &api_resource("Request", "requests"))
}

pub fn disposable_requests(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        ns,
        &api_resource("DisposableRequest", "disposablerequests"),
    )
}

/// Fills `${NAME}`-style placeholders.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}

/// The objects of a multi-document YAML text; empty documents are skipped.
fn documents(yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    Ok(serde_saphyr::from_multiple(yaml)?)
}

pub fn provider_config(ns: &str) -> anyhow::Result<DynamicObject> {
    documents(&render(PROVIDER_CONFIG, &[("NAMESPACE", ns.to_string())]))?
        .pop()
        .context("providerconfig.yaml is empty")
}

pub struct ObjectVars {
    pub name: String,
    pub namespace: String,
    pub api_url: String,
    pub secret_name: String,
}

/// The Request (and for `best` the DisposableRequest) standing for one AgentDynamics.
pub fn objects(
    mapping: Mapping,
    v: &ObjectVars,
    e: &Expected,
) -> anyhow::Result<Vec<DynamicObject>> {
    let template = match mapping {
        Mapping::Plain => PLAIN,
        Mapping::Best => BEST,
    };
    documents(&render(template, &vars(v, e)))
}

fn vars(v: &ObjectVars, e: &Expected) -> Vec<(&'static str, String)> {
    vec![
        ("NAME", v.name.clone()),
        ("NAMESPACE", v.namespace.clone()),
        ("API_URL", v.api_url.clone()),
        ("SECRET_NAME", v.secret_name.clone()),
        ("AGENT_ID", e.agent_id.clone()),
        ("IMAGE_URL", e.image_url.clone()),
        ("DURATION", e.duration.to_string()),
        ("MODEL_PATH", e.model_path.clone()),
        ("MODEL_HASH", e.model_hash.clone()),
    ]
}

pub async fn create(
    client: &kube::Client,
    ns: &str,
    obj: &DynamicObject,
) -> Result<(), kube::Error> {
    let api = match obj.types.as_ref().map(|t| t.kind.as_str()) {
        Some("DisposableRequest") => disposable_requests(client.clone(), ns),
        Some("ProviderConfig") => Api::namespaced_with(
            client.clone(),
            ns,
            &api_resource("ProviderConfig", "providerconfigs"),
        ),
        _ => requests(client.clone(), ns),
    };
    api.create(&PostParams::default(), obj).await.map(|_| ())
}

/// A dynamics edit (a new `expected.model_hash`) as the peer's user makes it. Plain: merge-patch
/// the Request's payload body. Best: a DisposableRequest's body is immutable (and one that
/// succeeded is never sent again), so the user creates a new one, here `<object>-dynamics-<k>`.
pub async fn edit_dynamics(
    client: &kube::Client,
    mapping: Mapping,
    v: &ObjectVars,
    e: &Expected,
    k: usize,
) -> anyhow::Result<()> {
    let objs = objects(mapping, v, e)?;
    let pick = |kind: &str| {
        objs.iter()
            .find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .cloned()
            .with_context(|| format!("no {kind} in the template"))
    };
    match mapping {
        Mapping::Plain => {
            let o = pick("Request")?;
            let name = o.metadata.name.clone().unwrap_or_default();
            let body = o.data["spec"]["forProvider"]["payload"]["body"].clone();
            requests(client.clone(), &v.namespace)
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"forProvider": {"payload": {"body": body}}}})),
                )
                .await
                .with_context(|| format!("patching {name}"))?;
        }
        Mapping::Best => {
            let mut o = pick("DisposableRequest")?;
            let name = format!("{}-{k}", o.metadata.name.clone().unwrap_or_default());
            o.metadata.name = Some(name.clone());
            create(client, &v.namespace, &o)
                .await
                .with_context(|| format!("creating {name}"))?;
        }
    }
    Ok(())
}
