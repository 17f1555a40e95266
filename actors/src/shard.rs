//! A shard actor: serves one shard's command subject and hosts its entities as state machines
//! ([`crate::entity`]). It loads an entity on its first command, forgets idle ones, and
//! forgets one whose step panicked, so its next command loads it afresh from its history.
//!
//! Entities are not actors of their own: a ractor actor costs about 6.5 KiB before any state
//! (a task, four channels and a cell), which would put 100,000 resident stock items near
//! 650 MiB. Hosted in their shard, an idle entity costs its state and a map slot.

use crate::context::NodeContext;
use crate::entity::{After, Done, Host, Hosted, Outcome};
use async_nats::Subject;
use futures::FutureExt as _;
use futures::StreamExt as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use souk_messages::subject::ShardId;
use souk_messages::{Entity, ErrorCode, Reply, ReplyError, Request};
use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The actor of one shard of entity kind `E`.
#[derive(Debug)]
pub struct ShardSupervisor<E>(PhantomData<fn() -> E>);

impl<E> ShardSupervisor<E> {
    /// The actor behaviour.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<E> Default for ShardSupervisor<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages a shard actor handles. One type for every kind, so the node supervisor can hold
/// shards of every kind side by side; what is kind-specific travels type-erased in [`Typed`].
#[derive(Debug)]
pub enum ShardMsg {
    /// A decoded command from the shard's subject.
    Command(Typed),
    /// A load or append an entity asked for has finished.
    Done(Typed),
    /// Forget entities that have been idle too long.
    Sweep,
    /// Stop taking commands and answer once every entity has answered what it took.
    Handoff(RpcReplyPort<()>),
    /// Make an entity panic, to test isolation.
    #[cfg(test)]
    Crash(String),
}

/// A message for the shard of one entity kind: a command or a finished load or append.
pub struct Typed(Box<dyn Any + Send>);

impl Typed {
    pub(crate) fn new<T: Any + Send>(inner: T) -> Self {
        Self(Box::new(inner))
    }

    /// The message, if it is for a shard of this type; never otherwise, since each shard only
    /// receives what it or its own tasks sent.
    fn take<T: Any>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Typed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Typed")
    }
}

/// A command, decoded.
struct Incoming<E: Entity> {
    request: Request<E>,
    reply_to: Option<Subject>,
    trace_id: Option<String>,
}

impl<E: Entity> Incoming<E> {
    /// Decodes a command; a malformed one is answered here and yields `None`.
    async fn decode(ctx: &NodeContext, msg: async_nats::Message) -> Option<Self> {
        match serde_json::from_slice::<Request<E>>(&msg.payload) {
            Ok(request) => {
                let trace_id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("traceparent"))
                    .and_then(|v| souk_messages::log::trace_id_of(v.as_str()).map(str::to_owned));
                Some(Self { request, reply_to: msg.reply, trace_id })
            }
            Err(e) => {
                if let Some(to) = msg.reply {
                    let err = ReplyError::new(ErrorCode::InvalidBody, format!("malformed command: {e}"));
                    ctx.bus.reply::<E::View>(to, &Reply::Err(err)).await;
                }
                None
            }
        }
    }
}

/// What a shard actor is started with.
#[derive(Debug)]
pub struct ShardArgs {
    /// The shard.
    pub shard: ShardId,
    /// Node-wide services.
    pub ctx: Arc<NodeContext>,
}

/// One step of an entity, run with panics contained.
enum Step<E: Entity> {
    Command(Request<E>, Option<Subject>),
    Done(Outcome<E>),
    #[cfg(test)]
    Panic,
}

