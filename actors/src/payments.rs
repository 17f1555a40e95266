//! Payment providers. The checkout saga talks to one through [`PaymentGateway`]: authorise,
//! capture, void and refund, each idempotent by a key the saga derives from the order id, so
//! a step repeated after a crash never charges twice.

use futures::future::BoxFuture;
use souk_messages::order::PROVIDER_REFUND_MARK;
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
    /// Authorises `amount` on `method` for `order`; answers the provider's payment reference.
    fn authorize<'a>(
        &'a self,
        order: &'a str,
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
    /// Gives back captured money; succeeds when the provider has given all of it back already.
    fn refund<'a>(
        &'a self,
        payment: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
}

/// How long the sandbox takes to answer a slow card: longer than any step deadline.
const LATE_ANSWER: Duration = Duration::from_secs(60);

/// The built-in test provider. Its "cards" are payment-method tokens named like a real
/// provider's test methods; each drives one path of the checkout.
#[derive(Debug, Default)]
pub struct Sandbox {
    /// Keys already asked to authorise [`CARD_SLOW_ONCE`] on this node.
    asked: std::sync::Mutex<std::collections::HashSet<String>>,
}

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
/// Approved after three seconds: within the default payment deadline, but after a hold with a
/// shorter `reservation_ttl` has lapsed.
pub const CARD_SLOW_APPROVE: &str = "pm_card_slowApprove";
/// Approved; every refund of it is refused (as a provider refuses to refund a disputed payment).
pub const CARD_REFUND_FAIL: &str = "pm_card_refundFail";
/// How the sandbox's references of [`CARD_REFUND_FAIL`] payments begin.
const NO_REFUNDS: &str = "sbx_norefund_";

/// Approved after a minute the first time a key is asked (on a node), at once when it is asked
/// again: the authorisation the checkout gave up waiting for happened after all.
pub const CARD_SLOW_ONCE: &str = "pm_card_slowOnce";

impl PaymentGateway for Sandbox {
    fn authorize<'a>(
        &'a self,
        _order: &'a str,
        method: &'a str,
        _amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async move {
            match method {
                CARD_APPROVE | CARD_REFUND_FAIL => {}
                CARD_SLOW => tokio::time::sleep(LATE_ANSWER).await,
                CARD_SLOW_APPROVE => tokio::time::sleep(Duration::from_secs(3)).await,
                CARD_SLOW_ONCE => {
                    let first = self
                        .asked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(key.to_owned());
                    if first {
                        tokio::time::sleep(LATE_ANSWER).await;
                    }
                }
                CARD_INSUFFICIENT_FUNDS => return Err(PaymentError::InsufficientFunds),
                CARD_GATEWAY_ERROR => return Err(PaymentError::Unavailable("sandbox gateway error".into())),
                _ => return Err(PaymentError::Declined),
            }
            // The same key gives the same reference on any node: authorising twice is once.
            let prefix = if method == CARD_REFUND_FAIL { NO_REFUNDS } else { "sbx_" };
            Ok(format!("{prefix}{:016x}", stable_hash(&[b"authorize", key.as_bytes()])))
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
        payment: &'a str,
        _amount: Money,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(
            async move { if payment.starts_with(NO_REFUNDS) { Err(PaymentError::Declined) } else { Ok(()) } },
        )
    }
}

/// How to reach Stripe.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// The API's base URL (`https://api.stripe.com`; a local peer in tests).
    pub base_url: String,
    /// The secret API key (`sk_…`).
    pub api_key: String,
    /// How long one API call may take.
    pub timeout: Duration,
}

/// A client of Stripe's PaymentIntents API: authorise is a confirmed PaymentIntent with
/// manual capture; capture, void (cancel) and refund act on it. Every call carries the
/// saga's key as Stripe's `Idempotency-Key`, so a repeated call is answered, not repeated.
#[derive(Debug)]
pub struct Stripe {
    http: reqwest::Client,
    settings: StripeSettings,
}

/// Stripe's error code for a refund of a payment refunded in full already.
const ALREADY_REFUNDED: &str = "charge_already_refunded";

/// Stripe's answer: a PaymentIntent or refund (its id and status), or an error.
#[derive(Debug, serde::Deserialize)]
struct StripeReply {
    id: Option<String>,
    status: Option<String>,
    error: Option<StripeError>,
}

