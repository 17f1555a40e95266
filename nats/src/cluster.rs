//! Cluster membership and shard leases, both in JetStream KV.
//!
//! - Each live node keeps `souk_nodes/<node>` fresh with heartbeats; the bucket's TTL removes
//!   a node that stops.
//! - A shard belongs to the live node that wins rendezvous hashing for it, so a node joining
//!   or leaving moves only its own share of shards.
//! - Ownership is a lease `souk_leases/<kind>.<shard>`: taken by a KV create (which fails while
//!   someone holds it), renewed by revision CAS, and gone when its owner releases it or stops
//!   renewing it for the lease TTL. The revision at which a lease was taken is its epoch: it
//!   only grows, so it works as a fencing token.

use async_nats::jetstream::kv;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use souk_messages::NodeId;
use souk_messages::subject::{EntityKind, ShardCounts, ShardId, stable_hash};
use std::collections::BTreeMap;

use crate::streams::Jet;

/// Why a membership or lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A KV operation failed.
    #[error("{0} failed: {1}")]
    Kv(&'static str, #[source] crate::NatsSource),
    /// This node's shard counts differ from the ones the cluster was started with.
    #[error("shard counts {ours:?} differ from the cluster's {theirs:?}; every node must use the same")]
    ShardCountMismatch {
        /// Ours.
        ours: ShardCounts,
        /// The cluster's.
        theirs: ShardCounts,
    },
    /// A stored value does not decode.
    #[error("corrupt cluster record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard.
    pub shard: ShardId,
    /// The fencing token: the KV revision at which the lease was taken.
    pub epoch: u64,
    revision: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseValue {
    node: NodeId,
    epoch: u64,
}

/// This node's view of, and voice in, the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    node: NodeId,
    client: async_nats::Client,
    nodes: kv::Store,
    leases: kv::Store,
    settings: kv::Store,
}

fn lease_key(shard: ShardId) -> String {
    format!("{}.{}", shard.kind, shard.index)
}

fn parse_lease_key(key: &str) -> Option<ShardId> {
    let (kind, index) = key.split_once('.')?;
    let kind = EntityKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some(ShardId { kind, index: index.parse().ok()? })
}

/// Every live key of a bucket.
async fn keys(store: &kv::Store, op: &'static str) -> Result<Vec<String>, ClusterError> {
    let listing = store.keys().await.map_err(|e| ClusterError::Kv(op, Box::new(e)))?;
    listing.try_collect().await.map_err(|e| ClusterError::Kv(op, Box::new(e)))
}

/// The live node that owns `shard` under rendezvous hashing: the one with the highest score.
pub fn assign(nodes: &[NodeId], shard: ShardId) -> Option<&NodeId> {
    let kind = shard.kind.as_str().as_bytes();
    let index = shard.index.to_le_bytes();
    nodes.iter().max_by_key(|n| (stable_hash(&[n.as_str().as_bytes(), kind, &index]), n.as_str()))
}

impl Cluster {
    /// The cluster as seen by `node`.
    pub fn new(jet: &Jet, node: NodeId) -> Self {
        Self {
            node,
            client: jet.js.client(),
            nodes: jet.nodes.clone(),
            leases: jet.leases.clone(),
            settings: jet.cluster.clone(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Whether NATS can be reached now; while it cannot, every operation here would wait out
    /// its timeout.
    pub fn reachable(&self) -> bool {
        crate::connect::connected(&self.client)
    }

    /// Records the shard counts on the first start of a cluster; on later starts, refuses
    /// counts that differ, since they decide which shard owns each entity.
    pub async fn agree_on_shards(&self, ours: ShardCounts) -> Result<(), ClusterError> {
        let bytes = serde_json::to_vec(&ours)?;
        match self.settings.create("shards", bytes.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let stored = self
                    .settings
                    .get("shards")
                    .await
                    .map_err(|e| ClusterError::Kv("read shard counts", Box::new(e)))?
                    .unwrap_or_default();
                let theirs: ShardCounts = serde_json::from_slice(&stored)?;
                if theirs == ours { Ok(()) } else { Err(ClusterError::ShardCountMismatch { ours, theirs }) }
            }
            Err(e) => Err(ClusterError::Kv("store shard counts", Box::new(e))),
        }
    }

    /// Announces this node as alive for another node TTL.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        self.nodes
            .put(self.node.as_str(), bytes::Bytes::new())
            .await
            .map(drop)
            .map_err(|e| ClusterError::Kv("heartbeat", Box::new(e)))
    }

    /// Withdraws this node at once, rather than waiting for its heartbeat to expire.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.nodes.purge(self.node.as_str()).await.map_err(|e| ClusterError::Kv("leave", Box::new(e)))
    }

