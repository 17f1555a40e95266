//! `POST /v1/payments/webhook`: the payment provider's event deliveries.

use crate::AppState;
use crate::auth::access::Access;
use crate::error::{ApiError, Problem};
use crate::extract::ApiBytes;
use crate::request_id::RequestId;
use crate::routes::Route;
use crate::webhook::{Dispute, ProviderRefund};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::routing::post;
use serde_json::{Value, json};
use souk_messages::ErrorCode;
use souk_messages::order::{DisputeStatus, OrderView};
use souk_storage::OrderQuery;

pub(crate) fn routes() -> Vec<Route> {
    // Public: the provider signs the body instead of sending a token.
    vec![Route::new(Method::POST, "/v1/payments/webhook", Access::Public, post(webhook))]
}

/// Receives a signed event from the payment provider.
#[utoipa::path(post, path = "/v1/payments/webhook", tag = "orders",
    params(("Stripe-Signature" = String, Header, description = "t=<unix time>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")),
    request_body(content = String, content_type = "application/json"),
    responses((status = 200, description = "received"), (status = 401, body = Problem, description = "unsigned, wrongly signed, stale or replayed"),
        (status = 503, body = Problem, description = "unavailable: the order of a refund made in the dashboard is busy with its own refund or cancellation; delivered again later")))]
async fn webhook(
    State(app): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> Result<Json<Value>, ApiError> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let event = app.webhooks.verify(signature, &body, time::OffsetDateTime::now_utc()).await?;
    if let Some(dispute) = event.dispute() {
        disputed(&app, &event.id, &dispute, &rid.0).await?;
    } else if let Some(refund) = event.refund().filter(|r| r.made_elsewhere() || r.failed()) {
        refund_told(&app, &event.id, &refund, &rid.0).await?;
    } else {
        tracing::info!(event = %event.id, kind = %event.kind, "payment provider event received");
    }
    Ok(Json(json!({"received": true})))
}

/// The order paid by `payment`, from the read model.
async fn order_of(app: &AppState, payment: Option<&str>) -> Result<Option<OrderView>, ApiError> {
    let Some(payment) = payment else { return Ok(None) };
    let query = OrderQuery { payment: Some(payment.to_owned()), limit: 1, ..OrderQuery::default() };
    Ok(app.orders.list(&query).await?.items.into_iter().next())
}

/// Records a dispute (a chargeback) on the order its payment paid, so staff see it there, and
/// warns staff when one opens or is lost. A dispute of a payment that is no order's is only
/// logged: a delivery is answered whether or not the order can be found, or the provider would
/// send it again and again.
async fn disputed(app: &AppState, event: &str, dispute: &Dispute, correlation: &str) -> Result<(), ApiError> {
    let payment = dispute.payment_intent.as_deref();
    let order = order_of(app, payment).await?;
    // Counted once per dispute, however often the provider tells of it.
    let mut new = true;
    if let (Some(order), Some(record)) = (&order, dispute.on_order()) {
        new = app.checkout.record_dispute(&order.id, record, correlation).await?;
    }
    let order = order.as_ref().map_or("unknown", |o| o.id.as_str());
    let (amount, reason) = (dispute.amount, dispute.reason.as_deref().unwrap_or("?"));
    match dispute.status() {
        // The money is on its way back to the customer's bank unless the shop answers.
        DisputeStatus::Open => {
            if new {
                app.http.payment_disputes.inc();
            }
            tracing::warn!(event, order, payment, dispute = %dispute.id, amount, reason, "a customer's bank disputed a payment");
        }
        DisputeStatus::Lost => {
            tracing::warn!(event, order, payment, dispute = %dispute.id, amount, reason, "a dispute was lost: the customer's bank gave the money back to them");
        }
        DisputeStatus::Won => {
            tracing::info!(event, order, payment, dispute = %dispute.id, "a dispute closed in the shop's favour");
        }
    }
    Ok(())
}

/// Acts on a refund the provider told of: records one made in its dashboard, and warns of
/// one that failed after it was taken as given (rare, days later: the order still counts it,
/// so staff settle it with the customer).
async fn refund_told(
    app: &AppState,
    event: &str,
    refund: &ProviderRefund,
    correlation: &str,
) -> Result<(), ApiError> {
    if !refund.failed() {
        return refunded_elsewhere(app, event, refund, correlation).await;
    }
    let payment = refund.payment_intent.as_deref();
    let order = order_of(app, payment).await?;
    app.http.payment_refunds_failed.inc();
    tracing::warn!(
        event,
        order = order.as_ref().map_or("unknown", |o| o.id.as_str()),
        payment,
        refund = %refund.id,
        souk_refund = refund.souk_key(),
        amount = refund.amount,
        reason = refund.failure_reason.as_deref().unwrap_or("?"),
        "a refund failed at the provider: the money did not reach the customer"
    );
    Ok(())
}

/// Records on its order a refund the shop made in the provider's dashboard, so the order
/// shows what was given back (and its customer is told, as for any refund). What cannot be
/// recorded (a payment that is no order's, more than is left, an order never paid) is answered and left
/// to staff with a warning; an order busy with its own refund is answered with an error, so
/// the provider delivers the event again later.
async fn refunded_elsewhere(
    app: &AppState,
    event: &str,
    refund: &ProviderRefund,
    correlation: &str,
) -> Result<(), ApiError> {
    let payment = refund.payment_intent.as_deref();
    // A read model that fails answers an error: the provider delivers the event again.
    let Some(order) = order_of(app, payment).await? else {
        tracing::info!(event, refund = %refund.id, payment, "a refund of a payment that is not an order's");
        return Ok(());
    };
    match app.checkout.record_provider_refund(&order.id, &refund.id, refund.amount, correlation).await {
        Ok(now) => {
            tracing::info!(event, order = %order.id, refund = %refund.id, amount = refund.amount, refunded = now.refunded, "a refund made at the provider is recorded on its order");
            Ok(())
        }
        Err(ApiError::Rejected(e)) if e.code != ErrorCode::Unavailable => {
            tracing::warn!(event, order = %order.id, refund = %refund.id, amount = refund.amount, reason = %e.detail, "a refund made at the provider could not be recorded on its order");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
