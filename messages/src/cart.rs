//! The cart entity: one per customer, and one per guest (addressed by a digest of the guest's
//! cart token, so the token itself never appears in a subject or an event). Lines remember the
//! price they were added at; what a line costs now is the catalog's business, shown by the edge.

use crate::entity::{Entity, Request};
use crate::error::{ErrorCode, ReplyError};
use crate::event::Fold;
use crate::ids::{Sku, UserId};
use crate::product::{Money, ProductId};
use crate::subject::EntityKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The most distinct lines a cart holds.
pub const MAX_LINES: usize = 100;

/// A cart's id: `u-<user id>` for a customer, `g-<32 hex>` for a guest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String)]
pub struct CartId(String);

impl CartId {
    /// The cart of a signed-in customer.
    pub fn customer(user: &UserId) -> Self {
        Self(format!("u-{user}"))
    }

    /// The cart of a guest, from the hex digest of its cart token.
    pub fn guest(token_digest_hex: &str) -> Self {
        Self(format!("g-{}", &token_digest_hex[..token_digest_hex.len().min(32)]))
    }

    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let rest = s.strip_prefix("u-").or_else(|| s.strip_prefix("g-")).unwrap_or("");
        if UserId::parse(rest).is_ok() {
            Ok(Self(s.to_owned()))
        } else {
            Err(ReplyError::new(ErrorCode::InvalidInput, "not a cart id"))
        }
    }
}

crate::ids::string_newtype!(CartId);

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct CartLine {
    /// The variant.
    pub sku: Sku,
    /// Its product.
    pub product: ProductId,
    /// Units, 1 to the shop's per-line limit.
    pub quantity: u32,
    /// The unit price when the line was added.
    pub added_price: Money,
}

/// What every cart command carries from the shop's configuration, so the rules stay pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartRules {
    /// The most units of one SKU in a cart.
    pub max_quantity: u32,
    /// Seconds without a change after which the cart's lines lapse.
    pub idle_secs: u64,
}

/// A command to one cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CartOp {
    /// Add units of a variant (to its line, if there is one).
    Add {
        /// The line to add; `quantity` is added to what the cart has.
        line: CartLine,
    },
    /// Set a line's quantity.
    Set {
        /// The line's SKU.
        sku: Sku,
        /// The new quantity, at least 1.
        quantity: u32,
    },
    /// Remove a line.
    Remove {
        /// The line's SKU.
        sku: Sku,
    },
    /// Remove every line.
    Clear,
    /// Add a guest cart's lines (on login); quantities add up to the limit.
    Merge {
        /// The guest's lines.
        lines: Vec<CartLine>,
    },
    /// Read it.
    Get,
}

/// A cart command with the shop's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartCommand {
    /// What to do.
    #[serde(flatten)]
    pub op: CartOp,
    /// The rules it is decided under.
    pub rules: CartRules,
}

/// A request to a cart over the bus.
pub type CartRequest = Request<CartState>;

