//! Souk's read side: the SurrealDB connection, versioned schema migrations, and the read-model
//! repositories that projectors fill from events and the edge queries.
//!
//! Depends on `souk-messages` only (plus SurrealDB). Every SurrealQL statement here takes its
//! values as bound parameters; none is built from input with `format!`.
//!
//! # Layout
//! - [`db`]: connect (`mem://`, `surrealkv://path`, `ws://host`) and migrate.
//! - [`stock`]: the `stock` read model and its projection checkpoint.
//! - [`user`]: the `users` read model, for the admin user list and search.

pub mod db;
pub mod stock;
pub mod user;

pub use db::{Db, DbSettings, connect, migrate};
pub use stock::{StockChange, StockRepo};
pub use user::{UserEvents, UserRepo};

/// Every read model over one database handle.
#[derive(Debug, Clone)]
pub struct ReadModels {
    /// Stock levels.
    pub stock: StockRepo,
    /// User accounts.
    pub users: UserRepo,
}

impl ReadModels {
    /// The read models over `db`, sharing one handle (cloning a SurrealDB handle would open
    /// a new session without the selected namespace).
    pub fn new(db: Db) -> Self {
        let db = std::sync::Arc::new(db);
        Self { stock: StockRepo::shared(db.clone()), users: UserRepo::new(db) }
    }
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
}
