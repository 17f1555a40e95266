//! The order saga: an order entity whose events are the checkout's progress. It decides
//! which step may be recorded when; the steps themselves (reserving stock, taking payment)
//! are run by the node's saga driver, each idempotent by the order id.
//!
//! `pending → reserved → paid → confirmed`, or `cancelled` with a reason once everything done
//! so far has been compensated.

use crate::entity::{Entity, Request};
use crate::error::{ErrorCode, ReplyError};
use crate::event::Fold;
use crate::ids::{Sku, UserId};
use crate::product::{Currency, Money, ProductId};
use crate::subject::EntityKind;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An order's id, assigned by Souk at checkout.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "ord-0c6f8b1f5d0e4a7c9a7e2d3b4c5d6e7f")]
pub struct OrderId(String);

impl OrderId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(format!("ord-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Validates `s`: `ord-` and 32 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let hex = s.strip_prefix("ord-").unwrap_or("");
        if hex.len() == 32 && crate::ids::is_lower_hex(hex) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ReplyError::new(ErrorCode::UnknownOrder, "no such order"))
        }
    }
}

crate::ids::string_newtype!(OrderId);

/// The metadata key Souk's refunds carry at the payment provider (its value the refund's own
/// idempotency key), so the provider's webhooks tell them from refunds made elsewhere.
pub const PROVIDER_REFUND_MARK: &str = "souk_refund";

/// An `Idempotency-Key` as accepted: 1 to 255 visible ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn invalid(detail: impl Into<String>) -> ReplyError {
    ReplyError::new(ErrorCode::InvalidInput, detail)
}

/// Where an order ships.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct Address {
    /// Recipient, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Street and number, 1–200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub line1: String,
    /// More of the address, up to 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub line2: Option<String>,
    /// City, 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub city: String,
    /// Postal code, 1–20 characters.
    #[schema(min_length = 1, max_length = 20)]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, e.g. `DE`.
    #[schema(example = "DE", pattern = "^[A-Z]{2}$")]
    pub country: String,
}

impl Address {
    /// Checks every field's length and the country code.
    pub fn validate(&self) -> Result<(), ReplyError> {
        let fields = [
            ("name", Some(&self.name), 1, 100),
            ("line1", Some(&self.line1), 1, 200),
            ("line2", self.line2.as_ref(), 0, 200),
            ("city", Some(&self.city), 1, 100),
            ("postal_code", Some(&self.postal_code), 1, 20),
        ];
        for (name, value, min, max) in fields {
            if let Some(v) = value {
                let n = v.trim().chars().count();
                if n < min || n > max || v.chars().any(char::is_control) {
                    return Err(invalid(format!(
                        "shipping_address.{name} must be {min} to {max} characters"
                    )));
                }
            }
        }
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid("shipping_address.country must be an ISO 3166-1 alpha-2 code such as DE"));
        }
        Ok(())
    }
}

/// One line of an order, priced at checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct OrderLine {
    /// The variant.
    #[schema(value_type = String)]
    pub sku: Sku,
    /// Its product.
    pub product: ProductId,
    /// The product's title at checkout.
    pub title: String,
    /// Units.
    pub quantity: u32,
    /// Unit price charged.
    pub unit_price: Money,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed; stock not yet reserved.
    Pending,
    /// Every line's stock is held.
    Reserved,
    /// The payment is captured.
    Paid,
    /// The stock is sold: the order will ship.
    Confirmed,
    /// On its way, with a tracking number.
    Shipped,
    /// Received by the customer.
    Delivered,
    /// Stopped, with everything done so far compensated.
    Cancelled,
    /// Its whole payment was given back after the sale.
    Refunded,
}

/// Why an order was cancelled.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A line's stock could not be reserved.
    OutOfStock,
    /// The payment was declined.
    PaymentDeclined,
    /// The card has insufficient funds.
    InsufficientFunds,
    /// The payment provider failed or did not answer in time.
    PaymentFailed,
    /// The stock held for the order lapsed before it was sold.
    ReservationLapsed,
    /// The customer cancelled it before it shipped.
    CustomerRequest,
    /// Staff cancelled it before it shipped.
    StaffRequest,
}

/// What an order's placement carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Placement {
    /// The customer.
    pub customer: UserId,
    /// The lines.
    pub lines: Vec<OrderLine>,
    /// Where it ships.
    pub shipping_address: Address,
    /// The payment provider's token for the payment method (never a card number).
    pub payment_method: String,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// The order's currency.
    pub currency: Currency,
}

/// A command to one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OrderCommand {
    /// Place the order. The same placement again changes nothing.
    Place {
        /// What is ordered.
        placement: Box<Placement>,
    },
    /// Every line's stock is held (reservation id: the order id).
    RecordReserved,
    /// The payment is authorised under this provider reference.
    RecordAuthorized {
        /// The provider's payment reference.
        payment: String,
    },
    /// The payment is captured.
    RecordCaptured,
    /// The payment was authorised under this reference and captured, in one step.
    RecordPaid {
        /// The provider's payment reference.
        payment: String,
    },
    /// The reservations are committed: the order is confirmed.
    Confirm,
    /// The payment was authorised under this reference and captured, and every line's stock
    /// committed, in one step: the order is paid and confirmed in one commit.
    RecordSold {
        /// The provider's payment reference.
        payment: String,
    },
    /// Everything done so far is compensated: the order ends cancelled.
    Cancel {
        /// Why.
        reason: CancelReason,
        /// Minor units the cancellation gave back (a confirmed order's payment).
        #[serde(default)]
        refunded: i64,
        /// The provider never answered the authorisation, so it may hold the amount until the
        /// saga voids it.
        #[serde(default)]
        payment_unsettled: bool,
    },
    /// The hold an unanswered authorisation may have left is gone: voided under `payment`, or
    /// found never to have been made (`None`).
    RecordVoided {
        /// The provider's reference of the voided authorisation.
        payment: Option<String>,
    },
    /// Ask for a confirmed, unshipped order to be cancelled (the saga refunds the payment and
    /// puts the stock back, then records `Cancel`; `RecordCancelRefused` if the provider
    /// refuses the refund).
    RequestCancel {
        /// `customer_request` or `staff_request`.
        reason: CancelReason,
        /// Staff settle the money outside Souk (a dispute, a refund made at the provider): the
        /// order is cancelled and its stock put back without asking the provider for a refund.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        without_refund: bool,
    },
    /// Mark it shipped.
    Ship {
        /// The carrier's tracking number.
        tracking: String,
    },
    /// Mark it delivered.
    Deliver,
    /// Ask for money back (the saga asks the provider, then records `RecordRefunded` or
    /// `RecordRefundRefused`), or record money given back outside Souk.
    RequestRefund {
        /// Minor units; the whole remainder when absent.
        amount: Option<i64>,
        /// The money was given back outside Souk (in the provider's dashboard, by a
        /// chargeback): recorded as refunded at once, the provider not asked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        outside_souk: bool,
        /// The client's `Idempotency-Key` (or the provider's refund id): the same key again
        /// answers the refund it asked for instead of giving more back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// The provider gave back the pending refund.
    RecordRefunded {
        /// Which refund (its number).
        refund: u32,
    },
    /// The provider refused the pending refund: nothing was given back.
    RecordRefundRefused {
        /// Which refund (its number).
        refund: u32,
    },
    /// The provider refused the refund the cancellation under way needs: the order stays as
    /// it was.
    RecordCancelRefused,
    /// The provider reported a dispute of the order's payment, or how one ended.
    RecordDispute {
        /// The dispute as the provider reports it now.
        dispute: OrderDispute,
    },
    /// Read it.
    Get,
}

