//! The entity actor, generic over the entity kind: every kind (stock item, user, …) gets the
//! same command handling from this one runtime.
//!
//! Commands are decided one by one against a speculative state (confirmed state plus every
//! event not yet stored), and stored in group commits: while one append is in flight, new
//! commands queue up and go out together in the next append. A hot SKU therefore costs one
//! JetStream round trip per batch, not per command, and never oversells, because every
//! decision sees every earlier one. Replies are sent only once the events behind them are
//! stored.

use crate::context::NodeContext;
use async_nats::Subject;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use souk_messages::event::{Commit, Event};
use souk_messages::{Entity, ErrorCode, Reply, ReplyError, Request};
use souk_nats::AppendError;
use std::marker::PhantomData;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// After this many fenced appends in a row the actor gives up and stops; the next command
/// starts a fresh one that reloads.
const MAX_FENCED_RETRIES: u32 = 5;
/// The most commands one append carries.
const MAX_BATCH: usize = 512;

/// The actor of one entity of kind `E`; all its data lives in [`EntityState`].
#[derive(Debug)]
pub struct EntityActor<E>(PhantomData<fn() -> E>);

impl<E> EntityActor<E> {
    /// The actor behaviour.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<E> Default for EntityActor<E> {
    fn default() -> Self {
        Self::new()
    }
}

/// Messages an entity actor handles.
#[derive(Debug)]
pub enum EntityMsg<E: Entity> {
    /// A command from the bus, with the subject to reply to.
    Command(Request<E>, Option<Subject>),
    /// The in-flight append finished.
    AppendDone(Result<u64, AppendError>),
    /// Answer once nothing is queued or in flight (used before handing a shard off).
    Flush(RpcReplyPort<()>),
    /// Panic, to test supervision.
    #[cfg(test)]
    Panic,
}

/// What an entity actor is started with.
#[derive(Debug)]
pub struct EntityArgs<E: Entity> {
    /// The entity's id.
    pub id: E::Id,
    /// Node-wide services.
    pub ctx: Arc<NodeContext>,
}

#[derive(Debug)]
struct Pending<E: Entity> {
    reply_to: Option<Subject>,
    request: Request<E>,
    outcome: Result<E::View, ReplyError>,
    /// The speculative version once this command was decided.
    version: u64,
}

#[derive(Debug)]
struct Batch<E: Entity> {
    commands: Vec<Pending<E>>,
    events: Commit<E::Event>,
}

impl<E: Entity> Default for Batch<E> {
    fn default() -> Self {
        Self { commands: Vec::new(), events: Vec::new() }
    }
}

/// An entity's state in memory.
#[derive(Debug)]
pub struct EntityState<E: Entity> {
    id: E::Id,
    ctx: Arc<NodeContext>,
    confirmed: E,
    confirmed_seq: u64,
    speculative: E,
    inflight: Option<Batch<E>>,
    next: Batch<E>,
    commits_since_snapshot: u64,
    fenced_in_a_row: u32,
    flush_waiters: Vec<RpcReplyPort<()>>,
}

impl<E: Entity> Actor for EntityActor<E> {
    type Msg = EntityMsg<E>;
    type State = EntityState<E>;
    type Arguments = EntityArgs<E>;

