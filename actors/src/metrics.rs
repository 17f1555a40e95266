//! Actor metrics: live entities by kind, shards owned, actor restarts, notification
//! deliveries and channel breakers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
#[derive(Debug, Clone)]
pub struct ActorMetrics {
    live: Family<KindLabel, Gauge>,
    shards: Family<KindLabel, Gauge>,
    crashes: Family<KindLabel, Counter>,
    notifications: Family<DeliveryLabels, Counter>,
    breakers: Family<ChannelLabel, Gauge>,
    pace: Family<ChannelLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    mailbox: Family<KindLabel, Gauge>,
    saga_outcomes: Family<SagaLabels, Counter>,
    saga_duration: Family<SagaLabels, Histogram>,
    saga_failures: Counter,
    sagas_running: Gauge,
    voids_abandoned: Counter,
    refunds_refused: Counter,
}

/// What a delivery attempt can come to.
const NOTIFICATION_OUTCOMES: [&str; 4] = ["sent", "failed", "dead_lettered", "duplicate"];
/// How a checkout can end (see `saga::outcome`).
const SAGA_OUTCOMES: [&str; 7] = [
    "confirmed",
    "cancelled_out_of_stock",
    "cancelled_payment_declined",
    "cancelled_insufficient_funds",
    "cancelled_payment_failed",
    "cancelled_reservation_lapsed",
    "cancelled_other",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SagaLabels {
    outcome: &'static str,
}

impl Default for ActorMetrics {
    fn default() -> Self {
        Self {
            live: Family::default(),
            shards: Family::default(),
            crashes: Family::default(),
            notifications: Family::default(),
            breakers: Family::default(),
            pace: Family::default(),
            mailbox: Family::default(),
            saga_outcomes: Family::default(),
            saga_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            saga_failures: Counter::default(),
            sagas_running: Gauge::default(),
            voids_abandoned: Counter::default(),
            refunds_refused: Counter::default(),
        }
    }
}

impl ActorMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "souk_live_actors",
            "Entities in memory (hosted by their shard actors), by kind",
            m.live.clone(),
        );
        registry.register("souk_shards_owned", "Shards this node owns, by kind", m.shards.clone());
        registry.register(
            "souk_actor_crashes",
            "Entity steps that panicked; the entity was dropped for a fresh start, by kind",
            m.crashes.clone(),
        );
        registry.register(
            "souk_notifications",
            "Notification delivery attempts by channel and outcome (sent, failed, dead_lettered, duplicate)",
            m.notifications.clone(),
        );
        registry.register(
            "souk_actor_mailbox_depth",
            "Decoded commands waiting in shard mailboxes, by kind",
            m.mailbox.clone(),
        );
        registry.register(
            "souk_saga_outcomes",
            "Checkouts this node drove to an end, by outcome (confirmed, or cancelled and why)",
            m.saga_outcomes.clone(),
        );
        registry.register(
            "souk_saga_duration_seconds",
            "Time this node took to drive a checkout from where it found it to its end, by outcome",
            m.saga_duration.clone(),
        );
        registry.register(
            "souk_saga_step_failures",
            "Checkout steps that failed and will run again (bus or provider trouble)",
            m.saga_failures.clone(),
        );
        registry.register(
            "souk_payment_voids_abandoned",
            "Unanswered authorisations the saga stopped trying to void (their orders stay payment_unsettled)",
            m.voids_abandoned.clone(),
        );
        registry.register(
            "souk_payment_refunds_refused",
            "Refunds the payment provider refused, a cancellation's included (nothing was given back)",
            m.refunds_refused.clone(),
        );
        registry.register(
            "souk_sagas_running",
            "Checkout, cancel and refund runs in progress on this node",
            m.sagas_running.clone(),
        );
        registry.register(
            "souk_notification_breaker_open",
            "1 while a channel's circuit breaker is open on this node",
            m.breakers.clone(),
        );
        registry.register(
            "souk_notification_pace_per_second",
            "Sends per second this node allows itself per channel: its share of the configured rate (0: no limit)",
            m.pace.clone(),
        );
        m.touch_all();
        m
    }

    /// Creates every label set that is known up front, so each series exists (at zero) from
    /// the start: `rate()` and `increase()` then see the first event, and dashboards and alerts
    /// find every metric on a fresh node.
    fn touch_all(&self) {
        for kind in EntityKind::ALL {
            let k = KindLabel { kind: kind.as_str() };
            let _ = self.live.get_or_create(&k);
            let _ = self.crashes.get_or_create(&k);
            let _ = self.mailbox.get_or_create(&k);
        }
        for channel in souk_messages::notify::Channel::ALL {
            for outcome in NOTIFICATION_OUTCOMES {
                let _ =
                    self.notifications.get_or_create(&DeliveryLabels { channel: channel.as_str(), outcome });
            }
        }
        for outcome in SAGA_OUTCOMES {
            let _ = self.saga_outcomes.get_or_create(&SagaLabels { outcome });
            let _ = self.saga_duration.get_or_create(&SagaLabels { outcome });
        }
    }

    pub(crate) fn queued(&self, kind: EntityKind, delta: i64) {
        self.mailbox.get_or_create(&KindLabel { kind: kind.as_str() }).inc_by(delta);
    }

    pub(crate) fn saga_started(&self) {
        self.sagas_running.inc();
    }

    pub(crate) fn saga_stopped(&self) {
        self.sagas_running.dec();
    }

    pub(crate) fn saga_failed_step(&self) {
        self.saga_failures.inc();
    }

    pub(crate) fn void_abandoned(&self) {
        self.voids_abandoned.inc();
    }

    pub(crate) fn refund_refused(&self) {
        self.refunds_refused.inc();
    }

    pub(crate) fn saga_ended(&self, outcome: &'static str, took: std::time::Duration) {
        let labels = SagaLabels { outcome };
        self.saga_outcomes.get_or_create(&labels).inc();
        self.saga_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub(crate) fn notification(&self, channel: souk_messages::notify::Channel, outcome: &'static str) {
        self.notifications.get_or_create(&DeliveryLabels { channel: channel.as_str(), outcome }).inc();
    }

    pub(crate) fn set_pace(&self, channel: souk_messages::notify::Channel, per_second: f64) {
        self.pace.get_or_create(&ChannelLabel { channel: channel.as_str() }).set(per_second);
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
