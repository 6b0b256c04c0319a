//! The benchmark's own watch of AgentDynamics: when each object became Ready, and how often
//! objects changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamics_operator::resource::AgentDynamics;
use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

// ---------------------------------------------------------------------------------------------
// What the watch sees

#[derive(Debug, Default)]
pub struct WatchState {
    /// When the create call of each object returned.
    pub created: HashMap<String, Instant>,
    /// Last resourceVersion seen per object.
    pub rv: HashMap<String, String>,
    /// Changes (new resourceVersions) after the object was first seen.
    pub changes: u64,
    /// Generation at which the object is Ready (Ready=True, observedGeneration current), if it is.
    pub ready_gen: HashMap<String, i64>,
    /// First time each object was seen Ready for its first generation.
    pub first_ready: HashMap<String, Instant>,
    /// When the object became Ready for a given generation.
    pub ready_at: HashMap<(String, i64), Instant>,
    pub restarts: u64,
}

impl WatchState {
    pub fn ready_count(&self) -> usize {
        self.ready_gen.len()
    }

    pub fn apply(&mut self, obj: &AgentDynamics, now: Instant) {
        let name = obj.name_any();
        let rv = obj.resource_version().unwrap_or_default();
        match self.rv.insert(name.clone(), rv.clone()) {
            Some(old) if old != rv => self.changes += 1,
            _ => {}
        }
        let generation = obj.metadata.generation.unwrap_or_default();
        let ready = obj
            .status
            .as_ref()
            .is_some_and(|s| s.is_ready() && s.observed_generation == Some(generation));
        if ready {
            if self.ready_gen.insert(name.clone(), generation) != Some(generation) {
                self.ready_at.insert((name.clone(), generation), now);
                self.first_ready.entry(name).or_insert(now);
            }
        } else {
            self.ready_gen.remove(&name);
        }
    }
}

pub fn spawn_watch(
    api: Api<AgentDynamics>,
    state: Arc<Mutex<WatchState>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut st = state.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(obj)) | Ok(watcher::Event::InitApply(obj)) => {
                    st.apply(&obj, now)
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let name = obj.name_any();
                    st.ready_gen.remove(&name);
                }
                Ok(watcher::Event::Init) => st.restarts += 1,
                Ok(watcher::Event::InitDone) => {}
                Err(err) => {
                    eprintln!("bench: watch error (it retries): {err}");
                    drop(st);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}