    /// The nodes whose heartbeats have not expired, sorted.
    pub async fn live_nodes(&self) -> Result<Vec<NodeId>, ClusterError> {
        let keys = keys(&self.nodes, "list nodes").await?;
        let mut nodes: Vec<NodeId> = keys.into_iter().filter_map(|k| NodeId::parse(k).ok()).collect();
        nodes.sort();
        Ok(nodes)
    }

    /// Takes the lease on `shard` if nobody holds it, or if it is still held in this node's
    /// name by a previous run of this node (same node id, so same data dir) that died: it
    /// would otherwise block the shard until it expired.
    pub async fn acquire(&self, shard: ShardId) -> Result<Option<Lease>, ClusterError> {
        let key = lease_key(shard);
        // The epoch is the revision the write lands at; it is unknown until then, so the
        // value carries 0 and the first renewal records the real one.
        let value = serde_json::to_vec(&LeaseValue { node: self.node.clone(), epoch: 0 })?;
        match self.leases.create(&key, value.clone().into()).await {
            Ok(revision) => Ok(Some(Lease { shard, epoch: revision, revision })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry =
                    self.leases.entry(&key).await.map_err(|e| ClusterError::Kv("read lease", Box::new(e)))?;
                let Some(entry) = entry else { return Ok(None) };
                let ours =
                    serde_json::from_slice::<LeaseValue>(&entry.value).is_ok_and(|v| v.node == self.node);
                if !ours {
                    return Ok(None);
                }
                match self.leases.update(&key, value.into(), entry.revision).await {
                    Ok(revision) => Ok(Some(Lease { shard, epoch: revision, revision })),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                    Err(e) => Err(ClusterError::Kv("adopt lease", Box::new(e))),
                }
            }
            Err(e) => Err(ClusterError::Kv("acquire lease", Box::new(e))),
        }
    }

    /// Renews a lease. `Ok(false)` means it was lost (expired and taken, or deleted): stop
    /// serving the shard at once.
    pub async fn renew(&self, lease: &mut Lease) -> Result<bool, ClusterError> {
        let value = serde_json::to_vec(&LeaseValue { node: self.node.clone(), epoch: lease.epoch })?;
        match self.leases.update(lease_key(lease.shard), value.into(), lease.revision).await {
            Ok(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(ClusterError::Kv("renew lease", Box::new(e))),
        }
    }

    /// Gives a lease up, if it is still ours, so the next owner need not wait for it to expire.
    pub async fn release(&self, lease: &Lease) -> Result<(), ClusterError> {
        self.leases
            .delete_expect_revision(lease_key(lease.shard), Some(lease.revision))
            .await
            .map_err(|e| ClusterError::Kv("release lease", Box::new(e)))
    }

    /// Who holds each leased shard right now.
    pub async fn owners(&self) -> Result<BTreeMap<ShardId, NodeId>, ClusterError> {
        let keys = keys(&self.leases, "list leases").await?;
        let mut owners = BTreeMap::new();
        for key in keys {
            let Some(shard) = parse_lease_key(&key) else { continue };
            if let Some(bytes) =
                self.leases.get(key).await.map_err(|e| ClusterError::Kv("read lease", Box::new(e)))?
            {
                let v: LeaseValue = serde_json::from_slice(&bytes)?;
                owners.insert(shard, v.node);
            }
        }
        Ok(owners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId::parse(format!("n{i}")).expect("id")).collect()
    }

    #[test]
    fn every_shard_has_exactly_one_owner_and_the_load_spreads() {
        let ns = nodes(4);
        let counts = ShardCounts { stock: 256, user: 0, product: 0, cart: 0, order: 0 };
        let mut per_node = BTreeMap::new();
        for s in counts.all() {
            *per_node.entry(assign(&ns, s).expect("owner").clone()).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 4);
        for c in per_node.values() {
            assert!((32..=96).contains(c), "uneven: {per_node:?}");
        }
    }

    #[test]
    fn a_joining_node_moves_only_its_share() {
        let counts = ShardCounts { stock: 512, user: 0, product: 0, cart: 0, order: 0 };
        let before = nodes(3);
        let after = nodes(4);
        for s in counts.all() {
            let (b, a) = (assign(&before, s).expect("b"), assign(&after, s).expect("a"));
            assert!(a == b || a.as_str() == "n3", "shard {s} moved from {b} to {a}");
        }
    }

    #[test]
    fn lease_keys_round_trip() {
        let s = ShardId { kind: EntityKind::Stock, index: 42 };
        assert_eq!(parse_lease_key(&lease_key(s)), Some(s));
        assert_eq!(parse_lease_key("nope.1"), None);
    }
}
