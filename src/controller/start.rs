//! What the watches pass on to the controller, and when, around a start or a takeover.
//!
//! The watches run from the moment the process starts, leader or not, so a replica waiting for
//! the lease keeps its cache and index warm and takes over without a relist. Until it leads
//! (at once without leader election) their events only feed the cache and the index. When it
//! leads and the cache holds the first complete list, `reconcile::start::first_look` decides for
//! every cached object when the controller first looks at it: at once for work pending, when
//! its resync would have come for settled objects. From then on the watches pass on changes as
//! they come.
//!
//! Secrets: the first list of the labelled Secrets is not a change, so it wakes nobody (the
//! start rule covers every object); later changes, and a relist that finds a Secret at another
//! version, wake the objects that use it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::reconcile::start::{first_look, user_waiting};
use crate::resource::AgentDynamics;

use super::context::reference_to;
use super::index::ObjectIndex;

/// Passes for the controller: now, and later (after a delay from now); and passes for the
/// generation lane before the first list is complete (keys, namespace/name).
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    pub now: Vec<ObjectRef<AgentDynamics>>,
    pub later: Vec<Later>,
    pub before_list: Vec<String>,
}

/// At most this many objects pass before a start's first list is complete, each asking the API
/// server for the objects naming its agent: a start after a mass edit waits for the list, as
/// before, instead of sending thousands of lists.
pub const BEFORE_LIST_MAX: usize = 64;

/// A pass after a delay. Compact, since a start holds one for every settled object: 24 bytes
/// and the key's, where an `ObjectRef` and a `Duration` take 112 and two strings.
#[derive(Debug, PartialEq)]
pub struct Later {
    after_ms: u32,
    /// namespace/name
    key: Box<str>,
}

impl Later {
    fn new(after: Duration, obj: &AgentDynamics) -> Self {
        Later {
            after_ms: after.as_millis().min(u128::from(u32::MAX)) as u32,
            key: super::context::key_of(obj).into_boxed_str(),
        }
    }

    pub fn after(&self) -> Duration {
        Duration::from_millis(self.after_ms.into())
    }

    pub fn reference(&self) -> ObjectRef<AgentDynamics> {
        let (namespace, name) = self.key.split_once('/').unwrap_or(("", &self.key));
        ObjectRef::new(name).within(namespace)
    }
}

pub struct Gate {
    index: Arc<ObjectIndex>,
    /// kube's object cache, fed here (not by `reflect`): an object passed before the list is
    /// complete is put in it at once, for the pass to find.
    feed: Writer<AgentDynamics>,
    cache: Store<AgentDynamics>,
    resync: Duration,
    leading: bool,
    /// The cache holds a complete list.
    listed: bool,
    /// The start rule has run over the cache (once, when both leading and listed).
    started: bool,
    /// Labelled Secrets (namespace/name) and the resourceVersion last seen.
    secrets: HashMap<String, String>,
    secrets_relisting: Option<HashMap<String, String>>,
    secrets_listed: bool,
    /// Objects whose user waits, seen in the first list or changed while it came (see
    /// `before_list`).
    before_list: Vec<Early>,
    /// Objects passed from the watch of recent changes: key and resourceVersion. The main
    /// watch delivers the same change once its list is complete; it is not passed again.
    echoes: HashMap<String, String>,
}

/// An object passed before the first list is complete.
struct Early {
    key: String,
    /// Handed to the lane (not before this replica leads).
    handed: bool,
    /// The copy seen by the watch of recent changes: newer than the list's, so it goes back
    /// into the cache when the list replaces the cache's content.
    recent: Option<AgentDynamics>,
}

impl Gate {
    pub fn new(index: Arc<ObjectIndex>, feed: Writer<AgentDynamics>, resync: Duration) -> Self {
        Gate {
            index,
            cache: feed.as_reader(),
            feed,
            resync,
            leading: false,
            listed: false,
            started: false,
            secrets: HashMap::new(),
            secrets_relisting: None,
            secrets_listed: false,
            before_list: Vec::new(),
            echoes: HashMap::new(),
        }
    }

    /// One event of the AgentDynamics watch: into kube's cache, the index, then the passes.
    pub fn object_event(&mut self, event: Event<AgentDynamics>) -> Due {
        let listed = matches!(event, Event::InitDone);
        if let Event::InitApply(obj) = &event {
            self.before_list(obj, false);
        }
        let echo = match &event {
            Event::Apply(obj) => self.is_echo(obj),
            _ => false,
        };
        self.feed.apply_watcher_event(&event);
        let mut changes = self.index.follow(event);
        if listed && !self.listed {
            self.keep_recent_copies();
        }
        self.listed |= listed;
        if echo {
            changes.clear();
        }
        if !self.leading {
            return Due::default();
        }
        if !self.started {
            // The first list completes after leadership came: the start rule covers it.
            return if self.listed {
                self.start()
            } else {
                self.hand_before_list()
            };
        }
        Due {
            now: changes,
            ..Due::default()
        }
    }

