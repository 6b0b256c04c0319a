//! docs/design.md says where each numbered rule lives and which tests show it. This keeps those
//! names true: every function and file the tables name exists.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The rows of the "Where each rule lives" tables.
fn table_rows(design: &str) -> Vec<&str> {
    design
        .lines()
        .filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit()))
        .collect()
}

/// Backticked words of a row that look like a function (snake_case) or a path.
fn names(row: &str) -> Vec<String> {
    row.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_function_and_file_the_rule_tables_name_exists() {
    let design = std::fs::read_to_string(Path::new(ROOT).join("docs/design.md")).unwrap();
    let rows = table_rows(&design);
    assert!(rows.len() >= 23, "both tables found: {} rows", rows.len());
    let mut files = Vec::new();
    for dir in ["src", "crates", "tests"] {
        rust_files(&Path::new(ROOT).join(dir), &mut files);
    }
    let source: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mut missing = Vec::new();
    for row in rows {
        for name in names(row) {
            let is_path = name.contains('/') || name.ends_with(".rs");
            let found = if is_path {
                // A path from the root, or a file under crates/core/src/reconcile/.
                let candidates = [
                    Path::new(ROOT).join(&name),
                    Path::new(ROOT)
                        .join("crates/core/src/reconcile")
                        .join(&name),
                ];
                candidates.iter().any(|p| p.exists())
            } else if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') && name.contains('_')
            {
                source.contains(&format!("fn {name}("))
                    || source.contains(&format!("fn {name}<"))
                    || source.contains(&format!("mod {name}"))
            } else {
                true // a type, a constant or a module named in prose
            };
            if !found {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/design.md names what does not exist: {missing:?}"
    );
}
