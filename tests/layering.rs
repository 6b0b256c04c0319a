//! The layering is a rule the build keeps: the reconcile core and the resource types decide from
//! their inputs alone. They may not reach for the network, the Kubernetes client, the runtime or
//! the clock; the executor, the controller and the file mode do that and pass results in.

use std::path::Path;

/// What a pure module may not mention, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio::", "the async runtime (I/O, timers)"),
    ("reqwest", "HTTP"),
    ("kube::Api", "the Kubernetes client"),
    ("kube::Client", "the Kubernetes client"),
    ("Timestamp::now", "the clock (take `now` as an input)"),
    ("SystemTime::now", "the clock (take `now` as an input)"),
    ("Instant::now", "the clock (take `now` as an input)"),
    ("std::fs", "the file system"),
    ("std::net", "the network"),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_reconcile_core_and_resource_types_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for pure in ["reconcile", "resource"] {
        rust_files(&root.join(pure), &mut files);
    }
    assert!(files.len() >= 10, "found the pure modules: {files:?}");
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (line_no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (needle, what) in FORBIDDEN {
                if code.contains(needle) {
                    violations.push(format!(
                        "{}:{}: uses {what} ({needle})",
                        file.strip_prefix(&root).unwrap().display(),
                        line_no + 1
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_library_forbids_unsafe_code() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    assert!(lib.contains("#![forbid(unsafe_code)]"));
}
