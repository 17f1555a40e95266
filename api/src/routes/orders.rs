//! `/v1/checkout` and `/v1/orders`: a customer turns the cart into an order and follows it.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::checkout::CheckoutBody;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use souk_messages::order::{
    CancelReason, DisputeStatus, OrderCommand, OrderStatus, OrderView, valid_idempotency_key,
};
use souk_messages::{ErrorCode, UserId};
use souk_storage::OrderQuery;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/checkout", Access::User, post(checkout)),
        Route::new(Method::GET, "/v1/orders", Access::User, get(list_own)),
        Route::new(Method::GET, "/v1/staff/orders", Access::Staff, get(list_all)),
        Route::new(Method::GET, "/v1/orders/{id}", Access::User, get(get_one)),
        Route::new(Method::POST, "/v1/orders/{id}/cancel", Access::User, post(cancel)),
        Route::new(Method::POST, "/v1/orders/{id}/ship", Access::Staff, post(ship)),
        Route::new(Method::POST, "/v1/orders/{id}/deliver", Access::Staff, post(deliver)),
        Route::new(Method::POST, "/v1/orders/{id}/refund", Access::Staff, post(refund)),
    ]
}

/// `GET /v1/orders` and `GET /v1/staff/orders` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only this customer's orders (staff list only).
    #[param(value_type = Option<String>)]
    pub customer: Option<UserId>,
    /// Only orders placed from this time on (RFC 3339).
    pub since: Option<String>,
    /// Only orders placed before this time (RFC 3339).
    pub until: Option<String>,
    /// Only the order paid with this provider's payment reference, e.g. a Stripe
    /// PaymentIntent id from a dispute (staff list only).
    pub payment: Option<String>,
    /// Only orders whose payment's dispute (a chargeback) stands so: `open`, `won` or `lost`
    /// (staff list only).
    pub dispute: Option<DisputeStatus>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderList {
    /// The orders.
    pub items: Vec<OrderView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

async fn page(app: &AppState, q: ListQuery, customer: Option<UserId>) -> Result<Json<OrderList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit)
        || q.after.as_ref().is_some_and(|a| a.len() > 100)
        || q.payment.as_ref().is_some_and(|p| p.len() > 255)
    {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "limit must be 1 to 100, after a cursor from next, and payment a payment reference",
        ));
    }
    let query = OrderQuery {
        customer,
        status: q.status,
        placed_since: crate::extract::query_time("since", q.since.as_deref())?,
        placed_until: crate::extract::query_time("until", q.until.as_deref())?,
        payment: q.payment,
        dispute: q.dispute,
        after: q.after,
        limit,
    };
    let page = app.orders.list(&query).await?;
    Ok(Json(OrderList { items: page.items, next: page.next }))
}

/// The signed-in customer's orders, newest first (from the read model: an order placed a
/// moment ago may take a fraction of a second to appear).
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = OrderList), (status = 422, body = Problem)))]
async fn list_own(
    State(app): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<OrderList>, ApiError> {
    if q.customer.is_some() || q.payment.is_some() || q.dispute.is_some() {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "customer, payment and dispute are filters of /v1/staff/orders",
        ));
    }
    page(&app, q, Some(who.user)).await
}

/// Every order, newest first, by status and customer.
#[utoipa::path(get, path = "/v1/staff/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = OrderList), (status = 422, body = Problem)))]
async fn list_all(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<OrderList>, ApiError> {
    let customer = q.customer.clone();
    page(&app, q, customer).await
}

/// `POST /v1/orders/{id}/ship`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipBody {
    /// The carrier's tracking number, 1–100 characters.
    pub tracking: String,
}

/// `POST /v1/orders/{id}/cancel`; the body may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Staff only: cancel and put the stock back without asking the provider for a refund,
    /// because the money is settled outside Souk (a dispute, a refund made at the provider).
    #[serde(default)]
    pub without_refund: bool,
}

/// `POST /v1/orders/{id}/refund`
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Minor units to give back; everything not yet refunded when absent.
    #[schema(minimum = 1)]
    pub amount: Option<i64>,
    /// The money was given back outside Souk (in the provider's dashboard, by a chargeback):
    /// record it as refunded at once, without asking the provider.
    #[serde(default)]
    pub outside_souk: bool,
}

