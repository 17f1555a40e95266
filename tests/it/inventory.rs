//! One node: reservations under concurrency, idempotency, restart, bad input, read model.

use crate::{bare_serve, bin, levels, list_all, metric, ready, reserve, restock, stock};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use souk_testkit::{
    ADMIN_EMAIL, ADMIN_PASSWORD, NatsServer, SoukNode, access_token, admin_http, eventually, http,
    http_with_token,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Shutting down must not wait for a NATS server that is gone: an orchestrator's stop would
/// otherwise hang until it kills the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_server_is_gone_still_stops_on_sigterm_and_exits_0() {
    let mut nats = NatsServer::start();
    let mut node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    ready(&http(), &node).await;
    let admin = admin_http(node.url()).await;
    assert_eq!(restock(&admin, node.url(), "GONE-1", 5).await.status(), StatusCode::OK);
    nats.kill();
    let stopped = tokio::task::spawn_blocking(move || node.stop()).await.expect("join");
    assert!(stopped.expect("stopped within 30 s of SIGTERM"), "SIGTERM should exit 0");
}

/// A client that never finishes its request must not keep a stopping node up: the drain waits
/// for in-flight requests only as long as a request may take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_never_comes_does_not_hold_a_stopping_node() {
    use tokio::io::AsyncWriteExt as _;
    let nats = NatsServer::start();
    let mut node = SoukNode::start(bin(), nats.url(), &[("SOUK_REQUEST_TIMEOUT", "2s")]).expect("node");
    ready(&http(), &node).await;
    let addr = node.url().trim_start_matches("http://").to_owned();
    let mut stuck = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/auth/login HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"email\""
    );
    stuck.write_all(head.as_bytes()).await.expect("half a request");
    // The node has the request in hand (it and the metrics request itself) before it is told
    // to stop.
    let base = node.url().to_owned();
    eventually("the request in flight", Duration::from_secs(10), || async {
        (metric(&http(), &base, "souk_http_requests_in_flight").await? == 2).then_some(())
    })
    .await;
    let stopped = tokio::task::spawn_blocking(move || node.stop()).await.expect("join");
    assert!(stopped.expect("stopped within 30 s of SIGTERM"), "SIGTERM should exit 0");
    drop(stuck);
}

/// A signal that comes while the node is still starting stops it there: it exits 0 and its
/// own nats-server stops with it, instead of the process dying with the server left running.
#[test]
fn a_node_stopped_while_it_starts_exits_0_and_stops_its_own_nats_server() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let mut node = bare_serve(&data)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("souk serve");
    // Its nats-server has started (its pid file is written), the node has not finished starting.
    let pid_file = data.join("nats").join("nats.pid");
    let nats_pid = within_30s(|| std::fs::read_to_string(&pid_file).ok()?.trim().parse::<u32>().ok())
        .expect("the node's nats-server started");
    Command::new("kill").arg("-TERM").arg(node.id().to_string()).status().expect("kill");
    let status =
        within_30s(|| node.try_wait().expect("wait")).expect("the node stops within 30 s of SIGTERM");
    let text = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    let nats_running = std::path::Path::new(&format!("/proc/{nats_pid}")).exists();
    if nats_running {
        let _ = Command::new("kill").arg("-KILL").arg(nats_pid.to_string()).status();
    }
    assert!(status.success(), "SIGTERM during start-up should exit 0, not {status}:\n{text}");
    assert!(text.contains("stopped during start-up"), "{text}");
    assert!(!text.contains("http listening"), "the node should not have started serving:\n{text}");
    assert!(!nats_running, "its nats-server is still running");
}

