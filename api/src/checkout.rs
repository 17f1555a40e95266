//! Checkout: turns the customer's cart into a placed order, once per `Idempotency-Key`. The
//! key is claimed cluster-wide (a KV create) with the order id it will make and a digest of
//! the request, so a retry gets the same order and a different request under the same key is
//! refused. The order's saga then runs on the nodes (see `souk_actors::saga`).

use crate::auth::access::{Principal, caller};
use crate::auth::tokens;
use crate::cart::{Carts, Owner};
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use souk_messages::ErrorCode;
use souk_messages::order::{
    Address, OrderCommand, OrderDispute, OrderId, OrderLine, OrderRequest, OrderStatus, OrderView, Placement,
};
use souk_messages::product::Currency;
use souk_nats::{Bus, JsonKv};

/// What a claimed `Idempotency-Key` remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyClaim {
    /// The order the key makes.
    pub order: OrderId,
    /// SHA-256 of the request it was first used with.
    pub request: String,
}

/// `POST /v1/checkout`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// Where the order ships.
    pub shipping_address: Address,
    /// The payment provider's token for the customer's payment method (`pm_…`), never a card
    /// number. The sandbox's test methods are listed in docs/api/orders.md.
    #[schema(example = "pm_card_visa", min_length = 4, max_length = 255)]
    pub payment_method: String,
}

/// Checkouts and order reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Checkout {
    bus: Bus,
    carts: Carts,
    keys: JsonKv<KeyClaim>,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::invalid(ErrorCode::InvalidInput, detail)
}

fn check_payment_method(method: &str) -> Result<(), ApiError> {
    let digits = method.bytes().filter(u8::is_ascii_digit).count();
    if digits >= 12 && method.bytes().all(|b| b.is_ascii_digit() || b == b' ' || b == b'-') {
        return Err(invalid("payment_method takes the provider's token for a card, never the card number"));
    }
    let token = method.len() <= 255 && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !method.starts_with("pm_") || method.len() < 4 || !token {
        return Err(invalid("payment_method must be a payment-method token such as pm_card_visa"));
    }
    Ok(())
}

impl Checkout {
    /// The service over its parts.
    pub fn new(bus: Bus, carts: Carts, keys: JsonKv<KeyClaim>) -> Self {
        Self { bus, carts, keys }
    }

    async fn order(
        &self,
        id: &OrderId,
        command: OrderCommand,
        correlation: &str,
    ) -> Result<OrderView, ApiError> {
        Ok(self
            .bus
            .request(&OrderRequest::new(id.clone(), command).correlated(correlation).by(caller()))
            .await?)
    }

    /// Places an order for the customer's cart; answers it and whether this call placed it.
    pub async fn checkout(
        &self,
        who: &Principal,
        key: &str,
        body: CheckoutBody,
        correlation: &str,
    ) -> Result<(OrderView, bool), ApiError> {
        body.shipping_address.validate()?;
        check_payment_method(&body.payment_method)?;
        let request =
            tokens::digest(&serde_json::to_string(&body).map_err(|e| ApiError::Internal(e.to_string()))?);
        let slot = tokens::digest(&format!("{}\n{key}", who.user));
        let mine = KeyClaim { order: OrderId::generate(), request };
        // A key seen before answers with its order, whatever the cart holds now.
        if let Some((claim, _)) = self.keys.get(&slot).await?
            && let Some(view) = self.replay(&claim, &mine, correlation).await?
        {
            return Ok((view, false));
        }
        let owner = Owner::Customer(who.user.clone());
        let placement = self.placement(who, &owner, body, correlation).await?;
        let order = if self.keys.create(&slot, &mine).await?.is_some() {
            mine.order
        } else {
            // Another request with this key got here first.
            let Some((claim, _)) = self.keys.get(&slot).await? else {
                return Err(ApiError::invalid(ErrorCode::Unavailable, "the key is being used; retry"));
            };
            if let Some(view) = self.replay(&claim, &mine, correlation).await? {
                return Ok((view, false));
            }
            claim.order
        };
        let view =
            self.order(&order, OrderCommand::Place { placement: Box::new(placement) }, correlation).await?;
        if let Err(e) = self.carts.clear(&owner, correlation).await {
            tracing::warn!(order = %order, error = %e, "the order is placed but the cart could not be emptied");
        }
        Ok((view.public(), true))
    }

