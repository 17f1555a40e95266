//! The JetStream stream and KV buckets Souk uses, declared here and created idempotently at
//! start-up by every node.

use async_nats::jetstream::{self, kv, stream};
use souk_messages::subject::{EntityKind, Subjects};
use std::time::Duration;

/// The one stream that held every kind's histories before they were split by kind. A cluster
/// that has it keeps using it for every kind (its streams cannot overlap with new ones).
pub const LEGACY_EVENTS_STREAM: &str = "SOUK_EVENTS";

/// The stream holding `kind`'s entity histories: `SOUK_EVENTS_<KIND>`.
pub fn events_stream(kind: EntityKind) -> String {
    format!("SOUK_EVENTS_{}", kind.as_str().to_uppercase())
}

/// The streams of entity histories, one per kind: with `nats_sync = always` each stream's
/// writes wait for its own fsync, and the disk does several of those at once, so kinds
/// written together (a checkout touches carts, orders, stock and notifications) no longer
/// queue behind one another. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStreams {
    /// One per kind of [`EntityKind::WITH_HISTORY`], in that order.
    by_kind: Vec<stream::Stream>,
    /// Whether every kind is in the legacy single stream.
    legacy: bool,
}

impl EventStreams {
    /// The stream holding `kind`'s histories.
    pub fn of(&self, kind: EntityKind) -> &stream::Stream {
        // Exhaustive, so a new kind cannot silently share another kind's stream; the order is
        // that of `EntityKind::WITH_HISTORY`, in which `by_kind` is built.
        let slot = match kind {
            EntityKind::Stock => 0,
            EntityKind::User => 1,
            EntityKind::Product => 2,
            EntityKind::Cart => 3,
            EntityKind::Order => 4,
            EntityKind::Notification => 5,
        };
        &self.by_kind[slot]
    }

    /// Each stream once.
    pub fn all(&self) -> &[stream::Stream] {
        if self.legacy { &self.by_kind[..1] } else { &self.by_kind }
    }
}
/// Notifications waiting to be sent: a work queue, one subject per channel.
pub const NOTIFY_STREAM: &str = "SOUK_NOTIFY";
/// Notifications that failed for the last time, kept for an operator to retry.
pub const DLQ_STREAM: &str = "SOUK_DLQ";
/// Notification delivery claims: key = notification id, value = where its delivery stands.
/// What makes a notification go out at most once.
pub const NOTIFY_CLAIMS_BUCKET: &str = "souk_notify_claims";
/// How long a delivery claim is remembered: longer than any notification stays queued.
pub const NOTIFY_CLAIM_TTL: Duration = Duration::from_secs(8 * 24 * 3600);
/// Webhook endpoints: key = endpoint id, value = the endpoint with its signing secret.
pub const ENDPOINTS_BUCKET: &str = "souk_webhook_endpoints";
/// Log records of every node, size- and age-limited.
pub const LOGS_STREAM: &str = "SOUK_LOGS";
/// Live nodes: key = node id, kept alive by heartbeats, expiring after the node TTL.
pub const NODES_BUCKET: &str = "souk_nodes";
/// Shard leases: key = `<kind>.<shard>`, renewed by their owner, expiring after the lease TTL.
pub const LEASES_BUCKET: &str = "souk_leases";
/// Entity snapshots: key = `<kind>.<id>`.
pub const SNAPSHOTS_BUCKET: &str = "souk_snapshots";
/// Cluster-wide settings every node must agree on, such as shard counts.
pub const CLUSTER_BUCKET: &str = "souk_cluster";
/// Email claims: key = the hex of a normalised address, value = the user who owns it.
pub const EMAILS_BUCKET: &str = "souk_emails";
/// Password hashes: key = user id. Kept out of the event stream on purpose.
pub const CREDENTIALS_BUCKET: &str = "souk_credentials";
/// Refresh-token families: key = family id, expiring after the refresh-token lifetime.
pub const SESSIONS_BUCKET: &str = "souk_sessions";
/// Product slug claims: key = slug, value = the product that owns it.
pub const SLUGS_BUCKET: &str = "souk_slugs";
/// SKU claims: key = SKU, value = the product whose variant it is.
pub const SKUS_BUCKET: &str = "souk_skus";
/// Login failure counters per account and per client address, expiring after an hour.
pub const THROTTLE_BUCKET: &str = "souk_throttle";
/// Checkout idempotency keys: key = digest of customer and key, value = the order it made.
pub const CHECKOUTS_BUCKET: &str = "souk_checkouts";
/// How long a checkout's `Idempotency-Key` is remembered.
pub const CHECKOUT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Payment-provider webhook signatures seen, to refuse replays; kept past the tolerance.
pub const WEBHOOKS_BUCKET: &str = "souk_webhooks";
/// How long a webhook signature is remembered: longer than any accepted timestamp's age.
pub const WEBHOOK_MEMORY: Duration = Duration::from_secs(15 * 60);
/// How long a login-failure counter lives without a new failure.
pub const THROTTLE_TTL: Duration = Duration::from_secs(3600);

