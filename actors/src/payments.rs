//! Payment providers. The checkout saga talks to one through [`PaymentGateway`]: authorise,
//! capture, void and refund, each idempotent by a key the saga derives from the order id, so
//! a step repeated after a crash never charges twice.

use futures::future::BoxFuture;
use souk_messages::product::Money;
use souk_messages::subject::stable_hash;
use std::time::Duration;

/// Why a payment step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The provider declined the payment: final.
    #[error("declined")]
    Declined,
    /// The card has insufficient funds: final.
    #[error("insufficient funds")]
    InsufficientFunds,
    /// The provider failed or could not be reached: worth retrying.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

/// A payment provider.
pub trait PaymentGateway: Send + Sync + std::fmt::Debug + 'static {
    /// Authorises `amount` on `method`; answers the provider's payment reference.
    fn authorize<'a>(
        &'a self,
        method: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<String, PaymentError>>;
    /// Captures an authorised payment.
    fn capture<'a>(
        &'a self,
        payment: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
    /// Releases an authorisation that will not be captured.
    fn void<'a>(&'a self, payment: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), PaymentError>>;
    /// Gives back captured money.
    fn refund<'a>(
        &'a self,
        payment: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
}

/// The built-in test provider. Its "cards" are payment-method tokens named like a real
/// provider's test methods; each drives one path of the checkout.
#[derive(Debug, Default)]
pub struct Sandbox;

/// Approved.
pub const CARD_APPROVE: &str = "pm_card_visa";
/// Declined.
pub const CARD_DECLINE: &str = "pm_card_chargeDeclined";
/// Declined for insufficient funds.
pub const CARD_INSUFFICIENT_FUNDS: &str = "pm_card_chargeDeclinedInsufficientFunds";
/// The provider fails on every attempt.
pub const CARD_GATEWAY_ERROR: &str = "pm_card_gatewayError";
/// Approved, but only after a minute: longer than any step deadline.
pub const CARD_SLOW: &str = "pm_card_slow";

impl PaymentGateway for Sandbox {
    fn authorize<'a>(
        &'a self,
        method: &'a str,
        _amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async move {
            match method {
                CARD_APPROVE => {}
                CARD_SLOW => tokio::time::sleep(Duration::from_secs(60)).await,
                CARD_INSUFFICIENT_FUNDS => return Err(PaymentError::InsufficientFunds),
                CARD_GATEWAY_ERROR => return Err(PaymentError::Unavailable("sandbox gateway error".into())),
                _ => return Err(PaymentError::Declined),
            }
            // The same key gives the same reference on any node: authorising twice is once.
            Ok(format!("sbx_{:016x}", stable_hash(&[b"authorize", key.as_bytes()])))
        })
    }

    fn capture<'a>(
        &'a self,
        _payment: &'a str,
        _amount: Money,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }

    fn void<'a>(&'a self, _payment: &'a str, _key: &'a str) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }

    fn refund<'a>(
        &'a self,
        _payment: &'a str,
        _amount: Money,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }
}
