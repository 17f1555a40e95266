//! Souk's HTTP edge: REST routes, problem+json errors, request ids, metrics and OpenAPI.
//!
//! Depends on `souk-messages`, `souk-nats` (commands go to entity owners over NATS) and
//! `souk-storage` (queries read the read models); never on `souk-actors`, so the edge can run
//! and scale on its own.
//!
//! # Layout
//! - [`routes`]: handlers, one module per area; thin: parse, send, map.
//! - [`error`]: `ApiError` and the one code → status table.
//! - [`extract`]: JSON, query and path extractors whose rejections are problem+json.
//! - [`request_id`], [`metrics`]: cross-cutting middleware.

pub mod error;
pub mod extract;
pub mod metrics;
pub mod request_id;
pub mod routes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use prometheus_client::registry::Registry;
use souk_messages::ErrorCode;
use souk_nats::Bus;
use souk_nats::health::Readiness;
use souk_storage::StockRepo;
use std::future::Future;
use std::sync::Arc;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Commands to entity owners.
    pub bus: Bus,
    /// The stock read model.
    pub stock: StockRepo,
    /// Readiness checks.
    pub readiness: Readiness,
    /// Every metric of the process, for `/metrics`.
    pub registry: Arc<Registry>,
    /// The edge's own metrics.
    pub http: metrics::HttpMetrics,
}

/// The OpenAPI document, generated from the handlers.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Souk", description = "Souk e-commerce backend API"),
    paths(
        routes::inventory::get_one,
        routes::inventory::restock,
        routes::inventory::reserve,
        routes::inventory::release,
        routes::inventory::commit,
        routes::inventory::list,
        routes::ops::healthz,
        routes::ops::readyz,
        routes::ops::metrics,
    ),
    components(schemas(error::Problem, ErrorCode))
)]
pub struct ApiDoc;

/// The whole router.
pub fn router(state: AppState) -> Router {
    let http = state.http.clone();
    Router::new()
        .merge(routes::inventory::router())
        .merge(routes::ops::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn_with_state(http, metrics::track))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get(&request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("http", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(PropagateRequestIdLayer::new(request_id::HEADER.clone()))
        .layer(SetRequestIdLayer::new(request_id::HEADER.clone(), request_id::MakeId))
        .layer(axum::middleware::map_request(request_id::sanitize::<axum::body::Body>))
}

/// Refuses a body whose declared length is over the limit before reading any of it; bodies
/// without a length (chunked) are cut off by `DefaultBodyLimit` as they stream.
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error::problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            Some(format!("request bodies are limited to {MAX_BODY} bytes")),
        );
    }
    next.run(req).await
}

async fn not_found() -> Response {
    error::problem(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, Some("no such route".into()))
}

async fn method_not_allowed(method: Method) -> Response {
    error::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        Some(format!("{method} is not allowed on this route")),
    )
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
