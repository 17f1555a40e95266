//! Extractors whose rejections are problem+json.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use serde::de::DeserializeOwned;
use souk_messages::ErrorCode;
use std::net::{IpAddr, SocketAddr};

/// `axum::Json`, rejecting with [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .is_some_and(|m| {
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::invalid(
                ErrorCode::UnsupportedMediaType,
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        // Every body Souk takes is an object, but serde would also fill a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'[') {
            return Err(ApiError::invalid(ErrorCode::InvalidInput, "the body must be a JSON object"));
        }
        let axum::Json(v) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(v))
    }
}

/// The body as bytes, rejecting with [`ApiError`]: over its limit (413), too late (408, see
/// [`crate::body`]), or cut off.
#[derive(Debug, Clone, Default)]
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state).await.map(Self).map_err(|e| {
            if let Some(late) = crate::body::too_late(&e) {
                return late;
            }
            let code = if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::PayloadTooLarge
            } else {
                ErrorCode::InvalidBody
            };
            ApiError::invalid(code, e.body_text())
        })
    }
}

/// `axum::extract::Query`, rejecting with [`ApiError`]. A parameter with an empty value
/// (`?after=&q=`, as forms and many clients send a blank field) counts as absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let given: Vec<&str> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| pair.split_once('=').is_none_or(|(_, value)| !value.is_empty()))
            .collect();
        let uri = axum::http::Uri::try_from(format!("/?{}", given.join("&")))
            .map_err(|e| ApiError::invalid(ErrorCode::InvalidInput, e.to_string()))?;
        let axum::extract::Query(v) = axum::extract::Query::<T>::try_from_uri(&uri)?;
        Ok(Self(v))
    }
}

/// `axum::extract::Path`, rejecting with [`ApiError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// The client's address: the peer, or with `trust_forwarded_for` the last address a trusted
/// proxy appended to `X-Forwarded-For`. `None` when neither is known.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        Ok(Self(client_ip(&parts.headers, &parts.extensions, app.auth.settings().trust_forwarded_for)))
    }
}

/// The client's address from a request's headers and connection info; see [`ClientIp`].
pub fn client_ip(headers: &HeaderMap, extensions: &Extensions, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back();
        if forwarded.is_some() {
            return forwarded;
        }
    }
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}
