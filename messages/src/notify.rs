//! Notifications: what Souk tells customers and staff, by email and SMS, and what it posts to
//! the shop's registered webhook endpoints. An event that calls for a message becomes one
//! [`Notification`] per channel and recipient, queued on
//! `souk.notify.<channel>`; each delivery attempt is recorded as a [`NotificationEvent`] on
//! `souk.evt.notification.<id>`, and what still fails after the last attempt is dead-lettered
//! on `souk.dlq.<channel>`.

use crate::ids::UserId;
use crate::order::OrderId;
use crate::subject::stable_hash;
use crate::{ErrorCode, ReplyError};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// A way of reaching someone.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// An email.
    Email,
    /// A text message.
    Sms,
    /// An HTTP POST to a registered webhook endpoint, signed the Standard Webhooks way.
    Webhook,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Self; 3] = [Self::Email, Self::Sms, Self::Webhook];

    /// The channel as a subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::Webhook => "webhook",
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
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
    /// The customer's cancellation did not happen: the provider refused the refund.
    OrderCancelRefused,
    /// Money was given back.
    OrderRefunded,
    /// The payment failed, so the order was cancelled.
    PaymentFailed,
    /// A password reset was asked for: carries the link.
    PasswordReset,
    /// A SKU's available stock fell below the threshold (to staff).
    StockLow,
    /// A customer's bank disputed an order's payment (to staff, who answer it).
    OrderDisputed,
    /// An event, posted to the webhook endpoints that subscribed to its type.
    Event,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Self; 11] = [
        Self::OrderConfirmed,
        Self::OrderShipped,
        Self::OrderDelivered,
        Self::OrderCancelled,
        Self::OrderCancelRefused,
        Self::OrderRefunded,
        Self::PaymentFailed,
        Self::PasswordReset,
        Self::StockLow,
        Self::OrderDisputed,
        Self::Event,
    ];

    /// The topic's wire name, which is also its templates' file stem.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderShipped => "order_shipped",
            Self::OrderDelivered => "order_delivered",
            Self::OrderCancelled => "order_cancelled",
            Self::OrderCancelRefused => "order_cancel_refused",
            Self::OrderRefunded => "order_refunded",
            Self::PaymentFailed => "payment_failed",
            Self::PasswordReset => "password_reset",
            Self::StockLow => "stock_low",
            Self::OrderDisputed => "order_disputed",
            Self::Event => "event",
        }
    }
}

/// One message to one recipient over one channel, rendered and ready to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The email's subject line; for a webhook, the event's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The plain-text body (the whole SMS; a webhook's JSON body).
    pub text: String,
    /// The HTML body (email only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// When the event that caused it happened.
    #[schemars(with = "String")]
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
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct NotificationId(String);

impl NotificationId {
    /// The id of the notification of `event` to `to` over `channel`.
    pub fn of(event: &uuid::Uuid, channel: Channel, to: &str) -> Self {
        let a = stable_hash(&[event.as_bytes(), channel.as_str().as_bytes(), to.as_bytes()]);
        let b = stable_hash(&[to.as_bytes(), channel.as_str().as_bytes(), event.as_bytes()]);
        Self(format!("{a:016x}{b:016x}"))
    }

    /// Validates `s`: 32 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        if s.len() == 32 && crate::ids::is_lower_hex(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ReplyError::new(ErrorCode::UnknownNotification, "no such notification"))
        }
    }
}

crate::ids::string_newtype!(NotificationId);

/// How one delivery attempt ended.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider accepted it.
    Sent,
    /// It failed and will be tried again.
    Failed,
    /// It failed for the last time (or can never succeed) and went to the dead-letter stream.
    DeadLettered,
}

/// What happened to a notification, recorded on `souk.evt.notification.<id>`: each delivery
/// attempt (the event's version is the attempt number), and its redaction when the account
/// it concerned was erased. Carries no message body: those can hold reset links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
        /// A webhook's event type and body (webhooks only: they are public event data), so
        /// the delivery can be replayed from the log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook: Option<WebhookBody>,
    },
    /// The notification concerned an erased account: its attempts are purged and this, which
    /// names nobody, is all that stays of its history.
    #[serde(rename = "notification.redacted")]
    Redacted {},
}

/// What a webhook delivery posts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WebhookBody {
    /// The event's type.
    pub event_type: String,
    /// The JSON body.
    pub body: String,
}

/// A webhook endpoint's id: `whe-` and 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EndpointId(String);

impl EndpointId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(format!("whe-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        match s.strip_prefix("whe-") {
            Some(hex) if hex.len() == 32 && crate::ids::is_lower_hex(hex) => Ok(Self(s.to_owned())),
            _ => Err(ReplyError::new(ErrorCode::UnknownNotification, "no such webhook endpoint")),
        }
    }
}

crate::ids::string_newtype!(EndpointId);

/// The entity kinds whose events webhook endpoints may subscribe to. User events are never
/// posted: they are personal data, and one carries a password-reset token.
pub const WEBHOOK_KINDS: [&str; 3] = ["order", "stock", "product"];