    async fn pre_start(
        &self,
        _me: ActorRef<EntityMsg<E>>,
        args: EntityArgs<E>,
    ) -> Result<EntityState<E>, ActorProcessingErr> {
        // Loading happens in post_start, so spawning does not wait on I/O and many items of
        // one shard rehydrate in parallel. Commands queue in the mailbox meanwhile.
        Ok(EntityState {
            id: args.id,
            ctx: args.ctx,
            confirmed: E::default(),
            confirmed_seq: 0,
            speculative: E::default(),
            inflight: None,
            next: Batch::default(),
            commits_since_snapshot: 0,
            fenced_in_a_row: 0,
            flush_waiters: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        _me: ActorRef<EntityMsg<E>>,
        st: &mut EntityState<E>,
    ) -> Result<(), ActorProcessingErr> {
        // Every await below is boxed: an actor's task is as large as the largest future it
        // holds, and most actors sit idle between commands, so only the in-progress step
        // should pay for the big I/O futures.
        Box::pin(st.reload()).await?;
        st.ctx.metrics.entity_started(E::KIND);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<EntityMsg<E>>,
        st: &mut EntityState<E>,
    ) -> Result<(), ActorProcessingErr> {
        st.ctx.metrics.entity_stopped(E::KIND);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<EntityMsg<E>>,
        msg: EntityMsg<E>,
        st: &mut EntityState<E>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EntityMsg::Command(request, reply_to) => {
                st.ctx.metrics.queued(E::KIND, -1);
                st.decide(request, reply_to);
                Box::pin(st.flush(&me)).await;
            }
            EntityMsg::AppendDone(result) => Box::pin(st.append_done(&me, result)).await?,
            EntityMsg::Flush(port) => {
                st.flush_waiters.push(port);
                st.notify_if_idle();
            }
            #[cfg(test)]
            EntityMsg::Panic => panic!("injected failure"),
        }
        Ok(())
    }
}

impl<E: Entity> EntityState<E> {
    async fn reload(&mut self) -> Result<(), ActorProcessingErr> {
        let loaded = self.ctx.store.load::<E>(E::KIND, E::id_str(&self.id)).await?;
        self.confirmed = loaded.state;
        self.confirmed_seq = loaded.last_seq;
        self.speculative = self.confirmed.clone();
        self.commits_since_snapshot = loaded.replayed;
        Ok(())
    }

    /// Decides one command against the speculative state and queues it for the next commit.
    fn decide(&mut self, request: Request<E>, reply_to: Option<Subject>) {
        let now = OffsetDateTime::now_utc();
        let outcome = match self.speculative.decide(&self.id, &request.command, now) {
            Ok(events) => {
                for body in events {
                    self.speculative.apply(&body);
                    self.next.events.push(Event {
                        event_id: Uuid::now_v7(),
                        id: self.id.to_string(),
                        version: self.speculative.version(),
                        time: now,
                        correlation_id: request.correlation_id.clone(),
                        body,
                    });
                }
                Ok(self.speculative.view(&self.id))
            }
            Err(e) => Err(e),
        };
        let version = self.speculative.version();
        self.next.commands.push(Pending { reply_to, request, outcome, version });
    }

    /// Starts the next append if none is in flight; answers at once what needs no append.
    async fn flush(&mut self, me: &ActorRef<EntityMsg<E>>) {
        if self.inflight.is_some() || self.next.commands.is_empty() {
            return;
        }
        if self.next.events.is_empty() {
            // Reads and rejections decided on confirmed state: nothing to store.
            let batch = std::mem::take(&mut self.next);
            self.answer(batch.commands).await;
            self.notify_if_idle();
            return;
        }
        let batch = if self.next.commands.len() > MAX_BATCH {
            self.split_next()
        } else {
            std::mem::take(&mut self.next)
        };
        let store = self.ctx.store.clone();
        let id = self.id.clone();
        let expected = self.confirmed_seq;
        let events = batch.events.clone();
        let me = me.clone();
        tokio::spawn(async move {
            let result = store.append(E::KIND, E::id_str(&id), expected, &events).await;
            // The actor may have stopped meanwhile; then the result has nobody to tell.
            let _ = me.cast(EntityMsg::AppendDone(result));
        });
        self.inflight = Some(batch);
    }

    /// Takes the first MAX_BATCH commands (and exactly their events) out of `next`.
    fn split_next(&mut self) -> Batch<E> {
        let rest = self.next.commands.split_off(MAX_BATCH);
        let first = std::mem::replace(&mut self.next.commands, rest);
        let first_version = self.confirmed.version();
        let last_version = first
            .iter()
            .rev()
            .find_map(|p| p.outcome.as_ref().ok().map(|_| p.version))
            .unwrap_or(first_version);
        let cut = self.next.events.iter().take_while(|e| e.version <= last_version).count();
        let rest_events = self.next.events.split_off(cut);
        let events = std::mem::replace(&mut self.next.events, rest_events);
        Batch { commands: first, events }
    }

