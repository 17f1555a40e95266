//! `/v1/admin/logs`: the central log store, every node's records. Admin-only.

use crate::AppState;
use crate::auth::access::Access;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::log::{Level, LogRecord};
use souk_storage::LogQuery;

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(Method::GET, "/v1/admin/logs", Access::Admin, get(search))]
}

/// `GET /v1/admin/logs` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words the record must contain (message or fields), up to 200 characters.
    pub q: Option<String>,
    /// The least severe level: `error`, `warn`, `info`, `debug` or `trace`.
    pub level: Option<String>,
    /// Only this node's records.
    pub node: Option<String>,
    /// Only this request's records: its `x-request-id`, or a correlation id (an order id).
    pub request_id: Option<String>,
    /// From this time on (RFC 3339).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// At most this many, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// Matching records, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogList {
    /// The records.
    pub items: Vec<LogRecord>,
}

/// Searches every node's logs (a moment behind: records travel through NATS first).
#[utoipa::path(get, path = "/v1/admin/logs", tag = "admin", params(SearchQuery),
    responses((status = 200, body = LogList), (status = 422, body = Problem)))]
pub(crate) async fn search(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<LogList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    let long = |s: &Option<String>, n: usize| s.as_ref().is_some_and(|s| s.len() > n);
    if !(1..=500).contains(&limit) || long(&q.q, 200) || long(&q.node, 100) || long(&q.request_id, 128) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "limit must be 1 to 500; q at most 200 characters, node 100, request_id 128",
        ));
    }
    let level = q
        .level
        .as_deref()
        .map(|l| {
            Level::parse(l).ok_or_else(|| {
                ApiError::invalid(ErrorCode::InvalidInput, "level must be error, warn, info, debug or trace")
            })
        })
        .transpose()?;
    let query = LogQuery {
        q: q.q,
        level,
        node: q.node,
        request_id: q.request_id,
        since: crate::extract::query_time("since", q.since.as_deref())?,
        until: crate::extract::query_time("until", q.until.as_deref())?,
        limit,
    };
    Ok(Json(LogList { items: app.logs.search(&query).await? }))
}
