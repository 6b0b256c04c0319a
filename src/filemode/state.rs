//! The state file: what the status subresource and metadata are for the controller, kept in one
//! JSON file for file mode. Per object (`namespace/name`): a uid generated once, the agent, a
//! generation that counts spec changes, the last spec seen and the status.
//!
//! Every save appends the object's record as one line to `FILE.journal` and makes it durable
//! (fsync) before it returns, so the crash-safety marker written before a generate call is on
//! disk before the call is sent, and the next `apply` resumes instead of paying for a second
//! generation. A save costs the same at 5 or 5,000 objects. The journal is folded into `FILE`
//! (temporary file, fsync, rename, fsync of the directory) when `apply` opens the state, when it
//! grows past a few records per object, and when `apply` ends; readers replay it over `FILE`, so
//! a killed `apply` loses nothing it saved, and a line cut short by the kill is ignored. One
//! `apply` at a time holds `FILE.lock`, so two runs cannot race on the same objects.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::reconcile::desired::{inputs_hash, normalized_inputs};
use crate::resource::{
    AgentDynamicsSpec, AgentDynamicsStatus, DynamicsLedgerSpec, LedgerHolder, LedgerPurchase,
    LedgerSpend,
};

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
    /// Credits this object spent in the current hour, day and month (the cluster's ledger keeps
    /// them per agent): what budgets count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spend: Vec<LedgerSpend>,
    /// This object's purchases as the ledger records them (key, inputs, time, calls), the last
    /// `reconcile::ledger::PURCHASES_KEPT`: what `spend` reports. States of earlier releases
    /// have none; their purchases are derived from the status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purchases: Vec<LedgerPurchase>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateData {
    pub version: u32,
    #[serde(default)]
    pub objects: BTreeMap<String, ObjectState>,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct JournalLine {
    key: String,
    object: ObjectState,
}

/// The journal is folded into the state file once it holds this many lines per object (and at
/// least `JOURNAL_MIN_LINES`), so replaying it stays cheap and folding stays rare.
const JOURNAL_LINES_PER_OBJECT: usize = 4;
const JOURNAL_MIN_LINES: usize = 1024;

/// The state, in memory and (unless ephemeral) on disk.
#[derive(Debug)]
pub struct StateStore {
    path: Option<PathBuf>,
    data: StateData,
    /// Open for appending while `apply` holds the lock.
    journal: Option<File>,
    journal_lines: usize,
    /// Held for the life of the store by `apply`; released when dropped.
    _lock: Option<File>,
}

impl StateStore {
    /// Reads the state for `plan`: no lock, never written.
    pub fn read_only(path: &Path) -> anyhow::Result<Self> {
        Ok(StateStore {
            path: None,
            data: read(path)?,
            journal: None,
            journal_lines: 0,
            _lock: None,
        })
    }