    async fn append_done(
        &mut self,
        me: &ActorRef<EntityMsg<E>>,
        result: Result<u64, AppendError>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(batch) = self.inflight.take() else { return Ok(()) };
        match result {
            Ok(seq) => self.confirm(batch, seq).await,
            Err(AppendError::Unknown(subject, e)) => {
                tracing::warn!(%subject, error = %e, "append outcome unknown; reloading");
                let ours = batch.events.first().map(|e| e.event_id);
                let loaded = self.ctx.store.load::<E>(E::KIND, E::id_str(&self.id)).await?;
                if loaded.last_commit.is_some() && loaded.last_commit == ours {
                    self.confirm(batch, loaded.last_seq).await;
                } else {
                    self.redecide(batch).await?;
                }
            }
            Err(AppendError::Conflict(subject, expected)) => {
                // Another writer got there first (a shard moving between nodes): take its
                // history and decide our commands again on top of it.
                tracing::info!(%subject, expected, "append fenced; reloading and deciding again");
                self.fenced_in_a_row += 1;
                if self.fenced_in_a_row > MAX_FENCED_RETRIES {
                    self.fail_all(batch, ErrorCode::Unavailable).await;
                    return Err(format!("{} {} fenced repeatedly", E::KIND, self.id).into());
                }
                self.redecide(batch).await?;
            }
            Err(e @ (AppendError::Refused(..) | AppendError::Encode(_))) => {
                tracing::error!(kind = %E::KIND, id = %self.id, error = %e, "append refused");
                let later = std::mem::take(&mut self.next);
                self.answer_with(batch.commands, ErrorCode::Internal).await;
                self.decide_again(later.commands);
            }
        }
        self.flush(me).await;
        self.notify_if_idle();
        Ok(())
    }

    async fn confirm(&mut self, batch: Batch<E>, seq: u64) {
        for e in &batch.events {
            self.confirmed.apply(&e.body);
        }
        self.confirmed_seq = seq;
        self.fenced_in_a_row = 0;
        self.commits_since_snapshot += 1;
        if self.commits_since_snapshot >= self.ctx.snapshot_every {
            self.commits_since_snapshot = 0;
            let store = self.ctx.store.clone();
            let (id, state) = (self.id.clone(), self.confirmed.clone());
            tokio::spawn(async move {
                store.save_snapshot(E::KIND, E::id_str(&id), seq, &state).await;
            });
        }
        self.answer(batch.commands).await;
    }

    /// Reloads from the store and decides every unanswered command again, in order.
    async fn redecide(&mut self, batch: Batch<E>) -> Result<(), ActorProcessingErr> {
        let later = std::mem::take(&mut self.next);
        self.reload().await?;
        self.decide_again(batch.commands.into_iter().chain(later.commands));
        Ok(())
    }

    /// Drops every speculative event and decides `commands` again, in order, on the confirmed
    /// state. `next` must already have been taken.
    fn decide_again(&mut self, commands: impl IntoIterator<Item = Pending<E>>) {
        self.speculative = self.confirmed.clone();
        for p in commands {
            self.decide(p.request, p.reply_to);
        }
    }

    async fn fail_all(&mut self, batch: Batch<E>, code: ErrorCode) {
        let later = std::mem::take(&mut self.next);
        let all: Vec<Pending<E>> = batch.commands.into_iter().chain(later.commands).collect();
        self.answer_with(all, code).await;
    }

    async fn answer(&self, commands: Vec<Pending<E>>) {
        for p in commands {
            if let Some(to) = p.reply_to {
                self.ctx.bus.reply(to, &Reply::from(p.outcome)).await;
            }
        }
    }

    async fn answer_with(&self, commands: Vec<Pending<E>>, code: ErrorCode) {
        for p in commands {
            if let Some(to) = p.reply_to {
                let err = ReplyError::new(code, "the change could not be stored; retry");
                self.ctx.bus.reply::<E::View>(to, &Reply::Err(err)).await;
            }
        }
    }

    fn notify_if_idle(&mut self) {
        if self.inflight.is_none() && self.next.commands.is_empty() {
            for port in self.flush_waiters.drain(..) {
                let _ = port.send(());
            }
        }
    }
}