/// A registered webhook endpoint, as stored (with its signing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: EndpointId,
    /// Where deliveries are posted.
    pub url: String,
    /// Event types it wants: `order.confirmed`, `order.*` (every order event) or `*`.
    pub events: Vec<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// The signing secret, `whsec_` and the base64 of 32 random bytes.
    pub secret: String,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The secret before the last rotation, which still signs until `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    /// When the previous secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub previous_until: Option<OffsetDateTime>,
}

/// How long a rotated-out secret keeps signing deliveries beside the new one, so a receiver
/// can switch to the new secret without refusing a single delivery.
pub const SECRET_ROTATION_GRACE: time::Duration = time::Duration::hours(24);

impl WebhookEndpoint {
    /// The secrets a delivery at `now` is signed with: the current one, and the previous one
    /// while its grace period lasts.
    pub fn signing_secrets(&self, now: OffsetDateTime) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_until)
            && now < until
        {
            secrets.push(previous);
        }
        secrets
    }

    /// Whether the endpoint wants events of type `event_type` (e.g. `order.confirmed`).
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled && self.events.iter().any(|pattern| selects(pattern, event_type))
    }
}

fn selects(pattern: &str, event_type: &str) -> bool {
    let kind = event_type.split('.').next().unwrap_or("");
    if !WEBHOOK_KINDS.contains(&kind) {
        return false;
    }
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(k) => k == kind,
        None => pattern == event_type,
    }
}

/// Checks a subscription list: 1 to 50 entries, each `*`, `<kind>.*` or `<kind>.<event>` of
/// an order, stock or product event.
pub fn validate_event_selection(events: &[String]) -> Result<(), crate::ReplyError> {
    let invalid = |d: String| Err(crate::ReplyError::new(crate::ErrorCode::InvalidInput, d));
    if events.is_empty() || events.len() > 50 {
        return invalid("events: name 1 to 50 event types".into());
    }
    for e in events {
        let (kind, rest) = e.split_once('.').unwrap_or((e.as_str(), ""));
        let well_formed = e == "*"
            || (WEBHOOK_KINDS.contains(&kind)
                && !rest.is_empty()
                && rest.len() <= 40
                && (rest == "*" || rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        if !well_formed {
            return invalid(format!(
                "events: {e:?} is not `*`, `<kind>.*` or `<kind>.<event>` of {}",
                WEBHOOK_KINDS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Where a webhook endpoint's URL points, once checked: `http` or `https`, a host, no user
/// name or password, at most 2,000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port, explicit or the scheme's.
    pub port: u16,
}

impl WebhookTarget {
    /// Checks `url`.
    pub fn parse(url: &str) -> Result<Self, crate::ReplyError> {
        let refused =
            |d: &str| crate::ReplyError::new(crate::ErrorCode::WebhookUrlNotAllowed, format!("url: {d}"));
        if url.len() > 2000 {
            return Err(refused("at most 2,000 characters"));
        }
        let u = url::Url::parse(url).map_err(|e| refused(&e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(refused("must be http or https"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(refused("must not carry a user name or password"));
        }
        let host = u.host_str().ok_or_else(|| refused("has no host"))?;
        let port = u.port_or_known_default().ok_or_else(|| refused("has no port"))?;
        Ok(Self { host: host.trim_start_matches('[').trim_end_matches(']').to_owned(), port })
    }
}

/// Whether Souk may post to `ip`: a public unicast address, not loopback, private,
/// link-local, shared, documentation or multicast space (no server-side request forgery).
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// The body posted for `event` (one event of a commit, as JSON): the Standard Webhooks shape
/// `{"type", "timestamp", "data"}`, where `data` is the event exactly as on NATS.
pub fn webhook_payload(event: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": event.get("type").cloned().unwrap_or_default(),
        "timestamp": event.get("time").cloned().unwrap_or_default(),
        "data": event,
    })
}

impl NotificationEvent {
    /// The event's `type`.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Attempted { .. } => "notification.attempted",
            Self::Redacted {} => "notification.redacted",
        }
    }
}

/// A notification that could not be delivered, as kept on `souk.dlq.<channel>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetter {
    /// The notification, ready to be sent again.
    pub notification: Notification,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub error: String,
    /// When it was given up on.
    #[schemars(with = "String")]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_name_order_stock_and_product_events_only() {
        let ok =
            |v: &[&str]| validate_event_selection(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert!(ok(&["order.confirmed", "stock.*", "*"]).is_ok());
        assert!(ok(&[]).is_err());
        assert!(ok(&["user.password_reset_requested"]).is_err());
        assert!(ok(&["order."]).is_err());
        assert!(ok(&["order.Confirmed"]).is_err());
        let e = WebhookEndpoint {
            id: EndpointId::generate(),
            url: "https://x.test".into(),
            events: vec!["order.confirmed".into(), "stock.*".into()],
            enabled: true,
            secret: String::new(),
            created_at: OffsetDateTime::now_utc(),
            previous_secret: None,
            previous_until: None,
        };
        assert!(e.wants("order.confirmed") && e.wants("stock.low") && !e.wants("order.placed"));
        let all = WebhookEndpoint { events: vec!["*".into()], ..e.clone() };
        assert!(all.wants("product.created") && !all.wants("user.password_reset_requested"));
        assert!(!WebhookEndpoint { enabled: false, ..e }.wants("order.confirmed"));
    }

    #[test]
    fn only_public_addresses_may_be_called() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(bad.parse().expect("ip")), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(is_public(good.parse().expect("ip")), "{good}");
        }
    }

    #[test]
    fn ids_are_stable_and_differ_by_channel_and_recipient() {
        let e = uuid::Uuid::new_v4();
        let a = NotificationId::of(&e, Channel::Email, "a@x.test");
        assert_eq!(a, NotificationId::of(&e, Channel::Email, "a@x.test"));
        assert_ne!(a, NotificationId::of(&e, Channel::Sms, "a@x.test"));
        assert_ne!(a, NotificationId::of(&e, Channel::Email, "b@x.test"));
        assert_eq!(NotificationId::parse(a.as_str()).ok(), Some(a));
        assert!(NotificationId::parse("not-an-id").is_err());
    }
}
