//! `/v1/admin/users`: account administration. Every route here is admin-only.

use crate::AppState;
use crate::auth::access::{Access, Principal};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiBytes, ApiJson, ApiPath, ApiQuery};
use crate::history::{HistoryPage, HistoryQuery};
use crate::request_id::RequestId;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use souk_messages::subject::EntityKind;
use souk_messages::user::{Role, UserCommand, UserView};
use souk_messages::{ErrorCode, UserId};
use std::collections::BTreeSet;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/admin/users", Access::Admin, get(list)),
        Route::new(Method::GET, "/v1/admin/users/{id}", Access::Admin, get(get_one)),
        Route::new(Method::POST, "/v1/admin/users/{id}/roles", Access::Admin, post(set_roles)),
        Route::new(Method::POST, "/v1/admin/users/{id}/disable", Access::Admin, post(disable)),
        Route::new(Method::POST, "/v1/admin/users/{id}/enable", Access::Admin, post(enable)),
        Route::new(Method::POST, "/v1/admin/users/{id}/erase", Access::Admin, post(erase)),
        Route::new(Method::GET, "/v1/admin/users/{id}/export", Access::Admin, get(export)),
        Route::new(Method::GET, "/v1/admin/history/{kind}/{id}", Access::Admin, get(history)),
        Route::new(
            Method::POST,
            "/v1/admin/import",
            Access::Admin,
            post(import).layer(axum::extract::DefaultBodyLimit::max(crate::IMPORT_MAX)),
        ),
    ]
}

