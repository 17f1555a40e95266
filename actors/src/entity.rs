//! One entity's state machine, generic over the kind: every kind (stock item, user, …) gets the
//! same command handling from this one runtime. Entities live inside their shard actor
//! ([`crate::shard`]), which feeds them commands and the outcomes of the I/O they ask for.
//!
//! Commands are decided one by one against a speculative state (confirmed state plus every
//! event not yet stored), and stored in group commits: while one append is in flight, new
//! commands queue up and go out together in the next append. A hot SKU therefore costs one
//! JetStream round trip per batch, not per command, and never oversells, because every
//! decision sees every earlier one. Replies are sent only once the events behind them are
//! stored.
//!
//! Nothing here awaits storage: loads and appends run as tasks whose outcomes come back to the
//! shard as [`Done`] messages, so one entity waiting on JetStream never holds up its neighbours.

use crate::context::NodeContext;
use crate::shard::{ShardMsg, Typed};
use async_nats::Subject;
use ractor::ActorRef;
use souk_messages::event::{Commit, Event};
use souk_messages::{Entity, ErrorCode, Reply, ReplyError, Request};
use souk_nats::{AppendError, Loaded, StoreError};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use uuid::Uuid;

/// After this many fenced appends in a row the entity gives up and is dropped; the next
/// command loads it afresh.
const MAX_FENCED_RETRIES: u32 = 5;
/// The most commands one append carries.
const MAX_BATCH: usize = 512;

/// The outcome of I/O an entity asked for, addressed to one incarnation of it.
#[derive(Debug)]
pub(crate) struct Done<E: Entity> {
    pub(crate) id: E::Id,
    /// The incarnation that asked; an outcome for an earlier one (dropped meanwhile) is ignored.
    pub(crate) incarnation: u64,
    pub(crate) outcome: Outcome<E>,
}

/// What finished.
#[derive(Debug)]
pub(crate) enum Outcome<E: Entity> {
    Loaded(Result<Loaded<E>, StoreError>),
    Appended(Result<u64, AppendError>),
}

/// What the shard does with an entity after a step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    Keep,
    /// Forget it: its next command loads it afresh.
    Drop,
}

/// What an entity needs from its shard to do I/O.
pub(crate) struct Host<'a> {
    pub(crate) ctx: &'a Arc<NodeContext>,
    pub(crate) shard: &'a ActorRef<ShardMsg>,
}

impl Host<'_> {
    fn send<E: Entity>(shard: &ActorRef<ShardMsg>, done: Done<E>) {
        // The shard may have stopped meanwhile; then the outcome has nobody to tell.
        let _ = shard.cast(ShardMsg::Done(Typed::new(done)));
    }
}

/// A command waiting for the entity's history to load.
#[derive(Debug)]
struct Queued<E: Entity> {
    request: Request<E>,
    reply_to: Option<Subject>,
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

/// Why the history is being (re)loaded.
#[derive(Debug)]
enum Loading<E: Entity> {
    /// First command since the entity was last in memory.
    Start,
    /// An append's outcome was unknown: was this batch stored?
    Unknown(Batch<E>),
    /// An append was fenced: decide this batch again on the stored history.
    Fenced(Batch<E>),
}

/// An entity in memory. Kept small: a shard may hold a hundred thousand of them, and an idle
/// one is its id, two copies of its state and empty queues.
#[derive(Debug)]
pub(crate) struct Hosted<E: Entity> {
    id: E::Id,
    incarnation: u64,
    confirmed: E,
    confirmed_seq: u64,
    /// The confirmed state plus every event not yet stored. Kept beside `confirmed` rather
    /// than cloned from it when needed: a hot item's state (its reservations) is large.
    speculative: E,
    inflight: Option<Batch<E>>,
    next: Batch<E>,
    loading: Option<Loading<E>>,
    /// Commands that arrived while loading, in order.
    waiting: Vec<Queued<E>>,
    commits_since_snapshot: u64,
    fenced_in_a_row: u32,
    /// Whether it loaded, so counts as live.
    started: bool,
    pub(crate) last_used: Instant,
}

impl<E: Entity> Hosted<E> {
    /// A new incarnation, which starts loading its history at once.
    pub(crate) fn start(id: E::Id, incarnation: u64, host: &Host<'_>) -> Self {
        let me = Self {
            id,
            incarnation,
            confirmed: E::default(),
            confirmed_seq: 0,
            speculative: E::default(),
            inflight: None,
            next: Batch::default(),
            loading: Some(Loading::Start),
            waiting: Vec::new(),
            commits_since_snapshot: 0,
            fenced_in_a_row: 0,
            started: false,
            last_used: Instant::now(),
        };
        me.load(host);
        me
    }

