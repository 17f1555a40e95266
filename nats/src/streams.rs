//! The JetStream stream and KV buckets Souk uses, declared here and created idempotently at
//! start-up by every node.

use async_nats::jetstream::{self, kv, stream};
use souk_messages::subject::Subjects;
use std::time::Duration;

/// The stream holding every entity's history.
pub const EVENTS_STREAM: &str = "SOUK_EVENTS";
/// Live nodes: key = node id, kept alive by heartbeats, expiring after the node TTL.
pub const NODES_BUCKET: &str = "souk_nodes";
/// Shard leases: key = `<kind>.<shard>`, renewed by their owner, expiring after the lease TTL.
pub const LEASES_BUCKET: &str = "souk_leases";
/// Entity snapshots: key = `<kind>.<id>`.
pub const SNAPSHOTS_BUCKET: &str = "souk_snapshots";
/// Cluster-wide settings every node must agree on, such as shard counts.
pub const CLUSTER_BUCKET: &str = "souk_cluster";

/// Provisioning parameters.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionSettings {
    /// Replicas of every stream and bucket: 1 for a single server, 3 for a cluster.
    pub replicas: usize,
    /// How long a node stays listed without a heartbeat.
    pub node_ttl: Duration,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
}

/// Handles to everything provisioned.
#[derive(Debug, Clone)]
pub struct Jet {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// `SOUK_EVENTS`.
    pub events: stream::Stream,
    /// Live nodes.
    pub nodes: kv::Store,
    /// Shard leases.
    pub leases: kv::Store,
    /// Snapshots.
    pub snapshots: kv::Store,
    /// Cluster settings.
    pub cluster: kv::Store,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The stream could not be created or updated.
    #[error("cannot provision stream {0}: {1}")]
    Stream(&'static str, #[source] crate::NatsSource),
    /// A bucket could not be created or updated.
    #[error("cannot provision KV bucket {0}: {1}")]
    Bucket(&'static str, #[source] crate::NatsSource),
}

/// Creates or updates the stream and buckets. Safe to run on every start of every node.
pub async fn provision(client: async_nats::Client, s: ProvisionSettings) -> Result<Jet, ProvisionError> {
    let js = jetstream::new(client);
    let config = stream::Config {
        name: EVENTS_STREAM.to_owned(),
        description: Some("Souk entity events: one subject per entity".to_owned()),
        subjects: vec![Subjects.all_events().to_owned()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        // Entity histories are the system of record: never age them out.
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .map_err(|e| ProvisionError::Stream(EVENTS_STREAM, Box::new(e)))?;
    let events =
        js.get_stream(EVENTS_STREAM).await.map_err(|e| ProvisionError::Stream(EVENTS_STREAM, Box::new(e)))?;
    let bucket = |name: &'static str, max_age: Duration, history: i64| {
        let js = js.clone();
        async move {
            js.create_or_update_key_value(kv::Config {
                bucket: name.to_owned(),
                history,
                max_age,
                num_replicas: s.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| ProvisionError::Bucket(name, Box::new(e)))
        }
    };
    let nodes = bucket(NODES_BUCKET, s.node_ttl, 1).await?;
    let leases = bucket(LEASES_BUCKET, s.lease_ttl, 1).await?;
    let snapshots = bucket(SNAPSHOTS_BUCKET, Duration::ZERO, 1).await?;
    let cluster = bucket(CLUSTER_BUCKET, Duration::ZERO, 1).await?;
    Ok(Jet { js, events, nodes, leases, snapshots, cluster })
}
