//! Events on transitions of the Ready condition, not on every loop.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::{Instrument, warn};

use aether_crds::condition::READY;

fn ready(conditions: &[Condition]) -> Option<(&str, &str)> {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// True when Ready's status or reason differs between `old` and `new`.
pub fn ready_changed(old: &[Condition], new: &[Condition]) -> bool {
    ready(old) != ready(new)
}

/// Publish an Event, in the background: a reconcile does not wait for it (a
/// thousand apps deploying at once made each wait for its Events in turn).
pub async fn publish(
    recorder: &Recorder,
    object: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let (recorder, object) = (recorder.clone(), object.clone());
    tokio::spawn(
        async move {
            if let Err(e) = recorder.publish(&event, &object).await {
                warn!(error = %e, "could not publish an event");
            }
        }
        .instrument(tracing::Span::current()),
    );
}
