//! The `stock` read model: one row per SKU with its levels, filled by the stock projector
//! and read by the inventory list.

use crate::{Db, StorageError, Writers};
use serde::Deserialize;
use serde_json::json;
use souk_messages::Sku;
use souk_messages::stock::{Levels, StockView};
use std::collections::HashSet;

/// A stock item's levels as of one of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    /// The SKU.
    pub sku: Sku,
    /// The entity version after the event.
    pub version: u64,
    /// The stream sequence of the commit that carried it.
    pub seq: u64,
    /// Levels after the event.
    pub levels: Levels,
}

#[derive(Debug, Deserialize)]
struct StockRow {
    sku: String,
    on_hand: u64,
    reserved: u64,
    available: u64,
    version: u64,
    #[serde(default)]
    low_stock: u64,
    #[serde(default)]
    retired: bool,
}

impl TryFrom<StockRow> for StockView {
    type Error = StorageError;
    fn try_from(r: StockRow) -> Result<Self, StorageError> {
        let sku =
            Sku::parse(r.sku).map_err(|e| StorageError::Corrupt { table: "stock", detail: e.to_string() })?;
        Ok(Self {
            sku,
            on_hand: r.on_hand,
            reserved: r.reserved,
            available: r.available,
            version: r.version,
            low_stock: r.low_stock,
            retired: r.retired,
        })
    }
}

/// The stock table. Cheap to clone: the handle is shared, because cloning a SurrealDB handle
/// opens a new session.
#[derive(Debug, Clone)]
pub struct StockRepo {
    db: std::sync::Arc<Db>,
    /// SKUs known to have a row, which are updated by id rather than inserted (see
    /// `db::Rows`). Rows are never deleted, so a SKU once here stays true.
    present: std::sync::Arc<std::sync::Mutex<HashSet<Sku>>>,
}

/// The projection name under which the stock projector records its checkpoint.
const PROJECTION: &str = "stock";

/// Where the stock projection writes its rows.
const TABLE: crate::db::Table = crate::db::Table {
    name: "stock",
    key: "sku",
    fields: &["on_hand", "reserved", "available", "low_stock", "retired", "next_expiry", "seq", "version"],
};
/// The stock projection's statement for several writers, which only moves rows forward.
static GUARDED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| TABLE.upsert(true));
/// The stock projection's statement for a sole writer, which overwrites.
static OVERWRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| TABLE.upsert(false));

impl StockRepo {
    /// The repository over `db`.
    pub fn new(db: Db) -> Self {
        Self::shared(std::sync::Arc::new(db))
    }

    /// The repository over a handle shared with other repositories.
    pub fn shared(db: std::sync::Arc<Db>) -> Self {
        Self { db, present: std::sync::Arc::default() }
    }

    /// Applies changes and advances the checkpoint to `checkpoint`, in one transaction.
    /// [`Writers::Shared`]: a row only moves forward in version, so replays and out-of-order
    /// batches change nothing. [`Writers::Sole`]: the caller applies only changes newer than
    /// the checkpoint, in stream order, so each row is simply overwritten.
    pub async fn apply(
        &self,
        changes: &[StockChange],
        checkpoint: u64,
        writers: Writers,
    ) -> Result<(), StorageError> {
        let row = |c: &StockChange| {
            json!({
                "sku": c.sku.as_str(),
                "on_hand": c.levels.on_hand,
                "reserved": c.levels.reserved,
                "available": c.levels.available(),
                "low_stock": c.levels.low_stock,
                "retired": c.levels.retired,
                "next_expiry": c.levels.next_expiry.unwrap_or(0),
                "version": c.version,
                "seq": c.seq,
            })
        };
        // Rows are only ever added, so a SKU whose row this process has written is stored.
        let mut rows = crate::db::Rows::default();
        {
            let present = self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for c in changes {
                rows.push(c.sku.as_str(), present.contains(&c.sku), row(c));
            }
        }
        // The insert's per-field guards are most of its cost, so a sole writer goes without.
        let upsert: &str = match writers {
            Writers::Shared => &GUARDED,
            Writers::Sole => &OVERWRITE,
        };
        crate::db::apply_projection(&self.db, upsert, rows, PROJECTION, checkpoint).await?;
        let mut present = self.present.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        present.extend(changes.iter().map(|c| c.sku.clone()));
        Ok(())
    }

    /// The last stream sequence the projection has applied; 0 for an empty database.
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        crate::db::checkpoint(&self.db, PROJECTION).await
    }

    /// SKUs with a held reservation whose time was up at `now` (Unix seconds), as far as
    /// the read model knows: the candidates for an expiry sweep.
    pub async fn due(&self, now: i64, limit: u32) -> Result<Vec<Sku>, StorageError> {
        let mut res = self
            .db
            .query("SELECT VALUE sku FROM stock WHERE next_expiry > 0 AND next_expiry <= $now LIMIT $limit")
            .bind(json!({ "now": now, "limit": limit }))
            .await?;
        let skus: Vec<String> = res.take(0)?;
        Ok(skus.into_iter().filter_map(|s| Sku::parse(s).ok()).collect())
    }

    /// A page of stock items ordered by SKU, after `after`, optionally only those with fewer
    /// than `below` units available.
    pub async fn list(
        &self,
        after: Option<&Sku>,
        below: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StockView>, StorageError> {
        let mut res = self
            .db
            .query(
                r"SELECT sku, on_hand, reserved, available, version, low_stock, retired FROM stock
                  WHERE sku > $after AND available < $below
                  ORDER BY sku ASC LIMIT $limit",
            )
            // Neutral bounds instead of optional filters: a JSON null binds as NULL, which
            // SurrealQL does not treat as an absent value.
            .bind(json!({
                "after": after.map_or("", Sku::as_str),
                "below": below.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX)),
                "limit": limit,
            }))
            .await?;
        let rows: Vec<serde_json::Value> = res.take(0)?;
        rows.into_iter()
            .map(|v| {
                let row: StockRow = serde_json::from_value(v)
                    .map_err(|e| StorageError::Corrupt { table: "stock", detail: e.to_string() })?;
                StockView::try_from(row)
            })
            .collect()
    }
}
