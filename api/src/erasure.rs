//! Erasing a person's data on request: their account, then the delivery log's record of what
//! was sent to them and the dead letters of what could not be. Orders stay: they are the
//! shop's records of sale (docs/security.md).

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
/// their email address or phone, and removes such dead letters. Idempotent: repeating an
/// erasure that failed part-way finishes it.
pub async fn erase(app: &App, user: &UserId, correlation: &str) -> Result<(), ApiError> {
    // What was recorded until now must be in the delivery log before it is searched. Waited
    // for first, so that a log too far behind refuses the erasure before anything changes: a
    // customer could not repeat it once their account is gone.
    delivery_log_caught_up(app).await?;
    // From here on nothing new is planned for the account, and deliveries to it are withdrawn.
    let before = app.auth.erase(&app.store, user, correlation).await?;
    // A delivery that asked about the account just before it ended records its attempt; wait
    // for those too. The account is gone by now, so a log still behind does not fail the
    // erasure (the customer could not repeat it): what it holds is redacted, and a repeat by
    // an admin finds the rest.
    if let Err(e) = delivery_log_caught_up(app).await {
        tracing::warn!(%user, error = %e, "erasing with the delivery log behind");
    }
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
    // Dead letters, kept for an operator to retry, hold a message's address and text.
    let internal = |e: souk_nats::NatsSource| ApiError::Internal(e.to_string());
    let mut letters = 0;
    for (seq, letter) in souk_nats::notify::dead_letters(&app.jet).await.map_err(internal)? {
        let Ok(letter) = letter else { continue };
        let n = &letter.notification;
        if n.customer.as_ref() == Some(user) || addresses.contains(&n.to) {
            app.jet.dead_letters.delete_message(seq).await.map_err(|e| internal(Box::new(e)))?;
            letters += 1;
        }
    }
    tracing::info!(%user, notifications = sent.len(), dead_letters = letters, "personal data erased");
    Ok(())
}

/// Waits until this node's delivery log holds every attempt recorded until now.
async fn delivery_log_caught_up(app: &App) -> Result<(), ApiError> {
    let recorded = app.store.last_seq(EntityKind::Notification).await?;
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while app.notifications.checkpoint().await? < recorded {
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::invalid(
                ErrorCode::Unavailable,
                "the delivery log is catching up; try again shortly",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
