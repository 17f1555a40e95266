//! The cart service: cart commands with lines checked against the storefront, and carts
//! priced at what the catalog charges now. Customers' carts are keyed by their user id; a
//! guest's by the digest of an unguessable cart token that only the guest holds.

use crate::auth::access::caller;
use crate::auth::tokens;
use crate::error::ApiError;
use crate::storefront::Storefront;
use serde::Serialize;
use souk_messages::cart::{CartCommand, CartId, CartLine, CartOp, CartRequest, CartRules, CartView};
use souk_messages::product::{Currency, Money, ProductId};
use souk_messages::{ErrorCode, Sku, UserId};
use souk_nats::Bus;

/// Bytes of randomness in a guest cart token.
const TOKEN_BYTES: usize = 32;

/// Cart commands and views. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Carts {
    bus: Bus,
    storefront: Storefront,
    rules: CartRules,
}

/// Whose cart a request is about.
#[derive(Debug, Clone)]
pub enum Owner {
    /// A signed-in customer.
    Customer(UserId),
    /// A guest holding this cart token.
    Guest(String),
    /// A guest without a cart yet.
    Nobody,
}

impl Owner {
    /// The cart's id, if there is a cart to address.
    pub fn cart(&self) -> Option<CartId> {
        match self {
            Self::Customer(user) => Some(CartId::customer(user)),
            Self::Guest(token) => Some(guest_cart(token)),
            Self::Nobody => None,
        }
    }
}

/// The cart of a guest token.
fn guest_cart(token: &str) -> CartId {
    CartId::guest(&tokens::digest(token))
}

/// A guest cart token as sent: base64url, the length [`Carts::new_token`] makes.
pub fn valid_token(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A cart line as the shopper sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PricedLine {
    /// The variant.
    #[schema(value_type = String)]
    pub sku: Sku,
    /// Its product.
    #[schema(value_type = String)]
    pub product: ProductId,
    /// The product's title; absent when it is no longer on sale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Units.
    pub quantity: u32,
    /// The unit price now; absent when the variant is no longer on sale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Money>,
    /// The unit price when the line was added.
    pub added_price: Money,
    /// The price changed since the line was added: checkout charges `unit_price`.
    pub price_changed: bool,
    /// `unit_price` × `quantity`, minor units; 0 when not on sale.
    pub line_total: i64,
    /// Whether the variant is still on sale (a line that is not cannot be checked out).
    pub on_sale: bool,
    /// Units available to order now.
    pub available: u64,
}

/// A cart, priced now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PricedCart {
    /// Lines, in SKU order.
    pub lines: Vec<PricedLine>,
    /// Units over all lines.
    pub item_count: u64,
    /// Sum of the line totals, minor units.
    pub total: i64,
    /// The cart's currency; absent while it is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub currency: Option<Currency>,
    /// The cart's version.
    pub version: u64,
    /// A guest's new cart token: send it as `Cart-Token` from now on, and when signing in to
    /// move the lines into the customer's cart. Only in the answer that created the cart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_token: Option<String>,
}

impl Carts {
    /// The service over its parts.
    pub fn new(bus: Bus, storefront: Storefront, rules: CartRules) -> Self {
        Self { bus, storefront, rules }
    }

    /// Refuses a line quantity outside 1..=the limit before it reaches the cart.
    fn check_quantity(&self, quantity: u32) -> Result<(), ApiError> {
        if (1..=self.rules.max_quantity).contains(&quantity) {
            Ok(())
        } else {
            let detail = format!("quantity must be 1 to {} per line", self.rules.max_quantity);
            Err(ApiError::invalid(ErrorCode::InvalidQuantity, detail))
        }
    }

    /// A fresh guest cart token.
    pub fn new_token() -> String {
        tokens::random_token(TOKEN_BYTES)
    }

    async fn command(&self, id: CartId, op: CartOp, correlation: &str) -> Result<CartView, ApiError> {
        let request =
            CartRequest::new(id, CartCommand { op, rules: self.rules }).correlated(correlation).by(caller());
        Ok(self.bus.request(&request).await?)
    }

    /// The cart, priced; an empty one for a guest without a cart.
    pub async fn get(&self, owner: &Owner, correlation: &str) -> Result<PricedCart, ApiError> {
        let Some(id) = owner.cart() else {
            return Ok(PricedCart {
                lines: Vec::new(),
                item_count: 0,
                total: 0,
                currency: None,
                version: 0,
                cart_token: None,
            });
        };
        self.priced(self.command(id, CartOp::Get, correlation).await?).await
    }