/// The PaymentIntent or refund a request made or acted on.
#[derive(Debug, Default)]
struct StripeObject {
    id: String,
    /// E.g. `requires_capture`; absent when the request was done already, outside Souk.
    status: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct StripeError {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
}

impl Stripe {
    /// A client with its own connection pool.
    pub fn new(settings: StripeSettings) -> Result<Self, PaymentError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| PaymentError::Unavailable(e.to_string()))?;
        Ok(Self { http, settings })
    }

    /// Posts `form` to `path` under `key`. `done` names the error codes that mean what was
    /// asked has happened already, outside this request: those answer as a success.
    async fn post(
        &self,
        path: &str,
        form: &[(&str, String)],
        key: &str,
        done: &[&str],
    ) -> Result<StripeObject, PaymentError> {
        let url = format!("{}{path}", self.settings.base_url.trim_end_matches('/'));
        let res = self
            .http
            .post(url)
            .bearer_auth(&self.settings.api_key)
            .header("Idempotency-Key", key)
            .form(form)
            .send()
            .await
            .map_err(|e| PaymentError::Unavailable(e.without_url().to_string()))?;
        let status = res.status();
        let reply: StripeReply = res
            .json()
            .await
            .map_err(|e| PaymentError::Unavailable(format!("{status}: {}", e.without_url())))?;
        match (status.is_success(), reply.id, reply.error) {
            (true, Some(id), _) => Ok(StripeObject { id, status: reply.status }),
            (_, _, Some(e))
                if status.is_client_error() && e.code.as_deref().is_some_and(|c| done.contains(&c)) =>
            {
                let code = e.code.unwrap_or_default();
                tracing::warn!(%status, code, path, "Stripe says this was done already, outside Souk; taken as done");
                Ok(StripeObject::default())
            }
            // Souk's API key is wrong, revoked or lacks a permission: the shop's set-up, not the
            // customer's card. Asked again (and, failing that, `payment_failed`, which the
            // failure alert watches) rather than declining every checkout in silence.
            (_, _, e)
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN =>
            {
                let detail = e.and_then(|e| e.message).unwrap_or_default();
                tracing::error!(%status, path, detail, "Stripe refused Souk's API key: check stripe_api_key");
                Err(PaymentError::Unavailable(format!("Stripe answered {status}: the API key was refused")))
            }
            // The key was first used with other parameters (a node of an older release asked
            // first, with fewer fields): what the provider did then is unknown here, so the
            // step is asked again and, failing that, ends unsettled for staff, never declined.
            (_, _, Some(e)) if e.kind.as_deref() == Some("idempotency_error") => {
                tracing::warn!(%status, path, detail = e.message.as_deref().unwrap_or(""), "Stripe refused the idempotency key");
                Err(PaymentError::Unavailable(format!("Stripe answered {status}: idempotency error")))
            }
            (_, _, Some(e)) if status.is_client_error() && e.kind.as_deref() == Some("card_error") => {
                if e.decline_code.as_deref() == Some("insufficient_funds")
                    || e.code.as_deref() == Some("insufficient_funds")
                {
                    Err(PaymentError::InsufficientFunds)
                } else {
                    Err(PaymentError::Declined)
                }
            }
            // 409: another request under the same key is still being processed (a retry that
            // overtook the call it retries); 429: too many requests. Both are to be asked again.
            (_, _, e)
                if status.is_client_error()
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                    && status != reqwest::StatusCode::CONFLICT =>
            {
                let detail = e.and_then(|e| e.message).unwrap_or_default();
                tracing::warn!(%status, detail, "Stripe refused a request");
                Err(PaymentError::Declined)
            }
            _ => Err(PaymentError::Unavailable(format!("Stripe answered {status}"))),
        }
    }
}

impl PaymentGateway for Stripe {
    fn authorize<'a>(
        &'a self,
        order: &'a str,
        method: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<String, PaymentError>> {
        Box::pin(async move {
            // The order id rides along, so the shop's staff find the order from the payment in
            // Stripe's dashboard, and its webhooks name it.
            let form = [
                ("amount", amount.amount.to_string()),
                ("currency", amount.currency.as_str().to_lowercase()),
                ("payment_method", method.to_owned()),
                ("confirm", "true".to_owned()),
                ("capture_method", "manual".to_owned()),
                ("payment_method_types[]", "card".to_owned()),
                ("metadata[souk_order]", order.to_owned()),
            ];
            let intent = self.post("/v1/payment_intents", &form, key, &[]).await?;
            match intent.status.as_deref() {
                Some("requires_capture") | None => Ok(intent.id),
                // `requires_action`: the card wants the customer to authenticate (3-D Secure),
                // which a checkout answered by the server cannot ask for; nothing is held.
                Some(other) => {
                    tracing::warn!(payment = %intent.id, status = other, "Stripe did not authorise the payment");
                    Err(PaymentError::Declined)
                }
            }
        })
    }

    fn capture<'a>(
        &'a self,
        payment: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            let form = [("amount_to_capture", amount.amount.to_string())];
            self.post(&format!("/v1/payment_intents/{payment}/capture"), &form, key, &[]).await.map(drop)
        })
    }

    fn void<'a>(&'a self, payment: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            self.post(&format!("/v1/payment_intents/{payment}/cancel"), &[], key, &[]).await.map(drop)
        })
    }

    fn refund<'a>(
        &'a self,
        payment: &'a str,
        amount: Money,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            // Marked as Souk's, so its webhook does not take it for one made in the dashboard.
            let mark = format!("metadata[{PROVIDER_REFUND_MARK}]");
            let form = [
                ("payment_intent", payment.to_owned()),
                ("amount", amount.amount.to_string()),
                (mark.as_str(), key.to_owned()),
            ];
            // A payment refunded in full already (in Stripe's dashboard, say) has given the
            // money back: a cancellation goes on to put the stock back rather than leave an
            // order the customer has been repaid for to ship.
            self.post("/v1/refunds", &form, key, &[ALREADY_REFUNDED]).await.map(drop)
        })
    }
}
