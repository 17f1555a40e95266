//! `/v1/cart`: the shopper's cart. A signed-in customer's cart follows the account; a guest's
//! is addressed by the `Cart-Token` the first added line answered with.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::cart::{Owner, PricedCart, valid_token};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde::Deserialize;
use souk_messages::{ErrorCode, Sku};

/// The header that carries a guest's cart token.
pub const CART_TOKEN: &str = "cart-token";

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/cart", Access::Public, get(show)),
        Route::new(Method::DELETE, "/v1/cart", Access::Public, delete(clear)),
        Route::new(Method::POST, "/v1/cart/items", Access::Public, post(add)),
        Route::new(Method::PATCH, "/v1/cart/items/{sku}", Access::Public, patch(set)),
        Route::new(Method::DELETE, "/v1/cart/items/{sku}", Access::Public, delete(remove)),
    ]
}

/// `POST /v1/cart/items`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// The variant to add.
    pub sku: Sku,
    /// Units to add, 1 to the shop's per-line limit (99 unless configured).
    #[schema(minimum = 1)]
    pub quantity: u32,
}

/// `PATCH /v1/cart/items/{sku}`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    /// The line's new quantity, 1 to the per-line limit.
    #[schema(minimum = 1)]
    pub quantity: u32,
}

/// The guest cart token in `headers`, if any; a malformed one is refused.
pub fn cart_token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(CART_TOKEN) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(t) if valid_token(t) => Ok(Some(t.to_owned())),
            _ => Err(ApiError::invalid(ErrorCode::InvalidInput, "Cart-Token is not a cart token")),
        },
    }
}

/// The signed-in customer, else the guest with a token, else nobody yet.
fn owner(who: Option<Principal>, headers: &HeaderMap) -> Result<Owner, ApiError> {
    if let Some(who) = who {
        return Ok(Owner::Customer(who.user));
    }
    Ok(cart_token(headers)?.map_or(Owner::Nobody, Owner::Guest))
}

fn sku(s: &str) -> Result<Sku, ApiError> {
    Sku::parse(s).map_err(|e| ApiError::invalid(ErrorCode::InvalidSku, e.to_string()))
}

/// The cart, priced at today's prices.
#[utoipa::path(get, path = "/v1/cart", tag = "cart", params(("Cart-Token" = Option<String>, Header, description = "a guest's cart token")),
    responses((status = 200, body = PricedCart), (status = 422, body = Problem)))]
async fn show(
    State(app): State<AppState>,
    rid: RequestId,
    who: Option<Principal>,
    headers: HeaderMap,
) -> Result<Json<PricedCart>, ApiError> {
    Ok(Json(app.carts.get(&owner(who, &headers)?, &rid.0).await?))
}

/// Adds units of a variant on sale. A guest's first line creates the cart: the answer carries
/// its token (also as the `Cart-Token` header).
#[utoipa::path(post, path = "/v1/cart/items", tag = "cart", request_body = AddBody, params(("Cart-Token" = Option<String>, Header, description = "a guest's cart token")),
    responses((status = 200, body = PricedCart, headers(("Cart-Token" = String, description = "a new guest cart's token"))), (status = 404, body = Problem, description = "unknown_sku: not on sale"), (status = 422, body = Problem)))]
async fn add(
    State(app): State<AppState>,
    rid: RequestId,
    who: Option<Principal>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<Response, ApiError> {
    let cart = app.carts.add(&owner(who, &headers)?, body.sku, body.quantity, &rid.0).await?;
    let token = cart.cart_token.as_deref().and_then(|t| HeaderValue::from_str(t).ok());
    let mut res = Json(cart).into_response();
    if let Some(token) = token {
        res.headers_mut().insert(CART_TOKEN, token);
    }
    Ok(res)
}

/// Sets a line's quantity.
#[utoipa::path(patch, path = "/v1/cart/items/{sku}", tag = "cart", request_body = SetBody,
    params(("sku" = Sku, Path, description = "the line's SKU"), ("Cart-Token" = Option<String>, Header, description = "a guest's cart token")),
    responses((status = 200, body = PricedCart), (status = 404, body = Problem, description = "unknown_cart_line"), (status = 422, body = Problem)))]
async fn set(
    State(app): State<AppState>,
    rid: RequestId,
    who: Option<Principal>,
    headers: HeaderMap,
    ApiPath(line): ApiPath<String>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<PricedCart>, ApiError> {
    Ok(Json(app.carts.set(&owner(who, &headers)?, sku(&line)?, body.quantity, &rid.0).await?))
}

/// Removes a line.
#[utoipa::path(delete, operation_id = "remove_cart_line", path = "/v1/cart/items/{sku}", tag = "cart",
    params(("sku" = Sku, Path, description = "the line's SKU"), ("Cart-Token" = Option<String>, Header, description = "a guest's cart token")),
    responses((status = 200, body = PricedCart), (status = 404, body = Problem, description = "unknown_cart_line")))]
async fn remove(
    State(app): State<AppState>,
    rid: RequestId,
    who: Option<Principal>,
    headers: HeaderMap,
    ApiPath(line): ApiPath<String>,
) -> Result<Json<PricedCart>, ApiError> {
    Ok(Json(app.carts.remove(&owner(who, &headers)?, sku(&line)?, &rid.0).await?))
}

/// Empties the cart.
#[utoipa::path(delete, path = "/v1/cart", tag = "cart", params(("Cart-Token" = Option<String>, Header, description = "a guest's cart token")),
    responses((status = 204, description = "the cart is empty")))]
async fn clear(
    State(app): State<AppState>,
    rid: RequestId,
    who: Option<Principal>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    app.carts.clear(&owner(who, &headers)?, &rid.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
