//! The `product` read model: the catalog shoppers browse and search. Rows are folded from
//! product events with the entity's own fold; availability comes from the `stock` table.

use crate::{Db, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use souk_messages::Sku;
use souk_messages::event::Event;
use souk_messages::product::{ProductEvent, ProductId, ProductState, ProductStatus};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The projection name under which the catalog projector records its checkpoint.
const PROJECTION: &str = "product";

/// Where the catalog projection writes its rows.
const TABLE: crate::db::Table = crate::db::Table {
    name: "product",
    key: "pid",
    fields: &[
        "slug",
        "title",
        "description",
        "status",
        "categories",
        "attr_values",
        "skus",
        "price_min",
        "price_max",
        "created_at",
        "seq",
        "version",
        "state",
    ],
};
/// The catalog projection's write statement.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| TABLE.upsert(false));

/// One product's events in a projected batch, in stream order.
#[derive(Debug, Clone)]
pub struct ProductEvents {
    /// The product.
    pub id: ProductId,
    /// Its events, each with the stream sequence of its commit.
    pub events: Vec<(u64, Event<ProductEvent>)>,
}

/// How a catalog page is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Most recently created first.
    #[default]
    Newest,
    /// Cheapest variant first.
    PriceAsc,
    /// Dearest variant first.
    PriceDesc,
    /// Best search match first (title matches rank above description matches); needs `q`.
    Relevance,
}

/// What a catalog page asks for.
#[derive(Debug, Clone, Default)]
pub struct CatalogQuery {
    /// Include drafts and archived products (staff).
    pub all_statuses: bool,
    /// Only this category.
    pub category: Option<String>,
    /// Only products with a variant priced at least this (minor units).
    pub min_price: Option<i64>,
    /// Only products with a variant priced at most this.
    pub max_price: Option<i64>,
    /// Only products with an attribute (product or variant) `name=value`.
    pub attribute: Option<(String, String)>,
    /// Only products with at least one variant available to order.
    pub in_stock: bool,
    /// Words to search for in title and description.
    pub search: Option<String>,
    /// Order.
    pub sort: Sort,
    /// Where the previous page ended (from [`CatalogPage::next`]).
    pub after: Option<String>,
    /// Page size.
    pub limit: u32,
}

/// A page of product rows, without availability.
#[derive(Debug, Clone)]
pub struct CatalogPage {
    /// The products, in order.
    pub items: Vec<CatalogRow>,
    /// The cursor of the next page, if the page is full.
    pub next: Option<String>,
}

/// A product as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogRow {
    /// Product id.
    pub pid: String,
    /// The folded state.
    pub state: ProductState,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Lowest variant price.
    pub price_min: i64,
    /// Stream sequence of its last event.
    pub seq: u64,
}

/// The product table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CatalogRepo {
    db: Arc<Db>,
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt { table: "product", detail: e.to_string() }
}

impl CatalogRepo {
    /// The repository over a shared handle.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Folds each product's events into its row (deleting the row of a deleted product) and
    /// advances the checkpoint, in one transaction. Already-applied versions are skipped.
    pub async fn apply(&self, batch: &[ProductEvents], checkpoint: u64) -> Result<(), StorageError> {
        let ids: Vec<&str> = batch.iter().map(|p| p.id.as_str()).collect();
        let existing: Vec<CatalogRow> = crate::db::rows_by_id(&self.db, "product", ids).await?;
        let mut rows: HashMap<String, CatalogRow> =
            existing.into_iter().map(|r| (r.pid.clone(), r)).collect();
        let mut out = crate::db::Rows::default();
        for p in batch {
            let row = rows.remove(p.id.as_str());
            let exists = row.is_some();
            let mut state = row.as_ref().map(|r| r.state.clone()).unwrap_or_default();
            let mut created_at = row.as_ref().map(|r| r.created_at.clone());
            let mut seq = row.as_ref().map_or(0, |r| r.seq);
            if !crate::fold_new(&mut state, &mut created_at, &mut seq, &p.events) {
                continue;
            }
            if state.deleted {
                out.delete(p.id.as_str());
                continue;
            }
            let Some(data) = &state.data else { continue };
            let prices: Vec<i64> = data.variants.iter().map(|v| v.price.amount).collect();
            let mut attr_values: Vec<String> =
                data.attributes.iter().map(|(k, v)| format!("{k}={}", v.to_lowercase())).collect();
            for v in &data.variants {
                attr_values.extend(v.attributes.iter().map(|(k, v)| format!("{k}={}", v.to_lowercase())));
            }
            attr_values.sort();
            attr_values.dedup();
            let value = json!({
                "pid": p.id.as_str(),
                "slug": data.slug.as_str(),
                "title": data.title,
                "description": data.description,
                "status": state.status.unwrap_or(ProductStatus::Draft).as_str(),
                "categories": data.categories,
                "attr_values": attr_values,
                "skus": data.variants.iter().map(|v| v.sku.as_str()).collect::<Vec<_>>(),
                "price_min": prices.iter().min().copied().unwrap_or(0),
                "price_max": prices.iter().max().copied().unwrap_or(0),
                "created_at": created_at.unwrap_or_default(),
                "seq": seq,
                "version": state.version,
                "state": state,
            });
            out.push(p.id.as_str(), exists, value);
        }
        crate::db::apply_projection(&self.db, &UPSERT, out, PROJECTION, checkpoint).await
    }

