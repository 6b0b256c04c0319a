//! What the controller keeps beside kube's object cache, fed by the same watch events, so that a
//! pass does the same small work at 10 or 10,000 objects and never writes from a stale copy:
//! - which objects name each agent (the ownership rule looks only at those, never at the cache);
//! - what of each object makes a pass worth it (spec, deletion, finalizers, the refresh
//!   annotation), so that the operator's own status writes do not wake it up again;
//! - the objects the operator's own status writes returned, until the watch delivers them. A pass
//!   that starts before the cache caught up with the previous pass's write reads the object it
//!   wrote instead of the copy its write replaced, and so does not get a 409 for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::ResourceExt;

use crate::reconcile::ownership::Claimant;
use crate::resource::{refresh_request, AgentDynamics, APPROVE, RECONCILE_REQUESTED_AT, RESOLVE};

use super::context::{key_of, reference_to};

/// Drops what no pass reads before an object is kept in memory, from the watch or from a
/// write's reply: managedFields are most of an object's size, and labels and foreign
/// annotations (kubectl's last-applied copy can be as big as the object) are never read. A
/// status replace ignores metadata, so the API server keeps them all.
pub fn trim_for_cache(obj: &mut AgentDynamics) {
    obj.metadata.managed_fields = None;
    obj.metadata.labels = None;
    if let Some(annotations) = &mut obj.metadata.annotations {
        // One refresh annotation is kept: the project's, or Flux's under the project's key, so
        // that everything reading the cached object sees either as the same request.
        if let Some(requested) = refresh_request(annotations).cloned() {
            annotations.insert(RECONCILE_REQUESTED_AT.to_string(), requested);
        }
        annotations
            .retain(|key, _| key == RECONCILE_REQUESTED_AT || key == RESOLVE || key == APPROVE);
    }
}

/// How many of an object's resourceVersions our writes are remembered to have replaced.
const SUPERSEDED_KEPT: usize = 16;

#[derive(Default)]
pub struct ObjectIndex {
    inner: Mutex<Inner>,
    /// kube's object cache, fed before this index: a write the watch already delivered there
    /// is not remembered (it would stay until the object's next pass, hours away).
    cache: Option<Store<AgentDynamics>>,
}

#[derive(Default)]
struct Inner {
    /// agentId -> (uid, the object as the ownership rule sees it). Nearly always one object
    /// per agent, so a list: a map per agent would cost four slots for one.
    agents: HashMap<String, Vec<(String, Claimant)>>,
    /// uid -> what was last seen of the object.
    seen: HashMap<String, Seen>,
    /// Objects listed since the watch (re)started, swapped in when the list is complete.
    relisting: Option<Vec<(String, Seen, Claimant)>>,
    /// The listed objects worth a pass, passed on when the list is complete: kube's cache
    /// swaps in a relist only then, and a pass scheduled for an object the cache does not hold
    /// yet is dropped (an object created while the watch was down would never get one).
    relisted_changes: Vec<ObjectRef<AgentDynamics>>,
    /// key -> what our last status write returned.
    written: HashMap<String, Written>,
    /// A first list is complete: `agents` names every object naming each agent.
    listed: bool,
}

/// One object as the index last saw it. Kept here rather than in kube's predicate filter, which
/// would keep three more strings per object.
#[derive(Clone)]
struct Seen {
    /// Its agentId, to move or drop its entry in `agents`.
    agent: String,
    /// `relevant_state` of the last version seen.
    relevant: u64,
}

struct Written {
    /// resourceVersions our writes replaced: a cached copy at one of them is stale.
    superseded: Vec<String>,
    object: Arc<AgentDynamics>,
}

