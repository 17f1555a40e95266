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
}
