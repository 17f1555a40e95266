//! What every entity kind shares: its pure decide/apply rules and the request envelope that
//! carries its commands over the bus.

use crate::error::ReplyError;
use crate::event::Fold;
use crate::subject::EntityKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::{Debug, Display};
use std::hash::Hash;
use time::OffsetDateTime;

/// An entity kind's state and rules. The actor runtime is generic over this trait, so every
/// kind gets the same group commit, fencing, snapshots and passivation.
pub trait Entity:
    Fold<Event: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind, which names its shards and subjects.
    const KIND: EntityKind;
    /// Its identifier: a validated subject token.
    type Id: Clone + Eq + Hash + Ord + Display + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The commands it takes.
    type Command: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What a successful command answers.
    type View: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The id as a subject token.
    fn id_str(id: &Self::Id) -> &str;

    /// Turns a command into events (none for a read or a repeated idempotent command) or a
    /// business rejection. Pure: `now` is the only clock it sees.
    fn decide(
        &self,
        id: &Self::Id,
        cmd: &Self::Command,
        now: OffsetDateTime,
    ) -> Result<Vec<Self::Event>, ReplyError>;

    /// The answer to a successful command, from the state after it.
    fn view(&self, id: &Self::Id) -> Self::View;

    /// How many events the state has applied.
    fn version(&self) -> u64;
}

/// A command on the bus: which entity, what to do, and the request it came from.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "E::Id: Serialize, E::Command: Serialize"))]
#[serde(bound(deserialize = "E::Id: DeserializeOwned, E::Command: DeserializeOwned"))]
pub struct Request<E: Entity> {
    /// The addressed entity.
    pub id: E::Id,
    /// What to do.
    pub command: E::Command,
    /// The originating request's correlation id, copied into the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The signed-in user who sent it, copied into the events as their actor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<crate::UserId>,
}

impl<E: Entity> Request<E> {
    /// A request for `id` with no correlation id.
    pub fn new(id: E::Id, command: E::Command) -> Self {
        Self { id, command, correlation_id: None, actor: None }
    }

    /// The same request, correlated with `id`.
    #[must_use]
    pub fn correlated(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The same request, sent on behalf of `actor` (`None`: Souk itself, or nobody signed in).
    #[must_use]
    pub fn by(mut self, actor: Option<crate::UserId>) -> Self {
        self.actor = actor;
        self
    }
}

impl<E: Entity> Clone for Request<E> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            command: self.command.clone(),
            correlation_id: self.correlation_id.clone(),
            actor: self.actor.clone(),
        }
    }
}

impl<E: Entity> Debug for Request<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("kind", &E::KIND)
            .field("id", &self.id)
            .field("command", &self.command)
            .field("correlation_id", &self.correlation_id)
            .field("actor", &self.actor)
            .finish()
    }
}
