//! Central logs: a record logged on one node is found through another node's log search by its
//! request id, and `souk logs tail` follows records live from NATS.

use crate::catalog::body;
use reqwest::StatusCode;
use serde_json::Value;
use souk_testkit::{NatsServer, SoukNode, admin_http, eventually, http, souk_command};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;

/// The node id a node's stdout names.
fn node_id(node: &SoukNode) -> String {
    node.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["node"].as_str().filter(|n| !n.is_empty()).map(str::to_owned))
        .expect("a log line with the node id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_logged_on_one_node_is_found_through_another_by_its_request_id() {
    let nats = NatsServer::start();
    let a = SoukNode::start(crate::bin(), nats.url(), &[]).expect("node a");
    let b = SoukNode::start(crate::bin(), nats.url(), &[]).expect("node b");
    let http = http();
    crate::ready(&http, &a).await;
    crate::ready(&http, &b).await;
    let request_id = format!("find-me-{}", uuid::Uuid::new_v4().simple());
    let r = http
        .get(format!("{}/v1/products/no-such-product", a.url()))
        .header("x-request-id", &request_id)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-request-id"], request_id.as_str());

    let admin = admin_http(b.url()).await;
    let url = format!("{}/v1/admin/logs?request_id={request_id}", b.url());
    let found = eventually("A's record in B's log search", Duration::from_secs(20), || async {
        let v = body(admin.get(&url).send().await.ok()?, StatusCode::OK).await;
        v["items"].as_array().filter(|i| !i.is_empty()).cloned()
    })
    .await;
    let record = &found[0];
    assert_eq!(record["node"], node_id(&a).as_str(), "{record}");
    assert_eq!(record["fields"]["message"], "request refused");
    assert_eq!(record["fields"]["status"], 404);
    assert_eq!(record["span"]["request_id"], request_id.as_str());
    assert_eq!(record["span"]["path"], "/v1/products/no-such-product");
    assert_eq!(record["level"], "INFO");

    // Filters narrow it down; none of them is a way around the admin role.
    let words = body(admin.get(format!("{url}&q=refused")).send().await.expect("q"), StatusCode::OK).await;
    assert_eq!(words["items"].as_array().map(Vec::len), Some(found.len()));
    let warn =
        body(admin.get(format!("{url}&level=warn")).send().await.expect("level"), StatusCode::OK).await;
    assert_eq!(warn["items"], serde_json::json!([]), "an info record is not a warning");
    let other =
        body(admin.get(format!("{url}&node={}", node_id(&b))).send().await.expect("node"), StatusCode::OK)
            .await;
    assert_eq!(other["items"], serde_json::json!([]));
    let r = admin.get(format!("{url}&level=loud")).send().await.expect("bad level");
    assert_eq!(body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");
    let r = http.get(&url).send().await.expect("anonymous");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_tail_follows_a_request_live() {
    let nats = NatsServer::start();
    let node = SoukNode::start(crate::bin(), nats.url(), &[]).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let dir = tempfile::tempdir().expect("dir");
    let request_id = format!("tail-{}", uuid::Uuid::new_v4().simple());
    let mut tail =
        souk_command(crate::bin(), nats.url(), dir.path(), &["logs", "tail", "--request-id", &request_id])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("souk logs tail");
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().expect("stdout")).lines();
    // The subscription starts a moment after the process: keep asking until a line arrives.
    let url = format!("{}/v1/products/nothing-here", node.url());
    let mut line = None;
    for _ in 0..40 {
        let _ = http.get(&url).header("x-request-id", &request_id).send().await;
        if let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
            line = Some(l);
            break;
        }
    }
    let line = line.expect("the request's record on the tail within 20 s");
    let v: Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(v["span"]["request_id"], request_id.as_str());
    assert_eq!(v["fields"]["message"], "request refused");
}
