//! `souk backup` and `souk restore`: everything the cluster keeps in JetStream, into a folder
//! and back (docs/operations.md, "Backups").

use crate::config::Config;
use souk_nats::backup::StreamBackup;
use std::path::Path;

/// Snapshots every Souk stream and bucket of the running cluster into the new folder `out`.
pub async fn backup(cfg: &Config, out: &Path) -> anyhow::Result<()> {
    let client = crate::client::nats(cfg, "souk backup").await?;
    let manifest = souk_nats::backup::backup(&client, out, report("backed up")).await?;
    let messages: u64 = manifest.streams.iter().map(StreamBackup::messages).sum();
    eprintln!("backup of {} streams ({messages} messages) in {}", manifest.streams.len(), out.display());
    // The backup itself is complete either way; without the record, the cluster's freshness
    // gauge (and its alert) does not know of it.
    if let Err(e) = souk_nats::backup::record(&client, &manifest).await {
        eprintln!("warning: the backup is complete but could not be recorded in the cluster: {e}");
    }
    Ok(())
}

/// Restores the backup in `from` into a NATS that holds none of Souk's streams or, with
/// `replace`, in place of the ones it holds.
pub async fn restore(cfg: &Config, from: &Path, replace: bool) -> anyhow::Result<()> {
    let client = crate::client::nats(cfg, "souk restore").await?;
    let manifest = souk_nats::backup::restore(&client, from, replace, report("restored")).await?;
    let taken_at = manifest.taken_at.format(&time::format_description::well_known::Rfc3339)?;
    eprintln!(
        "restored {} streams from the backup taken at {taken_at} by Souk {}; nodes rebuild their own read models, a shared read-model database must be emptied before they start",
        manifest.streams.len(),
        manifest.souk_version
    );
    Ok(())
}

fn report(done: &'static str) -> impl FnMut(&StreamBackup) {
    move |s| eprintln!("{done} {} ({} messages, {} bytes)", s.name, s.messages(), s.bytes)
}
