//! Souk's NATS layer: connecting, provisioning JetStream, the event store, request/reply with
//! deadlines, and cluster membership with shard leases.
//!
//! Depends on `souk-messages` only (plus async-nats); never on storage, actors or the edge.
//!
//! # Layout
//! - [`connect`]: connection settings (URLs, credentials, TLS) and the connect call.
//! - [`server`]: a local `nats-server` child, for single-node runs and tests.
//! - [`streams`]: the `SOUK_EVENTS` stream and the KV buckets, created idempotently.
//! - [`event_store`]: append with optimistic concurrency, load with snapshots.
//! - [`bus`]: typed request/reply with a deadline and retry while a shard moves.
//! - [`cluster`]: live-node heartbeats, rendezvous assignment and fenced shard leases.
//! - [`kv`]: a typed JSON KV bucket with revision-checked writes.
//! - [`catalog`]: product slug and SKU claims.
//! - [`accounts`]: email claims, password hashes, refresh-token families, login failures.
//! - [`metrics`] and [`health`]: what the edge exposes on `/metrics` and `/readyz`.
//! - [`monitor`]: the connection and consumer-lag gauges.
//! - [`notify`]: queueing notifications; the webhook endpoint registry.
//! - [`backup`]: snapshots of every Souk stream into a folder, and their restore.

pub mod accounts;
pub mod backup;
pub mod bus;
pub mod catalog;
pub mod cluster;
pub mod connect;
pub mod event_store;
pub mod health;
pub mod kv;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod server;
pub mod streams;

pub use async_nats::Client;
pub use bus::{Bus, BusError, Routed};
pub use connect::{ConnectError, ConnectSettings, connect, connected};
pub use event_store::{AppendError, EventStore, Followed, Loaded, StoreError};
pub use kv::{JsonKv, KvError};
pub use streams::{EventStreams, Jet, ProvisionError, attach, provision};

/// Boxed error from async-nats, kept as the source of our own error kinds.
pub type NatsSource = Box<dyn std::error::Error + Send + Sync + 'static>;