/// A fingerprint of what makes a watch event worth a pass: spec (generation), deletion,
/// finalizers and the reconcile-requested-at annotation. Status writes change none of them.
fn relevant_state(obj: &AgentDynamics) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.generation.hash(&mut hasher);
    obj.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    obj.finalizers().hash(&mut hasher);
    obj.annotations()
        .get(RECONCILE_REQUESTED_AT)
        .hash(&mut hasher);
    obj.annotations().get(RESOLVE).hash(&mut hasher);
    obj.annotations().get(APPROVE).hash(&mut hasher);
    hasher.finish()
}

/// `obj` as the ownership rule sees it.
pub fn claimant(obj: &AgentDynamics) -> Claimant {
    Claimant::new(
        key_of(obj),
        obj.status.as_ref(),
        obj.creation_timestamp().map(|t| t.0),
        obj.metadata.deletion_timestamp.is_some() || !obj.spec.management_policy.is_manage(),
    )
}

impl ObjectIndex {
    /// An index beside `cache`; feed it each watch event after the cache.
    pub fn beside(cache: Store<AgentDynamics>) -> Self {
        ObjectIndex {
            inner: Mutex::default(),
            cache: Some(cache),
        }
    }

    /// Follow one watch event (call it for every event, after the cache has seen it). Returns
    /// the objects to pass: the event's object when it is new to the index or changed in what
    /// `relevant_state` covers; during a relist, none until the list is complete, then every
    /// such object listed.
    pub fn follow(&self, event: Event<AgentDynamics>) -> Vec<ObjectRef<AgentDynamics>> {
        let mut inner = self.inner.lock().expect("index lock");
        match event {
            Event::Apply(obj) => {
                let Some((uid, seen, changed)) = inner.saw(&obj) else {
                    return Vec::new();
                };
                inner.insert(uid, seen, claimant(&obj));
                if changed {
                    vec![reference_to(&obj)]
                } else {
                    Vec::new()
                }
            }
            Event::Delete(obj) => {
                inner.written.remove(&key_of(&obj));
                if let Some(uid) = obj.uid() {
                    inner.remove(&uid);
                }
                Vec::new()
            }
            Event::Init => {
                inner.relisting = Some(Vec::new());
                inner.relisted_changes.clear();
                Vec::new()
            }
            Event::InitApply(obj) => {
                // Compared with what was seen before the relist: an unchanged object is not
                // passed again just because the watch restarted.
                let Some((uid, seen, changed)) = inner.saw(&obj) else {
                    return Vec::new();
                };
                inner
                    .relisting
                    .get_or_insert_with(Vec::new)
                    .push((uid, seen, claimant(&obj)));
                if changed {
                    inner.relisted_changes.push(reference_to(&obj));
                }
                Vec::new()
            }
            Event::InitDone => {
                // Objects deleted while the watch was down are not listed: they are dropped.
                let listed = inner.relisting.take().unwrap_or_default();
                inner.agents.clear();
                inner.seen.clear();
                for (uid, seen, claimant) in listed {
                    inner.insert(uid, seen, claimant);
                }
                inner.listed = true;
                std::mem::take(&mut inner.relisted_changes)
            }
        }
    }

    /// Whether a first list is complete, so that `others_naming` knows every object.
    pub fn listed(&self) -> bool {
        self.inner.lock().expect("index lock").listed
    }

    /// The other objects that name `obj`'s agent.
    pub fn others_naming(&self, obj: &AgentDynamics) -> Vec<Claimant> {
        let inner = self.inner.lock().expect("index lock");
        let uid = obj.uid().unwrap_or_default();
        inner
            .agents
            .get(&obj.spec.agent_id)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|(other, _)| *other != uid)
                    .map(|(_, c)| c.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The newest copy of `taken` this process knows: the cache's copy now (a caller takes its
    /// copy before waiting for the object's lock, and a pass may have written meanwhile), or
    /// what its own write returned, while the cache still holds a version that write replaced.
    pub fn freshest(&self, taken: Arc<AgentDynamics>) -> Arc<AgentDynamics> {
        let cached = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(&ObjectRef::from_obj(&*taken)))
            .unwrap_or(taken);
        let mut inner = self.inner.lock().expect("index lock");
        let key = key_of(&cached);
        let Some(written) = inner.written.get(&key) else {
            return cached;
        };
        let cached_version = cached.resource_version();
        if cached_version
            .as_ref()
            .is_some_and(|v| written.superseded.contains(v))
        {
            return written.object.clone();
        }
        // The cache caught up, or someone else wrote since: the cache is the truth.
        inner.written.remove(&key);
        cached
    }

