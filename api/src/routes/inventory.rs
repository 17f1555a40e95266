//! `/v1/inventory`: stock levels and reservations. Writes and single-item reads go to the
//! stock item's owner over NATS; the list reads the read model.

use crate::AppState;
use crate::auth::access::{Access, caller};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::history::{HistoryPage, HistoryQuery};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use souk_messages::stock::{AdjustReason, Quantity, StockCommand, StockRequest, StockView};
use souk_messages::subject::EntityKind;
use souk_messages::{ErrorCode, ReservationId, Sku};

/// `POST /v1/inventory/{sku}/restock`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockBody {
    /// Units received, 1 to 1,000,000.
    #[schema(example = 50, minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
}

/// `POST /v1/inventory/{sku}/reservations`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// The caller's id for this reservation: sending it again reserves only once.
    #[schema(example = "order-42-line-1", pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub reservation_id: String,
    /// Units to hold, 1 to 1,000,000.
    #[schema(example = 2, minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
    /// Seconds until the hold lapses by itself unless committed or released: 1 to 604,800
    /// (a week); the node's `reservation_ttl` (15 minutes by default) when absent.
    #[schema(example = 900, minimum = 1, maximum = 604_800)]
    pub ttl_seconds: Option<u64>,
}

/// A reservation and the stock it was taken from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    /// The reservation id.
    pub reservation_id: String,
    /// Units held.
    pub quantity: u32,
    /// The stock item after the reservation.
    pub stock: StockView,
}

/// `GET /v1/inventory` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only items with fewer than this many units available (low stock).
    pub below: Option<u64>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A page of stock items.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StockPage {
    /// Items, ordered by SKU.
    pub items: Vec<StockView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/inventory", Access::Staff, get(list)),
        Route::new(Method::GET, "/v1/inventory/{sku}", Access::Staff, get(get_one)),
        Route::new(Method::POST, "/v1/inventory/{sku}/restock", Access::Staff, post(restock)),
        Route::new(Method::POST, "/v1/inventory/{sku}/reservations", Access::Staff, post(reserve)),
        Route::new(Method::DELETE, "/v1/inventory/{sku}/reservations/{id}", Access::Staff, delete(release)),
        Route::new(Method::POST, "/v1/inventory/{sku}/reservations/{id}/commit", Access::Staff, post(commit)),
        Route::new(Method::POST, "/v1/inventory/{sku}/adjustments", Access::Staff, post(adjust)),
        Route::new(
            Method::PUT,
            "/v1/inventory/{sku}/low-stock",
            Access::Staff,
            axum::routing::put(set_low_stock),
        ),
        Route::new(Method::GET, "/v1/inventory/{sku}/history", Access::Staff, get(history)),
    ]
}

fn sku(s: String) -> Result<Sku, ApiError> {
    Sku::parse(s).map_err(|e| ApiError::invalid(ErrorCode::InvalidSku, e.to_string()))
}

fn reservation(s: String) -> Result<ReservationId, ApiError> {
    ReservationId::parse(s).map_err(|e| ApiError::invalid(ErrorCode::InvalidReservationId, e.to_string()))
}

async fn send(
    app: &AppState,
    sku: Sku,
    command: StockCommand,
    rid: &RequestId,
) -> Result<StockView, ApiError> {
    let request = StockRequest::new(sku, command).correlated(rid.0.clone()).by(caller());
    Ok(app.bus.request(&request).await?)
}