    /// Opens the state for `apply`: takes `FILE.lock` (fails at once if another apply holds it).
    /// Everything is done on the real path, so two applies that name one state file by two
    /// paths (a symlink, `./x` and `x`) take one lock, and a write never replaces a symlink.
    pub fn open_locked(path: &Path) -> anyhow::Result<Self> {
        let path = &real_path(path)?;
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
        let mut store = StateStore {
            path: Some(path.to_path_buf()),
            data: read(path)?,
            journal: None,
            journal_lines: 0,
            _lock: Some(lock),
        };
        // Start from one file: what an earlier run left in the journal is folded in.
        let leftover = std::fs::metadata(journal_path(path)).is_ok_and(|m| m.len() > 0);
        if leftover {
            store.compact()?;
        }
        Ok(store)
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
            journal: None,
            journal_lines: 0,
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

    /// The state as a purchase ledger for one agent: every record that names the agent counts,
    /// whichever folder or run applied it. The record that has bought (or adopted) holds the
    /// agent (`me` when it is one of them); the purchases are what each recorded.
    pub fn agent_record(&self, agent_id: &str, me: &str) -> Option<DynamicsLedgerSpec> {
        let mut record: Option<DynamicsLedgerSpec> = None;
        for (key, object) in self
            .data
            .objects
            .iter()
            .filter(|(_, o)| o.agent_id == agent_id)
        {
            let status = &object.status;
            let pending = status.pending_generation.as_ref().map(|p| &p.inputs_hash);
            let keys: Vec<&String> = status.generate_hash.iter().chain(pending).collect();
            if keys.is_empty() && status.generations == 0 && object.purchases.is_empty() {
                continue;
            }
            let record = record.get_or_insert_with(|| DynamicsLedgerSpec {
                agent_id: agent_id.to_string(),
                ..Default::default()
            });
            if record.holder.is_none() || key == me {
                record.holder = Some(LedgerHolder {
                    object: key.clone(),
                    uid: object.uid.clone(),
                });
            }
            for stored in &object.purchases {
                if !record.purchases.iter().any(|p| p.key == stored.key) {
                    record.purchases.push(stored.clone());
                }
            }
            let current = inputs_hash(&object.spec);
            for bought in keys {
                if record.purchases.iter().any(|p| &p.key == bought) {
                    continue;
                }
                record.purchases.push(LedgerPurchase {
                    key: bought.clone(),
                    inputs: (bought == &current).then(|| normalized_inputs(&object.spec)),
                    at: status.last_generation_time.clone().unwrap_or_default(),
                    object: key.clone(),
                    uid: object.uid.clone(),
                    calls: u32::from(status.generations > 0),
                });
            }
        }
        if let Some(record) = &mut record {
            // Oldest first, as the cluster's record keeps them.
            record.purchases.sort_by(|a, b| a.at.cmp(&b.at));
            record.spend = self.agent_spend(agent_id);
        }
        record
    }

    /// What every object naming the agent spent, summed per period, namespace and account.
    fn agent_spend(&self, agent_id: &str) -> Vec<LedgerSpend> {
        let mut sum: Vec<LedgerSpend> = Vec::new();
        let spent = self
            .data
            .objects
            .values()
            .filter(|o| o.agent_id == agent_id)
            .flat_map(|o| &o.spend);
        for s in spent {
            match sum.iter_mut().find(|t| same_tally(t, s)) {
                Some(t) => t.credits = t.credits.saturating_add(s.credits),
                None => sum.push(s.clone()),
            }
        }
        sum
    }

    /// Record what a ledger write says of `key`: its own purchases, and what the write changes
    /// in its agent's spend (the state keeps both per object; the ledger hands them over per
    /// agent).
    pub fn record_ledger(
        &mut self,
        key: &str,
        agent_id: &str,
        record: &DynamicsLedgerSpec,
    ) -> anyhow::Result<()> {
        let spend = &record.spend;
        let before = self.agent_spend(agent_id);
        let Some(mut object) = self.data.objects.get(key).cloned() else {
            anyhow::bail!("{key} is missing from the state");
        };
        object.purchases = record
            .purchases
            .iter()
            .filter(|p| p.uid == object.uid)
            .cloned()
            .collect();
        let periods: Vec<&String> = spend.iter().map(|s| &s.period).collect();
        // Tallies of periods that are over are dropped, as in the cluster's ledger.
        object.spend.retain(|s| periods.contains(&&s.period));
        for s in spend {
            let had = before
                .iter()
                .find(|t| same_tally(t, s))
                .map_or(0, |t| t.credits);
            let delta = s.credits as i64 - had as i64;
            if delta == 0 {
                continue;
            }
            match object.spend.iter_mut().find(|t| same_tally(t, s)) {
                Some(t) => t.credits = t.credits.saturating_add_signed(delta),
                None if delta > 0 => object.spend.push(LedgerSpend {
                    credits: delta as u64,
                    ..s.clone()
                }),
                None => {}
            }
        }
        // A tally the write no longer has (a refusal took it back to nothing).
        for t in &mut object.spend {
            if !spend.iter().any(|s| same_tally(s, t)) && before.iter().any(|b| same_tally(b, t)) {
                t.credits = 0;
            }
        }
        object.spend.retain(|t| t.credits > 0);
        if object == self.data.objects[key] {
            return Ok(());
        }
        self.put(key, object)
    }

    /// Every agent with a record in the state, each once.
    pub fn agents(&self) -> std::collections::BTreeSet<&str> {
        self.data
            .objects
            .values()
            .map(|o| o.agent_id.as_str())
            .collect()
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
                spend: Vec::new(),
                purchases: Vec::new(),
            },
        }
    }

    /// Stores a record; unless ephemeral, it is on disk when this returns.
    pub fn put(&mut self, key: &str, object: ObjectState) -> anyhow::Result<()> {
        self.put_all(vec![(key.to_string(), object)])
    }

    /// Stores several records with one disk sync.
    pub fn put_all(&mut self, records: Vec<(String, ObjectState)>) -> anyhow::Result<()> {
        let changed: Vec<(String, ObjectState)> = records
            .into_iter()
            .filter(|(key, object)| self.data.objects.get(key) != Some(object))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if let Some(path) = self.path.clone() {
            self.append(&path, &changed).with_context(|| {
                format!(
                    "writing the state journal {}",
                    journal_path(&path).display()
                )
            })?;
        }
        for (key, object) in changed {
            self.data.objects.insert(key, object);
        }
        let limit = (self.data.objects.len() * JOURNAL_LINES_PER_OBJECT).max(JOURNAL_MIN_LINES);
        if self.journal_lines >= limit {
            self.compact()?;
        }
        Ok(())
    }

    fn append(&mut self, path: &Path, records: &[(String, ObjectState)]) -> anyhow::Result<()> {
        let mut text = String::new();
        for (key, object) in records {
            let line = JournalLine {
                key: key.clone(),
                object: object.clone(),
            };
            text.push_str(&serde_json::to_string(&line).context("encoding the state")?);
            text.push('\n');
        }
        let journal = match &mut self.journal {
            Some(file) => file,
            None => self.journal.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(journal_path(path))?,
            ),
        };
        journal.write_all(text.as_bytes())?;
        journal.sync_data()?;
        self.journal_lines += records.len();
        Ok(())
    }

    /// Fold the journal into the state file, then empty the journal. A crash in between only
    /// replays records the file already holds.
    pub fn compact(&mut self) -> anyhow::Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if self.journal_lines == 0 {
            // Nothing appended since the file was last written.
            let leftover = std::fs::metadata(journal_path(&path)).is_ok_and(|m| m.len() > 0);
            if !leftover {
                return Ok(());
            }
        }
        let mut text = serde_json::to_string_pretty(&self.data).context("encoding the state")?;
        text.push('\n');
        write_atomically(&path, text.as_bytes())
            .with_context(|| format!("writing the state file {}", path.display()))?;
        let journal = journal_path(&path);
        match OpenOptions::new().write(true).truncate(true).open(&journal) {
            Ok(file) => file.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("emptying {}", journal.display()));
            }
        }
        self.journal = None;
        self.journal_lines = 0;
        Ok(())
    }
}

