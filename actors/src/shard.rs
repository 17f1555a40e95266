//! A shard supervisor: serves one shard's command subject, starts its entity actors on
//! first use, stops idle ones, and forgets crashed ones so their next command starts them
//! afresh from their history.

use crate::context::NodeContext;
use crate::entity::{EntityActor, EntityArgs, EntityMsg};
use futures::StreamExt as _;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use souk_messages::subject::ShardId;
use souk_messages::{Entity, ErrorCode, Reply, ReplyError, Request};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long a hand-off waits for entities to finish what they started.
const HANDOFF_GRACE: Duration = Duration::from_secs(5);

/// The supervisor of one shard of entity kind `E`.
#[derive(Debug)]
pub struct ShardSupervisor<E>(PhantomData<fn() -> E>);

impl<E> ShardSupervisor<E> {
    /// The supervisor behaviour.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<E> Default for ShardSupervisor<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages a shard supervisor handles.
#[derive(Debug)]
pub enum ShardMsg {
    /// A raw command from the shard's subject.
    Command(async_nats::Message),
    /// Stop entities that have been idle too long.
    Sweep,
    /// Stop taking commands and wait until every entity has answered what it took.
    Handoff(RpcReplyPort<()>),
    /// Make an entity panic, to test supervision.
    #[cfg(test)]
    Crash(String),
}

/// What a shard supervisor is started with.
#[derive(Debug)]
pub struct ShardArgs {
    /// The shard.
    pub shard: ShardId,
    /// Node-wide services.
    pub ctx: Arc<NodeContext>,
}

#[derive(Debug)]
struct Entry<E: Entity> {
    actor: ActorRef<EntityMsg<E>>,
    last_used: Instant,
}

/// A shard supervisor's state.
#[derive(Debug)]
pub struct ShardState<E: Entity> {
    shard: ShardId,
    ctx: Arc<NodeContext>,
    entities: HashMap<E::Id, Entry<E>>,
    by_actor: HashMap<ActorId, E::Id>,
    intake: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
}

impl<E: Entity> Actor for ShardSupervisor<E> {
    type Msg = ShardMsg;
    type State = ShardState<E>;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState<E>, ActorProcessingErr> {
        let mut sub = args.ctx.bus.serve_shard(args.shard).await?;
        let intake_me = me.clone();
        let metrics = args.ctx.metrics.clone();
        let intake = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                metrics.queued(E::KIND, 1);
                if intake_me.cast(ShardMsg::Command(msg)).is_err() {
                    metrics.queued(E::KIND, -1);
                    break;
                }
            }
        });
        let sweeper = me.send_interval(args.ctx.idle_after / 2, || ShardMsg::Sweep);
        tracing::info!(shard = %args.shard, "serving shard");
        Ok(ShardState {
            shard: args.shard,
            ctx: args.ctx,
            entities: HashMap::new(),
            by_actor: HashMap::new(),
            intake: Some(intake),
            sweeper: Some(sweeper),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ShardMsg>,
        st: &mut ShardState<E>,
    ) -> Result<(), ActorProcessingErr> {
        st.stop_intake();
        if let Some(s) = st.sweeper.take() {
            s.abort();
        }
        for e in st.entities.values() {
            e.actor.stop(Some("shard stopped".into()));
        }
        tracing::info!(shard = %st.shard, "shard stopped");
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState<E>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Command(msg) => {
                st.ctx.metrics.queued(E::KIND, -1);
                st.route(&me, msg).await;
            }
            ShardMsg::Sweep => st.sweep(),
            ShardMsg::Handoff(port) => {
                st.stop_intake();
                let flushes =
                    st.entities.values().map(|e| e.actor.call(EntityMsg::Flush, Some(HANDOFF_GRACE)));
                futures::future::join_all(flushes).await;
                let _ = port.send(());
            }
            #[cfg(test)]
            ShardMsg::Crash(id) => {
                if let Some(e) = st.entities.iter().find(|(k, _)| E::id_str(k) == id).map(|(_, e)| e) {
                    let _ = e.actor.cast(EntityMsg::Panic);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<ShardMsg>,
        evt: SupervisionEvent,
        st: &mut ShardState<E>,
    ) -> Result<(), ActorProcessingErr> {
        // ractor's default is to fail along with a failed child; a shard instead forgets the
        // child, whose next command starts a fresh actor that rehydrates from its history.
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = st.forget(cell.get_id()) {
                    st.ctx.metrics.entity_crashed(E::KIND);
                    tracing::warn!(kind = %E::KIND, %id, error = %err, "entity failed; it restarts on its next command");
                }
            }
            SupervisionEvent::ActorTerminated(cell, ..) => {
                st.forget(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

impl<E: Entity> ShardState<E> {
    async fn route(&mut self, me: &ActorRef<ShardMsg>, msg: async_nats::Message) {
        let trace = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .and_then(|v| souk_messages::log::trace_id_of(v.as_str()).map(str::to_owned));
        let span = tracing::info_span!("command", kind = %E::KIND, trace_id = tracing::field::Empty, correlation_id = tracing::field::Empty);
        if let Some(t) = &trace {
            span.record("trace_id", t.as_str());
        }
        tracing::Instrument::instrument(self.dispatch(me, msg), span).await;
    }

    async fn dispatch(&mut self, me: &ActorRef<ShardMsg>, msg: async_nats::Message) {
        let request: Request<E> = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                if let Some(to) = msg.reply {
                    let err = ReplyError::new(ErrorCode::InvalidBody, format!("malformed command: {e}"));
                    self.ctx.bus.reply::<E::View>(to, &Reply::Err(err)).await;
                }
                return;
            }
        };
        if let Some(c) = &request.correlation_id {
            tracing::Span::current().record("correlation_id", c.as_str());
        }
        let id = request.id.clone();
        let actor = match self.entities.get_mut(&id) {
            Some(entry) => {
                entry.last_used = Instant::now();
                entry.actor.clone()
            }
            None => {
                let args = EntityArgs { id: id.clone(), ctx: self.ctx.clone() };
                match Actor::spawn_linked(None, EntityActor::<E>::new(), args, me.get_cell()).await {
                    Ok((actor, _)) => {
                        self.by_actor.insert(actor.get_id(), id.clone());
                        self.entities.insert(id, Entry { actor: actor.clone(), last_used: Instant::now() });
                        actor
                    }
                    Err(e) => {
                        tracing::error!(kind = %E::KIND, %id, error = %e, "cannot start entity");
                        return;
                    }
                }
            }
        };
        self.ctx.metrics.queued(E::KIND, 1);
        if let Err(e) = actor.cast(EntityMsg::Command(request, msg.reply)) {
            self.ctx.metrics.queued(E::KIND, -1);
            // The actor is stopping; the caller's retry reaches a fresh one.
            tracing::debug!(error = %e, "command to a stopping entity dropped");
        }
    }

    fn sweep(&mut self) {
        let idle_after = self.ctx.idle_after;
        let idle: Vec<E::Id> = self
            .entities
            .iter()
            .filter(|(_, e)| e.last_used.elapsed() >= idle_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            if let Some(e) = self.entities.remove(&id) {
                self.by_actor.remove(&e.actor.get_id());
                e.actor.stop(Some("passivated".into()));
            }
        }
    }

    fn forget(&mut self, actor: ActorId) -> Option<E::Id> {
        let id = self.by_actor.remove(&actor)?;
        self.entities.remove(&id);
        Some(id)
    }

    fn stop_intake(&mut self) {
        // Dropping the subscriber inside the task unsubscribes from the shard's subject.
        if let Some(t) = self.intake.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ActorMetrics;
    use prometheus_client::registry::Registry;
    use souk_messages::Sku;
    use souk_messages::stock::{Quantity, StockCommand, StockRequest, StockState, StockView};
    use souk_messages::subject::{EntityKind, ShardCounts};
    use souk_nats::metrics::StoreMetrics;
    use souk_nats::streams::ProvisionSettings;
    use souk_nats::{Bus, BusError, ConnectSettings, EventStore};
    use souk_testkit::{NatsServer, eventually};

    struct Harness {
        bus: Bus,
        shard: ActorRef<ShardMsg>,
        registry: Registry,
        _nats: NatsServer,
    }

    async fn harness(idle_after: Duration) -> Harness {
        let nats = NatsServer::start();
        let settings =
            ConnectSettings { urls: vec![nats.url().to_owned()], name: "t".into(), ..Default::default() };
        let client = souk_nats::connect(&settings, Duration::from_secs(5)).await.expect("connect");
        let ttl = Duration::from_secs(5);
        let jet = souk_nats::provision(
            client.clone(),
            ProvisionSettings {
                replicas: 1,
                node_ttl: ttl,
                lease_ttl: ttl,
                session_ttl: ttl,
                log_max_age: ttl,
                log_max_bytes: 1 << 24,
            },
        )
        .await
        .expect("provision");
        let mut registry = Registry::default();
        let shards = ShardCounts { stock: 1, user: 1, product: 1, cart: 1, order: 1 };
        let bus = Bus::new(client, shards, Duration::from_secs(5));
        let ctx = Arc::new(NodeContext {
            bus: bus.clone(),
            store: EventStore::new(jet, StoreMetrics::unregistered()),
            metrics: ActorMetrics::register(&mut registry),
            snapshot_every: 3,
            idle_after,
            owned_shards: std::sync::RwLock::default(),
        });
        let shard = ShardId { kind: EntityKind::Stock, index: 0 };
        let (shard, _) = Actor::spawn(None, ShardSupervisor::<StockState>::new(), ShardArgs { shard, ctx })
            .await
            .expect("spawn shard");
        Harness { bus, shard, registry, _nats: nats }
    }

    async fn send(bus: &Bus, sku: &str, command: StockCommand) -> Result<StockView, BusError> {
        bus.request(&StockRequest::new(Sku::parse(sku).expect("sku"), command)).await
    }

    fn restock(n: i64) -> StockCommand {
        StockCommand::Restock { quantity: Quantity::try_from(n).expect("qty") }
    }

    fn metric(registry: &Registry, line_start: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[tokio::test]
    async fn a_crashed_entity_comes_back_with_its_state_and_its_neighbours_never_notice() {
        let h = harness(Duration::from_secs(300)).await;
        for i in 0..5 {
            send(&h.bus, "CRASHY", restock(1 + i)).await.expect("restock");
        }
        send(&h.bus, "STEADY", restock(7)).await.expect("restock");
        h.shard.cast(ShardMsg::Crash("CRASHY".into())).expect("cast");
        eventually("the crash to be recorded", Duration::from_secs(5), || async {
            (metric(&h.registry, "souk_actor_crashes_total{kind=\"stock\"}")? >= 1.0).then_some(())
        })
        .await;

        // The shard is still serving, the neighbour kept its state, and the crashed entity
        // rehydrates (snapshot plus later commits) on its next command.
        assert_eq!(send(&h.bus, "STEADY", StockCommand::Get).await.expect("get").on_hand, 7);
        let back = send(&h.bus, "CRASHY", StockCommand::Get).await.expect("get");
        assert_eq!((back.on_hand, back.version), (15, 5));
        assert_eq!(send(&h.bus, "CRASHY", restock(1)).await.expect("restock").on_hand, 16);
    }

    #[tokio::test]
    async fn idle_entities_are_passivated_and_rehydrate_on_demand() {
        let h = harness(Duration::from_millis(300)).await;
        send(&h.bus, "IDLE-1", restock(4)).await.expect("restock");
        assert_eq!(metric(&h.registry, "souk_live_actors{kind=\"stock\"}"), Some(1.0));
        eventually("the idle entity to stop", Duration::from_secs(5), || async {
            (metric(&h.registry, "souk_live_actors{kind=\"stock\"}")? == 0.0).then_some(())
        })
        .await;
        assert_eq!(send(&h.bus, "IDLE-1", StockCommand::Get).await.expect("get").on_hand, 4);
    }
}
