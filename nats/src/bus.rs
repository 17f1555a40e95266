//! Typed request/reply over core NATS, with a deadline. A request whose shard has no owner at
//! the moment (it is moving between nodes) is retried with back-off until the deadline.

use async_nats::{RequestErrorKind, Subject};
use serde::Serialize;
use serde::de::DeserializeOwned;
use souk_messages::subject::{ShardCounts, ShardId, Subjects, shard_of};
use souk_messages::{Entity, Reply, ReplyError, Request};
use std::time::Duration;
use tokio::time::Instant;

/// The queue group every shard owner subscribes in, so that in the brief window where two
/// nodes both serve a shard each command still reaches only one of them.
const OWNERS_QUEUE: &str = "souk-owners";

/// A request on the bus whose reply type is fixed, so callers can't decode the wrong thing.
pub trait Routed: Serialize {
    /// What a successful reply carries.
    type Reply: DeserializeOwned;
    /// The subject of the shard that owns the addressed entity.
    fn shard(&self, shards: &ShardCounts) -> ShardId;
    /// The request's correlation id, carried as a W3C `traceparent` header.
    fn correlation_id(&self) -> Option<&str> {
        None
    }
}

impl<E: Entity> Routed for Request<E> {
    type Reply = E::View;
    fn shard(&self, shards: &ShardCounts) -> ShardId {
        shard_of(E::KIND, E::id_str(&self.id), shards.of(E::KIND))
    }
    fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
}

/// Why a request did not get a business answer.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Nobody served the shard until the deadline: it is moving or the cluster is not ready.
    #[error("no owner served {0} before the deadline")]
    NoResponders(String),
    /// The owner did not answer in time; the outcome is unknown.
    #[error("{0} did not answer in time")]
    TimedOut(String),
    /// The request could not be sent.
    #[error("request to {0} failed: {1}")]
    Transport(String, #[source] crate::NatsSource),
    /// A payload did not encode or decode.
    #[error("malformed payload: {0}")]
    Codec(#[from] serde_json::Error),
    /// The owner rejected the command.
    #[error(transparent)]
    Rejected(#[from] ReplyError),
}

/// The request/reply side of a NATS connection. Cheap to clone (one shared handle), since the
/// edge clones its state for every request.
#[derive(Debug, Clone)]
pub struct Bus {
    inner: std::sync::Arc<BusInner>,
}

#[derive(Debug)]
struct BusInner {
    client: async_nats::Client,
    shards: ShardCounts,
    deadline: Duration,
}

impl Bus {
    /// A bus on `client`; requests give up after `deadline`.
    pub fn new(client: async_nats::Client, shards: ShardCounts, deadline: Duration) -> Self {
        Self { inner: std::sync::Arc::new(BusInner { client, shards, deadline }) }
    }

    /// The shard counts requests are routed with.
    pub fn shards(&self) -> ShardCounts {
        self.inner.shards
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Sends `req` to its shard's owner and waits for the reply, until the deadline.
    pub async fn request<R: Routed>(&self, req: &R) -> Result<R::Reply, BusError> {
        let subject = Subjects.command(req.shard(&self.inner.shards));
        let payload = bytes::Bytes::from(serde_json::to_vec(req)?);
        let deadline = Instant::now() + self.inner.deadline;
        let mut backoff = Duration::from_millis(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BusError::NoResponders(subject));
            }
            let mut request = async_nats::Request::new().payload(payload.clone()).timeout(Some(remaining));
            if let Some(c) = req.correlation_id() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("traceparent", souk_messages::log::traceparent(c).as_str());
                request = request.headers(headers);
            }
            match self.inner.client.send_request(subject.clone(), request).await {
                Ok(msg) => {
                    let reply: Reply<R::Reply> = serde_json::from_slice(&msg.payload)?;
                    return Result::from(reply).map_err(BusError::Rejected);
                }
                Err(e) => match e.kind() {
                    RequestErrorKind::NoResponders => {
                        tokio::time::sleep(backoff.min(remaining)).await;
                        backoff = (backoff * 2).min(Duration::from_millis(250));
                    }
                    RequestErrorKind::TimedOut => return Err(BusError::TimedOut(subject)),
                    _ => return Err(BusError::Transport(subject, Box::new(e))),
                },
            }
        }
    }

    /// Subscribes to a shard's command subject, as its owner.
    pub async fn serve_shard(&self, shard: ShardId) -> Result<async_nats::Subscriber, BusError> {
        let subject = Subjects.command(shard);
        self.inner
            .client
            .queue_subscribe(subject.clone(), OWNERS_QUEUE.to_owned())
            .await
            .map_err(|e| BusError::Transport(subject, Box::new(e)))
    }

    /// Sends a reply. A failure only means the caller will time out and retry, so it is
    /// logged, not returned.
    pub async fn reply<T: Serialize>(&self, to: Subject, reply: &Reply<T>) {
        match serde_json::to_vec(reply) {
            Ok(bytes) => {
                if let Err(e) = self.inner.client.publish(to, bytes.into()).await {
                    tracing::warn!(error = %e, "reply not sent");
                }
            }
            Err(e) => tracing::error!(error = %e, "reply not encoded"),
        }
    }
}
