//! Notifications end to end: order, stock and password-reset events reach a real SMTP server
//! and local SendGrid/Twilio peers exactly once; opt-outs hold; an outage is retried, trips the
//! breaker and is dead-lettered, then delivered by `souk notify dlq retry`; a node killed
//! mid-send does not send twice; the delivery log is admin-only.

use crate::catalog::{body, create, product};
use crate::checkout::confirmed_order;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use reqwest::Client;
use serde_json::{Value, json};
use souk_testkit::smtp::SmtpPeer;
use souk_testkit::{
    NatsServer, SoukNode, access_token, admin_http, eventually, http, http_with_token, souk_command,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASSWORD: &str = "a long customer password";

/// One HTTP request a provider peer received: path, `Authorization`, body.
type Seen = (String, String, String);

/// A local stand-in for SendGrid and Twilio that records each request and answers as they
/// do (202 / 201), or with the status it is failing with.
#[derive(Clone, Default)]
struct Peer {
    seen: Arc<Mutex<Vec<Seen>>>,
    failing: Arc<Mutex<Option<StatusCode>>>,
}

impl Peer {
    async fn start() -> (String, Self) {
        let peer = Self::default();
        async fn take(
            State(p): State<Peer>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: String,
        ) -> StatusCode {
            if let Some(status) = *p.failing.lock().expect("lock") {
                return status;
            }
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let path = uri.path().to_owned();
            let created =
                if path.ends_with("Messages.json") { StatusCode::CREATED } else { StatusCode::ACCEPTED };
            p.seen.lock().expect("lock").push((path, auth, body));
            created
        }
        let app = axum::Router::new()
            .route("/v3/mail/send", post(take))
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(take))
            .with_state(peer.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, peer)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Replaces each `<escape>XX` (two hex digits) by the byte it stands for.
fn unescape(s: &str, escape: u8) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) if bytes[i] == escape => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Undoes quoted-printable soft breaks and escapes, and unfolds long header lines (a subject
/// with an order id in it is folded), so a test can read a mail's headers and text.
fn readable(data: &str) -> String {
    let data = data.replace("\r\n", "\n");
    let (head, text) = data.split_once("\n\n").unwrap_or((&data, ""));
    let head = head.replace("\n ", " ").replace("\n\t", " ");
    unescape(&format!("{head}\n\n{}", text.replace("=\n", "")), b'=')
}

fn smtp_env(smtp: &SmtpPeer) -> Vec<(&'static str, String)> {
    vec![
        ("SOUK_EMAIL_PROVIDER", "smtp".into()),
        ("SOUK_SMTP_HOST", "127.0.0.1".into()),
        ("SOUK_SMTP_PORT", smtp.port().to_string()),
        ("SOUK_SMTP_SECURITY", "none".into()),
        ("SOUK_EMAIL_FROM", "Test Shop <orders@shop.test>".into()),
        ("SOUK_SHOP_NAME", "Test Shop".into()),
        ("SOUK_SHOP_URL", "https://shop.test".into()),
        ("SOUK_NOTIFY_TIMEOUT", "2s".into()),
    ]
}

/// Text messages through Twilio's API at `url` (a [`Peer`]).
fn twilio_env(url: &str) -> [(&'static str, String); 5] {
    [
        ("SOUK_SMS_PROVIDER", "twilio".into()),
        ("SOUK_TWILIO_BASE_URL", url.to_owned()),
        ("SOUK_TWILIO_ACCOUNT_SID", "AC123".into()),
        ("SOUK_TWILIO_AUTH_TOKEN", "tw-secret".into()),
        ("SOUK_TWILIO_FROM", "+15550001111".into()),
    ]
}

/// A node mailing through an SMTP peer that refuses every message for now, with `settings`
/// added to its environment; ready to serve.
async fn refusing_mail_node(settings: &[(&'static str, &str)]) -> (SmtpPeer, NatsServer, SoukNode, Client) {
    let smtp = SmtpPeer::start().await;
    smtp.set_failing(true);
    let nats = NatsServer::start();
    let mut env = smtp_env(&smtp);
    env.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let node = start(&nats, &env);
    let http = http();
    crate::ready(&http, &node).await;
    (smtp, nats, node, http)
}

fn start(nats: &NatsServer, env: &[(&'static str, String)]) -> SoukNode {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    SoukNode::start(crate::bin(), nats.url(), &env).expect("node")
}

/// A product `sku` at 12.00 EUR with `stock` units, on sale.
async fn on_sale(http: &Client, staff: &Client, base: &str, slug: &str, sku: &str, stock: i64) {
    assert_eq!(
        create(staff, base, &product(slug, "Tea pot", "", sku, 1200, "active")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(crate::restock(staff, base, sku, stock).await.status(), StatusCode::OK);
    eventually("the product on sale", Duration::from_secs(10), || async {
        (http.get(format!("{base}/v1/products/{slug}")).send().await.ok()?.status() == StatusCode::OK)
            .then_some(())
    })
    .await;
}

async fn register(http: &Client, base: &str, email: &str, phone: Option<&str>) -> Client {
    let mut b = json!({"email": email, "password": PASSWORD, "name": "Ada"});
    if let Some(p) = phone {
        b["phone"] = json!(p);
    }
    let r = http.post(format!("{base}/v1/auth/register")).json(&b).send().await.expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    http_with_token(&access_token(base, email, PASSWORD).await)
}

fn mails_to(smtp: &SmtpPeer, to: &str, subject_part: &str) -> Vec<String> {
    smtp.mails()
        .into_iter()
        .filter(|m| m.to.iter().any(|t| t == to))
        .map(|m| readable(&m.data))
        .filter(|d| d.lines().any(|l| l.starts_with("Subject:") && l.contains(subject_part)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_send_each_email_and_sms_once_and_the_log_shows_them_to_admins() {
    let smtp = SmtpPeer::start().await;
    let (twilio, sms) = Peer::start().await;
    let nats = NatsServer::start();
    let mut env = smtp_env(&smtp);
    env.extend(twilio_env(&twilio));
    let node = start(&nats, &env);
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let staff = admin_http(base).await;
    on_sale(&http, &staff, base, "teapot", "POT-1", 3).await;
    let r =
        staff.put(format!("{base}/v1/inventory/POT-1/low-stock")).json(&json!({"threshold": 2})).send().await;
    assert_eq!(r.expect("threshold").status(), StatusCode::OK);
    // Who the staff are comes from the users read model, a moment behind.
    eventually("the admin in the user list", Duration::from_secs(10), || async {
        let list = staff.get(format!("{base}/v1/admin/users")).send().await.ok()?.text().await.ok()?;
        list.contains(souk_testkit::ADMIN_EMAIL).then_some(())
    })
    .await;

    let ada = register(&http, base, "ada@notify.test", Some("+44 20 7946 0000")).await;
    let id = confirmed_order(&ada, base, "POT-1", 2, "n-1").await;

    let mail = eventually("the confirmation email", Duration::from_secs(20), || async {
        mails_to(&smtp, "ada@notify.test", "is confirmed").pop()
    })
    .await;
    assert!(mail.contains(&format!("Subject: Your order {id} is confirmed")), "{mail}");
    assert!(
        mail.contains("From: \"Test Shop\" <orders@shop.test>")
            || mail.contains("From: Test Shop <orders@shop.test>"),
        "{mail}"
    );
    assert!(
        mail.contains("2 × Tea pot (POT-1) at €12.00: €24.00") && mail.contains("Total: €24.00"),
        "{mail}"
    );
    assert!(mail.contains("text/html") && mail.contains("<strong>€24.00</strong>"), "an HTML part: {mail}");

    let text = eventually("the confirmation SMS", Duration::from_secs(20), || async {
        sms.seen().into_iter().find(|s| s.2.contains("confirmed"))
    })
    .await;
    assert_eq!(text.0, "/2010-04-01/Accounts/AC123/Messages.json");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("AC123:tw-secret");
    assert_eq!(text.1, format!("Basic {basic}"));
    let form = form_pairs(&text.2);
    assert!(form.contains(&("To".into(), "+442079460000".into())), "{form:?}");
    assert!(form.contains(&("From".into(), "+15550001111".into())), "{form:?}");
    let sms_body = &form.iter().find(|(k, _)| k == "Body").expect("Body").1;
    assert!(sms_body.contains(&id) && sms_body.contains("€24.00"), "{sms_body}");

    // Available fell from 3 to 1, below the threshold of 2: the staff hear of it.
    let low = eventually("the low-stock email", Duration::from_secs(20), || async {
        mails_to(&smtp, souk_testkit::ADMIN_EMAIL, "Low stock").pop()
    })
    .await;
    assert!(low.contains("POT-1 is running low: 1 available"), "{low}");

    // Shipping tells the customer, with the tracking number, by both channels.
    let r =
        staff.post(format!("{base}/v1/orders/{id}/ship")).json(&json!({"tracking": "TRK-77"})).send().await;
    assert_eq!(r.expect("ship").status(), StatusCode::OK);
    let shipped = eventually("the shipping email", Duration::from_secs(20), || async {
        mails_to(&smtp, "ada@notify.test", "on its way").pop()
    })
    .await;
    assert!(shipped.contains("Tracking number: TRK-77"), "{shipped}");
    eventually("the shipping SMS", Duration::from_secs(20), || async {
        sms.seen().into_iter().find(|s| s.2.contains("TRK-77"))
    })
    .await;

    // The same notification queued again (a replanned event) is not sent again.
    let nc = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(nc);
    let queued = js.get_stream("SOUK_NOTIFY").await.expect("stream");
    let drained = || {
        let mut queued = queued.clone();
        async move { (queued.info().await.ok()?.state.messages == 0).then_some(()) }
    };
    // A message leaves the work queue when its delivery is settled, a moment after the send.
    eventually("sent notifications to leave the queue", Duration::from_secs(10), drained).await;
    let confirmed = eventually("the confirmation in the log", Duration::from_secs(10), || async {
        let log = admin_log(&staff, base, &format!("order={id}&channel=email")).await;
        log.into_iter().find(|d| d["topic"] == "order_confirmed")
    })
    .await;
    let again = json!({
        "id": confirmed["id"], "channel": "email", "topic": "order_confirmed", "to": "ada@notify.test",
        "text": "a duplicate", "caused_at": "2026-01-01T00:00:00Z",
    });
    js.publish("souk.notify.email", serde_json::to_vec(&again).expect("json").into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    eventually("the duplicate consumed", Duration::from_secs(20), drained).await;

    // Exactly one of each, however long we wait for more.
    crate::all_sent(&nats).await;
    assert_eq!(mails_to(&smtp, "ada@notify.test", "is confirmed").len(), 1);
    assert_eq!(mails_to(&smtp, "ada@notify.test", "on its way").len(), 1);
    assert_eq!(mails_to(&smtp, souk_testkit::ADMIN_EMAIL, "Low stock").len(), 1);
    assert_eq!(smtp.mails().iter().filter(|m| readable(&m.data).contains("a duplicate")).count(), 0);
    assert_eq!(sms.seen().len(), 2, "confirmed and shipped: {:?}", sms.seen());

    // The delivery log: every attempt, for admins only.
    let want = [
        ("email", "order_confirmed", "sent"),
        ("email", "order_shipped", "sent"),
        ("sms", "order_confirmed", "sent"),
        ("sms", "order_shipped", "sent"),
    ];
    eventually("every delivery in the log", Duration::from_secs(10), || async {
        let log = admin_log(&staff, base, &format!("order={id}")).await;
        let mut got: Vec<(String, String, String)> = log
            .iter()
            .map(|d| {
                let f = |k: &str| d[k].as_str().unwrap_or("").to_owned();
                (f("channel"), f("topic"), f("status"))
            })
            .collect();
        got.sort();
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned())).collect();
        (got == want).then_some(())
    })
    .await;
    let r = ada.get(format!("{base}/v1/admin/notifications")).send().await.expect("log");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http.get(format!("{base}/v1/admin/notifications")).send().await.expect("log");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = staff.get(format!("{base}/v1/admin/notifications?channel=pigeon")).send().await.expect("log");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "an unknown channel is bad input");
}

/// The fields of an `application/x-www-form-urlencoded` body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_template_fails_on_its_data_is_skipped_and_the_others_go_out() {
    let smtp = SmtpPeer::start().await;
    let (twilio, sms) = Peer::start().await;
    let nats = NatsServer::start();
    // The shop's confirmation email renders the sample order (two lines) at start, and
    // divides by zero for an order of one line.
    let templates = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(templates.path().join("email")).expect("mkdir");
    std::fs::write(
        templates.path().join("email/order_confirmed.txt"),
        "{% set subject = \"Order \" ~ order.number ~ \" is in\" %}{{ 100 // (order.lines | length - 1) }} per line\n",
    )
    .expect("template");
    let mut env = smtp_env(&smtp);
    env.extend(twilio_env(&twilio));
    env.push(("SOUK_TEMPLATES_DIR", templates.path().to_str().expect("path").to_owned()));
    let node = start(&nats, &env);
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let staff = admin_http(base).await;
    on_sale(&http, &staff, base, "teapot", "POT-1", 5).await;
    on_sale(&http, &staff, base, "teacup", "CUP-1", 5).await;
    let ada = register(&http, base, "odd@notify.test", Some("+44 20 7946 0001")).await;

    // One line: the email cannot be rendered and is not sent; the text message still is.
    let one = confirmed_order(&ada, base, "POT-1", 1, "u-1").await;
    eventually("the confirmation SMS", Duration::from_secs(20), || async {
        sms.seen().into_iter().find(|s| s.2.contains(&one))
    })
    .await;
    let skipped = "souk_notifications_total{channel=\"email\",outcome=\"unrenderable\"} 1";
    eventually("the email counted as unrenderable", Duration::from_secs(20), || async {
        let metrics = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        metrics.contains(skipped).then_some(())
    })
    .await;

    // Two lines: the same template renders, and the email goes out.
    let two = crate::checkout::place(&ada, base, &[("POT-1", 1), ("CUP-1", 1)], "pm_card_visa", "u-2").await;
    let mail = eventually("the second order's email", Duration::from_secs(30), || async {
        mails_to(&smtp, "odd@notify.test", &format!("Order {two} is in")).pop()
    })
    .await;
    assert!(mail.contains("100 per line"), "{mail}");
    assert!(mails_to(&smtp, "odd@notify.test", &format!("Order {one} is in")).is_empty());
}

fn form_pairs(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| unescape(&s.replace('+', " "), b'%');
    body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect()
}

async fn admin_log(staff: &Client, base: &str, query: &str) -> Vec<Value> {
    let url = format!("{base}/v1/admin/notifications?{query}&limit=100");
    let v = body(staff.get(url).send().await.expect("log"), StatusCode::OK).await;
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_opt_out_and_missing_phones_get_email_only_and_resets_go_through_sendgrid() {
    let (sendgrid, mail) = Peer::start().await;
    let (twilio, sms) = Peer::start().await;
    let nats = NatsServer::start();
    let mut env = vec![
        ("SOUK_EMAIL_PROVIDER", "sendgrid".to_owned()),
        ("SOUK_SENDGRID_BASE_URL", sendgrid.clone()),
        ("SOUK_SENDGRID_API_KEY", "SG.test-key".to_owned()),
        ("SOUK_EMAIL_FROM", "Test Shop <orders@shop.test>".to_owned()),
        ("SOUK_SHOP_URL", "https://shop.test".to_owned()),
        ("SOUK_NOTIFY_RETRY_BASE", "200ms".to_owned()),
    ];
    env.extend(twilio_env(&twilio));
    let node = start(&nats, &env);
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let staff = admin_http(base).await;
    on_sale(&http, &staff, base, "kettle", "KET-1", 10).await;

    let quiet = register(&http, base, "quiet@notify.test", Some("+44 20 7946 0001")).await;
    let r =
        quiet.patch(format!("{base}/v1/me")).json(&json!({"sms_opt_out": true})).send().await.expect("patch");
    let me = body(r, StatusCode::OK).await;
    assert_eq!(me["sms_opt_out"], true);
    let nophone = register(&http, base, "nophone@notify.test", None).await;
    confirmed_order(&quiet, base, "KET-1", 1, "q-1").await;
    confirmed_order(&nophone, base, "KET-1", 1, "p-1").await;
    for who in ["quiet@notify.test", "nophone@notify.test"] {
        let seen = eventually("the confirmation through SendGrid", Duration::from_secs(20), || async {
            mail.seen().into_iter().find(|s| s.2.contains(who))
        })
        .await;
        assert_eq!(seen.0, "/v3/mail/send");
        assert_eq!(seen.1, "Bearer SG.test-key");
        let b: Value = serde_json::from_str(&seen.2).expect("json");
        assert_eq!(b["personalizations"][0]["to"][0]["email"], who);
        assert_eq!(b["from"], json!({"email": "orders@shop.test", "name": "Test Shop"}));
        assert!(b["subject"].as_str().is_some_and(|s| s.ends_with("is confirmed")), "{b}");
        assert_eq!(b["content"][0]["type"], "text/plain");
        assert_eq!(b["content"][1]["type"], "text/html");
    }

    // A password reset mails a link carrying a token that works, even when SendGrid is down
    // at first and then refuses Souk's API key (a key rotated before the setting was): both
    // are retried, not dead-lettered, and the link goes out once the key works again.
    *mail.failing.lock().expect("lock") = Some(StatusCode::SERVICE_UNAVAILABLE);
    let r = http
        .post(format!("{base}/v1/auth/password-reset"))
        .json(&json!({"email": "quiet@notify.test"}))
        .send()
        .await;
    assert_eq!(r.expect("reset").status(), StatusCode::ACCEPTED);
    let staff_log = format!("{base}/v1/admin/notifications?recipient=quiet@notify.test&status=failed");
    let failed_with = |status: &'static str| {
        let (staff, staff_log) = (staff.clone(), staff_log.clone());
        async move {
            let log = body(staff.get(&staff_log).send().await.ok()?, StatusCode::OK).await;
            let failed = log["items"].as_array()?.iter().find(|d| d["topic"] == "password_reset")?.clone();
            let attempts = failed["attempts"].as_array()?.clone();
            attempts.iter().any(|a| a["detail"].as_str().is_some_and(|d| d.contains(status))).then_some(())
        }
    };
    eventually("a failed attempt at SendGrid", Duration::from_secs(20), || failed_with("503")).await;
    *mail.failing.lock().expect("lock") = Some(StatusCode::UNAUTHORIZED);
    eventually("the key refused at SendGrid", Duration::from_secs(20), || failed_with("401")).await;
    *mail.failing.lock().expect("lock") = None;
    let reset = eventually("the reset email", Duration::from_secs(20), || async {
        mail.seen().into_iter().find(|s| s.2.contains("reset-password?token="))
    })
    .await;
    let b: Value = serde_json::from_str(&reset.2).expect("json");
    let text = b["content"][0]["value"].as_str().expect("text");
    // How long the link works, in words any reader's clock agrees with (30 minutes by default).
    assert!(text.contains("within 30 minutes"), "{text}");
    let token =
        text.split("reset-password?token=").nth(1).and_then(|t| t.split_whitespace().next()).expect("token");
    let r = http
        .post(format!("{base}/v1/auth/password-reset/confirm"))
        .json(&json!({"token": token, "new_password": "another long password 2"}))
        .send()
        .await;
    assert_eq!(r.expect("confirm").status().as_u16() / 100, 2, "the mailed token resets the password");

    crate::all_sent(&nats).await;
    assert!(sms.seen().is_empty(), "no text messages: {:?}", sms.seen());
    let resets = mail.seen().iter().filter(|s| s.2.contains("reset-password?token=")).count();
    assert_eq!(resets, 1, "the retried reset email went out once");
}

async fn dlq(nats: &NatsServer, dir: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["notify", "dlq"];
    all.extend_from_slice(args);
    let out = souk_command(crate::bin(), nats.url(), dir, &all).output().await.expect("souk notify");
    assert!(out.status.success(), "souk notify dlq {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_still_being_retried_when_its_person_is_erased_never_goes_out() {
    let (smtp, nats, node, http) = refusing_mail_node(&[
        ("SOUK_NOTIFY_MAX_ATTEMPTS", "1000"),
        ("SOUK_NOTIFY_RETRY_BASE", "200ms"),
        ("SOUK_NOTIFY_RETRY_MAX", "400ms"),
        ("SOUK_NOTIFY_BREAKER_FAILURES", "1000"),
    ])
    .await;
    let base = node.url();
    let staff = admin_http(base).await;
    let who = "leaving@notify.test";
    let leaving = register(&http, base, who, None).await;
    let r = http.post(format!("{base}/v1/auth/password-reset")).json(&json!({"email": who})).send().await;
    assert_eq!(r.expect("reset").status(), StatusCode::ACCEPTED);
    let log = format!("{base}/v1/admin/notifications?recipient={who}");
    eventually("a failed attempt at the reset email", Duration::from_secs(20), || async {
        let log = body(staff.get(&log).send().await.ok()?, StatusCode::OK).await;
        log["items"].as_array()?.iter().any(|d| d["topic"] == "password_reset").then_some(())
    })
    .await;

    // The customer erases their account while the email is still being retried: its next
    // attempt withdraws it. Only then does the mail server recover, so no attempt that was
    // already under way at the erasure can reach it.
    let r = leaving.post(format!("{base}/v1/me/erasure")).json(&json!({"password": PASSWORD})).send().await;
    assert_eq!(r.expect("erase").status(), StatusCode::NO_CONTENT);
    let withdrawn = "souk_notifications_total{channel=\"email\",outcome=\"withdrawn\"}";
    eventually("the email withdrawn", Duration::from_secs(20), || async {
        (crate::metric(&http, base, withdrawn).await? >= 1).then_some(())
    })
    .await;
    smtp.set_failing(false);
    crate::all_sent(&nats).await;
    assert!(smtp.mails().iter().all(|m| !m.to.iter().any(|t| t == who)), "nothing was mailed to {who}");
    // The delivery log's rows go as its projector applies the erasure's redactions.
    eventually("nothing about them in the delivery log", Duration::from_secs(20), || async {
        let log = body(staff.get(&log).send().await.ok()?, StatusCode::OK).await;
        (log["items"] == json!([])).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_takes_the_person_s_dead_letters_and_leaves_everyone_else_s() {
    let (_smtp, nats, node, http) =
        refusing_mail_node(&[("SOUK_NOTIFY_MAX_ATTEMPTS", "2"), ("SOUK_NOTIFY_RETRY_BASE", "200ms")]).await;
    let base = node.url();
    let dir = tempfile::tempdir().expect("dir");
    let letters_to = |listed: String| -> Vec<String> {
        listed
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("json line")["to"].as_str().expect("to").to_owned()
            })
            .collect()
    };
    let leaving = register(&http, base, "lettered@notify.test", None).await;
    register(&http, base, "staying@notify.test", None).await;
    register(&http, base, "also-staying@notify.test", None).await;
    // One after another, so the leaving person's letter lies between the others'.
    for (n, who) in
        ["staying@notify.test", "lettered@notify.test", "also-staying@notify.test"].iter().enumerate()
    {
        let r = http.post(format!("{base}/v1/auth/password-reset")).json(&json!({"email": who})).send().await;
        assert_eq!(r.expect("reset").status(), StatusCode::ACCEPTED);
        eventually("the reset email dead-lettered", Duration::from_secs(30), || async {
            (letters_to(dlq(&nats, dir.path(), &["list"]).await).len() == n + 1).then_some(())
        })
        .await;
    }

    let r = leaving.post(format!("{base}/v1/me/erasure")).json(&json!({"password": PASSWORD})).send().await;
    assert_eq!(r.expect("erase").status(), StatusCode::NO_CONTENT);
    assert_eq!(
        letters_to(dlq(&nats, dir.path(), &["list"]).await),
        ["staying@notify.test", "also-staying@notify.test"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_retried_trips_the_breaker_is_dead_lettered_and_a_retry_delivers_once() {
    let (smtp, nats, node, http) = refusing_mail_node(&[
        ("SOUK_NOTIFY_MAX_ATTEMPTS", "4"),
        ("SOUK_NOTIFY_RETRY_BASE", "200ms"),
        ("SOUK_NOTIFY_BREAKER_FAILURES", "2"),
        // Long enough that the breaker is still open when the dead letter has reached the
        // delivery log, on a loaded machine too.
        ("SOUK_NOTIFY_BREAKER_COOLDOWN", "8s"),
    ])
    .await;
    let base = node.url();
    let staff = admin_http(base).await;
    on_sale(&http, &staff, base, "cup", "CUP-1", 5).await;
    let ada = register(&http, base, "outage@notify.test", None).await;
    let id = confirmed_order(&ada, base, "CUP-1", 1, "o-1").await;

    // Two refusals open the breaker; the attempts left fail fast; the fourth dead-letters.
    let dead = eventually("the confirmation dead-lettered", Duration::from_secs(30), || async {
        let log = admin_log(&staff, base, &format!("order={id}&channel=email")).await;
        log.into_iter().find(|d| d["status"] == "dead_lettered")
    })
    .await;
    let attempts = dead["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 4, "{dead}");
    assert_eq!(smtp.refused(), 2, "the open breaker spares the provider");
    assert!(attempts[3]["detail"].as_str().is_some_and(|d| d.contains("circuit breaker")), "{dead}");
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("souk_notification_breaker_open{channel=\"email\"} 1"), "{metrics}");
    assert!(
        metrics.contains("souk_notifications_total{channel=\"email\",outcome=\"dead_lettered\"} 1"),
        "{metrics}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let listed = dlq(&nats, dir.path(), &["list"]).await;
    let letters: Vec<Value> = listed.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!(letters[0]["to"], "outage@notify.test");
    assert_eq!(letters[0]["attempts"], 4);
    assert!(!listed.contains("Tea pot"), "bodies stay out of the listing");

    // The provider is back; once the breaker's cool-down is over (the gauge says so without
    // waiting for another send), a retry is its trial send.
    smtp.set_failing(false);
    eventually("the breaker's cool-down over", Duration::from_secs(20), || async {
        let metrics = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        metrics.contains("souk_notification_breaker_open{channel=\"email\"} 0").then_some(())
    })
    .await;
    dlq(&nats, dir.path(), &["retry", "--all"]).await;
    eventually("the retried confirmation", Duration::from_secs(20), || async {
        mails_to(&smtp, "outage@notify.test", "is confirmed").pop()
    })
    .await;
    assert!(dlq(&nats, dir.path(), &["list"]).await.is_empty(), "the dead-letter stream is empty");
    crate::all_sent(&nats).await;
    assert_eq!(mails_to(&smtp, "outage@notify.test", "is confirmed").len(), 1);
    let log = eventually("the log shows it sent", Duration::from_secs(20), || async {
        let log = admin_log(&staff, base, &format!("order={id}&channel=email")).await;
        log.into_iter().find(|d| d["status"] == "sent")
    })
    .await;
    assert_eq!(log["attempts"].as_array().map(Vec::len), Some(5), "four failures and the retry: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_send_never_sends_twice() {
    let smtp = SmtpPeer::start().await;
    smtp.set_hold(Some(Duration::from_secs(30)));
    let nats = NatsServer::start();
    let env = smtp_env(&smtp);
    let mut a = start(&nats, &env);
    let http = http();
    crate::ready(&http, &a).await;
    let base = a.url().to_owned();
    let staff = admin_http(&base).await;
    on_sale(&http, &staff, &base, "bowl", "BOWL-1", 5).await;
    let ada = register(&http, &base, "kill@notify.test", None).await;
    confirmed_order(&ada, &base, "BOWL-1", 1, "k-1").await;
    // The server has the message but has not answered: the sender dies now.
    eventually("the mail at the server", Duration::from_secs(20), || async {
        (!mails_to(&smtp, "kill@notify.test", "is confirmed").is_empty()).then_some(())
    })
    .await;
    a.kill();
    smtp.set_hold(None);
    let b = start(&nats, &env);
    crate::ready(&http, &b).await;
    let staff = admin_http(b.url()).await;
    // The survivor finds it cut off mid-send and dead-letters it rather than risk a second copy.
    let dead = eventually("the interrupted send dead-lettered", Duration::from_secs(40), || async {
        let log = admin_log(&staff, b.url(), "recipient=kill@notify.test").await;
        log.into_iter().find(|d| d["status"] == "dead_lettered")
    })
    .await;
    assert!(dead.to_string().contains("interrupted mid-send"), "{dead}");
    assert_eq!(mails_to(&smtp, "kill@notify.test", "is confirmed").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_outcome_mails_its_own_message() {
    let smtp = SmtpPeer::start().await;
    let nats = NatsServer::start();
    let node = start(&nats, &smtp_env(&smtp));
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    let staff = admin_http(base).await;
    on_sale(&http, &staff, base, "jug", "JUG-1", 10).await;
    let ada = register(&http, base, "outcomes@notify.test", None).await;
    // The mail about order `id` whose subject has `part`.
    let mail_for = |id: &str, part: &'static str| {
        let (smtp, id) = (smtp.clone(), id.to_owned());
        async move {
            eventually(part, Duration::from_secs(20), || async {
                mails_to(&smtp, "outcomes@notify.test", part).into_iter().find(|m| m.contains(&id))
            })
            .await
        }
    };

    // A declined card: the order is cancelled and the customer told nothing was charged.
    body(crate::cart::add(&ada, base, None, "JUG-1", 1).await, StatusCode::OK).await;
    let b = json!({"shipping_address": {"name": "Ada", "line1": "1 Way", "city": "London", "postal_code": "N1", "country": "GB"}, "payment_method": "pm_card_chargeDeclined"});
    let r =
        ada.post(format!("{base}/v1/checkout")).header("idempotency-key", "declined").json(&b).send().await;
    let declined =
        body(r.expect("checkout"), StatusCode::CREATED).await["id"].as_str().expect("id").to_owned();
    let m = mail_for(&declined, "We could not take payment").await;
    assert!(
        m.contains(&declined) && m.contains("the card was declined") && m.contains("Nothing was charged"),
        "{m}"
    );
    let _ = ada.delete(format!("{base}/v1/cart")).send().await;

    // Cancelled by the customer after payment: refunded in full.
    let first = confirmed_order(&ada, base, "JUG-1", 1, "first").await;
    let r = ada.post(format!("{base}/v1/orders/{first}/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let m = mail_for(&first, "was cancelled").await;
    assert!(
        m.contains(&first) && m.contains("you asked us to cancel it") && m.contains("€12.00 goes back"),
        "{m}"
    );

    // A cancellation the provider refuses: the customer who asked is told it did not happen;
    // when staff's is refused too, the customer (who asked for nothing) hears nothing.
    let kept = crate::checkout::place(&ada, base, &[("JUG-1", 1)], "pm_card_refundFail", "kept").await;
    mail_for(&kept, "is confirmed").await;
    let r = ada.post(format!("{base}/v1/orders/{kept}/cancel")).send().await.expect("cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let m = mail_for(&kept, "could not be cancelled").await;
    assert!(m.contains("it stays confirmed") && m.contains("€12.00 back"), "{m}");
    let r = staff.post(format!("{base}/v1/orders/{kept}/cancel")).send().await.expect("staff cancel");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    crate::checkout::order_when(&ada, base, &kept, "both refused", |o| o["cancels_refused"] == 2).await;

    // Shipped, delivered, then part refunded by staff.
    let second = confirmed_order(&ada, base, "JUG-1", 2, "second").await;
    for (action, payload) in
        [("ship", json!({"tracking": "T-1"})), ("deliver", json!({})), ("refund", json!({"amount": 500}))]
    {
        let r = staff.post(format!("{base}/v1/orders/{second}/{action}")).json(&payload).send().await;
        assert!(r.expect(action).status().is_success(), "{action}");
        if action == "deliver" {
            let m = mail_for(&second, "was delivered").await;
            assert!(m.contains(&second), "{m}");
        }
    }
    let m = mail_for(&second, "A refund for your order").await;
    assert!(m.contains("refunded €5.00 of your order") && m.contains("(total €24.00)"), "{m}");

    // One message per event: the confirmations, the cancellation, the customer's refused one,
    // shipping, delivery, refund.
    crate::all_sent(&nats).await;
    let subjects: Vec<String> = smtp
        .mails()
        .iter()
        .filter(|m| m.to.iter().any(|t| t == "outcomes@notify.test"))
        .filter_map(|m| readable(&m.data).lines().find(|l| l.starts_with("Subject:")).map(str::to_owned))
        .collect();
    assert_eq!(subjects.len(), 9, "{subjects:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_s_own_templates_are_what_its_customers_receive() {
    let smtp = SmtpPeer::start().await;
    let nats = NatsServer::start();
    let templates = tempfile::tempdir().expect("tempdir");
    for folder in ["email", "fr/email"] {
        std::fs::create_dir_all(templates.path().join(folder)).expect("mkdir");
    }
    std::fs::write(
        templates.path().join("email/password_reset.txt"),
        "{% set subject = \"Neues Passwort, \" ~ shop.name %}Hallo {{ customer.name }},\n\nfür ein neues Passwort hier entlang: {{ reset_url }}\n",
    )
    .expect("template");
    // An order's confirmation in French, with its total written the French way.
    std::fs::write(
        templates.path().join("fr/email/order_confirmed.txt"),
        "{% set subject = \"Votre commande \" ~ order.number %}Total : {{ order.total }}\n",
    )
    .expect("template");
    // The same message for those who read French.
    std::fs::write(
        templates.path().join("fr/email/password_reset.txt"),
        "{% set subject = \"Nouveau mot de passe, \" ~ shop.name %}Bonjour {{ customer.name }} : {{ reset_url }}\n",
    )
    .expect("template");
    let mut env = smtp_env(&smtp);
    env.push(("SOUK_TEMPLATES_DIR", templates.path().to_str().expect("path").to_owned()));
    // Its own default templates are German.
    env.push(("SOUK_SHOP_LOCALE", "de".to_owned()));
    let node = start(&nats, &env);
    let http = http();
    crate::ready(&http, &node).await;
    let base = node.url();
    register(&http, base, "eigen@notify.test", None).await;
    let r = http
        .post(format!("{base}/v1/auth/password-reset"))
        .json(&json!({"email": "eigen@notify.test"}))
        .send();
    assert_eq!(r.await.expect("reset").status(), StatusCode::ACCEPTED);
    let mail = eventually("the shop's own reset email", Duration::from_secs(20), || async {
        mails_to(&smtp, "eigen@notify.test", "Neues Passwort, Test Shop").pop()
    })
    .await;
    assert!(
        mail.contains("Hallo Ada")
            && mail.contains("für ein neues Passwort hier entlang: https://shop.test/reset-password?token="),
        "{mail}"
    );
    // The text part is the shop's; the HTML part, not replaced, is the built-in one.
    let (text, html) = mail.split_once("Content-Type: text/html").expect("an HTML part");
    assert!(!text.contains("someone (we hope you)") && html.contains("someone (we hope you)"), "{mail}");

    // A customer who chose French when registering reads the shop's French words; the HTML
    // part, which the shop has not in French, is the default one, in the shop's language.
    let r = http
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({"email": "claire@notify.test", "password": PASSWORD, "name": "Claire", "locale": "FR"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.expect("user")["locale"], "fr", "normalised");
    // Without one, the browser's preferred language is taken.
    let r = http
        .post(format!("{base}/v1/auth/register"))
        .header("accept-language", "de-CH, de;q=0.9, en;q=0.5")
        .json(&json!({"email": "ueli@notify.test", "password": PASSWORD, "name": "Ueli"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.json::<Value>().await.expect("user")["locale"], "de-CH");
    let reset = |email: &'static str| {
        let http = http.clone();
        async move {
            let r = http.post(format!("{base}/v1/auth/password-reset")).json(&json!({"email": email})).send();
            assert_eq!(r.await.expect("reset").status(), StatusCode::ACCEPTED);
        }
    };
    reset("claire@notify.test").await;
    let mail = eventually("the French reset email", Duration::from_secs(20), || async {
        mails_to(&smtp, "claire@notify.test", "Nouveau mot de passe, Test Shop").pop()
    })
    .await;
    assert!(mail.contains("Bonjour Claire : https://shop.test/reset-password?token="), "{mail}");
    let (_, html) = mail.split_once("Content-Type: text/html").expect("an HTML part");
    assert!(html.contains("<html lang=\"de\">") && html.contains("Hello Claire"), "{mail}");
    // Her order's confirmation writes its amounts the French way.
    let staff = admin_http(base).await;
    on_sale(&http, &staff, base, "lampe", "LAMP-1", 2).await;
    let claire = http_with_token(&access_token(base, "claire@notify.test", PASSWORD).await);
    confirmed_order(&claire, base, "LAMP-1", 1, "claire-1").await;
    let mail = eventually("Claire's confirmation", Duration::from_secs(20), || async {
        mails_to(&smtp, "claire@notify.test", "Votre commande").pop()
    })
    .await;
    assert!(mail.contains("Total : 12,00\u{a0}€"), "{mail}");

    // A customer switches to French Canadian later (French is what the shop has), and back.
    let ada = http_with_token(&access_token(base, "eigen@notify.test", PASSWORD).await);
    let patch = |body: Value| ada.patch(format!("{base}/v1/me")).json(&body).send();
    let bad = patch(json!({"locale": "français"})).await.expect("patch");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json::<Value>().await.expect("problem")["code"], "invalid_input");
    let me = ada.get(format!("{base}/v1/me")).send().await.expect("me").json::<Value>().await.expect("me");
    assert!(me.get("locale").is_none(), "a refused change changes nothing: {me}");
    let me = patch(json!({"locale": "fr-ca"})).await.expect("patch").json::<Value>().await.expect("me");
    assert_eq!(me["locale"], "fr-CA");
    reset("eigen@notify.test").await;
    eventually("the reset email in French", Duration::from_secs(20), || async {
        mails_to(&smtp, "eigen@notify.test", "Nouveau mot de passe, Test Shop").pop()
    })
    .await;
    let me = patch(json!({"locale": null})).await.expect("patch").json::<Value>().await.expect("me");
    assert!(me.get("locale").is_none(), "back to the shop's default: {me}");
}
