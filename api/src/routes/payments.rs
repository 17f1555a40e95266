//! `POST /v1/payments/webhook`: the payment provider's event deliveries.

use crate::AppState;
use crate::auth::access::Access;
use crate::error::{ApiError, Problem};
use crate::extract::ApiBytes;
use crate::routes::Route;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::routing::post;
use serde_json::{Value, json};
use souk_storage::OrderQuery;

pub(crate) fn routes() -> Vec<Route> {
    // Public: the provider signs the body instead of sending a token.
    vec![Route::new(Method::POST, "/v1/payments/webhook", Access::Public, post(webhook))]
}

/// Receives a signed event from the payment provider.
#[utoipa::path(post, path = "/v1/payments/webhook", tag = "orders",
    params(("Stripe-Signature" = String, Header, description = "t=<unix time>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")),
    request_body(content = String, content_type = "application/json"),
    responses((status = 200, description = "received"), (status = 401, body = Problem, description = "unsigned, wrongly signed, stale or replayed")))]
async fn webhook(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Value>, ApiError> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let event = app.webhooks.verify(signature, &body, time::OffsetDateTime::now_utc()).await?;
    if let Some(dispute) = event.dispute_created() {
        // The money is on its way back to the customer's bank unless the shop answers the
        // dispute. The warning names the order for staff; a delivery is answered whether or
        // not the order can be found, or the provider would send it again and again.
        app.http.payment_disputes.inc();
        let order = match &dispute.payment_intent {
            Some(payment) => {
                let query = OrderQuery { payment: Some(payment.clone()), limit: 1, ..OrderQuery::default() };
                app.orders.list(&query).await.ok().and_then(|page| page.items.into_iter().next())
            }
            None => None,
        };
        tracing::warn!(
            event = %event.id,
            order = order.as_ref().map_or("unknown", |o| o.id.as_str()),
            payment = dispute.payment_intent.as_deref().unwrap_or("?"),
            amount = dispute.amount,
            reason = dispute.reason.as_deref().unwrap_or("?"),
            "a customer's bank disputed a payment"
        );
    } else {
        tracing::info!(event = %event.id, kind = %event.kind, "payment provider event received");
    }
    Ok(Json(json!({"received": true})))
}
