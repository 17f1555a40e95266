//! Souk's HTTP edge: REST routes, problem+json errors, request ids, metrics and OpenAPI.
//!
//! Depends on `souk-messages`, `souk-nats` (commands go to entity owners over NATS) and
//! `souk-storage` (queries read the read models); never on `souk-actors`, so the edge can run
//! and scale on its own.
//!
//! # Layout
//! - [`routes`]: handlers, one module per area; thin: parse, send, map. Also the route
//!   table, which gives every route its access level.
//! - [`auth`]: accounts, sessions, tokens, password hashing, login throttling, and the one
//!   middleware that checks every request against the route table.
//! - [`catalog`]: product changes with their slug and SKU claims.
//! - [`cart`]: cart commands checked against the storefront, carts priced now.
//! - [`checkout`]: the cart becomes an order, once per idempotency key.
//! - [`import`]: bulk product import (JSON lines, CSV).
//! - [`erasure`], [`export`]: a person's data erased, or copied out, on their request.
//! - [`history`]: entity histories, the audit trail of who changed what.
//! - [`live`]: order status as it changes, for WebSocket and SSE clients.
//! - [`webhook`]: signed deliveries from the payment provider.
//! - [`storefront`]: the shoppers' catalog in memory, fed by product and stock events.
//! - [`error`]: `ApiError` and the one code → status table.
//! - [`extract`]: JSON, query and path extractors whose rejections are problem+json.
//! - [`request_id`], [`metrics`], [`rate_limit`], [`body`]: cross-cutting middleware.

pub mod auth;
pub mod body;
pub mod cart;
pub mod catalog;
pub mod checkout;
pub mod erasure;
pub mod error;
pub mod export;
pub mod extract;
pub mod history;
pub mod import;
pub mod live;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod storefront;
pub mod webhook;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use prometheus_client::registry::Registry;
use souk_messages::ErrorCode;
use souk_nats::Bus;
use souk_nats::health::Readiness;
use souk_storage::{StockRepo, UserRepo};
use std::future::Future;
use std::sync::Arc;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest import body accepted (`POST /v1/admin/import`), in bytes.
pub const IMPORT_MAX: usize = 4 * 1024 * 1024;

/// What every handler can reach, shared: axum clones the state for every request and every
/// stateful middleware, and cloning the NATS, JetStream and database handles inside it each
/// time cost more than the rest of a catalog request.
pub type AppState = Arc<App>;

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct App {
    /// Commands to entity owners.
    pub bus: Bus,
    /// The stock read model.
    pub stock: StockRepo,
    /// The users read model.
    pub users: UserRepo,
    /// Accounts and sessions.
    pub auth: auth::Auth,
    /// Product changes.
    pub catalog: catalog::Catalog,
    /// The catalog read model (staff queries).
    pub catalog_repo: souk_storage::CatalogRepo,
    /// The shoppers' catalog, in memory.
    pub storefront: storefront::Storefront,
    /// Carts.
    pub carts: cart::Carts,
    /// Checkouts and orders.
    pub checkout: checkout::Checkout,
    /// The orders read model.
    pub orders: souk_storage::OrderRepo,
    /// The delivery log.
    pub notifications: souk_storage::NotificationRepo,
    /// The webhook endpoints.
    pub endpoints: souk_nats::notify::Endpoints,
    /// The central log store.
    pub logs: souk_storage::LogRepo,
    /// Whether webhook endpoints may be on loopback and private addresses.
    pub webhooks_allow_private: bool,
    /// The stream and buckets, for queueing notifications.
    pub jet: souk_nats::Jet,
    /// The payment provider's webhook endpoint.
    pub webhooks: webhook::Webhooks,
    /// Entity histories, for the history routes.
    pub store: souk_nats::EventStore,
    /// Live order status, for WebSocket and Server-Sent Events clients.
    pub live: live::LiveOrders,
    /// How long a request's body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// How long a reservation holds when the request does not say.
    pub reservation_ttl: std::time::Duration,
    /// Per-client request rate limit.
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    /// Web origins whose pages may call the API from a browser (`*`: any); none: no
    /// cross-origin access.
    pub cors_origins: Vec<String>,
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
        routes::inventory::adjust,
        routes::inventory::set_low_stock,
        routes::inventory::history,
        routes::ops::healthz,
        routes::ops::readyz,
        routes::ops::metrics,
        routes::ops::jwks,
        routes::auth::register,
        routes::auth::login,
        routes::auth::refresh,
        routes::auth::logout,
        routes::auth::request_reset,
        routes::auth::confirm_reset,
        routes::me::me,
        routes::me::update,
        routes::me::change_password,
        routes::me::erase,
        routes::me::export,
        routes::admin::list,
        routes::admin::get_one,
        routes::admin::set_roles,
        routes::admin::disable,
        routes::admin::enable,
        routes::admin::erase,
        routes::admin::export,
        routes::admin::history,
        routes::admin::import,
        routes::products::list,
        routes::products::get_one,
        routes::products::create,
        routes::products::update,
        routes::products::archive,
        routes::products::restore,
        routes::products::remove,
        routes::cart::show,
        routes::cart::clear,
        routes::cart::add,
        routes::cart::set,
        routes::cart::remove,
        routes::orders::checkout,
        routes::orders::get_one,
        routes::orders::list_own,
        routes::orders::list_all,
        routes::live::ws,
        routes::live::events,
        routes::payments::webhook,
        routes::orders::cancel,
        routes::orders::ship,
        routes::orders::deliver,
        routes::orders::refund,
        routes::notifications::list,
        routes::notifications::replay,
        routes::webhooks::register,
        routes::webhooks::list,
        routes::webhooks::get_one,
        routes::webhooks::update,
        routes::webhooks::remove,
        routes::webhooks::rotate,
        routes::logs::search,
    ),
    components(schemas(
        error::Problem,
        ErrorCode,
        souk_messages::Sku,
        souk_messages::ReservationId,
        souk_messages::UserId,
        import::Format,
        souk_storage::catalog::Sort,
    )),
    modifiers(&Security, &Described, &Strict, &Extensible)
)]
pub struct ApiDoc;

