//! Queueing notifications and keeping the registry of webhook endpoints: shared by the
//! planners, the dead-letter retry and the admin routes, so a notification is queued one way.

use crate::kv::{JsonKv, KvError};
use crate::{Jet, NatsSource};
use futures::StreamExt as _;
use souk_messages::notify::{DeadLetter, EndpointId, Notification, WebhookEndpoint, WebhookTarget};
use souk_messages::subject::Subjects;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Queues `n` on `souk.notify.<channel>`. `msg_id` is the queue's duplicate key: the
/// notification id for a first send, something fresh for a deliberate resend.
pub async fn queue(jet: &Jet, n: &Notification, msg_id: &str) -> Result<(), NatsSource> {
    let body = serde_json::to_vec(n)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    jet.js.publish_with_headers(Subjects.notify(n.channel), headers, body.into()).await?.await?;
    Ok(())
}

/// Queues `n` to be sent once more: its delivery claim is forgotten first, so the worker
/// sends it again instead of taking it for a duplicate.
pub async fn resend(jet: &Jet, n: &Notification, msg_id: &str) -> Result<(), NatsSource> {
    jet.notify_claims.delete(n.id.as_str()).await?;
    queue(jet, n, msg_id).await
}

/// The dead letters, oldest first, each with its stream sequence (what a retry or a removal
/// names); one that does not decode comes with why.
pub async fn dead_letters(
    jet: &Jet,
) -> Result<Vec<(u64, Result<DeadLetter, serde_json::Error>)>, NatsSource> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        // Each read is of the next letter at or after `next`: the gaps retried and erased
        // letters leave (after an outage, most of the sequence) cost nothing.
        let msg = match jet
            .dead_letters
            .get_first_raw_message_by_subject(Subjects.dead_letters_all(), next)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(out),
            Err(e) => return Err(Box::new(e)),
        };
        out.push((msg.sequence, serde_json::from_slice(&msg.payload)));
        next = msg.sequence + 1;
    }
}

/// Resolves `target` and returns the address to connect to, refusing any name that resolves
/// to a loopback, private or otherwise non-public address unless `allow_private`.
pub async fn destination(
    target: &WebhookTarget,
    allow_private: bool,
) -> Result<std::net::SocketAddr, String> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let first = *addrs.first().ok_or_else(|| format!("{} has no address", target.host))?;
    if !allow_private && addrs.iter().any(|a| !souk_messages::notify::is_public(a.ip())) {
        return Err(format!("{} is not a public address", target.host));
    }
    Ok(first)
}

/// The webhook endpoints, in the `souk_webhook_endpoints` bucket.
#[derive(Debug, Clone)]
pub struct Endpoints {
    kv: JsonKv<WebhookEndpoint>,
    store: async_nats::jetstream::kv::Store,
}

impl Endpoints {
    /// The registry in `jet`.
    pub fn new(jet: &Jet) -> Self {
        Self { kv: JsonKv::new(jet.endpoints.clone()), store: jet.endpoints.clone() }
    }

    /// One endpoint and its revision.
    pub async fn get(&self, id: &EndpointId) -> Result<Option<(WebhookEndpoint, u64)>, KvError> {
        self.kv.get(id.as_str()).await
    }

    /// Stores a new endpoint.
    pub async fn create(&self, e: &WebhookEndpoint) -> Result<(), KvError> {
        self.kv.create(e.id.as_str(), e).await.map(drop)
    }

    /// Replaces an endpoint if it is still at `revision`; `None` if it changed meanwhile.
    pub async fn update(&self, e: &WebhookEndpoint, revision: u64) -> Result<Option<u64>, KvError> {
        self.kv.update(e.id.as_str(), e, revision).await
    }

    /// Turns an endpoint's deliveries off (its receiver answered 410 Gone); `false` if it is
    /// gone or already off. Retries when an admin's edit lands in between.
    pub async fn disable(&self, id: &EndpointId) -> Result<bool, KvError> {
        for _ in 0..5 {
            let Some((mut e, revision)) = self.get(id).await? else { return Ok(false) };
            if !e.enabled {
                return Ok(false);
            }
            e.enabled = false;
            if self.update(&e, revision).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes an endpoint.
    pub async fn delete(&self, id: &EndpointId) -> Result<(), KvError> {
        self.kv.delete(id.as_str(), None).await
    }

    /// Every endpoint, by id.
    pub async fn all(&self) -> Result<Vec<WebhookEndpoint>, KvError> {
        let failed = |op: &'static str| {
            move |e: Box<dyn std::error::Error + Send + Sync>| KvError::Nats {
                op,
                bucket: crate::streams::ENDPOINTS_BUCKET.to_owned(),
                source: e,
            }
        };
        let mut keys = self.store.keys().await.map_err(|e| failed("keys")(Box::new(e)))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed("keys")(Box::new(e)))?;
            let Ok(id) = EndpointId::parse(&key) else { continue };
            if let Some((e, _)) = self.get(&id).await? {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// A copy of the registry kept current by watching the bucket, for the planners: they
    /// consult it for every event.
    pub async fn live(&self) -> Result<LiveEndpoints, KvError> {
        let live = LiveEndpoints::default();
        let mut watch = self.watch().await?;
        let (store, map) = (self.clone(), live.0.clone());
        tokio::spawn(async move {
            loop {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { continue };
                    let Ok(mut m) = map.write() else { return };
                    match entry.operation {
                        async_nats::jetstream::kv::Operation::Put => {
                            if let Ok(e) = serde_json::from_slice::<WebhookEndpoint>(&entry.value) {
                                m.insert(entry.key.clone(), e);
                            }
                        }
                        _ => {
                            m.remove(&entry.key);
                        }
                    }
                }
                // The watch ended (its server went away): watch again from each key's latest
                // value, which includes the delete markers of endpoints removed meanwhile.
                tracing::warn!("the webhook endpoints watch ended; watching again");
                watch = loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    match store.watch().await {
                        Ok(w) => break w,
                        Err(e) => tracing::warn!(error = %e, "cannot watch the webhook endpoints yet"),
                    }
                };
            }
        });
        Ok(live)
    }

    async fn watch(&self) -> Result<async_nats::jetstream::kv::Watch, KvError> {
        self.store.watch_with_history(">").await.map_err(|e| KvError::Nats {
            op: "watch",
            bucket: crate::streams::ENDPOINTS_BUCKET.to_owned(),
            source: Box::new(e),
        })
    }
}

/// The endpoints as last seen in the bucket.
#[derive(Debug, Clone, Default)]
pub struct LiveEndpoints(Arc<RwLock<BTreeMap<String, WebhookEndpoint>>>);

impl LiveEndpoints {
    /// Whether any enabled endpoint wants `event_type`.
    pub fn any_wants(&self, event_type: &str) -> bool {
        self.0.read().map(|m| m.values().any(|e| e.wants(event_type))).unwrap_or_default()
    }

    /// The enabled endpoints that want `event_type`.
    pub fn wanting(&self, event_type: &str) -> Vec<WebhookEndpoint> {
        self.0
            .read()
            .map(|m| m.values().filter(|e| e.wants(event_type)).cloned().collect())
            .unwrap_or_default()
    }

    /// One endpoint, if it is still registered.
    pub fn get(&self, id: &str) -> Option<WebhookEndpoint> {
        self.0.read().ok().and_then(|m| m.get(id).cloned())
    }
}
