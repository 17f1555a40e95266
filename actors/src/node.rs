//! The node supervisor: keeps this node's heartbeat, decides which shards it should own,
//! takes and renews their leases, and starts or hands off their shard supervisors.

use crate::context::NodeContext;
use crate::shard::{ShardArgs, ShardMsg, ShardSupervisor};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use souk_messages::cart::CartState;
use souk_messages::order::OrderState;
use souk_messages::product::ProductState;
use souk_messages::stock::StockState;
use souk_messages::subject::{EntityKind, ShardCounts, ShardId};
use souk_messages::user::UserState;
use souk_nats::cluster::{Cluster, Lease, assign};
use souk_nats::health::Readiness;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The node supervisor.
#[derive(Debug)]
pub struct NodeSupervisor;

/// Messages the node supervisor handles.
#[derive(Debug)]
pub enum NodeMsg {
    /// Heartbeat, renew leases, rebalance.
    Tick,
    /// Leave the cluster: hand every shard off and release its lease.
    Leave(RpcReplyPort<()>),
}

/// What the node supervisor is started with.
#[derive(Debug)]
pub struct NodeArgs {
    /// Membership and leases.
    pub cluster: Cluster,
    /// Shard counts.
    pub shards: ShardCounts,
    /// How often to heartbeat, renew and rebalance.
    pub tick: Duration,
    /// Shared services.
    pub ctx: Arc<NodeContext>,
    /// Readiness, updated as leases settle.
    pub readiness: Readiness,
    /// How many nodes are live, for what they share (the notification providers' pace).
    pub members: tokio::sync::watch::Sender<usize>,
}

#[derive(Debug)]
struct Held {
    lease: Lease,
    actor: ActorRef<ShardMsg>,
}

