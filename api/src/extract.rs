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
        json_declared(is_json(req.headers()))?;
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        json_object(&bytes).map(Self)
    }
}

/// A JSON body that may be left out: a request with no body, or with `null`, is
/// `T::default()`; one with a body is read as [`ApiJson`] reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = is_json(req.headers());
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        json_declared(is_json)?;
        json_object::<Option<T>>(&bytes).map(|t| Self(t.unwrap_or_default()))
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")))
}

/// Refuses a body its request did not declare JSON.
fn json_declared(is_json: bool) -> Result<(), ApiError> {
    if is_json {
        return Ok(());
    }
    Err(ApiError::invalid(
        ErrorCode::UnsupportedMediaType,
        "expected a request with `Content-Type: application/json`",
    ))
}

/// Decodes `bytes` as a JSON object.
fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body Souk takes is an object, but serde would also fill a struct from an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'[') {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "the body must be a JSON object"));
    }
    decode(bytes)
}

/// Decodes a JSON body strictly: a field the target type does not know, at any depth, is
/// refused (422), as are trailing characters and values of the wrong type; text that is not
/// JSON is refused with 400. The types themselves accept unknown fields, because the same
/// types are decoded from stored events, which a newer Souk version may have extended.
/// The language a request's `Accept-Language` prefers most among those that are language tags
/// (`*`, private and malformed entries are passed over), if any.
pub fn preferred_locale(headers: &HeaderMap) -> Option<souk_messages::user::Locale> {
    let header = headers.get(axum::http::header::ACCEPT_LANGUAGE)?.to_str().ok()?;
    let mut ranked: Vec<(f32, souk_messages::user::Locale)> = header
        .split(',')
        .take(20)
        .filter_map(|entry| {
            let mut parts = entry.split(';');
            let tag = souk_messages::user::Locale::parse(parts.next()?.trim()).ok()?;
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
            (q > 0.0).then_some((q, tag))
        })
        .collect();
    // Stable: of equal weights the first listed wins.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked.into_iter().next().map(|(_, tag)| tag)
}

/// A query parameter `name` that is a time, RFC 3339; `422 invalid_input` otherwise.
pub fn query_time(name: &str, v: Option<&str>) -> Result<Option<time::OffsetDateTime>, ApiError> {
    v.map(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
            ApiError::invalid(
                souk_messages::ErrorCode::InvalidInput,
                format!("{name} must be an RFC 3339 time"),
            )
        })
    })
    .transpose()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = strictly(&mut de)?;
    de.end().map_err(|e| ApiError::Decode {
        syntax: true,
        detail: format!("the body could not be decoded: {e}"),
    })?;
    Ok(value)
}

/// [`decode`] for a body already parsed.
pub fn decode_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    strictly(value)
}

fn strictly<'de, T: DeserializeOwned, D>(de: D) -> Result<T, ApiError>
where
    D: serde::Deserializer<'de, Error: Into<serde_json::Error>>,
{
    use serde_json::error::Category;
    let mut unknown = None;
    let mut note = |path: serde_ignored::Path<'_>| {
        unknown.get_or_insert_with(|| field_path(&path));
    };
    let value =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note)).map_err(|e| {
            let detail = format!("the body could not be decoded: {e}");
            let inner: serde_json::Error = e.into_inner().into();
            ApiError::Decode { syntax: !matches!(inner.classify(), Category::Data), detail }
        })?;
    match unknown {
        Some(path) => Err(ApiError::Decode { syntax: false, detail: format!("unknown field `{path}`") }),
        None => Ok(value),
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

/// A field's path as a client wrote it: `address.company`, `variants.0.colour`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    let join = |parent: &Path<'_>, segment: &dyn std::fmt::Display| match field_path(parent) {
        above if above.is_empty() => segment.to_string(),
        above => format!("{above}.{segment}"),
    };
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => join(parent, index),
        Path::Map { parent, key } => join(parent, key),
        // Options and newtypes are not written in JSON.
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse as _;
    use souk_messages::order::Address;

    #[test]
    fn the_preferred_language_is_the_heaviest_tag_and_the_first_of_equals() {
        let prefer = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::ACCEPT_LANGUAGE, v.parse().expect("header"));
            preferred_locale(&h).map(|l| l.to_string())
        };
        assert_eq!(prefer("fr-CH, fr;q=0.9, en;q=0.8, *;q=0.5").as_deref(), Some("fr-CH"));
        assert_eq!(prefer("en;q=0.5, de-de;q=0.9").as_deref(), Some("de-DE"));
        assert_eq!(prefer("*, x-klingon, pt-BR;q=0.7").as_deref(), Some("pt-BR"));
        assert_eq!(prefer("fr;q=0, it;q=bad").as_deref(), None);
        assert_eq!(preferred_locale(&HeaderMap::new()), None);
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        quantity: u32,
        address: Option<Address>,
    }

    fn refusal(raw: &str) -> (u16, String) {
        let e = decode::<Body>(raw.as_bytes()).expect_err(raw);
        let detail = e.to_string();
        (e.into_response().status().as_u16(), detail)
    }

    #[test]
    fn bodies_are_decoded_strictly_at_every_depth_and_say_where() {
        assert!(decode::<Body>(br#"{"quantity": 2}"#).is_ok());
        assert_eq!(refusal("{not json").0, 400);
        assert_eq!(refusal(r#"{"quantity": 2} trailing"#).0, 400);
        let (status, detail) = refusal(r#"{"quantity": "two"}"#);
        assert_eq!(status, 422);
        assert!(detail.contains("quantity"), "{detail}");
        assert_eq!(refusal(r#"{"quantity": 2, "extra": 1}"#), (422, "unknown field `extra`".to_owned()));
        let nested = r#"{"quantity": 2, "address": {"name": "A", "line1": "1 Way", "city": "C",
            "postal_code": "1", "country": "DE", "company": "X"}}"#;
        assert_eq!(refusal(nested), (422, "unknown field `address.company`".to_owned()));
    }
}