/// A request to an order over the bus.
pub type OrderRequest = Request<OrderState>;

/// Something that happened to an order. Serialized as `{"type": "order.…", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    /// The order was placed (status `pending`).
    #[serde(rename = "order.placed")]
    Placed {
        /// What is ordered.
        #[serde(flatten)]
        placement: Box<Placement>,
    },
    /// Every line's stock is held (status `reserved`).
    #[serde(rename = "order.reserved")]
    Reserved {},
    /// The payment was authorised.
    #[serde(rename = "order.payment_authorized")]
    PaymentAuthorized {
        /// The provider's payment reference.
        payment: String,
    },
    /// The payment was captured (status `paid`).
    #[serde(rename = "order.paid")]
    Paid {},
    /// The stock is sold (status `confirmed`).
    #[serde(rename = "order.confirmed")]
    Confirmed {},
    /// The order stopped; every earlier step was compensated (status `cancelled`).
    #[serde(rename = "order.cancelled")]
    Cancelled {
        /// Why.
        reason: CancelReason,
        /// Minor units the cancellation gave back.
        #[serde(default, skip_serializing_if = "is_zero")]
        refunded: i64,
        /// Present and `true` when the provider never answered the authorisation: it may hold
        /// the amount on the customer's card until `order.payment_voided`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        payment_unsettled: bool,
    },
    /// The hold an unanswered authorisation may have left is gone.
    #[serde(rename = "order.payment_voided")]
    PaymentVoided {
        /// The provider's reference of the authorisation voided; absent when it was never made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payment: Option<String>,
    },
    /// Cancelling a confirmed order was asked for; the saga undoes the sale.
    #[serde(rename = "order.cancel_requested")]
    CancelRequested {
        /// Who asked.
        reason: CancelReason,
        /// Present and `true` when staff settle the money outside Souk: nothing is refunded.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        without_refund: bool,
    },
    /// The order left the warehouse (status `shipped`).
    #[serde(rename = "order.shipped")]
    Shipped {
        /// The carrier's tracking number.
        tracking: String,
    },
    /// The customer received it (status `delivered`).
    #[serde(rename = "order.delivered")]
    Delivered {},
    /// A refund was asked for; the saga asks the provider.
    #[serde(rename = "order.refund_requested")]
    RefundRequested {
        /// Its number, from 1.
        refund: u32,
        /// Minor units.
        amount: i64,
        /// The key it was asked with, if any: asking again with it gives nothing more back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// The provider gave the money back (status `refunded` once all of it is).
    #[serde(rename = "order.refunded")]
    Refunded {
        /// Its number.
        refund: u32,
        /// Minor units.
        amount: i64,
        /// Present and `true` when it was given back outside Souk and recorded by staff.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        outside_souk: bool,
    },
    /// The provider refused the refund: nothing was given back, and another may be asked for.
    #[serde(rename = "order.refund_refused")]
    RefundRefused {
        /// Its number.
        refund: u32,
        /// Minor units.
        amount: i64,
    },
    /// The provider refused to give the payment back, so the cancellation asked for did not
    /// happen: the order stays confirmed with its stock sold.
    #[serde(rename = "order.cancel_refused")]
    CancelRefused {
        /// Who asked for the cancellation (the customer is told when it was them).
        reason: CancelReason,
    },
    /// The customer's bank disputed the payment (a chargeback): the money goes back to the
    /// customer unless the shop answers the dispute at the provider and wins.
    #[serde(rename = "order.disputed")]
    Disputed {
        /// The provider's dispute id.
        dispute: String,
        /// Minor units disputed.
        amount: i64,
        /// The bank's reason.
        reason: String,
        /// When the shop's answer is due at the provider.
        #[schemars(with = "Option<String>")]
        #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
        due_by: Option<OffsetDateTime>,
    },
    /// The dispute ended (`won`: the shop keeps the money; `lost`: the customer got it back).
    #[serde(rename = "order.dispute_closed")]
    DisputeClosed {
        /// The provider's dispute id.
        dispute: String,
        /// `won` or `lost`.
        status: DisputeStatus,
    },
}

impl OrderEvent {
    /// The status this event puts the order in, when it decides one on its own (a refund
    /// ends in `refunded` only when it completes the total, which the event alone does not tell).
    pub const fn status(&self) -> Option<OrderStatus> {
        match self {
            Self::Placed { .. } => Some(OrderStatus::Pending),
            Self::Reserved {} => Some(OrderStatus::Reserved),
            Self::Paid {} => Some(OrderStatus::Paid),
            Self::Confirmed {} => Some(OrderStatus::Confirmed),
            Self::Cancelled { .. } => Some(OrderStatus::Cancelled),
            Self::Shipped { .. } => Some(OrderStatus::Shipped),
            Self::Delivered {} => Some(OrderStatus::Delivered),
            Self::PaymentAuthorized { .. }
            | Self::PaymentVoided { .. }
            | Self::CancelRequested { .. }
            | Self::RefundRequested { .. }
            | Self::Refunded { .. }
            | Self::RefundRefused { .. }
            | Self::CancelRefused { .. }
            | Self::Disputed { .. }
            | Self::DisputeClosed { .. } => None,
        }
    }

