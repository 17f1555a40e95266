//! Souk's read side: the SurrealDB connection, versioned schema migrations, and the read-model
//! repositories that projectors fill from events and the edge queries.
//!
//! Depends on `souk-messages` only (plus SurrealDB). Every SurrealQL statement here takes its
//! values as bound parameters; none is built from input with `format!`.
//!
//! # Layout
//! - [`db`]: connect (`mem://`, `surrealkv://path`, `ws://host`) and migrate.
//! - [`stock`]: the `stock` read model and its projection checkpoint.

pub mod db;
pub mod stock;

pub use db::{Db, DbSettings, connect, migrate};
pub use stock::{StockChange, StockRepo};

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
