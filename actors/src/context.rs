//! Services every actor of a node shares.

use crate::metrics::ActorMetrics;
use souk_nats::{Bus, EventStore};
use std::time::Duration;

/// What shard actors and their entities need from their node.
#[derive(Debug)]
pub struct NodeContext {
    /// Replies go out here.
    pub bus: Bus,
    /// Entity histories.
    pub store: EventStore,
    /// Actor metrics.
    pub metrics: ActorMetrics,
    /// A snapshot is written after this many commits of one entity.
    pub snapshot_every: u64,
    /// An entity idle this long is stopped; it rehydrates on its next command.
    pub idle_after: Duration,
    /// The shards this node owns now, kept by the node supervisor.
    pub owned_shards: std::sync::RwLock<std::collections::BTreeSet<souk_messages::subject::ShardId>>,
}
