//! What a node sees of NATS, for `/metrics`: whether it is connected, how far behind each
//! durable consumer on Souk's streams is (messages not yet delivered, and delivered but not yet
//! acknowledged), and when the cluster's last backup was taken.

use crate::Jet;
use futures::StreamExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    stream: String,
    consumer: String,
}

/// Connection and consumer gauges.
#[derive(Debug, Clone, Default)]
pub struct NatsMetrics {
    connected: Gauge,
    pending: Family<ConsumerLabels, Gauge>,
    ack_pending: Family<ConsumerLabels, Gauge>,
    redelivered: Family<ConsumerLabels, Gauge>,
    last_backup: Gauge,
}

impl NatsMetrics {
    /// Creates the gauges and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "souk_nats_connected",
            "1 while this node is connected to NATS",
            m.connected.clone(),
        );
        registry.register(
            "souk_consumer_pending_messages",
            "Messages of the stream a durable consumer has not been given yet (its lag)",
            m.pending.clone(),
        );
        registry.register(
            "souk_consumer_ack_pending_messages",
            "Messages a durable consumer was given and has not acknowledged",
            m.ack_pending.clone(),
        );
        registry.register(
            "souk_consumer_redelivered_messages",
            "Messages a durable consumer is being given again (unacknowledged in time)",
            m.redelivered.clone(),
        );
        registry.register(
            "souk_backup_last_success_timestamp_seconds",
            "Unix time the cluster's last completed `souk backup` was taken; 0 while none is recorded",
            m.last_backup.clone(),
        );
        m
    }

    /// Refreshes the gauges every `every` until `stop` is set.
    pub async fn watch(&self, jet: Jet, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let connected = crate::connect::connected(&jet.js.client());
            self.connected.set(i64::from(connected));
            if !connected {
                continue;
            }
            for stream in jet.events.all().iter().chain([&jet.notify]) {
                let mut consumers = stream.consumers();
                while let Some(Ok(info)) = consumers.next().await {
                    let labels =
                        ConsumerLabels { stream: info.stream_name.clone(), consumer: info.name.clone() };
                    self.pending
                        .get_or_create(&labels)
                        .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                    self.ack_pending
                        .get_or_create(&labels)
                        .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                    self.redelivered
                        .get_or_create(&labels)
                        .set(i64::try_from(info.num_redelivered).unwrap_or(i64::MAX));
                }
            }
            if let Ok(Some(bytes)) = jet.cluster.get(crate::backup::LAST_BACKUP_KEY).await
                && let Ok(last) = serde_json::from_slice::<crate::backup::LastBackup>(&bytes)
            {
                self.last_backup.set(last.taken_at.unix_timestamp());
            }
        }
    }
}
