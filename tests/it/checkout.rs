//! Checkout over HTTP: the cart becomes an order whose saga reserves stock, takes payment and
//! confirms, or cancels with everything given back.

use crate::cart::{PASSWORD, add, customer};
use crate::catalog::{body, create, product, staff_node, staff_node_with};
use futures::StreamExt as _;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use souk_testkit::eventually;
use std::time::Duration;

fn address() -> Value {
    json!({"name": "Ada Lovelace", "line1": "1 Analytical Way", "city": "London", "postal_code": "N1 7AA", "country": "GB"})
}

async fn checkout(c: &Client, base: &str, key: Option<&str>, body: &Value) -> Response {
    let mut r = c.post(format!("{base}/v1/checkout")).json(body);
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.send().await.expect("checkout")
}

/// A checkout body with an address and the sandbox's approving card.
pub(crate) fn approved_checkout() -> Value {
    json!({"shipping_address": {"name": "Ada", "line1": "1 Way", "city": "London", "postal_code": "N1", "country": "GB"}, "payment_method": "pm_card_visa"})
}

/// Adds `qty` of `sku` to the cart, checks out with an approving card under `key`, and waits
/// for the order to be confirmed; returns its id.
pub(crate) async fn confirmed_order(c: &Client, base: &str, sku: &str, qty: i64, key: &str) -> String {
    body(add(c, base, None, sku, qty).await, StatusCode::OK).await;
    let placed = body(
        c.post(format!("{base}/v1/checkout"))
            .header("idempotency-key", key)
            .json(&approved_checkout())
            .send()
            .await
            .expect("checkout"),
        StatusCode::CREATED,
    )
    .await;
    let id = placed["id"].as_str().expect("id").to_owned();
    eventually("the order confirmed", Duration::from_secs(30), || async {
        let o: Value = souk_testkit::json_at(c, format!("{base}/v1/orders/{id}")).await?;
        (o["status"] == "confirmed").then_some(())
    })
    .await;
    id
}

/// Puts `lines` (SKU, quantity) in the cart and checks out with the payment `method` under the
/// idempotency `key`; returns the order id.
pub(crate) async fn place(c: &Client, base: &str, lines: &[(&str, i64)], method: &str, key: &str) -> String {
    for (sku, qty) in lines {
        body(add(c, base, None, sku, *qty).await, StatusCode::OK).await;
    }
    let b = json!({"shipping_address": address(), "payment_method": method});
    let placed = body(checkout(c, base, Some(key), &b).await, StatusCode::CREATED).await;
    placed["id"].as_str().expect("id").to_owned()
}

/// The order as its customer reads it, once `done` holds for it.
pub(crate) async fn order_when(
    c: &Client,
    base: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, Duration::from_secs(30), || async {
        let o: Value = souk_testkit::json_at(c, format!("{base}/v1/orders/{id}")).await?;
        done(&o).then_some(o)
    })
    .await
}

async fn settled(c: &Client, base: &str, id: &str) -> Value {
    eventually("the order to settle", Duration::from_secs(30), || async {
        let o: Value = souk_testkit::json_at(c, format!("{base}/v1/orders/{id}")).await?;
        matches!(o["status"].as_str(), Some("confirmed" | "cancelled")).then_some(o)
    })
    .await
}

async fn stock(staff: &Client, base: &str, sku: &str) -> Value {
    body(staff.get(format!("{base}/v1/inventory/{sku}")).send().await.expect("stock"), StatusCode::OK).await
}

