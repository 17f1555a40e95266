//! A person's copy of what Souk holds about them (the rights of access and portability): their
//! account and its recorded history, their cart, their orders and the messages sent to them.
//! The messages are found as an erasure finds them, so the copy shows everything an erasure
//! removes, and the orders it keeps.

use crate::App;
use crate::cart::{Owner, PricedCart};
use crate::error::ApiError;
use crate::history::HistoryQuery;
use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use serde::Serialize;
use souk_messages::UserId;
use souk_messages::notify::Channel;
use souk_messages::order::OrderView;
use souk_messages::subject::EntityKind;
use souk_messages::user::{UserCommand, UserView};
use souk_storage::OrderQuery;
use souk_storage::notification::Delivery;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Commits or orders read at a time.
const PAGE: u32 = 100;

/// Everything Souk holds about one person, as one JSON document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PersonalData {
    /// When this copy was made, RFC 3339.
    pub exported_at: String,
    /// The account as it is now.
    pub account: UserView,
    /// Every recorded change of the account, oldest first, as `docs/events.md` describes
    /// them; a password reset's single-use token is left out.
    #[schema(value_type = Vec<Object>)]
    pub account_history: Vec<serde_json::Value>,
    /// The cart, priced now.
    pub cart: PricedCart,
    /// Every order, newest first.
    pub orders: Vec<OrderView>,
    /// Every email and text message sent to the person, with each attempt, newest first.
    pub messages: Vec<Delivery>,
}

/// Gathers `user`'s data; `404 unknown_user` for an account that does not exist (or was
/// erased).
pub async fn export(app: &App, user: &UserId, correlation: &str) -> Result<PersonalData, ApiError> {
    let account = app.auth.command(user, UserCommand::Get, correlation).await?;
    let addresses: Vec<String> = std::iter::once(account.email.to_string())
        .chain(account.phone.as_ref().map(|p| p.as_str().to_owned()))
        .collect();
    let owner = Owner::Customer(user.clone());
    let (account_history, cart, orders, messages) = tokio::try_join!(
        history(app, user),
        app.carts.get(&owner, correlation),
        orders(app, user),
        messages(app, user, &addresses),
    )?;
    let exported_at = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
    Ok(PersonalData { exported_at, account, account_history, cart, orders, messages })
}

async fn history(app: &App, user: &UserId) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut events = Vec::new();
    let mut query = HistoryQuery { after: None, limit: Some(PAGE as usize) };
    loop {
        let page = crate::history::page(app, EntityKind::User, user.as_str(), &query).await?;
        events.extend(page.events.into_iter().map(without_internals));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(events),
        }
    }
}

/// An account event as the person may see it: without the internal references (the request,
/// the staff member who acted); the history's pages already leave out a reset token (a
/// credential, and spent or expired by now anyway).
fn without_internals(mut event: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = event.as_object_mut() {
        fields.remove("correlation_id");
        fields.remove("actor");
    }
    event
}

async fn orders(app: &App, user: &UserId) -> Result<Vec<OrderView>, ApiError> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let query = OrderQuery { customer: Some(user.clone()), after, limit: PAGE, ..OrderQuery::default() };
        let page = app.orders.list(&query).await?;
        all.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

async fn messages(app: &App, user: &UserId, addresses: &[String]) -> Result<Vec<Delivery>, ApiError> {
    let mut sent = app.notifications.of_person(user, addresses).await?;
    // Webhook deliveries go to the shop's own endpoints, not to the person.
    sent.retain(|d| d.channel != Channel::Webhook);
    let first = |d: &Delivery| {
        d.attempts
            .first()
            .and_then(|a| OffsetDateTime::parse(&a.at, &Rfc3339).ok())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    sent.sort_by(|a, b| first(b).cmp(&first(a)).then_with(|| b.id.cmp(&a.id)));
    Ok(sent)
}

/// The document as a download named after the account.
pub fn attachment(user: &UserId, data: &PersonalData) -> Response {
    let disposition = format!("attachment; filename=\"souk-{user}.json\"");
    let mut response = Json(data).into_response();
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