/// The OpenAPI document a node serves at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Adds the bearer scheme, and gives every operation the security its route's access level
/// demands (none for public routes), with the 401/403 answers that come with it.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from /v1/auth/login or /v1/auth/refresh"))
                    .build(),
            ),
        );
        let problem = || {
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"))))
                .build()
        };
        for (method, path, op) in operations(doc) {
            // Errors are problem+json; any status not listed is one too (400, 413, 415,
            // 422, 429, 503, 504, 500 can come from the edge for any route).
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(r) = response
                    && let Some(c) = r.content.shift_remove("application/json")
                {
                    let is_problem = matches!(&c, RefOr::T(c)
                        if matches!(&c.schema, Some(RefOr::Ref(x)) if x.ref_location.ends_with("/Problem")));
                    let kind = if is_problem { "application/problem+json" } else { "application/json" };
                    r.content.insert(kind.to_owned(), c);
                }
            }
            op.responses.responses.entry("default".to_owned()).or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description("an error, as problem+json with a stable code")
                        .content("application/problem+json", problem())
                        .build(),
                )
            });
            let access = auth::access::access_of(&method, path).unwrap_or(auth::access::Access::Admin);
            if access == auth::access::Access::Public {
                op.security = Some(vec![SecurityRequirement::default()]);
                continue;
            }
            op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
            let role = access.as_str();
            let mut add = |code: &str, text: String| {
                op.responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(text).build()));
            };
            add("401", "no valid bearer token (unauthorized)".to_owned());
            if access != auth::access::Access::User {
                add("403", format!("the caller lacks the {role} role (forbidden)"));
            }
        }
    }
}

/// Every operation of `doc`, with its method and path.
fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (Method, &str, &mut utoipa::openapi::path::Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ]
        .into_iter()
        .filter_map(move |(method, op)| Some((method, path.as_str(), op.as_mut()?)))
    })
}

/// Gives every response the description OpenAPI requires: the status's reason phrase, where
/// the handler's annotation names only a status and a body.
struct Described;

impl utoipa::Modify for Described {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        for (_, _, op) in operations(doc) {
            for (status, response) in &mut op.responses.responses {
                let RefOr::T(r) = response else { continue };
                if r.description.is_empty() {
                    let reason = status.parse().ok().and_then(|s| axum::http::StatusCode::from_u16(s).ok());
                    r.description =
                        reason.and_then(|s| s.canonical_reason()).unwrap_or("response").to_owned();
                }
            }
        }
    }
}

/// Request bodies are decoded strictly ([`extract::decode`]): an unknown field is refused at
/// any depth. The types shared with stored events accept unknown fields themselves (a newer
/// Souk may have extended an event), so their schemas are marked strict here.
struct Strict;