    /// The wire `type`s of the events that call for the checkout saga's work: a placement,
    /// and a cancellation or refund asked for.
    pub const CALLS_FOR_WORK: [&'static str; 3] =
        ["order.placed", "order.cancel_requested", "order.refund_requested"];

    /// The event's `type` on the wire.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Placed { .. } => Self::CALLS_FOR_WORK[0],
            Self::Reserved {} => "order.reserved",
            Self::PaymentAuthorized { .. } => "order.payment_authorized",
            Self::Paid {} => "order.paid",
            Self::Confirmed {} => "order.confirmed",
            Self::Cancelled { .. } => "order.cancelled",
            Self::PaymentVoided { .. } => "order.payment_voided",
            Self::CancelRequested { .. } => Self::CALLS_FOR_WORK[1],
            Self::Shipped { .. } => "order.shipped",
            Self::Delivered {} => "order.delivered",
            Self::RefundRequested { .. } => Self::CALLS_FOR_WORK[2],
            Self::Refunded { .. } => "order.refunded",
            Self::RefundRefused { .. } => "order.refund_refused",
            Self::CancelRefused { .. } => "order.cancel_refused",
            Self::Disputed { .. } => "order.disputed",
            Self::DisputeClosed { .. } => "order.dispute_closed",
        }
    }
}

/// An order's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// What was placed; `None` before placement.
    pub placement: Option<Placement>,
    /// Where it stands.
    pub status: Option<OrderStatus>,
    /// The provider's payment reference, once authorised.
    pub payment: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<CancelReason>,
    /// A cancellation asked for and not yet done.
    #[serde(default)]
    pub cancel_requested: Option<CancelReason>,
    /// The cancellation asked for gives nothing back: staff settle the money outside Souk.
    #[serde(default)]
    pub cancel_without_refund: bool,
    /// The carrier's tracking number, once shipped.
    #[serde(default)]
    pub tracking: Option<String>,
    /// Minor units given back so far.
    #[serde(default)]
    pub refunded: i64,
    /// The refund asked for and not yet given: its number and amount.
    #[serde(default)]
    pub pending_refund: Option<(u32, i64)>,
    /// Refunds asked for so far.
    #[serde(default)]
    pub refunds: u32,
    /// Refunds the provider refused.
    #[serde(default)]
    pub refunds_refused: u32,
    /// Cancellations that did not happen because the provider refused their refund.
    #[serde(default)]
    pub cancels_refused: u32,
    /// Cancelled without the provider's answer to the authorisation, not yet voided.
    #[serde(default)]
    pub payment_unsettled: bool,
    /// The payment's dispute, if the customer's bank opened one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute: Option<OrderDispute>,
    /// The keys refunds were asked with, so a repeated request gives nothing more back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refund_keys: Vec<RefundKey>,
    /// Each status it reached, with when.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<StatusChange>,
    /// When its last event happened.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<OffsetDateTime>,
    /// Events applied.
    pub version: u64,
}

/// A refund asked for with an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundKey {
    /// The key.
    pub key: String,
    /// The refund's number.
    pub refund: u32,
    /// Minor units it asked for.
    pub amount: i64,
    /// It recorded money given back outside Souk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside_souk: bool,
}

/// Where a dispute (a chargeback the customer's bank opened) stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    /// The bank is taking the money back unless the shop answers and wins.
    Open,
    /// Closed in the shop's favour (or an inquiry closed without a chargeback): the money stays.
    Won,
    /// Closed in the customer's favour: the bank gave the money back to them.
    Lost,
}

/// A dispute of an order's payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderDispute {
    /// The provider's dispute id (`dp_…`).
    pub id: String,
    /// Minor units disputed.
    pub amount: i64,
    /// The bank's reason, e.g. `fraudulent`, `product_not_received`.
    pub reason: String,
    /// Where it stands.
    pub status: DisputeStatus,
    /// When the shop's answer is due at the provider, RFC 3339.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub due_by: Option<OffsetDateTime>,
}

/// A status an order reached, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusChange {
    /// The status.
    pub status: OrderStatus,
    /// When, RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order id.
    pub id: OrderId,
    /// The customer.
    #[schema(value_type = String)]
    pub customer: UserId,
    /// Where it stands.
    pub status: OrderStatus,
    /// The lines.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// Currency.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// Where it ships.
    pub shipping_address: Address,
    /// Whether a payment is authorised.
    pub payment_authorized: bool,
    /// The payment method's token: for the saga only; [`OrderView::public`] removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub payment_method: Option<String>,
    /// The provider's payment reference: for the saga only; [`OrderView::public`] removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub payment: Option<String>,
    /// Why it was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<CancelReason>,
    /// A cancellation under way (the order is still `confirmed` until it is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<CancelReason>,
    /// Present and `true` when the cancellation under way refunds nothing (staff settle the
    /// money outside Souk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_without_refund: bool,
    /// The carrier's tracking number, once shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    /// Minor units given back so far.
    #[serde(default)]
    pub refunded: i64,
    /// A refund under way, minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_pending: Option<i64>,
    /// Refunds asked for so far (the one under way is the last).
    #[serde(default)]
    pub refunds: u32,
    /// Refunds the provider refused (`order.refund_refused`): they gave nothing back.
    #[serde(default)]
    pub refunds_refused: u32,
    /// Cancellations that did not happen because the provider refused their refund
    /// (`order.cancel_refused`): the order stayed as it was.
    #[serde(default)]
    pub cancels_refused: u32,
    /// Cancelled without the provider's answer to the authorisation: a hold it may have left
    /// on the card is still to be voided.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payment_unsettled: bool,
    /// The payment's dispute (a chargeback), if the customer's bank opened one: staff answer it
    /// at the provider, and think twice before shipping an order whose dispute is `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute: Option<OrderDispute>,
    /// When it was placed, RFC 3339.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub placed_at: Option<OffsetDateTime>,
    /// When it last changed, RFC 3339.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<OffsetDateTime>,
    /// Each status it reached, oldest first, with when: placed, confirmed, shipped, ….
    #[serde(default)]
    pub timeline: Vec<StatusChange>,
    /// The order's version: one per event.
    pub version: u64,
}

impl OrderState {
    fn placed(&self) -> Result<(&Placement, OrderStatus), ReplyError> {
        match (&self.placement, self.status) {
            (Some(p), Some(s)) => Ok((p, s)),
            _ => Err(ReplyError::new(ErrorCode::UnknownOrder, "no such order")),
        }
    }
}

