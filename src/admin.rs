//! `souk admin create`: ensure an admin account on a running cluster, from the command line.

use crate::config::Config;
use anyhow::{Context as _, bail};
use souk_nats::Bus;
use souk_nats::cluster::Cluster;
use std::io::BufRead as _;

/// Creates (or promotes) the admin `email`. The password comes from `SOUK_ADMIN_PASSWORD`
/// or, if unset, from the first line of standard input; it is used only if the account is
/// created here.
pub async fn create(cfg: &Config, email: &str) -> anyhow::Result<()> {
    let password = match &cfg.admin_password {
        Some(p) => p.clone(),
        None => {
            eprintln!("password for {email} (one line on stdin):");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let urls = cfg.nats_urls_or_local();
    if urls.is_empty() {
        bail!(
            "no NATS to reach: set SOUK_NATS_URL, or run this next to a running `souk serve` (same data dir)"
        );
    }
    let client = crate::serve::connect(cfg, urls, "souk admin".into()).await?;
    let jet = crate::serve::provision(&client, cfg).await?;
    let shards = cfg.shard_counts().map_err(anyhow::Error::msg)?;
    // Refuses to talk to a cluster that shards differently: requests would go astray.
    Cluster::new(&jet, souk_messages::NodeId::generate())
        .agree_on_shards(shards)
        .await
        .context("shard counts")?;
    let bus = Bus::new(client.clone(), shards, cfg.request_timeout);
    let auth = crate::serve::auth(cfg, &jet, bus).await?;
    crate::serve::ensure_admin(&auth, email, password).await?;
    client.flush().await?;
    eprintln!("{email} is an admin");
    Ok(())
}