    /// The last stream sequence the projection has applied; 0 for an empty database.
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        crate::db::checkpoint(&self.db, PROJECTION).await
    }

    /// A page of the catalog.
    pub async fn list(&self, q: &CatalogQuery) -> Result<CatalogPage, StorageError> {
        let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let sort = if search.is_none() && q.sort == Sort::Relevance { Sort::Newest } else { q.sort };
        // Cursors: `<price or time>|<pid>` for keyed orders, an offset for relevance.
        let (after, offset) = match sort {
            Sort::Relevance => (None, crate::cursor::offset::<u32>(q.after.as_deref())?),
            _ => (crate::cursor::keyed::<String>(q.after.as_deref())?, 0),
        };
        let (after_key, after_pid) = after.unwrap_or_default();
        let after_price: i64 = match sort {
            Sort::PriceAsc | Sort::PriceDesc if !after_pid.is_empty() => {
                after_key.parse().map_err(|_| crate::BadCursor)?
            }
            _ => 0,
        };
        // The ORDER BY and cursor clauses come from this fixed table, never from input.
        let (cursor, order) = match sort {
            Sort::Newest => (
                "(created_at < $after_key OR (created_at = $after_key AND pid < $after_pid))",
                "ORDER BY created_at DESC, pid DESC",
            ),
            Sort::PriceAsc => (
                "(price_min > $after_price OR (price_min = $after_price AND pid > $after_pid))",
                "ORDER BY price_min ASC, pid ASC",
            ),
            Sort::PriceDesc => (
                "(price_min < $after_price OR (price_min = $after_price AND pid < $after_pid))",
                "ORDER BY price_min DESC, pid DESC",
            ),
            Sort::Relevance => ("true", "ORDER BY in_title DESC, score DESC, pid ASC"),
        };
        // BM25 alone cannot put title matches first (on a small catalog a common word scores
        // zero), so a title match is its own, first, ranking key.
        let score = if search.is_some() {
            "(title @1@ $search) AS in_title, (search::score(1) * 3 + search::score(2)) AS score"
        } else {
            "false AS in_title, 0 AS score"
        };
        let conditions = crate::db::given(&[
            (!q.all_statuses, "status = 'active'"),
            (q.category.as_deref().is_some_and(|c| !c.is_empty()), "$category IN categories"),
            (q.min_price.is_some(), "price_max >= $min_price"),
            (q.max_price.is_some(), "price_min <= $max_price"),
            (q.attribute.is_some(), "$attr IN attr_values"),
            // A per-row subquery: only in the statement when asked for (SurrealDB does not skip it).
            (
                q.in_stock,
                "count((SELECT VALUE sku FROM stock WHERE sku IN $parent.skus AND available > 0)) > 0",
            ),
            (search.is_some(), "(title @1@ $search OR description @2@ $search)"),
            (!after_pid.is_empty(), cursor),
        ]);
        let sql = format!(
            "SELECT pid, state, created_at, price_min, seq, {score} FROM product WHERE {conditions}
             {order} LIMIT $limit START $offset"
        );
        let attr = q.attribute.as_ref().map(|(k, v)| format!("{k}={}", v.to_lowercase())).unwrap_or_default();
        let mut res = self
            .db
            .query(sql)
            .bind(json!({
                "category": q.category.clone().unwrap_or_default(),
                "min_price": q.min_price.unwrap_or(0),
                "max_price": q.max_price.unwrap_or(i64::MAX),
                "attr": attr,
                "search": search.unwrap_or(""),
                "after_key": after_key,
                "after_price": after_price,
                "after_pid": after_pid,
                "limit": q.limit,
                "offset": offset,
            }))
            .await?;
        let rows: Vec<serde_json::Value> = res.take(0)?;
        let items: Vec<CatalogRow> =
            rows.into_iter().map(|v| serde_json::from_value(v).map_err(corrupt)).collect::<Result<_, _>>()?;
        let next = (items.len() == q.limit as usize)
            .then(|| {
                items.last().map(|last| match sort {
                    Sort::Newest => format!("{}|{}", last.created_at, last.pid),
                    Sort::PriceAsc | Sort::PriceDesc => format!("{}|{}", last.price_min, last.pid),
                    Sort::Relevance => (offset + q.limit).to_string(),
                })
            })
            .flatten();
        Ok(CatalogPage { items, next })
    }

    /// Units available per SKU, from the stock read model (0 for a SKU never stocked).
    pub async fn availability(&self, skus: &[Sku]) -> Result<BTreeMap<Sku, u64>, StorageError> {
        let names: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let mut res = self
            .db
            .query("SELECT sku, available FROM stock WHERE sku IN $skus")
            .bind(("skus", names))
            .await?;
        #[derive(Deserialize)]
        struct Level {
            sku: String,
            available: u64,
        }
        let rows: Vec<serde_json::Value> = res.take(0)?;
        let mut out: BTreeMap<Sku, u64> = skus.iter().map(|s| (s.clone(), 0)).collect();
        for v in rows {
            let l: Level = serde_json::from_value(v).map_err(corrupt)?;
            if let Ok(sku) = Sku::parse(l.sku) {
                out.insert(sku, l.available);
            }
        }
        Ok(out)
    }
}
