//! The Go tools built by `tests/tools/build.sh` (helm, crane, promtool, kstatus, argocd-lua,
//! syft, cosign) and small helpers to run them and read what they print. A missing tool FAILS
//! the test with the command that builds it: nothing is skipped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The cargo target directory (where the harness looks for its binaries).
pub fn target_dir() -> PathBuf {
    // The harness's bin dir is <target>/controlplane/<version>/bin.
    super::controlplane::default_bin_dir()
        .ancestors()
        .nth(3)
        .expect("<target>/controlplane/<version>/bin")
        .to_path_buf()
}

/// `<target>/tools/bin/<name>`, or a panic that says how to build it.
pub fn tool(name: &str) -> PathBuf {
    let path = target_dir().join("tools/bin").join(name);
    assert!(
        path.is_file(),
        "{name} missing at {}: run tests/tools/build.sh (tests/run.sh does)",
        path.display()
    );
    path
}

/// Runs `cmd`, panics with its stderr and stdout unless it succeeds, returns its output. The
/// message names the program and its arguments, never the environment (it may hold secrets).
pub fn command_ok(cmd: &mut Command) -> Output {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Runs `program args...` and returns its output, whatever the exit status.
pub fn run<I, S>(program: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// Runs `program args...`, panics with its stderr unless it succeeds, returns stdout.
pub fn run_ok<I, S>(program: &Path, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let out = run(program, &args);
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}{}",
        program.display(),
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The documents of a multi-document YAML stream (empty ones dropped).
pub fn parse_docs(yaml: &str) -> Vec<Json> {
    serde_saphyr::from_multiple(yaml).expect("YAML documents")
}

/// The document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Json], kind: &str, name: &str) -> &'a Json {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// The harness's kubectl (`DYNAMICS_CONTROLPLANE_BIN`, else where tests/controlplane/build.sh
/// puts it), or a panic that says how to build it.
pub fn kubectl() -> PathBuf {
    let dir = std::env::var_os("DYNAMICS_CONTROLPLANE_BIN")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(super::controlplane::default_bin_dir);
    let kubectl = dir.join("kubectl");
    assert!(
        kubectl.is_file(),
        "control plane binaries missing: run tests/controlplane/build.sh (no kubectl at {})",
        kubectl.display()
    );
    kubectl
}

/// `kubectl kustomize <dir>` (the kustomize built into the pinned kubectl), as documents.
pub fn kustomize(dir: &str) -> Vec<Json> {
    parse_docs(&run_ok(
        &kubectl(),
        [
            OsStr::new("kustomize"),
            Path::new(ROOT).join(dir).as_os_str(),
        ],
    ))
}

/// Every `dynamics_operator_*` metric name in a PromQL expression.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("dynamics_operator_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
