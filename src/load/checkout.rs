//! The `checkout` and `checkout-hot` scenarios: virtual customers, each signed in once, fill
//! a cart with three lines, check out, and wait until the order is confirmed (or cancelled).
//! Each waits as a web client does, on its live status socket (`/v1/ws`): it subscribes to the
//! new order and unsubscribes once it settled. Measures settled checkouts per second and the
//! time from the checkout request to the settled order.

use super::{LoadArgs, restock, rss_mib};
use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What one checkout scenario measured.
#[derive(Debug, Serialize)]
pub(super) struct CheckoutSummary {
    scenario: String,
    customers: usize,
    skus: usize,
    seconds: f64,
    confirmed: u64,
    cancelled: u64,
    errors: u64,
    confirmed_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    oversold: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_rss_mib: Option<f64>,
}

const PASSWORD: &str = "load test customer password";

/// Puts `skus` on sale (one product each) with plenty of stock, and waits for the storefront.
async fn catalog(admin: &reqwest::Client, base: &str, skus: &[String]) -> anyhow::Result<()> {
    for chunk in skus.chunks(500) {
        let body: String = chunk
            .iter()
            .map(|sku| {
                let line = json!({
                    "title": format!("Load item {sku}"), "slug": sku.to_lowercase(), "status": "active",
                    "variants": [{"sku": sku, "price": {"amount": 1000, "currency": "EUR"}}],
                });
                format!("{line}\n")
            })
            .collect();
        let res = admin
            .post(format!("{base}/v1/admin/import?format=jsonl"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .timeout(Duration::from_secs(600))
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("import answered {}", res.status());
        }
    }
    restock(admin, base, skus, 1_000_000).await?;
    super::on_sale(base, &skus.last().context("no SKUs")?.to_lowercase()).await
}

/// A signed-in virtual customer: its HTTP client and its live status socket.
struct Customer {
    http: reqwest::Client,
    live: Socket,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Registers and signs in `n` customers, each with its live status socket open.
async fn customers(base: &str, run_id: &str, n: usize) -> anyhow::Result<Vec<Customer>> {
    let mut out = Vec::with_capacity(n);
    let anon = reqwest::Client::new();
    for i in 0..n {
        let email = format!("load-{run_id}-{i}@souk.test");
        let r = anon
            .post(format!("{base}/v1/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "name": "Load customer"}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("registering {email} answered {}", r.status());
        }
        let token = super::login(base, &email, PASSWORD).await?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
        let http =
            reqwest::Client::builder().default_headers(headers).timeout(Duration::from_secs(30)).build()?;
        let (mut live, _) = tokio_tungstenite::connect_async_with_config(
            format!("{}/v1/ws", base.replacen("http", "ws", 1)),
            None,
            true,
        )
        .await
        .context("opening the live status socket")?;
        live.send(Message::Text(json!({"type": "auth", "token": token}).to_string().into())).await?;
        if received(&mut live).await?["type"] != "ready" {
            bail!("the live status socket did not accept {email}'s token");
        }
        out.push(Customer { http, live });
    }
    Ok(out)
}

/// The next message on `socket`.
async fn received(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .context("the live status socket fell silent")?
            .context("the live status socket closed")??;
        if let Message::Text(text) = msg {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// One checkout, from the first line to the settled order: its status and the time from
/// the checkout request to the settled order.
async fn one(c: &mut Customer, base: &str, lines: [&str; 3]) -> anyhow::Result<(String, Duration)> {
    for sku in lines {
        let r = c
            .http
            .post(format!("{base}/v1/cart/items"))
            .json(&json!({"sku": sku, "quantity": 1}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("adding {sku} answered {}", r.status());
        }
    }
    let started = Instant::now();
    let body = json!({
        "shipping_address": {"name": "Load", "line1": "1 Test Way", "city": "Testing", "postal_code": "1", "country": "DE"},
        "payment_method": "pm_card_visa",
    });
    let r = c
        .http
        .post(format!("{base}/v1/checkout"))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("checkout answered {}", r.status());
    }
    let order: Value = r.json().await?;
    let id = order["id"].as_str().context("no order id")?.to_owned();
    c.live
        .send(Message::Text(json!({"type": "subscribe", "order": id, "after": 0}).to_string().into()))
        .await?;
    let settled = loop {
        let m = received(&mut c.live).await?;
        match (m["type"].as_str(), m["order"].as_str(), m["status"].as_str()) {
            (Some("error"), _, _) => bail!("subscribing to {id} answered {m}"),
            (Some("update"), Some(o), Some(s @ ("confirmed" | "cancelled"))) if o == id => {
                break (s.to_owned(), started.elapsed());
            }
            // Earlier steps, the subscription's answer, and what was still on its way from
            // the previous order's subscription.
            _ => {}
        }
    };
    c.live.send(Message::Text(json!({"type": "unsubscribe", "order": id}).to_string().into())).await?;
    Ok(settled)
}

/// Runs one checkout scenario: `hot` puts every line on one SKU.
pub(super) async fn run(
    admin: &reqwest::Client,
    args: &LoadArgs,
    hot: bool,
    run_id: &str,
) -> anyhow::Result<CheckoutSummary> {
    let base = args.target.clone();
    let skus: Vec<String> = if hot {
        vec![format!("CKH-{run_id}")]
    } else {
        (0..args.skus).map(|i| format!("CK-{run_id}-{i}")).collect()
    };
    catalog(admin, &base, &skus).await?;
    let tag = if hot { format!("{run_id}h") } else { run_id.to_owned() };
    let clients = customers(&base, &tag, args.concurrency).await?;
    eprintln!("checkout: {} customers ready; running for {:?}", clients.len(), args.duration);
    let skus = Arc::new(skus);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for (w, mut c) in clients.into_iter().enumerate() {
        let (skus, stop, base) = (skus.clone(), stop.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let (mut lat, mut confirmed, mut cancelled, mut errors) = (Vec::new(), 0u64, 0u64, 0u64);
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let i = n;
                n += 1;
                let pick = |k: usize| skus[(i * 7919 + k * 104_729) % skus.len()].as_str();
                match one(&mut c, &base, [pick(0), pick(1), pick(2)]).await {
                    Ok((status, took)) => {
                        lat.push(took);
                        if status == "confirmed" { confirmed += 1 } else { cancelled += 1 }
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("checkout: {e:#}");
                        let _ = c.http.delete(format!("{base}/v1/cart")).send().await;
                    }
                }
            }
            (lat, confirmed, cancelled, errors)
        }));
    }
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut confirmed, mut cancelled, mut errors) = (Vec::new(), 0, 0, 0);
    for w in workers {
        let (l, c, x, e) = w.await?;
        lat.extend(l);
        confirmed += c;
        cancelled += x;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let oversold = if hot {
        // Every confirmed order sold 3 units of the one SKU; nothing may stay held.
        let v: Value = admin.get(format!("{base}/v1/inventory/{}", skus[0])).send().await?.json().await?;
        let sold = 1_000_000 - v["on_hand"].as_u64().unwrap_or(0);
        Some(v["reserved"].as_u64() != Some(0) || sold != 3 * confirmed)
    } else {
        None
    };
    Ok(CheckoutSummary {
        scenario: if hot { "checkout, one hot SKU" } else { "checkout, spread" }.to_owned(),
        customers: args.concurrency,
        skus: skus.len(),
        seconds,
        confirmed,
        cancelled,
        errors,
        confirmed_per_second: confirmed as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        oversold,
        node_rss_mib: args.pid.map(rss_mib).transpose()?,
    })
}
