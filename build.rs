//! Embeds the git commit in `dynamics-operator --version` (DYNAMICS_GIT_COMMIT), cheaply: the
//! script re-runs only when HEAD or the branch it points to moves, never on source edits.
//! Outside git (a source tarball, a Docker build context without .git) it is "unknown", unless
//! DYNAMICS_GIT_COMMIT is set in the environment (what a release build passes in).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DYNAMICS_GIT_COMMIT");
    let commit = match std::env::var("DYNAMICS_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // A worktree has its own HEAD (--git-dir) but shares refs (--git-common-dir).
            if let (Some(git_dir), Some(common)) = (
                git(&["rev-parse", "--path-format=absolute", "--git-dir"]),
                git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
            ) {
                println!("cargo:rerun-if-changed={git_dir}/HEAD");
                if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    let path = PathBuf::from(&common).join(reference);
                    if path.exists() {
                        println!("cargo:rerun-if-changed={}", path.display());
                    }
                }
                // Watched only where it exists: cargo takes a missing path as changed, and
                // would rebuild the crate on every command.
                let packed = PathBuf::from(&common).join("packed-refs");
                if packed.exists() {
                    println!("cargo:rerun-if-changed={}", packed.display());
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=DYNAMICS_GIT_COMMIT={commit}");
}
