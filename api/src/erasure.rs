//! Erasing a person's data on request: their account, then the delivery log's record of what
//! was sent to them. Orders stay: they are the shop's records of sale (docs/security.md).

use crate::App;
use crate::error::ApiError;
use souk_messages::event::Event;
use souk_messages::notify::NotificationEvent;
use souk_messages::subject::EntityKind;
use souk_messages::{ErrorCode, UserId};
use std::time::Duration;
use time::OffsetDateTime;

/// How long an erasure waits for this node's delivery log to hold every delivery recorded
/// before it.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Erases `user`'s account, then redacts every notification that concerned them or went to
/// their email address or phone. Idempotent: repeating an erasure that failed part-way
/// finishes it.
pub async fn erase(app: &App, user: &UserId, correlation: &str) -> Result<(), ApiError> {
    // What was recorded until now must be in the delivery log before it is searched. Waited
    // for first, so that a log too far behind refuses the erasure before anything changes: a
    // customer could not repeat it once their account is gone.
    let recorded = app.store.last_seq(EntityKind::Notification).await?;
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while app.notifications.checkpoint().await? < recorded {
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::invalid(
                ErrorCode::Unavailable,
                "the delivery log is catching up; nothing was erased, try again shortly",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From here on nothing new is planned for the account.
    let before = app.auth.erase(&app.store, user, correlation).await?;
    let addresses: Vec<String> = before
        .map(|v| std::iter::once(v.email.to_string()).chain(v.phone.map(|p| p.as_str().to_owned())).collect())
        .unwrap_or_default();
    let sent = app.notifications.of_person(user, &addresses).await?;
    for delivery in &sent {
        let id = &delivery.id;
        let tombstone = vec![Event {
            event_id: uuid::Uuid::new_v4(),
            id: id.to_string(),
            version: 0,
            time: OffsetDateTime::now_utc(),
            correlation_id: Some(correlation.to_owned()),
            actor: crate::auth::access::caller(),
            body: NotificationEvent::Redacted {},
        }];
        app.store.replace_history(EntityKind::Notification, id, &tombstone).await?;
    }
    tracing::info!(%user, notifications = sent.len(), "personal data erased");
    Ok(())
}
