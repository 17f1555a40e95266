//! The stock item entity actor.
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
use souk_messages::stock::{StockEvent, StockRequest, StockState, StockView};
use souk_messages::subject::EntityKind;
use souk_messages::{ErrorCode, Reply, ReplyError, Sku};
use souk_nats::AppendError;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// After this many fenced appends in a row the actor gives up and stops; the next command
/// starts a fresh one that reloads.
const MAX_FENCED_RETRIES: u32 = 5;
/// The most commands one append carries.
const MAX_BATCH: usize = 512;

/// The stock item actor; all its data lives in [`StockItemState`].
#[derive(Debug)]
pub struct StockItem;

/// Messages a stock item handles.
#[derive(Debug)]
pub enum StockItemMsg {
    /// A command from the bus, with the subject to reply to.
    Command(StockRequest, Option<Subject>),
    /// The in-flight append finished.
    AppendDone(Result<u64, AppendError>),
    /// Answer once nothing is queued or in flight (used before handing a shard off).
    Flush(RpcReplyPort<()>),
    /// Panic, to test supervision.
    #[cfg(test)]
    Panic,
}

/// What a stock item is started with.
#[derive(Debug)]
pub struct StockItemArgs {
    /// Its SKU.
    pub sku: Sku,
    /// Node-wide services.
    pub ctx: Arc<NodeContext>,
}

#[derive(Debug)]
struct Pending {
    reply_to: Option<Subject>,
    request: StockRequest,
    outcome: Result<StockView, ReplyError>,
}

#[derive(Debug, Default)]
struct Batch {
    commands: Vec<Pending>,
    events: Commit<StockEvent>,
}

/// A stock item's state in memory.
#[derive(Debug)]
pub struct StockItemState {
    sku: Sku,
    ctx: Arc<NodeContext>,
    confirmed: StockState,
    confirmed_seq: u64,
    speculative: StockState,
    inflight: Option<Batch>,
    next: Batch,
    commits_since_snapshot: u64,
    fenced_in_a_row: u32,
    flush_waiters: Vec<RpcReplyPort<()>>,
}

impl Actor for StockItem {
    type Msg = StockItemMsg;
    type State = StockItemState;
    type Arguments = StockItemArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<StockItemMsg>,
        args: StockItemArgs,
    ) -> Result<StockItemState, ActorProcessingErr> {
        // Loading happens in post_start, so spawning does not wait on I/O and many items of
        // one shard rehydrate in parallel. Commands queue in the mailbox meanwhile.
        Ok(StockItemState {
            sku: args.sku,
            ctx: args.ctx,
            confirmed: StockState::default(),
            confirmed_seq: 0,
            speculative: StockState::default(),
            inflight: None,
            next: Batch::default(),
            commits_since_snapshot: 0,
            fenced_in_a_row: 0,
            flush_waiters: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        _me: ActorRef<StockItemMsg>,
        st: &mut StockItemState,
    ) -> Result<(), ActorProcessingErr> {
        // Every await below is boxed: an actor's task is as large as the largest future it
        // holds, and most actors sit idle between commands, so only the in-progress step
        // should pay for the big I/O futures.
        Box::pin(st.reload()).await?;
        st.ctx.metrics.entity_started(EntityKind::Stock);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<StockItemMsg>,
        st: &mut StockItemState,
    ) -> Result<(), ActorProcessingErr> {
        st.ctx.metrics.entity_stopped(EntityKind::Stock);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<StockItemMsg>,
        msg: StockItemMsg,
        st: &mut StockItemState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StockItemMsg::Command(request, reply_to) => {
                st.decide(request, reply_to);
                Box::pin(st.flush(&me)).await;
            }
            StockItemMsg::AppendDone(result) => Box::pin(st.append_done(&me, result)).await?,
            StockItemMsg::Flush(port) => {
                st.flush_waiters.push(port);
                st.notify_if_idle();
            }
            #[cfg(test)]
            StockItemMsg::Panic => panic!("injected failure"),
        }
        Ok(())
    }
}

impl StockItemState {
    async fn reload(&mut self) -> Result<(), ActorProcessingErr> {
        let loaded = self.ctx.store.load::<StockState>(EntityKind::Stock, self.sku.as_str()).await?;
        self.confirmed = loaded.state;
        self.confirmed_seq = loaded.last_seq;
        self.speculative = self.confirmed.clone();
        self.commits_since_snapshot = loaded.replayed;
        Ok(())
    }

    /// Decides one command against the speculative state and queues it for the next commit.
    fn decide(&mut self, request: StockRequest, reply_to: Option<Subject>) {
        let outcome = match self.speculative.decide(&request.command) {
            Ok(events) => {
                for body in events {
                    self.speculative.apply(&body);
                    self.next.events.push(Event {
                        event_id: Uuid::now_v7(),
                        id: self.sku.to_string(),
                        version: self.speculative.version,
                        time: OffsetDateTime::now_utc(),
                        correlation_id: request.correlation_id.clone(),
                        body,
                    });
                }
                Ok(self.speculative.view(&self.sku))
            }
            Err(e) => Err(e),
        };
        self.next.commands.push(Pending { reply_to, request, outcome });
    }

