//! Projectors: each folds one entity kind's events from a durable JetStream consumer into its
//! read model (stock levels, users). The database's checkpoint is the truth about what has been applied, so the
//! consumer is (re)created from it whenever the two disagree (an in-memory database is empty
//! after a restart, while the consumer remembers its place).

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use futures::StreamExt as _;
use souk_messages::event::{Commit, Event};
use souk_messages::notify::{NotificationEvent, NotificationId};
use souk_messages::order::{OrderEvent, OrderId};
use souk_messages::product::{ProductEvent, ProductId};
use souk_messages::subject::{EntityKind, Subjects};
use souk_messages::user::UserEvent;
use souk_messages::{Sku, UserId};
use souk_nats::Jet;
use souk_storage::{
    CatalogRepo, NotificationEvents, NotificationRepo, OrderEvents, OrderRepo, ProductEvents, ReadModels,
    StockChange, StockRepo, StorageError, UserEvents, UserRepo, Writers,
};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// The most messages applied in one database transaction.
const BATCH: usize = 16_384;
/// How long a batch may wait to fill, unless its projection says otherwise. Each transaction
/// costs a query parse and a commit, so under load it pays to apply many changes at once; the
/// read model lags by at most this.
pub(crate) const BATCH_WINDOW: Duration = Duration::from_millis(250);

/// Why the projector stopped; it is restarted by [`run`] after a pause.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// A JetStream call failed.
    #[error("jetstream: {0}")]
    Nats(#[source] souk_nats::NatsSource),
    /// The read model could not be written.
    #[error(transparent)]
    Storage(#[from] souk_storage::StorageError),
}

fn nats<E: std::error::Error + Send + Sync + 'static>(e: E) -> ProjectorError {
    ProjectorError::Nats(Box::new(e))
}

/// One message of the stream, as a projection sees it.
#[derive(Debug)]
pub struct Record {
    /// The entity's event subject.
    pub subject: String,
    /// The commit.
    pub payload: bytes::Bytes,
    /// Its stream sequence.
    pub seq: u64,
}

/// A read model fed by one entity kind's events.
pub trait Projection: Send + Sync + 'static {
    /// The kind whose events it folds.
    const KIND: EntityKind;
    /// How long a batch may wait to fill: the most the read model trails the stream by.
    const WINDOW: Duration = BATCH_WINDOW;
    /// The last stream sequence applied.
    fn checkpoint(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// Applies `records` and moves the checkpoint to `last_seq`, atomically. With
    /// [`Writers::Sole`], `records` are in stream order and all newer than the checkpoint.
    fn apply(
        &self,
        records: Vec<Record>,
        last_seq: u64,
        writers: Writers,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Runs a projector until the task is dropped, restarting it after failures. Its durable
/// consumer is `souk_proj_<kind><suffix>`.
pub async fn run<P: Projection>(jet: Jet, projection: P, suffix: String, stop: watch::Receiver<bool>) {
    let name = format!("souk_proj_{}{suffix}", P::KIND);
    let own = !suffix.is_empty();
    let what = format!("projector {name}");
    crate::restart::restarting(&what, stop, |mut stop| {
        let (jet, projection, name) = (&jet, &projection, &name);
        async move { project(jet, projection, name, own, &mut stop).await }
    })
    .await;
}

/// A read model that has applied more of its stream than the stream holds.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the {kind} read model has applied its stream up to sequence {checkpoint}, but the stream ends at {last}: NATS was restored from an older backup or replaced"
)]
pub struct Ahead {
    /// The entity kind whose read model it is.
    pub kind: EntityKind,
    /// The read model's checkpoint.
    pub checkpoint: u64,
    /// The stream's last sequence.
    pub last: u64,
}

/// Read models built from a history the streams no longer have. Projecting on from their
/// checkpoints would skip every new event up to them, so such read models must be rebuilt.
pub async fn ahead_of_streams(jet: &Jet, models: &ReadModels) -> Result<Vec<Ahead>, ProjectorError> {
    let mut ahead = Vec::new();
    ahead.extend(ahead_of_stream(jet, &models.stock).await?);
    ahead.extend(ahead_of_stream(jet, &models.users).await?);
    ahead.extend(ahead_of_stream(jet, &models.catalog).await?);
    ahead.extend(ahead_of_stream(jet, &models.orders).await?);
    ahead.extend(ahead_of_stream(jet, &models.notifications).await?);
    Ok(ahead)
}

async fn ahead_of_stream<P: Projection>(jet: &Jet, projection: &P) -> Result<Option<Ahead>, ProjectorError> {
    let checkpoint = projection.checkpoint().await?;
    if checkpoint == 0 {
        return Ok(None);
    }
    let last = jet.events.of(P::KIND).get_info().await.map_err(nats)?.state.last_sequence;
    Ok((checkpoint > last).then_some(Ahead { kind: P::KIND, checkpoint, last }))
}

