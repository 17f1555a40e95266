//! `/v1/admin/notifications`: the delivery log. Admin-only.

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
use souk_messages::notify::{Channel, Outcome};
use souk_messages::order::OrderId;
use souk_storage::{Delivery, DeliveryQuery};

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(Method::GET, "/v1/admin/notifications", Access::Admin, get(list))]
}

/// `GET /v1/admin/notifications` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only to this address (email address or phone number, exactly).
    pub recipient: Option<String>,
    /// Only about this order.
    #[param(value_type = Option<String>)]
    pub order: Option<OrderId>,
    /// Only over this channel.
    pub channel: Option<Channel>,
    /// Only those whose latest attempt ended so.
    pub status: Option<Outcome>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// A page of the delivery log, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Notifications, each with every attempt.
    pub items: Vec<Delivery>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Every notification sent or tried, with each attempt's outcome, newest first (from the
/// read model, a moment behind the attempts).
#[utoipa::path(get, path = "/v1/admin/notifications", tag = "admin", params(ListQuery),
    responses((status = 200, body = DeliveryList), (status = 422, body = Problem)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > 320);
    if !(1..=100).contains(&limit) || too_long(&q.after) || too_long(&q.recipient) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "limit must be 1 to 100, recipient an address and after a cursor from next",
        ));
    }
    let query = DeliveryQuery {
        to: q.recipient,
        order: q.order,
        channel: q.channel,
        status: q.status,
        after: q.after,
        limit,
    };
    let page = app.notifications.list(&query).await?;
    Ok(Json(DeliveryList { items: page.items, next: page.next }))
}
