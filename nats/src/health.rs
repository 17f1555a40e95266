//! Readiness as the edge reports it on `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// What a node needs before it should take traffic. Cheap to clone and to read.
#[derive(Debug, Clone)]
pub struct Readiness {
    client: async_nats::Client,
    provisioned: Arc<AtomicBool>,
    leases_settled: Arc<AtomicBool>,
    /// A watch rather than a flag: long-lived responses wait on it to end themselves.
    draining: Arc<watch::Sender<bool>>,
    catalog_loaded: Arc<AtomicBool>,
    revocations_loaded: Arc<AtomicBool>,
}

/// One readiness check and whether it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReadinessReport {
    /// The NATS connection is up.
    pub nats_connected: bool,
    /// The stream and buckets exist.
    pub streams_provisioned: bool,
    /// This node holds every lease assigned to it.
    pub leases_settled: bool,
    /// The node is shutting down.
    pub draining: bool,
    /// The storefront (the shoppers' catalog in memory) has caught up with the events.
    pub catalog_loaded: bool,
    /// The recent account changes that revoke access tokens have been read, so no revoked
    /// token passes here.
    pub revocations_loaded: bool,
}

impl ReadinessReport {
    /// Whether every check passes.
    pub fn ready(&self) -> bool {
        self.nats_connected
            && self.streams_provisioned
            && self.leases_settled
            && self.catalog_loaded
            && self.revocations_loaded
            && !self.draining
    }
}

impl Readiness {
    /// Readiness of a node using `client`; nothing is ready yet.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            provisioned: Arc::default(),
            leases_settled: Arc::default(),
            draining: Arc::new(watch::Sender::new(false)),
            catalog_loaded: Arc::default(),
            revocations_loaded: Arc::default(),
        }
    }

    /// Marks the stream and buckets as provisioned.
    pub fn set_provisioned(&self) {
        self.provisioned.store(true, Ordering::Release);
    }

    /// Records whether this node holds every lease assigned to it.
    pub fn set_leases_settled(&self, settled: bool) {
        self.leases_settled.store(settled, Ordering::Release);
    }

    /// Marks the storefront as caught up with the events.
    pub fn set_catalog_loaded(&self) {
        self.catalog_loaded.store(true, Ordering::Release);
    }

    /// Marks the token revocations as read up to the present.
    pub fn set_revocations_loaded(&self) {
        self.revocations_loaded.store(true, Ordering::Release);
    }

    /// Marks the node as shutting down: it stops being ready at once.
    pub fn set_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once the node is shutting down; live streams end on it so the HTTP drain,
    /// which waits for every response to finish, can.
    pub fn until_draining(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut draining = self.draining.subscribe();
        // It fails only once every handle of the node's readiness is gone, at the node's end.
        async move {
            let _ = draining.wait_for(|d| *d).await;
        }
    }

    /// The current checks.
    pub fn report(&self) -> ReadinessReport {
        ReadinessReport {
            nats_connected: crate::connect::connected(&self.client),
            streams_provisioned: self.provisioned.load(Ordering::Acquire),
            leases_settled: self.leases_settled.load(Ordering::Acquire),
            draining: *self.draining.borrow(),
            catalog_loaded: self.catalog_loaded.load(Ordering::Acquire),
            revocations_loaded: self.revocations_loaded.load(Ordering::Acquire),
        }
    }
}
