//! The request id: taken from `x-request-id` when the client sends a sane one, generated
//! otherwise; echoed on every response, recorded on every log line of the request, and
//! carried into events as their correlation id.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId as TowerRequestId};

/// The header carrying the request id.
pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Generates UUIDv7 request ids, keeping a client's own id only if it is short and plain.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _req: &Request<B>) -> Option<TowerRequestId> {
        let id = uuid::Uuid::now_v7().to_string();
        HeaderValue::from_str(&id).ok().map(TowerRequestId::new)
    }
}

/// Keeps a client-supplied id only when it is 1-64 characters of `A-Za-z0-9_-`; otherwise
/// removes it so that [`MakeId`] generates one (ids end up in logs and events).
pub async fn sanitize<B>(mut req: Request<B>) -> Request<B> {
    let ok = req.headers().get(&HEADER).and_then(|v| v.to_str().ok()).is_some_and(|s| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok {
        req.headers_mut().remove(&HEADER);
    }
    req
}

/// The current request's id, as an extractor.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get(&HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        Ok(Self(id))
    }
}
