//! Stable error codes shared by the actors (which produce them) and the edge (which maps them
//! to HTTP statuses in exactly one place).

use serde::{Deserialize, Serialize};

/// A stable, snake_case error code. Clients may branch on it; it never changes meaning.
///
/// Not `#[non_exhaustive]`: a new code must break the edge's status table until it is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not valid JSON or does not have the expected shape.
    InvalidBody,
    /// The body or query was well-formed but a value is out of its allowed range.
    InvalidInput,
    /// A quantity is zero, negative or larger than Souk accepts.
    InvalidQuantity,
    /// A SKU does not match the allowed syntax.
    InvalidSku,
    /// A reservation id does not match the allowed syntax.
    InvalidReservationId,
    /// The request body is larger than the configured limit.
    PayloadTooLarge,
    /// The request body did not arrive in full within `body_timeout` of the request's start.
    BodyTimeout,
    /// The request body is not `application/json`.
    UnsupportedMediaType,
    /// No route matches the path.
    RouteNotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The SKU has never been stocked.
    UnknownSku,
    /// The reservation does not exist on this SKU.
    ReservationNotFound,
    /// Not enough available stock for the reservation.
    InsufficientStock,
    /// The reservation id is already used in a way that conflicts with this request.
    ReservationConflict,
    /// The SKU's variant was removed from the catalog: it takes no new reservations.
    SkuRetired,
    /// The email address is not a valid address.
    InvalidEmail,
    /// The password is too short, too long, or too common.
    WeakPassword,
    /// Another account already uses this email address.
    EmailTaken,
    /// No user has this id.
    UnknownUser,
    /// The request needs a valid access token: none was sent, or it is expired, tampered
    /// with, or not meant for Souk.
    Unauthorized,
    /// The caller's roles do not allow this request.
    Forbidden,
    /// The email address and password do not match an account.
    InvalidCredentials,
    /// The account is disabled.
    AccountDisabled,
    /// A refresh or password-reset token is unknown, expired, spent or revoked.
    InvalidToken,
    /// The entity changed since the version the request was made against (`If-Match`).
    VersionMismatch,
    /// The request must say which version it was made against (`If-Match`).
    PreconditionRequired,
    /// No product has this id or slug.
    UnknownProduct,
    /// The product's state does not allow the change (archived, deleted, not a draft).
    ProductConflict,
    /// Another product already uses this slug.
    SlugTaken,
    /// Another product already uses this SKU.
    SkuTaken,
    /// The cart has no line for this SKU.
    UnknownCartLine,
    /// No order has this id (or it is not the caller's).
    UnknownOrder,
    /// The order's state does not allow the change.
    OrderConflict,
    /// The `Idempotency-Key` was used before with a different request.
    IdempotencyKeyReused,
    /// No webhook endpoint or notification has this id.
    UnknownNotification,
    /// A webhook endpoint's address is not one Souk may call (loopback, private, not http(s)).
    WebhookUrlNotAllowed,
    /// Too many requests: slow down and retry after the indicated time.
    RateLimited,
    /// The owning shard is moving or the cluster is not ready; retry shortly.
    Unavailable,
    /// The request did not complete before its deadline; its outcome is unknown, so retry it
    /// with the same idempotency key.
    Timeout,
    /// An unexpected failure inside Souk. Details are logged, never sent.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidBody => "invalid_body",
            Self::InvalidInput => "invalid_input",
            Self::InvalidQuantity => "invalid_quantity",
            Self::InvalidSku => "invalid_sku",
            Self::InvalidReservationId => "invalid_reservation_id",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnknownSku => "unknown_sku",
            Self::ReservationNotFound => "reservation_not_found",
            Self::InsufficientStock => "insufficient_stock",
            Self::ReservationConflict => "reservation_conflict",
            Self::SkuRetired => "sku_retired",
            Self::InvalidEmail => "invalid_email",
            Self::WeakPassword => "weak_password",
            Self::EmailTaken => "email_taken",
            Self::UnknownUser => "unknown_user",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::InvalidCredentials => "invalid_credentials",
            Self::AccountDisabled => "account_disabled",
            Self::InvalidToken => "invalid_token",
            Self::VersionMismatch => "version_mismatch",
            Self::PreconditionRequired => "precondition_required",
            Self::UnknownProduct => "unknown_product",
            Self::ProductConflict => "product_conflict",
            Self::SlugTaken => "slug_taken",
            Self::SkuTaken => "sku_taken",
            Self::UnknownCartLine => "unknown_cart_line",
            Self::UnknownOrder => "unknown_order",
            Self::OrderConflict => "order_conflict",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::UnknownNotification => "unknown_notification",
            Self::WebhookUrlNotAllowed => "webhook_url_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }

    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [Self; 40] = [
        Self::InvalidBody,
        Self::InvalidInput,
        Self::InvalidQuantity,
        Self::InvalidSku,
        Self::InvalidReservationId,
        Self::PayloadTooLarge,
        Self::BodyTimeout,
        Self::UnsupportedMediaType,
        Self::RouteNotFound,
        Self::MethodNotAllowed,
        Self::UnknownSku,
        Self::ReservationNotFound,
        Self::InsufficientStock,
        Self::ReservationConflict,
        Self::SkuRetired,
        Self::InvalidEmail,
        Self::WeakPassword,
        Self::EmailTaken,
        Self::UnknownUser,
        Self::Unauthorized,
        Self::Forbidden,
        Self::InvalidCredentials,
        Self::AccountDisabled,
        Self::InvalidToken,
        Self::VersionMismatch,
        Self::PreconditionRequired,
        Self::UnknownProduct,
        Self::ProductConflict,
        Self::SlugTaken,
        Self::SkuTaken,
        Self::UnknownCartLine,
        Self::UnknownOrder,
        Self::OrderConflict,
        Self::IdempotencyKeyReused,
        Self::UnknownNotification,
        Self::WebhookUrlNotAllowed,
        Self::RateLimited,
        Self::Unavailable,
        Self::Timeout,
        Self::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A business rejection sent back through request/reply: data, not a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ReplyError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation, safe to show to the client.
    pub detail: String,
}

impl ReplyError {
    /// A rejection with the given code and detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }

    /// An internal failure; the detail stays in the logs of whoever builds it.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, detail)
    }
}

/// Every reply on the bus: `{"ok": …}` or `{"err": {"code": …, "detail": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// The command succeeded.
    Ok(T),
    /// The command was rejected.
    Err(ReplyError),
}

impl<T> From<Result<T, ReplyError>> for Reply<T> {
    fn from(r: Result<T, ReplyError>) -> Self {
        match r {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Err(e),
        }
    }
}

impl<T> From<Reply<T>> for Result<T, ReplyError> {
    fn from(r: Reply<T>) -> Self {
        match r {
            Reply::Ok(v) => Ok(v),
            Reply::Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn reply_round_trips() {
        let r: Reply<u32> = Reply::Err(ReplyError::new(ErrorCode::InsufficientStock, "only 3 left"));
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(json, r#"{"err":{"code":"insufficient_stock","detail":"only 3 left"}}"#);
        let back: Reply<u32> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
    }
}