    /// This replica leads from now on.
    pub fn lead(&mut self) -> Due {
        self.leading = true;
        if self.listed && !self.started {
            self.start()
        } else {
            self.hand_before_list()
        }
    }

    /// A change seen by the watch of recent changes (`listing::changes_from_now`) while the
    /// first list is still coming: an edit made during the start, which the list's stream
    /// delivers only after its last object.
    pub fn recent_change(&mut self, obj: AgentDynamics) -> Due {
        if !self.before_list(&obj, true) {
            return Due::default();
        }
        self.hand_before_list()
    }

    /// An object of a start's first list whose user waits (`user_waiting`: an edit made while
    /// no operator ran, or during the restart) is passed as it arrives, not when the whole
    /// list has (3 s at 10,000 objects): it goes into the cache at once, and its pass asks the
    /// API server which objects name its agent (the index knows only part of them yet).
    /// Whether it is taken.
    fn before_list(&mut self, obj: &AgentDynamics, recent: bool) -> bool {
        let key = super::context::key_of(obj);
        if self.listed
            || self.before_list.len() >= BEFORE_LIST_MAX
            || !user_waiting(obj)
            || self.before_list.iter().any(|early| early.key == key)
        {
            return false;
        }
        // The list's own copy replaces this one when it completes.
        self.feed.apply_watcher_event(&Event::Apply(obj.clone()));
        if recent {
            self.echoes
                .insert(key.clone(), obj.resource_version().unwrap_or_default());
        }
        self.before_list.push(Early {
            key,
            handed: false,
            recent: recent.then(|| obj.clone()),
        });
        true
    }

    /// The list replaced the cache's content: a copy from the watch of recent changes is newer
    /// than the list's (whose snapshot came first), and a pass must not read the older one.
    fn keep_recent_copies(&mut self) {
        for early in &mut self.before_list {
            let Some(recent) = early.recent.take() else {
                continue;
            };
            let cached = self.cache.get(&ObjectRef::from_obj(&recent));
            if cached.is_some_and(|c| c.resource_version() != recent.resource_version()) {
                self.feed.apply_watcher_event(&Event::Apply(recent));
            }
        }
    }

