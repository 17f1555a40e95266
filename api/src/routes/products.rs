//! `/v1/products`: the catalog. Shoppers browse and search active products without signing
//! in; staff see every product and change them, with `If-Match` carrying the version.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::catalog::{Catalog, ProductBody};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::product::{ProductCommand, ProductId, ProductView};
use souk_storage::{CatalogQuery, Sort};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/products", Access::Public, get(list)),
        Route::new(Method::GET, "/v1/products/{id}", Access::Public, get(get_one)),
        Route::new(Method::POST, "/v1/products", Access::Staff, post(create)),
        Route::new(Method::PUT, "/v1/products/{id}", Access::Staff, put(update)),
        Route::new(Method::POST, "/v1/products/{id}/archive", Access::Staff, post(archive)),
        Route::new(Method::POST, "/v1/products/{id}/restore", Access::Staff, post(restore)),
        Route::new(Method::DELETE, "/v1/products/{id}", Access::Staff, delete(remove)),
    ]
}

/// A product with the units available of each variant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogProduct {
    /// The product.
    #[serde(flatten)]
    #[schema(value_type = ProductView)]
    pub product: Arc<ProductView>,
    /// Units available to order, by SKU (from the stock read model).
    pub available: BTreeMap<String, u64>,
}

/// A page of the catalog.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    /// Products, in the requested order.
    pub items: Vec<CatalogProduct>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/products` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Words to find in titles and descriptions (prefixes match); up to 100 characters.
    pub q: Option<String>,
    /// Only this category.
    pub category: Option<String>,
    /// Only products with a variant at or above this price (minor units).
    pub min_price: Option<i64>,
    /// Only products with a variant at or below this price (minor units).
    pub max_price: Option<i64>,
    /// Only products with this attribute value, as `name:value` (e.g. `size:M`).
    pub attribute: Option<String>,
    /// Only products with a variant available to order.
    pub in_stock: Option<bool>,
    /// `newest` (default), `price_asc`, `price_desc` or `relevance` (with `q`).
    pub sort: Option<Sort>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100; default 24.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

fn product_id(s: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(s).map_err(|_| ApiError::invalid(ErrorCode::UnknownProduct, "no such product"))
}

/// The version in `If-Match` (`"7"`, `W/"7"` or `7`), if the header is there.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = v.to_str().unwrap_or("").trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::invalid(ErrorCode::InvalidInput, "If-Match must carry the product version, e.g. \"3\"")
    })
}

/// An entity answer with its version as `ETag`.
fn versioned(status: StatusCode, view: ProductView) -> Response {
    let etag = format!("\"{}\"", view.version);
    let mut res = (status, axum::Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// A read answer with an `ETag` from its content; `304` when the client has it already.
fn cached<T: Serialize>(headers: &HeaderMap, body: &T) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let etag = format!("\"{}\"", souk_nats::accounts::hex(&digest.as_ref()[..16]));
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*"));
    let etag = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    if seen {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(([(header::ETAG, etag), (header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
        .into_response())
}

/// The catalog, from the read model: shoppers see active products, staff see all.
#[utoipa::path(get, operation_id = "list_products", path = "/v1/products", tag = "catalog", params(ListQuery),
    responses((status = 200, body = ProductPage, headers(("ETag" = String))), (status = 304, description = "not modified (If-None-Match)"), (status = 422, body = Problem)))]
async fn list(
    State(app): State<AppState>,
    who: Option<Principal>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(24);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "limit must be between 1 and 100"));
    }
    if q.q.as_ref().is_some_and(|s| s.chars().count() > 100) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "q must be at most 100 characters"));
    }
    if q.after.as_ref().is_some_and(|s| s.len() > 200) || q.category.as_ref().is_some_and(|s| s.len() > 50) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "after or category is too long"));
    }
    if q.min_price.is_some_and(|p| p < 0) || q.max_price.is_some_and(|p| p < 0) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "prices are 0 or more minor units"));
    }
    let attribute = match &q.attribute {
        None => None,
        Some(a) => match a.split_once(':') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() && a.len() <= 150 => {
                Some((k.to_owned(), v.to_owned()))
            }
            _ => return Err(ApiError::invalid(ErrorCode::InvalidInput, "attribute must be name:value")),
        },
    };
    let staff = who.is_some_and(|w| w.is_staff());
    let query = CatalogQuery {
        all_statuses: staff,
        category: q.category,
        min_price: q.min_price,
        max_price: q.max_price,
        attribute,
        in_stock: q.in_stock.unwrap_or(false),
        search: q.q,
        sort: q.sort.unwrap_or_default(),
        after: q.after,
        limit,
    };
    if !staff {
        let page = app
            .storefront
            .read(|shelf| {
                shelf.page(&query).map(|page| {
                    let items = page
                        .items
                        .into_iter()
                        .map(|l| CatalogProduct {
                            available: shelf.availability(&l),
                            product: l.view.clone(),
                        })
                        .collect();
                    ProductPage { items, next: page.next }
                })
            })
            .await?
            .map_err(ApiError::from)?;
        return cached(&headers, &page);
    }
    // Staff see drafts and archived products too: from the SurrealDB read model.
    let page = app.catalog_repo.list(&query).await?;
    let views: Vec<ProductView> = page
        .items
        .into_iter()
        .filter_map(|row| {
            let id = ProductId::parse(&row.pid).ok()?;
            Some(souk_messages::Entity::view(&row.state, &id))
        })
        .collect();
    let available = Catalog::availability(&app.catalog_repo, &views.iter().collect::<Vec<_>>()).await?;
    let items = views.into_iter().map(|v| with_availability(v, &available)).collect();
    cached(&headers, &ProductPage { items, next: page.next })
}

fn with_availability(product: ProductView, levels: &BTreeMap<souk_messages::Sku, u64>) -> CatalogProduct {
    let available = product
        .data
        .variants
        .iter()
        .map(|v| (v.sku.to_string(), levels.get(&v.sku).copied().unwrap_or(0)))
        .collect();
    CatalogProduct { product: Arc::new(product), available }
}

/// One product by id or slug. Shoppers see it only while it is active (from the storefront);
/// staff see it in any status, current (from the entity).
#[utoipa::path(get, operation_id = "get_product", path = "/v1/products/{id}", tag = "catalog", params(("id" = String, Path, description = "Product id or slug")),
    responses((status = 200, body = CatalogProduct, headers(("ETag" = String))), (status = 304, description = "not modified (If-None-Match)"), (status = 404, body = Problem)))]
async fn get_one(
    State(app): State<AppState>,
    rid: RequestId,
    who: Option<Principal>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    if id.len() > 100 {
        return Err(ApiError::invalid(ErrorCode::UnknownProduct, "no such product"));
    }
    if !who.is_some_and(|w| w.is_staff()) {
        let found = app.storefront.read(|shelf| {
            shelf
                .get(&id)
                .map(|l| CatalogProduct { available: shelf.availability(&l), product: l.view.clone() })
        });
        let product =
            found.await?.ok_or_else(|| ApiError::invalid(ErrorCode::UnknownProduct, "no such product"))?;
        return cached(&headers, &product);
    }
    // Staff see every status, current to the last write: from the entity.
    let view = app.catalog.get(&id, &rid.0).await?;
    let available = Catalog::availability(&app.catalog_repo, &[&view]).await?;
    cached(&headers, &with_availability(view, &available))
}

/// Creates a product (a draft unless `status` is `active`). Slug and SKUs must be unused.
#[utoipa::path(post, path = "/v1/products", tag = "catalog", request_body = ProductBody,
    responses((status = 201, body = ProductView, headers(("ETag" = String, description = "the version"))), (status = 409, body = Problem, description = "slug_taken or sku_taken"), (status = 422, body = Problem)))]
async fn create(
    State(app): State<AppState>,
    rid: RequestId,
    ApiJson(body): ApiJson<ProductBody>,
) -> Result<Response, ApiError> {
    let view = app.catalog.create(body.product, body.status, &rid.0).await?;
    Ok(versioned(StatusCode::CREATED, view))
}

/// Replaces a product. `If-Match` must carry the version it was edited from.
#[utoipa::path(put, operation_id = "update_product", path = "/v1/products/{id}", tag = "catalog", request_body = ProductBody,
    params(("id" = String, Path, description = "Product id"), ("If-Match" = String, Header, description = "the version, e.g. \"3\"")),
    responses((status = 200, body = ProductView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem, description = "version_mismatch"), (status = 428, body = Problem, description = "precondition_required")))]
async fn update(
    State(app): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ProductBody>,
) -> Result<Response, ApiError> {
    let id = product_id(&id)?;
    let expected = if_match(&headers)?.ok_or_else(|| {
        ApiError::invalid(ErrorCode::PreconditionRequired, "send If-Match with the version you edited")
    })?;
    let view = app.catalog.update(&id, body.product, body.status, expected, &rid.0).await?;
    Ok(versioned(StatusCode::OK, view))
}

/// Withdraws a product from sale.
#[utoipa::path(post, path = "/v1/products/{id}/archive", tag = "catalog",
    params(("id" = String, Path, description = "Product id")),
    responses((status = 200, body = ProductView), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn archive(
    State(app): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let cmd = ProductCommand::Archive { expected_version: if_match(&headers)? };
    Ok(versioned(StatusCode::OK, app.catalog.command(&product_id(&id)?, cmd, &rid.0).await?))
}

/// Brings an archived product back with the status it had.
#[utoipa::path(post, path = "/v1/products/{id}/restore", tag = "catalog",
    params(("id" = String, Path, description = "Product id")),
    responses((status = 200, body = ProductView), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn restore(
    State(app): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let cmd = ProductCommand::Restore { expected_version: if_match(&headers)? };
    Ok(versioned(StatusCode::OK, app.catalog.command(&product_id(&id)?, cmd, &rid.0).await?))
}

/// Deletes a draft that was never on sale; its slug and SKUs become free.
#[utoipa::path(delete, operation_id = "delete_product", path = "/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem), (status = 409, body = Problem, description = "product_conflict: not a never-sold draft")))]
async fn remove(
    State(app): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.catalog.delete(&product_id(&id)?, if_match(&headers)?, &rid.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
