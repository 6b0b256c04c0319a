//! The state file: what the status subresource and metadata are for the controller, kept in one
//! JSON file for file mode. Per object (`namespace/name`): a uid generated once, the agent, a
//! generation that counts spec changes, the last spec seen and the status.
//!
//! It is rewritten atomically (temporary file, fsync, rename, fsync of the directory) after every
//! status save, so a killed `apply` leaves either the previous or the new state, never half of
//! one: the crash-safety marker written before a generate call is on disk before the call is
//! sent, and the next `apply` resumes instead of paying for a second generation. One `apply` at a
//! time holds `FILE.lock`, so two runs cannot race on the same objects.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::resource::{AgentDynamicsSpec, AgentDynamicsStatus};

/// Default `--state`: in the current directory, like other tools' local state files, so that
/// running from the repository root keeps one state per checkout.
pub const DEFAULT_STATE_FILE: &str = ".dynamics-state.json";
const FORMAT_VERSION: u32 = 1;

/// One object's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectState {
    pub uid: String,
    pub agent_id: String,
    /// Starts at 1 and moves when the spec changes, like metadata.generation.
    pub generation: i64,
    /// When the object was first applied (RFC 3339).
    pub creation_timestamp: String,
    pub spec: AgentDynamicsSpec,
    #[serde(default)]
    pub status: AgentDynamicsStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateData {
    pub version: u32,
    #[serde(default)]
    pub objects: BTreeMap<String, ObjectState>,
}

/// The state, in memory and (unless ephemeral) on disk.
#[derive(Debug)]
pub struct StateStore {
    path: Option<PathBuf>,
    data: StateData,
    /// Held for the life of the store by `apply`; released when dropped.
    _lock: Option<File>,
}

impl StateStore {
    /// Reads the state for `plan`: no lock, never written.
    pub fn read_only(path: &Path) -> anyhow::Result<Self> {
        Ok(StateStore {
            path: None,
            data: read(path)?,
            _lock: None,
        })
    }

    /// Opens the state for `apply`: takes `FILE.lock` (fails at once if another apply holds it).
    pub fn open_locked(path: &Path) -> anyhow::Result<Self> {
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening the lock file {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another apply is using the state file {} (it holds {}); wait for it to finish or use another --state",
                path.display(),
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()))
            }
        }
        Ok(StateStore {
            path: Some(path.to_path_buf()),
            data: read(path)?,
            _lock: Some(lock),
        })
    }

    /// State kept in memory only (`--simulator`: the simulated API forgets everything when the
    /// command ends, so its outcome must never be mixed into a real state file).
    pub fn ephemeral() -> Self {
        StateStore {
            path: None,
            data: StateData {
                version: FORMAT_VERSION,
                ..Default::default()
            },
            _lock: None,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<&ObjectState> {
        self.data.objects.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.data.objects.keys()
    }

    /// The record for a manifest's spec, created or advanced (not saved): a new object gets a uid
    /// and generation 1; a changed spec moves the generation by one.
    pub fn admit(&self, key: &str, spec: &AgentDynamicsSpec, now: jiff::Timestamp) -> ObjectState {
        match self.data.objects.get(key) {
            Some(existing) => {
                let mut next = existing.clone();
                if &existing.spec != spec {
                    next.generation += 1;
                    next.spec = spec.clone();
                    next.agent_id = spec.agent_id.clone();
                }
                next
            }
            None => ObjectState {
                uid: new_uid(),
                agent_id: spec.agent_id.clone(),
                generation: 1,
                creation_timestamp: jiff::Timestamp::from_second(now.as_second())
                    .unwrap_or(now)
                    .to_string(),
                spec: spec.clone(),
                status: AgentDynamicsStatus::default(),
            },
        }
    }

    /// Stores a record and writes the file (atomically) unless ephemeral.
    pub fn put(&mut self, key: &str, object: ObjectState) -> anyhow::Result<()> {
        if self.data.objects.get(key) == Some(&object) {
            return Ok(());
        }
        self.data.objects.insert(key.to_string(), object);
        self.flush()
    }

    fn flush(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = serde_json::to_string_pretty(&self.data).context("encoding the state")?;
        text.push('\n');
        write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing the state file {}", path.display()))
    }
}

fn read(path: &Path) -> anyhow::Result<StateData> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StateData {
                version: FORMAT_VERSION,
                ..Default::default()
            })
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the state file {}", path.display()))
        }
    };
    let data: StateData = serde_json::from_str(&text).with_context(|| {
        format!("the state file {} is not readable; fix or move it (it holds the status of every applied object)", path.display())
    })?;
    anyhow::ensure!(
        data.version <= FORMAT_VERSION,
        "the state file {} was written by a newer dynamics-operator (format {})",
        path.display(),
        data.version
    );
    Ok(StateData {
        version: FORMAT_VERSION,
        ..data
    })
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

/// Write to a temporary file beside the target, make it durable, then rename over the target:
/// readers (and a run after a crash) see the old or the new content, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself must survive a power cut too.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A random RFC 4122 version-4 UUID, the shape Kubernetes uses for metadata.uid.
fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(duration: u32) -> AgentDynamicsSpec {
        AgentDynamicsSpec {
            agent_id: "A1".into(),
            duration: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn admit_keeps_uid_and_moves_generation_only_on_spec_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = jiff::Timestamp::now();
        let mut store = StateStore::open_locked(&path).unwrap();
        let first = store.admit("default/a", &spec(5), now);
        assert_eq!(first.generation, 1);
        assert_eq!(first.uid.len(), 36);
        store.put("default/a", first.clone()).unwrap();

        let same = store.admit("default/a", &spec(5), now);
        assert_eq!(same, first);
        let edited = store.admit("default/a", &spec(3), now);
        assert_eq!((edited.generation, &edited.uid), (2, &first.uid));
        drop(store);

        let reread = StateStore::read_only(&path).unwrap();
        assert_eq!(reread.get("default/a"), Some(&first));
        assert!(!dir
            .path()
            .join(format!("state.json.tmp-{}", std::process::id()))
            .exists());
    }

    #[test]
    fn a_second_apply_on_the_same_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let held = StateStore::open_locked(&path).unwrap();
        let err = StateStore::open_locked(&path).unwrap_err().to_string();
        assert!(err.contains("another apply"), "{err}");
        drop(held);
        StateStore::open_locked(&path).unwrap();
    }

    #[test]
    fn unreadable_state_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        // Starting over would forget generations that were paid for.
        assert!(StateStore::read_only(&path).is_err());
    }
}
