//! Souk's write side: the ractor supervision tree that owns entities, and the projectors
//! that turn their events into read models.
//!
//! Depends on `souk-messages`, `souk-nats` and `souk-storage`; never on the edge.
//!
//! # Layout
//! - [`node`]: the node supervisor: heartbeats, shard leases, rebalancing.
//! - [`shard`]: a shard actor: serves the shard's subject, hosts its entities.
//! - [`entity`]: an entity's state machine, generic over the kind (stock item, user, …).
//! - [`projector`]: the read-model projectors; [`log_store`]: the central log store's.
//! - [`follow`]: stock items follow the catalog's variants.
//! - [`expiry`]: held reservations lapse when their time is up.
//! - [`saga`]: the checkout saga's driver; [`payments`]: the payment providers it calls.
//! - [`notify`]: notification planners, channel actors, providers, the dead-letter stream.
//! - [`context`] and [`metrics`]: what the actors share.
//!
//! ```text
//! NodeSupervisor ──▶ ShardSupervisor<Stock>(stock.0) ∋ Hosted<Stock>(SKU-1), …
//!                ──▶ ShardSupervisor<User>(user.5)   ∋ Hosted<User>(usr-…), …
//! ```

pub mod context;
pub mod entity;
pub mod expiry;
pub mod follow;
pub mod log_store;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod payments;
pub mod projector;
mod restart;
pub mod saga;
pub mod shard;

use context::NodeContext;
use metrics::ActorMetrics;
use node::{NodeArgs, NodeMsg, NodeSupervisor};
use ractor::{Actor, ActorRef};
use souk_messages::subject::ShardCounts;
use souk_nats::cluster::Cluster;
use souk_nats::health::Readiness;
use souk_nats::{Bus, EventStore, Jet};
use souk_storage::ReadModels;
use std::sync::Arc;
use std::time::Duration;

/// How a node's actors behave.
#[derive(Debug, Clone)]
pub struct ActorSettings {
    /// Shard counts.
    pub shards: ShardCounts,
    /// How often to heartbeat, renew leases and rebalance.
    pub tick: Duration,
    /// Write a snapshot after this many commits of one entity.
    pub snapshot_every: u64,
    /// Forget entities idle this long (they reload on their next command).
    pub idle_after: Duration,
    /// Appended to each projector's durable consumer name (`souk_proj_<kind><suffix>`):
    /// the node id for a per-node database, empty for a shared one.
    pub projector_suffix: String,
    /// The checkout saga's deadlines.
    pub saga: saga::SagaSettings,
    /// How long the central log store keeps records.
    pub log_retention: Duration,
}