fn read(path: &Path) -> anyhow::Result<StateData> {
    let mut data = match std::fs::read_to_string(path) {
        Ok(text) => {
            let data: StateData = serde_json::from_str(&text).with_context(|| {
                format!("the state file {} is not readable; fix or move it (it holds the status of every applied object)", path.display())
            })?;
            anyhow::ensure!(
                data.version <= FORMAT_VERSION,
                "the state file {} was written by a newer dynamics-operator (format {})",
                path.display(),
                data.version
            );
            data
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateData::default(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the state file {}", path.display()))
        }
    };
    data.version = FORMAT_VERSION;
    replay(&journal_path(path), &mut data)?;
    Ok(data)
}

/// Apply the journal's records over the state file's, in order. A last line without its
/// newline was cut short by a kill before its sync returned (nothing was sent on its strength):
/// it is ignored. Any other unreadable line is an error, never a silent loss.
fn replay(journal: &Path, data: &mut StateData) -> anyhow::Result<()> {
    let file = match File::open(journal) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    for number in 1.. {
        line.clear();
        if reader
            .read_line(&mut line)
            .with_context(|| format!("reading {}", journal.display()))?
            == 0
        {
            break;
        }
        if !line.ends_with('\n') {
            break;
        }
        let record: JournalLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "line {number} of the state journal {} is not readable; fix or move it (it holds status saved since the state file was last written)",
                journal.display()
            )
        })?;
        data.objects.insert(record.key, record.object);
    }
    Ok(())
}