/// The node supervisor's state.
#[derive(Debug)]
pub struct NodeState {
    args: NodeArgs,
    held: BTreeMap<ShardId, Held>,
    leaving: bool,
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        me: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        me.send_interval(args.tick, || NodeMsg::Tick);
        me.cast(NodeMsg::Tick)?;
        Ok(NodeState { args, held: BTreeMap::new(), leaving: false })
    }

    async fn handle(
        &self,
        me: ActorRef<NodeMsg>,
        msg: NodeMsg,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Tick if !st.leaving => st.tick(&me).await,
            NodeMsg::Tick => {}
            NodeMsg::Leave(port) => {
                st.leaving = true;
                st.args.readiness.set_leases_settled(false);
                // Without NATS the withdrawal and the lease releases would each wait out their
                // timeout and reach no one: the heartbeat and the leases expire by themselves.
                if !st.args.cluster.reachable() {
                    tracing::warn!("NATS unreachable: leaving without withdrawing; leases will expire");
                } else if let Err(e) = st.args.cluster.leave().await {
                    tracing::warn!(error = %e, "could not withdraw from membership");
                }
                let all = std::mem::take(&mut st.held);
                let cluster = &st.args.cluster;
                futures::future::join_all(all.into_iter().map(|(s, h)| handoff(cluster, s, h))).await;
                st.publish_counts();
                let _ = port.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        // A failed shard supervisor is started again at once under the lease it held.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            let failed = st.held.iter().find(|(_, h)| h.actor.get_id() == cell.get_id()).map(|(s, _)| *s);
            if let Some(shard) = failed {
                tracing::error!(%shard, error = %err, "shard supervisor failed; restarting it");
                match st.spawn_shard(&me, shard).await {
                    Ok(actor) => {
                        if let Some(h) = st.held.get_mut(&shard) {
                            h.actor = actor;
                        }
                    }
                    Err(e) => {
                        tracing::error!(%shard, error = %e, "shard supervisor restart failed; releasing");
                        if let Some(h) = st.held.remove(&shard) {
                            let _ = st.args.cluster.release(&h.lease).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl NodeState {
    async fn tick(&mut self, me: &ActorRef<NodeMsg>) {
        let cluster = self.args.cluster.clone();
        // Each call below would wait out its timeout for a reconnect, holding up the next
        // message (a leave on shutdown among them); the next tick tries again.
        if !cluster.reachable() {
            tracing::debug!("NATS unreachable; skipping this tick");
            return;
        }
        let (beat, ()) = futures::join!(cluster.heartbeat(), self.renew_all());
        if let Err(e) = beat {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        let nodes = match cluster.live_nodes().await {
            Ok(n) if !n.is_empty() => n,
            Ok(_) => vec![cluster.node().clone()],
            Err(e) => {
                tracing::warn!(error = %e, "cannot list live nodes; keeping current shards");
                return;
            }
        };
        self.args.members.send_if_modified(|n| std::mem::replace(n, nodes.len()) != nodes.len());
        let me_id = cluster.node();
        let desired: BTreeSet<ShardId> =
            self.args.shards.all().filter(|s| assign(&nodes, *s) == Some(me_id)).collect();
        // Hand off what now belongs elsewhere first, so its new owner can take it sooner.
        let surplus: Vec<ShardId> = self.held.keys().filter(|s| !desired.contains(s)).copied().collect();
        let surplus: Vec<(ShardId, Held)> =
            surplus.into_iter().filter_map(|s| self.held.remove(&s).map(|h| (s, h))).collect();
        let handed_off = surplus.len();
        futures::future::join_all(surplus.into_iter().map(|(s, h)| handoff(&cluster, s, h))).await;
        let wanted: Vec<ShardId> = desired.iter().filter(|s| !self.held.contains_key(s)).copied().collect();
        let tries = futures::future::join_all(wanted.iter().map(|s| cluster.acquire(*s))).await;
        let mut took = 0;
        for (shard, result) in wanted.into_iter().zip(tries) {
            match result {
                Ok(Some(lease)) => match self.spawn_shard(me, shard).await {
                    Ok(actor) => {
                        tracing::debug!(%shard, epoch = lease.epoch, "took shard");
                        self.held.insert(shard, Held { lease, actor });
                        took += 1;
                    }
                    Err(e) => {
                        tracing::error!(%shard, error = %e, "cannot start shard; releasing its lease");
                        let _ = cluster.release(&lease).await;
                    }
                },
                Ok(None) => {} // still held by its previous owner, until it hands off or expires
                Err(e) => tracing::warn!(%shard, error = %e, "lease acquisition failed"),
            }
        }
        let settled = desired.iter().all(|s| self.held.contains_key(s));
        // One line per change of ownership, not one per shard: a node holds hundreds.
        if took > 0 || handed_off > 0 {
            tracing::info!(
                took,
                handed_off,
                held = self.held.len(),
                nodes = nodes.len(),
                settled,
                "shards moved"
            );
        }
        self.args.readiness.set_leases_settled(settled);
        self.publish_counts();
    }

    async fn renew_all(&mut self) {
        let cluster = self.args.cluster.clone();
        let mut leases: Vec<(ShardId, Lease)> =
            self.held.iter().map(|(s, h)| (*s, h.lease.clone())).collect();
        let results = futures::future::join_all(leases.iter_mut().map(|(_, l)| cluster.renew(l))).await;
        for ((shard, lease), result) in leases.into_iter().zip(results) {
            match result {
                Ok(true) => {
                    if let Some(h) = self.held.get_mut(&shard) {
                        h.lease = lease;
                    }
                }
                Ok(false) => {
                    // Someone else owns it now: stop serving at once, without a hand-off.
                    tracing::warn!(%shard, "lease lost; stopping shard");
                    if let Some(h) = self.held.remove(&shard) {
                        h.actor.stop(Some("lease lost".into()));
                    }
                }
                Err(e) => tracing::warn!(%shard, error = %e, "lease renewal failed; will retry"),
            }
        }
    }

    async fn spawn_shard(
        &self,
        me: &ActorRef<NodeMsg>,
        shard: ShardId,
    ) -> Result<ActorRef<ShardMsg>, ActorProcessingErr> {
        let args = ShardArgs { shard, ctx: self.args.ctx.clone() };
        let cell = me.get_cell();
        let (actor, _) = match shard.kind {
            EntityKind::Stock => {
                Actor::spawn_linked(None, ShardSupervisor::<StockState>::new(), args, cell).await?
            }
            EntityKind::User => {
                Actor::spawn_linked(None, ShardSupervisor::<UserState>::new(), args, cell).await?
            }
            EntityKind::Product => {
                Actor::spawn_linked(None, ShardSupervisor::<ProductState>::new(), args, cell).await?
            }
            EntityKind::Cart => {
                Actor::spawn_linked(None, ShardSupervisor::<CartState>::new(), args, cell).await?
            }
            EntityKind::Order => {
                Actor::spawn_linked(None, ShardSupervisor::<OrderState>::new(), args, cell).await?
            }
            EntityKind::Notification => return Err("notifications have no shards".into()),
        };
        Ok(actor)
    }

    fn publish_counts(&self) {
        let owned = self.held.keys().copied().collect();
        *self.args.ctx.owned_shards.write().unwrap_or_else(std::sync::PoisonError::into_inner) = owned;
        for kind in EntityKind::ALL {
            let n = self.held.keys().filter(|s| s.kind == kind).count();
            self.args.ctx.metrics.set_shards(kind, n);
        }
    }
}

/// Stops a shard gracefully (its entities answer what they took) and releases its lease.
async fn handoff(cluster: &Cluster, shard: ShardId, h: Held) {
    let _ = h.actor.call(ShardMsg::Handoff, Some(Duration::from_secs(10))).await;
    h.actor.stop(Some("handed off".into()));
    if !cluster.reachable() {
        tracing::debug!(%shard, "NATS unreachable; the lease will expire");
    } else if let Err(e) = cluster.release(&h.lease).await {
        tracing::warn!(%shard, error = %e, "lease release failed; it will expire");
    }
    tracing::debug!(%shard, "handed shard off");
}
