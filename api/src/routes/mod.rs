//! Route handlers, one module per area.

pub mod inventory;
pub mod ops;
