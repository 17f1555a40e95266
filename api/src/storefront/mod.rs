//! The storefront: what shoppers browse, held in memory at every edge node and fed by the
//! product and stock events on NATS, so their product pages, catalog pages and searches
//! never wait on a database. Staff reads go to the entities and the SurrealDB read model,
//! which carry drafts and archived products as well.
//!
//! Like every read model it lags its events slightly (milliseconds); until it has caught up
//! with the stream after start-up, shopper catalog requests wait for it (up to
//! [`WARM_WAIT`]) and `/readyz` reports `catalog_loaded: false`.

mod feed;
pub mod shelf;

use crate::error::ApiError;
use shelf::Shelf;
use souk_messages::ErrorCode;
use souk_nats::health::Readiness;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::watch;

/// How long a shopper request waits for a storefront that is still loading.
pub const WARM_WAIT: Duration = Duration::from_secs(10);

/// The shared shelf and whether it has caught up. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storefront {
    shelf: Arc<RwLock<Shelf>>,
    loaded: watch::Receiver<bool>,
}

impl Storefront {
    /// Starts following the product and stock events of `jet`'s stream until `stop` is set;
    /// `readiness` learns when the storefront has caught up.
    pub fn start(jet: &souk_nats::Jet, readiness: Readiness, stop: &watch::Receiver<bool>) -> Self {
        let shelf = Arc::new(RwLock::new(Shelf::default()));
        let loaded = feed::start(&jet.events, &shelf, readiness, stop);
        Self { shelf, loaded }
    }

    /// Reads the shelf once it has caught up with the stream.
    pub async fn read<T>(&self, f: impl FnOnce(&Shelf) -> T) -> Result<T, ApiError> {
        if !*self.loaded.borrow() {
            let mut loaded = self.loaded.clone();
            let waited = tokio::time::timeout(WARM_WAIT, loaded.wait_for(|l| *l)).await;
            if !matches!(waited, Ok(Ok(_))) {
                return Err(ApiError::invalid(
                    ErrorCode::Unavailable,
                    "the catalog is still loading; retry shortly",
                ));
            }
        }
        Ok(f(&self.guard()))
    }

    fn guard(&self) -> RwLockReadGuard<'_, Shelf> {
        // A panic while folding leaves the data as consistent as any half-applied batch,
        // which the next event for that entity corrects: keep serving.
        self.shelf.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