/// A shard actor's state.
#[derive(Debug)]
pub struct ShardState<E: Entity> {
    shard: ShardId,
    ctx: Arc<NodeContext>,
    entities: HashMap<E::Id, Hosted<E>>,
    incarnations: u64,
    handoff: Vec<RpcReplyPort<()>>,
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
        let ctx = args.ctx.clone();
        // Commands are decoded here, beside the shard rather than in it, so a busy shard's
        // decoding and deciding run on both cores.
        let intake = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(incoming) = Incoming::<E>::decode(&ctx, msg).await else { continue };
                ctx.metrics.queued(E::KIND, 1);
                if intake_me.cast(ShardMsg::Command(Typed::new(incoming))).is_err() {
                    ctx.metrics.queued(E::KIND, -1);
                    break;
                }
            }
        });
        let sweeper = me.send_interval(args.ctx.idle_after / 2, || ShardMsg::Sweep);
        tracing::debug!(shard = %args.shard, "serving shard");
        Ok(ShardState {
            shard: args.shard,
            ctx: args.ctx,
            entities: HashMap::new(),
            incarnations: 0,
            handoff: Vec::new(),
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
        for _ in st.entities.drain().filter(|(_, e)| e.is_started()) {
            st.ctx.metrics.entity_stopped(E::KIND);
        }
        tracing::debug!(shard = %st.shard, "shard stopped");
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState<E>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Command(typed) => {
                st.ctx.metrics.queued(E::KIND, -1);
                if let Some(incoming) = typed.take::<Incoming<E>>() {
                    st.route(&me, incoming).await;
                }
            }
            ShardMsg::Done(typed) => {
                if let Some(Done { id, incarnation, outcome }) = typed.take::<Done<E>>()
                    && st.entities.get(&id).is_some_and(|e| e.incarnation() == incarnation)
                {
                    st.step(&me, id, Step::Done(outcome)).await;
                }
                st.answer_handoff();
            }
            ShardMsg::Sweep => st.sweep(),
            ShardMsg::Handoff(port) => {
                st.stop_intake();
                st.handoff.push(port);
                st.answer_handoff();
            }
            #[cfg(test)]
            ShardMsg::Crash(id) => {
                if let Some(id) = st.entities.keys().find(|k| E::id_str(k) == id).cloned() {
                    st.step(&me, id, Step::Panic).await;
                }
            }
        }
        Ok(())
    }
}

impl<E: Entity> ShardState<E> {
    async fn route(&mut self, me: &ActorRef<ShardMsg>, incoming: Incoming<E>) {
        let span = tracing::info_span!("command", kind = %E::KIND, trace_id = tracing::field::Empty, correlation_id = tracing::field::Empty);
        if let Some(t) = &incoming.trace_id {
            span.record("trace_id", t.as_str());
        }
        if let Some(c) = &incoming.request.correlation_id {
            span.record("correlation_id", c.as_str());
        }
        tracing::Instrument::instrument(self.dispatch(me, incoming), span).await;
    }

    async fn dispatch(&mut self, me: &ActorRef<ShardMsg>, incoming: Incoming<E>) {
        let id = incoming.request.id.clone();
        if !self.entities.contains_key(&id) {
            self.incarnations += 1;
            let host = Host { ctx: &self.ctx, shard: me };
            self.entities.insert(id.clone(), Hosted::start(id.clone(), self.incarnations, &host));
        }
        self.step(me, id, Step::Command(incoming.request, incoming.reply_to)).await;
    }

    /// Runs one step of an entity. A panic drops only that entity: its waiting callers are
    /// told to retry, and its next command loads it afresh.
    async fn step(&mut self, me: &ActorRef<ShardMsg>, id: E::Id, step: Step<E>) {
        let Some(entity) = self.entities.get_mut(&id) else { return };
        let host = Host { ctx: &self.ctx, shard: me };
        let run = async {
            match step {
                Step::Command(request, reply_to) => {
                    entity.command(&host, request, reply_to).await;
                    After::Keep
                }
                Step::Done(outcome) => entity.done(&host, outcome).await,
                #[cfg(test)]
                Step::Panic => panic!("injected failure"),
            }
        };
        let after = AssertUnwindSafe(run).catch_unwind().await;
        let after = match after {
            Ok(a) => a,
            Err(_) => {
                self.ctx.metrics.entity_crashed(E::KIND);
                tracing::warn!(kind = %E::KIND, %id, "entity failed; it reloads on its next command");
                if let Some(e) = self.entities.get_mut(&id) {
                    let host = Host { ctx: &self.ctx, shard: me };
                    e.abandon(&host).await;
                }
                After::Drop
            }
        };
        if after == After::Drop {
            self.forget(&id);
        }
    }

    fn forget(&mut self, id: &E::Id) {
        if self.entities.remove(id).is_some_and(|e| e.is_started()) {
            self.ctx.metrics.entity_stopped(E::KIND);
        }
    }

    fn sweep(&mut self) {
        let idle_after = self.ctx.idle_after;
        let idle: Vec<E::Id> = self
            .entities
            .iter()
            .filter(|(_, e)| e.is_idle() && e.last_used.elapsed() >= idle_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.forget(&id);
        }
    }

    /// Tells a waiting hand-off that every entity has answered what it took.
    fn answer_handoff(&mut self) {
        if !self.handoff.is_empty() && self.entities.values().all(Hosted::is_idle) {
            for port in self.handoff.drain(..) {
                let _ = port.send(());
            }
        }
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
    use std::time::Duration;

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
