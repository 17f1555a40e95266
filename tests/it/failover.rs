//! Two nodes on one NATS server: shards spread, a killed node's shards move, nothing is lost;
//! and a node's own nats-server that crashes comes back with its store.

use crate::{bare_serve, bin, levels, metric, ready, reserve, restock, stock, with_retry};
use futures::future::join_all;
use reqwest::{Client, StatusCode};
use souk_testkit::{NatsServer, SoukNode, admin_http, eventually, http, souk_command};
use std::time::Duration;

/// Shards of stock this node owns, from its `/metrics`.
pub(crate) async fn shards_owned(http: &Client, base: &str) -> Option<u64> {
    metric(http, base, "souk_shards_owned{kind=\"stock\"}").await.and_then(|n| u64::try_from(n).ok())
}

/// The email pace this node allows itself (its share of the cluster's), from its `/metrics`.
async fn email_pace(http: &Client, base: &str) -> Option<f64> {
    let text = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    let series = "souk_notification_pace_per_second{channel=\"email\"} ";
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|n| n.parse().ok())
}

/// Waits up to `within` for the node at `base` to own all 16 stock shards.
async fn owns_every_shard(http: &Client, base: &str, within: Duration) {
    eventually("the node to own every shard", within, || async {
        (shards_owned(http, base).await? == 16).then_some(())
    })
    .await;
}

