//! Events (events.k8s.io/v1) about `AgentDynamics`, created directly.
//!
//! kube's `Recorder` keeps every Event it sent for six minutes, to count repeats into a series,
//! and scans that whole cache on each publish: at 10,000 objects that is tens of MiB and a scan
//! of tens of thousands of entries per Event. The operator never repeats an Event (it notes
//! purchases and transitions, not every pass), so it needs no series and keeps nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};

use crate::executor::Note;
use crate::resource::AgentDynamics;

const CONTROLLER: &str = "dynamics-operator";

pub struct EventPublisher {
    client: Client,
    /// The pod's name (reportingInstance), when it runs in one.
    instance: String,
}

impl EventPublisher {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        EventPublisher {
            client,
            instance: instance.unwrap_or_else(|| CONTROLLER.to_string()),
        }
    }

    /// Create one Event per note. An Event that cannot be written is logged, not retried:
    /// Events are advice, and the status already says the same.
    pub async fn publish(&self, obj: &AgentDynamics, notes: Vec<Note>) {
        if notes.is_empty() {
            return;
        }
        let namespace = obj.namespace().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let regarding = obj.object_ref(&());
        for note in notes {
            let event = self.event(&regarding, &note);
            if let Err(err) = events.create(&PostParams::default(), &event).await {
                tracing::warn!(object = %obj.name_any(), reason = %note.reason, error = %err, "could not publish an Event");
            }
        }
    }

    fn event(&self, regarding: &ObjectReference, note: &Note) -> Event {
        Self::event_for(&self.instance, regarding, note)
    }

    fn event_for(instance: &str, regarding: &ObjectReference, note: &Note) -> Event {
        let now = jiff::Timestamp::now();
        let name = format!(
            "{}.{:x}{:04x}",
            regarding.name.as_deref().unwrap_or(CONTROLLER),
            now.as_nanosecond(),
            rand::random::<u16>()
        );
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(note.reason.clone()),
            note: Some(note.message.clone()),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(instance.to_string()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_object_reason_and_reporter() {
        let publisher_instance = "dynamics-operator-7d9f-abcde".to_string();
        let mut obj = AgentDynamics::new("support", Default::default());
        obj.metadata.namespace = Some("agents".into());
        obj.metadata.uid = Some("uid-1".into());
        let regarding = obj.object_ref(&());
        let note = Note {
            warning: true,
            reason: "SecretNotFound".into(),
            message: "Secret agents/api not found".into(),
        };
        let event = EventPublisher::event_for(&publisher_instance, &regarding, &note);
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("SecretNotFound"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("agents"));
        assert!(event.metadata.name.unwrap().starts_with("support."));
        assert_eq!(event.regarding.unwrap().uid.as_deref(), Some("uid-1"));
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some("dynamics-operator-7d9f-abcde")
        );
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("dynamics-operator")
        );
    }
}
