//! A three-server NATS cluster with replicated streams: losing a server loses nothing.

use crate::{bin, ready, restock, stock};
use reqwest::StatusCode;
use souk_testkit::{NatsCluster, SoukNode, admin_http, eventually, http};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_server_mid_traffic_loses_no_acknowledged_reservation() {
    let mut cluster = NatsCluster::start(3);
    let node =
        SoukNode::start(bin(), &cluster.urls(), &[("SOUK_NATS_REPLICAS", "3"), ("SOUK_LEASE_TTL", "5s")])
            .expect("node");
    let http = http();
    ready(&http, &node).await;
    let http = admin_http(node.url()).await;
    let base = node.url().to_owned();
    let skus: Vec<String> = (0..8).map(|i| format!("CL-{i}")).collect();
    for sku in &skus {
        assert_eq!(restock(&http, &base, sku, 100_000).await.status(), StatusCode::OK);
    }

    // Clients reserve continuously, retrying each reservation (same id) until it is acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (http, base, skus, acked, stop) =
            (http.clone(), base.clone(), skus.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sku = &skus[(c + n) % skus.len()];
                let id = format!("c{c}-{n}");
                loop {
                    let r = http
                        .post(format!("{base}/v1/inventory/{sku}/reservations"))
                        .json(&serde_json::json!({"reservation_id": id, "quantity": 1}))
                        .send()
                        .await;
                    if r.as_ref().is_ok_and(|r| r.status() == StatusCode::CREATED) {
                        acked.lock().await.push((sku.clone(), id.clone()));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
            }
        }));
    }

    let count = || async { acked.lock().await.len() };
    eventually("traffic before the failure", Duration::from_secs(20), || async {
        (count().await >= 50).then_some(())
    })
    .await;
    cluster.servers[0].kill();
    let at_kill = count().await;
    eventually("reservations to keep succeeding", Duration::from_secs(60), || async {
        (count().await >= at_kill + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    let acked = acked.lock().await.clone();
    for sku in &skus {
        let expected = acked.iter().filter(|(s, _)| s == sku).count() as u64;
        let v = stock(&http, &base, sku).await;
        assert_eq!(
            v["reserved"].as_u64(),
            Some(expected),
            "{sku}: every acknowledged reservation is stored once"
        );
    }
}