/// The state file's real path: symlinks resolved, whether or not the file exists yet.
fn real_path(path: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Ok(real);
    }
    // A symlink to a state file not written yet: its target is the state file.
    let mut path = path.to_path_buf();
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&path) else {
            break;
        };
        path = match path.parent() {
            Some(dir) => dir.join(target),
            None => target,
        };
    }
    let path = path.as_path();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("--state {} names no file", path.display()))?;
    let dir = std::fs::canonicalize(parent).with_context(|| {
        format!(
            "the folder of the state file {} does not exist",
            path.display()
        )
    })?;
    Ok(dir.join(name))
}

fn journal_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".journal");
    path.with_file_name(name)
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

fn same_tally(a: &LedgerSpend, b: &LedgerSpend) -> bool {
    a.period == b.period && a.namespace == b.namespace && a.account == b.account
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
    fn saves_go_to_the_journal_and_survive_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = jiff::Timestamp::now();
        let mut store = StateStore::open_locked(&path).unwrap();
        let mut record = store.admit("default/a", &spec(5), now);
        store.put("default/a", record.clone()).unwrap();
        record.status.generations = 1;
        store.put("default/a", record.clone()).unwrap();
        let journal = std::fs::read_to_string(journal_path(&path)).unwrap();
        assert_eq!(journal.lines().count(), 2, "one line per save");
        // Killed here: the state file is older, the journal is not.
        std::mem::forget(store);
        let reread = StateStore::read_only(&path).unwrap();
        assert_eq!(reread.get("default/a").unwrap().status.generations, 1);
    }

    /// A state with one object saved (in the journal) by an apply that has ended.
    fn one_object_applied() -> (tempfile::TempDir, ObjectState) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open_locked(&dir.path().join("state.json")).unwrap();
        let record = store.admit("default/a", &spec(5), jiff::Timestamp::now());
        store.put("default/a", record.clone()).unwrap();
        (dir, record)
    }

    #[test]
    fn a_line_cut_short_by_a_kill_is_ignored_and_a_broken_one_is_an_error() {
        let (dir, record) = one_object_applied();
        let path = dir.path().join("state.json");
        let mut journal = OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .unwrap();
        journal.write_all(b"{\"key\":\"default/b\",\"obj").unwrap();
        assert_eq!(
            StateStore::read_only(&path).unwrap().get("default/a"),
            Some(&record)
        );
        journal.write_all(b"\n").unwrap();
        let err = format!("{:#}", StateStore::read_only(&path).unwrap_err());
        assert!(err.contains("line 2 of the state journal"), "{err}");
    }

    #[test]
    fn opening_for_apply_folds_the_journal_into_the_file() {
        let (dir, record) = one_object_applied();
        let path = dir.path().join("state.json");
        let store = StateStore::open_locked(&path).unwrap();
        assert_eq!(std::fs::read_to_string(journal_path(&path)).unwrap(), "");
        let file: StateData =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(file.objects.get("default/a"), Some(&record));
        assert_eq!(store.get("default/a"), Some(&record));
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
