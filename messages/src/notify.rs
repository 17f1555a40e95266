//! Notifications: what Souk tells customers and staff, by email and SMS. An event that calls
//! for a message becomes one [`Notification`] per channel and recipient, queued on
//! `souk.notify.<channel>`; each delivery attempt is recorded as a [`NotificationEvent`] on
//! `souk.evt.notification.<id>`, and what still fails after the last attempt is dead-lettered
//! on `souk.dlq.<channel>`.

use crate::ids::UserId;
use crate::order::OrderId;
use crate::subject::stable_hash;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// A way of reaching someone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// An email.
    Email,
    /// A text message.
    Sms,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Self; 2] = [Self::Email, Self::Sms];

    /// The channel as a subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    /// Parses a subject token or query value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a notification is about; names its templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// The order is confirmed: paid and its stock sold.
    OrderConfirmed,
    /// The order left the warehouse.
    OrderShipped,
    /// The order arrived.
    OrderDelivered,
    /// The order was cancelled (by the customer, staff or a lapse).
    OrderCancelled,
    /// Money was given back.
    OrderRefunded,
    /// The payment failed, so the order was cancelled.
    PaymentFailed,
    /// A password reset was asked for: carries the link.
    PasswordReset,
    /// A SKU's available stock fell below the threshold (to staff).
    StockLow,
}

impl Topic {
    /// The topic's wire name, which is also its templates' file stem.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderShipped => "order_shipped",
            Self::OrderDelivered => "order_delivered",
            Self::OrderCancelled => "order_cancelled",
            Self::OrderRefunded => "order_refunded",
            Self::PaymentFailed => "payment_failed",
            Self::PasswordReset => "password_reset",
            Self::StockLow => "stock_low",
        }
    }
}

/// One message to one recipient over one channel, rendered and ready to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Names the (event, channel, recipient) it is for; at most one is ever sent per id.
    pub id: NotificationId,
    /// The channel.
    pub channel: Channel,
    /// What it is about.
    pub topic: Topic,
    /// The address: an email address or a phone number in international form.
    pub to: String,
    /// The customer it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<UserId>,
    /// The order it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderId>,
    /// The email's subject line (email only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The plain-text body (the whole SMS).
    pub text: String,
    /// The HTML body (email only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// When the event that caused it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub caused_at: OffsetDateTime,
    /// Attempts made before it was queued again from the dead-letter stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prior_attempts: u32,
}

const fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A notification's id: 32 hex digits derived from the event, channel and recipient, so the
/// same event planned twice names the same notification.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(String);

impl NotificationId {
    /// The id of the notification of `event` to `to` over `channel`.
    pub fn of(event: &uuid::Uuid, channel: Channel, to: &str) -> Self {
        let a = stable_hash(&[event.as_bytes(), channel.as_str().as_bytes(), to.as_bytes()]);
        let b = stable_hash(&[to.as_bytes(), channel.as_str().as_bytes(), event.as_bytes()]);
        Self(format!("{a:016x}{b:016x}"))
    }

    /// Validates `s`: 32 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider accepted it.
    Sent,
    /// It failed and will be tried again.
    Failed,
    /// It failed for the last time (or can never succeed) and went to the dead-letter stream.
    DeadLettered,
}

/// One delivery attempt, recorded on `souk.evt.notification.<id>` (the event's version is the
/// attempt number). Carries no message body: those can hold reset links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum NotificationEvent {
    /// A delivery attempt and its outcome.
    #[serde(rename = "notification.attempted")]
    Attempted {
        /// The channel.
        channel: Channel,
        /// What it is about.
        topic: Topic,
        /// The address.
        to: String,
        /// The customer it concerns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer: Option<UserId>,
        /// The order it concerns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<OrderId>,
        /// How it ended.
        outcome: Outcome,
        /// The provider's answer or the failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl NotificationEvent {
    /// The event's `type`.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Attempted { .. } => "notification.attempted",
        }
    }
}

/// A notification that could not be delivered, as kept on `souk.dlq.<channel>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The notification, ready to be sent again.
    pub notification: Notification,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// When it was given up on.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_differ_by_channel_and_recipient() {
        let e = uuid::Uuid::new_v4();
        let a = NotificationId::of(&e, Channel::Email, "a@x.test");
        assert_eq!(a, NotificationId::of(&e, Channel::Email, "a@x.test"));
        assert_ne!(a, NotificationId::of(&e, Channel::Sms, "a@x.test"));
        assert_ne!(a, NotificationId::of(&e, Channel::Email, "b@x.test"));
        assert_eq!(NotificationId::parse(a.as_str()), Some(a));
        assert_eq!(NotificationId::parse("not-an-id"), None);
    }
}