impl Strict {
    /// The shared types that request bodies contain.
    const SHARED: [&str; 3] = ["Address", "Variant", "ProductData"];
}

impl utoipa::Modify for Strict {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        let Some(components) = doc.components.as_mut() else { return };
        for name in Self::SHARED {
            if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(name) {
                o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// A response that extends a request body's schema (`#[serde(flatten)]`, an `allOf`) would fail
/// that schema's refusal of unlisted properties with its own: such a part is copied in
/// without the refusal. The request bodies keep it (Souk refuses unknown fields).
struct Extensible;

impl utoipa::Modify for Extensible {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
        let Some(components) = doc.components.as_mut() else { return };
        let strict: std::collections::BTreeMap<String, Object> = components
            .schemas
            .iter()
            .filter_map(|(name, schema)| match schema {
                RefOr::T(Schema::Object(o))
                    if matches!(
                        o.additional_properties.as_deref(),
                        Some(AdditionalProperties::FreeForm(false))
                    ) =>
                {
                    let mut open = o.clone();
                    open.additional_properties = None;
                    Some((name.clone(), open))
                }
                _ => None,
            })
            .collect();
        for schema in components.schemas.values_mut() {
            let RefOr::T(Schema::AllOf(all)) = schema else { continue };
            for part in &mut all.items {
                let RefOr::Ref(r) = part else { continue };
                if let Some(open) = r.ref_location.rsplit('/').next().and_then(|name| strict.get(name)) {
                    *part = RefOr::T(Schema::Object(open.clone()));
                }
            }
        }
    }
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let http = state.http.clone();
    let cors = cors(&state.cors_origins);
    let router = routes::router()
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::access::authorize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::limit))
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state, body::limit))
        .layer(axum::middleware::from_fn_with_state(http, metrics::track))
        // Outside every layer that answers on its own (unknown routes, limits), so that every
        // answer has it.
        .layer(axum::middleware::map_response(no_sniffing))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
                    let id = header(request_id::HEADER.as_str()).unwrap_or("");
                    // The client's trace if it sent one; otherwise the one its request id names,
                    // which is also what every command it causes carries to other nodes.
                    let trace = header("traceparent")
                        .and_then(souk_messages::log::trace_id_of)
                        .map_or_else(|| souk_messages::log::trace_id(id), str::to_owned);
                    tracing::info_span!("http", request_id = %id, trace_id = %trace, method = %req.method(), path = %req.uri().path())
                })
                // One line per refused or failed request: what operators search for.
                .on_response(|res: &axum::http::Response<_>, latency: std::time::Duration, _: &tracing::Span| {
                    let status = res.status().as_u16();
                    if status >= 500 {
                        tracing::warn!(status, latency_ms = latency.as_millis() as u64, "request failed");
                    } else if status >= 400 {
                        tracing::info!(status, latency_ms = latency.as_millis() as u64, "request refused");
                    }
                })
                // tower-http would log every 5xx again, at ERROR: the line above is the one record.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id::HEADER.clone()))
        .layer(SetRequestIdLayer::new(request_id::HEADER.clone(), request_id::MakeId))
        .layer(axum::middleware::map_request(request_id::sanitize::<axum::body::Body>));
    // Outermost, so that a browser's preflight is answered before routing, which knows no
    // OPTIONS.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Marks an answer not to be sniffed: a browser takes its content type as given.
async fn no_sniffing(mut response: axum::response::Response) -> axum::response::Response {
    let nosniff = axum::http::HeaderValue::from_static("nosniff");
    response.headers_mut().insert(axum::http::header::X_CONTENT_TYPE_OPTIONS, nosniff);
    response
}

/// Cross-origin access for browser pages on `origins`: bearer tokens, never cookies, so no
/// credentials mode.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| axum::http::HeaderValue::from_str(o).ok()))
    };
    let name = HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                name("idempotency-key"),
                name("cart-token"),
                name("last-event-id"),
                name("traceparent"),
                request_id::HEADER.clone(),
            ])
            .expose_headers([
                request_id::HEADER.clone(),
                header::RETRY_AFTER,
                header::LOCATION,
                header::CONTENT_DISPOSITION,
                header::WWW_AUTHENTICATE,
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
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
    use axum::serve::ListenerExt as _;
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Without TCP_NODELAY a live update written right after another waits for the client's
    // delayed acknowledgement (40 ms on Linux) before it leaves.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
