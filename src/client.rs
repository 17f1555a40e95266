//! What the command-line tools (`souk admin`, `souk import`, `souk seed`) need to act on a
//! running cluster: its NATS, provisioned, with a bus that shards the way the cluster does.

use crate::config::Config;
use anyhow::{Context as _, bail};
use souk_nats::cluster::Cluster;
use souk_nats::{Bus, Jet};

/// A connection to a running cluster.
#[derive(Debug)]
pub struct ClusterClient {
    /// The NATS client.
    pub client: souk_nats::Client,
    /// The stream and buckets.
    pub jet: Jet,
    /// Commands to entity owners.
    pub bus: Bus,
}

impl ClusterClient {
    /// Connects through the configured NATS URLs, or the local `nats-server` of a
    /// `souk serve` using the same data dir.
    pub async fn connect(cfg: &Config, name: &str) -> anyhow::Result<Self> {
        let client = nats(cfg, name).await?;
        // Attach, never provision: a tool's TTLs and replica count must not reconfigure the
        // cluster's buckets.
        let jet = souk_nats::streams::attach(client.clone())
            .await
            .context("the cluster's stream and buckets (is a `souk serve` node running?)")?;
        let shards = cfg.shard_counts().map_err(anyhow::Error::msg)?;
        // Refuses to talk to a cluster that shards differently: requests would go astray.
        Cluster::new(&jet, souk_messages::NodeId::generate())
            .agree_on_shards(shards)
            .await
            .context("shard counts")?;
        let bus = Bus::new(client.clone(), shards, cfg.request_timeout);
        Ok(Self { client, jet, bus })
    }

    /// The product service over this connection.
    pub fn catalog(&self) -> souk_api::catalog::Catalog {
        souk_api::catalog::Catalog::new(self.bus.clone(), souk_nats::catalog::CatalogClaims::new(&self.jet))
    }

    /// Flushes what was sent.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.flush().await?;
        Ok(())
    }
}

/// A NATS connection through the configured URLs, or the local `nats-server` of a
/// `souk serve` using the same data dir; for tools that need no provisioned cluster.
pub async fn nats(cfg: &Config, name: &str) -> anyhow::Result<souk_nats::Client> {
    let urls = cfg.nats_urls_or_local();
    if urls.is_empty() {
        bail!(
            "no NATS to reach: set SOUK_NATS_URL, or run this next to a running `souk serve` (same data dir)"
        );
    }
    crate::serve::connect(cfg, urls, name.to_owned()).await
}
