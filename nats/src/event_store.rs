//! The event store: each entity's history is the sequence of commits on its own subject of
//! `SOUK_EVENTS`. Appends state the entity's expected last sequence, so two writers that both
//! believe they own an entity cannot both succeed: the loser is told, reloads, and decides again.

use crate::metrics::StoreMetrics;
use crate::streams::Jet;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use souk_messages::event::{Commit, Event, Fold};
use souk_messages::subject::{EntityKind, Subjects};
use std::time::Instant;
use uuid::Uuid;

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// JetStream did not answer or refused the read.
    #[error("event store read failed for {0}: {1}")]
    Read(String, #[source] crate::NatsSource),
    /// A stored commit or snapshot does not decode.
    #[error("corrupt record on {0}: {1}")]
    Corrupt(String, #[source] serde_json::Error),
    /// JetStream did not answer or refused a purge.
    #[error("event store purge failed for {0}: {1}")]
    Purge(String, #[source] crate::NatsSource),
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Someone else appended since our expected sequence: reload and decide again.
    #[error("concurrent append to {0}: expected last sequence {1}")]
    Conflict(String, u64),
    /// The outcome is unknown (timeout, lost connection): the commit may or may not be stored.
    #[error("append to {0} has an unknown outcome: {1}")]
    Unknown(String, #[source] crate::NatsSource),
    /// The append was refused outright and is not stored.
    #[error("append to {0} refused: {1}")]
    Refused(String, #[source] crate::NatsSource),
    /// The commit could not be encoded.
    #[error("cannot encode commit: {0}")]
    Encode(#[from] serde_json::Error),
}

/// An entity's state, rehydrated.
#[derive(Debug, Clone)]
pub struct Loaded<S> {
    /// The folded state.
    pub state: S,
    /// Stream sequence of the entity's last commit; 0 when it has none. The next append's
    /// expected sequence.
    pub last_seq: u64,
    /// The first event id of the last commit, to recognise our own commit after an append
    /// whose outcome was unknown.
    pub last_commit: Option<Uuid>,
    /// Commits applied on top of the snapshot.
    pub replayed: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot<S> {
    seq: u64,
    state: S,
}

/// One commit as [`EventStore::follow`] hands it over.
#[derive(Debug, Clone)]
pub struct Followed {
    /// Its stream sequence.
    pub seq: u64,
    /// The entity's event subject.
    pub subject: String,
    /// The commit, as stored.
    pub payload: bytes::Bytes,
}

/// Appends and loads entity histories.
#[derive(Debug, Clone)]
pub struct EventStore {
    jet: Jet,
    metrics: StoreMetrics,
    /// The largest snapshot the server takes: its max payload, less room for the KV headers.
    max_snapshot_bytes: u64,
}

impl EventStore {
    /// An event store over the provisioned stream and snapshot bucket.
    pub fn new(jet: Jet, metrics: StoreMetrics) -> Self {
        let max_payload = jet.js.client().server_info().max_payload as u64;
        Self { jet, metrics, max_snapshot_bytes: max_payload.saturating_sub(4096) }
    }

    /// Appends one commit to an entity, if its last sequence is still `expected_last_seq`
    /// (0: the entity has no commits yet). Returns the commit's stream sequence.
    pub async fn append<E: Serialize>(
        &self,
        kind: EntityKind,
        id: &str,
        expected_last_seq: u64,
        commit: &Commit<E>,
    ) -> Result<u64, AppendError> {
        let subject = Subjects.entity_events(kind, id);
        let payload = serde_json::to_vec(commit)?;
        let mut msg =
            PublishMessage::build().payload(payload.into()).expected_last_subject_sequence(expected_last_seq);
        if let Some(first) = commit.first() {
            // Lets JetStream drop a resend of the very same commit within its duplicate window.
            msg = msg.message_id(first.event_id.to_string());
        }
        let started = Instant::now();
        let result = async {
            let ack = self.jet.js.send_publish(subject.clone(), msg).await.map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::StreamNotFound => {
                    AppendError::Refused(subject.clone(), Box::new(e))
                }
                _ => AppendError::Unknown(subject.clone(), Box::new(e)),
            })?;
            ack.await.map(|a| a.sequence).map_err(|e| match e.kind() {
                PublishErrorKind::WrongLastSequence => {
                    AppendError::Conflict(subject.clone(), expected_last_seq)
                }
                PublishErrorKind::StreamNotFound | PublishErrorKind::MaxPayloadExceeded => {
                    AppendError::Refused(subject.clone(), Box::new(e))
                }
                _ => AppendError::Unknown(subject.clone(), Box::new(e)),
            })
        }
        .await;
        self.metrics.record_append(kind, started.elapsed(), &result);
        result
    }

    /// Loads an entity: its snapshot, if any, then every later commit.
    pub async fn load<S>(&self, kind: EntityKind, id: &str) -> Result<Loaded<S>, StoreError>
    where
        S: Fold + DeserializeOwned,
        S::Event: DeserializeOwned,
    {
        let subject = Subjects.entity_events(kind, id);
        let read_err = |e: crate::NatsSource| StoreError::Read(subject.clone(), e);
        let last = match self.jet.events.of(kind).get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Some(m),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(read_err(Box::new(e))),
        };
        let Some(last) = last else {
            return Ok(Loaded { state: S::default(), last_seq: 0, last_commit: None, replayed: 0 });
        };
        let last_commit: Commit<S::Event> = decode(&subject, &last.payload)?;
        let mut snapshot = self.snapshot::<S>(kind, id).await?;
        if snapshot.as_ref().is_some_and(|s| s.seq > last.sequence) {
            // A snapshot from a history that no longer exists (stream recreated): ignore it,
            // and remove it, or it would keep out the new history's snapshots, which are older.
            snapshot = None;
            let key = format!("{kind}.{id}");
            if let Err(e) = self.jet.snapshots.purge(&key).await {
                tracing::warn!(%key, error = %e, "stale snapshot not removed");
            }
        }
        let (mut state, mut seq) = snapshot.map_or_else(|| (S::default(), 0), |s| (s.state, s.seq));
        let mut replayed = 0;
        while seq < last.sequence {
            let msg = if seq + 1 == last.sequence {
                last.clone()
            } else {
                self.jet
                    .events
                    .of(kind)
                    .get_first_raw_message_by_subject(&subject, seq + 1)
                    .await
                    .map_err(|e| read_err(Box::new(e)))?
            };
            let commit: Commit<S::Event> = decode(&subject, &msg.payload)?;
            for event in &commit {
                state.apply_at(&event.body, event.time);
            }
            seq = msg.sequence;
            replayed += 1;
        }
        Ok(Loaded {
            state,
            last_seq: last.sequence,
            last_commit: last_commit.first().map(|e: &Event<S::Event>| e.event_id),
            replayed,
        })
    }

    /// One page of an entity's history: up to `limit` commits after stream sequence
    /// `after_seq`, oldest first, each with its sequence and its events as `E` (for the events
    /// as stored, `serde_json::Value`).
    pub async fn page<E: DeserializeOwned>(
        &self,
        kind: EntityKind,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<E>)>, StoreError> {
        let subject = Subjects.entity_events(kind, id);
        let mut out = Vec::new();
        let mut next = after_seq + 1;
        while out.len() < limit {
            let msg = match self.jet.events.of(kind).get_first_raw_message_by_subject(&subject, next).await {
                Ok(m) => m,
                Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    break;
                }
                Err(e) => return Err(StoreError::Read(subject, Box::new(e))),
            };
            let events: Vec<E> = decode(&subject, &msg.payload)?;
            out.push((msg.sequence, events));
            next = msg.sequence + 1;
        }
        Ok(out)
    }

    /// Follows commits live, in stream order, each once: one entity's (`id`), or every entity's
    /// of `kind`; from the start of the history, or after stream sequence `after_seq` (with
    /// `None`: only commits from now on). An ordered consumer: nothing to acknowledge, and
    /// a gap (a slow reader, a server change) is closed by resuming where it left off.
    pub async fn follow(
        &self,
        kind: EntityKind,
        id: Option<&str>,
        after_seq: Option<u64>,
    ) -> Result<impl futures::Stream<Item = Result<Followed, StoreError>> + Send + use<>, StoreError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull};
        use futures::StreamExt as _;
        let subject = id.map_or_else(|| Subjects.kind_events(kind), |id| Subjects.entity_events(kind, id));
        let deliver_policy = match after_seq {
            None => DeliverPolicy::New,
            Some(0) => DeliverPolicy::All,
            Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
        };
        let read_err = |subject: &str, e: crate::NatsSource| StoreError::Read(subject.to_owned(), e);
        let consumer = self
            .jet
            .events
            .of(kind)
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(&subject, Box::new(e)))?;
        let messages = consumer.messages().await.map_err(|e| read_err(&subject, Box::new(e)))?;
        Ok(messages.map(move |m| {
            let m = m.map_err(|e| read_err(&subject, Box::new(e)))?;
            let seq = m.info().map_err(|e| read_err(&subject, e))?.stream_sequence;
            Ok(Followed { seq, subject: m.subject.to_string(), payload: m.payload.clone() })
        }))
    }

    /// The stream sequence of `kind`'s newest commit (0 when it has none).
    pub async fn last_seq(&self, kind: EntityKind) -> Result<u64, StoreError> {
        let mut stream = self.jet.events.of(kind).clone();
        let info =
            stream.info().await.map_err(|e| StoreError::Read(Subjects.kind_events(kind), Box::new(e)))?;
        Ok(info.state.last_sequence)
    }

    /// Purges every commit of an entity but its last, and replaces its snapshot with
    /// `last_state`, the state that commit leaves: what is left of an erased user is the
    /// commit recording the erasure and the state after it, neither naming anybody.
    /// Idempotent.
    pub async fn forget_all_but_last<S: Serialize>(
        &self,
        kind: EntityKind,
        id: &str,
        last_state: &S,
    ) -> Result<(), StoreError> {
        self.purge_before_last(kind, id).await?;
        let subject = Subjects.entity_events(kind, id);
        let key = format!("{kind}.{id}");
        let failed = |e: crate::NatsSource| StoreError::Purge(key.clone(), e);
        let last = match self.jet.events.of(kind).get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(StoreError::Read(subject, Box::new(e))),
        };
        let bytes = serde_json::to_vec(&Snapshot { seq: last, state: last_state })
            .map_err(|e| failed(Box::new(e)))?;
        // Unchecked: it must replace whatever is stored (the bucket keeps no earlier
        // revision). A snapshot of the state before, still on its way from an earlier
        // command, is older than this one, so `save_snapshot` no longer writes it.
        self.jet.snapshots.put(&key, bytes.into()).await.map_err(|e| failed(Box::new(e)))?;
        Ok(())
    }

    /// Appends `tombstone` to an entity whose history no single writer guards (no expected
    /// sequence; its first event's id keeps a resend from landing twice), then purges every
    /// earlier commit. Idempotent.
    pub async fn replace_history<E: Serialize>(
        &self,
        kind: EntityKind,
        id: &str,
        tombstone: &Commit<E>,
    ) -> Result<(), StoreError> {
        let subject = Subjects.entity_events(kind, id);
        let purge = |e: crate::NatsSource| StoreError::Purge(subject.clone(), e);
        let payload = serde_json::to_vec(tombstone).map_err(|e| purge(Box::new(e)))?;
        let mut msg = PublishMessage::build().payload(payload.into());
        if let Some(first) = tombstone.first() {
            msg = msg.message_id(first.event_id.to_string());
        }
        let ack = self.jet.js.send_publish(subject.clone(), msg).await.map_err(|e| purge(Box::new(e)))?;
        ack.await.map_err(|e| purge(Box::new(e)))?;
        self.purge_before_last(kind, id).await
    }

    async fn purge_before_last(&self, kind: EntityKind, id: &str) -> Result<(), StoreError> {
        let subject = Subjects.entity_events(kind, id);
        self.jet
            .events
            .of(kind)
            .purge()
            .filter(subject.as_str())
            .keep(1)
            .await
            .map_err(|e| StoreError::Purge(subject.clone(), Box::new(e)))?;
        Ok(())
    }

    /// Stores a snapshot of `state` as of stream sequence `seq`, unless the one stored is as
    /// new or newer: snapshots are written from tasks of their own, so an older one can
    /// arrive after a newer one, or after an erasure replaced the state. A lost snapshot only
    /// costs replay time, so failures are counted and logged, not returned.
    pub async fn save_snapshot<S: Serialize>(&self, kind: EntityKind, id: &str, seq: u64, state: &S) {
        let key = format!("{kind}.{id}");
        let outcome = match serde_json::to_vec(&Snapshot { seq, state }) {
            // Larger than the server accepts in one message: it would only be refused.
            Ok(bytes) if bytes.len() as u64 > self.max_snapshot_bytes => "too_large",
            Ok(bytes) => match self.put_if_newer(&key, seq, bytes).await {
                Ok(true) => "ok",
                Ok(false) => "superseded",
                Err(e) => {
                    tracing::warn!(%key, error = %e, "snapshot not saved");
                    "failed"
                }
            },
            Err(e) => {
                tracing::warn!(%key, error = %e, "snapshot not encoded");
                "failed"
            }
        };
        self.metrics.record_snapshot(kind, outcome);
    }

    /// Writes `bytes`, the snapshot as of `seq`, unless the stored one is as new or newer;
    /// whether it was written. Checked by revision, so a newer one written meanwhile stays.
    async fn put_if_newer(&self, key: &str, seq: u64, bytes: Vec<u8>) -> Result<bool, crate::NatsSource> {
        #[derive(Deserialize)]
        struct Stored {
            seq: u64,
        }
        let snapshots = &self.jet.snapshots;
        match snapshots.entry(key).await? {
            Some(e) if e.operation == kv::Operation::Put => {
                if serde_json::from_slice::<Stored>(&e.value).is_ok_and(|s| s.seq >= seq) {
                    return Ok(false);
                }
                match snapshots.update(key, bytes.into(), e.revision).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                    Err(e) => Err(Box::new(e)),
                }
            }
            _ => match snapshots.create(key, bytes.into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Box::new(e)),
            },
        }
    }

    async fn snapshot<S: DeserializeOwned>(
        &self,
        kind: EntityKind,
        id: &str,
    ) -> Result<Option<Snapshot<S>>, StoreError> {
        let key = format!("{kind}.{id}");
        let bytes = self
            .jet
            .snapshots
            .get(key.clone())
            .await
            .map_err(|e| StoreError::Read(key.clone(), Box::new(e)))?;
        match bytes {
            None => Ok(None),
            Some(b) => match serde_json::from_slice(&b) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    // An undecodable snapshot (older format) is skipped; the history is the truth.
                    tracing::warn!(%key, error = %e, "ignoring undecodable snapshot");
                    Ok(None)
                }
            },
        }
    }
}

fn decode<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt(subject.to_owned(), e))
}
