//! Outbound webhooks: admins register endpoints; each receives the events it subscribed to,
//! once, signed the Standard Webhooks way, and nothing else; a failing endpoint is retried and
//! dead-lettered without holding the others up; one that answers 410 Gone is turned off;
//! deliveries replay from the log; private addresses are refused unless allowed.

use crate::catalog::{body, create, product};
use crate::checkout::confirmed_order;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use reqwest::Client;
use serde_json::{Value, json};
use souk_testkit::{NatsServer, SoukNode, admin_http, eventually, http};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One delivery a receiver got: `webhook-id`, `webhook-timestamp`, `webhook-signature`, body.
type Delivery = (String, String, String, String);

/// A receiver that records every delivery and answers `status`.
async fn receiver(status: StatusCode) -> (String, Arc<Mutex<Vec<Delivery>>>) {
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let take = move |State(seen): State<Arc<Mutex<Vec<Delivery>>>>, headers: HeaderMap, body: String| async move {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        seen.lock().expect("lock").push((
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
            body,
        ));
        status
    };
    let app = axum::Router::new().route("/hook", post(take)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Verifies a delivery as a receiver would, from the Standard Webhooks specification.
fn verify(secret: &str, d: &Delivery) {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).expect("base64 secret");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let signed = format!("{}.{}.{}", d.0, d.1, d.3);
    let expected = format!("v1,{}", engine.encode(aws_lc_rs::hmac::sign(&key, signed.as_bytes()).as_ref()));
    assert!(d.2.split(' ').any(|s| s == expected), "signature {} does not verify (expected {expected})", d.2);
    let ts: i64 = d.1.parse().expect("timestamp");
    assert!((time::OffsetDateTime::now_utc().unix_timestamp() - ts).abs() < 300, "a fresh timestamp");
}

async fn register(admin: &Client, base: &str, url: &str, events: &[&str], enabled: bool) -> Value {
    let r = admin
        .post(format!("{base}/v1/admin/webhooks"))
        .json(&json!({"url": url, "events": events, "enabled": enabled}))
        .send()
        .await
        .expect("register");
    body(r, StatusCode::CREATED).await
}

fn types(seen: &Arc<Mutex<Vec<Delivery>>>) -> Vec<String> {
    let mut t: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|d| serde_json::from_str::<Value>(&d.3).expect("json")["type"].as_str().unwrap_or("").to_owned())
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_get_what_they_subscribed_to_once_signed_and_a_failing_one_holds_no_one_up() {
    let nats = NatsServer::start();
    let env = [
        ("SOUK_WEBHOOKS_ALLOW_PRIVATE", "true"),
        ("SOUK_NOTIFY_RETRY_BASE", "100ms"),
        ("SOUK_WEBHOOK_MAX_ATTEMPTS", "3"),
    ];
    let node = SoukNode::start(crate::bin(), nats.url(), &env).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let admin = admin_http(base).await;
    let (good_url, good) = receiver(StatusCode::NO_CONTENT).await;
    let (off_url, off) = receiver(StatusCode::OK).await;
    let (bad_url, bad) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let (gone_url, gone) = receiver(StatusCode::GONE).await;
    let a = register(&admin, base, &good_url, &["order.confirmed", "order.shipped"], true).await;
    let secret = a["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    register(&admin, base, &off_url, &["*"], false).await;
    let c = register(&admin, base, &bad_url, &["order.confirmed"], true).await;
    let d = register(&admin, base, &gone_url, &["order.confirmed", "order.shipped"], true).await;
    // Stock events are planned without decoding unless someone wants them: this one does.
    let (stock_url, stock) = receiver(StatusCode::NO_CONTENT).await;
    register(&admin, base, &stock_url, &["stock.committed"], true).await;
    let listed =
        body(admin.get(format!("{base}/v1/admin/webhooks")).send().await.expect("list"), StatusCode::OK)
            .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(5));
    assert!(!listed.to_string().contains("whsec_"), "secrets are shown once: {listed}");

    assert_eq!(
        create(&admin, base, &product("vase", "Vase", "", "VASE-1", 3000, "active")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(crate::restock(&admin, base, "VASE-1", 5).await.status(), StatusCode::OK);
    eventually("the vase on sale", Duration::from_secs(10), || async {
        (http.get(format!("{base}/v1/products/vase")).send().await.ok()?.status() == StatusCode::OK)
            .then_some(())
    })
    .await;
    let buyer = crate::cart::customer(&http, base, "hooks@webhooks.test").await;
    let order = confirmed_order(&buyer, base, "VASE-1", 1, "w-1").await;
    // The receiver that answers 410 Gone to the confirmation is turned off, for every node.
    let gone_id = d["id"].as_str().expect("id").to_owned();
    eventually("the gone endpoint turned off", Duration::from_secs(20), || async {
        let e =
            body(admin.get(format!("{base}/v1/admin/webhooks/{gone_id}")).send().await.ok()?, StatusCode::OK)
                .await;
        (e["enabled"] == false).then_some(())
    })
    .await;
    let r =
        admin.post(format!("{base}/v1/orders/{order}/ship")).json(&json!({"tracking": "TRK-9"})).send().await;
    assert_eq!(r.expect("ship").status(), StatusCode::OK);

    eventually("both subscribed events at the endpoint", Duration::from_secs(20), || async {
        (types(&good) == ["order.confirmed", "order.shipped"]).then_some(())
    })
    .await;
    eventually("the sold unit's stock event at its endpoint", Duration::from_secs(20), || async {
        (types(&stock) == ["stock.committed"]).then_some(())
    })
    .await;
    // The failing endpoint is tried three times, then dead-lettered.
    let dead =
        eventually("the failing endpoint's delivery dead-lettered", Duration::from_secs(30), || async {
            let log = body(
                admin
                    .get(format!("{base}/v1/admin/notifications?channel=webhook&status=dead_lettered"))
                    .send()
                    .await
                    .ok()?,
                StatusCode::OK,
            )
            .await;
            log["items"].as_array()?.iter().find(|d| d["to"] == c["id"]).cloned()
        })
        .await;
    assert_eq!(dead["attempts"].as_array().map(Vec::len), Some(3), "{dead}");
    assert_eq!(bad.lock().expect("lock").len(), 3);

    crate::all_sent(&nats).await;
    let deliveries = good.lock().expect("lock").clone();
    assert_eq!(deliveries.len(), 2, "each event once");
    for d in &deliveries {
        verify(&secret, d);
        let b: Value = serde_json::from_str(&d.3).expect("json");
        assert_eq!(b["data"]["id"], order.as_str(), "the event itself: {b}");
        assert_eq!(b["data"]["type"], b["type"]);
    }
    assert!(off.lock().expect("lock").is_empty(), "a disabled endpoint gets nothing");
    assert_eq!(types(&gone), ["order.confirmed"], "nothing after 410 Gone");

    // The delivery log knows each post by its webhook-id, and replays it as it was.
    let confirmed =
        deliveries.iter().find(|d| d.3.contains("\"order.confirmed\"")).expect("the confirmation").clone();
    // Replays the confirmation and answers the delivery it makes, the `n`th at the endpoint.
    let replay = |n: usize| {
        let (admin, good, id) = (admin.clone(), good.clone(), confirmed.0.clone());
        async move {
            let r = admin.post(format!("{base}/v1/admin/notifications/{id}/replay")).send().await;
            assert_eq!(r.expect("replay").status(), StatusCode::ACCEPTED);
            eventually("the replayed delivery", Duration::from_secs(20), || async {
                good.lock().expect("lock").get(n - 1).cloned()
            })
            .await
        }
    };
    let again = replay(3).await;
    assert_eq!((again.0.as_str(), again.3.as_str()), (confirmed.0.as_str(), confirmed.3.as_str()));
    verify(&secret, &again);

    // A rotated secret is shown once; for a day deliveries verify with the old one and the new.
    let rotated = body(
        admin
            .post(format!("{base}/v1/admin/webhooks/{}/secret", a["id"].as_str().expect("id")))
            .send()
            .await
            .expect("rotate"),
        StatusCode::OK,
    )
    .await;
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret, "{rotated}");
    assert!(rotated["previous_valid_until"].is_string(), "{rotated}");
    let rotated_delivery = replay(4).await;
    assert_eq!(rotated_delivery.2.split(' ').count(), 2, "two signatures: {}", rotated_delivery.2);
    verify(&new_secret, &rotated_delivery);
    verify(&secret, &rotated_delivery);
    let r = admin
        .post(format!("{base}/v1/admin/webhooks/whe-00000000000000000000000000000000/secret"))
        .send()
        .await;
    assert_eq!(r.expect("rotate unknown").status(), StatusCode::NOT_FOUND);

    // Only admins manage endpoints.
    let r = buyer.get(format!("{base}/v1/admin/webhooks")).send().await.expect("list");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = buyer
        .post(format!("{base}/v1/admin/notifications/{}/replay", confirmed.0))
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        buyer.post(format!("{base}/v1/admin/webhooks/{}/secret", a["id"].as_str().expect("id"))).send().await;
    assert_eq!(r.expect("rotate").status(), StatusCode::FORBIDDEN);
}

/// A receiver that takes each delivery and answers only once `open` is set, counting the
/// deliveries that have arrived meanwhile.
async fn held_receiver(open: tokio::sync::watch::Receiver<bool>) -> (String, Arc<Mutex<u32>>) {
    let arrived: Arc<Mutex<u32>> = Arc::default();
    let state = (arrived.clone(), open);
    let take = |State((arrived, mut open)): State<(Arc<Mutex<u32>>, tokio::sync::watch::Receiver<bool>)>| async move {
        *arrived.lock().expect("lock") += 1;
        let _ = open.wait_for(|o| *o).await;
        StatusCode::NO_CONTENT
    };
    let app = axum::Router::new().route("/hook", post(take)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_holds_no_other_up() {
    let nats = NatsServer::start();
    // Slow, not failing: within its timeout the slow endpoint is simply waited for.
    let env = [("SOUK_WEBHOOKS_ALLOW_PRIVATE", "true"), ("SOUK_WEBHOOK_TIMEOUT", "120s")];
    let node = SoukNode::start(crate::bin(), nats.url(), &env).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let admin = admin_http(base).await;
    let (open, opened) = tokio::sync::watch::channel(false);
    let (slow_url, arrived) = held_receiver(opened).await;
    let (quick_url, quick) = receiver(StatusCode::NO_CONTENT).await;
    register(&admin, base, &slow_url, &["stock.restocked"], true).await;
    register(&admin, base, &quick_url, &["stock.restocked"], true).await;

    for _ in 0..3 {
        assert_eq!(crate::restock(&admin, base, "SLOW-1", 1).await.status(), StatusCode::OK);
    }
    // Every restock reaches the quick endpoint while the slow one still holds its deliveries.
    eventually("the quick endpoint's deliveries", Duration::from_secs(20), || async {
        (types(&quick) == ["stock.restocked"; 3]).then_some(())
    })
    .await;
    eventually("the slow endpoint being waited for", Duration::from_secs(20), || async {
        (*arrived.lock().expect("lock") >= 1).then_some(())
    })
    .await;
    assert_eq!(types(&quick).len(), 3, "nothing more than once");
    open.send(true).expect("open");
    eventually("the slow endpoint's deliveries", Duration::from_secs(20), || async {
        (*arrived.lock().expect("lock") == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_and_bad_subscriptions_are_refused_and_nothing_is_stored() {
    let nats = NatsServer::start();
    let node = SoukNode::start(crate::bin(), nats.url(), &[]).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let admin = admin_http(base).await;
    for (url, events, code) in [
        ("http://127.0.0.1:9/hook", vec!["order.*"], "webhook_url_not_allowed"),
        ("http://localhost:9/hook", vec!["order.*"], "webhook_url_not_allowed"),
        ("http://[::1]:9/hook", vec!["order.*"], "webhook_url_not_allowed"),
        ("http://10.0.0.8/hook", vec!["order.*"], "webhook_url_not_allowed"),
        ("http://169.254.169.254/latest/meta-data", vec!["order.*"], "webhook_url_not_allowed"),
        ("ftp://93.184.216.34/hook", vec!["order.*"], "webhook_url_not_allowed"),
        ("https://user:pw@93.184.216.34/hook", vec!["order.*"], "webhook_url_not_allowed"),
        ("https://93.184.216.34/hook", vec!["user.password_reset_requested"], "invalid_input"),
        ("https://93.184.216.34/hook", vec![], "invalid_input"),
    ] {
        let r = admin
            .post(format!("{base}/v1/admin/webhooks"))
            .json(&json!({"url": url, "events": events}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p = body(r, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(p["code"], code, "{url} {events:?}: {p}");
    }
    let r = admin.get(format!("{base}/v1/admin/webhooks/whe-00000000000000000000000000000000")).send().await;
    assert_eq!(r.expect("get").status(), StatusCode::NOT_FOUND);
    let listed =
        body(admin.get(format!("{base}/v1/admin/webhooks")).send().await.expect("list"), StatusCode::OK)
            .await;
    assert_eq!(listed["items"], json!([]), "nothing was stored");
}