/// Why a node's actors could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The supervision tree did not start.
    #[error(transparent)]
    Spawn(#[from] ractor::SpawnErr),
    /// Notifications did not start.
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    /// The read models could not be checked against the streams, or emptied.
    #[error("read models: {0}")]
    ReadModels(#[from] projector::ProjectorError),
    /// A shared read-model database is ahead of the streams; other nodes read it too, so
    /// an operator empties it.
    #[error("{0}; the shared read-model database must be emptied (or a new one used) before nodes start")]
    SharedReadModelsAhead(projector::Ahead),
}

/// A running actor system. Call [`Node::leave`] before dropping it to hand shards off.
#[derive(Debug)]
pub struct Node {
    supervisor: ActorRef<NodeMsg>,
    handle: tokio::task::JoinHandle<()>,
    /// Projectors, the catalog follower, the expiry sweeper and the checkout saga driver.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_tasks: tokio::sync::watch::Sender<bool>,
    notifier: notify::Notifier,
}

/// Everything the actors need from the process that hosts them.
#[derive(Debug)]
pub struct NodeDeps {
    /// Provisioned JetStream resources.
    pub jet: Jet,
    /// Request/reply.
    pub bus: Bus,
    /// Entity histories.
    pub store: EventStore,
    /// Membership and leases.
    pub cluster: Cluster,
    /// The read models.
    pub read_models: ReadModels,
    /// Readiness to update.
    pub readiness: Readiness,
    /// Actor metrics.
    pub metrics: ActorMetrics,
    /// The payment provider the checkout saga calls.
    pub payments: Arc<dyn payments::PaymentGateway>,
    /// How notifications are sent.
    pub notify: notify::NotifySettings,
}

impl Node {
    /// Starts the node supervisor (which takes this node's shards), the projectors, the
    /// catalog follower and the expiry sweeper.
    pub async fn start(settings: ActorSettings, deps: NodeDeps) -> Result<Self, StartError> {
        if let Some(ahead) = projector::ahead_of_streams(&deps.jet, &deps.read_models).await?.first() {
            if settings.projector_suffix.is_empty() {
                return Err(StartError::SharedReadModelsAhead(ahead.clone()));
            }
            // This node's own database is a cache of the streams: rebuild it from them.
            tracing::warn!(%ahead, "emptying this node's read models to rebuild them from the streams");
            deps.read_models.clear().await.map_err(projector::ProjectorError::Storage)?;
        }
        let ctx = Arc::new(NodeContext {
            bus: deps.bus.clone(),
            store: deps.store,
            metrics: deps.metrics,
            snapshot_every: settings.snapshot_every.max(1),
            idle_after: settings.idle_after,
            owned_shards: std::sync::RwLock::default(),
        });
        let (members, live_members) = tokio::sync::watch::channel(1);
        let args = NodeArgs {
            cluster: deps.cluster,
            shards: settings.shards,
            tick: settings.tick,
            ctx: ctx.clone(),
            readiness: deps.readiness,
            members,
        };
        let (supervisor, handle) = Actor::spawn(None, NodeSupervisor, args).await?;
        let suffix = settings.projector_suffix;
        let (stop_tasks, stop) = tokio::sync::watch::channel(false);
        let notifier = notify::Notifier::start(
            &deps.jet,
            &deps.bus,
            deps.read_models.users.clone(),
            ctx.metrics.clone(),
            deps.notify,
            live_members,
            &stop,
        )
        .await?;
        let saga_metrics = ctx.metrics.clone();
        let tasks = vec![
            tokio::spawn(expiry::run(ctx, deps.read_models.stock.clone(), deps.bus.clone(), stop.clone())),
            tokio::spawn(projector::run(
                deps.jet.clone(),
                deps.read_models.stock,
                suffix.clone(),
                stop.clone(),
            )),
            tokio::spawn(projector::run(
                deps.jet.clone(),
                deps.read_models.users,
                suffix.clone(),
                stop.clone(),
            )),
            tokio::spawn(projector::run(
                deps.jet.clone(),
                deps.read_models.catalog,
                suffix.clone(),
                stop.clone(),
            )),
            tokio::spawn(projector::run(
                deps.jet.clone(),
                deps.read_models.orders,
                suffix.clone(),
                stop.clone(),
            )),
            tokio::spawn(projector::run(
                deps.jet.clone(),
                deps.read_models.notifications,
                suffix.clone(),
                stop.clone(),
            )),
            tokio::spawn(log_store::run(
                deps.jet.clone(),
                deps.read_models.logs,
                suffix,
                settings.log_retention,
                stop.clone(),
            )),
            tokio::spawn(saga::run(
                deps.jet.clone(),
                deps.bus.clone(),
                deps.payments,
                settings.saga,
                saga_metrics,
                stop.clone(),
            )),
            tokio::spawn(follow::run(deps.jet, deps.bus, stop)),
        ];
        Ok(Self { supervisor, handle, tasks, stop_tasks, notifier })
    }

    /// Leaves the cluster gracefully: every shard finishes what it took, hands off and
    /// releases its lease; then the actors stop. The whole leave shares one deadline
    /// ([`LEAVE_BUDGET`]) so it fits an orchestrator's grace period whatever step is slow;
    /// what has not finished by then is cut when the process exits.
    pub async fn leave(mut self) {
        let deadline = tokio::time::Instant::now() + LEAVE_BUDGET;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = self.supervisor.call(NodeMsg::Leave, Some(left())).await {
            tracing::warn!(error = %e, "graceful leave did not finish");
        }
        // Projectors finish the batch they are writing, so no database transaction is cut.
        let _ = self.stop_tasks.send(true);
        for t in self.tasks.into_iter().chain(self.notifier.tasks.drain(..)) {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("a background task did not stop before the leave's deadline");
            }
        }
        self.notifier.stop();
        self.supervisor.stop(Some("node leaving".into()));
        // The actors get a moment even when the budget is spent: stopping them is local.
        let grace = left().max(Duration::from_secs(1));
        if tokio::time::timeout(grace, self.handle).await.is_err() {
            tracing::warn!("the actors did not stop before the leave's deadline");
        }
    }
}

/// How long a graceful leave may take in all. With the HTTP drain before it (at most
/// `request_timeout`) and the database close after it, a stop fits the 45 s grace period
/// `k8s/` and `compose.yaml` give a node.
pub const LEAVE_BUDGET: Duration = Duration::from_secs(20);
