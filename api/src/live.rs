//! Live order status: every order event, once and in order, for WebSocket and Server-Sent
//! Events clients. Any node serves any order: the updates come from the event stream, not
//! from the node that owns the order.

use crate::error::ApiError;
use futures::{Stream, StreamExt as _};
use serde::Serialize;
use souk_messages::event::{Commit, Fold};
use souk_messages::order::{OrderEvent, OrderId, OrderState, OrderStatus};
use souk_messages::subject::EntityKind;
use souk_nats::EventStore;
use time::OffsetDateTime;

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

/// One order's updates after its version `after`, then live as they happen.
pub async fn order(
    store: &EventStore,
    id: OrderId,
    after: u64,
) -> Result<impl Stream<Item = OrderUpdate> + Send + use<>, ApiError> {
    let commits = store.follow(EntityKind::Order, Some(id.as_str()), Some(0)).await?;
    let mut state = OrderState::default();
    Ok(commits
        .map(move |c| {
            let mut out = Vec::new();
            let Ok((seq, payload)) = c else { return out };
            let Ok(commit) = serde_json::from_slice::<Commit<OrderEvent>>(&payload) else { return out };
            for e in commit {
                // Folded from the start, so the status is exact; only newer versions are sent.
                state.apply(&e.body);
                if e.version > after {
                    out.push(OrderUpdate {
                        order: id.clone(),
                        version: e.version,
                        event: e.body.type_name(),
                        status: state.status,
                        time: e.time,
                        seq,
                    });
                }
            }
            out
        })
        .flat_map(futures::stream::iter))
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
            let Ok((seq, payload)) = c else { return out };
            let Ok(commit) = serde_json::from_slice::<Commit<OrderEvent>>(&payload) else { return out };
            for e in commit {
                let Ok(order) = OrderId::parse(&e.id) else { continue };
                out.push(OrderUpdate {
                    order,
                    version: e.version,
                    event: e.body.type_name(),
                    status: e.body.status(),
                    time: e.time,
                    seq,
                });
            }
            out
        })
        .flat_map(futures::stream::iter))
}
