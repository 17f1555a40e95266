//! The `notifications` read model, the delivery log: one row per notification with every
//! attempt and its outcome, folded from `notification.attempted` events, for the admins'
//! `GET /v1/admin/notifications`.

use crate::{Db, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use souk_messages::UserId;
use souk_messages::event::Event;
use souk_messages::notify::{Channel, NotificationEvent, NotificationId, Outcome, Topic, WebhookBody};
use souk_messages::order::OrderId;
use std::collections::HashMap;
use std::sync::Arc;

/// The projection name under which the notification projector records its checkpoint.
const PROJECTION: &str = "notification";

/// Where the notification projection writes its rows.
const TABLE: crate::db::Table =
    crate::db::Table { name: "notifications", key: "nid", fields: &["status", "delivery", "webhook", "seq"] };
/// The notification projection's write statement.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| TABLE.upsert(false));

/// One notification's events in a projected batch, in stream order.
#[derive(Debug, Clone)]
pub struct NotificationEvents {
    /// The notification.
    pub id: NotificationId,
    /// Its events, each with the stream sequence of its commit.
    pub events: Vec<(u64, Event<NotificationEvent>)>,
}

/// One delivery attempt, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The provider's answer or the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When, RFC 3339.
    pub at: String,
}

/// A notification and its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The notification id.
    pub id: String,
    /// The channel.
    pub channel: Channel,
    /// What it is about.
    pub topic: Topic,
    /// The address.
    pub to: String,
    /// The customer it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub customer: Option<UserId>,
    /// The order it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub order: Option<OrderId>,
    /// The latest outcome.
    pub status: Outcome,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    nid: String,
    /// Unix nanoseconds of the first attempt: the list's order.
    created_ns: i64,
    seq: u64,
    // Copies of the delivery's fields that lists filter on, at the top for their indexes.
    to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    customer: Option<String>,
    order: Option<String>,
    channel: Channel,
    status: Outcome,
    delivery: Delivery,
    /// A webhook's body, for replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook: Option<WebhookBody>,
}

/// Which deliveries a page shows.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Only to this address.
    pub to: Option<String>,
    /// Only about this order.
    pub order: Option<OrderId>,
    /// Only over this channel.
    pub channel: Option<Channel>,
    /// Only those whose latest outcome is this.
    pub status: Option<Outcome>,
    /// Where the previous page ended (its `next`).
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// A page of deliveries, newest first.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    /// The deliveries.
    pub items: Vec<Delivery>,
    /// The cursor of the next page, if the page is full.
    pub next: Option<String>,
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt { table: "notifications", detail: e.to_string() }
}

/// The notifications table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NotificationRepo {
    db: Arc<Db>,
}

impl NotificationRepo {
    /// The repository over a shared handle.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Adds each notification's new attempts to its row and advances the checkpoint, in one
    /// transaction. An attempt already recorded is skipped, so replays are harmless.
    pub async fn apply(&self, batch: &[NotificationEvents], checkpoint: u64) -> Result<(), StorageError> {
        let ids: Vec<&str> = batch.iter().map(|n| n.id.as_str()).collect();
        let existing: Vec<Row> = crate::db::rows_by_id(&self.db, "notifications", ids).await?;
        let mut rows: HashMap<String, Row> = existing.into_iter().map(|r| (r.nid.clone(), r)).collect();
        let mut out = crate::db::Rows::default();
        for n in batch {
            let mut row = rows.remove(n.id.as_str());
            let mut exists = row.is_some();
            let mut changed = false;
            for (seq, e) in &n.events {
                let NotificationEvent::Attempted {
                    channel,
                    topic,
                    to,
                    customer,
                    order,
                    outcome,
                    detail,
                    webhook,
                } = &e.body
                else {
                    // Redacted: the row goes; its history now holds nothing else.
                    if row.take().is_some() && exists {
                        out.delete(n.id.as_str());
                        exists = false;
                    }
                    continue;
                };
                let at = e.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                let row = row.get_or_insert_with(|| Row {
                    nid: n.id.to_string(),
                    created_ns: i64::try_from(e.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                    seq: 0,
                    to: to.clone(),
                    customer: customer.as_ref().map(|c| c.to_string()),
                    order: order.as_ref().map(|o| o.to_string()),
                    channel: *channel,
                    status: *outcome,
                    webhook: None,
                    delivery: Delivery {
                        id: n.id.to_string(),
                        channel: *channel,
                        topic: *topic,
                        to: to.clone(),
                        customer: customer.clone(),
                        order: order.clone(),
                        status: *outcome,
                        attempts: Vec::new(),
                    },
                });
                if row.delivery.attempts.iter().any(|a| a.attempt == e.version) {
                    continue;
                }
                row.delivery.attempts.push(Attempt {
                    attempt: e.version,
                    outcome: *outcome,
                    detail: detail.clone(),
                    at,
                });
                row.delivery.attempts.sort_by_key(|a| a.attempt);
                if let Some(last) = row.delivery.attempts.last() {
                    row.delivery.status = last.outcome;
                    row.status = last.outcome;
                }
                if webhook.is_some() {
                    row.webhook.clone_from(webhook);
                }
                row.seq = *seq;
                changed = true;
            }
            if let (true, Some(row)) = (changed, row) {
                let value = serde_json::to_value(&row).map_err(corrupt)?;
                out.push(&row.nid, exists, value);
            }
        }
        crate::db::apply_projection(&self.db, &UPSERT, out, PROJECTION, checkpoint).await
    }

    /// The last stream sequence the projection has applied; 0 for an empty database.
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        crate::db::checkpoint(&self.db, PROJECTION).await
    }