fn conflict(status: OrderStatus, what: &str) -> ReplyError {
    ReplyError::new(ErrorCode::OrderConflict, format!("a {status:?} order cannot {what}").to_lowercase())
}

impl Fold for OrderState {
    type Event = OrderEvent;

    fn apply_at(&mut self, event: &OrderEvent, at: OffsetDateTime) {
        let before = self.status;
        self.apply(event);
        if let Some(status) = self.status.filter(|s| before != Some(*s)) {
            self.timeline.push(StatusChange { status, at });
        }
        self.updated_at = Some(at);
    }

    fn apply(&mut self, event: &OrderEvent) {
        self.version += 1;
        match event {
            OrderEvent::Placed { placement } => {
                self.placement = Some(placement.as_ref().clone());
                self.status = Some(OrderStatus::Pending);
            }
            OrderEvent::Reserved {} => self.status = Some(OrderStatus::Reserved),
            OrderEvent::PaymentAuthorized { payment } => self.payment = Some(payment.clone()),
            OrderEvent::Paid {} => self.status = Some(OrderStatus::Paid),
            OrderEvent::Confirmed {} => self.status = Some(OrderStatus::Confirmed),
            OrderEvent::Cancelled { reason, refunded, payment_unsettled } => {
                self.status = Some(OrderStatus::Cancelled);
                self.cancel_reason = Some(*reason);
                self.refunded += refunded;
                self.cancel_requested = None;
                self.cancel_without_refund = false;
                self.payment_unsettled = *payment_unsettled;
            }
            OrderEvent::PaymentVoided { .. } => self.payment_unsettled = false,
            OrderEvent::CancelRequested { reason, without_refund } => {
                self.cancel_requested = Some(*reason);
                self.cancel_without_refund = *without_refund;
            }
            OrderEvent::Shipped { tracking } => {
                self.status = Some(OrderStatus::Shipped);
                self.tracking = Some(tracking.clone());
            }
            OrderEvent::Delivered {} => self.status = Some(OrderStatus::Delivered),
            OrderEvent::RefundRequested { refund, amount, key } => {
                self.refunds = *refund;
                self.pending_refund = Some((*refund, *amount));
                if let Some(key) = key {
                    let (refund, amount) = (*refund, *amount);
                    self.refund_keys.push(RefundKey {
                        key: key.clone(),
                        refund,
                        amount,
                        outside_souk: false,
                    });
                }
            }
            OrderEvent::Refunded { refund, amount, outside_souk } => {
                if *outside_souk && let Some(k) = self.refund_keys.iter_mut().find(|k| k.refund == *refund) {
                    k.outside_souk = true;
                }
                self.pending_refund = None;
                self.refunded += amount;
                let total = self.placement.as_ref().map_or(0, |p| p.total);
                if self.refunded >= total && self.status != Some(OrderStatus::Cancelled) {
                    self.status = Some(OrderStatus::Refunded);
                }
            }
            OrderEvent::RefundRefused { .. } => {
                self.pending_refund = None;
                self.refunds_refused += 1;
            }
            OrderEvent::CancelRefused { .. } => {
                self.cancel_requested = None;
                self.cancel_without_refund = false;
                self.cancels_refused += 1;
            }
            OrderEvent::Disputed { dispute, amount, reason, due_by } => {
                self.dispute = Some(OrderDispute {
                    id: dispute.clone(),
                    amount: *amount,
                    reason: reason.clone(),
                    status: DisputeStatus::Open,
                    due_by: *due_by,
                });
            }
            OrderEvent::DisputeClosed { dispute, status } => {
                if let Some(d) = self.dispute.as_mut().filter(|d| &d.id == dispute) {
                    d.status = *status;
                }
            }
        }
    }
}

impl Entity for OrderState {
    const KIND: EntityKind = EntityKind::Order;
    type Id = OrderId;
    type Command = OrderCommand;
    type View = OrderView;

    fn id_str(id: &OrderId) -> &str {
        id.as_str()
    }

