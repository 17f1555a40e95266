//! `/v1/admin/notifications`: the delivery log. Admin-only.

use crate::AppState;
use crate::auth::access::Access;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::notify::{Channel, Notification, NotificationId, Outcome};
use souk_messages::order::OrderId;
use souk_storage::{Delivery, DeliveryQuery};

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/admin/notifications", Access::Admin, get(list)),
        Route::new(Method::POST, "/v1/admin/notifications/{id}/replay", Access::Admin, post(replay)),
    ]
}

/// `GET /v1/admin/notifications` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
#[utoipa::path(get, operation_id = "list_deliveries", path = "/v1/admin/notifications", tag = "admin", params(ListQuery),
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

/// Posts a webhook delivery again, as it was (same `webhook-id`, so receivers can tell), with
/// fresh attempts. Only webhook deliveries can be replayed: Souk keeps no email or SMS bodies.
#[utoipa::path(post, path = "/v1/admin/notifications/{id}/replay", tag = "admin",
    params(("id" = String, Path, description = "The notification id, from the delivery log")),
    responses((status = 202, description = "queued"), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(crate) async fn replay(
    State(app): State<AppState>,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let unknown = || ApiError::invalid(ErrorCode::UnknownNotification, "no such notification");
    let id = NotificationId::parse(&id)?;
    let (delivery, webhook) = app.notifications.get(&id).await?.ok_or_else(unknown)?;
    let Some(webhook) = webhook else {
        return Err(ApiError::invalid(
            ErrorCode::InvalidInput,
            "only webhook deliveries can be replayed (email and SMS bodies are not kept)",
        ));
    };
    let n = Notification {
        id,
        channel: delivery.channel,
        topic: delivery.topic,
        to: delivery.to,
        customer: delivery.customer,
        order: delivery.order,
        subject: Some(webhook.event_type),
        text: webhook.body,
        html: None,
        caused_at: time::OffsetDateTime::now_utc(),
        prior_attempts: u32::try_from(delivery.attempts.len()).unwrap_or(u32::MAX),
    };
    let msg_id = format!("{}.replay.{}", n.id, uuid::Uuid::new_v4().simple());
    souk_nats::notify::resend(&app.jet, &n, &msg_id).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(StatusCode::ACCEPTED)
}