    /// The order of a key used before with the same request; `None` when that attempt never
    /// placed it (it is placed now under the claimed id).
    async fn replay(
        &self,
        claim: &KeyClaim,
        mine: &KeyClaim,
        correlation: &str,
    ) -> Result<Option<OrderView>, ApiError> {
        if claim.request != mine.request {
            return Err(ApiError::invalid(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request",
            ));
        }
        match self.order(&claim.order, OrderCommand::Get, correlation).await {
            Ok(view) => Ok(Some(view.public())),
            Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownOrder => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The order the customer's cart makes, priced now.
    async fn placement(
        &self,
        who: &Principal,
        owner: &Owner,
        body: CheckoutBody,
        correlation: &str,
    ) -> Result<Placement, ApiError> {
        let cart = self.carts.get(owner, correlation).await?;
        if cart.lines.is_empty() {
            return Err(invalid("the cart is empty"));
        }
        let mut lines = Vec::with_capacity(cart.lines.len());
        for l in cart.lines {
            let (Some(title), Some(unit_price)) = (l.title, l.unit_price) else {
                return Err(invalid(format!("{} is no longer on sale: remove it from the cart", l.sku)));
            };
            lines.push(OrderLine { sku: l.sku, product: l.product, title, quantity: l.quantity, unit_price });
        }
        Ok(Placement {
            customer: who.user.clone(),
            lines,
            shipping_address: body.shipping_address,
            payment_method: body.payment_method,
            total: cart.total,
            currency: cart.currency.unwrap_or(Currency::NONE),
        })
    }

    /// An order, if the caller may see it: its customer, or staff.
    pub async fn get(&self, who: &Principal, id: &str, correlation: &str) -> Result<OrderView, ApiError> {
        let unknown = || ApiError::invalid(ErrorCode::UnknownOrder, "no such order");
        let id = OrderId::parse(id).map_err(|_| unknown())?;
        let view = self.order(&id, OrderCommand::Get, correlation).await?;
        if view.customer != who.user && !who.is_staff() {
            return Err(unknown());
        }
        Ok(view.public())
    }

    /// Records money the provider gave back outside Souk (a refund made in its dashboard) on
    /// `order`, once per provider refund id. While the order's own refund, cancellation or
    /// checkout is under way the record waits: `Unavailable`, so the provider delivers the
    /// event again later.
    pub async fn record_provider_refund(
        &self,
        order: &OrderId,
        refund: &str,
        amount: i64,
        correlation: &str,
    ) -> Result<OrderView, ApiError> {
        let command = OrderCommand::RequestRefund {
            amount: Some(amount),
            outside_souk: true,
            key: Some(refund.to_owned()),
        };
        match self.order(order, command, correlation).await {
            Err(ApiError::Rejected(e)) if e.code == ErrorCode::OrderConflict => {
                let now = self.order(order, OrderCommand::Get, correlation).await?;
                let busy = now.refund_pending.is_some()
                    || now.cancel_requested.is_some()
                    || matches!(now.status, OrderStatus::Pending | OrderStatus::Reserved | OrderStatus::Paid);
                Err(if busy {
                    ApiError::invalid(ErrorCode::Unavailable, "the order is busy; deliver it again")
                } else {
                    e.into()
                })
            }
            answer => answer,
        }
    }

    /// Records on `order` a dispute of its payment the provider reported, or how it ended;
    /// answers whether the order did not know of the dispute before.
    pub async fn record_dispute(
        &self,
        order: &OrderId,
        dispute: OrderDispute,
        correlation: &str,
    ) -> Result<bool, ApiError> {
        let before = self.order(order, OrderCommand::Get, correlation).await?;
        let new = before.dispute.is_none_or(|d| d.id != dispute.id);
        self.order(order, OrderCommand::RecordDispute { dispute }, correlation).await?;
        Ok(new)
    }

    /// Sends `command` to an order the caller may see; answers the order after it.
    pub async fn command(
        &self,
        who: &Principal,
        id: &str,
        command: OrderCommand,
        correlation: &str,
    ) -> Result<OrderView, ApiError> {
        let order = self.get(who, id, correlation).await?;
        Ok(self.order(&order.id, command, correlation).await?.public())
    }
}