    /// A pass that started from `read` ended with the object as `written`, replacing the
    /// versions in `replaced` (`read`'s among them).
    pub fn wrote(&self, read: &AgentDynamics, replaced: Vec<String>, written: Arc<AgentDynamics>) {
        if replaced.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("index lock");
        let key = key_of(read);
        // Checked under the lock: the watch feeds the cache, then this index, so either the
        // cache holds the write already or `caught_up` will see it.
        if let Some(cache) = &self.cache {
            let cached = cache.get(&ObjectRef::from_obj(read));
            if cached.is_some_and(|c| c.resource_version() == written.resource_version()) {
                inner.written.remove(&key);
                return;
            }
        }
        let mut superseded = match inner.written.remove(&key) {
            // The pass read our earlier write: what that one replaced is still stale.
            Some(earlier) if earlier.object.resource_version() == read.resource_version() => {
                earlier.superseded
            }
            _ => Vec::new(),
        };
        superseded.extend(replaced);
        let excess = superseded.len().saturating_sub(SUPERSEDED_KEPT);
        superseded.drain(..excess);
        inner.written.insert(
            key,
            Written {
                superseded,
                object: written,
            },
        );
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.inner.lock().unwrap().written.len()
    }
}

impl Inner {
    /// An applied object: (its uid, what is kept of it, whether it changed in what makes a
    /// pass). None for an object without a uid, which the API server never sends.
    fn saw(&mut self, obj: &AgentDynamics) -> Option<(String, Seen, bool)> {
        self.caught_up(obj);
        let uid = obj.uid()?;
        let seen = Seen {
            agent: obj.spec.agent_id.clone(),
            relevant: relevant_state(obj),
        };
        let changed = self
            .seen
            .get(&uid)
            .is_none_or(|before| before.relevant != seen.relevant);
        Some((uid, seen, changed))
    }

    fn insert(&mut self, uid: String, seen: Seen, claimant: Claimant) {
        if self
            .seen
            .get(&uid)
            .is_some_and(|prev| prev.agent != seen.agent)
        {
            self.remove(&uid);
        }
        let objects = self.agents.entry(seen.agent.clone()).or_default();
        match objects.iter_mut().find(|(known, _)| *known == uid) {
            Some(entry) => entry.1 = claimant,
            None => objects.push((uid.clone(), claimant)),
        }
        self.seen.insert(uid, seen);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(seen) = self.seen.remove(uid) {
            if let Some(objects) = self.agents.get_mut(&seen.agent) {
                objects.retain(|(known, _)| known != uid);
                if objects.is_empty() {
                    self.agents.remove(&seen.agent);
                }
            }
        }
    }

