//! The central log store's projector: every node's records from `SOUK_LOGS` into this node's
//! read-model database (or the shared one), pruned after the retention time.

use crate::projector::{BATCH_WINDOW, next_chunk};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use souk_messages::log::LogRecord;
use souk_nats::Jet;
use souk_storage::LogRepo;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Why the projector stopped; it starts over after a pause.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// A JetStream call failed.
    #[error("jetstream: {0}")]
    Nats(#[source] souk_nats::NatsSource),
    /// The database refused the records.
    #[error(transparent)]
    Storage(#[from] souk_storage::StorageError),
}

fn nats<E: std::error::Error + Send + Sync + 'static>(e: E) -> LogStoreError {
    LogStoreError::Nats(Box::new(e))
}

/// Projects log records until `stop` is set. Its consumer is `souk_logs<suffix>`.
pub async fn run(jet: Jet, repo: LogRepo, suffix: String, retention: Duration, stop: watch::Receiver<bool>) {
    let name = format!("souk_logs{suffix}");
    let what = format!("log store {name}");
    crate::restart::restarting(&what, stop, |mut stop| {
        let (jet, repo, name) = (&jet, &repo, &name);
        async move { project(jet, repo, name, retention, &mut stop).await }
    })
    .await;
}

async fn project(
    jet: &Jet,
    repo: &LogRepo,
    name: &str,
    retention: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LogStoreError> {
    let consumer = jet
        .logs
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                inactive_threshold: Duration::from_secs(24 * 3600),
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    let mut pruned = tokio::time::Instant::now();
    loop {
        let Some(chunk) = next_chunk(&mut messages, BATCH_WINDOW, stop).await else { return Ok(()) };
        let mut records = Vec::with_capacity(chunk.len());
        let mut last = None;
        for m in chunk {
            let m = m.map_err(nats)?;
            let seq = m.info().map_err(LogStoreError::Nats)?.stream_sequence;
            match serde_json::from_slice::<LogRecord>(&m.payload) {
                Ok(r) => records.push((seq, r)),
                Err(e) => tracing::debug!(seq, error = %e, "skipping an unreadable log record"),
            }
            last = Some(m);
        }
        repo.insert(records).await?;
        if let Some(m) = last {
            m.ack().await.map_err(LogStoreError::Nats)?;
        }
        if pruned.elapsed() > Duration::from_secs(3600) {
            repo.prune(OffsetDateTime::now_utc() - retention).await?;
            pruned = tokio::time::Instant::now();
        }
    }
}
