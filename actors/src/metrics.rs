//! Actor metrics: live entity actors by kind, shards owned, actor restarts, notification
//! deliveries and channel breakers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use souk_messages::subject::EntityKind;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    channel: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: &'static str,
}

/// Gauges and counters of the actor tree.
#[derive(Debug, Clone, Default)]
pub struct ActorMetrics {
    live: Family<KindLabel, Gauge>,
    shards: Family<KindLabel, Gauge>,
    crashes: Family<KindLabel, Counter>,
    notifications: Family<DeliveryLabels, Counter>,
    breakers: Family<ChannelLabel, Gauge>,
}

impl ActorMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("souk_live_actors", "Entity actors in memory, by kind", m.live.clone());
        registry.register("souk_shards_owned", "Shards this node owns, by kind", m.shards.clone());
        registry.register(
            "souk_actor_crashes",
            "Entity actors that failed and were dropped for a fresh start, by kind",
            m.crashes.clone(),
        );
        registry.register(
            "souk_notifications",
            "Notification delivery attempts by channel and outcome (sent, failed, dead_lettered, duplicate)",
            m.notifications.clone(),
        );
        registry.register(
            "souk_notification_breaker_open",
            "1 while a channel's circuit breaker is open on this node",
            m.breakers.clone(),
        );
        m
    }

    pub(crate) fn notification(&self, channel: souk_messages::notify::Channel, outcome: &'static str) {
        self.notifications.get_or_create(&DeliveryLabels { channel: channel.as_str(), outcome }).inc();
    }

    pub(crate) fn set_breaker(&self, channel: souk_messages::notify::Channel, open: bool) {
        self.breakers.get_or_create(&ChannelLabel { channel: channel.as_str() }).set(i64::from(open));
    }

    pub(crate) fn entity_started(&self, kind: EntityKind) {
        self.live.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    pub(crate) fn entity_stopped(&self, kind: EntityKind) {
        self.live.get_or_create(&KindLabel { kind: kind.as_str() }).dec();
    }

    pub(crate) fn entity_crashed(&self, kind: EntityKind) {
        self.crashes.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    pub(crate) fn set_shards(&self, kind: EntityKind, n: usize) {
        self.shards.get_or_create(&KindLabel { kind: kind.as_str() }).set(n as i64);
    }
}