/// Stock levels of one SKU, from its owner (always current).
#[utoipa::path(get, operation_id = "get_stock_item", path = "/v1/inventory/{sku}", tag = "inventory",
    params(("sku" = Sku, Path, description = "The SKU")),
    responses((status = 200, body = StockView), (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
async fn get_one(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(s): ApiPath<String>,
) -> Result<Json<StockView>, ApiError> {
    Ok(Json(send(&app, sku(s)?, StockCommand::Get, &rid).await?))
}

/// Adds units on hand. Creates the stock item on its first restock.
#[utoipa::path(post, path = "/v1/inventory/{sku}/restock", tag = "inventory", request_body = RestockBody,
    params(("sku" = Sku, Path, description = "The SKU")),
    responses((status = 200, body = StockView), (status = 400, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
async fn restock(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(s): ApiPath<String>,
    ApiJson(body): ApiJson<RestockBody>,
) -> Result<Json<StockView>, ApiError> {
    let sku = sku(s)?;
    let quantity = Quantity::try_from(body.quantity)?;
    Ok(Json(send(&app, sku, StockCommand::Restock { quantity }, &rid).await?))
}

/// Holds units for a reservation. Idempotent by `reservation_id`.
#[utoipa::path(post, path = "/v1/inventory/{sku}/reservations", tag = "inventory", request_body = ReserveBody,
    params(("sku" = Sku, Path, description = "The SKU")),
    responses((status = 201, body = ReservationView), (status = 404, body = Problem), (status = 409, body = Problem, description = "insufficient_stock or reservation_conflict"), (status = 422, body = Problem)))]
async fn reserve(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(s): ApiPath<String>,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<(StatusCode, Json<ReservationView>), ApiError> {
    let sku = sku(s)?;
    let id = reservation(body.reservation_id)?;
    let quantity = Quantity::try_from(body.quantity)?;
    let ttl = match body.ttl_seconds {
        None => app.reservation_ttl,
        Some(s @ 1..=604_800) => std::time::Duration::from_secs(s),
        Some(_) => return Err(ApiError::invalid(ErrorCode::InvalidInput, "ttl_seconds must be 1 to 604800")),
    };
    let expires_at = Some(time::OffsetDateTime::now_utc() + ttl);
    let cmd = StockCommand::Reserve { reservation: id.clone(), quantity, expires_at };
    let stock = send(&app, sku, cmd, &rid).await?;
    let view = ReservationView { reservation_id: id.to_string(), quantity: quantity.get(), stock };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Gives a held reservation's units back. Idempotent.
#[utoipa::path(delete, path = "/v1/inventory/{sku}/reservations/{id}", tag = "inventory",
    params(("sku" = Sku, Path, description = "The SKU"), ("id" = ReservationId, Path, description = "The reservation id")),
    responses((status = 200, body = StockView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn release(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath((s, id)): ApiPath<(String, String)>,
) -> Result<Json<StockView>, ApiError> {
    let (sku, reservation) = (sku(s)?, reservation(id)?);
    Ok(Json(send(&app, sku, StockCommand::Release { reservation }, &rid).await?))
}

/// Sells a held reservation: its units leave stock. Idempotent.
#[utoipa::path(post, path = "/v1/inventory/{sku}/reservations/{id}/commit", tag = "inventory",
    params(("sku" = Sku, Path, description = "The SKU"), ("id" = ReservationId, Path, description = "The reservation id")),
    responses((status = 200, body = StockView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn commit(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath((s, id)): ApiPath<(String, String)>,
) -> Result<Json<StockView>, ApiError> {
    let (sku, reservation) = (sku(s)?, reservation(id)?);
    Ok(Json(send(&app, sku, StockCommand::Commit { reservation }, &rid).await?))
}

/// Stock items from the read model, by SKU, in pages. Eventually consistent: it trails
/// writes by the projection lag.
#[utoipa::path(get, operation_id = "list_stock", path = "/v1/inventory", tag = "inventory", params(ListQuery),
    responses((status = 200, body = StockPage), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<StockPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "limit must be between 1 and 500"));
    }
    let after = q.after.map(sku).transpose()?;
    let items = app.stock.list(after.as_ref(), q.below, limit).await?;
    let next = (items.len() == limit as usize).then(|| items.last().map(|i| i.sku.to_string())).flatten();
    Ok(Json(StockPage { items, next }))
}

/// `POST /v1/inventory/{sku}/adjustments`: exactly one of `delta` and `on_hand`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustBody {
    /// Units to add (positive) or remove (negative); not zero, at most 1,000,000 either way.
    #[schema(example = -2, minimum = -1_000_000, maximum = 1_000_000)]
    pub delta: Option<i64>,
    /// Or: the units counted on hand (recorded as the difference).
    #[schema(example = 42, minimum = 0)]
    pub on_hand: Option<u64>,
    /// `received`, `damaged` or `count_correction`.
    pub reason: AdjustReason,
}

/// `PUT /v1/inventory/{sku}/low-stock`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LowStockBody {
    /// Publish `stock.low` when available drops below this; 0 turns it off.
    #[schema(example = 5, minimum = 0)]
    pub threshold: u64,
}

/// Changes on hand, by a difference or to a counted number, for a recorded reason (received,
/// damaged, count correction). On hand may not drop below what is reserved.
#[utoipa::path(post, path = "/v1/inventory/{sku}/adjustments", tag = "inventory", request_body = AdjustBody,
    params(("sku" = Sku, Path, description = "The SKU")),
    responses((status = 200, body = StockView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn adjust(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(s): ApiPath<String>,
    ApiJson(body): ApiJson<AdjustBody>,
) -> Result<Json<StockView>, ApiError> {
    let cmd = match (body.delta, body.on_hand) {
        (Some(delta), None) => StockCommand::Adjust { delta, reason: body.reason },
        (None, Some(on_hand)) => StockCommand::SetOnHand { on_hand, reason: body.reason },
        _ => return Err(ApiError::invalid(ErrorCode::InvalidInput, "send exactly one of delta and on_hand")),
    };
    Ok(Json(send(&app, sku(s)?, cmd, &rid).await?))
}

/// Sets the low-stock threshold: when available falls below it, `stock.low` is published
/// (once per crossing).
#[utoipa::path(put, path = "/v1/inventory/{sku}/low-stock", tag = "inventory", request_body = LowStockBody,
    params(("sku" = Sku, Path, description = "The SKU")),
    responses((status = 200, body = StockView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_low_stock(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(s): ApiPath<String>,
    ApiJson(body): ApiJson<LowStockBody>,
) -> Result<Json<StockView>, ApiError> {
    let cmd = StockCommand::SetLowStock { threshold: body.threshold };
    Ok(Json(send(&app, sku(s)?, cmd, &rid).await?))
}

/// Every change of one SKU's stock, oldest first, from its event history.
#[utoipa::path(get, path = "/v1/inventory/{sku}/history", tag = "inventory", params(("sku" = Sku, Path, description = "The SKU"), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 422, body = Problem)))]
async fn history(
    State(app): State<AppState>,
    ApiPath(s): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let sku = sku(s)?;
    Ok(Json(crate::history::page(&app, EntityKind::Stock, sku.as_str(), &q).await?))
}
