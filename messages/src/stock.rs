//! The stock item entity: the inventory of one SKU.
//!
//! `on_hand` counts units in the warehouse; `reserved` counts units promised to open
//! reservations; `available = on_hand - reserved` is what can still be reserved and never goes
//! below zero. Committing a reservation sells it: the units leave both `on_hand` and `reserved`.
//!
//! [`StockState::decide`] turns a command into events (or a rejection) and
//! [`StockState::apply`] folds events into state. Both are pure, so the entity runtime, the
//! projector and the tests share one definition of what stock means.

use crate::error::{ErrorCode, ReplyError};
use crate::ids::{ReservationId, Sku};
use crate::product::ProductId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The largest quantity one command may move.
pub const MAX_QUANTITY: u32 = 1_000_000;
/// The most units one SKU may have on hand.
pub const MAX_ON_HAND: u64 = 1_000_000_000;
/// How long a settled (released, sold or returned) reservation is remembered, in seconds, so
/// that a repeated command for it stays idempotent. Callers retry within minutes; without a
/// limit a selling SKU's state would grow with every sale it ever made.
pub const SETTLED_KEPT_FOR: i64 = 24 * 3600;
/// How often, at most, an item forgets its old settled reservations (seconds of event time).
const FORGET_EVERY: i64 = 3600;

/// A validated quantity: 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    /// The quantity as a number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = ReplyError;
    fn try_from(n: i64) -> Result<Self, ReplyError> {
        if (1..=i64::from(MAX_QUANTITY)).contains(&n) {
            Ok(Self(n as u32))
        } else {
            Err(ReplyError::new(
                ErrorCode::InvalidQuantity,
                format!("quantity must be between 1 and {MAX_QUANTITY}, got {n}"),
            ))
        }
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> u32 {
        q.0
    }
}

/// A command addressed to one stock item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StockCommand {
    /// Add units on hand.
    Restock {
        /// Units received.
        quantity: Quantity,
    },
    /// Hold units for a reservation. Idempotent by reservation id.
    Reserve {
        /// The caller's idempotency key.
        reservation: ReservationId,
        /// Units to hold.
        quantity: Quantity,
        /// When the hold lapses by itself if neither committed nor released.
        #[serde(default, with = "time::serde::rfc3339::option")]
        expires_at: Option<OffsetDateTime>,
    },
    /// Give a held reservation's units back. Idempotent.
    Release {
        /// The reservation to release.
        reservation: ReservationId,
    },
    /// Turn a held reservation into a sale. Idempotent.
    Commit {
        /// The reservation to commit.
        reservation: ReservationId,
    },
    /// Put a sold reservation's units back on hand (an order cancelled after its sale).
    /// Idempotent while the reservation is remembered ([`SETTLED_KEPT_FOR`] after it settled).
    Return {
        /// The committed reservation.
        reservation: ReservationId,
        /// Units sold, as the caller recorded them: what goes back once the item has forgotten
        /// the reservation. Without it, a forgotten reservation is not found.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<Quantity>,
    },
    /// Make the item exist (with nothing on hand) for a product's variant; undoes a
    /// retirement. Idempotent.
    Track {
        /// The product the SKU belongs to.
        product: ProductId,
    },
    /// The variant is gone: refuse new reservations. Idempotent.
    Retire,
    /// Change on hand by `delta` for a recorded reason.
    Adjust {
        /// Units added (positive) or removed (negative); never zero.
        delta: i64,
        /// Why.
        reason: AdjustReason,
    },
    /// Set on hand to a counted number for a recorded reason (recorded as the difference).
    SetOnHand {
        /// Units counted.
        on_hand: u64,
        /// Why.
        reason: AdjustReason,
    },
    /// Publish `stock.low` whenever available drops below `threshold` (0: never).
    SetLowStock {
        /// The threshold.
        threshold: u64,
    },
    /// Release every held reservation whose time is up. Idempotent.
    ExpireDue,
    /// Read the current state.
    Get,
}

/// Why stock was adjusted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    /// Goods arrived.
    Received,
    /// Goods were damaged or lost.
    Damaged,
    /// A stock count found a different number.
    CountCorrection,
}

/// A command on the bus addressed to one stock item.
pub type StockRequest = crate::entity::Request<StockState>;

/// A stock item's state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockView {
    /// The SKU.
    #[schema(value_type = String, example = "TSHIRT-RED-M")]
    pub sku: Sku,
    /// Units in the warehouse, including reserved ones.
    pub on_hand: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// Units that can still be reserved: `on_hand - reserved`.
    pub available: u64,
    /// The entity version: how many events it has.
    pub version: u64,
    /// Below this many available units the item publishes `stock.low` (0: never).
    #[serde(default)]
    pub low_stock: u64,
    /// The variant was removed from the catalog: no new reservations.
    #[serde(default)]
    pub retired: bool,
}