/// Something that happened to a cart. Serialized as `{"type": "cart.…", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum CartEvent {
    /// A line was added or its quantity raised.
    #[serde(rename = "cart.item_added")]
    ItemAdded {
        /// The line after the change.
        line: CartLine,
        /// When.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A line's quantity was set.
    #[serde(rename = "cart.quantity_set")]
    QuantitySet {
        /// The SKU.
        sku: Sku,
        /// The quantity now.
        quantity: u32,
        /// When.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A line was removed.
    #[serde(rename = "cart.item_removed")]
    ItemRemoved {
        /// The SKU.
        sku: Sku,
        /// When.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Every line was removed.
    #[serde(rename = "cart.cleared")]
    Cleared {
        /// When.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// A guest cart's lines were merged in.
    #[serde(rename = "cart.merged")]
    Merged {
        /// The merged lines, as they are now in this cart.
        lines: Vec<CartLine>,
        /// When.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The cart sat idle past the shop's limit; its lines lapsed.
    #[serde(rename = "cart.expired")]
    Expired {
        /// When.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl CartEvent {
    /// When it happened.
    pub const fn at(&self) -> OffsetDateTime {
        match self {
            Self::ItemAdded { at, .. }
            | Self::QuantitySet { at, .. }
            | Self::ItemRemoved { at, .. }
            | Self::Cleared { at }
            | Self::Merged { at, .. }
            | Self::Expired { at } => *at,
        }
    }
}

/// A cart's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartState {
    /// Lines by SKU.
    pub lines: BTreeMap<Sku, CartLine>,
    /// When it last changed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub touched: Option<OffsetDateTime>,
    /// Events applied.
    pub version: u64,
}

/// A cart as its entity answers: the lines, in SKU order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    /// The cart.
    pub id: CartId,
    /// Its lines.
    pub lines: Vec<CartLine>,
    /// Its version.
    pub version: u64,
}

fn invalid(detail: impl Into<String>) -> ReplyError {
    ReplyError::new(ErrorCode::InvalidInput, detail)
}

impl CartState {
    fn lapsed(&self, rules: CartRules, now: OffsetDateTime) -> bool {
        !self.lines.is_empty()
            && self.touched.is_some_and(|t| {
                (now - t).whole_seconds() > i64::try_from(rules.idle_secs).unwrap_or(i64::MAX)
            })
    }

    fn check_quantity(quantity: u32, rules: CartRules) -> Result<(), ReplyError> {
        if (1..=rules.max_quantity).contains(&quantity) {
            Ok(())
        } else {
            Err(ReplyError::new(
                ErrorCode::InvalidQuantity,
                format!("quantity must be 1 to {} per line", rules.max_quantity),
            ))
        }
    }

    /// The cart's currency: that of its lines.
    fn currency_fits(&self, price: &Money) -> Result<(), ReplyError> {
        match self.lines.values().next() {
            Some(l) if l.added_price.currency != price.currency => Err(invalid(format!(
                "this cart is in {}; a line in {} cannot join it",
                l.added_price.currency.as_str(),
                price.currency.as_str()
            ))),
            _ => Ok(()),
        }
    }
}

impl Fold for CartState {
    type Event = CartEvent;

    fn apply(&mut self, event: &CartEvent) {
        self.version += 1;
        self.touched = Some(event.at());
        match event {
            CartEvent::ItemAdded { line, .. } => {
                self.lines.insert(line.sku.clone(), line.clone());
            }
            CartEvent::QuantitySet { sku, quantity, .. } => {
                if let Some(l) = self.lines.get_mut(sku) {
                    l.quantity = *quantity;
                }
            }
            CartEvent::ItemRemoved { sku, .. } => {
                self.lines.remove(sku);
            }
            CartEvent::Cleared { .. } | CartEvent::Expired { .. } => self.lines.clear(),
            CartEvent::Merged { lines, .. } => {
                for l in lines {
                    self.lines.insert(l.sku.clone(), l.clone());
                }
            }
        }
    }
}

impl Entity for CartState {
    const KIND: EntityKind = EntityKind::Cart;
    type Id = CartId;
    type Command = CartCommand;
    type View = CartView;

    fn id_str(id: &CartId) -> &str {
        id.as_str()
    }

    fn decide(
        &self,
        _id: &CartId,
        cmd: &CartCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<CartEvent>, ReplyError> {
        let rules = cmd.rules;
        // Lines lapse lazily: the first command after the idle limit finds the cart empty.
        let mut state = self.clone();
        let mut events = Vec::new();
        if state.lapsed(rules, now) {
            let expired = CartEvent::Expired { at: now };
            state.apply(&expired);
            events.push(expired);
        }
        match &cmd.op {
            CartOp::Get => {}
            CartOp::Add { line } => {
                Self::check_quantity(line.quantity, rules)?;
                state.currency_fits(&line.added_price)?;
                let had = state.lines.get(&line.sku).map_or(0, |l| l.quantity);
                if had == 0 && state.lines.len() >= MAX_LINES {
                    return Err(invalid(format!("a cart holds at most {MAX_LINES} lines")));
                }
                let quantity = had.saturating_add(line.quantity);
                Self::check_quantity(quantity, rules)?;
                events.push(CartEvent::ItemAdded { line: CartLine { quantity, ..line.clone() }, at: now });
            }
            CartOp::Set { sku, quantity } => {
                Self::check_quantity(*quantity, rules)?;
                match state.lines.get(sku) {
                    None => {
                        return Err(ReplyError::new(ErrorCode::UnknownCartLine, "no such line in the cart"));
                    }
                    Some(l) if l.quantity == *quantity => {}
                    Some(_) => {
                        events.push(CartEvent::QuantitySet { sku: sku.clone(), quantity: *quantity, at: now })
                    }
                }
            }
            CartOp::Remove { sku } => {
                if state.lines.contains_key(sku) {
                    events.push(CartEvent::ItemRemoved { sku: sku.clone(), at: now });
                } else {
                    return Err(ReplyError::new(ErrorCode::UnknownCartLine, "no such line in the cart"));
                }
            }
            CartOp::Clear => {
                if !state.lines.is_empty() {
                    events.push(CartEvent::Cleared { at: now });
                }
            }
            CartOp::Merge { lines } => {
                let mut merged = Vec::new();
                for line in lines {
                    if state.currency_fits(&line.added_price).is_err() {
                        continue;
                    }
                    let had = state.lines.get(&line.sku).map_or(0, |l| l.quantity);
                    if had == 0 && state.lines.len() + merged.len() >= MAX_LINES {
                        continue;
                    }
                    let quantity = had.saturating_add(line.quantity).min(rules.max_quantity);
                    if quantity > had {
                        merged.push(CartLine { quantity, ..line.clone() });
                    }
                }
                if !merged.is_empty() {
                    events.push(CartEvent::Merged { lines: merged, at: now });
                }
            }
        }
        Ok(events)
    }

    fn view(&self, id: &CartId) -> CartView {
        CartView { id: id.clone(), lines: self.lines.values().cloned().collect(), version: self.version }
    }

    fn version(&self) -> u64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::Currency;

    const RULES: CartRules = CartRules { max_quantity: 5, idle_secs: 60 };

    fn line(sku: &str, quantity: u32, currency: &str) -> CartLine {
        CartLine {
            sku: Sku::parse(sku).expect("sku"),
            product: ProductId::generate(),
            quantity,
            added_price: Money::new(100, Currency::parse(currency).expect("currency")).expect("money"),
        }
    }

    fn run(state: &mut CartState, op: CartOp, now: OffsetDateTime) -> Result<Vec<CartEvent>, ReplyError> {
        let id = CartId::customer(&UserId::generate());
        let events = state.decide(&id, &CartCommand { op, rules: RULES }, now)?;
        for e in &events {
            state.apply(e);
        }
        Ok(events)
    }

    #[test]
    fn lines_add_up_to_the_limit_in_one_currency() {
        let now = OffsetDateTime::now_utc();
        let mut cart = CartState::default();
        run(&mut cart, CartOp::Add { line: line("A", 2, "EUR") }, now).expect("add");
        run(&mut cart, CartOp::Add { line: line("A", 3, "EUR") }, now).expect("add");
        assert_eq!(cart.lines[&Sku::parse("A").expect("sku")].quantity, 5);
        let over = run(&mut cart, CartOp::Add { line: line("A", 1, "EUR") }, now).expect_err("over");
        assert_eq!(over.code, ErrorCode::InvalidQuantity);
        let usd = run(&mut cart, CartOp::Add { line: line("B", 1, "USD") }, now).expect_err("currency");
        assert_eq!(usd.code, ErrorCode::InvalidInput);
        let missing = run(&mut cart, CartOp::Remove { sku: Sku::parse("B").expect("sku") }, now);
        assert_eq!(missing.expect_err("missing").code, ErrorCode::UnknownCartLine);
        assert!(
            run(&mut cart, CartOp::Set { sku: Sku::parse("A").expect("sku"), quantity: 5 }, now)
                .expect("same")
                .is_empty()
        );
    }

    #[test]
    fn idle_lines_lapse_on_the_next_command_and_merges_cap_at_the_limit() {
        let now = OffsetDateTime::now_utc();
        let mut cart = CartState::default();
        run(&mut cart, CartOp::Add { line: line("A", 4, "EUR") }, now).expect("add");
        let events = run(&mut cart, CartOp::Get, now + time::Duration::seconds(30)).expect("get");
        assert!(events.is_empty(), "not idle yet");
        let events = run(&mut cart, CartOp::Get, now + time::Duration::seconds(61)).expect("get");
        assert!(matches!(events[..], [CartEvent::Expired { .. }]));
        assert!(cart.lines.is_empty());

        run(&mut cart, CartOp::Add { line: line("A", 4, "EUR") }, now).expect("add");
        let merged =
            run(&mut cart, CartOp::Merge { lines: vec![line("A", 3, "EUR"), line("B", 1, "USD")] }, now)
                .expect("merge");
        assert_eq!(merged.len(), 1);
        assert_eq!(cart.lines[&Sku::parse("A").expect("sku")].quantity, 5, "capped at the limit");
        assert_eq!(cart.lines.len(), 1, "another currency stays out");
    }
}