/// Provisioning parameters.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionSettings {
    /// Replicas of every stream and bucket: 1 for a single server, 3 for a cluster.
    pub replicas: usize,
    /// How long a node stays listed without a heartbeat.
    pub node_ttl: Duration,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How long a refresh-token family lives after its last rotation.
    pub session_ttl: Duration,
    /// How long `SOUK_LOGS` keeps a record.
    pub log_max_age: Duration,
    /// The most bytes `SOUK_LOGS` holds; the oldest records go first.
    pub log_max_bytes: i64,
}

/// Handles to everything provisioned.
#[derive(Debug, Clone)]
pub struct Jet {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// `SOUK_EVENTS_<KIND>`, one per kind.
    pub events: EventStreams,
    /// Live nodes.
    pub nodes: kv::Store,
    /// Shard leases.
    pub leases: kv::Store,
    /// Snapshots.
    pub snapshots: kv::Store,
    /// Cluster settings.
    pub cluster: kv::Store,
    /// Email claims.
    pub emails: kv::Store,
    /// Password hashes.
    pub credentials: kv::Store,
    /// Refresh-token families.
    pub sessions: kv::Store,
    /// Login failure counters.
    pub throttle: kv::Store,
    /// Product slug claims.
    pub slugs: kv::Store,
    /// SKU claims.
    pub skus: kv::Store,
    /// Checkout idempotency keys.
    pub checkouts: kv::Store,
    /// Webhook signatures seen.
    pub webhooks: kv::Store,
    /// `SOUK_NOTIFY`.
    pub notify: stream::Stream,
    /// `SOUK_DLQ`.
    pub dead_letters: stream::Stream,
    /// Notification delivery claims.
    pub notify_claims: kv::Store,
    /// Webhook endpoints.
    pub endpoints: kv::Store,
    /// `SOUK_LOGS`.
    pub logs: stream::Stream,
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The stream could not be created or updated.
    #[error("cannot provision stream {0}: {1}")]
    Stream(String, #[source] crate::NatsSource),
    /// A bucket could not be created or updated.
    #[error("cannot provision KV bucket {0}: {1}")]
    Bucket(&'static str, #[source] crate::NatsSource),
}

/// Creates or updates the stream and buckets. Safe to run on every start of every node.
pub async fn provision(client: async_nats::Client, s: ProvisionSettings) -> Result<Jet, ProvisionError> {
    let js = jetstream::new(client);
    let events = event_streams(&js, Some(s.replicas)).await?;
    js.create_or_update_stream(stream::Config {
        name: NOTIFY_STREAM.to_owned(),
        description: Some("Souk notifications waiting to be sent".to_owned()),
        subjects: vec![Subjects.notify_all().to_owned()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        retention: stream::RetentionPolicy::WorkQueue,
        // Planning the same event twice within the window queues it once.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| ProvisionError::Stream(NOTIFY_STREAM.to_owned(), Box::new(e)))?;
    let notify = js
        .get_stream(NOTIFY_STREAM)
        .await
        .map_err(|e| ProvisionError::Stream(NOTIFY_STREAM.to_owned(), Box::new(e)))?;
    js.create_or_update_stream(stream::Config {
        name: DLQ_STREAM.to_owned(),
        description: Some("Souk notifications that could not be delivered".to_owned()),
        subjects: vec![Subjects.dead_letters_all().to_owned()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * 24 * 3600),
        ..Default::default()
    })
    .await
    .map_err(|e| ProvisionError::Stream(DLQ_STREAM.to_owned(), Box::new(e)))?;
    let dead_letters = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| ProvisionError::Stream(DLQ_STREAM.to_owned(), Box::new(e)))?;
    js.create_or_update_stream(stream::Config {
        name: LOGS_STREAM.to_owned(),
        description: Some("Souk log records of every node".to_owned()),
        subjects: vec![Subjects.logs_all().to_owned()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: s.log_max_age,
        max_bytes: s.log_max_bytes,
        ..Default::default()
    })
    .await
    .map_err(|e| ProvisionError::Stream(LOGS_STREAM.to_owned(), Box::new(e)))?;
    let logs = js
        .get_stream(LOGS_STREAM)
        .await
        .map_err(|e| ProvisionError::Stream(LOGS_STREAM.to_owned(), Box::new(e)))?;
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
    let emails = bucket(EMAILS_BUCKET, Duration::ZERO, 1).await?;
    let credentials = bucket(CREDENTIALS_BUCKET, Duration::ZERO, 1).await?;
    let sessions = bucket(SESSIONS_BUCKET, s.session_ttl, 1).await?;
    let throttle = bucket(THROTTLE_BUCKET, THROTTLE_TTL, 1).await?;
    let slugs = bucket(SLUGS_BUCKET, Duration::ZERO, 1).await?;
    let skus = bucket(SKUS_BUCKET, Duration::ZERO, 1).await?;
    let checkouts = bucket(CHECKOUTS_BUCKET, CHECKOUT_KEY_TTL, 1).await?;
    let webhooks = bucket(WEBHOOKS_BUCKET, WEBHOOK_MEMORY, 1).await?;
    let notify_claims = bucket(NOTIFY_CLAIMS_BUCKET, NOTIFY_CLAIM_TTL, 1).await?;
    let endpoints = bucket(ENDPOINTS_BUCKET, Duration::ZERO, 1).await?;
    Ok(Jet {
        js,
        events,
        nodes,
        leases,
        snapshots,
        cluster,
        emails,
        credentials,
        sessions,
        throttle,
        slugs,
        skus,
        checkouts,
        webhooks,
        notify,
        dead_letters,
        notify_claims,
        endpoints,
        logs,
    })
}

/// The entity-history streams: the legacy single stream where it exists, else one per kind,
/// created or updated with `replicas` when given (a node), only looked up when not (a tool).
async fn event_streams(
    js: &jetstream::Context,
    replicas: Option<usize>,
) -> Result<EventStreams, ProvisionError> {
    if let Ok(legacy) = js.get_stream(LEGACY_EVENTS_STREAM).await {
        let by_kind = EntityKind::WITH_HISTORY.iter().map(|_| legacy.clone()).collect();
        return Ok(EventStreams { by_kind, legacy: true });
    }
    let mut by_kind = Vec::with_capacity(EntityKind::WITH_HISTORY.len());
    for kind in EntityKind::WITH_HISTORY {
        let name = events_stream(kind);
        let failed = |e: crate::NatsSource| ProvisionError::Stream(name.clone(), e);
        if let Some(replicas) = replicas {
            js.create_or_update_stream(stream::Config {
                name: name.clone(),
                description: Some(format!("Souk {kind} histories: one subject per entity")),
                subjects: vec![Subjects.kind_events(kind)],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                // Entity histories are the system of record: never age them out.
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::New,
                allow_direct: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| failed(Box::new(e)))?;
        }
        by_kind.push(js.get_stream(&name).await.map_err(|e| failed(Box::new(e)))?);
    }
    Ok(EventStreams { by_kind, legacy: false })
}

/// Binds to a cluster's stream and buckets without changing them: for command-line tools,
/// whose settings (TTLs, replicas) need not match the nodes' and must not overwrite them.
pub async fn attach(client: async_nats::Client) -> Result<Jet, ProvisionError> {
    let js = jetstream::new(client);
    let events = event_streams(&js, None).await?;
    let bucket = |name: &'static str| {
        let js = js.clone();
        async move { js.get_key_value(name).await.map_err(|e| ProvisionError::Bucket(name, Box::new(e))) }
    };
    Ok(Jet {
        events,
        nodes: bucket(NODES_BUCKET).await?,
        leases: bucket(LEASES_BUCKET).await?,
        snapshots: bucket(SNAPSHOTS_BUCKET).await?,
        cluster: bucket(CLUSTER_BUCKET).await?,
        emails: bucket(EMAILS_BUCKET).await?,
        credentials: bucket(CREDENTIALS_BUCKET).await?,
        sessions: bucket(SESSIONS_BUCKET).await?,
        throttle: bucket(THROTTLE_BUCKET).await?,
        slugs: bucket(SLUGS_BUCKET).await?,
        skus: bucket(SKUS_BUCKET).await?,
        checkouts: bucket(CHECKOUTS_BUCKET).await?,
        webhooks: bucket(WEBHOOKS_BUCKET).await?,
        notify: js
            .get_stream(NOTIFY_STREAM)
            .await
            .map_err(|e| ProvisionError::Stream(NOTIFY_STREAM.to_owned(), Box::new(e)))?,
        dead_letters: js
            .get_stream(DLQ_STREAM)
            .await
            .map_err(|e| ProvisionError::Stream(DLQ_STREAM.to_owned(), Box::new(e)))?,
        notify_claims: bucket(NOTIFY_CLAIMS_BUCKET).await?,
        endpoints: bucket(ENDPOINTS_BUCKET).await?,
        logs: js
            .get_stream(LOGS_STREAM)
            .await
            .map_err(|e| ProvisionError::Stream(LOGS_STREAM.to_owned(), Box::new(e)))?,
        js,
    })
}