/// Something that happened to a stock item. Serialized as `{"type": "stock.…", "data": {…}}`.
///
/// Every event also carries the item's levels *after* it (`on_hand`, `reserved`), so a
/// consumer can show the current stock from any single event, and a projection can apply
/// events idempotently in any order by keeping the highest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum StockEvent {
    /// Units were added on hand.
    #[serde(rename = "stock.restocked")]
    Restocked {
        /// Units added.
        quantity: u32,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// Units were held for a reservation.
    #[serde(rename = "stock.reserved")]
    Reserved {
        /// The reservation.
        reservation: ReservationId,
        /// Units held.
        quantity: u32,
        /// When the hold lapses unless committed or released.
        #[schemars(with = "Option<String>")]
        #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
        expires_at: Option<OffsetDateTime>,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// A reservation's units were given back.
    #[serde(rename = "stock.released")]
    Released {
        /// The reservation.
        reservation: ReservationId,
        /// Units given back.
        quantity: u32,
        /// Released by its expiry rather than by a caller.
        #[serde(default, skip_serializing_if = "is_false")]
        expired: bool,
        /// When it settled; the item forgets it [`SETTLED_KEPT_FOR`] later. Absent on
        /// events recorded before reservations were forgotten.
        #[schemars(with = "Option<String>")]
        #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
        settled_at: Option<OffsetDateTime>,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// A reservation's units were sold.
    #[serde(rename = "stock.committed")]
    Committed {
        /// The reservation.
        reservation: ReservationId,
        /// Units sold.
        quantity: u32,
        /// When it settled; the item forgets it [`SETTLED_KEPT_FOR`] later. Absent on
        /// events recorded before reservations were forgotten.
        #[schemars(with = "Option<String>")]
        #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
        settled_at: Option<OffsetDateTime>,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// A sold reservation's units came back on hand.
    #[serde(rename = "stock.returned")]
    Returned {
        /// The reservation.
        reservation: ReservationId,
        /// Units back on hand.
        quantity: u32,
        /// When it settled; the item forgets it [`SETTLED_KEPT_FOR`] later. Absent on
        /// events recorded before reservations were forgotten.
        #[schemars(with = "Option<String>")]
        #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
        settled_at: Option<OffsetDateTime>,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// The SKU became (or is again) a variant of a product.
    #[serde(rename = "stock.tracked")]
    Tracked {
        /// The product.
        product: ProductId,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// The variant was removed: no new reservations.
    #[serde(rename = "stock.retired")]
    Retired {
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// On hand was adjusted by staff.
    #[serde(rename = "stock.adjusted")]
    Adjusted {
        /// Units added or removed.
        delta: i64,
        /// Why.
        reason: AdjustReason,
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
    /// The low-stock threshold was set.
    #[serde(rename = "stock.low_stock_set")]
    LowStockSet {
        /// Levels after the event (with the new threshold).
        #[serde(flatten)]
        levels: Levels,
    },
    /// Available fell below the low-stock threshold (published once per crossing).
    #[serde(rename = "stock.low")]
    Low {
        /// Levels after the event.
        #[serde(flatten)]
        levels: Levels,
    },
}

/// A stock item's counters and flags after an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Levels {
    /// Units in the warehouse.
    pub on_hand: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// The low-stock threshold (absent: 0, none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub low_stock: u64,
    /// Whether the item is retired (absent: false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub retired: bool,
    /// When the earliest held reservation lapses (Unix seconds; absent: none), so a reader
    /// of any single event knows when the item next needs waking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<i64>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
const fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[allow(clippy::trivially_copy_pass_by_ref)]
/// For `skip_serializing_if`: leaves a false flag out of an event.
pub(crate) const fn is_false(b: &bool) -> bool {
    !*b
}

impl Levels {
    /// Units that can still be reserved.
    pub const fn available(self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Whether available is below the low-stock threshold.
    pub const fn is_low(self) -> bool {
        self.low_stock > 0 && self.available() < self.low_stock
    }
}

/// The version and levels a stored stock commit leaves its item at, read from its last event
/// without decoding the rest (every stock event carries the levels after it, and most
/// readers want only those); `None` when the payload is not a stock commit.
pub fn commit_levels(payload: &[u8]) -> Option<(u64, Levels)> {
    #[derive(Deserialize)]
    struct After {
        version: u64,
        data: Levels,
    }
    let commit: Vec<After> = serde_json::from_slice(payload).ok()?;
    commit.last().map(|e| (e.version, e.data))
}

impl StockEvent {
    /// The item's levels after this event.
    pub const fn levels(&self) -> Levels {
        match self {
            Self::Restocked { levels, .. }
            | Self::Reserved { levels, .. }
            | Self::Released { levels, .. }
            | Self::Committed { levels, .. }
            | Self::Returned { levels, .. }
            | Self::Tracked { levels, .. }
            | Self::Retired { levels }
            | Self::Adjusted { levels, .. }
            | Self::LowStockSet { levels }
            | Self::Low { levels } => *levels,
        }
    }

    /// The wire `type` of [`StockEvent::Low`], the one stock event staff are told about.
    pub const LOW_TYPE: &'static str = "stock.low";

    /// The event's `type` on the wire.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Restocked { .. } => "stock.restocked",
            Self::Reserved { .. } => "stock.reserved",
            Self::Released { .. } => "stock.released",
            Self::Committed { .. } => "stock.committed",
            Self::Returned { .. } => "stock.returned",
            Self::Tracked { .. } => "stock.tracked",
            Self::Retired { .. } => "stock.retired",
            Self::Adjusted { .. } => "stock.adjusted",
            Self::LowStockSet { .. } => "stock.low_stock_set",
            Self::Low { .. } => Self::LOW_TYPE,
        }
    }
}

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Units are held.
    Held,
    /// Units were given back.
    Released,
    /// Units were sold.
    Committed,
    /// Units were sold, then came back on hand.
    Returned,
}

/// One reservation of a stock item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Units reserved.
    pub quantity: u32,
    /// Where it stands.
    pub status: ReservationStatus,
    /// When it lapses if still held (Unix seconds).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When it settled (Unix seconds; 0 when its event predates the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<i64>,
}

/// A stock item's full state, folded from its events. Snapshots store exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockState {
    /// Units in the warehouse.
    pub on_hand: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// Held reservations, and settled ones for [`SETTLED_KEPT_FOR`], so repeated commands
    /// stay idempotent.
    pub reservations: BTreeMap<ReservationId, Reservation>,
    /// How many events have been applied.
    pub version: u64,
    /// The product whose variant this SKU is, once tracked.
    #[serde(default)]
    pub product: Option<ProductId>,
    /// The low-stock threshold (0: none).
    #[serde(default)]
    pub low_stock: u64,
    /// Retired: no new reservations.
    #[serde(default)]
    pub retired: bool,
    /// When the earliest held reservation lapses (Unix seconds).
    #[serde(default)]
    pub next_expiry: Option<i64>,
    /// When (event time, Unix seconds) the item last looked for settled reservations to forget.
    #[serde(default)]
    pub forget_pass_at: i64,
    /// Whether it has ever forgotten one, so an unknown reservation may be a forgotten one.
    #[serde(default)]
    pub has_forgotten: bool,
}

impl StockState {
    /// Whether the item has ever been stocked.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// The client-facing view.
    pub fn view(&self, sku: &Sku) -> StockView {
        StockView {
            sku: sku.clone(),
            on_hand: self.on_hand,
            reserved: self.reserved,
            available: self.available(),
            version: self.version,
            low_stock: self.low_stock,
            retired: self.retired,
        }
    }

    /// The levels now, with counters replaced.
    const fn levels_with(&self, on_hand: u64, reserved: u64) -> Levels {
        Levels {
            on_hand,
            reserved,
            low_stock: self.low_stock,
            retired: self.retired,
            next_expiry: self.next_expiry,
        }
    }

    /// The earliest expiry among held reservations, leaving out `gone`.
    fn earliest_expiry(&self, gone: &dyn Fn(&ReservationId) -> bool) -> Option<i64> {
        self.reservations
            .iter()
            .filter(|(id, r)| r.status == ReservationStatus::Held && !gone(id))
            .filter_map(|(_, r)| r.expires_at)
            .min()
    }

    /// `next_expiry` once `id` is no longer held: only a scan when it was the earliest.
    fn expiry_without(&self, id: &ReservationId, r: &Reservation) -> Option<i64> {
        if r.expires_at.is_some() && r.expires_at == self.next_expiry {
            self.earliest_expiry(&|x| x == id)
        } else {
            self.next_expiry
        }
    }

    /// Decides what `cmd` does to this state: the events to append (none for a repeated
    /// idempotent command or a read) or a business rejection. A change that takes available
    /// below the low-stock threshold is followed by `stock.low`.
    pub fn decide(&self, cmd: &StockCommand, now: OffsetDateTime) -> Result<Vec<StockEvent>, ReplyError> {
        let mut events = self.decide_core(cmd, now)?;
        let before = self.levels_with(self.on_hand, self.reserved);
        if let Some(after) = events.last().map(StockEvent::levels)
            && !before.is_low()
            && after.is_low()
        {
            events.push(StockEvent::Low { levels: after });
        }
        Ok(events)
    }

    fn decide_core(&self, cmd: &StockCommand, now: OffsetDateTime) -> Result<Vec<StockEvent>, ReplyError> {
        match cmd {
            StockCommand::ExpireDue => {
                let now_at = now;
                let now = now.unix_timestamp();
                let due: Vec<(&ReservationId, &Reservation)> = self
                    .reservations
                    .iter()
                    .filter(|(_, r)| {
                        r.status == ReservationStatus::Held && r.expires_at.is_some_and(|e| e <= now)
                    })
                    .collect();
                let is_due = |id: &ReservationId| due.iter().any(|(d, _)| *d == id);
                let next_expiry = self.earliest_expiry(&is_due);
                let mut reserved = self.reserved;
                let mut events = Vec::with_capacity(due.len());
                for (id, r) in &due {
                    reserved = reserved.saturating_sub(u64::from(r.quantity));
                    let mut levels = self.levels_with(self.on_hand, reserved);
                    // Each event says what the item looks like after it: the expiries
                    // still pending include the due ones not yet released.
                    let rest: Vec<i64> = due
                        .iter()
                        .skip_while(|(d, _)| d != id)
                        .skip(1)
                        .filter_map(|(_, r)| r.expires_at)
                        .collect();
                    levels.next_expiry = rest.into_iter().chain(next_expiry).min();
                    events.push(StockEvent::Released {
                        reservation: (*id).clone(),
                        quantity: r.quantity,
                        expired: true,
                        settled_at: Some(now_at),
                        levels,
                    });
                }
                Ok(events)
            }
            StockCommand::Track { product } => {
                if self.exists() && !self.retired && self.product.as_ref() == Some(product) {
                    return Ok(Vec::new());
                }
                let levels = Levels { retired: false, ..self.levels_with(self.on_hand, self.reserved) };
                Ok(vec![StockEvent::Tracked { product: product.clone(), levels }])
            }
            StockCommand::Retire => {
                self.require_exists()?;
                if self.retired {
                    return Ok(Vec::new());
                }
                let levels = Levels { retired: true, ..self.levels_with(self.on_hand, self.reserved) };
                Ok(vec![StockEvent::Retired { levels }])
            }
            StockCommand::SetOnHand { on_hand, reason } => {
                self.require_exists()?;
                if *on_hand == self.on_hand {
                    return Ok(Vec::new());
                }
                let delta = i128::from(*on_hand) - i128::from(self.on_hand);
                let delta = i64::try_from(delta).map_err(|_| {
                    ReplyError::new(
                        ErrorCode::InvalidQuantity,
                        format!("on hand may not exceed {MAX_ON_HAND}"),
                    )
                })?;
                self.decide_core(&StockCommand::Adjust { delta, reason: *reason }, now)
            }
            StockCommand::Adjust { delta, reason } => {
                self.require_exists()?;
                if *delta == 0 || delta.unsigned_abs() > u64::from(MAX_QUANTITY) {
                    return Err(ReplyError::new(
                        ErrorCode::InvalidQuantity,
                        format!("an adjustment moves 1 to {MAX_QUANTITY} units, up or down"),
                    ));
                }
                let on_hand = i128::from(self.on_hand) + i128::from(*delta);
                if on_hand < i128::from(self.reserved) || on_hand > i128::from(MAX_ON_HAND) {
                    return Err(ReplyError::new(
                        ErrorCode::InvalidQuantity,
                        format!(
                            "on hand would be {on_hand}: it may not go below the {} units reserved or above {MAX_ON_HAND}",
                            self.reserved
                        ),
                    ));
                }
                let levels = self.levels_with(on_hand as u64, self.reserved);
                Ok(vec![StockEvent::Adjusted { delta: *delta, reason: *reason, levels }])
            }
            StockCommand::SetLowStock { threshold } => {
                self.require_exists()?;
                if *threshold > MAX_ON_HAND {
                    return Err(ReplyError::new(ErrorCode::InvalidQuantity, "threshold is too large"));
                }
                if *threshold == self.low_stock {
                    return Ok(Vec::new());
                }
                let levels =
                    Levels { low_stock: *threshold, ..self.levels_with(self.on_hand, self.reserved) };
                Ok(vec![StockEvent::LowStockSet { levels }])
            }
            StockCommand::Get => self.require_exists().map(|()| Vec::new()),
            StockCommand::Restock { quantity } => {
                let q = u64::from(quantity.get());
                if self.on_hand + q > MAX_ON_HAND {
                    return Err(ReplyError::new(
                        ErrorCode::InvalidQuantity,
                        format!("on hand may not exceed {MAX_ON_HAND}"),
                    ));
                }
                let levels = self.levels_with(self.on_hand + q, self.reserved);
                Ok(vec![StockEvent::Restocked { quantity: quantity.get(), levels }])
            }
            StockCommand::Reserve { reservation, quantity, expires_at } => {
                self.require_exists()?;
                if self.retired && !self.reservations.contains_key(reservation) {
                    return Err(ReplyError::new(
                        ErrorCode::SkuRetired,
                        "this SKU is no longer sold: its variant was removed",
                    ));
                }
                if let Some(existing) = self.reservations.get(reservation) {
                    return match existing.status {
                        ReservationStatus::Held | ReservationStatus::Committed
                            if existing.quantity == quantity.get() =>
                        {
                            Ok(Vec::new())
                        }
                        _ => Err(ReplyError::new(
                            ErrorCode::ReservationConflict,
                            format!(
                                "reservation {reservation} already exists for {} units ({:?})",
                                existing.quantity, existing.status
                            ),
                        )),
                    };
                }
                if u64::from(quantity.get()) > self.available() {
                    return Err(ReplyError::new(
                        ErrorCode::InsufficientStock,
                        format!("{} requested, {} available", quantity.get(), self.available()),
                    ));
                }
                let mut levels = self.levels_with(self.on_hand, self.reserved + u64::from(quantity.get()));
                let expiry = expires_at.map(OffsetDateTime::unix_timestamp);
                levels.next_expiry = match (self.next_expiry, expiry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Ok(vec![StockEvent::Reserved {
                    reservation: reservation.clone(),
                    quantity: quantity.get(),
                    expires_at: *expires_at,
                    levels,
                }])
            }
            StockCommand::Release { reservation } => {
                let r = self.require_reservation(reservation)?;
                match r.status {
                    ReservationStatus::Held => Ok(vec![StockEvent::Released {
                        reservation: reservation.clone(),
                        quantity: r.quantity,
                        expired: false,
                        settled_at: Some(now),
                        levels: Levels {
                            next_expiry: self.expiry_without(reservation, &r),
                            ..self.levels_with(
                                self.on_hand,
                                self.reserved.saturating_sub(u64::from(r.quantity)),
                            )
                        },
                    }]),
                    ReservationStatus::Released => Ok(Vec::new()),
                    ReservationStatus::Committed | ReservationStatus::Returned => Err(ReplyError::new(
                        ErrorCode::ReservationConflict,
                        format!("reservation {reservation} is already committed"),
                    )),
                }
            }
            StockCommand::Commit { reservation } => {
                let r = self.require_reservation(reservation)?;
                match r.status {
                    ReservationStatus::Held => Ok(vec![StockEvent::Committed {
                        reservation: reservation.clone(),
                        quantity: r.quantity,
                        settled_at: Some(now),
                        levels: Levels {
                            next_expiry: self.expiry_without(reservation, &r),
                            ..self.levels_with(
                                self.on_hand.saturating_sub(u64::from(r.quantity)),
                                self.reserved.saturating_sub(u64::from(r.quantity)),
                            )
                        },
                    }]),
                    ReservationStatus::Committed => Ok(Vec::new()),
                    ReservationStatus::Released | ReservationStatus::Returned => Err(ReplyError::new(
                        ErrorCode::ReservationConflict,
                        format!("reservation {reservation} was released"),
                    )),
                }
            }
            StockCommand::Return { reservation, quantity } => {
                let r = match (self.require_reservation(reservation), quantity) {
                    (Ok(r), _) => r,
                    // Forgotten a day after its sale: the caller, who recorded the sale, says
                    // how many units it was.
                    (Err(e), Some(q)) if e.code == ErrorCode::ReservationNotFound && self.has_forgotten => {
                        Reservation {
                            quantity: q.get(),
                            status: ReservationStatus::Committed,
                            expires_at: None,
                            settled_at: None,
                        }
                    }
                    (Err(e), _) => return Err(e),
                };
                match r.status {
                    ReservationStatus::Committed => Ok(vec![StockEvent::Returned {
                        reservation: reservation.clone(),
                        quantity: r.quantity,
                        settled_at: Some(now),
                        levels: self.levels_with(self.on_hand + u64::from(r.quantity), self.reserved),
                    }]),
                    ReservationStatus::Returned => Ok(Vec::new()),
                    ReservationStatus::Held | ReservationStatus::Released => Err(ReplyError::new(
                        ErrorCode::ReservationConflict,
                        format!("reservation {reservation} was never sold"),
                    )),
                }
            }
        }
    }

    /// Folds one event into the state. Levels are taken from the event as decided, so a
    /// fold never does arithmetic that a corrupt history could make panic.
    pub fn apply(&mut self, event: &StockEvent) {
        self.version += 1;
        let levels = event.levels();
        self.on_hand = levels.on_hand;
        self.reserved = levels.reserved;
        self.low_stock = levels.low_stock;
        self.retired = levels.retired;
        self.next_expiry = levels.next_expiry;
        match event {
            StockEvent::Restocked { .. }
            | StockEvent::Retired { .. }
            | StockEvent::Adjusted { .. }
            | StockEvent::LowStockSet { .. }
            | StockEvent::Low { .. } => {}
            StockEvent::Tracked { product, .. } => self.product = Some(product.clone()),
            StockEvent::Reserved { reservation, quantity, expires_at, .. } => {
                self.reservations.insert(
                    reservation.clone(),
                    Reservation {
                        quantity: *quantity,
                        status: ReservationStatus::Held,
                        expires_at: expires_at.map(OffsetDateTime::unix_timestamp),
                        settled_at: None,
                    },
                );
            }
            StockEvent::Released { reservation, quantity, settled_at, .. } => {
                self.settle(reservation, *quantity, ReservationStatus::Released, *settled_at);
            }
            StockEvent::Committed { reservation, quantity, settled_at, .. } => {
                self.settle(reservation, *quantity, ReservationStatus::Committed, *settled_at);
            }
            StockEvent::Returned { reservation, quantity, settled_at, .. } => {
                self.settle(reservation, *quantity, ReservationStatus::Returned, *settled_at);
            }
        }
    }

    /// Records that a reservation settled (remembering it afresh if it had been forgotten, as a
    /// late return does), then forgets settled reservations older than [`SETTLED_KEPT_FOR`]
    /// at most once per [`FORGET_EVERY`]. Times come from the events, so every replay of the
    /// history forgets exactly the same reservations.
    fn settle(
        &mut self,
        id: &ReservationId,
        quantity: u32,
        status: ReservationStatus,
        at: Option<OffsetDateTime>,
    ) {
        let at = at.map(OffsetDateTime::unix_timestamp);
        let r = self.reservations.entry(id.clone()).or_insert(Reservation {
            quantity,
            status,
            expires_at: None,
            settled_at: None,
        });
        r.status = status;
        r.settled_at = at;
        let Some(now) = at else { return };
        if now - self.forget_pass_at < FORGET_EVERY {
            return;
        }
        self.forget_pass_at = now;
        let horizon = now - SETTLED_KEPT_FOR;
        let before = self.reservations.len();
        self.reservations
            .retain(|_, r| r.status == ReservationStatus::Held || r.settled_at.unwrap_or(0) > horizon);
        self.has_forgotten |= self.reservations.len() < before;
    }

    fn require_exists(&self) -> Result<(), ReplyError> {
        if self.exists() {
            Ok(())
        } else {
            Err(ReplyError::new(ErrorCode::UnknownSku, "this SKU has never been stocked"))
        }
    }

    fn require_reservation(&self, id: &ReservationId) -> Result<Reservation, ReplyError> {
        self.require_exists()?;
        self.reservations
            .get(id)
            .copied()
            .ok_or_else(|| ReplyError::new(ErrorCode::ReservationNotFound, format!("no reservation {id}")))
    }
}

impl crate::event::Fold for StockState {
    type Event = StockEvent;
    fn apply(&mut self, event: &StockEvent) {
        StockState::apply(self, event);
    }
}

impl crate::entity::Entity for StockState {
    const KIND: crate::subject::EntityKind = crate::subject::EntityKind::Stock;
    type Id = Sku;
    type Command = StockCommand;
    type View = StockView;

    fn id_str(id: &Sku) -> &str {
        id.as_str()
    }

    fn decide(
        &self,
        _id: &Sku,
        cmd: &StockCommand,
        now: time::OffsetDateTime,
    ) -> Result<Vec<StockEvent>, ReplyError> {
        StockState::decide(self, cmd, now)
    }

    fn view(&self, id: &Sku) -> StockView {
        StockState::view(self, id)
    }

    fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qty(n: i64) -> Quantity {
        Quantity::try_from(n).expect("valid quantity")
    }
    fn rid(s: &str) -> ReservationId {
        ReservationId::parse(s).expect("valid id")
    }
    #[allow(clippy::needless_pass_by_value)] // call sites read better with owned commands
    fn run(state: &mut StockState, cmd: StockCommand) -> Result<Vec<StockEvent>, ReplyError> {
        let events = state.decide(&cmd, OffsetDateTime::now_utc())?;
        for e in &events {
            state.apply(e);
        }
        Ok(events)
    }

    #[test]
    fn a_commits_levels_are_its_last_events_read_without_the_rest() {
        let mut s = StockState::default();
        let mut events = run(&mut s, StockCommand::Restock { quantity: qty(5) }).expect("restock");
        let hold = StockCommand::Reserve { reservation: rid("a"), quantity: qty(2), expires_at: None };
        events.extend(run(&mut s, hold).expect("reserve"));
        events.extend(run(&mut s, StockCommand::SetLowStock { threshold: 4 }).expect("threshold"));
        let commit: crate::event::Commit<StockEvent> = events
            .into_iter()
            .zip(1..)
            .map(|(body, version)| crate::event::Event {
                event_id: uuid::Uuid::new_v4(),
                id: "SKU-1".into(),
                version,
                time: OffsetDateTime::now_utc(),
                correlation_id: None,
                actor: None,
                body,
            })
            .collect();
        let payload = serde_json::to_vec(&commit).expect("json");
        let last = commit.last().expect("events");
        assert!(commit.len() >= 3, "{commit:?}");
        assert_eq!(commit_levels(&payload), Some((last.version, last.body.levels())));
        assert_eq!(
            commit_levels(&payload).map(|(_, l)| (l.on_hand, l.reserved, l.low_stock)),
            Some((5, 2, 4))
        );
        assert_eq!(commit_levels(b"{}"), None);
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::try_from(0).is_err());
        assert!(Quantity::try_from(-1).is_err());
        assert!(Quantity::try_from(i64::from(MAX_QUANTITY) + 1).is_err());
        assert_eq!(qty(1).get(), 1);
    }

    #[test]
    fn unknown_sku_rejects_everything_but_restock() {
        let s = StockState::default();
        let code = |c| s.decide(&c, OffsetDateTime::now_utc()).expect_err("rejected").code;
        assert_eq!(code(StockCommand::Get), ErrorCode::UnknownSku);
        assert_eq!(
            code(StockCommand::Reserve { reservation: rid("r"), quantity: qty(1), expires_at: None }),
            ErrorCode::UnknownSku
        );
        assert!(s.decide(&StockCommand::Restock { quantity: qty(1) }, OffsetDateTime::now_utc()).is_ok());
    }

    #[test]
    fn reserve_never_oversells_and_is_idempotent() {
        let mut s = StockState::default();
        run(&mut s, StockCommand::Restock { quantity: qty(2) }).expect("restock");
        let r1 = StockCommand::Reserve { reservation: rid("a"), quantity: qty(2), expires_at: None };
        assert_eq!(run(&mut s, r1.clone()).expect("reserve").len(), 1);
        assert_eq!(run(&mut s, r1).expect("repeat").len(), 0, "second identical reserve is a no-op");
        assert_eq!(s.available(), 0);
        let err =
            run(&mut s, StockCommand::Reserve { reservation: rid("b"), quantity: qty(1), expires_at: None })
                .expect_err("no stock left");
        assert_eq!(err.code, ErrorCode::InsufficientStock);
    }

    #[test]
    fn same_id_with_other_quantity_conflicts() {
        let mut s = StockState::default();
        run(&mut s, StockCommand::Restock { quantity: qty(5) }).expect("restock");
        run(&mut s, StockCommand::Reserve { reservation: rid("a"), quantity: qty(1), expires_at: None })
            .expect("reserve");
        let err =
            run(&mut s, StockCommand::Reserve { reservation: rid("a"), quantity: qty(2), expires_at: None })
                .expect_err("conflict");
        assert_eq!(err.code, ErrorCode::ReservationConflict);
    }

    #[test]
    fn release_and_commit_lifecycle() {
        let mut s = StockState::default();
        run(&mut s, StockCommand::Restock { quantity: qty(10) }).expect("restock");
        run(&mut s, StockCommand::Reserve { reservation: rid("a"), quantity: qty(3), expires_at: None })
            .expect("a");
        run(&mut s, StockCommand::Reserve { reservation: rid("b"), quantity: qty(4), expires_at: None })
            .expect("b");
        run(&mut s, StockCommand::Release { reservation: rid("a") }).expect("release");
        assert_eq!(run(&mut s, StockCommand::Release { reservation: rid("a") }).expect("again").len(), 0);
        run(&mut s, StockCommand::Commit { reservation: rid("b") }).expect("commit");
        assert_eq!((s.on_hand, s.reserved, s.available()), (6, 0, 6));
        let code = |s: &mut StockState, c| run(s, c).expect_err("rejected").code;
        assert_eq!(
            code(&mut s, StockCommand::Commit { reservation: rid("a") }),
            ErrorCode::ReservationConflict
        );
        assert_eq!(
            code(&mut s, StockCommand::Release { reservation: rid("b") }),
            ErrorCode::ReservationConflict
        );
        assert_eq!(
            code(&mut s, StockCommand::Commit { reservation: rid("zz") }),
            ErrorCode::ReservationNotFound
        );
        assert_eq!(s.version, 5);
    }

    #[test]
    fn held_reservations_lapse_once_when_their_time_is_up() {
        let t0 = OffsetDateTime::now_utc();
        let at = |secs: i64| t0 + time::Duration::seconds(secs);
        let mut s = StockState::default();
        let go = |s: &mut StockState, c: StockCommand, now: OffsetDateTime| {
            let events = s.decide(&c, now).expect("decide");
            for e in &events {
                s.apply(e);
            }
            events.len()
        };
        go(&mut s, StockCommand::Restock { quantity: qty(10) }, t0);
        let reserve = |id: &str, n: i64, secs: i64| StockCommand::Reserve {
            reservation: rid(id),
            quantity: qty(n),
            expires_at: Some(at(secs)),
        };
        go(&mut s, reserve("a", 2, 10), t0);
        go(&mut s, reserve("b", 3, 20), t0);
        assert_eq!(s.next_expiry, Some(at(10).unix_timestamp()));
        assert_eq!(go(&mut s, StockCommand::ExpireDue, at(5)), 0, "nothing due yet");
        assert_eq!(go(&mut s, StockCommand::ExpireDue, at(15)), 1, "a lapses");
        assert_eq!(go(&mut s, StockCommand::ExpireDue, at(15)), 0, "never twice");
        assert_eq!((s.reserved, s.next_expiry), (3, Some(at(20).unix_timestamp())));
        go(&mut s, StockCommand::Commit { reservation: rid("b") }, at(16));
        assert_eq!(s.next_expiry, None, "nothing held any more");
        assert_eq!(go(&mut s, StockCommand::ExpireDue, at(30)), 0, "a committed hold never lapses");
        assert_eq!((s.on_hand, s.reserved), (7, 0));
    }

    #[test]
    fn settled_reservations_are_forgotten_a_day_later_and_a_late_return_still_puts_units_back() {
        let t0 = OffsetDateTime::now_utc();
        let at = |secs: i64| t0 + time::Duration::seconds(secs);
        let mut s = StockState::default();
        let mut history = Vec::new();
        let mut go = |s: &mut StockState, c: StockCommand, now: OffsetDateTime| {
            let events = s.decide(&c, now)?;
            for e in &events {
                s.apply(e);
            }
            history.extend(events.iter().cloned());
            Ok::<_, ReplyError>(events.len())
        };
        let reserve =
            |id: &str| StockCommand::Reserve { reservation: rid(id), quantity: qty(2), expires_at: None };
        go(&mut s, StockCommand::Restock { quantity: qty(100) }, t0).expect("restock");
        for id in ["sold", "let-go", "held"] {
            go(&mut s, reserve(id), t0).expect("reserve");
        }
        go(&mut s, StockCommand::Commit { reservation: rid("sold") }, t0).expect("commit");
        go(&mut s, StockCommand::Release { reservation: rid("let-go") }, t0).expect("release");
        assert_eq!(s.reservations.len(), 3);

        // Within the day everything is remembered: repeats stay idempotent.
        let day = SETTLED_KEPT_FOR;
        go(&mut s, reserve("x"), at(day - 10)).expect("reserve");
        go(&mut s, StockCommand::Commit { reservation: rid("x") }, at(day - 10)).expect("commit");
        assert_eq!(go(&mut s, StockCommand::Commit { reservation: rid("sold") }, at(day - 10)), Ok(0));
        assert_eq!(s.reservations.len(), 4);

        // The next look, an hour after the last, forgets the two settled over a day before;
        // never a held one.
        let late = day - 10 + FORGET_EVERY;
        go(&mut s, reserve("y"), at(late)).expect("reserve");
        go(&mut s, StockCommand::Release { reservation: rid("y") }, at(late)).expect("release");
        let mut kept: Vec<&str> = s.reservations.keys().map(ReservationId::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["held", "x", "y"]);
        assert!(s.has_forgotten);

        // A return of the forgotten sale puts back what the caller says, once.
        let (on_hand, reserved) = (s.on_hand, s.reserved);
        let give_back = StockCommand::Return { reservation: rid("sold"), quantity: Some(qty(2)) };
        assert_eq!(go(&mut s, give_back.clone(), at(late + 10)), Ok(1));
        assert_eq!(go(&mut s, give_back, at(late + 20)), Ok(0), "the return is remembered");
        assert_eq!((s.on_hand, s.reserved), (on_hand + 2, reserved));
        // Without a quantity a forgotten reservation is simply not found.
        let code =
            go(&mut s, StockCommand::Return { reservation: rid("let-go"), quantity: None }, at(late + 30))
                .expect_err("unknown")
                .code;
        assert_eq!(code, ErrorCode::ReservationNotFound);

        // Replaying the history forgets exactly the same reservations.
        let mut replayed = StockState::default();
        for e in &history {
            replayed.apply(e);
        }
        assert_eq!(replayed, s);
    }

    #[test]
    fn a_return_with_a_quantity_is_still_refused_for_a_reservation_never_made() {
        let mut s = StockState::default();
        run(&mut s, StockCommand::Restock { quantity: qty(5) }).expect("restock");
        let err = run(&mut s, StockCommand::Return { reservation: rid("never"), quantity: Some(qty(5)) })
            .expect_err("nothing was ever forgotten");
        assert_eq!(err.code, ErrorCode::ReservationNotFound);
        assert_eq!(s.on_hand, 5);
    }

    #[test]
    fn events_have_their_documented_wire_shape() {
        let levels = Levels { on_hand: 5, reserved: 2, ..Levels::default() };
        let e = StockEvent::Reserved { reservation: rid("r1"), quantity: 2, expires_at: None, levels };
        let json = serde_json::to_value(&e).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"type": "stock.reserved", "data": {"reservation": "r1", "quantity": 2, "on_hand": 5, "reserved": 2}})
        );
        assert_eq!(serde_json::from_value::<StockEvent>(json).expect("deserialize"), e);
        assert_eq!(e.type_name(), "stock.reserved");
    }
}
