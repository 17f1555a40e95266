//! Backups: what a cluster keeps in JetStream, restored into a new NATS, is the same shop to
//! the nodes started on it, and the shop goes on from there.

use crate::cart::{PASSWORD, customer};
use crate::catalog::{body, staff_node};
use crate::checkout::{approved_checkout, confirmed_order, lamp_on_sale};
use crate::{bin, levels, list_all, metric, ready, stock};
use reqwest::{Client, StatusCode};
use souk_testkit::{
    NatsServer, SoukNode, access_token, admin_http, eventually, http_with_token, souk_command,
};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

/// Runs `souk <args>` against `nats`; returns whether it succeeded and what it wrote to stderr.
async fn souk(nats: &NatsServer, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = souk_command(bin(), nats.url(), dir, args).output().await.expect("souk");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Waits until `base`'s order read model lists exactly the orders `want` for the customer.
async fn lists_orders(c: &Client, base: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    eventually(&format!("{base} to list the orders {want:?}"), Duration::from_secs(30), || async {
        let page: serde_json::Value = souk_testkit::json_at(c, format!("{base}/v1/orders")).await?;
        let mut seen: Vec<String> =
            page["items"].as_array()?.iter().filter_map(|o| o["id"].as_str()).map(str::to_owned).collect();
        seen.sort();
        (seen == want).then_some(())
    })
    .await;
}

/// The on-hand units of `sku` in the stock read model of `base`, once they are `want`.
async fn listed_on_hand(staff: &Client, base: &str, sku: &str, want: u64) {
    eventually("the stock read model", Duration::from_secs(30), || async {
        let items = list_all(staff, base).await;
        items.iter().any(|i| i["sku"] == sku && i["on_hand"] == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_new_nats_is_the_same_shop_to_new_and_old_nodes() {
    let (nats, mut old, http, staff) = staff_node().await;
    let base = old.url().to_owned();
    lamp_on_sale(&staff, &base, &base, "BACKUP-1", 10).await;
    let ada = customer(&http, &base, "ada@backup.test").await;
    let first = confirmed_order(&ada, &base, "BACKUP-1", 2, "backup-key-1").await;
    let backed_up = stock(&staff, &base, "BACKUP-1").await;
    assert_eq!(levels(&backed_up), (8, 0, 8));

    // Taken while the node runs; never written over another backup. The cluster records it:
    // every node reports when the last backup was taken, for the alert on stale backups.
    const LAST_BACKUP: &str = "souk_backup_last_success_timestamp_seconds";
    assert_eq!(metric(&http, &base, LAST_BACKUP).await, Some(0), "no backup yet");
    let tools = tempfile::tempdir().expect("tempdir");
    let out = tools.path().join("backup");
    let out_arg = out.to_str().expect("utf-8 path");
    let started = time::OffsetDateTime::now_utc().unix_timestamp();
    let (ok, log) = souk(&nats, tools.path(), &["backup", "--out", out_arg]).await;
    assert!(ok, "backup: {log}");
    let finished = time::OffsetDateTime::now_utc().unix_timestamp();
    eventually("the node to report the backup", Duration::from_secs(15), || async {
        metric(&http, &base, LAST_BACKUP).await.filter(|t| (started..=finished).contains(t))
    })
    .await;
    for file in std::fs::read_dir(&out).expect("backup folder") {
        let mode = file.expect("file").metadata().expect("metadata").permissions().mode();
        assert_eq!(mode & 0o077, 0, "a backup holds password hashes and keys: owner only");
    }
    assert!(out.join("manifest.json").is_file(), "{log}");
    assert!(log.contains("backed up SOUK_EVENTS_ORDER"), "{log}");
    assert!(!log.contains("KV_souk_leases"), "leases are not backed up: {log}");
    let (ok, log) = souk(&nats, tools.path(), &["backup", "--out", out_arg]).await;
    assert!(!ok && log.contains("is not empty"), "{log}");
    // The old cluster goes on after the backup; the backup does not have this order.
    let lost = confirmed_order(&ada, &base, "BACKUP-1", 1, "backup-key-lost").await;
    lists_orders(&ada, &base, &[&first, &lost]).await;
    listed_on_hand(&staff, &base, "BACKUP-1", 7).await;

    // Restored into a new NATS; a second restore there, or one of a folder that is no
    // backup, is refused.
    let fresh = NatsServer::start();
    let (ok, log) = souk(&fresh, tools.path(), &["restore", "--from", out_arg]).await;
    assert!(ok, "restore: {log}");
    let (ok, log) = souk(&fresh, tools.path(), &["restore", "--from", out_arg]).await;
    assert!(!ok && log.contains("already holds"), "a second restore: {log}");
    let (ok, log) =
        souk(&fresh, tools.path(), &["restore", "--from", tools.path().to_str().expect("path")]).await;
    assert!(!ok && log.contains("manifest.json"), "a folder that is no backup: {log}");

    // A new node on the restored NATS builds its read models from the restored events.
    let new = SoukNode::start(bin(), fresh.url(), &[]).expect("node");
    ready(&http, &new).await;
    let shop = new.url().to_owned();
    let staff_old = staff;
    let staff = admin_http(&shop).await;
    assert_eq!(levels(&stock(&staff, &shop, "BACKUP-1").await), levels(&backed_up));
    let ada = http_with_token(&access_token(&shop, "ada@backup.test", PASSWORD).await);
    lists_orders(&ada, &shop, &[&first]).await;
    listed_on_hand(&staff, &shop, "BACKUP-1", 8).await;

    // Restoring in place of a cluster's streams is refused while a node runs there.
    let (ok, log) = souk(&nats, tools.path(), &["restore", "--from", out_arg, "--replace"]).await;
    assert!(!ok && log.contains("nodes are running"), "restore --replace beside a node: {log}");
    assert_eq!(levels(&stock(&staff_old, &base, "BACKUP-1").await), (7, 0, 7), "nothing changed");

    // The old node, moved onto the restored NATS with its data dir, finds its read models
    // ahead of the streams and rebuilds them: the order the backup lacks is gone from them.
    assert!(old.stop().expect("stop"), "the old node stops cleanly");
    old.set_env("SOUK_NATS_URL", fresh.url());
    old.restart().expect("restart");
    ready(&http, &old).await;
    let moved = old.url().to_owned();
    assert!(old.log().contains("emptying this node's read models"), "{}", old.log());
    lists_orders(&ada, &moved, &[&first]).await;
    listed_on_hand(&staff, &moved, "BACKUP-1", 8).await;

    // The shop goes on where the backup left it; both nodes' read models follow.
    let next = confirmed_order(&ada, &shop, "BACKUP-1", 1, "backup-key-2").await;
    assert_eq!(levels(&stock(&staff, &moved, "BACKUP-1").await), (7, 0, 7));
    lists_orders(&ada, &moved, &[&first, &next]).await;
    lists_orders(&ada, &shop, &[&first, &next]).await;
    // An idempotency key used before the backup still names its order.
    let r = ada
        .post(format!("{shop}/v1/checkout"))
        .header("idempotency-key", "backup-key-1")
        .json(&approved_checkout())
        .send()
        .await;
    assert_eq!(body(r.expect("checkout"), StatusCode::OK).await["id"], first.as_str());

    // The old NATS, with no node left on it, takes the backup in place of its own streams: the
    // order the backup lacks is gone there too.
    let (ok, log) = souk(&nats, tools.path(), &["restore", "--from", out_arg, "--replace"]).await;
    assert!(ok, "restore --replace: {log}");
    let back = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    ready(&http, &back).await;
    let there = back.url().to_owned();
    let ada = http_with_token(&access_token(&there, "ada@backup.test", PASSWORD).await);
    lists_orders(&ada, &there, &[&first]).await;
    assert_eq!(levels(&stock(&admin_http(&there).await, &there, "BACKUP-1").await), levels(&backed_up));
}
