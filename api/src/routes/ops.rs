//! Operational routes: liveness, readiness, metrics, the OpenAPI document and its viewer.

use crate::AppState;
use crate::auth::access::Access;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use souk_nats::health::ReadinessReport;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/healthz", Access::Public, get(healthz)),
        Route::new(Method::GET, "/readyz", Access::Public, get(readyz)),
        Route::new(Method::GET, "/metrics", Access::Public, get(metrics)),
        Route::new(Method::GET, "/openapi.json", Access::Public, get(openapi)),
        Route::new(Method::GET, "/docs", Access::Public, get(docs)),
        Route::new(Method::GET, "/.well-known/jwks.json", Access::Public, get(jwks)),
    ]
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// The node can take traffic: NATS connected, streams provisioned, leases settled.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready; the body says which check fails")))]
async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<ReadinessReport>) {
    let report = app.readiness.report();
    let status = if report.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text")))]
async fn metrics(State(app): State<AppState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &app.registry) {
        tracing::error!(error = %e, "metrics encoding failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

/// This API's OpenAPI 3.1 document.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi())
}

/// A browsable view of the OpenAPI document.
async fn docs() -> Html<String> {
    Html(utoipa_scalar::Scalar::new(crate::openapi()).to_html())
}

/// The public keys that verify Souk's access tokens (RFC 7517 JWK Set).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWK Set with one Ed25519 key per configured signing key")))]
async fn jwks(State(app): State<AppState>) -> Response {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(app.auth.keys().jwks().clone())).into_response()
}
