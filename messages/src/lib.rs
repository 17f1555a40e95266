//! Souk's wire contract: the commands, replies, events, identifiers, validation rules and
//! error codes that every other crate speaks, and the one place where NATS subjects are spelled.
//!
//! Plain serde data only: no tokio, NATS, HTTP or database types may appear here, so every
//! crate (and every external tool reading `souk.evt.>`) can share these definitions.
//!
//! # Layout
//! - [`asyncapi`]: the AsyncAPI description of every subject, schemas generated from these types.
//! - [`cart`]: the cart entity: lines, per-line limits, idle expiry, guest merge.
//! - [`error`]: stable error codes and the `Reply<T>` envelope of every request/reply.
//! - [`ids`]: validated identifiers (`Sku`, `ReservationId`, `NodeId`).
//! - [`event`]: the public event envelope published on `souk.evt.<kind>.<id>`.
//! - [`entity`]: the `Entity` trait every kind implements and the bus request envelope.
//! - [`log`]: log records on their way to the central log store.
//! - [`notify`]: notifications: channels, topics, delivery attempts, dead letters.
//! - [`order`]: the order saga entity: placement, its steps, cancellation with a reason.
//! - [`product`]: the product entity: variants, money, catalog rules.
//! - [`stock`]: the stock item entity: commands, events, its state fold and its view.
//! - [`subject`]: entity kinds, shard hashing and the typed subject builder.
//! - [`user`]: the user account entity, and the rules for emails, names, phones and passwords.

pub mod asyncapi;
pub mod cart;
pub mod entity;
pub mod error;
pub mod event;
pub mod ids;
pub mod log;
pub mod notify;
pub mod order;
pub mod product;
pub mod stock;
pub mod subject;
pub mod user;

pub use entity::{Entity, Request};
pub use error::{ErrorCode, Reply, ReplyError};
pub use ids::{IdError, NodeId, ReservationId, Sku, UserId};