/// `GET /v1/admin/users` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only users whose email or name contains this (case-insensitive), up to 100 characters.
    pub q: Option<String>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 500; default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A page of users.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    /// Users, ordered by id.
    pub items: Vec<UserView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/admin/users/{id}/roles`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesBody {
    /// The user's roles after the change: any of `customer`, `staff`, `admin`; at least one.
    #[schema(example = json!(["customer", "staff"]), value_type = Vec<Role>, min_items = 1)]
    pub roles: Vec<String>,
}

fn user_id(s: String) -> Result<UserId, ApiError> {
    UserId::parse(s).map_err(|e| ApiError::invalid(ErrorCode::InvalidInput, e.to_string()))
}

/// Users from the read model, by id, in pages, optionally searched by email or name.
#[utoipa::path(get, operation_id = "list_users", path = "/v1/admin/users", tag = "admin", params(ListQuery),
    responses((status = 200, body = UserPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "limit must be between 1 and 500"));
    }
    if q.q.as_ref().is_some_and(|s| s.chars().count() > 100) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "q must be at most 100 characters"));
    }
    let after = q.after.map(user_id).transpose()?;
    let items = app.users.list(q.q.as_deref(), after.as_ref(), limit).await?;
    let next = (items.len() == limit as usize).then(|| items.last().map(|u| u.id.to_string())).flatten();
    Ok(Json(UserPage { items, next }))
}

/// One user, from its entity (always current).
#[utoipa::path(get, operation_id = "get_user", path = "/v1/admin/users/{id}", tag = "admin", params(("id" = UserId, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
async fn get_one(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(app.auth.command(&user_id(id)?, UserCommand::Get, &rid.0).await?))
}

/// Replaces a user's roles. Admins cannot take the admin role from themselves.
#[utoipa::path(post, path = "/v1/admin/users/{id}/roles", tag = "admin", request_body = RolesBody,
    params(("id" = UserId, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn set_roles(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RolesBody>,
) -> Result<Json<UserView>, ApiError> {
    let id = user_id(id)?;
    let roles = body
        .roles
        .iter()
        .map(|r| {
            serde_json::from_value::<Role>(serde_json::Value::String(r.clone())).map_err(|_| {
                ApiError::invalid(
                    ErrorCode::InvalidInput,
                    format!("unknown role {r:?}: use customer, staff or admin"),
                )
            })
        })
        .collect::<Result<BTreeSet<Role>, ApiError>>()?;
    if id == who.user && !roles.contains(&Role::Admin) {
        return Err(ApiError::invalid(ErrorCode::Forbidden, "admins cannot remove their own admin role"));
    }
    Ok(Json(app.auth.command(&id, UserCommand::SetRoles { roles }, &rid.0).await?))
}

/// Disables an account: it can no longer log in, and its sessions end at their next refresh.
#[utoipa::path(post, path = "/v1/admin/users/{id}/disable", tag = "admin", params(("id" = UserId, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn disable(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let id = user_id(id)?;
    if id == who.user {
        return Err(ApiError::invalid(ErrorCode::Forbidden, "admins cannot disable themselves"));
    }
    Ok(Json(app.auth.command(&id, UserCommand::Disable, &rid.0).await?))
}

/// Erases an account for good, on its owner's request: profile, email address, password,
/// sessions and the delivery log's record of the messages sent to it. Orders stay, under the
/// customer id, as the shop's records of sale (docs/security.md).
#[utoipa::path(post, operation_id = "erase_user", path = "/v1/admin/users/{id}/erase", tag = "admin", params(("id" = UserId, Path, description = "User id")),
    responses((status = 204, description = "erased (also when it already was)"), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem, description = "unavailable: the delivery log is catching up; nothing was erased")))]
async fn erase(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = user_id(id)?;
    if id == who.user {
        return Err(ApiError::invalid(
            ErrorCode::Forbidden,
            "admins erase their own account at /v1/me/erasure",
        ));
    }
    crate::erasure::erase(&app, &id, &rid.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A copy of everything Souk holds about a person, for an admin answering their request for
/// it (`GET /v1/me/export` is the same document for a signed-in customer).
#[utoipa::path(get, operation_id = "export_user", path = "/v1/admin/users/{id}/export", tag = "admin", params(("id" = UserId, Path, description = "User id")),
    responses((status = 200, body = crate::export::PersonalData, description = "the data, as an attachment"), (status = 404, body = Problem)))]
async fn export(
    State(app): State<AppState>,
    rid: RequestId,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = user_id(id)?;
    let data = crate::export::export(&app, &id, &rid.0).await?;
    tracing::info!(user = %id, by = %who.user, "personal data exported by an admin");
    Ok(crate::export::attachment(&id, &data))
}

/// Every recorded change of any entity, oldest first, each with who sent the request that
/// made it (`actor`, absent for Souk's own steps) and the request (`correlation_id`): the
/// audit trail of who changed a price, a role or an order.
#[utoipa::path(get, operation_id = "entity_history", path = "/v1/admin/history/{kind}/{id}", tag = "admin",
    params(("kind" = String, Path, description = "stock, user, product, cart, order or notification"), ("id" = String, Path, description = "The entity id: a SKU, usr-…, prd-…, ord-…"), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 422, body = Problem)))]
async fn history(
    State(app): State<AppState>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let Some(kind) = EntityKind::WITH_HISTORY.into_iter().find(|k| k.as_str() == kind) else {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "kind must be stock, user, product, cart, order or notification",
        ));
    };
    if !souk_messages::ids::is_token(&id) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "an entity id is 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
        ));
    }
    Ok(Json(crate::history::page(&app, kind, &id, &q).await?))
}

/// Enables a disabled account.
#[utoipa::path(post, path = "/v1/admin/users/{id}/enable", tag = "admin", params(("id" = UserId, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
async fn enable(
    State(app): State<AppState>,
    rid: RequestId,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(app.auth.command(&user_id(id)?, UserCommand::Enable, &rid.0).await?))
}

/// `POST /v1/admin/import` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `jsonl` (default) or `csv`.
    pub format: Option<crate::import::Format>,
}

/// Imports products from a JSON-lines or CSV body (up to 4 MiB), idempotent by SKU: the good
/// lines are imported and each bad one is reported with its reason.
#[utoipa::path(post, path = "/v1/admin/import", tag = "admin", params(ImportQuery),
    request_body(content = String, description = "JSON lines (one product per line) or CSV (one variant per row)", content_type = "text/plain"),
    responses((status = 200, body = crate::import::Summary), (status = 413, body = Problem), (status = 422, body = Problem)))]
async fn import(
    State(app): State<AppState>,
    rid: RequestId,
    ApiQuery(q): ApiQuery<ImportQuery>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<crate::import::Summary>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid(ErrorCode::InvalidBody, "the body must be UTF-8 text"))?;
    let (entries, rejected) = crate::import::parse(q.format.unwrap_or(crate::import::Format::Jsonl), text);
    let mut summary = crate::import::Summary { rejected, ..Default::default() };
    crate::import::run(&app.catalog, entries, &rid.0, &mut summary, |_| {}).await;
    Ok(Json(summary))
}