/// A stock item's `(on_hand, reserved)`.
pub(crate) async fn on_hand_and_reserved(
    staff: &Client,
    base: &str,
    sku: &str,
) -> (Option<u64>, Option<u64>) {
    let s = stock(staff, base, sku).await;
    (s["on_hand"].as_u64(), s["reserved"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_confirms_or_cancels_with_stock_given_back_and_retries_make_one_order() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    let r = create(&staff, base, &product("lamp", "Desk lamp", "", "LAMP-1", 4500, "active")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r =
        staff.post(format!("{base}/v1/inventory/LAMP-1/restock")).json(&json!({"quantity": 10})).send().await;
    assert_eq!(r.expect("restock").status(), StatusCode::OK);
    eventually("the lamp on sale", Duration::from_secs(10), || async {
        let r = http.get(format!("{base}/v1/products/lamp")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let ada = customer(&http, base, "ada@checkout.test").await;

    // Bad input changes nothing: no order, the cart as it was.
    let good = json!({"shipping_address": address(), "payment_method": "pm_card_visa"});
    let p = body(checkout(&ada, base, Some("k-empty"), &good).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["code"], "invalid_input", "an empty cart: {p}");
    body(add(&ada, base, None, "LAMP-1", 2).await, StatusCode::OK).await;
    let mut no_country = good.clone();
    no_country["shipping_address"]["country"] = json!("Britain");
    let mut card_number = good.clone();
    card_number["payment_method"] = json!("4242424242424242");
    let mut misspelt = good.clone();
    misspelt["shipping_address"]["postcode"] = json!("N1 7AA");
    for (key, b) in [
        (None, &good),
        (Some("k-bad"), &no_country),
        (Some("k-bad"), &card_number),
        (Some("k-bad"), &misspelt),
    ] {
        let r = checkout(&ada, base, key, b).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{key:?} {b}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = ada
        .post(format!("{base}/v1/checkout"))
        .header("idempotency-key", "k-x")
        .json(&json!({"payment_method": "pm_card_visa"}))
        .send()
        .await;
    assert_eq!(r.expect("checkout").status(), StatusCode::UNPROCESSABLE_ENTITY);
    let cart: Value =
        ada.get(format!("{base}/v1/cart")).send().await.expect("cart").json().await.expect("json");
    assert_eq!(cart["item_count"], 2, "the cart is untouched");

    // The happy path: placed (201), then confirmed; the stock is sold; the cart is empty.
    let placed = body(checkout(&ada, base, Some("k-1"), &good).await, StatusCode::CREATED).await;
    let id = placed["id"].as_str().expect("id").to_owned();
    assert_eq!((placed["total"].as_i64(), placed["status"].as_str()), (Some(9000), Some("pending")));
    assert!(placed.get("payment_method").is_none() && placed.get("payment").is_none());
    let done = settled(&ada, base, &id).await;
    assert_eq!(done["status"], "confirmed", "{done}");
    assert_eq!(on_hand_and_reserved(&staff, base, "LAMP-1").await, (Some(8), Some(0)));
    let cart: Value =
        ada.get(format!("{base}/v1/cart")).send().await.expect("cart").json().await.expect("json");
    assert_eq!(cart["item_count"], 0);

    // A retry with the same key and body is the same order; another body under it is refused.
    let again = body(checkout(&ada, base, Some("k-1"), &good).await, StatusCode::OK).await;
    assert_eq!(again["id"], id.as_str());
    let mut other = good.clone();
    other["shipping_address"]["city"] = json!("Paris");
    let p = body(checkout(&ada, base, Some("k-1"), &other).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["code"], "idempotency_key_reused");

    // Another customer cannot see it.
    let bob = customer(&http, base, "bob@checkout.test").await;
    let r = bob.get(format!("{base}/v1/orders/{id}")).send().await.expect("get");
    assert_eq!(body(r, StatusCode::NOT_FOUND).await["code"], "unknown_order");

    // Each failing sandbox card ends the order cancelled with its stock back.
    for (card, reason) in [
        ("pm_card_chargeDeclined", "payment_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_gatewayError", "payment_failed"),
    ] {
        body(add(&ada, base, None, "LAMP-1", 3).await, StatusCode::OK).await;
        let b = json!({"shipping_address": address(), "payment_method": card});
        let placed = body(checkout(&ada, base, Some(card), &b).await, StatusCode::CREATED).await;
        let done = settled(&ada, base, placed["id"].as_str().expect("id")).await;
        assert_eq!(
            (done["status"].as_str(), done["cancel_reason"].as_str()),
            (Some("cancelled"), Some(reason)),
            "{card}"
        );
        assert_eq!(
            on_hand_and_reserved(&staff, base, "LAMP-1").await,
            (Some(8), Some(0)),
            "{card}: stock back"
        );
    }

    // More than there is: cancelled as out of stock, nothing held.
    body(add(&ada, base, None, "LAMP-1", 9).await, StatusCode::OK).await;
    let placed = body(checkout(&ada, base, Some("k-big"), &good).await, StatusCode::CREATED).await;
    let done = settled(&ada, base, placed["id"].as_str().expect("id")).await;
    assert_eq!(done["cancel_reason"], "out_of_stock");
    assert_eq!(stock(&staff, base, "LAMP-1").await["reserved"], 0);
}

/// A lamp with `stock` units on sale, created through `staff` at `base`, visible at `shop`.
pub(crate) async fn lamp_on_sale(staff: &Client, base: &str, shop: &str, sku: &str, stock: i64) {
    let slug = sku.to_lowercase();
    let r = create(staff, base, &product(&slug, "Hot lamp", "", sku, 1000, "active")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = staff
        .post(format!("{base}/v1/inventory/{sku}/restock"))
        .json(&json!({"quantity": stock}))
        .send()
        .await;
    assert_eq!(r.expect("restock").status(), StatusCode::OK);
    let http = Client::new();
    eventually("the lamp on sale", Duration::from_secs(10), || async {
        let r = http.get(format!("{shop}/v1/products/{slug}")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_checkouts_of_a_hundred_units_through_two_nodes_confirm_exactly_a_hundred() {
    let nats = souk_testkit::NatsServer::start();
    let a = souk_testkit::SoukNode::start(crate::bin(), nats.url(), &[]).expect("node a");
    let b = souk_testkit::SoukNode::start(crate::bin(), nats.url(), &[]).expect("node b");
    let http = Client::new();
    crate::ready(&http, &a).await;
    crate::ready(&http, &b).await;
    let staff = souk_testkit::admin_http(a.url()).await;
    lamp_on_sale(&staff, a.url(), b.url(), "HOT-LAMP", 100).await;

    let orders = futures::stream::iter(0..300)
        .map(|i| {
            let (http, base) = (http.clone(), if i % 2 == 0 { a.url() } else { b.url() }.to_owned());
            async move {
                let c = customer(&http, &base, &format!("hot{i}@checkout.test")).await;
                body(add(&c, &base, None, "HOT-LAMP", 1).await, StatusCode::OK).await;
                let b = json!({"shipping_address": address(), "payment_method": "pm_card_visa"});
                let placed = body(checkout(&c, &base, Some("hot"), &b).await, StatusCode::CREATED).await;
                (c, base, placed["id"].as_str().expect("id").to_owned())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut confirmed = 0;
    for (c, base, id) in &orders {
        let o = settled(c, base, id).await;
        match (o["status"].as_str(), o["cancel_reason"].as_str()) {
            (Some("confirmed"), _) => confirmed += 1,
            (Some("cancelled"), Some("out_of_stock")) => {}
            other => panic!("order {id} ended {other:?}"),
        }
    }
    assert_eq!(confirmed, 100, "exactly the stock is sold");
    let s = stock(&staff, a.url(), "HOT-LAMP").await;
    assert_eq!(
        (s["on_hand"].as_u64(), s["reserved"].as_u64(), s["available"].as_u64()),
        (Some(0), Some(0), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_node_is_killed_mid_payment_finishes_on_the_other_node_once() {
    let nats = souk_testkit::NatsServer::start();
    // Node a waits long for the slow provider; it is alone when the payments start, so every
    // saga step is running on it when it is killed.
    let mut a = souk_testkit::SoukNode::start(crate::bin(), nats.url(), &[("SOUK_PAYMENT_TIMEOUT", "60s")])
        .expect("node a");
    let http = Client::new();
    crate::ready(&http, &a).await;
    let staff = souk_testkit::admin_http(a.url()).await;
    lamp_on_sale(&staff, a.url(), a.url(), "SLOW-LAMP", 5).await;
    let c = customer(&http, a.url(), "slow@checkout.test").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        body(add(&c, a.url(), None, "SLOW-LAMP", 1).await, StatusCode::OK).await;
        let b = json!({"shipping_address": address(), "payment_method": "pm_card_slow"});
        let placed =
            body(checkout(&c, a.url(), Some(&format!("slow-{i}")), &b).await, StatusCode::CREATED).await;
        ids.push(placed["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        eventually("the stock held and the payment under way", Duration::from_secs(20), || async {
            let o: Value = souk_testkit::json_at(&c, format!("{}/v1/orders/{id}", a.url())).await?;
            (o["status"] == "reserved").then_some(())
        })
        .await;
    }
    let b = souk_testkit::SoukNode::start(crate::bin(), nats.url(), &[]).expect("node b");
    crate::ready(&http, &b).await;
    a.kill();

    // Node b takes the steps over once their ack wait passes; its payment deadline (2 s) ends
    // each saga cancelled, once (placed, reserved, cancelled: version 3), stock given back.
    for id in &ids {
        let o = eventually("the saga to finish on the survivor", Duration::from_secs(60), || async {
            let o: Value = souk_testkit::json_at(&c, format!("{}/v1/orders/{id}", b.url())).await?;
            (o["status"] == "cancelled").then_some(o)
        })
        .await;
        assert_eq!(
            (o["cancel_reason"].as_str(), o["version"].as_u64()),
            (Some("payment_failed"), Some(3)),
            "{o}"
        );
    }
    assert_eq!(on_hand_and_reserved(&staff, b.url(), "SLOW-LAMP").await, (Some(5), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorisation_that_answers_too_late_is_voided_after_the_order_is_cancelled() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "LATE-LAMP", 5).await;
    let c = customer(&http, base, "late@checkout.test").await;
    body(add(&c, base, None, "LATE-LAMP", 2).await, StatusCode::OK).await;
    // The sandbox answers this card's first authorisation only after a minute, far past the
    // node's payment deadline (2 s), and at once when asked again under the same key.
    let b = json!({"shipping_address": address(), "payment_method": "pm_card_slowOnce"});
    let placed = body(checkout(&c, base, Some("late-1"), &b).await, StatusCode::CREATED).await;
    let id = placed["id"].as_str().expect("id").to_owned();
    // Cancelled for the missing answer, then the hold the late authorisation left is voided:
    // placed, reserved, cancelled, payment_voided.
    let o = eventually("the late authorisation voided", Duration::from_secs(30), || async {
        let o: Value = souk_testkit::json_at(&c, format!("{base}/v1/orders/{id}")).await?;
        (o["version"] == 4).then_some(o)
    })
    .await;
    assert_eq!(
        (o["status"].as_str(), o["cancel_reason"].as_str()),
        (Some("cancelled"), Some("payment_failed"))
    );
    assert_eq!(o.get("payment_unsettled"), None, "{o}");
    assert_eq!(on_hand_and_reserved(&staff, base, "LATE-LAMP").await, (Some(5), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_provider_refuses_is_recorded_and_the_order_stays_as_it_was() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "STUCK-LAMP", 10).await;
    let c = customer(&http, base, "refused@checkout.test").await;
    // The sandbox approves this card and refuses every refund of it.
    let id = place(&c, base, &[("STUCK-LAMP", 2)], "pm_card_refundFail", "refused-1").await;
    assert_eq!(settled(&c, base, &id).await["status"], "confirmed");

    // The customer's cancellation needs the money back; the provider refuses, so the order
    // stays confirmed with its lamps sold, and the customer can see it did not happen.
    let r = c.post(format!("{base}/v1/orders/{id}/cancel")).send().await.expect("cancel");
    assert_eq!(body(r, StatusCode::ACCEPTED).await["cancel_requested"], "customer_request");
    let o = order_when(&c, base, &id, "the cancellation refused", |o| o["cancels_refused"] == 1).await;
    assert_eq!(
        (o["status"].as_str(), o.get("cancel_requested"), o["refunded"].as_i64()),
        (Some("confirmed"), None, Some(0))
    );
    assert_eq!(on_hand_and_reserved(&staff, base, "STUCK-LAMP").await, (Some(8), Some(0)));

    // A refund refused gives nothing back and leaves the order refundable: staff ask again.
    let refund = || staff.post(format!("{base}/v1/orders/{id}/refund")).json(&json!({})).send();
    for refused in 1..=2 {
        let asked = body(refund().await.expect("refund"), StatusCode::ACCEPTED).await;
        assert_eq!(
            (asked["refund_pending"].as_i64(), asked["refunds"].as_i64()),
            (Some(2000), Some(refused))
        );
        let o = order_when(&c, base, &id, "the refund refused", |o| o["refunds_refused"] == refused).await;
        assert_eq!(
            (o["status"].as_str(), o.get("refund_pending"), o["refunded"].as_i64()),
            (Some("confirmed"), None, Some(0))
        );
    }
    // Counted once each refusal is recorded, so a moment after the order shows it.
    eventually("three refusals counted", Duration::from_secs(10), || async {
        (crate::metric(&http, base, "souk_payment_refunds_refused_total").await? == 3).then_some(())
    })
    .await;
    // Each refusal is one event in the order's history, and nothing was refunded or cancelled.
    let r = staff.get(format!("{base}/v1/admin/history/order/{id}")).send().await.expect("history");
    let history: Vec<String> = body(r, StatusCode::OK).await["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    let count = |t: &str| history.iter().filter(|h| *h == t).count();
    assert_eq!(
        [
            count("order.cancel_refused"),
            count("order.refund_refused"),
            count("order.refunded"),
            count("order.cancelled")
        ],
        [1, 2, 0, 0],
        "{history:?}"
    );

    // Staff settle it outside Souk (the customer disputed the payment, say): cancelled with
    // the lamps back, and the provider not asked again. A customer may not do that.
    let cancel = |who: &Client, b: Value| who.post(format!("{base}/v1/orders/{id}/cancel")).json(&b).send();
    let r = cancel(&c, json!({"without_refund": true})).await.expect("customer");
    assert_eq!(body(r, StatusCode::FORBIDDEN).await["code"], "forbidden");
    let r =
        cancel(&staff, json!({"without_refund": true, "reason": "dispute"})).await.expect("unknown field");
    assert_eq!(body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_body");
    let unchanged = order_when(&c, base, &id, "the order as it was", |_| true).await;
    assert_eq!((unchanged["status"].as_str(), unchanged.get("cancel_requested")), (Some("confirmed"), None));
    // Part was given back in the provider's dashboard: staff record it, and it is done; the
    // form sent twice records it once.
    let record = |amount: i64, key: Option<&'static str>| {
        let mut r = staff.post(format!("{base}/v1/orders/{id}/refund"));
        if let Some(key) = key {
            r = r.header("Idempotency-Key", key);
        }
        r.json(&json!({"amount": amount, "outside_souk": true})).send()
    };
    for _ in 0..2 {
        let recorded =
            body(record(500, Some("dashboard-500")).await.expect("recorded"), StatusCode::OK).await;
        assert_eq!(
            (recorded["status"].as_str(), recorded["refunded"].as_i64(), recorded.get("refund_pending")),
            (Some("confirmed"), Some(500), None)
        );
    }
    let r = cancel(&staff, json!({"without_refund": true})).await.expect("staff");
    assert_eq!(body(r, StatusCode::ACCEPTED).await["cancel_without_refund"], true);
    let o = order_when(&c, base, &id, "the order cancelled", |o| o["status"] == "cancelled").await;
    assert_eq!(
        (o["cancel_reason"].as_str(), o["refunded"].as_i64(), o.get("cancel_without_refund")),
        (Some("staff_request"), Some(500), None),
        "{o}"
    );
    assert_eq!(on_hand_and_reserved(&staff, base, "STUCK-LAMP").await, (Some(10), Some(0)));
    // The rest given back elsewhere after the cancellation (the dispute lost, say) is recorded
    // on the cancelled order too.
    let after = body(record(1500, None).await.expect("recorded after"), StatusCode::OK).await;
    assert_eq!((after["status"].as_str(), after["refunded"].as_i64()), (Some("cancelled"), Some(2000)));
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("souk_payment_refunds_refused_total 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_lapses_during_the_payment_cancels_the_order_refunds_it_and_sells_nothing() {
    // Holds lapse after a second; the sandbox approves this card after three.
    let (_nats, node, http, staff) =
        staff_node_with(&[("SOUK_RESERVATION_TTL", "1s"), ("SOUK_PAYMENT_TIMEOUT", "10s")]).await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "LAPSE-A", 5).await;
    lamp_on_sale(&staff, base, base, "LAPSE-B", 5).await;
    let c = customer(&http, base, "lapse@checkout.test").await;
    body(add(&c, base, None, "LAPSE-A", 2).await, StatusCode::OK).await;
    body(add(&c, base, None, "LAPSE-B", 1).await, StatusCode::OK).await;
    let b = json!({"shipping_address": address(), "payment_method": "pm_card_slowApprove"});
    let placed = body(checkout(&c, base, Some("lapse-1"), &b).await, StatusCode::CREATED).await;
    let done = settled(&c, base, placed["id"].as_str().expect("id")).await;
    assert_eq!(
        (done["status"].as_str(), done["cancel_reason"].as_str(), done["refunded"].as_i64()),
        (Some("cancelled"), Some("reservation_lapsed"), done["total"].as_i64()),
        "{done}"
    );
    // Nothing was sold and nothing is held: every unit is where it was.
    for sku in ["LAPSE-A", "LAPSE-B"] {
        assert_eq!(on_hand_and_reserved(&staff, base, sku).await, (Some(5), Some(0)), "{sku}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_ship_deliver_refund_and_cancel_with_money_and_stock_given_back() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "LIFE-LAMP", 10).await;
    let c = customer(&http, base, "life@checkout.test").await;
    let order = |key: &'static str| {
        let c = c.clone();
        async move {
            body(add(&c, base, None, "LIFE-LAMP", 2).await, StatusCode::OK).await;
            let b = json!({"shipping_address": address(), "payment_method": "pm_card_visa"});
            let placed = body(checkout(&c, base, Some(key), &b).await, StatusCode::CREATED).await;
            let id = placed["id"].as_str().expect("id").to_owned();
            assert_eq!(settled(&c, base, &id).await["status"], "confirmed");
            id
        }
    };
    let wait_for = |id: String, what: &'static str, check: fn(&Value) -> bool| {
        let c = c.clone();
        async move {
            eventually(what, Duration::from_secs(20), || async {
                let o: Value = souk_testkit::json_at(&c, format!("{base}/v1/orders/{id}")).await?;
                check(&o).then_some(o)
            })
            .await
        }
    };

    // A customer cancels a confirmed order: money back, the two lamps back on hand.
    let first = order("life-1").await;
    assert_eq!(stock(&staff, base, "LIFE-LAMP").await["on_hand"], 8);
    let r = c.post(format!("{base}/v1/orders/{first}/cancel")).send().await.expect("cancel");
    assert_eq!(body(r, StatusCode::ACCEPTED).await["cancel_requested"], "customer_request");
    let o = wait_for(first.clone(), "the cancellation", |o| o["status"] == "cancelled").await;
    assert_eq!((o["cancel_reason"].as_str(), o["refunded"].as_i64()), (Some("customer_request"), Some(2000)));
    assert_eq!(stock(&staff, base, "LIFE-LAMP").await["on_hand"], 10);
    let r = c.post(format!("{base}/v1/orders/{first}/cancel")).send().await.expect("cancel again");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "cancelling twice is cancelling once");

    // Shipped orders are not cancelled but refunded, in parts, never beyond what was paid.
    let second = order("life-2").await;
    let r = c.post(format!("{base}/v1/orders/{second}/ship")).json(&json!({"tracking": "X"})).send().await;
    assert_eq!(r.expect("ship").status(), StatusCode::FORBIDDEN, "customers do not ship");
    let r = staff.post(format!("{base}/v1/orders/{second}/ship")).json(&json!({"tracking": ""})).send().await;
    assert_eq!(r.expect("ship").status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = staff
        .post(format!("{base}/v1/orders/{second}/ship"))
        .json(&json!({"tracking": "1Z999"}))
        .send()
        .await;
    let shipped = body(r.expect("ship"), StatusCode::OK).await;
    assert_eq!((shipped["status"].as_str(), shipped["tracking"].as_str()), (Some("shipped"), Some("1Z999")));
    let r = c.post(format!("{base}/v1/orders/{second}/cancel")).send().await.expect("cancel");
    assert_eq!(body(r, StatusCode::CONFLICT).await["code"], "order_conflict");
    let r = staff.post(format!("{base}/v1/orders/{second}/deliver")).send().await.expect("deliver");
    assert_eq!(body(r, StatusCode::OK).await["status"], "delivered");

    let refund = |amount: Value| staff.post(format!("{base}/v1/orders/{second}/refund")).json(&amount).send();
    assert_eq!(
        refund(json!({"amount": 2001})).await.expect("refund").status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        refund(json!({"amount": 0})).await.expect("refund").status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // With an Idempotency-Key, the same refund sent again (a double click, a retry after a
    // lost answer) gives nothing more back, while under way and after.
    let keyed = |key: &'static str, b: Value| {
        staff.post(format!("{base}/v1/orders/{second}/refund")).header("Idempotency-Key", key).json(&b).send()
    };
    for _ in 0..2 {
        assert_eq!(
            keyed("part-1", json!({"amount": 500})).await.expect("refund").status(),
            StatusCode::ACCEPTED
        );
    }
    let o = wait_for(second.clone(), "the partial refund", |o| {
        o["refunded"] == 500 && o.get("refund_pending").is_none()
    })
    .await;
    assert_eq!(o["status"], "delivered");
    let again =
        body(keyed("part-1", json!({"amount": 500})).await.expect("refund"), StatusCode::ACCEPTED).await;
    assert_eq!((again["refunded"].as_i64(), again["refunds"].as_i64()), (Some(500), Some(1)), "{again}");
    let r = keyed("part-1", json!({"amount": 400})).await.expect("refund");
    assert_eq!(body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "idempotency_key_reused");
    let r = keyed("two words", json!({"amount": 400})).await.expect("refund");
    assert_eq!(body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");
    assert_eq!(refund(json!({})).await.expect("refund").status(), StatusCode::ACCEPTED);
    let o = wait_for(second.clone(), "the full refund", |o| o["status"] == "refunded").await;
    assert_eq!(o["refunded"], 2000);
    let r = refund(json!({"amount": 1})).await.expect("refund");
    assert_eq!(body(r, StatusCode::CONFLICT).await["code"], "order_conflict", "nothing left to refund");

    // The customer's order list (from the read model), newest first, in pages.
    let listed = eventually("both orders listed as they are now", Duration::from_secs(20), || async {
        let page: Value = souk_testkit::json_at(&c, format!("{base}/v1/orders")).await?;
        let statuses: Vec<&str> =
            page["items"].as_array()?.iter().filter_map(|o| o["status"].as_str()).collect();
        (statuses == ["refunded", "cancelled"]).then_some(page)
    })
    .await;
    assert_eq!(listed["items"][0]["id"], second.as_str());
    // Each order says when it reached each status, the same in the list as from the order.
    let timeline = |o: &Value| -> Vec<String> {
        o["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .map(|c| c["status"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let refunded = &listed["items"][0];
    assert_eq!(
        timeline(refunded),
        ["pending", "reserved", "paid", "confirmed", "shipped", "delivered", "refunded"]
    );
    let at = |c: &Value| {
        time::OffsetDateTime::parse(
            c["at"].as_str().expect("at"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339")
    };
    let times: Vec<_> = refunded["timeline"].as_array().expect("timeline").iter().map(at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order: {refunded}");
    assert_eq!(refunded["placed_at"], refunded["timeline"][0]["at"]);
    assert_eq!(refunded["updated_at"], refunded["timeline"][6]["at"]);
    let direct =
        body(c.get(format!("{base}/v1/orders/{second}")).send().await.expect("order"), StatusCode::OK).await;
    assert_eq!((&direct["placed_at"], &direct["timeline"]), (&refunded["placed_at"], &refunded["timeline"]));
    assert_eq!(timeline(&listed["items"][1]), ["pending", "reserved", "paid", "confirmed", "cancelled"]);
    // Orders placed in a span of time: from the second one's placement on, and before it.
    let placed = refunded["placed_at"].as_str().expect("placed_at");
    let ids = |page: Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|o| o["id"].as_str().map(str::to_owned))
            .collect()
    };
    for (list, client) in [("orders", &c), ("staff/orders", &staff)] {
        let span = |q: &str| client.get(format!("{base}/v1/{list}")).query(&[(q, placed)]).send();
        assert_eq!(
            ids(body(span("since").await.expect("since"), StatusCode::OK).await),
            std::slice::from_ref(&second)
        );
        assert_eq!(
            ids(body(span("until").await.expect("until"), StatusCode::OK).await),
            std::slice::from_ref(&first)
        );
    }
    let r = c.get(format!("{base}/v1/orders?since=yesterday")).send().await.expect("since");
    assert_eq!(body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");
    let first_page =
        body(c.get(format!("{base}/v1/orders?limit=1")).send().await.expect("page"), StatusCode::OK).await;
    let next = first_page["next"].as_str().expect("next");
    let second_page = body(
        c.get(format!("{base}/v1/orders?limit=1&after={next}")).send().await.expect("page"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(second_page["items"][0]["id"], first.as_str());
    // A blank parameter, as forms send one, counts as absent.
    let blank = body(
        c.get(format!("{base}/v1/orders?limit=1&after=&status=")).send().await.expect("page"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(blank, first_page);
    // A cursor the list never handed out is refused, not read as the first page again.
    let r = c.get(format!("{base}/v1/orders?limit=1&after=yesterday")).send().await.expect("page");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.expect("problem")["code"], "invalid_input");
    let r = c.get(format!("{base}/v1/orders?customer=usr-x")).send().await.expect("list");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = c.get(format!("{base}/v1/staff/orders")).send().await.expect("list");
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "customers see only their own");
    let other = customer(&http, base, "other@checkout.test").await;
    let page = body(other.get(format!("{base}/v1/orders")).send().await.expect("list"), StatusCode::OK).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0));
    let r = other.post(format!("{base}/v1/orders/{second}/cancel")).send().await.expect("cancel");
    assert_eq!(
        body(r, StatusCode::NOT_FOUND).await["code"],
        "unknown_order",
        "nobody cancels another's order"
    );

    // Staff find every order, by status.
    let page = body(
        staff.get(format!("{base}/v1/staff/orders?status=refunded")).send().await.expect("list"),
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> =
        page["items"].as_array().expect("items").iter().filter_map(|o| o["id"].as_str()).collect();
    assert_eq!(ids, [second.as_str()]);
}

/// A WebSocket to `/v1/ws`, authenticated with `token`.
async fn socket(base: &str, token: &str) -> Ws {
    let url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");
    send(&mut ws, json!({"type": "auth", "token": token})).await;
    assert_eq!(next(&mut ws).await["type"], "ready");
    ws
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, v: Value) {
    use futures::SinkExt as _;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(v.to_string().into())).await.expect("send");
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("a message in time");
        match msg.expect("open").expect("frame") {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                return serde_json::from_str(&t).expect("json");
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => return json!({"type": "closed"}),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_status_comes_once_in_order_over_websocket_and_sse_and_resumes_after_a_reconnect() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    lamp_on_sale(&staff, base, base, "LIVE-LAMP", 5).await;
    let c = customer(&http, base, "live@checkout.test").await;
    let token = souk_testkit::access_token(base, "live@checkout.test", PASSWORD).await;
    body(add(&c, base, None, "LIVE-LAMP", 1).await, StatusCode::OK).await;
    let b = json!({"shipping_address": address(), "payment_method": "pm_card_visa"});
    let placed = body(checkout(&c, base, Some("live"), &b).await, StatusCode::CREATED).await;
    let id = placed["id"].as_str().expect("id").to_owned();

    // Every event once, in order, from `pending` to `confirmed`.
    let mut ws = socket(base, &token).await;
    send(&mut ws, json!({"type": "subscribe", "order": id, "after": 0})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let mut seen = Vec::new();
    while seen.last().map(|u: &Value| u["status"].clone()) != Some(json!("confirmed")) {
        let u = next(&mut ws).await;
        assert_eq!((u["type"].as_str(), u["order"].as_str()), (Some("update"), Some(id.as_str())), "{u}");
        seen.push(u);
    }
    let versions: Vec<u64> = seen.iter().filter_map(|u| u["version"].as_u64()).collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>(), "once each, in order");
    assert_eq!(seen[0]["status"], "pending");

    // A reconnect after version 3 gets what it missed, and only that.
    drop(ws);
    let mut ws = socket(base, &token).await;
    send(&mut ws, json!({"type": "subscribe", "order": id, "after": 3})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let missed: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 3..versions.len() {
            v.push(next(&mut ws).await["version"].as_u64().expect("version"));
        }
        v
    };
    assert_eq!(missed, (4..=versions.len() as u64).collect::<Vec<_>>());

    // Unsubscribed, the socket hears nothing more of the order: its shipping reaches only the
    // subscription taken after it.
    send(&mut ws, json!({"type": "unsubscribe", "order": id})).await;
    assert_eq!(next(&mut ws).await, json!({"type": "unsubscribed", "order": id}));
    let r =
        staff.post(format!("{base}/v1/orders/{id}/ship")).json(&json!({"tracking": "LIVE-1"})).send().await;
    assert_eq!(r.expect("ship").status(), StatusCode::OK);
    let shipped_version = versions.len() as u64 + 1;
    send(&mut ws, json!({"type": "subscribe", "order": id, "after": versions.len()})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed", "nothing from the ended subscription");
    let u = next(&mut ws).await;
    assert_eq!(
        (u["status"].as_str(), u["version"].as_u64()),
        (Some("shipped"), Some(shipped_version)),
        "{u}"
    );

    // Watching costs the server nothing per client: far more subscriptions than a stream
    // takes consumers (1,000) come and go, and the socket still follows the order.
    for _ in 0..1_100 {
        send(&mut ws, json!({"type": "subscribe", "order": id, "after": shipped_version})).await;
        assert_eq!(next(&mut ws).await["type"], "subscribed");
        send(&mut ws, json!({"type": "unsubscribe", "order": id})).await;
        assert_eq!(next(&mut ws).await["type"], "unsubscribed");
    }
    send(&mut ws, json!({"type": "subscribe", "order": id, "after": shipped_version - 1})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    assert_eq!(next(&mut ws).await["version"], shipped_version);
    // Operators see the subscriptions a node holds, and each one let go of.
    let watchers = |n: i64| {
        let (http, base) = (http.clone(), base.to_owned());
        async move { (crate::metric(&http, &base, "souk_live_watchers").await? == n).then_some(()) }
    };
    eventually("one live subscription", Duration::from_secs(10), || watchers(1)).await;
    send(&mut ws, json!({"type": "unsubscribe", "order": id})).await;
    assert_eq!(next(&mut ws).await["type"], "unsubscribed");
    eventually("no live subscription", Duration::from_secs(10), || watchers(0)).await;

    // Nobody else's orders; every order only for staff; no socket without a valid token.
    send(&mut ws, json!({"type": "subscribe_all"})).await;
    assert_eq!(next(&mut ws).await["code"], "forbidden");
    let other = customer(&http, base, "peeker@checkout.test").await;
    drop(other);
    let peeker = souk_testkit::access_token(base, "peeker@checkout.test", PASSWORD).await;
    let mut theirs = socket(base, &peeker).await;
    send(&mut theirs, json!({"type": "subscribe", "order": id})).await;
    assert_eq!(next(&mut theirs).await["code"], "unknown_order");
    let url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let (mut anon, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");
    send(&mut anon, json!({"type": "auth", "token": "not a token"})).await;
    assert_eq!(next(&mut anon).await["code"], "unauthorized");
    // A plain GET is no handshake: refused like any bad request, as problem+json.
    let r = c.get(format!("{base}/v1/ws")).send().await.expect("plain get");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.json::<Value>().await.expect("problem")["code"], "invalid_input");

    // Server-Sent Events resume after Last-Event-ID.
    let r = c
        .get(format!("{base}/v1/orders/{id}/events"))
        .header("last-event-id", "4")
        .send()
        .await
        .expect("sse");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body_stream = r.bytes_stream();
    let mut text = String::new();
    while !text.contains(&format!("id: {}", versions.len())) {
        let chunk =
            tokio::time::timeout(Duration::from_secs(20), body_stream.next()).await.expect("sse in time");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("open").expect("chunk")));
    }
    assert!(!text.contains("id: 4\n") && !text.contains("id: 1\n"), "only what came after: {text}");
    assert!(text.contains("event: order"));
}

/// Open live streams must not hold a stopping node: each ends (the socket with a close frame,
/// Server-Sent Events with the end of the body) and the node exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_ends_its_live_streams_and_exits_0() {
    let (_nats, mut node, http, staff) = staff_node().await;
    let base = node.url().to_owned();
    lamp_on_sale(&staff, &base, &base, "STOP-LAMP", 5).await;
    let c = customer(&http, &base, "stop@checkout.test").await;
    let token = souk_testkit::access_token(&base, "stop@checkout.test", PASSWORD).await;
    let id = confirmed_order(&c, &base, "STOP-LAMP", 1, "stop").await;

    let mut ws = socket(&base, &token).await;
    send(&mut ws, json!({"type": "subscribe", "order": id, "after": 0})).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let sse = c.get(format!("{base}/v1/orders/{id}/events")).send().await.expect("sse");
    assert_eq!(sse.status(), StatusCode::OK);
    let mut sse = sse.bytes_stream();
    assert!(sse.next().await.is_some(), "the stream has begun");

    let stopped = tokio::task::spawn_blocking(move || node.stop()).await.expect("join");
    assert!(stopped.expect("stopped within 30 s of SIGTERM"), "SIGTERM should exit 0");
    // What the streams said before the node went: the socket a close, SSE the body's end.
    let mut closed = false;
    while let Some(Ok(msg)) = ws.next().await {
        closed |= matches!(msg, tokio_tungstenite::tungstenite::Message::Close(_));
    }
    assert!(closed, "the socket was closed by the node, not cut");
    while let Some(chunk) = sse.next().await {
        assert!(chunk.is_ok(), "the event stream ended cleanly: {chunk:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_records_who_made_it_and_admins_read_the_trail() {
    let (_nats, node, http, admin) = staff_node().await;
    let base = node.url();
    lamp_on_sale(&admin, base, base, "AUDIT-LAMP", 5).await;
    let ada = customer(&http, base, "audited@checkout.test").await;
    let id_of = |c: Client| async move {
        body(c.get(format!("{base}/v1/me")).send().await.expect("me"), StatusCode::OK).await["id"].clone()
    };
    let (ada_id, admin_id) = (id_of(ada.clone()).await, id_of(admin.clone()).await);
    let order = confirmed_order(&ada, base, "AUDIT-LAMP", 1, "audit-1").await;
    let r = admin
        .post(format!("{base}/v1/orders/{order}/ship"))
        .json(&json!({"tracking": "TRACK-1"}))
        .send()
        .await;
    body(r.expect("ship"), StatusCode::OK).await;

    let trail = |kind: &str, id: &str| {
        let url = format!("{base}/v1/admin/history/{kind}/{id}");
        let admin = admin.clone();
        async move {
            body(admin.get(url).send().await.expect("history"), StatusCode::OK).await["events"]
                .as_array()
                .expect("events")
                .clone()
        }
    };
    let actors: Vec<(String, Value)> = trail("order", &order)
        .await
        .iter()
        .map(|e| {
            (e["type"].as_str().expect("type").to_owned(), e.get("actor").cloned().unwrap_or(Value::Null))
        })
        .collect();
    // The customer placed it, the saga (Souk itself) took it to confirmed, the admin shipped it.
    assert_eq!(actors.first(), Some(&("order.placed".to_owned(), ada_id.clone())), "{actors:?}");
    assert_eq!(actors.last(), Some(&("order.shipped".to_owned(), admin_id.clone())), "{actors:?}");
    let saga: Vec<_> = actors.iter().filter(|(t, _)| t == "order.confirmed" || t == "order.paid").collect();
    assert!(!saga.is_empty() && saga.iter().all(|(_, a)| a.is_null()), "{actors:?}");
    let stock = trail("stock", "AUDIT-LAMP").await;
    // Tracked because the admin created the product, and restocked by them. Tracking follows
    // the product's creation on its own, so the restock may come first.
    let mut by: Vec<_> = stock.iter().take(2).map(|e| (e["type"].clone(), e["actor"].clone())).collect();
    by.sort_by_key(|(t, _)| t.to_string());
    assert_eq!(
        by,
        [(json!("stock.restocked"), admin_id.clone()), (json!("stock.tracked"), admin_id.clone())]
    );

    // A reset requested anonymously has no actor, and its token is not shown.
    let r = http
        .post(format!("{base}/v1/auth/password-reset"))
        .json(&json!({"email": "audited@checkout.test"}))
        .send();
    assert_eq!(r.await.expect("reset").status(), StatusCode::ACCEPTED);
    let user = ada_id.as_str().expect("id");
    let reset = eventually("the reset in the account's history", Duration::from_secs(10), || async {
        trail("user", user).await.into_iter().find(|e| e["type"] == "user.password_reset_requested")
    })
    .await;
    assert!(reset.get("actor").is_none() && reset["data"].get("token").is_none(), "{reset}");
    assert_eq!(reset["data"]["email"], "audited@checkout.test");

    // Bad kinds and ids are refused; only admins read the trail.
    for (kind, id) in [("invoice", "x"), ("order", "a.b"), ("order", "*")] {
        let r = admin.get(format!("{base}/v1/admin/history/{kind}/{id}")).send().await.expect("history");
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{kind}/{id}");
    }
    let r = ada.get(format!("{base}/v1/admin/history/order/{order}")).send().await.expect("history");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
