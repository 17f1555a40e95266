//! Event-store metrics: appends, their latency, and rejected (fenced) appends.

use crate::event_store::AppendError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use souk_messages::subject::EntityKind;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// Counters and histograms of the event store.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    appends: Family<OutcomeLabels, Counter>,
    latency: Family<KindLabel, Histogram>,
    snapshots: Family<OutcomeLabels, Counter>,
}

impl StoreMetrics {
    /// Creates the metrics and registers them under `souk_event_append*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "souk_event_appends",
            "Event appends by entity kind and outcome (ok, conflict, unknown, refused)",
            m.appends.clone(),
        );
        registry.register(
            "souk_event_append_duration_seconds",
            "Latency of successful and failed event appends",
            m.latency.clone(),
        );
        registry.register(
            "souk_snapshots",
            "Entity snapshots by kind and outcome (ok, superseded, too_large, failed)",
            m.snapshots.clone(),
        );
        m
    }

    /// Metrics that no registry exports, for tools and tests.
    pub fn unregistered() -> Self {
        Self {
            appends: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 16))),
            snapshots: Family::default(),
        }
    }

    pub(crate) fn record_snapshot(&self, kind: EntityKind, outcome: &'static str) {
        self.snapshots.get_or_create(&OutcomeLabels { kind: kind.as_str(), outcome }).inc();
    }

    pub(crate) fn record_append(&self, kind: EntityKind, took: Duration, result: &Result<u64, AppendError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(AppendError::Conflict(..)) => "conflict",
            Err(AppendError::Unknown(..)) => "unknown",
            Err(AppendError::Refused(..) | AppendError::Encode(_)) => "refused",
        };
        let kind = kind.as_str();
        self.appends.get_or_create(&OutcomeLabels { kind, outcome }).inc();
        self.latency.get_or_create(&KindLabel { kind }).observe(took.as_secs_f64());
    }
}