    fn decide(
        &self,
        _id: &OrderId,
        cmd: &OrderCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<OrderEvent>, ReplyError> {
        use OrderStatus as S;
        if let OrderCommand::Place { placement } = cmd {
            return match &self.placement {
                None => {
                    if placement.lines.is_empty() {
                        return Err(invalid("an order needs at least one line"));
                    }
                    placement.shipping_address.validate()?;
                    Ok(vec![OrderEvent::Placed { placement: placement.clone() }])
                }
                Some(p) if p == placement.as_ref() => Ok(Vec::new()),
                Some(_) => {
                    Err(ReplyError::new(ErrorCode::OrderConflict, "this order was placed with other content"))
                }
            };
        }
        let (_, status) = self.placed()?;
        // A step recorded again (a redelivered saga step) changes nothing.
        let events = match cmd {
            OrderCommand::Place { .. } | OrderCommand::Get => Vec::new(),
            OrderCommand::RecordReserved => match status {
                S::Pending => vec![OrderEvent::Reserved {}],
                S::Cancelled => return Err(conflict(status, "be reserved")),
                _ => Vec::new(),
            },
            OrderCommand::RecordAuthorized { payment } => match (status, &self.payment) {
                (S::Reserved, None) => vec![OrderEvent::PaymentAuthorized { payment: payment.clone() }],
                (_, Some(p)) if p == payment => Vec::new(),
                _ => return Err(conflict(status, "record this payment")),
            },
            OrderCommand::RecordCaptured => match (status, &self.payment) {
                (S::Reserved, Some(_)) => vec![OrderEvent::Paid {}],
                (S::Pending | S::Reserved | S::Cancelled, _) => return Err(conflict(status, "be paid")),
                _ => Vec::new(),
            },
            OrderCommand::RecordPaid { payment } => match (status, &self.payment) {
                (S::Reserved, None) => {
                    vec![OrderEvent::PaymentAuthorized { payment: payment.clone() }, OrderEvent::Paid {}]
                }
                (S::Reserved, Some(p)) if p == payment => vec![OrderEvent::Paid {}],
                (S::Pending | S::Reserved | S::Cancelled, _) => return Err(conflict(status, "be paid")),
                _ => Vec::new(),
            },
            OrderCommand::RecordSold { payment } => match (status, &self.payment) {
                (S::Reserved, None) => vec![
                    OrderEvent::PaymentAuthorized { payment: payment.clone() },
                    OrderEvent::Paid {},
                    OrderEvent::Confirmed {},
                ],
                (S::Reserved, Some(p)) if p == payment => vec![OrderEvent::Paid {}, OrderEvent::Confirmed {}],
                (S::Paid, Some(p)) if p == payment => vec![OrderEvent::Confirmed {}],
                (S::Pending | S::Reserved | S::Paid | S::Cancelled, _) => {
                    return Err(conflict(status, "be paid and confirmed"));
                }
                _ => Vec::new(),
            },
            OrderCommand::Confirm => match status {
                S::Paid => vec![OrderEvent::Confirmed {}],
                S::Pending | S::Reserved | S::Cancelled => return Err(conflict(status, "be confirmed")),
                _ => Vec::new(),
            },
            OrderCommand::Cancel { reason, refunded, payment_unsettled } => match status {
                S::Pending | S::Reserved | S::Paid | S::Confirmed
                    if status != S::Confirmed || self.cancel_requested == Some(*reason) =>
                {
                    vec![OrderEvent::Cancelled {
                        reason: *reason,
                        refunded: *refunded,
                        payment_unsettled: *payment_unsettled,
                    }]
                }
                S::Cancelled => Vec::new(),
                _ => return Err(conflict(status, "be cancelled without a request")),
            },
            // Only staff settle money outside Souk.
            OrderCommand::RequestCancel { reason, without_refund: true }
                if *reason != CancelReason::StaffRequest =>
            {
                return Err(ReplyError::new(ErrorCode::Forbidden, "only staff may cancel without a refund"));
            }
            OrderCommand::RequestCancel { reason, without_refund } => match status {
                // The refund under way is not called back: staff asking for none are told so
                // rather than answered as if it were.
                S::Confirmed
                    if self.cancel_requested.is_some() && *without_refund && !self.cancel_without_refund =>
                {
                    return Err(conflict(
                        status,
                        "be cancelled without a refund: a cancellation refunding it is under way",
                    ));
                }
                S::Confirmed if self.cancel_requested.is_some() => Vec::new(),
                // A refund under way must end first; one given already stays given, and staff
                // may still cancel without refunding the rest.
                S::Confirmed if self.pending_refund.is_some() || (self.refunded > 0 && !without_refund) => {
                    return Err(conflict(status, "be cancelled while it is being refunded"));
                }
                S::Confirmed => {
                    vec![OrderEvent::CancelRequested { reason: *reason, without_refund: *without_refund }]
                }
                S::Cancelled => Vec::new(),
                S::Pending | S::Reserved | S::Paid => {
                    return Err(ReplyError::new(
                        ErrorCode::OrderConflict,
                        "the checkout is still running; retry in a moment",
                    ));
                }
                S::Shipped | S::Delivered | S::Refunded => {
                    return Err(conflict(status, "be cancelled: it has shipped; refund it instead"));
                }
            },
            OrderCommand::Ship { tracking } => {
                let t = tracking.trim();
                if t.is_empty() || t.len() > 100 || t.chars().any(char::is_control) {
                    return Err(invalid("tracking must be 1 to 100 characters"));
                }
                match status {
                    S::Confirmed if self.cancel_requested.is_none() => {
                        vec![OrderEvent::Shipped { tracking: t.to_owned() }]
                    }
                    S::Shipped if self.tracking.as_deref() == Some(t) => Vec::new(),
                    _ => return Err(conflict(status, "be shipped")),
                }
            }
            OrderCommand::Deliver => match status {
                S::Shipped => vec![OrderEvent::Delivered {}],
                S::Delivered => Vec::new(),
                _ => return Err(conflict(status, "be delivered")),
            },
            OrderCommand::RequestRefund { amount, outside_souk, key } => {
                if let Some(asked) = key.as_ref().and_then(|k| self.refund_keys.iter().find(|r| &r.key == k))
                {
                    // Asked before: the same request answers that refund; another is refused.
                    if asked.outside_souk != *outside_souk || amount.is_some_and(|a| a != asked.amount) {
                        return Err(ReplyError::new(
                            ErrorCode::IdempotencyKeyReused,
                            "this Idempotency-Key was used with a different refund",
                        ));
                    }
                    return Ok(Vec::new());
                }
                if key.as_ref().is_some_and(|k| !valid_idempotency_key(k)) {
                    return Err(invalid("an Idempotency-Key is 1 to 255 visible ASCII characters"));
                }
                let (placement, _) = self.placed()?;
                let left = placement.total - self.refunded;
                let amount = amount.unwrap_or(left);
                match status {
                    S::Confirmed | S::Shipped | S::Delivered if self.cancel_requested.is_none() => {}
                    // A cancellation that gave back less than was paid (staff cancelled it
                    // `without_refund`, or the provider refused its refund), settled elsewhere
                    // after: recorded, nothing asked of the provider.
                    S::Cancelled if *outside_souk && self.payment.is_some() => {}
                    _ => return Err(conflict(status, "be refunded")),
                }
                if self.pending_refund.is_some() {
                    return Err(ReplyError::new(
                        ErrorCode::OrderConflict,
                        "a refund of this order is under way",
                    ));
                }
                if amount <= 0 || amount > left {
                    return Err(invalid(format!(
                        "a refund must be 1 to {left} minor units (what is left to refund)"
                    )));
                }
                let refund = self.refunds + 1;
                let mut events = vec![OrderEvent::RefundRequested { refund, amount, key: key.clone() }];
                if *outside_souk {
                    // Asked for and given in one commit: the saga finds nothing under way.
                    events.push(OrderEvent::Refunded { refund, amount, outside_souk: true });
                }
                events
            }
            OrderCommand::RecordVoided { payment } => {
                if self.payment_unsettled {
                    vec![OrderEvent::PaymentVoided { payment: payment.clone() }]
                } else {
                    Vec::new()
                }
            }
            OrderCommand::RecordRefunded { refund } => match self.pending_refund {
                Some((n, amount)) if n == *refund => {
                    vec![OrderEvent::Refunded { refund: n, amount, outside_souk: false }]
                }
                _ if *refund <= self.refunds => Vec::new(),
                _ => return Err(ReplyError::new(ErrorCode::OrderConflict, "no such refund under way")),
            },
            OrderCommand::RecordRefundRefused { refund } => match self.pending_refund {
                Some((n, amount)) if n == *refund => vec![OrderEvent::RefundRefused { refund: n, amount }],
                _ if *refund <= self.refunds => Vec::new(),
                _ => return Err(ReplyError::new(ErrorCode::OrderConflict, "no such refund under way")),
            },
            OrderCommand::RecordCancelRefused => match (status, self.cancel_requested) {
                (S::Confirmed, Some(reason)) => vec![OrderEvent::CancelRefused { reason }],
                _ => Vec::new(),
            },
            OrderCommand::RecordDispute { dispute } => {
                // The provider's events may come again, and out of order: each is recorded once,
                // and a dispute closed is not opened again.
                let mut events = Vec::new();
                let known = self.dispute.as_ref().filter(|d| d.id == dispute.id);
                if known.is_none() {
                    events.push(OrderEvent::Disputed {
                        dispute: dispute.id.clone(),
                        amount: dispute.amount,
                        reason: dispute.reason.clone(),
                        due_by: dispute.due_by,
                    });
                }
                if dispute.status != DisputeStatus::Open
                    && known.is_none_or(|d| d.status == DisputeStatus::Open)
                {
                    events.push(OrderEvent::DisputeClosed {
                        dispute: dispute.id.clone(),
                        status: dispute.status,
                    });
                }
                events
            }
        };
        Ok(events)
    }

    fn view(&self, id: &OrderId) -> OrderView {
        let placement = self.placement.clone().unwrap_or_else(|| Placement {
            customer: UserId::parse("nobody").unwrap_or_else(|_| UserId::generate()),
            lines: Vec::new(),
            shipping_address: Address::default(),
            payment_method: String::new(),
            total: 0,
            currency: Currency::NONE,
        });
        OrderView {
            id: id.clone(),
            customer: placement.customer,
            status: self.status.unwrap_or(OrderStatus::Pending),
            lines: placement.lines,
            total: placement.total,
            currency: placement.currency,
            shipping_address: placement.shipping_address,
            payment_authorized: self.payment.is_some(),
            payment_method: Some(placement.payment_method).filter(|m| !m.is_empty()),
            payment: self.payment.clone(),
            cancel_reason: self.cancel_reason,
            cancel_requested: self.cancel_requested,
            cancel_without_refund: self.cancel_without_refund,
            tracking: self.tracking.clone(),
            refunded: self.refunded,
            refund_pending: self.pending_refund.map(|(_, amount)| amount),
            refunds: self.refunds,
            refunds_refused: self.refunds_refused,
            cancels_refused: self.cancels_refused,
            payment_unsettled: self.payment_unsettled,
            dispute: self.dispute.clone(),
            placed_at: self.timeline.first().map(|c| c.at),
            updated_at: self.updated_at,
            timeline: self.timeline.clone(),
            version: self.version,
        }
    }

    fn version(&self) -> u64 {
        self.version
    }
}

impl OrderView {
    /// The view without the payment method and reference, for customers and staff.
    #[must_use]
    pub fn public(mut self) -> Self {
        self.payment_method = None;
        self.payment = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::Currency;

    fn reserved() -> OrderState {
        let eur = Currency::parse("EUR").expect("currency");
        let placement = Placement {
            customer: UserId::generate(),
            lines: vec![OrderLine {
                sku: Sku::parse("A-1").expect("sku"),
                product: ProductId::generate(),
                title: "A".into(),
                quantity: 1,
                unit_price: Money::new(500, eur).expect("money"),
            }],
            shipping_address: Address {
                name: "N".into(),
                line1: "1 Way".into(),
                line2: None,
                city: "C".into(),
                postal_code: "1".into(),
                country: "DE".into(),
            },
            payment_method: "pm_card_visa".into(),
            total: 500,
            currency: eur,
        };
        let mut order = OrderState::default();
        order.apply(&OrderEvent::Placed { placement: Box::new(placement) });
        order.apply(&OrderEvent::Reserved {});
        order
    }

    fn run(order: &mut OrderState, cmd: &OrderCommand) -> Result<Vec<OrderEvent>, ReplyError> {
        let events = order.decide(&OrderId::generate(), cmd, OffsetDateTime::now_utc())?;
        for e in &events {
            order.apply(e);
        }
        Ok(events)
    }

    fn sold(payment: &str) -> OrderCommand {
        OrderCommand::RecordSold { payment: payment.into() }
    }

    #[test]
    fn commit_types_are_read_alone_and_only_placements_and_requests_call_for_work() {
        let event = |body| crate::event::Event {
            event_id: uuid::Uuid::nil(),
            id: "o".into(),
            version: 1,
            time: OffsetDateTime::UNIX_EPOCH,
            correlation_id: None,
            actor: None,
            body,
        };
        let commit = vec![
            event(OrderEvent::Reserved {}),
            event(OrderEvent::CancelRequested {
                reason: CancelReason::CustomerRequest,
                without_refund: false,
            }),
        ];
        let payload = serde_json::to_vec(&commit).expect("encode");
        let types = crate::event::commit_types(&payload).expect("a commit");
        assert_eq!(types, ["order.reserved", "order.cancel_requested"]);
        assert!(!OrderEvent::CALLS_FOR_WORK.contains(&types[0].as_ref()));
        assert!(OrderEvent::CALLS_FOR_WORK.contains(&types[1].as_ref()));
        assert!(crate::event::commit_types(b"not a commit").is_none());
    }

    #[test]
    fn a_sale_records_payment_and_confirmation_in_one_commit_once() {
        let mut order = reserved();
        let events = run(&mut order, &sold("pay_1")).expect("sold");
        let types: Vec<_> = events.iter().map(OrderEvent::type_name).collect();
        assert_eq!(types, ["order.payment_authorized", "order.paid", "order.confirmed"]);
        assert_eq!(order.status, Some(OrderStatus::Confirmed));
        // The step run again after a lost answer changes nothing.
        assert!(run(&mut order, &sold("pay_1")).expect("repeat").is_empty());
    }

    #[test]
    fn a_sale_finishes_a_payment_already_recorded_and_refuses_another_payment() {
        let mut paid = reserved();
        run(&mut paid, &OrderCommand::RecordPaid { payment: "pay_1".into() }).expect("paid");
        let events = run(&mut paid, &sold("pay_1")).expect("sold");
        assert_eq!(events.iter().map(OrderEvent::type_name).collect::<Vec<_>>(), ["order.confirmed"]);

        let mut authorized = reserved();
        run(&mut authorized, &OrderCommand::RecordAuthorized { payment: "pay_1".into() })
            .expect("authorized");
        let other = run(&mut authorized, &sold("pay_2")).expect_err("another payment");
        assert_eq!(other.code, ErrorCode::OrderConflict);
        assert_eq!(authorized.status, Some(OrderStatus::Reserved));
    }

    #[test]
    fn a_refused_refund_gives_nothing_back_and_leaves_the_order_refundable() {
        let mut order = reserved();
        run(&mut order, &sold("pay_1")).expect("sold");
        run(&mut order, &OrderCommand::RequestRefund { amount: Some(200), outside_souk: false, key: None })
            .expect("asked");
        let events = run(&mut order, &OrderCommand::RecordRefundRefused { refund: 1 }).expect("refused");
        assert_eq!(events, [OrderEvent::RefundRefused { refund: 1, amount: 200 }]);
        assert_eq!((order.pending_refund, order.refunded, order.refunds_refused), (None, 0, 1));
        assert_eq!(order.status, Some(OrderStatus::Confirmed));
        // Recorded again after a lost answer, or with the refund's outcome already known: nothing.
        assert!(run(&mut order, &OrderCommand::RecordRefundRefused { refund: 1 }).expect("again").is_empty());
        assert!(run(&mut order, &OrderCommand::RecordRefunded { refund: 1 }).expect("late").is_empty());
        // Staff may ask again: the next refund has the next number.
        let again =
            run(&mut order, &OrderCommand::RequestRefund { amount: None, outside_souk: false, key: None })
                .expect("asked again");
        assert_eq!(again, [OrderEvent::RefundRequested { refund: 2, amount: 500, key: None }]);
    }

    #[test]
    fn a_refused_cancellation_leaves_the_order_confirmed_and_cancellable() {
        let mut order = reserved();
        run(&mut order, &sold("pay_1")).expect("sold");
        let ask = |reason, without_refund| OrderCommand::RequestCancel { reason, without_refund };
        run(&mut order, &ask(CancelReason::CustomerRequest, false)).expect("asked");
        let events = run(&mut order, &OrderCommand::RecordCancelRefused).expect("refused");
        assert_eq!(events, [OrderEvent::CancelRefused { reason: CancelReason::CustomerRequest }]);
        assert_eq!((order.status, order.cancel_requested), (Some(OrderStatus::Confirmed), None));
        assert_eq!(order.cancels_refused, 1);
        assert!(run(&mut order, &OrderCommand::RecordCancelRefused).expect("again").is_empty());
        // Without a request, a cancellation is refused as before; with a new one it goes on.
        let cancel = OrderCommand::Cancel {
            reason: CancelReason::CustomerRequest,
            refunded: 500,
            payment_unsettled: false,
        };
        assert_eq!(run(&mut order, &cancel).expect_err("no request").code, ErrorCode::OrderConflict);
        run(&mut order, &ask(CancelReason::StaffRequest, false)).expect("asked again");
        assert_eq!(order.cancel_requested, Some(CancelReason::StaffRequest));
    }

    #[test]
    fn a_refund_made_outside_souk_is_recorded_at_once_within_what_is_left() {
        let outside =
            |amount| OrderCommand::RequestRefund { amount: Some(amount), outside_souk: true, key: None };
        let mut order = reserved();
        run(&mut order, &sold("pay_1")).expect("sold");
        let events = run(&mut order, &outside(200)).expect("recorded");
        assert_eq!(
            events,
            [
                OrderEvent::RefundRequested { refund: 1, amount: 200, key: None },
                OrderEvent::Refunded { refund: 1, amount: 200, outside_souk: true }
            ]
        );
        assert_eq!((order.refunded, order.pending_refund, order.refunds), (200, None, 1));
        assert_eq!(run(&mut order, &outside(301)).expect_err("beyond").code, ErrorCode::InvalidInput);
        let ask = OrderCommand::RequestRefund { amount: None, outside_souk: false, key: None };
        assert_eq!(
            run(&mut order, &ask).expect("the rest"),
            [OrderEvent::RefundRequested { refund: 2, amount: 300, key: None }]
        );
        assert_eq!(run(&mut order, &outside(100)).expect_err("under way").code, ErrorCode::OrderConflict);
    }

    #[test]
    fn a_refund_asked_again_with_its_key_gives_nothing_more_back() {
        let ask = |amount, outside_souk, key: &str| OrderCommand::RequestRefund {
            amount,
            outside_souk,
            key: Some(key.to_owned()),
        };
        let mut order = reserved();
        run(&mut order, &sold("pay_1")).expect("sold");
        let events = run(&mut order, &ask(Some(200), true, "k1")).expect("recorded");
        assert_eq!(events.len(), 2);
        // A double click, before and after the refund completed: nothing more is given back.
        assert!(run(&mut order, &ask(Some(200), true, "k1")).expect("again").is_empty());
        let events = run(&mut order, &ask(None, false, "k2")).expect("the rest");
        assert_eq!(events, [OrderEvent::RefundRequested { refund: 2, amount: 300, key: Some("k2".into()) }]);
        assert!(run(&mut order, &ask(None, false, "k2")).expect("while under way").is_empty());
        run(&mut order, &OrderCommand::RecordRefunded { refund: 2 }).expect("refunded");
        assert_eq!(order.status, Some(OrderStatus::Refunded));
        assert!(run(&mut order, &ask(Some(300), false, "k2")).expect("once refunded").is_empty());
        // The key with another request is refused, whatever the order's state.
        for other in [ask(Some(100), false, "k2"), ask(None, true, "k2"), ask(Some(200), false, "k1")] {
            assert_eq!(run(&mut order, &other).expect_err("reused").code, ErrorCode::IdempotencyKeyReused);
        }
        assert_eq!((order.refunded, order.refunds), (500, 2));
        let bad = ask(Some(1), false, "two words");
        let mut fresh = reserved();
        run(&mut fresh, &sold("pay_1")).expect("sold");
        assert_eq!(run(&mut fresh, &bad).expect_err("malformed").code, ErrorCode::InvalidInput);
        // The keys survive a snapshot.
        let copy: OrderState =
            serde_json::from_value(serde_json::to_value(&order).expect("json")).expect("back");
        assert_eq!(copy.refund_keys, order.refund_keys);
    }

    #[test]
    fn a_dispute_is_recorded_once_and_its_ending_once_in_whatever_order_they_come() {
        let dispute = |id: &str, status| OrderCommand::RecordDispute {
            dispute: OrderDispute {
                id: id.into(),
                amount: 500,
                reason: "fraudulent".into(),
                status,
                due_by: None,
            },
        };
        let types = |events: Vec<OrderEvent>| events.iter().map(OrderEvent::type_name).collect::<Vec<_>>();
        let mut order = reserved();
        run(&mut order, &sold("pay_1")).expect("sold");
        assert_eq!(
            types(run(&mut order, &dispute("dp_1", DisputeStatus::Open)).expect("opened")),
            ["order.disputed"]
        );
        assert!(run(&mut order, &dispute("dp_1", DisputeStatus::Open)).expect("again").is_empty());
        assert_eq!(order.view(&OrderId::generate()).dispute.map(|d| d.status), Some(DisputeStatus::Open));
        assert_eq!(
            types(run(&mut order, &dispute("dp_1", DisputeStatus::Lost)).expect("lost")),
            ["order.dispute_closed"]
        );
        assert!(run(&mut order, &dispute("dp_1", DisputeStatus::Lost)).expect("again").is_empty());
        assert!(run(&mut order, &dispute("dp_1", DisputeStatus::Open)).expect("late").is_empty());
        assert_eq!(order.dispute.as_ref().map(|d| d.status), Some(DisputeStatus::Lost));
        // Its ending told first: both at once, and the opening told after changes nothing.
        let mut other = reserved();
        run(&mut other, &sold("pay_2")).expect("sold");
        let events = run(&mut other, &dispute("dp_2", DisputeStatus::Won)).expect("won");
        assert_eq!(types(events), ["order.disputed", "order.dispute_closed"]);
        assert!(run(&mut other, &dispute("dp_2", DisputeStatus::Open)).expect("late").is_empty());
        assert_eq!(other.dispute.map(|d| (d.id, d.status)), Some(("dp_2".into(), DisputeStatus::Won)));
        assert_eq!(other.status, Some(OrderStatus::Confirmed));
    }

    #[test]
    fn only_staff_cancel_without_a_refund_and_may_after_part_was_refunded() {
        let ask = |reason, without_refund| OrderCommand::RequestCancel { reason, without_refund };
        let mut order = reserved();
        run(&mut order, &sold("pay_1")).expect("sold");
        run(&mut order, &OrderCommand::RequestRefund { amount: Some(200), outside_souk: false, key: None })
            .expect("refund asked");
        run(&mut order, &OrderCommand::RecordRefunded { refund: 1 }).expect("refunded");
        let refused = run(&mut order, &ask(CancelReason::CustomerRequest, true)).expect_err("customer");
        assert_eq!(refused.code, ErrorCode::Forbidden);
        // While a cancellation refunding it is under way, staff asking for one without are
        // refused; asking for the same again is asking once.
        let mut refunding = reserved();
        run(&mut refunding, &sold("pay_1")).expect("sold");
        run(&mut refunding, &ask(CancelReason::CustomerRequest, false)).expect("customer cancels");
        let busy = run(&mut refunding, &ask(CancelReason::StaffRequest, true)).expect_err("without");
        assert_eq!(busy.code, ErrorCode::OrderConflict);
        assert!(run(&mut refunding, &ask(CancelReason::StaffRequest, false)).expect("same").is_empty());
        // Part was given back: a cancellation refunding the rest is refused, one without is not.
        let refused = run(&mut order, &ask(CancelReason::StaffRequest, false)).expect_err("with a refund");
        assert_eq!(refused.code, ErrorCode::OrderConflict);
        let events = run(&mut order, &ask(CancelReason::StaffRequest, true)).expect("without");
        assert_eq!(
            events,
            [OrderEvent::CancelRequested { reason: CancelReason::StaffRequest, without_refund: true }]
        );
        assert!(order.cancel_without_refund);
        let outside =
            |amount| OrderCommand::RequestRefund { amount: Some(amount), outside_souk: true, key: None };
        assert_eq!(run(&mut order, &outside(100)).expect_err("under way").code, ErrorCode::OrderConflict);
        let cancel = OrderCommand::Cancel {
            reason: CancelReason::StaffRequest,
            refunded: 0,
            payment_unsettled: false,
        };
        run(&mut order, &cancel).expect("cancelled");
        assert_eq!(
            (order.status, order.refunded, order.cancel_without_refund),
            (Some(OrderStatus::Cancelled), 200, false)
        );
        // The rest, given back elsewhere after, is recorded; the provider is not asked for any.
        let ask = OrderCommand::RequestRefund { amount: None, outside_souk: false, key: None };
        assert_eq!(run(&mut order, &ask).expect_err("provider").code, ErrorCode::OrderConflict);
        assert_eq!(run(&mut order, &outside(301)).expect_err("beyond").code, ErrorCode::InvalidInput);
        run(&mut order, &outside(300)).expect("recorded");
        assert_eq!((order.status, order.refunded), (Some(OrderStatus::Cancelled), 500));
        // An order cancelled before any payment has nothing to give back.
        let mut unpaid = reserved();
        run(
            &mut unpaid,
            &OrderCommand::Cancel { reason: CancelReason::OutOfStock, refunded: 0, payment_unsettled: false },
        )
        .expect("cancelled");
        assert_eq!(run(&mut unpaid, &outside(100)).expect_err("unpaid").code, ErrorCode::OrderConflict);
        // A request from a release before the field reads as one with a refund.
        let old: OrderEvent =
            serde_json::from_str(r#"{"type":"order.cancel_requested","data":{"reason":"customer_request"}}"#)
                .expect("decodes");
        assert_eq!(
            old,
            OrderEvent::CancelRequested { reason: CancelReason::CustomerRequest, without_refund: false }
        );
    }

    /// A newer release may add fields to an order's address: an older node still reads the
    /// placement (the API's refusal of unknown fields is not part of the type).
    #[test]
    fn a_placement_with_fields_this_release_does_not_know_still_decodes() {
        let placed = OrderEvent::Placed { placement: Box::new(reserved().placement.expect("placed")) };
        let mut json = serde_json::to_value(&placed).expect("json");
        json["data"]["shipping_address"]["company"] = serde_json::json!("Analytical Engines Ltd");
        json["data"]["gift_wrap"] = serde_json::json!(true);
        let read: OrderEvent = serde_json::from_value(json).expect("an extended placement decodes");
        assert_eq!(read, placed);
    }
}
