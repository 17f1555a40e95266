//! The public event envelope. Every state change is published as one of these on
//! `souk.evt.<kind>.<id>`; external tools rely on its shape, so fields are only ever added.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// One event of one entity, with the metadata every consumer needs.
///
/// `body` is flattened and adjacently tagged, so on the wire an event reads
/// `{"type": "stock.reserved", "data": {…}, "id": "SKU-1", "version": 7, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<E> {
    /// Unique id of this event.
    pub event_id: Uuid,
    /// Id of the entity the event belongs to.
    pub id: String,
    /// The entity's version after this event (1 for its first event).
    pub version: u64,
    /// When the event was decided, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Correlates the events caused by one client request across entities and nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The signed-in user whose request caused it: the audit trail of who did what. Absent
    /// for Souk's own steps (a checkout's saga, expiries) and for anonymous requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<crate::UserId>,
    /// `type` and `data`.
    #[serde(flatten)]
    pub body: E,
}

/// The `type` of each event in a stored commit, read without decoding the rest of it; `None`
/// when the payload is not a commit. For consumers that act on a few types and skip the rest.
pub fn commit_types(payload: &[u8]) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        name: std::borrow::Cow<'a, str>,
    }
    let typed: Vec<Typed<'_>> = serde_json::from_slice(payload).ok()?;
    Some(typed.into_iter().map(|t| t.name).collect())
}

/// What one JetStream message on an entity's subject carries: the events of one append,
/// applied atomically and in order. Usually one event; a busy entity commits several at once.
pub type Commit<E> = Vec<Event<E>>;

/// An entity state that folds its events. Implemented by every entity's state type, so the
/// event store can rehydrate any of them the same way.
pub trait Fold: Default {
    /// The entity's event type.
    type Event;
    /// Applies one event.
    fn apply(&mut self, event: &Self::Event);
    /// Applies one event that happened at `at`: what folds an entity's history calls, so a
    /// state that keeps when things happened (an order's timeline) can; the rest only apply it.
    fn apply_at(&mut self, event: &Self::Event, at: time::OffsetDateTime) {
        let _ = at;
        self.apply(event);
    }
}

#[cfg(test)]
mod tests {
    use super::Event;
    use crate::user::UserEvent;

    #[test]
    fn the_actor_travels_with_the_event_and_envelope_fields_a_node_does_not_know_are_ignored() {
        let json = r#"{"event_id":"0190a0a0-0000-7000-8000-000000000000","id":"usr-1","version":2,
            "time":"2026-11-27T10:00:00Z","actor":"usr-admin","type":"user.disabled","data":{}}"#;
        let e: Event<UserEvent> = serde_json::from_str(json).expect("decodes");
        assert_eq!(e.actor.as_ref().map(crate::UserId::as_str), Some("usr-admin"));
        assert_eq!(e.body, UserEvent::Disabled {});
        // A field added by a newer node (as `actor` once was) does not stop an older one.
        let newer = json.replace(r#""actor":"usr-admin","#, r#""actor":"usr-admin","origin":"pos-7","#);
        assert_eq!(serde_json::from_str::<Event<UserEvent>>(&newer).expect("decodes"), e);
        // Without an actor the field is left out, as events before it were written.
        let own = Event { actor: None, ..e };
        assert!(!serde_json::to_string(&own).expect("encode").contains("actor"));
    }
}
