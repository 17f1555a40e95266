//! Payment providers: the Stripe client against a local peer that checks every request, a
//! checkout through it, and the signed webhook endpoint.

use crate::cart::customer;
use crate::catalog::{create, product};
use crate::checkout::{lamp_on_sale, on_hand_and_reserved, order_when, place};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use reqwest::Client;
use serde_json::json;
use souk_actors::payments::{PaymentError, PaymentGateway, Stripe, StripeSettings};
use souk_messages::product::{Currency, Money};
use souk_testkit::{NatsServer, SoukNode, admin_http, eventually, http};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the peer received: path, `Authorization`, `Idempotency-Key`, form fields.
type Seen = (String, String, String, Vec<(String, String)>);

/// A local stand-in for Stripe's API that records what it is sent.
async fn stripe_peer() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    async fn record(
        State(seen): State<Arc<Mutex<Vec<Seen>>>>,
        path: String,
        headers: HeaderMap,
        form: Vec<(String, String)>,
    ) {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        seen.lock().expect("lock").push((path, h("authorization"), h("idempotency-key"), form));
    }
    let intents = |State(seen): State<Arc<Mutex<Vec<Seen>>>>,
                   headers: HeaderMap,
                   Form(form): Form<Vec<(String, String)>>| async move {
        let method =
            form.iter().find(|(k, _)| k == "payment_method").map(|(_, v)| v.clone()).unwrap_or_default();
        record(State(seen), "/v1/payment_intents".into(), headers, form).await;
        let declined = |code: &str| {
            (
                StatusCode::PAYMENT_REQUIRED,
                axum::Json(
                    json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": code}}),
                ),
            )
        };
        match method.as_str() {
            "pm_card_visa" => {
                (StatusCode::OK, axum::Json(json!({"id": "pi_123", "status": "requires_capture"})))
            }
            "pm_card_refundFail" => {
                (StatusCode::OK, axum::Json(json!({"id": "pi_disputed", "status": "requires_capture"})))
            }
            "pm_card_slowRefundFail" => {
                // Approved after three seconds, and its refunds refused.
                tokio::time::sleep(Duration::from_secs(3)).await;
                (StatusCode::OK, axum::Json(json!({"id": "pi_disputed", "status": "requires_capture"})))
            }
            "pm_card_refundedInDashboard" => {
                (StatusCode::OK, axum::Json(json!({"id": "pi_refunded", "status": "requires_capture"})))
            }
            "pm_card_slowRefund" => {
                (StatusCode::OK, axum::Json(json!({"id": "pi_slowrefund", "status": "requires_capture"})))
            }
            "pm_card_expiring" => {
                (StatusCode::OK, axum::Json(json!({"id": "pi_expired", "status": "requires_capture"})))
            }
            "pm_card_chargeDeclinedInsufficientFunds" => declined("insufficient_funds"),
            "pm_card_gatewayError" => {
                (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"type": "api_error"}})))
            }
            // A card that asks its holder to authenticate (3-D Secure): nothing is authorised.
            "pm_card_authenticationRequired" => {
                (StatusCode::OK, axum::Json(json!({"id": "pi_3ds", "status": "requires_action"})))
            }
            // What Stripe answers a request signed with a revoked API key.
            "pm_card_revokedApiKey" => (
                StatusCode::UNAUTHORIZED,
                axum::Json(
                    json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_***"}}),
                ),
            ),
            // What Stripe answers a key first used with other parameters.
            "pm_card_otherParameters" => (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"error": {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}}),
                ),
            ),
            // What Stripe answers a retry that arrives while the first request is in progress.
            "pm_card_inFlight" => (
                StatusCode::CONFLICT,
                axum::Json(json!({"error": {"type": "idempotency_error", "code": "idempotency_key_in_use"}})),
            ),
            _ => declined("generic_decline"),
        }
    };
    let on_intent = |State(seen): State<Arc<Mutex<Vec<Seen>>>>,
                     Path((id, action)): Path<(String, String)>,
                     headers: HeaderMap,
                     Form(form): Form<Vec<(String, String)>>| async move {
        record(State(seen), format!("/v1/payment_intents/{id}/{action}"), headers, form).await;
        // What Stripe answers for an authorisation that expired before its capture.
        let error = match (id.as_str(), action.as_str()) {
            ("pi_expired", "capture") => Some("charge_expired_for_capture"),
            ("pi_expired", "cancel") => Some("payment_intent_unexpected_state"),
            _ => None,
        };
        match error {
            Some(code) => (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"type": "invalid_request_error", "code": code}})),
            ),
            None => (StatusCode::OK, axum::Json(json!({"id": id}))),
        }
    };
    let refunds = |State(seen): State<Arc<Mutex<Vec<Seen>>>>,
                   headers: HeaderMap,
                   Form(form): Form<Vec<(String, String)>>| async move {
        // What Stripe answers for a disputed payment, and for one refunded in its dashboard.
        let refused = match field(&form, "payment_intent").as_str() {
            "pi_disputed" => {
                Some(("charge_disputed", "Charge ch_1 has been charged back; cannot issue a refund."))
            }
            "pi_refunded" => Some(("charge_already_refunded", "Charge ch_1 has already been refunded.")),
            _ => None,
        };
        let slow = field(&form, "payment_intent") == "pi_slowrefund";
        record(State(seen), "/v1/refunds".into(), headers, form).await;
        if slow {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if let Some((code, message)) = refused {
            let error = json!({"error": {"type": "invalid_request_error", "code": code, "message": message}});
            return (StatusCode::BAD_REQUEST, axum::Json(error));
        }
        (StatusCode::OK, axum::Json(json!({"id": "re_1"})))
    };
    let app = axum::Router::new()
        .route("/v1/payment_intents", post(intents))
        .route("/v1/payment_intents/{id}/{action}", post(on_intent))
        .route("/v1/refunds", post(refunds))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// A node paying through the Stripe stand-in, with `env` besides: its servers, a client, a staff
/// client and what the stand-in was sent.
async fn stripe_node(env: &[(&str, &str)]) -> (NatsServer, SoukNode, Client, Client, Arc<Mutex<Vec<Seen>>>) {
    let (url, seen) = stripe_peer().await;
    let mut all = vec![
        ("SOUK_PAYMENTS", "stripe"),
        ("SOUK_STRIPE_BASE_URL", url.as_str()),
        ("SOUK_STRIPE_API_KEY", "sk_test_9"),
    ];
    all.extend_from_slice(env);
    let (nats, node, http, staff) = crate::catalog::staff_node_with(&all).await;
    (nats, node, http, staff, seen)
}

/// The idempotency keys of the requests to `path` the Stripe stand-in was sent.
fn keys_sent(seen: &Mutex<Vec<Seen>>, path: &str) -> Vec<String> {
    seen.lock().expect("lock").iter().filter(|s| s.0 == path).map(|s| s.2.clone()).collect()
}

fn field(form: &[(String, String)], name: &str) -> String {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_client_sends_exactly_the_payment_intents_requests() {
    let (url, seen) = stripe_peer().await;
    let stripe = Stripe::new(StripeSettings {
        base_url: url,
        api_key: "sk_test_123".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("client");
    let eur = |amount| Money::new(amount, Currency::parse("EUR").expect("eur")).expect("money");

    assert_eq!(
        stripe.authorize("ord-1", "pm_card_visa", eur(4500), "ord-1-authorize").await,
        Ok("pi_123".to_owned())
    );
    stripe.capture("pi_123", eur(4500), "ord-1-capture").await.expect("capture");
    stripe.refund("pi_123", eur(500), "ord-1-refund-1").await.expect("refund");
    stripe.void("pi_123", "ord-1-void").await.expect("void");
    // Refunded in Stripe's dashboard already: the money is back, so the refund is done; a
    // disputed payment's refund is refused.
    stripe.refund("pi_refunded", eur(500), "ord-2-refund-1").await.expect("refunded already");
    assert_eq!(stripe.refund("pi_disputed", eur(500), "ord-3-refund-1").await, Err(PaymentError::Declined));
    assert_eq!(
        stripe.authorize("ord-2", "pm_card_chargeDeclined", eur(1), "k2").await,
        Err(PaymentError::Declined)
    );
    assert_eq!(
        stripe.authorize("ord-3", "pm_card_authenticationRequired", eur(1), "k3ds").await,
        Err(PaymentError::Declined)
    );
    assert_eq!(
        stripe.authorize("ord-3", "pm_card_chargeDeclinedInsufficientFunds", eur(1), "k3").await,
        Err(PaymentError::InsufficientFunds)
    );
    // A failing provider, one still working on the same key, a key it knows with other
    // parameters, and a refused API key are asked again: none is the card's fault.
    for (method, key) in [
        ("pm_card_gatewayError", "k4"),
        ("pm_card_inFlight", "k5"),
        ("pm_card_otherParameters", "k6"),
        ("pm_card_revokedApiKey", "k7"),
    ] {
        assert!(
            matches!(stripe.authorize("ord-4", method, eur(1), key).await, Err(PaymentError::Unavailable(_))),
            "{method}"
        );
    }

    let seen = seen.lock().expect("lock").clone();
    let (path, auth, key, form) = &seen[0];
    assert_eq!(
        (path.as_str(), auth.as_str(), key.as_str()),
        ("/v1/payment_intents", "Bearer sk_test_123", "ord-1-authorize")
    );
    for (name, value) in [
        ("amount", "4500"),
        ("currency", "eur"),
        ("payment_method", "pm_card_visa"),
        ("confirm", "true"),
        ("capture_method", "manual"),
        ("payment_method_types[]", "card"),
        ("metadata[souk_order]", "ord-1"),
    ] {
        assert_eq!(field(form, name), value, "{name}");
    }
    assert_eq!(
        (seen[1].0.as_str(), seen[1].2.as_str()),
        ("/v1/payment_intents/pi_123/capture", "ord-1-capture")
    );
    assert_eq!(field(&seen[1].3, "amount_to_capture"), "4500");
    assert_eq!((seen[2].0.as_str(), seen[2].2.as_str()), ("/v1/refunds", "ord-1-refund-1"));
    assert_eq!(
        (
            field(&seen[2].3, "payment_intent"),
            field(&seen[2].3, "amount"),
            field(&seen[2].3, "metadata[souk_refund]")
        ),
        ("pi_123".into(), "500".into(), "ord-1-refund-1".into())
    );
    assert_eq!((seen[3].0.as_str(), seen[3].2.as_str()), ("/v1/payment_intents/pi_123/cancel", "ord-1-void"));
    assert!(seen.iter().all(|s| s.1 == "Bearer sk_test_123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_through_stripe_authorises_and_captures_once_by_key() {
    let (url, seen) = stripe_peer().await;
    let nats = NatsServer::start();
    let env = [
        ("SOUK_PAYMENTS", "stripe"),
        ("SOUK_STRIPE_BASE_URL", url.as_str()),
        ("SOUK_STRIPE_API_KEY", "sk_test_9"),
    ];
    let node = SoukNode::start(crate::bin(), nats.url(), &env).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let staff = admin_http(base).await;
    assert_eq!(
        create(&staff, base, &product("mug", "Mug", "", "MUG-1", 1200, "active")).await.status(),
        StatusCode::CREATED
    );
    let r =
        staff.post(format!("{base}/v1/inventory/MUG-1/restock")).json(&json!({"quantity": 3})).send().await;
    assert_eq!(r.expect("restock").status(), StatusCode::OK);
    eventually("the mug on sale", Duration::from_secs(10), || async {
        (http.get(format!("{base}/v1/products/mug")).send().await.ok()?.status() == StatusCode::OK)
            .then_some(())
    })
    .await;
    let c = customer(&http, base, "stripe@payments.test").await;
    let id = crate::checkout::confirmed_order(&c, base, "MUG-1", 2, "s-1").await;
    let seen = seen.lock().expect("lock").clone();
    let calls: Vec<(&str, &str)> = seen.iter().map(|s| (s.0.as_str(), s.2.as_str())).collect();
    let (authorize, capture) = (format!("{id}-authorize"), format!("{id}-capture"));
    assert_eq!(
        calls,
        [
            ("/v1/payment_intents", authorize.as_str()),
            ("/v1/payment_intents/pi_123/capture", capture.as_str())
        ]
    );
    assert_eq!(field(&seen[0].3, "amount"), "2400");

    // Staff find the order from its payment (a dispute names only the payment); customers
    // cannot search by it.
    let found = eventually("the order found by its payment", Duration::from_secs(10), || async {
        let page: serde_json::Value =
            souk_testkit::json_at(&staff, format!("{base}/v1/staff/orders?payment=pi_123")).await?;
        page["items"].as_array().filter(|items| !items.is_empty()).cloned()
    })
    .await;
    assert_eq!(found.iter().map(|o| o["id"].as_str()).collect::<Vec<_>>(), [Some(id.as_str())]);
    let none = staff.get(format!("{base}/v1/staff/orders?payment=pi_other")).send().await.expect("search");
    assert_eq!(crate::catalog::body(none, StatusCode::OK).await["items"], json!([]));
    let r = c.get(format!("{base}/v1/orders?payment=pi_123")).send().await.expect("customer search");
    assert_eq!(crate::catalog::body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_stripe_refuses_to_refund_is_recorded_and_asked_again_under_a_new_key() {
    let (_nats, node, http, staff, seen) = stripe_node(&[]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "DONE-LAMP", 5).await;
    let c = customer(&http, base, "disputed@payments.test").await;
    let id = place(&c, base, &[("DONE-LAMP", 1)], "pm_card_refundFail", "d-1").await;
    order_when(&c, base, &id, "the order confirmed", |o| o["status"] == "confirmed").await;

    // Twice the customer cancels and Stripe refuses the refund; the second time is a new
    // refund, not the first one's remembered answer.
    for refusals in 1..=2 {
        let r = c.post(format!("{base}/v1/orders/{id}/cancel")).send().await.expect("cancel");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let o =
            order_when(&c, base, &id, "the cancellation refused", |o| o["cancels_refused"] == refusals).await;
        assert_eq!((o["status"].as_str(), o.get("cancel_requested")), (Some("confirmed"), None), "{o}");
    }
    assert_eq!(
        keys_sent(&seen, "/v1/refunds"),
        [format!("{id}-cancel-refund"), format!("{id}-cancel-refund-2")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_of_a_payment_refunded_in_stripe_s_dashboard_cancels_the_order() {
    let (_nats, node, http, staff, seen) = stripe_node(&[]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "BACK-LAMP", 5).await;
    let c = customer(&http, base, "dashboard@payments.test").await;
    let id = place(&c, base, &[("BACK-LAMP", 2)], "pm_card_refundedInDashboard", "b-1").await;
    let o = order_when(&c, base, &id, "the order confirmed", |o| o["status"] == "confirmed").await;
    assert_eq!(on_hand_and_reserved(&staff, base, "BACK-LAMP").await, (Some(3), Some(0)));

    // The shop refunded it in Stripe's dashboard; the customer's cancellation then finds the
    // money back already, so the order is cancelled with its lamps back rather than shipped.
    let r = c.post(format!("{base}/v1/orders/{id}/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let done = order_when(&c, base, &id, "the order cancelled", |o| o["status"] == "cancelled").await;
    assert_eq!(
        (done["cancel_reason"].as_str(), done["refunded"].as_i64(), done["cancels_refused"].as_i64()),
        (Some("customer_request"), o["total"].as_i64(), Some(0)),
        "{done}"
    );
    assert_eq!(on_hand_and_reserved(&staff, base, "BACK-LAMP").await, (Some(5), Some(0)));
    assert_eq!(keys_sent(&seen, "/v1/refunds"), [format!("{id}-cancel-refund")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorisation_stripe_will_neither_capture_nor_cancel_ends_the_checkout_declined() {
    let (_nats, node, http, staff, seen) = stripe_node(&[]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "GONE-LAMP", 5).await;
    let c = customer(&http, base, "expired@payments.test").await;
    let id = place(&c, base, &[("GONE-LAMP", 2)], "pm_card_expiring", "e-1").await;
    // The capture is refused, and so is the void of an authorisation that is gone: the order
    // is cancelled with its stock given back rather than voided again and again.
    let o = order_when(&c, base, &id, "the order cancelled", |o| o["status"] == "cancelled").await;
    assert_eq!(o["cancel_reason"], "payment_declined", "{o}");
    assert_eq!(on_hand_and_reserved(&staff, base, "GONE-LAMP").await, (Some(5), Some(0)));
    assert_eq!(keys_sent(&seen, "/v1/payment_intents/pi_expired/cancel").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_order_whose_refund_stripe_refuses_is_cancelled_without_it_and_sells_nothing() {
    // Holds lapse after a second; this card's authorisation answers after three.
    let (_nats, node, http, staff, seen) =
        stripe_node(&[("SOUK_RESERVATION_TTL", "1s"), ("SOUK_PAYMENT_TIMEOUT", "10s")]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "LATE-A", 5).await;
    lamp_on_sale(&staff, base, base, "LATE-B", 5).await;
    let c = customer(&http, base, "lapsed@payments.test").await;
    let id = place(&c, base, &[("LATE-A", 2), ("LATE-B", 1)], "pm_card_slowRefundFail", "l-1").await;
    let o = order_when(&c, base, &id, "the order cancelled", |o| o["status"] == "cancelled").await;
    assert_eq!(
        (o["cancel_reason"].as_str(), o["refunded"].as_i64()),
        (Some("reservation_lapsed"), Some(0)),
        "{o}"
    );
    // Nothing sold, nothing held, and the refund was asked for once.
    for sku in ["LATE-A", "LATE-B"] {
        assert_eq!(on_hand_and_reserved(&staff, base, sku).await, (Some(5), Some(0)), "{sku}");
    }
    assert_eq!(keys_sent(&seen, "/v1/refunds").len(), 1);
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("souk_payment_refunds_refused_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_need_a_fresh_valid_signature_and_are_taken_once() {
    let nats = NatsServer::start();
    let node = SoukNode::start(crate::bin(), nats.url(), &[("SOUK_PAYMENTS_WEBHOOK_SECRET", "whsec_test")])
        .expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let url = format!("{}/v1/payments/webhook", node.url());
    let event =
        json!({"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_123"}}})
            .to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let deliver = |signature: Option<String>, body: String| {
        let mut r = http.post(&url).header("content-type", "application/json").body(body);
        if let Some(s) = signature {
            r = r.header("stripe-signature", s);
        }
        r.send()
    };
    let signed =
        |t: i64, secret: &str| format!("t={t},v1={}", souk_api::webhook::sign(secret, t, event.as_bytes()));

    assert_eq!(
        deliver(None, event.clone()).await.expect("post").status(),
        StatusCode::UNAUTHORIZED,
        "unsigned"
    );
    assert_eq!(
        deliver(Some(signed(now, "whsec_other")), event.clone()).await.expect("post").status(),
        StatusCode::UNAUTHORIZED,
        "wrong secret"
    );
    assert_eq!(
        deliver(Some(signed(now - 3600, "whsec_test")), event.clone()).await.expect("post").status(),
        StatusCode::UNAUTHORIZED,
        "stale"
    );
    let tampered = event.replace("evt_1", "evt_2");
    assert_eq!(
        deliver(Some(signed(now, "whsec_test")), tampered).await.expect("post").status(),
        StatusCode::UNAUTHORIZED,
        "tampered"
    );
    let good = signed(now, "whsec_test");
    assert_eq!(deliver(Some(good.clone()), event.clone()).await.expect("post").status(), StatusCode::OK);
    let replay = deliver(Some(good), event.clone()).await.expect("post");
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED, "replayed");
    assert_eq!(replay.headers()["content-type"], "application/problem+json");

    // A dispute is counted (for its alert); other events, whatever their objects, are not.
    let disputes = "souk_payment_disputes_total";
    assert_eq!(crate::metric(&http, node.url(), disputes).await, Some(0));
    for (id, kind, object) in [
        (
            "evt_2",
            "charge.dispute.created",
            json!({"payment_intent": "pi_123", "amount": 4500, "reason": "fraudulent"}),
        ),
        ("evt_3", "charge.refunded", json!({"amount": "a string here", "refunds": []})),
    ] {
        let r = deliver_event(&http, node.url(), "whsec_test", id, kind, object).await;
        assert_eq!(r.status(), StatusCode::OK, "{kind}");
    }
    assert_eq!(crate::metric(&http, node.url(), disputes).await, Some(1));
}

/// Places an order of `line` paid with `method` through the Stripe stand-in, whose payment
/// reference for it is `payment`; answers its id once it is confirmed and staff find it by
/// that reference.
async fn confirmed_and_listed(
    c: &Client,
    staff: &Client,
    base: &str,
    line: (&str, i64),
    method: &str,
    payment: &str,
) -> String {
    let id = place(c, base, &[line], method, &format!("{}-{payment}", line.0)).await;
    order_when(c, base, &id, "the order confirmed", |o| o["status"] == "confirmed").await;
    eventually("the order found by its payment", Duration::from_secs(10), || async {
        let page: serde_json::Value =
            souk_testkit::json_at(staff, format!("{base}/v1/staff/orders?payment={payment}")).await?;
        page["items"].as_array().filter(|items| !items.is_empty()).map(drop)
    })
    .await;
    id
}

/// Delivers a provider event signed with `secret` to the node at `base`.
async fn deliver_event(
    http: &Client,
    base: &str,
    secret: &str,
    id: &str,
    kind: &str,
    object: serde_json::Value,
) -> reqwest::Response {
    let body = json!({"id": id, "type": kind, "data": {"object": object}}).to_string();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = format!("t={now},v1={}", souk_api::webhook::sign(secret, now, body.as_bytes()));
    http.post(format!("{base}/v1/payments/webhook"))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .expect("deliver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_made_in_stripe_s_dashboard_is_recorded_on_its_order_once() {
    let secret = "whsec_dash";
    // This card's refunds take three seconds, so one is under way while the test acts.
    let (_nats, node, http, staff, seen) =
        stripe_node(&[("SOUK_PAYMENTS_WEBHOOK_SECRET", secret), ("SOUK_PAYMENT_TIMEOUT", "10s")]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "DASH-LAMP", 5).await;
    let c = customer(&http, base, "dashboard-refund@payments.test").await;
    let id =
        confirmed_and_listed(&c, &staff, base, ("DASH-LAMP", 2), "pm_card_slowRefund", "pi_slowrefund").await;
    let refund = |id: &str, amount: i64, status: &str, metadata: serde_json::Value| json!({"id": id, "object": "refund", "amount": amount, "currency": "eur", "payment_intent": "pi_slowrefund", "status": status, "metadata": metadata});
    let deliver = |id: &'static str, kind: &'static str, object: serde_json::Value| {
        let http = http.clone();
        async move { deliver_event(&http, base, secret, id, kind, object).await.status() }
    };
    let refunded = || async {
        let o = order_when(&c, base, &id, "the order", |_| true).await;
        (o["refunded"].as_i64(), o["refunds"].as_i64())
    };

    // The shop gives 500 back in the dashboard: recorded once it succeeded, whichever of the
    // provider's events tells it and however often.
    let pending = refund("re_dash_1", 500, "pending", json!({}));
    assert_eq!(deliver("evt_d1", "refund.created", pending).await, StatusCode::OK);
    assert_eq!(refunded().await, (Some(0), Some(0)));
    let succeeded = refund("re_dash_1", 500, "succeeded", json!({}));
    assert_eq!(deliver("evt_d2", "refund.updated", succeeded.clone()).await, StatusCode::OK);
    assert_eq!(refunded().await, (Some(500), Some(1)));
    assert_eq!(deliver("evt_d3", "refund.updated", succeeded).await, StatusCode::OK);
    assert_eq!(refunded().await, (Some(500), Some(1)));
    let r = staff.get(format!("{base}/v1/admin/history/order/{id}")).send().await.expect("history");
    let history = crate::catalog::body(r, StatusCode::OK).await;
    let outside: Vec<_> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "order.refunded")
        .map(|e| (e["data"]["amount"].as_i64(), e["data"]["outside_souk"].as_bool()))
        .collect();
    assert_eq!(outside, [(Some(500), Some(true))], "{history}");
    // Stripe tells of Souk's own refunds too: those carry Souk's mark and are not counted again.
    // While one is under way, a refund made in the dashboard waits: the provider is answered
    // an error and delivers it again.
    let r = staff.post(format!("{base}/v1/orders/{id}/refund")).json(&json!({"amount": 300})).send().await;
    assert_eq!(r.expect("refund").status(), StatusCode::ACCEPTED);
    let mark = format!("{id}-refund-2");
    let busy = deliver("evt_d4", "refund.created", refund("re_dash_2", 100, "succeeded", json!({}))).await;
    assert_eq!(busy, StatusCode::SERVICE_UNAVAILABLE);
    order_when(&c, base, &id, "Souk's refund given", |o| o["refunded"] == 800).await;
    assert_eq!(keys_sent(&seen, "/v1/refunds"), [mark.as_str()]);
    let own = refund("re_souk_2", 300, "succeeded", json!({"souk_refund": mark}));
    assert_eq!(deliver("evt_d5", "refund.created", own).await, StatusCode::OK);
    assert_eq!(refunded().await, (Some(800), Some(2)));
    let again = deliver("evt_d6", "refund.created", refund("re_dash_2", 100, "succeeded", json!({}))).await;
    assert_eq!(again, StatusCode::OK);
    assert_eq!(refunded().await, (Some(900), Some(3)));
    // Souk's refund fails at the provider days later: the order is left as it is, and staff
    // are warned, with the order named.
    let failed = json!({"id": "re_souk_2", "object": "refund", "amount": 300, "currency": "eur", "payment_intent": "pi_slowrefund", "status": "failed", "failure_reason": "expired_or_canceled_card", "metadata": {"souk_refund": format!("{id}-refund-2")}});
    assert_eq!(deliver("evt_f1", "refund.failed", failed).await, StatusCode::OK);
    assert_eq!(refunded().await, (Some(900), Some(3)));
    let warning = eventually("the warning logged", Duration::from_secs(10), || async {
        node.log().lines().find(|l| l.contains("a refund failed at the provider")).map(str::to_owned)
    })
    .await;
    assert!(warning.contains(&id) && warning.contains("expired_or_canceled_card"), "{warning}");
    assert_eq!(crate::metric(&http, base, "souk_payment_refunds_failed_total").await, Some(1));
    // More than is left, or a payment that is no order's: answered, and nothing changes.
    let beyond = deliver("evt_d7", "refund.created", refund("re_dash_3", 5000, "succeeded", json!({}))).await;
    assert_eq!(beyond, StatusCode::OK);
    let mut other = refund("re_dash_4", 100, "succeeded", json!({}));
    other["payment_intent"] = json!("pi_not_souk");
    assert_eq!(deliver("evt_d8", "refund.created", other).await, StatusCode::OK);
    assert_eq!(refunded().await, (Some(900), Some(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_shows_on_its_order_from_its_opening_to_its_end() {
    let secret = "whsec_dispute";
    let (nats, node, http, staff, _seen) = stripe_node(&[("SOUK_PAYMENTS_WEBHOOK_SECRET", secret)]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "DISP-LAMP", 5).await;
    let c = customer(&http, base, "chargeback@payments.test").await;
    let id = confirmed_and_listed(&c, &staff, base, ("DISP-LAMP", 1), "pm_card_visa", "pi_123").await;
    let dispute = |status: &str| json!({"id": "dp_1", "object": "dispute", "amount": 1000, "currency": "eur", "payment_intent": "pi_123", "reason": "product_not_received", "status": status, "evidence_details": {"due_by": 1_797_119_999}});
    let deliver = |id: &'static str, kind: &'static str, object: serde_json::Value| {
        let http = http.clone();
        async move { deliver_event(&http, base, secret, id, kind, object).await.status() }
    };
    let shown = || async { order_when(&staff, base, &id, "the order", |_| true).await["dispute"].clone() };
    assert_eq!(shown().await, serde_json::Value::Null, "no dispute yet");

    // The bank opens a dispute: the order shows it to staff, and it is counted for the alert,
    // once however often the provider tells it.
    for evt in ["evt_o1", "evt_o2"] {
        assert_eq!(deliver(evt, "charge.dispute.created", dispute("needs_response")).await, StatusCode::OK);
    }
    assert_eq!(
        shown().await,
        json!({"id": "dp_1", "amount": 1000, "reason": "product_not_received", "status": "open", "due_by": "2026-12-12T23:59:59Z"})
    );
    // Staff are emailed (here, to the node's log), with the deadline, once.
    let emails = || {
        node.log()
            .lines()
            .filter(|l| l.contains("notification (log provider") && l.contains("order_disputed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let email = eventually("the staff's email", Duration::from_secs(20), || async { emails().pop() }).await;
    assert!(email.contains(souk_testkit::ADMIN_EMAIL) && email.contains(&id), "{email}");
    assert!(email.contains("by 2026-12-12T23:59:59Z") && email.contains("dp_1"), "{email}");
    assert_eq!(crate::metric(&http, base, "souk_payment_disputes_total").await, Some(1));
    let disputed = |status: &'static str| {
        let staff = staff.clone();
        async move {
            let page: serde_json::Value =
                souk_testkit::json_at(&staff, format!("{base}/v1/staff/orders?dispute={status}")).await?;
            page["items"].as_array().cloned()
        }
    };
    eventually("the order listed as disputed", Duration::from_secs(10), || async {
        disputed("open").await.filter(|items| items.len() == 1 && items[0]["id"] == id.as_str())
    })
    .await;
    let r = c.get(format!("{base}/v1/orders?dispute=open")).send().await.expect("customer filter");
    assert_eq!(crate::catalog::body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");
    // The shop loses it: the order says so, and a late or repeated event changes nothing.
    assert_eq!(deliver("evt_c1", "charge.dispute.closed", dispute("lost")).await, StatusCode::OK);
    assert_eq!(deliver("evt_c2", "charge.dispute.closed", dispute("lost")).await, StatusCode::OK);
    assert_eq!(deliver("evt_o3", "charge.dispute.created", dispute("needs_response")).await, StatusCode::OK);
    assert_eq!(shown().await["status"], "lost");
    let r = staff.get(format!("{base}/v1/admin/history/order/{id}")).send().await.expect("history");
    let history = crate::catalog::body(r, StatusCode::OK).await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| t.starts_with("order.dispute"))
        .collect();
    assert_eq!(types, ["order.disputed", "order.dispute_closed"], "{history}");
    // A dispute first told once it had ended (won) is shown, and needs no email.
    let other =
        confirmed_and_listed(&c, &staff, base, ("DISP-LAMP", 1), "pm_card_refundFail", "pi_disputed").await;
    let mut won = dispute("won");
    won["id"] = json!("dp_2");
    won["payment_intent"] = json!("pi_disputed");
    assert_eq!(deliver("evt_w1", "charge.dispute.closed", won).await, StatusCode::OK);
    let o = order_when(&staff, base, &other, "the order", |_| true).await;
    assert_eq!((o["dispute"]["id"].as_str(), o["dispute"]["status"].as_str()), (Some("dp_2"), Some("won")));
    crate::all_sent(&nats).await;
    assert_eq!(emails().len(), 1, "{:?}", emails());
    // The staff list (the read model) shows it too; the order is otherwise as it was.
    let listed = eventually("the order listed as lost", Duration::from_secs(10), || async {
        disputed("lost").await?.first().filter(|o| o["dispute"]["status"] == "lost").cloned()
    })
    .await;
    assert_eq!(disputed("open").await, Some(Vec::new()));
    assert_eq!((listed["status"].as_str(), listed["refunded"].as_i64()), (Some("confirmed"), Some(0)));
}