/// Places an order for the signed-in customer's cart and starts its checkout saga; answers at
/// once with the order `pending`. The same `Idempotency-Key` and body again answer the same
/// order (200); the same key with another body is refused.
#[utoipa::path(post, path = "/v1/checkout", tag = "orders", request_body = CheckoutBody,
    params(("Idempotency-Key" = String, Header, description = "1–255 visible ASCII characters, unique per checkout")),
    responses((status = 201, body = OrderView, description = "placed"), (status = 200, body = OrderView, description = "placed before with this key"),
        (status = 422, body = Problem, description = "invalid_input (empty cart, bad address or payment method, no Idempotency-Key) or idempotency_key_reused")))]
async fn checkout(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    let key = idempotency_key(&headers)?.ok_or_else(|| bad_key("send an Idempotency-Key header"))?;
    let (order, placed) = app.checkout.checkout(&who, key, body, &rid.0).await?;
    Ok((if placed { StatusCode::CREATED } else { StatusCode::OK }, Json(order)))
}

/// The request's `Idempotency-Key`, if it sent one; one it sent malformed is refused.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| valid_idempotency_key(k))
            .map(Some)
            .ok_or_else(|| bad_key("the Idempotency-Key header is malformed")),
    }
}

fn bad_key(what: &str) -> ApiError {
    ApiError::invalid(ErrorCode::InvalidInput, format!("{what} (1–255 visible ASCII characters)"))
}

/// One of the customer's orders (staff see any), current.
#[utoipa::path(get, operation_id = "get_order", path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = OrderView), (status = 404, body = Problem, description = "unknown_order (also another customer's)")))]
async fn get_one(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(app.checkout.get(&who, &id, &rid.0).await?))
}

/// Cancels a confirmed order that has not shipped: the saga refunds the payment (unless staff
/// ask `without_refund`) and puts the stock back, then the order is `cancelled`
/// (`cancel_requested` shows it under way).
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", request_body(content = Option<CancelBody>, description = "optional"), params(("id" = String, Path, description = "Order id")),
    responses((status = 202, body = OrderView, description = "cancellation under way"), (status = 403, body = Problem, description = "forbidden: `without_refund` from a customer"), (status = 404, body = Problem), (status = 409, body = Problem, description = "order_conflict: shipped, being refunded, or the checkout still running")))]
async fn cancel(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    let reason = if who.is_staff() { CancelReason::StaffRequest } else { CancelReason::CustomerRequest };
    let command = OrderCommand::RequestCancel { reason, without_refund: body.without_refund };
    let order = app.checkout.command(&who, &id, command, &rid.0).await?;
    Ok((StatusCode::ACCEPTED, Json(order)))
}

/// Marks a confirmed order shipped, with its tracking number.
#[utoipa::path(post, path = "/v1/orders/{id}/ship", tag = "orders", request_body = ShipBody, params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = OrderView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn ship(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ShipBody>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(app.checkout.command(&who, &id, OrderCommand::Ship { tracking: body.tracking }, &rid.0).await?))
}

/// Marks a shipped order delivered.
#[utoipa::path(post, path = "/v1/orders/{id}/deliver", tag = "orders", params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = OrderView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn deliver(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(app.checkout.command(&who, &id, OrderCommand::Deliver, &rid.0).await?))
}

/// Gives money back, all or part, never more than was paid; the provider is asked by the
/// saga (`refund_pending` shows it under way, `refunded` the total given back). With
/// `outside_souk`, records money given back elsewhere instead, at once. With an
/// `Idempotency-Key`, the same request again (a double click, a retry after a lost answer)
/// answers the order without giving anything more back.
#[utoipa::path(post, path = "/v1/orders/{id}/refund", tag = "orders", request_body = RefundBody,
    params(("id" = String, Path, description = "Order id"), ("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters, unique per refund of the order")),
    responses((status = 202, body = OrderView, description = "refund under way"), (status = 200, body = OrderView, description = "`outside_souk`: recorded"), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem, description = "invalid_input (an amount beyond what is left to refund, a malformed key) or idempotency_key_reused")))]
async fn refund(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    let key = idempotency_key(&headers)?.map(str::to_owned);
    let command = OrderCommand::RequestRefund { amount: body.amount, outside_souk: body.outside_souk, key };
    let order = app.checkout.command(&who, &id, command, &rid.0).await?;
    let status = if body.outside_souk { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(order)))
}
