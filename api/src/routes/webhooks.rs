//! `/v1/admin/webhooks`: the shop's outbound webhook endpoints. Admin-only. A signing secret
//! is shown once, when the endpoint is registered or its secret is rotated.

use crate::AppState;
use crate::auth::access::Access;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, patch, post};
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::notify::{EndpointId, WebhookEndpoint, WebhookTarget, validate_event_selection};
use time::OffsetDateTime;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/admin/webhooks", Access::Admin, post(register)),
        Route::new(Method::GET, "/v1/admin/webhooks", Access::Admin, get(list)),
        Route::new(Method::GET, "/v1/admin/webhooks/{id}", Access::Admin, get(get_one)),
        Route::new(Method::PATCH, "/v1/admin/webhooks/{id}", Access::Admin, patch(update)),
        Route::new(Method::DELETE, "/v1/admin/webhooks/{id}", Access::Admin, delete(remove)),
        Route::new(Method::POST, "/v1/admin/webhooks/{id}/secret", Access::Admin, post(rotate)),
    ]
}

/// `POST /v1/admin/webhooks`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Where to post: `https://…` on a public address.
    #[schema(example = "https://hooks.shop.example/souk")]
    pub url: String,
    /// Event types: `order.confirmed`, `order.*` (every order event) or `*` (every order,
    /// stock and product event).
    #[schema(example = json!(["order.confirmed", "order.shipped", "stock.low"]))]
    pub events: Vec<String>,
    /// Whether deliveries start now (default true).
    pub enabled: Option<bool>,
}

/// `PATCH /v1/admin/webhooks/{id}`: only the fields present change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// New address.
    pub url: Option<String>,
    /// New event types.
    pub events: Option<Vec<String>>,
    /// Turn deliveries on or off.
    pub enabled: Option<bool>,
}

/// An endpoint as admins see it (never with its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// Its id, `whe-…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
}

impl From<&WebhookEndpoint> for EndpointView {
    fn from(e: &WebhookEndpoint) -> Self {
        Self {
            id: e.id.to_string(),
            url: e.url.clone(),
            events: e.events.clone(),
            enabled: e.enabled,
            created_at: e.created_at,
        }
    }
}

/// A newly registered endpoint and its signing secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Registered {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks). Not shown again.
    pub secret: String,
}

/// A rotated secret, shown this once, and until when the old one still signs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// The new `whsec_…` secret. Not shown again.
    pub secret: String,
    /// Until then every delivery carries a signature with the old secret too.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub previous_valid_until: OffsetDateTime,
}

/// The endpoints, by id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    /// The endpoints.
    pub items: Vec<EndpointView>,
}

fn unknown() -> ApiError {
    ApiError::invalid(ErrorCode::UnknownNotification, "no such webhook endpoint")
}

fn endpoint_id(s: &str) -> Result<EndpointId, ApiError> {
    Ok(EndpointId::parse(s)?)
}

/// Refuses an address Souk must not call; resolves its host now, and again at every delivery.
async fn check_url(app: &AppState, url: &str) -> Result<(), ApiError> {
    let target = WebhookTarget::parse(url)?;
    souk_nats::notify::destination(&target, app.webhooks_allow_private)
        .await
        .map(drop)
        .map_err(|e| ApiError::invalid(ErrorCode::WebhookUrlNotAllowed, format!("url: {e}")))
}

fn secret() -> Result<String, ApiError> {
    use base64::Engine as _;
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| ApiError::Internal("no randomness".into()))?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)))
}

/// Registers an endpoint. Its secret is in this answer only.
#[utoipa::path(post, operation_id = "register_webhook", path = "/v1/admin/webhooks", tag = "admin", request_body = RegisterBody,
    responses((status = 201, body = Registered), (status = 422, body = Problem, description = "invalid_input, webhook_url_not_allowed")))]
