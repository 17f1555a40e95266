//! Live order status: every order event, once and in order, for WebSocket and Server-Sent
//! Events clients. Any node serves any order: the updates come from the event stream, not
//! from the node that owns the order.
//!
//! A node follows the order stream once ([`LiveOrders`]) and hands each commit to the clients
//! watching that order, instead of giving every client a JetStream consumer of its own: the
//! server limits consumers per stream (1,000 by default), and a dropped consumer lingers there
//! for half a minute. A watcher reads the order's history first and then takes the live
//! commits it has not seen; a version it missed (a watcher too slow for the hub, a replica
//! that answered from behind) is read again from the history.

use crate::error::ApiError;
use crate::metrics::HttpMetrics;
use futures::{Stream, StreamExt as _};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use souk_messages::event::{Commit, Event, Fold};
use souk_messages::order::{OrderEvent, OrderId, OrderState, OrderStatus};
use souk_messages::subject::{EntityKind, Subjects};
use souk_nats::{EventStore, Followed};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

/// One order event as a live client sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderUpdate {
    /// The order.
    pub order: OrderId,
    /// The order's version after the event: send the last one seen to resume.
    pub version: u64,
    /// The event's type, e.g. `order.confirmed`.
    pub event: &'static str,
    /// The order's status after the event (absent on the all-orders feed for events that do
    /// not set one on their own, such as a refund).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    /// The event's stream sequence: resume the all-orders feed after it.
    pub seq: u64,
}

/// Live commits a watcher may queue before it counts as too slow and reads the history instead.
const WATCHER_QUEUE: usize = 64;
/// How often a watcher rereads the history for a version it missed before it gives up.
const GAP_RETRIES: u32 = 20;

/// An order event as stored, or `None` for one this node cannot read: a type written by a newer
/// node during a rolling upgrade. It still moves the version on, so the feed goes past it
/// rather than ending at it or waiting for a version that never comes.
#[derive(Debug)]
struct Readable(Option<OrderEvent>);

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let body = serde_json::Value::deserialize(d)?;
        Ok(Readable(OrderEvent::deserialize(body).ok()))
    }
}

/// This node's one follower of the order stream, handing each commit to the clients watching
/// its order.
#[derive(Debug, Clone)]
pub struct LiveOrders {
    hub: Arc<Hub>,
    store: EventStore,
}

/// A watcher's number and where its commits go.
type Watcher = (u64, mpsc::Sender<Arc<Followed>>);

#[derive(Debug)]
struct Hub {
    /// The watchers of each order.
    watchers: Mutex<HashMap<String, Vec<Watcher>>>,
    next: AtomicU64,
    /// How many are registered.
    count: Gauge,
}

