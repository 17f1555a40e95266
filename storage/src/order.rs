//! The `orders` read model: one row per order, for customers' order lists and the staff's
//! order search. Rows are folded from order events with the entity's own fold.

use crate::{Db, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use souk_messages::UserId;
use souk_messages::event::Event;
use souk_messages::order::{DisputeStatus, OrderEvent, OrderId, OrderState, OrderStatus, OrderView};
use std::collections::HashMap;
use std::sync::Arc;

/// The projection name under which the order projector records its checkpoint.
const PROJECTION: &str = "order";

/// Where the order projection writes its rows.
const TABLE: crate::db::Table = crate::db::Table {
    name: "orders",
    key: "oid",
    fields: &["customer", "status", "placed_at", "placed_ns", "seq", "state"],
};
/// The order projection's write statement.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| TABLE.upsert(false));

/// One order's events in a projected batch, in stream order.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    /// The order.
    pub id: OrderId,
    /// Its events, each with the stream sequence of its commit.
    pub events: Vec<(u64, Event<OrderEvent>)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OrderRow {
    oid: String,
    customer: String,
    status: OrderStatus,
    /// RFC 3339, as the fold records it.
    placed_at: String,
    /// Unix nanoseconds: the order of the list (RFC 3339 strings do not sort by time).
    placed_ns: i64,
    seq: u64,
    state: OrderState,
}

/// Which orders a page shows.
#[derive(Debug, Clone, Default)]
pub struct OrderQuery {
    /// Only this customer's.
    pub customer: Option<UserId>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only orders placed from this time on.
    pub placed_since: Option<time::OffsetDateTime>,
    /// Only orders placed before this time.
    pub placed_until: Option<time::OffsetDateTime>,
    /// Only the order paid with this provider's payment reference.
    pub payment: Option<String>,
    /// Only orders whose payment's dispute stands so.
    pub dispute: Option<DisputeStatus>,
    /// Where the previous page ended (its `next`).
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// A page of orders, newest first.
#[derive(Debug, Clone)]
pub struct OrderPage {
    /// The orders.
    pub items: Vec<OrderView>,
    /// The cursor of the next page, if the page is full.
    pub next: Option<String>,
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt { table: "orders", detail: e.to_string() }
}

/// The orders table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderRepo {
    db: Arc<Db>,
}

impl OrderRepo {
    /// The repository over a shared handle.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Folds each order's events into its row and advances the checkpoint, in one
    /// transaction. Already-applied versions are skipped, so replays are harmless.
    pub async fn apply(&self, batch: &[OrderEvents], checkpoint: u64) -> Result<(), StorageError> {
        let ids: Vec<&str> = batch.iter().map(|o| o.id.as_str()).collect();
        let existing: Vec<OrderRow> = crate::db::rows_by_id(&self.db, "orders", ids).await?;
        let mut rows: HashMap<String, OrderRow> = existing.into_iter().map(|r| (r.oid.clone(), r)).collect();
        let mut out = crate::db::Rows::default();
        for order in batch {
            let row = rows.remove(order.id.as_str());
            let exists = row.is_some();
            let mut state = row.as_ref().map(|r| r.state.clone()).unwrap_or_default();
            let mut placed_at = row.as_ref().map(|r| r.placed_at.clone());
            let mut seq = row.as_ref().map_or(0, |r| r.seq);
            if !crate::fold_new(&mut state, &mut placed_at, &mut seq, &order.events) {
                continue;
            }
            let (Some(placement), Some(status)) = (&state.placement, state.status) else { continue };
            let placed_at = placed_at.unwrap_or_default();
            let placed_ns =
                time::OffsetDateTime::parse(&placed_at, &time::format_description::well_known::Rfc3339)
                    .map_or(0, |t| i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX));
            let row = OrderRow {
                oid: order.id.to_string(),
                customer: placement.customer.to_string(),
                status,
                placed_ns,
                placed_at,
                seq,
                state,
            };
            let value = serde_json::to_value(&row).map_err(corrupt)?;
            out.push(&row.oid, exists, value);
        }
        crate::db::apply_projection(&self.db, &UPSERT, out, PROJECTION, checkpoint).await
    }

    /// The last stream sequence the projection has applied; 0 for an empty database.
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        crate::db::checkpoint(&self.db, PROJECTION).await
    }

    /// A page of orders, newest first. Cursors are `<placed_ns>|<order id>`.
    pub async fn list(&self, q: &OrderQuery) -> Result<OrderPage, StorageError> {
        let (after_at, after_id) = crate::cursor::keyed::<i64>(q.after.as_deref())?.unwrap_or_default();
        // A customer's page is read through the customer index and sorted. Every order is read
        // backwards through the placement-time index (with a status, the status one), up to
        // the page size, which SurrealDB does only when the order is by `placed_ns` alone (a
        // tie-break sorts the whole table); that index keeps orders placed in the same
        // nanosecond in record-id, that is order-id, order, so the cursor's tie-break holds.
        let conditions = crate::db::given(&[
            (q.customer.is_some(), "customer = $customer"),
            (q.status.is_some(), "status = $status"),
            (q.placed_since.is_some(), "placed_ns >= $since"),
            (q.placed_until.is_some(), "placed_ns < $until"),
            (q.payment.is_some(), "state.payment = $payment"),
            (q.dispute.is_some(), "state.dispute.status = $dispute"),
            (!after_id.is_empty(), "placed_ns <= $after_at AND (placed_ns < $after_at OR oid < $after_id)"),
        ]);
        let ns = |t: Option<time::OffsetDateTime>| {
            t.map_or(0, |t| i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
        };
        let order = if q.customer.is_some() { "placed_ns DESC, oid DESC" } else { "placed_ns DESC" };
        let query = format!("SELECT * OMIT id FROM orders WHERE {conditions} ORDER BY {order} LIMIT $limit");
        let mut res = self
            .db
            .query(query)
            .bind(json!({
                "customer": q.customer.as_ref().map_or("", UserId::as_str),
                "status": q.status.map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or(json!("")),
                "since": ns(q.placed_since),
                "until": ns(q.placed_until),
                "payment": q.payment.as_deref().unwrap_or(""),
                "dispute": q.dispute.map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or(json!("")),
                "after_at": after_at,
                "after_id": after_id,
                "limit": q.limit,
            }))
            .await?;
        let rows: Vec<serde_json::Value> = res.take(0)?;
        let rows: Vec<OrderRow> =
            rows.into_iter().map(|v| serde_json::from_value(v).map_err(corrupt)).collect::<Result<_, _>>()?;
        let next = (rows.len() == q.limit as usize)
            .then(|| rows.last().map(|r| format!("{}|{}", r.placed_ns, r.oid)))
            .flatten();
        let items = rows
            .into_iter()
            .filter_map(|r| {
                let id = OrderId::parse(&r.oid).ok()?;
                let mut view = souk_messages::Entity::view(&r.state, &id).public();
                // Rows folded before orders kept their timeline still know when they were placed.
                if view.placed_at.is_none() {
                    view.placed_at = time::OffsetDateTime::parse(
                        &r.placed_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok();
                }
                Some(view)
            })
            .collect();
        Ok(OrderPage { items, next })
    }
}
