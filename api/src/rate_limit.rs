//! A per-client request rate limit: a token bucket per client address, in this node's memory.
//! It bounds what one client can make one node do; login failures have their own, stricter,
//! cluster-wide throttle (`auth::throttle`).

use crate::AppState;
use crate::error::ApiError;
use crate::extract::client_ip;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept before idle (full) ones are swept.
const SWEEP_AT: usize = 100_000;

/// How fast each client may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    /// Sustained requests per second per client address; 0 turns the limit off.
    pub per_second: f64,
    /// Requests a client may send at once after being idle.
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every client this node has seen recently.
#[derive(Debug)]
pub struct RateLimiter {
    settings: RateSettings,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// A limiter with `settings`.
    pub fn new(settings: RateSettings) -> Self {
        Self { settings, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `ip`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let RateSettings { per_second, burst } = self.settings;
        if per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= SWEEP_AT {
            // A bucket that has refilled completely carries no information.
            buckets.retain(|_, b| (now - b.at).as_secs_f64() * per_second < burst);
        }
        let b = buckets.entry(ip).or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + (now - b.at).as_secs_f64() * per_second).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_second))
        }
    }
}

/// Refuses a request over its client's rate with `429` and `Retry-After`. Probes and metrics
/// are exempt, so a busy load balancer never marks a node unhealthy.
pub async fn limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics") {
        return next.run(req).await;
    }
    let trust = app.auth.settings().trust_forwarded_for;
    if let Some(ip) = client_ip(req.headers(), req.extensions(), trust)
        && let Err(wait) = app.rate_limiter.check(ip, Instant::now())
    {
        return ApiError::RateLimited(wait).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_the_sustained_rate_and_others_are_unaffected() {
        let limiter = RateLimiter::new(RateSettings { per_second: 10.0, burst: 3.0 });
        let (a, b) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(a, t0).is_ok());
        }
        let wait = limiter.check(a, t0).expect_err("burst spent");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO, "{wait:?}");
        assert!(limiter.check(b, t0).is_ok(), "another client has its own bucket");
        assert!(limiter.check(a, t0 + Duration::from_millis(100)).is_ok(), "refilled at 10/s");
        assert!(limiter.check(a, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(RateSettings { per_second: 0.0, burst: 0.0 });
        let ip = "10.0.0.1".parse().expect("ip");
        assert!((0..1000).all(|_| limiter.check(ip, Instant::now()).is_ok()));
    }
}
