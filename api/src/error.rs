//! `ApiError`: every failure the edge returns, rendered as `application/problem+json` with a
//! stable code. The code → status table lives here and nowhere else.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use souk_messages::{ErrorCode, ReplyError};
use souk_nats::BusError;

/// A problem details body (RFC 9457).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary: the stable code.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// The stable error code clients branch on.
    pub code: ErrorCode,
    /// Human-readable explanation, when it is safe to give one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Every way a request can fail at the edge.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 4xx/5xx by code: a business rejection, or input that failed validation.
    #[error(transparent)]
    Rejected(#[from] ReplyError),
    /// 400 (not JSON) or 422 (JSON of the wrong shape, an unknown field included): the body
    /// could not be decoded.
    #[error("{detail}")]
    Decode {
        /// Whether the body is not JSON at all.
        syntax: bool,
        /// What is wrong, and where.
        detail: String,
    },
    /// 400: the query string could not be read.
    #[error(transparent)]
    Query(#[from] QueryRejection),
    /// 400: a path segment could not be read.
    #[error(transparent)]
    Path(#[from] PathRejection),
    /// 400 (426 on a connection that cannot upgrade): a WebSocket route got a request that is
    /// not a WebSocket handshake.
    #[error(transparent)]
    Upgrade(#[from] axum::extract::ws::rejection::WebSocketUpgradeRejection),
    /// 503, 504 or 500 from the bus.
    #[error(transparent)]
    Bus(BusError),
    /// 500: a read model failed.
    #[error(transparent)]
    Storage(#[from] souk_storage::StorageError),
    /// 500: an account bucket failed.
    #[error(transparent)]
    Kv(#[from] souk_nats::KvError),
    /// 500: the event store failed.
    #[error(transparent)]
    Store(#[from] souk_nats::StoreError),
    /// 429: too many failed attempts; retry after the duration.
    #[error("throttled for {0:?}")]
    Throttled(std::time::Duration),
    /// 429: too many requests from one client; retry after the duration.
    #[error("rate limited for {0:?}")]
    RateLimited(std::time::Duration),
    /// 500: an unexpected failure; the detail is logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<souk_storage::BadCursor> for ApiError {
    fn from(e: souk_storage::BadCursor) -> Self {
        Self::Storage(e.into())
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Rejected(r) => Self::Rejected(r),
            other => Self::Bus(other),
        }
    }
}

impl ApiError {
    /// A validation failure with `code`.
    pub fn invalid(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Rejected(ReplyError::new(code, detail))
    }

    fn parts(&self) -> (StatusCode, ErrorCode, Option<String>) {
        match self {
            Self::Rejected(e) => (status_of(e.code), e.code, Some(e.detail.clone())),
            Self::Decode { syntax, detail } => {
                let status = if *syntax { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY };
                (status, ErrorCode::InvalidBody, Some(detail.clone()))
            }
            Self::Query(r) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, Some(r.body_text())),
            Self::Path(r) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidInput, Some(r.body_text())),
            Self::Upgrade(r) => (r.status(), ErrorCode::InvalidInput, Some(r.body_text())),
            Self::Storage(e @ souk_storage::StorageError::BadCursor(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidInput, Some(e.to_string()))
            }
            Self::Bus(BusError::NoResponders(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, None)
            }
            Self::Bus(BusError::TimedOut(_)) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout, None),
            Self::Throttled(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                Some(format!("too many failed attempts; retry in {} s", retry_secs(*wait))),
            ),
            Self::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                Some(format!("too many requests; retry in {} s", retry_secs(*wait))),
            ),
            Self::Bus(_) | Self::Storage(_) | Self::Kv(_) | Self::Store(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None)
            }
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// The one table from error code to HTTP status. No `_` arm: a new code does not compile
/// until it is mapped.
pub const fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidBody => StatusCode::BAD_REQUEST,
        ErrorCode::InvalidInput
        | ErrorCode::InvalidQuantity
        | ErrorCode::InvalidSku
        | ErrorCode::InvalidReservationId
        | ErrorCode::InvalidEmail
        | ErrorCode::WeakPassword
        | ErrorCode::IdempotencyKeyReused
        | ErrorCode::WebhookUrlNotAllowed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unauthorized | ErrorCode::InvalidCredentials | ErrorCode::InvalidToken => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::Forbidden | ErrorCode::AccountDisabled => StatusCode::FORBIDDEN,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::RouteNotFound
        | ErrorCode::UnknownSku
        | ErrorCode::ReservationNotFound
        | ErrorCode::UnknownUser
        | ErrorCode::UnknownProduct
        | ErrorCode::UnknownCartLine
        | ErrorCode::UnknownOrder
        | ErrorCode::UnknownNotification => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::InsufficientStock
        | ErrorCode::ReservationConflict
        | ErrorCode::SkuRetired
        | ErrorCode::EmailTaken
        | ErrorCode::ProductConflict
        | ErrorCode::SlugTaken
        | ErrorCode::SkuTaken
        | ErrorCode::OrderConflict => StatusCode::CONFLICT,
        ErrorCode::VersionMismatch => StatusCode::PRECONDITION_FAILED,
        ErrorCode::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.parts();
        let detail = if status.is_server_error() {
            // Details of our own failures go to the log, never to the client. A 503 or 504
            // (a shard in motion, an entity busy, a slow peer) is retried by its client: a
            // warning, where a 500 is an error someone must look at.
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(error = %self, "request failed");
            } else {
                tracing::warn!(error = %self, "request failed");
            }
            None
        } else {
            detail
        };
        let mut res = problem(status, code, detail);
        if let Self::Throttled(wait) | Self::RateLimited(wait) = self {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(wait)));
        }
        res
    }
}

/// Renders a problem response.
pub fn problem(status: StatusCode, code: ErrorCode, detail: Option<String>) -> Response {
    let body = Problem {
        type_: format!("https://docs.souk.dev/errors#{}", code.as_str()),
        title: code.as_str().to_owned(),
        status: status.as_u16(),
        code,
        detail,
    };
    let mut res = (status, axum::Json(body)).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"souk\""));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_an_error_status() {
        for code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code} → {s}");
        }
    }
}