impl LiveOrders {
    /// Follows the order stream from its current end until `stop` is set. Starting from the
    /// end read here (not from whenever the consumer exists) means a client that subscribes
    /// meanwhile misses nothing.
    pub async fn start(
        store: EventStore,
        metrics: &HttpMetrics,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self, ApiError> {
        let from = store.last_seq(EntityKind::Order).await?;
        let hub = Arc::new(Hub {
            watchers: Mutex::default(),
            next: AtomicU64::new(0),
            count: metrics.live_watchers.clone(),
        });
        tokio::spawn(follow(store.clone(), hub.clone(), from, stop.clone()));
        Ok(Self { hub, store })
    }

    /// One order's updates after its version `after`, then live as they happen.
    pub fn order(&self, id: OrderId, after: u64) -> impl Stream<Item = OrderUpdate> + Send + use<> {
        let watcher = OrderWatcher {
            live: self.clone(),
            watch: None,
            id,
            after,
            state: OrderState::default(),
            version: 0,
            seq: 0,
            ready: VecDeque::new(),
        };
        futures::stream::unfold(watcher, |mut w| async move { w.next().await.map(|u| (u, w)) })
    }

    /// Registers a watcher of `order`: the commits the hub sees from now on.
    fn watch(&self, order: &str) -> Watch {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let number = self.hub.next.fetch_add(1, Ordering::Relaxed);
        let mut watchers = self.hub.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        watchers.entry(order.to_owned()).or_default().push((number, tx));
        self.hub.count.inc();
        Watch { hub: self.hub.clone(), order: order.to_owned(), number, rx }
    }
}

/// Follows the order stream after `last`, resuming where it stopped after a failure.
async fn follow(store: EventStore, hub: Arc<Hub>, mut last: u64, mut stop: watch::Receiver<bool>) {
    loop {
        match store.follow(EntityKind::Order, None, Some(last)).await {
            Ok(commits) => {
                let mut commits = std::pin::pin!(commits);
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        next = commits.next() => match next {
                            Some(Ok(commit)) => {
                                last = commit.seq;
                                hub.hand_over(commit);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "live order feed failed; resuming");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow the order stream; retrying"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl Hub {
    /// Hands `commit` to its order's watchers; one that cannot take it now is let go and
    /// catches up from the history.
    fn hand_over(&self, commit: Followed) {
        let Some(order) = Subjects.entity_id_of(EntityKind::Order, &commit.subject) else { return };
        let mut watchers = self.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(watching) = watchers.get_mut(&order) else { return };
        let commit = Arc::new(commit);
        watching.retain(|(_, tx)| tx.try_send(commit.clone()).is_ok());
        if watching.is_empty() {
            watchers.remove(&order);
        }
    }
}

/// A registered watcher; dropping it unregisters it.
struct Watch {
    hub: Arc<Hub>,
    order: String,
    number: u64,
    rx: mpsc::Receiver<Arc<Followed>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.count.dec();
        let mut watchers = self.hub.watchers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(watching) = watchers.get_mut(&self.order) {
            watching.retain(|(n, _)| *n != self.number);
            if watching.is_empty() {
                watchers.remove(&self.order);
            }
        }
    }
}

/// One client's view of one order: the history, then the live commits.
struct OrderWatcher {
    live: LiveOrders,
    /// `None` until the first update is asked for, and again after the hub let it go.
    watch: Option<Watch>,
    id: OrderId,
    after: u64,
    state: OrderState,
    /// The last version folded into `state`.
    version: u64,
    /// The stream sequence of the last commit folded.
    seq: u64,
    ready: VecDeque<OrderUpdate>,
}

impl OrderWatcher {
    /// The next update; `None` when the feed cannot go on (the history is unreadable).
    async fn next(&mut self) -> Option<OrderUpdate> {
        loop {
            if let Some(update) = self.ready.pop_front() {
                return Some(update);
            }
            let Some(watch) = self.watch.as_mut() else {
                // Watch before reading the history, so nothing falls between the two.
                self.watch = Some(self.live.watch(self.id.as_str()));
                if let Err(e) = self.catch_up().await {
                    tracing::warn!(order = %self.id, error = %e, "cannot read an order's history for a live client");
                    return None;
                }
                continue;
            };
            match watch.rx.recv().await {
                Some(commit) => {
                    if let Err(e) = self.take(&commit).await {
                        tracing::warn!(order = %self.id, error = %e, "live order feed gave up");
                        return None;
                    }
                }
                // Too slow for the hub: watch again and read what was missed.
                None => self.watch = None,
            }
        }
    }

    /// Folds a live commit, reading the history first if versions before it were missed.
    async fn take(&mut self, commit: &Followed) -> Result<(), ApiError> {
        if commit.seq <= self.seq {
            return Ok(());
        }
        let Ok(events) = serde_json::from_slice::<Commit<Readable>>(&commit.payload) else { return Ok(()) };
        for attempt in 0..=GAP_RETRIES {
            if events.first().is_none_or(|e| e.version <= self.version + 1) {
                break;
            }
            if attempt == GAP_RETRIES {
                return Err(ApiError::Internal(format!(
                    "order {} version {} never appeared in its history",
                    self.id,
                    self.version + 1
                )));
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.catch_up().await?;
        }
        self.fold(commit.seq, events);
        Ok(())
    }

    /// Folds every commit of the history after the last one folded.
    async fn catch_up(&mut self) -> Result<(), ApiError> {
        loop {
            let page = self
                .live
                .store
                .page::<Event<Readable>>(EntityKind::Order, self.id.as_str(), self.seq, 100)
                .await?;
            if page.is_empty() {
                return Ok(());
            }
            // `fold` moves `self.seq` on, so the next page starts after this one.
            for (seq, events) in page {
                self.fold(seq, events);
            }
        }
    }

    /// Folds one commit; queues an update for each event newer than both what was folded and
    /// what the client saw.
    fn fold(&mut self, seq: u64, events: Vec<Event<Readable>>) {
        for e in events {
            if e.version <= self.version {
                continue;
            }
            self.version = e.version;
            let Readable(Some(body)) = e.body else { continue };
            self.state.apply_at(&body, e.time);
            if e.version > self.after {
                self.ready.push_back(OrderUpdate {
                    order: self.id.clone(),
                    version: e.version,
                    event: body.type_name(),
                    status: self.state.status,
                    time: e.time,
                    seq,
                });
            }
        }
        self.seq = self.seq.max(seq);
    }
}

/// Every order's updates after stream sequence `after_seq` (or from now), for staff.
pub async fn all_orders(
    store: &EventStore,
    after_seq: Option<u64>,
) -> Result<impl Stream<Item = OrderUpdate> + Send + use<>, ApiError> {
    let commits = store.follow(EntityKind::Order, None, after_seq).await?;
    Ok(commits
        .map(|c| {
            let mut out = Vec::new();
            let Ok(Followed { seq, payload, .. }) = c else { return out };
            let Ok(commit) = serde_json::from_slice::<Commit<Readable>>(&payload) else { return out };
            for e in commit {
                let Ok(order) = OrderId::parse(&e.id) else { continue };
                let Readable(Some(body)) = e.body else { continue };
                out.push(OrderUpdate {
                    order,
                    version: e.version,
                    event: body.type_name(),
                    status: body.status(),
                    time: e.time,
                    seq,
                });
            }
            out
        })
        .flat_map(futures::stream::iter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_of_an_unknown_type_keeps_its_version_and_folds_to_nothing() {
        let commit = serde_json::json!([
            {"event_id": "00000000-0000-4000-8000-000000000001", "id": "ord-1", "version": 4,
             "time": "2026-11-27T07:00:00Z", "type": "order.paid", "data": {}},
            {"event_id": "00000000-0000-4000-8000-000000000002", "id": "ord-1", "version": 5,
             "time": "2026-11-27T07:00:01Z", "type": "order.gift_wrapped", "data": {"paper": "red"}},
            {"event_id": "00000000-0000-4000-8000-000000000003", "id": "ord-1", "version": 6,
             "time": "2026-11-27T07:00:02Z", "type": "order.confirmed", "data": {}}
        ]);
        let events: Commit<Readable> =
            serde_json::from_value(commit).expect("a commit with a newer event type reads");
        let read: Vec<(u64, Option<OrderEvent>)> =
            events.into_iter().map(|e| (e.version, e.body.0)).collect();
        assert_eq!(
            read,
            vec![(4, Some(OrderEvent::Paid {})), (5, None), (6, Some(OrderEvent::Confirmed {}))]
        );
    }
}