    /// The watch delivered our write: the cache holds it now.
    fn caught_up(&mut self, obj: &AgentDynamics) {
        let key = key_of(obj);
        if self
            .written
            .get(&key)
            .is_some_and(|w| w.object.resource_version() == obj.resource_version())
        {
            self.written.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::AgentDynamicsSpec;

    fn obj(name: &str, agent: &str, version: &str) -> AgentDynamics {
        let mut o = AgentDynamics::new(
            name,
            AgentDynamicsSpec {
                agent_id: agent.into(),
                ..Default::default()
            },
        );
        o.metadata.namespace = Some("ns".into());
        o.metadata.uid = Some(format!("uid-{name}"));
        o.metadata.resource_version = Some(version.into());
        o
    }

    fn owners(index: &ObjectIndex, o: &AgentDynamics) -> Vec<String> {
        let mut keys: Vec<String> = index.others_naming(o).into_iter().map(|c| c.key).collect();
        keys.sort();
        keys
    }

    #[test]
    fn others_naming_an_agent_follow_the_watch() {
        let index = ObjectIndex::default();
        let (a, b, c) = (
            obj("a", "A1", "1"),
            obj("b", "A1", "2"),
            obj("c", "A2", "3"),
        );
        for o in [&a, &b, &c] {
            index.follow(Event::Apply(o.clone()));
        }
        assert_eq!(owners(&index, &a), vec!["ns/b"]);
        assert!(owners(&index, &c).is_empty());
        index.follow(Event::Delete(b.clone()));
        assert!(owners(&index, &a).is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_when_complete() {
        let index = ObjectIndex::default();
        let (a, b) = (obj("a", "A1", "1"), obj("b", "A1", "2"));
        index.follow(Event::Apply(a.clone()));
        index.follow(Event::Apply(b.clone()));
        index.follow(Event::Init);
        index.follow(Event::InitApply(a.clone()));
        assert!(!index.listed(), "no list completed yet");
        assert_eq!(
            owners(&index, &a),
            vec!["ns/b"],
            "the old index serves until done"
        );
        index.follow(Event::InitDone);
        assert!(index.listed());
        assert!(
            owners(&index, &a).is_empty(),
            "b was deleted while the watch was down"
        );
        // Forgotten altogether: seen again (as a test can, under the same uid), it is new.
        assert_eq!(index.follow(Event::Apply(b)).len(), 1);
        assert!(index.follow(Event::Apply(a)).is_empty(), "a is unchanged");
    }

    /// kube's controller drops a pass for an object its cache does not hold. Fed through kube's
    /// own reflector, as in the controller, every object passed on is in the cache by then,
    /// also one first seen in a relist (created while the watch was down).
    #[tokio::test]
    async fn every_object_passed_on_is_in_the_cache_by_then() {
        use futures::StreamExt;
        use kube::runtime::{reflector, WatchStreamExt};
        let (reader, writer) = reflector::store();
        let index = Arc::new(ObjectIndex::beside(reader.clone()));
        let (a, b, c) = (
            obj("a", "A1", "1"),
            obj("b", "A2", "5"),
            obj("c", "A3", "6"),
        );
        let events = vec![
            Event::Init,
            Event::InitApply(a.clone()),
            Event::InitDone,
            // The watch broke; b and c were created before it was listed again.
            Event::Init,
            Event::InitApply(a),
            Event::InitApply(b),
            Event::InitApply(c),
            Event::InitDone,
        ];
        let feed = index.clone();
        let passed: Vec<(String, bool)> = futures::stream::iter(events)
            .map(Ok::<_, kube::runtime::watcher::Error>)
            .reflect(writer)
            .flat_map(|event| futures::stream::iter(feed.follow(event.unwrap())))
            .map(|reference| {
                let cached = reader.get(&reference).is_some();
                (reference.name, cached)
            })
            .collect()
            .await;
        let expected = [("a", true), ("b", true), ("c", true)].map(|(n, c)| (n.to_string(), c));
        assert_eq!(passed, expected);
    }

    #[test]
    fn only_changes_worth_a_pass_are_passed_on() {
        use crate::resource::AgentDynamicsStatus;
        let base = obj("a", "A1", "1");
        let with = |version: &str, change: &dyn Fn(&mut AgentDynamics)| {
            let mut o = base.clone();
            o.metadata.resource_version = Some(version.into());
            change(&mut o);
            o
        };
        let refreshed = with("5", &|o| {
            o.metadata.generation = Some(2);
            o.metadata.finalizers = Some(vec!["f".into()]);
            o.metadata.annotations =
                Some([(RECONCILE_REQUESTED_AT.to_string(), "now".to_string())].into());
        });
        let index = ObjectIndex::default();
        // (event, the objects passed on, why), in order: each row follows the rows before it.
        let rows: Vec<(Event<AgentDynamics>, &[&str], &str)> = vec![
            (Event::Apply(base.clone()), &["a"], "new to the index"),
            (
                Event::Apply(with("2", &|o| {
                    o.status = Some(AgentDynamicsStatus {
                        generations: 1,
                        ..Default::default()
                    })
                })),
                &[],
                "a status write",
            ),
            (
                Event::Apply(with("3", &|o| o.metadata.generation = Some(2))),
                &["a"],
                "a spec change",
            ),
            (
                Event::Apply(with("4", &|o| {
                    o.metadata.generation = Some(2);
                    o.metadata.finalizers = Some(vec!["f".into()]);
                })),
                &["a"],
                "a finalizer added",
            ),
            (
                Event::Apply(refreshed.clone()),
                &["a"],
                "a refresh requested",
            ),
            (Event::Init, &[], "a relist starts"),
            (Event::InitApply(refreshed), &[], "relisted unchanged"),
            (
                Event::InitApply(obj("b", "A2", "6")),
                &[],
                "created while the watch was down: not yet in kube's cache",
            ),
            (Event::InitApply(obj("c", "A3", "7")), &[], "another one"),
            (
                Event::InitDone,
                &["b", "c"],
                "the relist is in the cache: both are passed",
            ),
            (Event::Delete(obj("b", "A2", "8")), &[], "a deletion"),
            (
                Event::Apply(obj("b", "A2", "9")),
                &["b"],
                "seen again after its deletion",
            ),
        ];
        for (event, expected, why) in rows {
            let passed: Vec<String> = index.follow(event).iter().map(|r| r.name.clone()).collect();
            assert_eq!(passed, expected, "{why}");
        }
    }

    #[test]
    fn a_pass_reads_its_own_write_until_the_cache_catches_up() {
        let index = ObjectIndex::default();
        let read = obj("a", "A1", "10");
        // A pass wrote twice (marker, then outcome): 10 -> 11 -> 12.
        index.wrote(
            &read,
            vec!["10".into(), "11".into()],
            Arc::new(obj("a", "A1", "12")),
        );
        let fresh = |v: &str| {
            index
                .freshest(Arc::new(obj("a", "A1", v)))
                .resource_version()
        };
        assert_eq!(
            fresh("10").as_deref(),
            Some("12"),
            "stale copy: ours instead"
        );
        assert_eq!(
            fresh("11").as_deref(),
            Some("12"),
            "the marker's copy is stale too"
        );
        // The next pass starts from our copy and writes again: 12 -> 13.
        index.wrote(
            &obj("a", "A1", "12"),
            vec!["12".into()],
            Arc::new(obj("a", "A1", "13")),
        );
        assert_eq!(
            fresh("10").as_deref(),
            Some("13"),
            "still behind both writes"
        );
        // The watch delivers 13: forgotten.
        index.follow(Event::Apply(obj("a", "A1", "13")));
        assert_eq!(index.remembered(), 0);
        assert_eq!(fresh("13").as_deref(), Some("13"));
    }

    #[test]
    fn a_write_the_cache_already_holds_is_not_remembered() {
        use kube::runtime::reflector;
        let (cache, mut feed) = reflector::store();
        let index = ObjectIndex::beside(cache);
        let read = obj("a", "A1", "10");
        // The watch delivered the marker (11) before the pass ended: the outcome (12) is kept.
        feed.apply_watcher_event(&Event::Apply(obj("a", "A1", "11")));
        index.follow(Event::Apply(obj("a", "A1", "11")));
        index.wrote(
            &read,
            vec!["10".into(), "11".into()],
            Arc::new(obj("a", "A1", "12")),
        );
        assert_eq!(index.remembered(), 1);
        // The next pass's write (13) reached the cache before that pass ended (it sent an
        // Event meanwhile): nothing to remember, and the older copy goes too.
        feed.apply_watcher_event(&Event::Apply(obj("a", "A1", "13")));
        index.follow(Event::Apply(obj("a", "A1", "13")));
        index.wrote(
            &obj("a", "A1", "12"),
            vec!["12".into()],
            Arc::new(obj("a", "A1", "13")),
        );
        assert_eq!(index.remembered(), 0);
    }

    /// A pass took its copy from the cache, then waited for the object's lock while another
    /// pass wrote, and the watch delivered that write (so the index let go of it): the pass
    /// reads the cache's copy now, not the one it took.
    #[test]
    fn a_copy_taken_before_the_lock_gives_way_to_the_cache() {
        use kube::runtime::reflector;
        let (cache, mut feed) = reflector::store();
        let index = ObjectIndex::beside(cache);
        feed.apply_watcher_event(&Event::Apply(obj("a", "A1", "11")));
        let taken = Arc::new(obj("a", "A1", "11"));
        feed.apply_watcher_event(&Event::Apply(obj("a", "A1", "12")));
        index.follow(Event::Apply(obj("a", "A1", "12")));
        index.wrote(
            &obj("a", "A1", "11"),
            vec!["11".into()],
            Arc::new(obj("a", "A1", "12")),
        );
        assert_eq!(index.remembered(), 0, "the cache holds the write");
        let fresh = index.freshest(taken);
        assert_eq!(fresh.resource_version().as_deref(), Some("12"));
        // Gone from the cache meanwhile: the copy taken is all there is.
        feed.apply_watcher_event(&Event::Delete(obj("a", "A1", "13")));
        let fresh = index.freshest(Arc::new(obj("a", "A1", "12")));
        assert_eq!(fresh.resource_version().as_deref(), Some("12"));
    }

    #[test]
    fn only_what_passes_read_is_kept_of_an_object() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut o = obj("a", "A1", "1");
        o.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        o.metadata.labels = Some([("app".to_string(), "x".to_string())].into());
        o.metadata.annotations = Some(
            [
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                ),
                (RECONCILE_REQUESTED_AT.to_string(), "now".to_string()),
            ]
            .into(),
        );
        trim_for_cache(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(o.metadata.labels, None);
        let kept: Vec<&String> = o.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(kept, vec![RECONCILE_REQUESTED_AT]);
        assert_eq!(o.spec.agent_id, "A1");
    }

    #[test]
    fn flux_requested_at_is_a_refresh_and_ours_wins_beside_it() {
        use crate::resource::FLUX_RECONCILE_REQUESTED_AT;
        let with = |pairs: &[(&str, &str)]| {
            let mut o = obj("a", "A1", "1");
            o.metadata.annotations = Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            trim_for_cache(&mut o);
            o
        };
        let flux = with(&[(FLUX_RECONCILE_REQUESTED_AT, "t1")]);
        assert_eq!(
            flux.metadata.annotations,
            Some([(RECONCILE_REQUESTED_AT.to_string(), "t1".to_string())].into())
        );
        // A new Flux value is a change worth a pass.
        let later = with(&[(FLUX_RECONCILE_REQUESTED_AT, "t2")]);
        assert_ne!(relevant_state(&flux), relevant_state(&later));
        let both = with(&[
            (FLUX_RECONCILE_REQUESTED_AT, "t3"),
            (RECONCILE_REQUESTED_AT, "ours"),
        ]);
        assert_eq!(
            both.annotations()
                .get(RECONCILE_REQUESTED_AT)
                .map(String::as_str),
            Some("ours")
        );
    }

    #[test]
    fn someone_elses_newer_write_wins() {
        let index = ObjectIndex::default();
        index.wrote(
            &obj("a", "A1", "10"),
            vec!["10".into()],
            Arc::new(obj("a", "A1", "11")),
        );
        let fresh = index.freshest(Arc::new(obj("a", "A1", "12")));
        assert_eq!(fresh.resource_version().as_deref(), Some("12"));
        assert_eq!(index.remembered(), 0);
    }
}
