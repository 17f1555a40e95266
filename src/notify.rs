//! `souk notify dlq list|retry`: what could not be delivered, and sending it again.

use crate::config::Config;

/// Prints every dead letter as one JSON line: its sequence, channel, recipient, topic,
/// attempts, last error and when it was given up on (never the message body).
pub async fn list(cfg: &Config) -> anyhow::Result<()> {
    let cluster = crate::client::ClusterClient::connect(cfg, "souk notify").await?;
    let letters = souk_actors::notify::dlq::list(&cluster.jet).await?;
    for (seq, l) in &letters {
        let n = &l.notification;
        let line = serde_json::json!({
            "seq": seq,
            "id": n.id,
            "channel": n.channel,
            "topic": n.topic,
            "to": n.to,
            "order": n.order,
            "attempts": l.attempts,
            "error": l.error,
            "at": l.at.format(&time::format_description::well_known::Rfc3339)?,
        });
        println!("{line}");
    }
    eprintln!("{} dead letter(s)", letters.len());
    cluster.close().await
}

/// Queues the dead letters `seqs` (or all) again.
pub async fn retry(cfg: &Config, seqs: &[u64], all: bool) -> anyhow::Result<()> {
    if !all && seqs.is_empty() {
        anyhow::bail!("name the sequences to retry (from `souk notify dlq list`), or pass --all");
    }
    let cluster = crate::client::ClusterClient::connect(cfg, "souk notify").await?;
    let n = souk_actors::notify::dlq::retry(&cluster.jet, (!all).then_some(seqs)).await?;
    eprintln!("{n} notification(s) queued again");
    cluster.close().await
}