    /// The main watch delivering a change already passed from the watch of recent changes.
    fn is_echo(&mut self, obj: &AgentDynamics) -> bool {
        if self.echoes.is_empty() {
            return false;
        }
        let key = super::context::key_of(obj);
        match self.echoes.get(&key) {
            Some(version) if Some(version) == obj.resource_version().as_ref() => {
                self.echoes.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Objects passed before the list is complete, to the lane, once this replica leads.
    fn hand_before_list(&mut self) -> Due {
        if !self.leading || self.listed {
            return Due::default();
        }
        let before_list = self
            .before_list
            .iter_mut()
            .filter(|early| !early.handed)
            .map(|early| {
                early.handed = true;
                early.key.clone()
            })
            .collect();
        Due {
            before_list,
            ..Due::default()
        }
    }

    fn start(&mut self) -> Due {
        self.started = true;
        let now = jiff::Timestamp::now();
        let objects = self.cache.state();
        let mut due = Due {
            // Nearly all of them, in one allocation rather than doublings.
            later: Vec::with_capacity(objects.len()),
            ..Due::default()
        };
        let passed: std::collections::HashSet<String> = std::mem::take(&mut self.before_list)
            .into_iter()
            .filter_map(|early| early.handed.then_some(early.key))
            .collect();
        for obj in objects {
            // Passed before the list was complete: the start reads what its pass wrote.
            let obj = if passed.contains(&super::context::key_of(&obj)) {
                self.index.freshest(obj)
            } else {
                obj
            };
            let at = first_look(&obj, self.resync, now);
            if at.is_zero() {
                due.now.push(reference_to(&obj));
            } else {
                due.later.push(Later::new(at, &obj));
            }
        }
        tracing::info!(
            now = due.now.len(),
            spread = due.later.len(),
            over_s = self.resync.as_secs(),
            "starting: objects with work pending are looked at now, settled ones spread over the resync window"
        );
        due
    }

    /// One event of a Secret watch: the Secret (namespace, name) whose change wakes its users.
    pub fn secret_event(
        &mut self,
        event: Event<PartialObjectMeta<Secret>>,
    ) -> Option<(String, String)> {
        let key = |s: &PartialObjectMeta<Secret>| (s.namespace().unwrap_or_default(), s.name_any());
        let changed = match &event {
            Event::Init => {
                self.secrets_relisting = Some(HashMap::new());
                None
            }
            Event::InitApply(s) => {
                let (ns, name) = key(s);
                let version = s.resource_version().unwrap_or_default();
                let at = format!("{ns}/{name}");
                let changed = self.secrets_listed && self.secrets.get(&at) != Some(&version);
                self.secrets_relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(at, version);
                changed.then_some((ns, name))
            }
            Event::InitDone => {
                let listed = self.secrets_relisting.take().unwrap_or_default();
                // Merged, not replaced: several Secret watches (one per namespace) feed this.
                self.secrets.extend(listed);
                self.secrets_listed = true;
                None
            }
            Event::Apply(s) => {
                let (ns, name) = key(s);
                self.secrets.insert(
                    format!("{ns}/{name}"),
                    s.resource_version().unwrap_or_default(),
                );
                Some((ns, name))
            }
            Event::Delete(s) => {
                let (ns, name) = key(s);
                self.secrets.remove(&format!("{ns}/{name}"));
                Some((ns, name))
            }
        };
        changed.filter(|_| self.leading && self.started)
    }
}

/// Sends the passes due later to `controller`, each at its time, from one task: a sorted list
/// and one timer rather than a task per object.
pub fn send_later(controller: UnboundedSender<ObjectRef<AgentDynamics>>, mut later: Vec<Later>) {
    if later.is_empty() {
        return;
    }
    later.sort_unstable_by_key(|l| l.after_ms);
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        for pass in later {
            tokio::time::sleep_until(start + pass.after()).await;
            if controller.send(pass.reference()).is_err() {
                return; // The controller stopped.
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{AgentDynamicsSpec, AgentDynamicsStatus, FINALIZER};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube::runtime::reflector;

    const RESYNC: Duration = Duration::from_secs(600);

    fn obj(name: &str, settled: bool) -> AgentDynamics {
        let mut o = AgentDynamics::new(
            name,
            AgentDynamicsSpec {
                agent_id: name.to_uppercase(),
                ..Default::default()
            },
        );
        o.metadata.namespace = Some("ns".into());
        o.metadata.uid = Some(format!("uid-{name}"));
        o.metadata.resource_version = Some("1".into());
        o.metadata.generation = Some(1);
        o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let ready = Condition {
            type_: "Ready".into(),
            status: if settled { "True" } else { "False" }.into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: Some(1),
        };
        o.status = Some(AgentDynamicsStatus {
            observed_generation: Some(1),
            conditions: vec![ready],
            ..Default::default()
        });
        o
    }

    struct Fixture {
        gate: Gate,
        cache: Store<AgentDynamics>,
        index: Arc<ObjectIndex>,
    }

    impl Fixture {
        fn new() -> Self {
            let (cache, feed) = reflector::store();
            let index = Arc::new(ObjectIndex::beside(cache.clone()));
            Fixture {
                gate: Gate::new(index.clone(), feed, RESYNC),
                cache,
                index,
            }
        }

        fn event(&mut self, event: Event<AgentDynamics>) -> Due {
            self.gate.object_event(event)
        }

        fn cached(&self, name: &str) -> bool {
            self.cache.get(&ObjectRef::new(name).within("ns")).is_some()
        }

        fn list(&mut self, objects: &[AgentDynamics]) -> Vec<Due> {
            let mut dues = vec![self.event(Event::Init)];
            for o in objects {
                dues.push(self.event(Event::InitApply(o.clone())));
            }
            dues.push(self.event(Event::InitDone));
            dues
        }
    }

    fn names(refs: &[ObjectRef<AgentDynamics>]) -> Vec<String> {
        let mut names: Vec<String> = refs.iter().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    fn spread_names(due: &Due) -> Vec<String> {
        let refs: Vec<_> = due.later.iter().map(Later::reference).collect();
        names(&refs)
    }

    #[test]
    fn a_start_looks_now_at_pending_work_and_later_at_settled_objects() {
        let mut f = Fixture::new();
        f.gate.lead();
        let dues = f.list(&[obj("busy", false), obj("done", true), obj("done2", true)]);
        let (list, done) = dues.split_at(dues.len() - 1);
        assert!(
            list.iter().all(|d| *d == Due::default()),
            "nothing before the list is complete"
        );
        assert_eq!(names(&done[0].now), ["busy"]);
        assert_eq!(spread_names(&done[0]), ["done", "done2"]);
        let reference = done[0].later[0].reference();
        assert_eq!(reference.namespace.as_deref(), Some("ns"), "{reference:?}");
        assert!(done[0]
            .later
            .iter()
            .all(|l| !l.after().is_zero() && l.after() < RESYNC + RESYNC / 10));
        // After the start, changes pass as they come; a status write does not.
        let mut edited = obj("done", true);
        edited.metadata.generation = Some(2);
        edited.metadata.resource_version = Some("2".into());
        assert_eq!(names(&f.event(Event::Apply(edited)).now), ["done"]);
        let mut written = obj("done2", true);
        written.metadata.resource_version = Some("3".into());
        assert_eq!(f.event(Event::Apply(written)), Due::default());
        // A relist after a broken watch passes only what changed, and spreads nothing.
        let dues = f.list(&[obj("busy", false), obj("done2", true), obj("new", false)]);
        assert_eq!(names(&dues.last().unwrap().now), ["new"]);
        assert!(dues.iter().all(|d| d.later.is_empty()));
    }

    /// A standby keeps its cache and index from the watch and passes nothing; when it takes the
    /// lease, the start rule runs over what it holds (no relist), changes made while it waited
    /// included.
    #[test]
    fn a_standby_passes_nothing_until_it_leads_then_starts_from_its_cache() {
        let mut f = Fixture::new();
        let dues = f.list(&[obj("busy", false), obj("done", true)]);
        assert!(dues.iter().all(|d| *d == Due::default()));
        let mut edited = obj("done", true);
        edited.metadata.generation = Some(2);
        assert_eq!(f.event(Event::Apply(edited)), Due::default(), "not leading");
        let due = f.gate.lead();
        assert_eq!(
            names(&due.now),
            ["busy", "done"],
            "the edit made meanwhile is pending"
        );
        assert!(due.later.is_empty());
        assert_eq!(f.gate.lead(), Due::default(), "the start runs once");
    }

    fn edited(name: &str) -> AgentDynamics {
        let mut o = obj(name, true);
        o.metadata.generation = Some(2);
        o
    }

    /// An object of the first list whose user waits (an edit made while no operator ran) is
    /// passed as it arrives: put in the cache at once and handed to the lane, once leading.
    /// The start then reads what that pass wrote, and the rest waits for the list.
    #[test]
    fn an_edit_in_the_first_list_passes_before_the_list_is_complete() {
        let mut f = Fixture::new();
        assert_eq!(f.event(Event::Init), Due::default());
        assert_eq!(
            f.event(Event::InitApply(edited("early"))),
            Due::default(),
            "not leading yet"
        );
        assert!(
            f.cached("early"),
            "in the cache before the list is complete"
        );
        let due = f.gate.lead();
        assert_eq!(due.before_list, ["ns/early"], "handed over on leading");
        assert!(due.now.is_empty() && due.later.is_empty());
        let due = f.event(Event::InitApply(edited("edit")));
        assert_eq!(due.before_list, ["ns/edit"]);
        assert_eq!(f.event(Event::InitApply(obj("done", true))), Due::default());
        assert!(!f.cached("done"), "a settled object waits for the list");
        assert_eq!(
            f.event(Event::InitApply(obj("busy", false))),
            Due::default(),
            "work of its own rhythm waits for the list"
        );
        // The pass of `edit` converged it meanwhile.
        let mut written = obj("edit", true);
        written.metadata.generation = Some(2);
        written.metadata.resource_version = Some("7".into());
        let status = written.status.as_mut().unwrap();
        status.observed_generation = Some(2);
        status.conditions[0].observed_generation = Some(2);
        f.index
            .wrote(&edited("edit"), vec!["1".into()], Arc::new(written));
        let due = f.event(Event::InitDone);
        assert!(due.before_list.is_empty());
        assert_eq!(
            names(&due.now),
            ["busy", "early"],
            "`early`'s pass wrote nothing: it is looked at again"
        );
        assert_eq!(spread_names(&due), ["done", "edit"]);
        // After the list, edits go through the controller's queue again.
        let mut again = edited("done");
        again.metadata.resource_version = Some("9".into());
        let due = f.event(Event::Apply(again));
        assert_eq!(names(&due.now), ["done"]);
        assert!(due.before_list.is_empty());
    }

    /// An edit made during the start, after the list's snapshot: the list would deliver it
    /// after its last object; the watch of recent changes passes it at once. When the list
    /// completes the cache keeps that newer copy, and the main watch's delivery of the same
    /// change passes nothing again.
    #[test]
    fn an_edit_made_during_the_start_passes_from_the_watch_of_recent_changes() {
        let mut f = Fixture::new();
        f.gate.lead();
        f.event(Event::Init);
        let mut edit = edited("r");
        edit.metadata.resource_version = Some("5".into());
        let due = f.gate.recent_change(edit.clone());
        assert_eq!(due.before_list, ["ns/r"]);
        assert!(f.cached("r"));
        assert_eq!(
            f.gate.recent_change(edit.clone()),
            Due::default(),
            "passed once"
        );
        let mut settled = obj("s", true);
        settled.metadata.resource_version = Some("6".into());
        assert_eq!(
            f.gate.recent_change(settled),
            Due::default(),
            "a status write"
        );
        // The list's snapshot came before the edit.
        assert_eq!(f.event(Event::InitApply(obj("r", true))), Due::default());
        let mut written = obj("r", true);
        written.metadata.generation = Some(2);
        written.metadata.resource_version = Some("7".into());
        let status = written.status.as_mut().unwrap();
        status.observed_generation = Some(2);
        status.conditions[0].observed_generation = Some(2);
        f.index.wrote(&edit, vec!["5".into()], Arc::new(written));
        let due = f.event(Event::InitDone);
        let cached = f.cache.get(&ObjectRef::new("r").within("ns")).unwrap();
        assert_eq!(
            cached.resource_version().as_deref(),
            Some("5"),
            "the cache keeps the newer copy"
        );
        assert!(due.now.is_empty(), "its pass converged it");
        assert_eq!(spread_names(&due), ["r"]);
        assert_eq!(f.event(Event::Apply(edit)), Due::default(), "the echo");
        let mut again = edited("r");
        again.metadata.generation = Some(3);
        again.metadata.resource_version = Some("9".into());
        assert_eq!(names(&f.event(Event::Apply(again)).now), ["r"]);
        assert_eq!(
            f.gate.recent_change(edited("late")),
            Due::default(),
            "nothing before the list once it is complete"
        );
    }

    #[test]
    fn no_more_than_a_bounded_number_pass_before_the_list() {
        let mut f = Fixture::new();
        f.gate.lead();
        f.event(Event::Init);
        let handed: usize = (0..BEFORE_LIST_MAX + 10)
            .map(|i| {
                f.event(Event::InitApply(edited(&format!("o{i}"))))
                    .before_list
                    .len()
            })
            .sum();
        assert_eq!(handed, BEFORE_LIST_MAX);
        assert!(!f.cached(&format!("o{BEFORE_LIST_MAX}")));
        let due = f.event(Event::InitDone);
        assert_eq!(due.now.len(), BEFORE_LIST_MAX + 10, "all edited: all now");
        // A relist after a broken watch passes nothing early: the index knows every agent.
        f.event(Event::Init);
        let mut again = edited("o1");
        again.metadata.generation = Some(3);
        assert!(f.event(Event::InitApply(again)).before_list.is_empty());
    }

    #[test]
    fn the_first_list_of_secrets_wakes_nobody_later_changes_do() {
        let mut f = Fixture::new();
        f.gate.lead();
        f.list(&[]);
        let secret = |name: &str, version: &str| {
            let mut s = PartialObjectMeta::<Secret>::default();
            s.metadata.namespace = Some("ns".into());
            s.metadata.name = Some(name.into());
            s.metadata.resource_version = Some(version.into());
            s
        };
        let woken = |f: &mut Fixture, e| f.gate.secret_event(e).map(|(_, name)| name);
        assert_eq!(woken(&mut f, Event::Init), None);
        assert_eq!(woken(&mut f, Event::InitApply(secret("a", "1"))), None);
        assert_eq!(woken(&mut f, Event::InitApply(secret("b", "1"))), None);
        assert_eq!(woken(&mut f, Event::InitDone), None);
        assert_eq!(
            woken(&mut f, Event::Apply(secret("a", "2"))),
            Some("a".into())
        );
        // A relist: only the Secret at another version wakes its users.
        woken(&mut f, Event::Init);
        assert_eq!(woken(&mut f, Event::InitApply(secret("a", "2"))), None);
        assert_eq!(
            woken(&mut f, Event::InitApply(secret("b", "5"))),
            Some("b".into())
        );
        woken(&mut f, Event::InitDone);
        assert_eq!(
            woken(&mut f, Event::Delete(secret("b", "6"))),
            Some("b".into())
        );
    }
}