    /// Starts the next append if none is in flight; answers at once what needs no append.
    async fn flush(&mut self, me: &ActorRef<StockItemMsg>) {
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
        let sku = self.sku.clone();
        let expected = self.confirmed_seq;
        let events = batch.events.clone();
        let me = me.clone();
        tokio::spawn(async move {
            let result = store.append(EntityKind::Stock, sku.as_str(), expected, &events).await;
            // The actor may have stopped meanwhile; then the result has nobody to tell.
            let _ = me.cast(StockItemMsg::AppendDone(result));
        });
        self.inflight = Some(batch);
    }

    /// Takes the first MAX_BATCH commands (and exactly their events) out of `next`.
    fn split_next(&mut self) -> Batch {
        let rest = self.next.commands.split_off(MAX_BATCH);
        let first = std::mem::replace(&mut self.next.commands, rest);
        let first_version = self.confirmed.version;
        let last_version = first
            .iter()
            .rev()
            .find_map(|p| p.outcome.as_ref().ok().map(|v| v.version))
            .unwrap_or(first_version);
        let cut = self.next.events.iter().take_while(|e| e.version <= last_version).count();
        let rest_events = self.next.events.split_off(cut);
        let events = std::mem::replace(&mut self.next.events, rest_events);
        Batch { commands: first, events }
    }

    async fn append_done(
        &mut self,
        me: &ActorRef<StockItemMsg>,
        result: Result<u64, AppendError>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(batch) = self.inflight.take() else { return Ok(()) };
        match result {
            Ok(seq) => self.confirm(batch, seq).await,
            Err(AppendError::Unknown(subject, e)) => {
                tracing::warn!(%subject, error = %e, "append outcome unknown; reloading");
                let ours = batch.events.first().map(|e| e.event_id);
                let loaded = self.ctx.store.load::<StockState>(EntityKind::Stock, self.sku.as_str()).await?;
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
                    return Err("stock item fenced repeatedly".into());
                }
                self.redecide(batch).await?;
            }
            Err(e @ (AppendError::Refused(..) | AppendError::Encode(_))) => {
                tracing::error!(sku = %self.sku, error = %e, "append refused");
                let later = std::mem::take(&mut self.next);
                self.answer_with(batch.commands, ErrorCode::Internal).await;
                self.decide_again(later.commands);
            }
        }
        self.flush(me).await;
        self.notify_if_idle();
        Ok(())
    }

    async fn confirm(&mut self, batch: Batch, seq: u64) {
        for e in &batch.events {
            self.confirmed.apply(&e.body);
        }
        self.confirmed_seq = seq;
        self.fenced_in_a_row = 0;
        self.commits_since_snapshot += 1;
        if self.commits_since_snapshot >= self.ctx.snapshot_every {
            self.commits_since_snapshot = 0;
            let store = self.ctx.store.clone();
            let (sku, state) = (self.sku.clone(), self.confirmed.clone());
            tokio::spawn(async move {
                store.save_snapshot(EntityKind::Stock, sku.as_str(), seq, &state).await;
            });
        }
        self.answer(batch.commands).await;
    }

    /// Reloads from the store and decides every unanswered command again, in order.
    async fn redecide(&mut self, batch: Batch) -> Result<(), ActorProcessingErr> {
        let later = std::mem::take(&mut self.next);
        self.reload().await?;
        self.decide_again(batch.commands.into_iter().chain(later.commands));
        Ok(())
    }

    /// Drops every speculative event and decides `commands` again, in order, on the confirmed
    /// state. `next` must already have been taken.
    fn decide_again(&mut self, commands: impl IntoIterator<Item = Pending>) {
        self.speculative = self.confirmed.clone();
        for p in commands {
            self.decide(p.request, p.reply_to);
        }
    }

    async fn fail_all(&mut self, batch: Batch, code: ErrorCode) {
        let later = std::mem::take(&mut self.next);
        let all: Vec<Pending> = batch.commands.into_iter().chain(later.commands).collect();
        self.answer_with(all, code).await;
    }

    async fn answer(&self, commands: Vec<Pending>) {
        for p in commands {
            if let Some(to) = p.reply_to {
                self.ctx.bus.reply(to, &Reply::from(p.outcome)).await;
            }
        }
    }

    async fn answer_with(&self, commands: Vec<Pending>, code: ErrorCode) {
        for p in commands {
            if let Some(to) = p.reply_to {
                let err = ReplyError::new(code, "the stock item could not store the change; retry");
                self.ctx.bus.reply::<StockView>(to, &Reply::Err(err)).await;
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