    /// Whether nothing is queued, loading or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.inflight.is_none()
            && self.next.commands.is_empty()
            && self.loading.is_none()
            && self.waiting.is_empty()
    }

    /// Which incarnation this is.
    pub(crate) const fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether it counts as a live entity (it loaded).
    pub(crate) const fn is_started(&self) -> bool {
        self.started
    }

    /// Takes a command: decides it now, or queues it while the history loads.
    pub(crate) async fn command(&mut self, host: &Host<'_>, request: Request<E>, reply_to: Option<Subject>) {
        self.last_used = Instant::now();
        if self.loading.is_some() {
            self.waiting.push(Queued { request, reply_to });
            return;
        }
        self.decide(request, reply_to);
        self.flush(host).await;
    }

    /// Takes the outcome of a load or an append.
    pub(crate) async fn done(&mut self, host: &Host<'_>, outcome: Outcome<E>) -> After {
        match outcome {
            Outcome::Loaded(result) => self.loaded(host, result).await,
            Outcome::Appended(result) => self.appended(host, result).await,
        }
    }

    /// Answers everything it holds with `unavailable`, before it is dropped after a failure.
    pub(crate) async fn abandon(&mut self, host: &Host<'_>) {
        let mut all: Vec<(Option<Subject>, Request<E>)> = Vec::new();
        if let Some(b) = self.inflight.take() {
            all.extend(b.commands.into_iter().map(|p| (p.reply_to, p.request)));
        }
        if let Some(Loading::Unknown(b) | Loading::Fenced(b)) = self.loading.take() {
            all.extend(b.commands.into_iter().map(|p| (p.reply_to, p.request)));
        }
        all.extend(std::mem::take(&mut self.next).commands.into_iter().map(|p| (p.reply_to, p.request)));
        all.extend(self.waiting.drain(..).map(|q| (q.reply_to, q.request)));
        let err = ReplyError::new(ErrorCode::Unavailable, "the change could not be stored; retry");
        for (to, _) in all {
            if let Some(to) = to {
                host.ctx.bus.reply::<E::View>(to, &Reply::Err(err.clone())).await;
            }
        }
    }

    fn load(&self, host: &Host<'_>) {
        let (ctx, shard) = (host.ctx.clone(), host.shard.clone());
        let (id, incarnation) = (self.id.clone(), self.incarnation);
        tokio::spawn(async move {
            let result = ctx.store.load::<E>(E::KIND, E::id_str(&id)).await;
            Host::send::<E>(&shard, Done { id, incarnation, outcome: Outcome::Loaded(result) });
        });
    }

