//! HTTP metrics: requests by route, method and status, with a latency histogram.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// The edge's metrics.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    /// Live order-status subscriptions held on this node.
    pub(crate) live_watchers: Gauge,
    /// Disputes the payment provider reported (chargebacks opened by customers' banks).
    pub(crate) payment_disputes: Counter,
    /// Refunds the payment provider failed after they were made (the money did not arrive).
    pub(crate) payment_refunds_failed: Counter,
}

impl HttpMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_25, 2.0, 16))),
            in_flight: Gauge::default(),
            live_watchers: Gauge::default(),
            payment_disputes: Counter::default(),
            payment_refunds_failed: Counter::default(),
        };
        registry.register(
            "souk_http_requests",
            "HTTP requests by method, route and status",
            m.requests.clone(),
        );
        registry.register(
            "souk_http_request_duration_seconds",
            "HTTP request latency by method and route",
            m.latency.clone(),
        );
        registry.register(
            "souk_http_requests_in_flight",
            "HTTP requests received and not yet answered (a shutdown waits for them)",
            m.in_flight.clone(),
        );
        registry.register(
            "souk_live_watchers",
            "Live order-status subscriptions (WebSocket and SSE) held on this node",
            m.live_watchers.clone(),
        );
        registry.register(
            "souk_payment_disputes",
            "Disputes (chargebacks) the payment provider reported through its webhook",
            m.payment_disputes.clone(),
        );
        registry.register(
            "souk_payment_refunds_failed",
            "Refunds the payment provider failed after they were made, as its webhook told",
            m.payment_refunds_failed.clone(),
        );
        m
    }
}

/// Middleware recording every request. Unmatched paths count under one `unmatched` route,
/// so scanners cannot blow up the label set.
pub async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    // Counted down on drop too: a client that goes away drops its request's future.
    m.in_flight.inc();
    let _answered = InFlight(m.in_flight.clone());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    m.latency
        .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
        .observe(started.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { method, route, status }).inc();
    res
}

/// Counts one request out of the in-flight gauge when dropped.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
