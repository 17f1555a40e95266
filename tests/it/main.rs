//! End-to-end tests: real `souk` node processes, real nats-server processes, HTTP over loopback.

mod asyncapi;
mod auth;
mod backup;
mod cart;
mod catalog;
mod checkout;
mod cluster;
mod failover;
mod inventory;
mod layout;
mod logs;
mod monitoring;
mod notify;
mod openapi;
mod payments;
mod webhooks;

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use souk_testkit::{SoukNode, eventually};
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_souk"))
}

/// `souk serve` on `data` with nothing but the binary's defaults: its own nats-server, a free
/// HTTP port, no test settings. For what a bare start does; add settings with `.env(…)`.
fn bare_serve(data: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(std::env::var_os("NATS_SERVER_BIN").map(|b| ("NATS_SERVER_BIN", b)))
        .env("SOUK_DATA_DIR", data)
        .env("SOUK_HTTP_ADDR", "127.0.0.1:0");
    cmd
}

/// Waits until `/readyz` answers 200.
async fn ready(http: &Client, node: &SoukNode) {
    let url = format!("{}/readyz", node.url());
    eventually("node ready", Duration::from_secs(30), || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

async fn restock(http: &Client, base: &str, sku: &str, qty: i64) -> Response {
    http.post(format!("{base}/v1/inventory/{sku}/restock"))
        .json(&json!({ "quantity": qty }))
        .send()
        .await
        .expect("restock")
}

async fn reserve(http: &Client, base: &str, sku: &str, id: &str, qty: i64) -> Response {
    http.post(format!("{base}/v1/inventory/{sku}/reservations"))
        .json(&json!({ "reservation_id": id, "quantity": qty }))
        .send()
        .await
        .expect("reserve")
}

async fn stock(http: &Client, base: &str, sku: &str) -> Value {
    let r = http.get(format!("{base}/v1/inventory/{sku}")).send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK, "GET {sku}");
    r.json().await.expect("json")
}

/// The levels of a stock view, for comparisons.
fn levels(v: &Value) -> (u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"));
    (n("on_hand"), n("reserved"), n("available"))
}

/// The value of one series on the node's `/metrics` (`series` as it is written there, labels
/// included), if the node answers and exports it.
/// Waits until nothing more can be sent: every planner has planned every event it was given
/// and the work queue is empty (a message leaves it once its delivery is settled). What was
/// delivered by then is all that ever will be.
pub(crate) async fn all_sent(nats: &souk_testkit::NatsServer) {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    eventually("every notification planned and settled", Duration::from_secs(20), || async {
        let mut queue = js.get_stream("SOUK_NOTIFY").await.ok()?;
        if queue.info().await.ok()?.state.messages != 0 {
            return None;
        }
        for kind in ["order", "user", "stock", "product"] {
            let stream = js.get_stream(format!("SOUK_EVENTS_{}", kind.to_uppercase())).await.ok()?;
            let mut planner: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&format!("souk_notify_plan_{kind}")).await.ok()?;
            let info = planner.info().await.ok()?;
            if info.num_pending != 0 || info.num_ack_pending != 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn metric(http: &Client, base: &str, series: &str) -> Option<i64> {
    let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).and_then(|n| n.parse().ok())
}

/// A page of the read model, every page followed.
async fn list_all(http: &Client, base: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/inventory?limit=100");
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = http.get(url).send().await.expect("list").json().await.expect("json");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return items,
        }
    }
}

/// Retries a request that may meet a shard in motion (503) or a node that just died
/// (connection refused), like a client behind a load balancer would.
async fn with_retry<F, Fut>(mut f: F) -> Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<Response>>,
{
    for _ in 0..100 {
        match f().await {
            Ok(r)
                if r.status() != StatusCode::SERVICE_UNAVAILABLE
                    && r.status() != StatusCode::GATEWAY_TIMEOUT =>
            {
                return r;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("request kept failing");
}
