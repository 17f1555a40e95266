//! `/v1/checkout` and `/v1/orders`: a customer turns the cart into an order and follows it.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::checkout::{CheckoutBody, valid_key};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use souk_messages::ErrorCode;
use souk_messages::order::OrderView;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/checkout", Access::User, post(checkout)),
        Route::new(Method::GET, "/v1/orders/{id}", Access::User, get(get_one)),
    ]
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
    let key =
        headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| valid_key(k)).ok_or_else(
            || {
                ApiError::invalid(
                    ErrorCode::InvalidInput,
                    "send an Idempotency-Key header (1–255 visible ASCII characters)",
                )
            },
        )?;
    let (order, placed) = app.checkout.checkout(&who, key, body, &rid.0).await?;
    Ok((if placed { StatusCode::CREATED } else { StatusCode::OK }, Json(order)))
}

/// One of the customer's orders (staff see any), current.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path, description = "Order id")),
    responses((status = 200, body = OrderView), (status = 404, body = Problem, description = "unknown_order (also another customer's)")))]
async fn get_one(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(app.checkout.get(&who, &id, &rid.0).await?))
}
