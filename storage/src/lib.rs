//! Souk's read side: the SurrealDB connection, versioned schema migrations, and the read-model
//! repositories that projectors fill from events and the edge queries.
//!
//! Depends on `souk-messages` only (plus SurrealDB). Every SurrealQL statement here takes its
//! values as bound parameters; none is built from input with `format!`.
//!
//! # Layout
//! - [`db`]: connect (`mem://`, `surrealkv://path`, `ws://host`) and migrate.
//! - [`stock`]: the `stock` read model and its projection checkpoint.
//! - [`catalog`]: the `product` read model: browse, filter, search, availability.
//! - [`log`]: the central log store, searchable.
//! - [`notification`]: the delivery log: every notification's attempts.
//! - [`order`]: the `orders` read model: customers' order lists, the staff's order search.
//! - [`user`]: the `users` read model, for the admin user list and search.

pub mod catalog;
pub mod cursor;
pub mod db;
pub mod log;
pub mod notification;
pub mod order;
pub mod stock;
pub mod user;

pub use catalog::{CatalogPage, CatalogQuery, CatalogRepo, CatalogRow, ProductEvents, Sort};
pub use cursor::BadCursor;
pub use db::{Db, DbSettings, Writers, connect, migrate};
pub use log::{LogQuery, LogRepo};
pub use notification::{Delivery, DeliveryPage, DeliveryQuery, NotificationEvents, NotificationRepo};
pub use order::{OrderEvents, OrderPage, OrderQuery, OrderRepo};
pub use stock::{StockChange, StockRepo};
pub use user::{UserEvents, UserRepo};

/// Every read model over one database handle.
#[derive(Debug, Clone)]
pub struct ReadModels {
    /// Stock levels.
    pub stock: StockRepo,
    /// User accounts.
    pub users: UserRepo,
    /// The product catalog.
    pub catalog: CatalogRepo,
    /// Orders.
    pub orders: OrderRepo,
    /// The delivery log.
    pub notifications: NotificationRepo,
    /// The central log store.
    pub logs: LogRepo,
    db: std::sync::Arc<Db>,
}

impl ReadModels {
    /// The read models over `db`, sharing one handle (cloning a SurrealDB handle would open
    /// a new session without the selected namespace).
    pub fn new(db: Db) -> Self {
        let db = std::sync::Arc::new(db);
        Self {
            stock: StockRepo::shared(db.clone()),
            users: UserRepo::new(db.clone()),
            catalog: CatalogRepo::new(db.clone()),
            orders: OrderRepo::new(db.clone()),
            notifications: NotificationRepo::new(db.clone()),
            logs: LogRepo::new(db.clone()),
            db,
        }
    }

    /// Empties every read model built from entity histories, checkpoints included, so the
    /// projectors rebuild them from the streams; the central log store stays. Only before
    /// the projectors and the edge start: repositories remember which rows exist.
    pub async fn clear(&self) -> Result<(), StorageError> {
        crate::db::clear(&self.db).await
    }
}

/// Applies the events newer than `state`'s version, tracking the time of the entity's first
/// event and the sequence of its last; returns whether anything changed. Shared by the
/// projections that fold events with the entity's own rules.
pub(crate) fn fold_new<S: souk_messages::Entity>(
    state: &mut S,
    created_at: &mut Option<String>,
    seq: &mut u64,
    events: &[(u64, souk_messages::event::Event<S::Event>)],
) -> bool {
    let before = state.version();
    for (s, e) in events {
        if e.version <= state.version() {
            continue;
        }
        if created_at.is_none() {
            *created_at = e.time.format(&time::format_description::well_known::Rfc3339).ok();
        }
        state.apply_at(&e.body, e.time);
        *seq = *s;
    }
    state.version() != before
}

/// Why a read-model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SurrealDB refused or failed the operation.
    #[error("database error: {0}")]
    Db(#[from] surrealdb::Error),
    /// A row does not have the shape the code expects.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A list's `after` cursor is not one it handed out.
    #[error(transparent)]
    BadCursor(#[from] BadCursor),
}