    /// Adds units of a variant on sale. A guest without a cart gets one (and its token).
    pub async fn add(
        &self,
        owner: &Owner,
        sku: Sku,
        quantity: u32,
        correlation: &str,
    ) -> Result<PricedCart, ApiError> {
        self.check_quantity(quantity)?;
        let found = self.storefront.read(|shelf| shelf.variant(&sku)).await?;
        let (listing, index) = found
            .ok_or_else(|| ApiError::invalid(ErrorCode::UnknownSku, "no product on sale has this SKU"))?;
        let variant = &listing.view.data.variants[index];
        let line = CartLine {
            sku: sku.clone(),
            product: listing.view.id.clone(),
            quantity,
            added_price: variant.price,
        };
        let (id, token) = match owner.cart() {
            Some(id) => (id, None),
            None => {
                let token = Self::new_token();
                (guest_cart(&token), Some(token))
            }
        };
        let mut cart = self.priced(self.command(id, CartOp::Add { line }, correlation).await?).await?;
        cart.cart_token = token;
        Ok(cart)
    }

    /// Sets a line's quantity.
    pub async fn set(
        &self,
        owner: &Owner,
        sku: Sku,
        quantity: u32,
        correlation: &str,
    ) -> Result<PricedCart, ApiError> {
        self.check_quantity(quantity)?;
        let id = owner.cart().ok_or_else(no_line)?;
        self.priced(self.command(id, CartOp::Set { sku, quantity }, correlation).await?).await
    }

    /// Removes a line.
    pub async fn remove(&self, owner: &Owner, sku: Sku, correlation: &str) -> Result<PricedCart, ApiError> {
        let id = owner.cart().ok_or_else(no_line)?;
        self.priced(self.command(id, CartOp::Remove { sku }, correlation).await?).await
    }

    /// Empties the cart.
    pub async fn clear(&self, owner: &Owner, correlation: &str) -> Result<(), ApiError> {
        if let Some(id) = owner.cart() {
            self.command(id, CartOp::Clear, correlation).await?;
        }
        Ok(())
    }

    /// Moves a guest cart's lines into a customer's cart (on sign-in), then empties it.
    pub async fn merge(&self, guest_token: &str, user: &UserId, correlation: &str) -> Result<(), ApiError> {
        let guest = guest_cart(guest_token);
        let lines = self.command(guest.clone(), CartOp::Get, correlation).await?.lines;
        if lines.is_empty() {
            return Ok(());
        }
        self.command(CartId::customer(user), CartOp::Merge { lines }, correlation).await?;
        self.command(guest, CartOp::Clear, correlation).await?;
        Ok(())
    }

    /// Prices each line at what the storefront charges now.
    async fn priced(&self, cart: CartView) -> Result<PricedCart, ApiError> {
        self.storefront
            .read(|shelf| {
                let lines: Vec<PricedLine> = cart
                    .lines
                    .into_iter()
                    .map(|l| {
                        let now = shelf.variant(&l.sku).filter(|(listing, _)| listing.view.id == l.product);
                        let (title, unit_price) = match &now {
                            Some((listing, i)) => (
                                Some(listing.view.data.title.clone()),
                                Some(listing.view.data.variants[*i].price),
                            ),
                            None => (None, None),
                        };
                        let line_total =
                            unit_price.as_ref().map_or(0, |p| p.amount.saturating_mul(i64::from(l.quantity)));
                        PricedLine {
                            price_changed: unit_price.as_ref().is_some_and(|p| *p != l.added_price),
                            on_sale: unit_price.is_some(),
                            available: shelf.available(&l.sku),
                            sku: l.sku,
                            product: l.product,
                            title,
                            quantity: l.quantity,
                            unit_price,
                            added_price: l.added_price,
                            line_total,
                        }
                    })
                    .collect();
                PricedCart {
                    item_count: lines.iter().map(|l| u64::from(l.quantity)).sum(),
                    total: lines.iter().map(|l| l.line_total).fold(0, i64::saturating_add),
                    currency: lines.first().map(|l| l.added_price.currency),
                    lines,
                    version: cart.version,
                    cart_token: None,
                }
            })
            .await
    }
}

fn no_line() -> ApiError {
    ApiError::invalid(ErrorCode::UnknownCartLine, "the cart has no line for this SKU")
}
