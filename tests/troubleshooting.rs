//! docs/troubleshooting.md is generated from `reasons::TABLE`, and every reason the code can write
//! is in that table: a reason cannot exist without its page entry.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dynamics_operator::reconcile::reasons::{self, troubleshooting_markdown, TABLE};

/// Capitalised one-word string literals in the code that are not reasons, and what they are.
const NOT_REASONS: &[(&str, &str)] = &[
    ("Reconciling", "condition type"),
    ("Stalled", "condition type"),
    ("True", "condition status"),
    ("False", "condition status"),
    ("Unknown", "condition status, generate outcome"),
    ("Normal", "Event type"),
    ("Warning", "Event type"),
    ("AgentDynamics", "kind"),
    ("AgentDynamicsList", "kind"),
    ("List", "kind"),
    ("Secret", "kind"),
    ("ConfigMap", "kind"),
    ("Agent", "printer column"),
    ("Model", "printer column"),
    ("Remote", "printer column"),
    ("Reason", "printer column"),
    ("Message", "printer column"),
    ("Generations", "printer column"),
    ("Age", "printer column"),
    ("Timing", "help heading"),
    ("Credits", "help heading"),
    ("Observability", "help heading"),
    ("InProgress", "kstatus status in the file mode's output"),
    ("NotStarted", "kstatus status in the file mode's output"),
    (
        "NotGeneratedYet",
        "file mode plan: why a generation is planned",
    ),
    (
        "GenerateInputsChanged",
        "file mode plan: why a generation is planned",
    ),
    ("DynamicsChanged", "file mode plan: why a PUT is planned"),
    (
        "ResolvedRetry",
        "file mode plan: why a generation is planned",
    ),
    ("DynamicsLedger", "kind"),
    ("Holder", "printer column"),
    ("Unexpected", "a Debug name"),
    ("SimHandle", "a Debug name"),
    ("SecretDoc", "a Debug name"),
    ("DynamicsClient", "a Debug name"),
    (
        "WriteConflict",
        "a controller error category (errors_total, logs)",
    ),
    (
        "StatusStore",
        "a controller error category (errors_total, logs)",
    ),
    (
        "CleanupRefused",
        "a controller error category (errors_total, logs)",
    ),
    (
        "KubernetesApi",
        "a controller error category (errors_total, logs)",
    ),
    (
        "CleanupWaiting",
        "a controller error category (errors_total, logs)",
    ),
    (
        "Finalizer",
        "a controller error category (errors_total, logs)",
    ),
    ("ConnKiller", "a Debug name"),
    ("AgentDynamicsStatus", "a schema name"),
    ("Reconcile", "a log or span name"),
    ("Event", "a kind of reason in the page"),
    ("Events", "a heading of the page"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code a build ships: test modules (a file's `#[cfg(test)]` tail, and the files that only
/// tests include) are left out, since tests may spell made-up reasons.
fn shipped_source() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The operator's crate and its core (the simulator writes no condition).
    for dir in ["src", "crates/core/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name != "tests.rs" && !name.ends_with("_tests.rs") && !name.ends_with("_properties.rs")
        })
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            let shipped = match text.find("#[cfg(test)]\nmod ") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            (p, shipped)
        })
        .collect()
}

/// Every string literal that is one capitalised word (`"SecretNotFound"`, `"Timeout"`): what a
/// reason looks like wherever it is written.
fn word_literals(text: &str) -> Vec<&str> {
    let quotes: Vec<usize> = text.match_indices('"').map(|(i, _)| i).collect();
    quotes
        .windows(2)
        .map(|w| &text[w[0] + 1..w[1]])
        .filter(|s| {
            s.len() > 1
                && s.starts_with(|c: char| c.is_ascii_uppercase())
                && s.chars().all(|c| c.is_ascii_alphabetic())
                && s.chars().any(|c| c.is_ascii_lowercase())
        })
        .collect()
}

#[test]
fn the_page_is_generated_from_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/troubleshooting.md");
    let committed = std::fs::read_to_string(path).expect("docs/troubleshooting.md exists");
    assert!(
        committed == troubleshooting_markdown(),
        "docs/troubleshooting.md differs from crates/core/src/reconcile/reasons.rs: run `cargo run -- reasons > docs/troubleshooting.md` and commit it"
    );
}

#[test]
fn every_reason_the_code_writes_is_in_the_table() {
    // Reasons, and the alert names the page also explains.
    let listed: BTreeSet<&str> = TABLE
        .iter()
        .map(|r| r.name)
        .chain(reasons::ALERTS.iter().map(|a| a.name))
        .collect();
    let not_reasons: BTreeSet<&str> = NOT_REASONS.iter().map(|(w, _)| *w).collect();
    let overlap: Vec<_> = listed.intersection(&not_reasons).collect();
    assert!(overlap.is_empty(), "both a reason and not: {overlap:?}");
    let mut missing = Vec::new();
    let mut found: BTreeSet<String> = BTreeSet::new();
    for (path, text) in shipped_source() {
        for word in word_literals(&text) {
            if listed.contains(word) {
                found.insert(word.to_string());
            } else if !not_reasons.contains(word) {
                missing.push(format!("{word} ({})", path.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "string literals that look like reasons but are not in reasons::TABLE (add an entry, or \
         list them in NOT_REASONS with what they are): {missing:?}"
    );
    // The scan sees the reasons it must: the constants, the remote errors, the Event reasons.
    for reason in [
        reasons::SECRET_NOT_FOUND,
        "AgentNotFound",
        "Timeout",
        reasons::DYNAMICS_DISABLED,
        reasons::WAITING_FOR_GENERATION_SLOT,
    ] {
        assert!(found.contains(reason), "the scan missed {reason}");
    }
}

#[test]
fn the_scan_would_catch_a_new_reason() {
    let code = r#"Blocker::Secret { reason: "SecretTooOld".into(), message: "x".into() }"#;
    assert_eq!(word_literals(code), ["SecretTooOld"]);
    assert!(reasons::lookup("SecretTooOld").is_none());
    assert!(word_literals(r#"format!("{a} is Stalled", a)"#).is_empty());
}

#[test]
fn every_section_says_what_to_do() {
    let page = troubleshooting_markdown();
    for r in TABLE {
        let section = page
            .split("\n### ")
            .find(|s| s.starts_with(&format!("{}\n", r.name)))
            .unwrap_or_else(|| panic!("no section for {}", r.name));
        assert!(
            section.contains("**Fix:**") && section.contains("**Meanwhile:**"),
            "{}",
            r.name
        );
    }
}