async fn consumer(
    jet: &Jet,
    kind: EntityKind,
    name: &str,
    checkpoint: u64,
    own: bool,
) -> Result<consumer::Consumer<pull::Config>, ProjectorError> {
    let stream = jet.events.of(kind);
    if let Ok(mut c) = stream.get_consumer::<pull::Config>(name).await {
        let info = c.info().await.map_err(nats)?;
        // Behind the database is fine (replays change nothing); ahead of it would skip events.
        // A node's own consumer with messages still out to a previous run of this node (it
        // crashed) would hold them back until their ack wait expires: start afresh instead.
        let stranded = own && info.num_ack_pending > 0;
        if info.ack_floor.stream_sequence <= checkpoint && !stranded {
            return Ok(c);
        }
        tracing::info!(name, checkpoint, stranded, "recreating the projection's consumer from the database");
        stream.delete_consumer(name).await.map_err(nats)?;
    }
    let deliver_policy = if checkpoint == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence { start_sequence: checkpoint + 1 }
    };
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: Subjects.kind_events(kind),
            deliver_policy,
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            // A node that never comes back must not leave its consumer behind forever; one
            // that does come back after this recreates it from its database's checkpoint.
            inactive_threshold: Duration::from_secs(24 * 3600),
            ..Default::default()
        })
        .await
        .map_err(nats)
}

/// The next messages of `messages`: the first to arrive, and whatever follows within `window`,
/// up to a batch. `None` once the stream ends or `stop` is set.
pub(crate) async fn next_chunk<S, T>(
    messages: &mut S,
    window: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<T>>
where
    S: futures::Stream<Item = T> + Unpin,
{
    let first = crate::restart::next_or_stop(messages, stop).await?;
    let mut chunk = vec![first];
    let deadline = tokio::time::Instant::now() + window;
    while chunk.len() < BATCH {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(m)) => chunk.push(m),
            Ok(None) | Err(_) => break,
        }
    }
    Some(chunk)
}