    async fn loaded(&mut self, host: &Host<'_>, result: Result<Loaded<E>, StoreError>) -> After {
        let Some(why) = self.loading.take() else { return After::Keep };
        let loaded = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind = %E::KIND, id = %self.id, error = %e, "entity history not loaded");
                self.loading = Some(why);
                self.abandon(host).await;
                return After::Drop;
            }
        };
        match why {
            Loading::Start => {
                self.started = true;
                host.ctx.metrics.entity_started(E::KIND);
                self.take(loaded);
            }
            Loading::Unknown(batch) => {
                let ours = batch.events.first().map(|e| e.event_id);
                if loaded.last_commit.is_some() && loaded.last_commit == ours {
                    // Stored after all: `next` was decided on top of it and still holds.
                    self.confirm(host, batch, loaded.last_seq).await;
                } else {
                    self.take(loaded);
                    self.decide_again(batch.commands);
                }
            }
            Loading::Fenced(batch) => {
                self.take(loaded);
                self.decide_again(batch.commands);
            }
        }
        for q in std::mem::take(&mut self.waiting) {
            self.decide(q.request, q.reply_to);
        }
        self.flush(host).await;
        After::Keep
    }

    /// Adopts a loaded history as the confirmed state.
    fn take(&mut self, loaded: Loaded<E>) {
        self.speculative = loaded.state.clone();
        self.confirmed = loaded.state;
        self.confirmed_seq = loaded.last_seq;
        self.commits_since_snapshot = loaded.replayed;
    }

    /// Decides one command against the speculative state and queues it for the next commit.
    fn decide(&mut self, request: Request<E>, reply_to: Option<Subject>) {
        let now = OffsetDateTime::now_utc();
        let outcome = match self.speculative.decide(&self.id, &request.command, now) {
            Ok(events) => {
                for body in events {
                    self.speculative.apply_at(&body, now);
                    self.next.events.push(Event {
                        event_id: Uuid::now_v7(),
                        id: self.id.to_string(),
                        version: self.speculative.version(),
                        time: now,
                        correlation_id: request.correlation_id.clone(),
                        actor: request.actor.clone(),
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
    async fn flush(&mut self, host: &Host<'_>) {
        if self.inflight.is_some() || self.loading.is_some() || self.next.commands.is_empty() {
            return;
        }
        if self.next.events.is_empty() {
            // Reads and rejections decided on confirmed state: nothing to store.
            let batch = std::mem::take(&mut self.next);
            Self::answer(host, batch.commands);
            return;
        }
        let batch = if self.next.commands.len() > MAX_BATCH {
            self.split_next()
        } else {
            std::mem::take(&mut self.next)
        };
        let (ctx, shard) = (host.ctx.clone(), host.shard.clone());
        let (id, incarnation, expected) = (self.id.clone(), self.incarnation, self.confirmed_seq);
        let events = batch.events.clone();
        tokio::spawn(async move {
            let result = ctx.store.append(E::KIND, E::id_str(&id), expected, &events).await;
            Host::send::<E>(&shard, Done { id, incarnation, outcome: Outcome::Appended(result) });
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

    async fn appended(&mut self, host: &Host<'_>, result: Result<u64, AppendError>) -> After {
        let Some(batch) = self.inflight.take() else { return After::Keep };
        match result {
            Ok(seq) => self.confirm(host, batch, seq).await,
            Err(AppendError::Unknown(subject, e)) => {
                tracing::warn!(%subject, error = %e, "append outcome unknown; reloading");
                self.loading = Some(Loading::Unknown(batch));
                self.load(host);
                return After::Keep;
            }
            Err(AppendError::Conflict(subject, expected)) => {
                // Another writer got there first (a shard moving between nodes): take its
                // history and decide our commands again on top of it.
                tracing::info!(%subject, expected, "append fenced; reloading and deciding again");
                self.fenced_in_a_row += 1;
                self.loading = Some(Loading::Fenced(batch));
                if self.fenced_in_a_row > MAX_FENCED_RETRIES {
                    tracing::warn!(kind = %E::KIND, id = %self.id, "fenced repeatedly; dropping the entity");
                    self.abandon(host).await;
                    return After::Drop;
                }
                self.load(host);
                return After::Keep;
            }
            Err(e @ (AppendError::Refused(..) | AppendError::Encode(_))) => {
                tracing::error!(kind = %E::KIND, id = %self.id, error = %e, "append refused");
                let later = std::mem::take(&mut self.next);
                let err = ReplyError::new(ErrorCode::Internal, "the change could not be stored; retry");
                for p in batch.commands {
                    if let Some(to) = p.reply_to {
                        host.ctx.bus.reply::<E::View>(to, &Reply::Err(err.clone())).await;
                    }
                }
                self.decide_again(later.commands);
            }
        }
        self.flush(host).await;
        After::Keep
    }

    async fn confirm(&mut self, host: &Host<'_>, batch: Batch<E>, seq: u64) {
        for e in &batch.events {
            self.confirmed.apply_at(&e.body, e.time);
        }
        self.confirmed_seq = seq;
        self.fenced_in_a_row = 0;
        self.commits_since_snapshot += 1;
        if self.commits_since_snapshot >= host.ctx.snapshot_every {
            self.commits_since_snapshot = 0;
            let ctx = host.ctx.clone();
            let (id, state) = (self.id.clone(), self.confirmed.clone());
            tokio::spawn(async move {
                ctx.store.save_snapshot(E::KIND, E::id_str(&id), seq, &state).await;
            });
        }
        Self::answer(host, batch.commands);
    }

    /// Drops every speculative event and decides `commands`, then whatever was still queued in
    /// `next`, again, in order, on the confirmed state.
    fn decide_again(&mut self, commands: Vec<Pending<E>>) {
        let later = std::mem::take(&mut self.next);
        self.speculative = self.confirmed.clone();
        for p in commands.into_iter().chain(later.commands) {
            self.decide(p.request, p.reply_to);
        }
    }

    /// Sends the replies from a task of their own, so encoding a large batch's answers never
    /// holds up the shard's other entities.
    fn answer(host: &Host<'_>, commands: Vec<Pending<E>>) {
        let ctx = host.ctx.clone();
        tokio::spawn(async move {
            for p in commands {
                if let Some(to) = p.reply_to {
                    ctx.bus.reply(to, &Reply::from(p.outcome)).await;
                }
            }
        });
    }
}
