//! Entity histories as staff and admins read them: a page of an entity's events as stored,
//! each with the request that caused it (`correlation_id`) and who sent it (`actor`), so a
//! history is also the audit trail of who changed what.

use crate::App;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::subject::EntityKind;

/// A history route's query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The `next` cursor of the previous page.
    pub after: Option<u64>,
    /// Page size, 1 to 100; default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

/// A page of an entity's events, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// Events as published on `souk.evt.<kind>.<id>` (see docs/events.md), a password
    /// reset's token left out.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// A page of the history of `kind` entity `id` (a validated id: one subject token).
pub async fn page(app: &App, kind: EntityKind, id: &str, q: &HistoryQuery) -> Result<HistoryPage, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(ErrorCode::InvalidInput, "limit must be between 1 and 100"));
    }
    let commits = app.store.page::<serde_json::Value>(kind, id, q.after.unwrap_or(0), limit).await?;
    let next = (commits.len() == limit).then(|| commits.last().map(|(seq, _)| *seq)).flatten();
    let events = commits.into_iter().flat_map(|(_, events)| events).map(without_token).collect();
    Ok(HistoryPage { events, next })
}

/// An event without a password reset's single-use token: a credential, for the reset email
/// alone.
pub fn without_token(mut event: serde_json::Value) -> serde_json::Value {
    if let Some(data) = event.get_mut("data").and_then(serde_json::Value::as_object_mut) {
        data.remove("token");
    }
    event
}