/// Applies batches until the consumer ends or `stop` is set; a batch in progress is finished
/// (and its transaction committed) before stopping. `own`: the consumer is this node's alone.
async fn project<P: Projection>(
    jet: &Jet,
    projection: &P,
    name: &str,
    own: bool,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ProjectorError> {
    let mut applied = projection.checkpoint().await?;
    let consumer = consumer(jet, P::KIND, name, applied, own).await?;
    let writers = if own { Writers::Sole } else { Writers::Shared };
    let mut messages = consumer.messages().await.map_err(nats)?;
    loop {
        let Some(chunk) = next_chunk(&mut messages, P::WINDOW, stop).await else { return Ok(()) };
        let mut records = Vec::with_capacity(chunk.len());
        let mut last_msg = None;
        for m in chunk {
            let m = m.map_err(nats)?;
            let seq = m.info().map_err(ProjectorError::Nats)?.stream_sequence;
            // A sole writer's redelivery (its acknowledgement was lost, or it outlived the ack
            // wait) is already in the database and must not be applied over newer rows. With
            // a shared consumer it may be another node's unapplied batch: keep it.
            let newer = seq > records.last().map_or(applied, |r: &Record| r.seq);
            if newer || writers == Writers::Shared {
                records.push(Record { subject: m.subject.to_string(), payload: m.payload.clone(), seq });
            }
            last_msg = Some(m);
        }
        if let Some(last_seq) = records.iter().map(|r| r.seq).max() {
            projection.apply(records, last_seq, writers).await?;
            applied = applied.max(last_seq);
        }
        if let Some(m) = last_msg {
            // AckPolicy::All: acknowledging the last message acknowledges the whole chunk.
            m.ack().await.map_err(ProjectorError::Nats)?;
        }
    }
}

impl Projection for StockRepo {
    const KIND: EntityKind = EntityKind::Stock;
    // Every reservation is a stock event, but a row only keeps its SKU's newest levels: a
    // longer window folds more events into each row written. Under spread reservations the
    // row writes were a fifth of a node's CPU at a quarter-second window.
    const WINDOW: Duration = Duration::from_secs(1);

    fn checkpoint(&self) -> impl Future<Output = Result<u64, StorageError>> + Send {
        StockRepo::checkpoint(self)
    }

    async fn apply(&self, records: Vec<Record>, last_seq: u64, writers: Writers) -> Result<(), StorageError> {
        // Stock events carry the levels after them, so only each SKU's newest one matters.
        let mut latest: HashMap<Sku, StockChange> = HashMap::new();
        for r in records {
            if let Some(change) = change_of(&r.subject, &r.payload, r.seq) {
                let keep = latest.get(&change.sku).is_none_or(|c| c.version < change.version);
                if keep {
                    latest.insert(change.sku.clone(), change);
                }
            }
        }
        let changes: Vec<StockChange> = latest.into_values().collect();
        StockRepo::apply(self, &changes, last_seq, writers).await
    }
}

impl Projection for UserRepo {
    const KIND: EntityKind = EntityKind::User;

    fn checkpoint(&self) -> impl Future<Output = Result<u64, StorageError>> + Send {
        UserRepo::checkpoint(self)
    }

    async fn apply(&self, records: Vec<Record>, last_seq: u64, _: Writers) -> Result<(), StorageError> {
        let batch: Vec<UserEvents> =
            by_entity::<UserEvent, UserId>(EntityKind::User, records, |s| UserId::parse(s).ok())
                .into_iter()
                .map(|(id, events)| UserEvents { id, events })
                .collect();
        UserRepo::apply(self, &batch, last_seq).await
    }
}

impl Projection for CatalogRepo {
    const KIND: EntityKind = EntityKind::Product;

    fn checkpoint(&self) -> impl Future<Output = Result<u64, StorageError>> + Send {
        CatalogRepo::checkpoint(self)
    }

    async fn apply(&self, records: Vec<Record>, last_seq: u64, _: Writers) -> Result<(), StorageError> {
        let batch: Vec<ProductEvents> =
            by_entity::<ProductEvent, ProductId>(EntityKind::Product, records, |s| ProductId::parse(s).ok())
                .into_iter()
                .map(|(id, events)| ProductEvents { id, events })
                .collect();
        CatalogRepo::apply(self, &batch, last_seq).await
    }
}

impl Projection for OrderRepo {
    const KIND: EntityKind = EntityKind::Order;

    fn checkpoint(&self) -> impl Future<Output = Result<u64, StorageError>> + Send {
        OrderRepo::checkpoint(self)
    }

    async fn apply(&self, records: Vec<Record>, last_seq: u64, _: Writers) -> Result<(), StorageError> {
        let batch: Vec<OrderEvents> =
            by_entity::<OrderEvent, OrderId>(EntityKind::Order, records, |s| OrderId::parse(s).ok())
                .into_iter()
                .map(|(id, events)| OrderEvents { id, events })
                .collect();
        OrderRepo::apply(self, &batch, last_seq).await
    }
}

impl Projection for NotificationRepo {
    const KIND: EntityKind = EntityKind::Notification;

    fn checkpoint(&self) -> impl Future<Output = Result<u64, StorageError>> + Send {
        NotificationRepo::checkpoint(self)
    }

    async fn apply(&self, records: Vec<Record>, last_seq: u64, _: Writers) -> Result<(), StorageError> {
        let batch: Vec<NotificationEvents> =
            by_entity::<NotificationEvent, NotificationId>(EntityKind::Notification, records, |s| {
                NotificationId::parse(s).ok()
            })
            .into_iter()
            .map(|(id, events)| NotificationEvents { id, events })
            .collect();
        NotificationRepo::apply(self, &batch, last_seq).await
    }
}

/// Each entity's events in `records`, in stream order, with their commit's sequence.
/// Undecodable records are logged and skipped: one bad record must not stop a read model.
fn by_entity<E: serde::de::DeserializeOwned, I: Ord>(
    kind: EntityKind,
    records: Vec<Record>,
    parse: impl Fn(&str) -> Option<I>,
) -> BTreeMap<I, Vec<(u64, Event<E>)>> {
    let mut out: BTreeMap<I, Vec<(u64, Event<E>)>> = BTreeMap::new();
    for r in records {
        let id = Subjects.entity_id_of(kind, &r.subject).and_then(|s| parse(&s));
        let commit: Option<Commit<E>> = serde_json::from_slice(&r.payload).ok();
        let (Some(id), Some(commit)) = (id, commit) else {
            tracing::error!(subject = r.subject, "skipping an undecodable commit");
            continue;
        };
        out.entry(id).or_default().extend(commit.into_iter().map(|e| (r.seq, e)));
    }
    out
}

/// The levels a commit leaves its stock item at, or `None` for a message that is not a
/// decodable stock commit (logged and skipped: one bad record must not stop the read model).
fn change_of(subject: &str, payload: &[u8], seq: u64) -> Option<StockChange> {
    let sku = Subjects.entity_id_of(EntityKind::Stock, subject).and_then(|s| Sku::parse(s).ok());
    match (sku, souk_messages::stock::commit_levels(payload)) {
        (Some(sku), Some((version, levels))) => Some(StockChange { sku, version, seq, levels }),
        _ => {
            tracing::error!(subject, "skipping undecodable stock commit");
            None
        }
    }
}