/// A setting that cannot work stops the node before it starts anything: one clear error, no
/// local nats-server started and stopped, no database opened.
#[test]
fn a_node_with_a_setting_that_cannot_work_exits_before_starting_anything() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    for (key, value, error) in [
        ("SOUK_PAYMENTS", "stripe", "payments = \"stripe\" needs stripe_api_key"),
        ("SOUK_EMAIL_PROVIDER", "sendgrid", "email_provider = \"sendgrid\" needs sendgrid_api_key"),
        ("SOUK_CORS_ORIGINS", "shop.example", "\"shop.example\" is not an origin"),
    ] {
        let out = bare_serve(&data).env(key, value).output().expect("souk serve");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains(error), "{key}={value}: {}\n{text}", out.status);
        assert!(!data.join("nats").exists() && !data.join("db").exists(), "{key}={value} started something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_oversell_and_survive_a_restart() {
    let nats = NatsServer::start();
    let mut node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let http = admin_http(node.url()).await;
    let base = node.url().to_owned();

    assert_eq!(restock(&http, &base, "LAMP-1", 50).await.status(), StatusCode::OK);
    let attempts = (0..200).map(|i| {
        let (http, base) = (http.clone(), base.clone());
        async move { reserve(&http, &base, "LAMP-1", &format!("r-{i}"), 1).await }
    });
    let responses = join_all(attempts).await;
    let mut created = 0;
    for r in responses {
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(r.headers()["content-type"], "application/problem+json");
                let body: Value = r.json().await.expect("json");
                assert_eq!(body["code"], "insufficient_stock");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 50, "exactly the stock on hand is reserved");
    assert_eq!(levels(&stock(&http, &base, "LAMP-1").await), (50, 50, 0));

    // The same reservation id twice reserves once.
    restock(&http, &base, "LAMP-2", 10).await;
    for _ in 0..2 {
        assert_eq!(reserve(&http, &base, "LAMP-2", "same", 3).await.status(), StatusCode::CREATED);
    }
    let before = stock(&http, &base, "LAMP-2").await;
    assert_eq!(levels(&before), (10, 3, 7));

    // A graceful stop exits 0; after a restart the state is rehydrated from JetStream.
    assert!(node.stop().expect("stop"), "SIGTERM should exit 0");
    node.restart().expect("restart");
    ready(&http, &node).await;
    let base = node.url().to_owned();
    assert_eq!(stock(&http, &base, "LAMP-2").await, before);
    assert_eq!(levels(&stock(&http, &base, "LAMP-1").await), (50, 50, 0));
    // …and still idempotent and still refusing to oversell.
    assert_eq!(reserve(&http, &base, "LAMP-2", "same", 3).await.status(), StatusCode::CREATED);
    assert_eq!(reserve(&http, &base, "LAMP-1", "late", 1).await.status(), StatusCode::CONFLICT);
    assert_eq!(levels(&stock(&http, &base, "LAMP-2").await), (10, 3, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_commit_move_stock_as_documented() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let http = admin_http(node.url()).await;
    let base = node.url();
    restock(&http, base, "CHAIR", 5).await;
    reserve(&http, base, "CHAIR", "a", 2).await;
    reserve(&http, base, "CHAIR", "b", 2).await;
    let r = http.delete(format!("{base}/v1/inventory/CHAIR/reservations/a")).send().await.expect("release");
    assert_eq!(r.status(), StatusCode::OK);
    let r =
        http.post(format!("{base}/v1/inventory/CHAIR/reservations/b/commit")).send().await.expect("commit");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(levels(&r.json().await.expect("json")), (3, 0, 3));
    // Committing a released reservation conflicts; releasing an unknown one is 404.
    let r =
        http.post(format!("{base}/v1/inventory/CHAIR/reservations/a/commit")).send().await.expect("commit");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r =
        http.delete(format!("{base}/v1/inventory/CHAIR/reservations/nope")).send().await.expect("release");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "reservation_not_found");

    // What was just done shows in the metrics operators read.
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    for needle in [
        "souk_http_requests_total{method=\"POST\",route=\"/v1/inventory/{sku}/reservations\",status=\"201\"} 2",
        "souk_http_request_duration_seconds_bucket{",
        "souk_event_appends_total{kind=\"stock\",outcome=\"ok\"}",
        "souk_event_append_duration_seconds_bucket{",
        "souk_live_actors{kind=\"stock\"} 1",
        "souk_shards_owned{kind=\"stock\"} 16",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_describes_its_api() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let http = admin_http(node.url()).await;
    let doc: Value = http
        .get(format!("{}/openapi.json", node.url()))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // Every route of the router is documented, with the security its access level demands.
    for e in souk_api::routes::endpoints() {
        if matches!(e.path, "/openapi.json" | "/docs") {
            continue;
        }
        let op = &doc["paths"][e.path][e.method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {} missing from the OpenAPI document", e.method, e.path);
        let security =
            op["security"].as_array().unwrap_or_else(|| panic!("{} {} has no security", e.method, e.path));
        let needs_token = e.access != souk_api::auth::access::Access::Public;
        assert_eq!(
            security.iter().any(|r| r.get("bearer").is_some()),
            needs_token,
            "{} {}",
            e.method,
            e.path
        );
    }
    let page = http.get(format!("{}/docs", node.url())).send().await.expect("docs");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("/v1/inventory/{sku}/reservations"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[("SOUK_BODY_TIMEOUT", "1s")]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let token = access_token(node.url(), ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let http = http_with_token(&token);
    let base = node.url();
    restock(&http, base, "DESK", 7).await;
    let before = stock(&http, base, "DESK").await;

    let post = |path: &str, body: Vec<u8>| {
        http.post(format!("{base}{path}")).header("content-type", "application/json").body(body).send()
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v1/inventory/DESK/restock", b"{not json".to_vec(), 400, "invalid_body"),
        ("/v1/inventory/DESK/restock", b"{}".to_vec(), 422, "invalid_body"),
        ("/v1/inventory/DESK/restock", br#"{"quantity":"five"}"#.to_vec(), 422, "invalid_body"),
        ("/v1/inventory/DESK/restock", br#"{"quantity":1.5}"#.to_vec(), 422, "invalid_body"),
        ("/v1/inventory/DESK/restock", br#"{"quantity":0}"#.to_vec(), 422, "invalid_quantity"),
        ("/v1/inventory/DESK/restock", br#"{"quantity":-3}"#.to_vec(), 422, "invalid_quantity"),
        ("/v1/inventory/DESK/restock", br#"{"quantity":1000000000000}"#.to_vec(), 422, "invalid_quantity"),
        ("/v1/inventory/DESK/restock", br#"{"quantity":1,"extra":true}"#.to_vec(), 422, "invalid_body"),
        ("/v1/inventory/DESK/reservations", br#"{"quantity":1}"#.to_vec(), 422, "invalid_body"),
        (
            "/v1/inventory/DESK/reservations",
            br#"{"reservation_id":"a.b","quantity":1}"#.to_vec(),
            422,
            "invalid_reservation_id",
        ),
        (
            "/v1/inventory/DESK/reservations",
            br#"{"reservation_id":"ok","quantity":0}"#.to_vec(),
            422,
            "invalid_quantity",
        ),
        (
            "/v1/inventory/DESK/reservations",
            br#"{"reservation_id":"ok","quantity":99}"#.to_vec(),
            409,
            "insufficient_stock",
        ),
        (
            "/v1/inventory/NO-SUCH-SKU/reservations",
            br#"{"reservation_id":"ok","quantity":1}"#.to_vec(),
            404,
            "unknown_sku",
        ),
        ("/v1/inventory/bad.sku/restock", br#"{"quantity":1}"#.to_vec(), 422, "invalid_sku"),
    ];
    for (path, body, status, code) in cases {
        let preview = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let r = post(path, body).await.expect("request");
        assert_eq!(r.status().as_u16(), status, "{path} {preview}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{path} {preview}");
        let problem: Value = r.json().await.expect("problem body");
        assert_eq!(problem["code"], code, "{path} {preview}");
        assert_eq!(problem["status"], status);
    }
    // A 10 MB body is refused from its Content-Length, before it is read.
    let (status, head, body) = raw_post(base, "/v1/inventory/DESK/restock", 10 * 1024 * 1024).await;
    assert_eq!(status, 413);
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    assert!(body.contains("payload_too_large"), "{body}");
    // A body without a length is cut off at the limit as it streams, with the same answer.
    let (status, head, body) = chunked_post(base, "/v1/admin/import", &token, 5 * 1024 * 1024).await;
    assert_eq!(status, 413, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    assert!(body.contains("payload_too_large"), "{body}");

    // A body that trickles in is refused once `body_timeout` has passed since the request
    // began, however steadily its bytes come: the answer arrives before the body is complete.
    let (status, head, body, sent) = trickle_post(
        base,
        "/v1/inventory/DESK/restock",
        &token,
        &format!("{{\"quantity\":5{}}}", " ".repeat(40)),
    )
    .await;
    assert_eq!(status, 408, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    assert!(body.contains("body_timeout"), "{body}");
    assert!(sent < 40, "the node answered only after {sent} of the body's bytes");

    // Wrong content type, unknown route, wrong method, unknown SKU on GET, bad query.
    let r =
        http.post(format!("{base}/v1/inventory/DESK/restock")).body("quantity=1").send().await.expect("req");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = http.get(format!("{base}/v1/nope")).send().await.expect("req");
    assert_eq!(
        (r.status(), r.headers()["content-type"].to_str().expect("ct")),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
    let r = http.put(format!("{base}/v1/inventory/DESK")).send().await.expect("req");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = http.get(format!("{base}/v1/inventory/NEVER-STOCKED")).send().await.expect("req");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    for q in ["limit=0", "limit=abc", "below=-1", "after=a.b"] {
        let r = http.get(format!("{base}/v1/inventory?{q}")).send().await.expect("req");
        assert!(r.status().is_client_error(), "{q}: {}", r.status());
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{q}");
    }
    assert_eq!(stock(&http, base, "DESK").await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_matches_entities_and_rebuilds_from_the_stream() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let http = admin_http(node.url()).await;
    let base = node.url().to_owned();

    let skus: Vec<String> = (0..30).map(|i| format!("RM-{i:02}")).collect();
    join_all(skus.iter().map(|s| restock(&http, &base, s, 20))).await;
    join_all((0..300).map(|i| {
        let (http, base, sku) = (http.clone(), base.clone(), skus[i % skus.len()].clone());
        async move { reserve(&http, &base, &sku, &format!("b-{i}"), 1 + (i as i64 % 3)).await }
    }))
    .await;
    join_all((0..30).map(|i| {
        let (http, base, sku) = (http.clone(), base.clone(), skus[i].clone());
        async move { http.delete(format!("{base}/v1/inventory/{sku}/reservations/b-{i}")).send().await }
    }))
    .await;

    let mut truth = BTreeMap::new();
    for s in &skus {
        truth.insert(s.clone(), stock(&http, &base, s).await);
    }
    let as_map = |items: Vec<Value>| -> BTreeMap<String, Value> {
        items.into_iter().map(|v| (v["sku"].as_str().expect("sku").to_owned(), v)).collect()
    };
    eventually("read model to match the entities", Duration::from_secs(20), || async {
        (as_map(list_all(&http, &base).await) == truth).then_some(())
    })
    .await;
    let low: Value = http
        .get(format!("{base}/v1/inventory?below=5"))
        .send()
        .await
        .expect("low")
        .json()
        .await
        .expect("json");
    for item in low["items"].as_array().expect("items") {
        assert!(item["available"].as_u64().expect("available") < 5);
    }

    // A second node with a fresh database replays the whole stream into the same table.
    let fresh = SoukNode::start(bin(), nats.url(), &[("SOUK_DB", "mem://")]).expect("second node");
    ready(&http, &fresh).await;
    eventually("replayed read model to match", Duration::from_secs(20), || async {
        (as_map(list_all(&http, fresh.url()).await) == truth).then_some(())
    })
    .await;
}

/// Polls `check` every 10 ms for up to 30 s, from a test without a runtime.
fn within_30s<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a POST of `len` bytes of text in 64 KiB chunks, without a length, for as long as the
/// node reads them; then reads the response.
async fn chunked_post(base: &str, path: &str, token: &str, len: usize) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let chunk =
        [format!("{:x}\r\n", 64 * 1024).into_bytes(), vec![b' '; 64 * 1024], b"\r\n".to_vec()].concat();
    // The node may stop reading once the body is over its limit: the writes then stall.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..len / (64 * 1024) {
            s.write_all(&chunk).await?;
        }
        s.write_all(b"0\r\n\r\n").await
    })
    .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    response(&buf)
}

/// Sends a POST whose body comes a byte every 200 ms, and reads the response as it comes;
/// answers the status, head, body and how many of the body's bytes were sent by then.
async fn trickle_post(base: &str, path: &str, token: &str, body: &str) -> (u16, String, String, usize) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = s.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await.expect("write head");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (sent, body) = (sent.clone(), body.as_bytes().to_vec());
        tokio::spawn(async move {
            for byte in body {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut buf)).await;
    let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    writer.abort();
    let (status, head, body) = response(&buf);
    (status, head, body, sent)
}

/// Sends the head of a POST announcing `len` bytes of JSON, then reads the response: the node
/// must answer from the head alone, as a client about to stream a huge body would need.
async fn raw_post(base: &str, path: &str, len: usize) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    response(&buf)
}

/// A raw HTTP/1.1 response's status, head and body.
fn response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