async fn both_own_shards(http: &Client, a: &str, b: &str) {
    eventually("both nodes to own shards", Duration::from_secs(30), || async {
        let (x, y) = (shards_owned(http, a).await?, shards_owned(http, b).await?);
        (x > 0 && y > 0 && x + y == 16).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_hands_its_shards_to_the_survivor_and_takes_them_back() {
    let nats = NatsServer::start();
    let mut a = SoukNode::start(bin(), nats.url(), &[]).expect("node a");
    let b = SoukNode::start(bin(), nats.url(), &[]).expect("node b");
    let http = http();
    ready(&http, &a).await;
    ready(&http, &b).await;
    let http = admin_http(a.url()).await;
    both_own_shards(&http, a.url(), b.url()).await;
    // The providers' pace (20 emails a second by default) is the cluster's: each node takes half.
    for node in [a.url(), b.url()] {
        eventually("each node pacing at half the rate", Duration::from_secs(20), || async {
            (email_pace(&http, node).await? == 10.0).then_some(())
        })
        .await;
    }

    // Every SKU works through either node, whichever owns it.
    let skus: Vec<String> = (0..40).map(|i| format!("FO-{i:02}")).collect();
    for (i, sku) in skus.iter().enumerate() {
        let (w, r) = if i % 2 == 0 { (a.url(), b.url()) } else { (b.url(), a.url()) };
        assert_eq!(restock(&http, w, sku, 10).await.status(), StatusCode::OK);
        assert_eq!(reserve(&http, r, sku, "first", 2).await.status(), StatusCode::CREATED);
    }
    let mut before = Vec::new();
    for sku in &skus {
        before.push(stock(&http, a.url(), sku).await);
    }

    a.kill();
    // Within the lease TTL plus a few seconds, every SKU answers through the survivor.
    let b_url = b.url().to_owned();
    eventually("every SKU to answer through the survivor", Duration::from_secs(20), || async {
        let answers =
            join_all(skus.iter().map(|s| http.get(format!("{b_url}/v1/inventory/{s}")).send())).await;
        answers.iter().all(|r| r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)).then_some(())
    })
    .await;
    for (sku, was) in skus.iter().zip(&before) {
        assert_eq!(&stock(&http, &b_url, sku).await, was, "{sku} survived the kill unchanged");
    }
    eventually("the survivor pacing at the whole rate", Duration::from_secs(20), || async {
        (email_pace(&http, &b_url).await? == 20.0).then_some(())
    })
    .await;
    // Writes go on through the survivor.
    for sku in &skus {
        let r = with_retry(|| {
            http.post(format!("{b_url}/v1/inventory/{sku}/reservations"))
                .json(&serde_json::json!({"reservation_id": "second", "quantity": 1}))
                .send()
        })
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    // The killed node comes back and takes its share again.
    a.restart().expect("restart a");
    ready(&http, &a).await;
    both_own_shards(&http, a.url(), &b_url).await;
    for sku in &skus {
        let via_a = with_retry(|| http.get(format!("{}/v1/inventory/{sku}", a.url())).send()).await;
        let v: serde_json::Value = via_a.json().await.expect("json");
        assert_eq!(levels(&v), (10, 3, 7), "{sku}: both acknowledged reservations are there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_gracefully_hands_off_without_errors() {
    let nats = NatsServer::start();
    let a = SoukNode::start(bin(), nats.url(), &[]).expect("node a");
    let mut b = SoukNode::start(bin(), nats.url(), &[]).expect("node b");
    let http = http();
    ready(&http, &a).await;
    ready(&http, &b).await;
    let http = admin_http(a.url()).await;
    both_own_shards(&http, a.url(), b.url()).await;
    let skus: Vec<String> = (0..20).map(|i| format!("GS-{i:02}")).collect();
    for sku in &skus {
        assert_eq!(restock(&http, a.url(), sku, 5).await.status(), StatusCode::OK);
    }
    assert!(b.stop().expect("stop b"), "graceful stop exits 0");
    // The survivor owns every shard well before b's lease would have expired.
    owns_every_shard(&http, a.url(), Duration::from_secs(10)).await;
    for sku in &skus {
        assert_eq!(levels(&stock(&http, a.url(), sku).await), (5, 0, 5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_listen_exits_without_taking_shards_from_the_cluster() {
    let nats = NatsServer::start();
    let a = SoukNode::start(bin(), nats.url(), &[]).expect("node a");
    let http = http();
    ready(&http, &a).await;
    owns_every_shard(&http, a.url(), Duration::from_secs(30)).await;

    // A second node configured with the address a already listens on.
    let taken = a.url().trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = souk_command(bin(), nats.url(), dir.path(), &["serve"])
        .env("SOUK_HTTP_ADDR", &taken)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node b");
    // Had b announced itself, a would hand it shards on its next tick (a third of the lease)
    // and get them back only once b's heartbeat expired: watch until three lease times after
    // b is gone.
    let (mut fewest, mut exited, mut watch_until) = (16, None, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while watch_until.is_none_or(|t| tokio::time::Instant::now() < t) {
        assert!(tokio::time::Instant::now() < deadline, "b did not exit within 30 s");
        fewest = fewest.min(shards_owned(&http, a.url()).await.unwrap_or(16));
        if exited.is_none() {
            exited = b.try_wait().expect("wait");
            if exited.is_some() {
                watch_until = Some(tokio::time::Instant::now() + Duration::from_secs(6));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = exited.expect("b exited");
    let mut log = String::new();
    if let Some(mut err) = b.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut err, &mut log).await.expect("stderr");
    }
    assert!(!exited.success() && log.contains("cannot listen"), "{exited}: {log}");
    assert_eq!(fewest, 16, "a kept every shard while b failed to start");
    assert_eq!(shards_owned(&http, a.url()).await, Some(16));
}

/// The pid of the nats-server a node without a NATS URL runs for itself, from its pid file.
fn own_nats_pid(node: &SoukNode) -> Option<u32> {
    std::fs::read_to_string(node.data_dir().join("nats").join("nats.pid")).ok()?.trim().parse().ok()
}

fn running(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills whatever own server a node left running when the test ends, passed or not.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.iter().filter(|p| running(**p)) {
            let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

/// A single node's own nats-server that crashes is started again on its port and store: the
/// node becomes ready again by itself, everything acknowledged before the crash is there, and
/// a graceful stop still stops the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_s_own_nats_server_that_crashes_is_started_again_with_its_store() {
    let mut node = SoukNode::start(bin(), "", &[]).expect("node with its own nats-server");
    let mut reaper = Reaper(Vec::new());
    ready(&http(), &node).await;
    let admin = admin_http(node.url()).await;
    let base = node.url().to_owned();
    assert_eq!(restock(&admin, &base, "OWN-1", 10).await.status(), StatusCode::OK);
    assert_eq!(reserve(&admin, &base, "OWN-1", "before", 3).await.status(), StatusCode::CREATED);

    let first = own_nats_pid(&node).expect("the node runs its own nats-server");
    reaper.0.push(first);
    std::process::Command::new("kill").arg("-KILL").arg(first.to_string()).status().expect("kill");
    let second = eventually("the node's nats-server to run again", Duration::from_secs(30), || async {
        own_nats_pid(&node).filter(|p| *p != first && running(*p))
    })
    .await;
    reaper.0.push(second);
    ready(&http(), &node).await;
    let after = with_retry(|| {
        let body = serde_json::json!({ "reservation_id": "after", "quantity": 2 });
        admin.post(format!("{base}/v1/inventory/OWN-1/reservations")).json(&body).send()
    })
    .await;
    assert_eq!(after.status(), StatusCode::CREATED, "a write after the restart");
    assert_eq!(levels(&stock(&admin, &base, "OWN-1").await), (10, 5, 5), "nothing acknowledged is lost");
    assert!(node.log().contains("the local nats-server exited; starting it again"), "{}", node.log());
    assert_eq!(metric(&http(), &base, "souk_local_nats_exits_total").await, Some(1));

    let stopped = tokio::task::spawn_blocking(move || node.stop()).await.expect("join");
    assert!(stopped.expect("stopped within 30 s of SIGTERM"), "SIGTERM should exit 0");
    assert!(!running(second), "the node's stop stops the server it started again");
}

/// A second node started on the data dir of a running one refuses to start, naming the
/// holder, and leaves the running node and its own nats-server alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_data_dir_in_use_refuses_to_start_and_leaves_the_first_alone() {
    let node = SoukNode::start(bin(), "", &[]).expect("node with its own nats-server");
    let _reaper = Reaper(own_nats_pid(&node).into_iter().collect());
    ready(&http(), &node).await;
    let nats = own_nats_pid(&node).expect("the node runs its own nats-server");

    let second = tokio::process::Command::from(bare_serve(&node.data_dir())).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(30), second).await.expect("it exits").expect("run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second node on the same data dir started:\n{text}");
    assert!(text.contains("is in use by another souk node"), "{text}");
    assert_eq!(own_nats_pid(&node), Some(nats), "the first node's nats-server is the same process");
    assert!(running(nats));
    ready(&http(), &node).await;
    assert_eq!(metric(&http(), node.url(), "souk_local_nats_exits_total").await, Some(0));
}