    /// The notifications that concerned `customer` or went to one of `addresses` (every
    /// message to a person names them; the addresses catch any that does not), by id: what an
    /// erasure of the account redacts, and what a copy of their data shows.
    pub async fn of_person(
        &self,
        customer: &UserId,
        addresses: &[String],
    ) -> Result<Vec<Delivery>, StorageError> {
        // One indexed lookup each: SurrealDB scans the table for an `OR` or an `IN`.
        let mut query = self.db.query("SELECT VALUE delivery FROM notifications WHERE customer = $customer");
        for i in 0..addresses.len() {
            query = query.query(format!("SELECT VALUE delivery FROM notifications WHERE `to` = $to{i}"));
        }
        let mut binds = serde_json::Map::new();
        binds.insert("customer".into(), json!(customer.as_str()));
        for (i, a) in addresses.iter().enumerate() {
            binds.insert(format!("to{i}"), json!(a));
        }
        let mut res = query.bind(serde_json::Value::Object(binds)).await?;
        let mut found = std::collections::BTreeMap::new();
        for i in 0..=addresses.len() {
            let rows: Vec<serde_json::Value> = res.take(i)?;
            for row in rows {
                let delivery: Delivery = serde_json::from_value(row).map_err(corrupt)?;
                found.insert(delivery.id.clone(), delivery);
            }
        }
        Ok(found.into_values().collect())
    }

    /// One notification and, for a webhook, the body it posts.
    pub async fn get(
        &self,
        id: &NotificationId,
    ) -> Result<Option<(Delivery, Option<WebhookBody>)>, StorageError> {
        let mut res = self
            .db
            .query("SELECT * OMIT id FROM notifications WHERE nid = $nid")
            .bind(("nid", id.as_str().to_owned()))
            .await?;
        let rows: Vec<serde_json::Value> = res.take(0)?;
        let Some(row) = rows.into_iter().next() else { return Ok(None) };
        let row: Row = serde_json::from_value(row).map_err(corrupt)?;
        Ok(Some((row.delivery, row.webhook)))
    }

    /// A page of deliveries, newest first. Cursors are `<created_ns>|<id>`.
    pub async fn list(&self, q: &DeliveryQuery) -> Result<DeliveryPage, StorageError> {
        let (after_at, after_id) = crate::cursor::keyed::<i64>(q.after.as_deref())?.unwrap_or_default();
        let value = |v: Option<serde_json::Value>| v.unwrap_or(json!(""));
        // An order's or a recipient's deliveries are read through their index and sorted.
        // Otherwise the log is read backwards through the creation-time index (with a status,
        // the status one), up to the page size, which SurrealDB does only when the order is by
        // `created_ns` alone; that index keeps deliveries created in the same nanosecond in
        // record-id, that is delivery-id, order, so the cursor's tie-break still holds.
        let to = q.to.as_deref().is_some_and(|t| !t.is_empty());
        let conditions = crate::db::given(&[
            (to, "`to` = $to"),
            (q.order.is_some(), "`order` = $order"),
            (q.channel.is_some(), "channel = $channel"),
            (q.status.is_some(), "status = $status"),
            (!after_id.is_empty(), "created_ns <= $after_at AND (created_ns < $after_at OR nid < $after_id)"),
        ]);
        let order = if to || q.order.is_some() { "created_ns DESC, nid DESC" } else { "created_ns DESC" };
        let mut res = self
            .db
            .query(format!(
                "SELECT * OMIT id FROM notifications WHERE {conditions} ORDER BY {order} LIMIT $limit"
            ))
            .bind(json!({
                "to": q.to.as_deref().unwrap_or(""),
                "order": q.order.as_ref().map_or("", OrderId::as_str),
                "channel": value(q.channel.map(|c| json!(c))),
                "status": value(q.status.map(|s| json!(s))),
                "after_at": after_at,
                "after_id": after_id,
                "limit": q.limit,
            }))
            .await?;
        let rows: Vec<serde_json::Value> = res.take(0)?;
        let rows: Vec<Row> =
            rows.into_iter().map(|v| serde_json::from_value(v).map_err(corrupt)).collect::<Result<_, _>>()?;
        let next = (rows.len() == q.limit as usize)
            .then(|| rows.last().map(|r| format!("{}|{}", r.created_ns, r.nid)))
            .flatten();
        Ok(DeliveryPage { items: rows.into_iter().map(|r| r.delivery).collect(), next })
    }
}
