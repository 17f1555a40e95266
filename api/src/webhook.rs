//! Payment-provider webhooks: signed the Stripe way (`Stripe-Signature: t=<unix>,v1=<hex>`,
//! HMAC-SHA256 over `<t>.<body>` with the endpoint's secret). Unsigned, wrongly signed, stale
//! (beyond [`TOLERANCE`]) and replayed deliveries are refused. The checkout saga confirms
//! payments synchronously, so most verified events are only logged and acknowledged; a
//! dispute is recorded on its order and counted for its alert, and a refund made in the
//! provider's dashboard is recorded on its order.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::order::{DisputeStatus, OrderDispute, PROVIDER_REFUND_MARK};
use souk_nats::JsonKv;
use time::OffsetDateTime;

/// How far a delivery's timestamp may be from now.
pub const TOLERANCE: i64 = 300;

/// A signature seen (the key is its digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    /// When it was first received.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The webhook endpoint's secret and memory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    secret: Option<String>,
    seen: JsonKv<Seen>,
}

/// What Souk reads of a verified event.
#[derive(Debug, Deserialize)]
pub struct ProviderEvent {
    /// The provider's event id.
    pub id: String,
    /// Its type, e.g. `payment_intent.succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about, read only as far as Souk acts on it: other events' objects may be
    /// anything.
    #[serde(default)]
    data: serde_json::Value,
}

impl ProviderEvent {
    /// A dispute a customer's bank opened (`charge.dispute.created`) or that ended
    /// (`charge.dispute.closed`).
    pub fn dispute(&self) -> Option<Dispute> {
        let closed = match self.kind.as_str() {
            DISPUTE_CREATED => false,
            DISPUTE_CLOSED => true,
            _ => return None,
        };
        let mut dispute: Dispute = serde_json::from_value(self.data["object"].clone()).unwrap_or_default();
        dispute.closed = closed;
        Some(dispute)
    }

    /// The refund a `refund.*` event tells of.
    pub fn refund(&self) -> Option<ProviderRefund> {
        if !REFUND_EVENTS.contains(&self.kind.as_str()) {
            return None;
        }
        serde_json::from_value(self.data["object"].clone()).ok()
    }
}

impl ProviderRefund {
    /// Given back at the provider without Souk asking (in its dashboard), and done; Souk's own
    /// refunds carry its mark.
    pub fn made_elsewhere(&self) -> bool {
        self.status.as_deref() == Some("succeeded")
            && self.amount > 0
            && !self.metadata.contains_key(PROVIDER_REFUND_MARK)
    }

    /// The provider could not give it back after all (the customer's card was closed, say).
    pub fn failed(&self) -> bool {
        self.status.as_deref() == Some("failed")
    }

    /// Souk's key for it, when Souk asked for it.
    pub fn souk_key(&self) -> Option<&str> {
        self.metadata.get(PROVIDER_REFUND_MARK).and_then(serde_json::Value::as_str)
    }
}

/// What Souk reads of a refund (`refund.*`).
#[derive(Debug, Deserialize)]
pub struct ProviderRefund {
    /// The provider's refund id (`re_…`).
    pub id: String,
    /// Minor units given back.
    pub amount: i64,
    /// The refunded payment's reference.
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// E.g. `pending`, `succeeded`, `failed`.
    #[serde(default)]
    status: Option<String>,
    /// Why it failed, e.g. `expired_or_canceled_card`.
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// Stripe's event types that carry a refund: one is sent when it is made, when its status
/// changes, and when it fails.
const REFUND_EVENTS: [&str; 3] = ["refund.created", "refund.updated", "refund.failed"];

/// What Souk reads of a dispute (`charge.dispute.*`); absent fields stay empty.
#[derive(Debug, Default, Deserialize)]
pub struct Dispute {
    /// The provider's dispute id (`dp_…`).
    #[serde(default)]
    pub id: String,
    /// The provider's status, e.g. `needs_response`, `won`, `lost`.
    #[serde(default)]
    status: Option<String>,
    /// Whether the event tells that it ended.
    #[serde(skip)]
    closed: bool,
    /// When the shop's answer is due.
    #[serde(default)]
    evidence_details: Option<EvidenceDetails>,
    /// The disputed payment's reference.
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// Minor units disputed.
    #[serde(default)]
    pub amount: Option<i64>,
    /// The bank's reason, e.g. `fraudulent`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What Souk reads of a dispute's evidence: its deadline.
#[derive(Debug, Default, Deserialize)]
struct EvidenceDetails {
    /// Unix seconds.
    #[serde(default)]
    due_by: Option<i64>,
}

/// Stripe's event type for a dispute a customer's bank opened.
const DISPUTE_CREATED: &str = "charge.dispute.created";
/// Stripe's event type for a dispute that ended.
const DISPUTE_CLOSED: &str = "charge.dispute.closed";

impl Dispute {
    /// Where it stands: open until it closed, then `lost` or, for any other ending (`won`, an
    /// inquiry closed without a chargeback), `won`.
    pub fn status(&self) -> DisputeStatus {
        match (self.closed, self.status.as_deref()) {
            (false, _) => DisputeStatus::Open,
            (true, Some("lost")) => DisputeStatus::Lost,
            (true, _) => DisputeStatus::Won,
        }
    }

    /// The dispute as an order records it, when the event names it.
    pub fn on_order(&self) -> Option<OrderDispute> {
        (!self.id.is_empty()).then(|| OrderDispute {
            id: self.id.clone(),
            amount: self.amount.unwrap_or(0),
            reason: self.reason.clone().unwrap_or_default(),
            status: self.status(),
            due_by: self
                .evidence_details
                .as_ref()
                .and_then(|e| e.due_by)
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
        })
    }
}

fn refused(detail: &str) -> ApiError {
    ApiError::invalid(ErrorCode::Unauthorized, detail)
}

/// `HMAC-SHA256(secret, "<t>.<body>")`, hex.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    souk_nats::accounts::hex(ctx.sign().as_ref())
}

impl Webhooks {
    /// The endpoint; without a secret it refuses everything.
    pub fn new(secret: Option<String>, seen: JsonKv<Seen>) -> Self {
        Self { secret, seen }
    }

    /// Verifies a delivery and remembers its signature; answers the event.
    pub async fn verify(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<ProviderEvent, ApiError> {
        let Some(secret) = &self.secret else { return Err(refused("no webhook secret is configured")) };
        let header = signature.ok_or_else(|| refused("the delivery is not signed (Stripe-Signature)"))?;
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", v)) => candidates.push(v),
                _ => {}
            }
        }
        let t = timestamp.ok_or_else(|| refused("the signature has no timestamp"))?;
        if (now.unix_timestamp() - t).abs() > TOLERANCE {
            return Err(refused("the signature is too old or from the future"));
        }
        let expected = sign(secret, t, body);
        let Some(matched) = candidates.into_iter().find(|c| crate::auth::tokens::same(c, &expected)) else {
            return Err(refused("the signature does not match"));
        };
        if self.seen.create(&crate::auth::tokens::digest(matched), &Seen { at: now }).await?.is_none() {
            return Err(refused("this delivery was received before"));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(ErrorCode::InvalidBody, format!("not an event: {e}")))
    }
}