pub(crate) async fn register(
    State(app): State<AppState>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    validate_event_selection(&body.events)?;
    check_url(&app, &body.url).await?;
    let endpoint = WebhookEndpoint {
        id: EndpointId::generate(),
        url: body.url,
        events: body.events,
        enabled: body.enabled.unwrap_or(true),
        secret: secret()?,
        created_at: OffsetDateTime::now_utc(),
        previous_secret: None,
        previous_until: None,
    };
    app.endpoints.create(&endpoint).await?;
    let view = EndpointView::from(&endpoint);
    Ok((StatusCode::CREATED, Json(Registered { endpoint: view, secret: endpoint.secret })))
}

/// Every endpoint.
#[utoipa::path(get, operation_id = "list_webhooks", path = "/v1/admin/webhooks", tag = "admin", responses((status = 200, body = EndpointList)))]
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<EndpointList>, ApiError> {
    let items = app.endpoints.all().await?.iter().map(EndpointView::from).collect();
    Ok(Json(EndpointList { items }))
}

/// One endpoint.
#[utoipa::path(get, operation_id = "get_webhook", path = "/v1/admin/webhooks/{id}", tag = "admin", params(("id" = String, Path, description = "The endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = Problem)))]
pub(crate) async fn get_one(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    let (e, _) = app.endpoints.get(&id).await?.ok_or_else(unknown)?;
    Ok(Json(EndpointView::from(&e)))
}

/// Changes an endpoint's address, event types or whether it is enabled.
#[utoipa::path(patch, operation_id = "update_webhook", path = "/v1/admin/webhooks/{id}", tag = "admin", request_body = UpdateBody, params(("id" = String, Path, description = "The endpoint id")),
    responses((status = 200, body = EndpointView), (status = 404, body = Problem), (status = 412, body = Problem, description = "version_mismatch"), (status = 422, body = Problem)))]
pub(crate) async fn update(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> Result<Json<EndpointView>, ApiError> {
    let id = endpoint_id(&id)?;
    if let Some(events) = &body.events {
        validate_event_selection(events)?;
    }
    if let Some(url) = &body.url {
        check_url(&app, url).await?;
    }
    let (mut e, revision) = app.endpoints.get(&id).await?.ok_or_else(unknown)?;
    e.url = body.url.unwrap_or(e.url);
    e.events = body.events.unwrap_or(e.events);
    e.enabled = body.enabled.unwrap_or(e.enabled);
    if app.endpoints.update(&e, revision).await?.is_none() {
        return Err(ApiError::invalid(
            ErrorCode::VersionMismatch,
            "the endpoint changed meanwhile; read it and retry",
        ));
    }
    Ok(Json(EndpointView::from(&e)))
}

/// Gives an endpoint a new signing secret. For the next 24 hours deliveries are signed with
/// both, so its receiver can switch over without refusing any.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/secret", tag = "admin", params(("id" = String, Path, description = "The endpoint id")),
    responses((status = 200, body = Rotated), (status = 404, body = Problem), (status = 412, body = Problem, description = "version_mismatch")))]
pub(crate) async fn rotate(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Rotated>, ApiError> {
    let id = endpoint_id(&id)?;
    let (mut e, revision) = app.endpoints.get(&id).await?.ok_or_else(unknown)?;
    let until = OffsetDateTime::now_utc() + souk_messages::notify::SECRET_ROTATION_GRACE;
    e.previous_secret = Some(std::mem::replace(&mut e.secret, secret()?));
    e.previous_until = Some(until);
    if app.endpoints.update(&e, revision).await?.is_none() {
        return Err(ApiError::invalid(
            ErrorCode::VersionMismatch,
            "the endpoint changed meanwhile; read it and retry",
        ));
    }
    let endpoint = EndpointView::from(&e);
    Ok(Json(Rotated { endpoint, secret: e.secret, previous_valid_until: until }))
}

/// Removes an endpoint: no further deliveries are made to it.
#[utoipa::path(delete, operation_id = "delete_webhook", path = "/v1/admin/webhooks/{id}", tag = "admin", params(("id" = String, Path, description = "The endpoint id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub(crate) async fn remove(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = endpoint_id(&id)?;
    app.endpoints.get(&id).await?.ok_or_else(unknown)?;
    app.endpoints.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
