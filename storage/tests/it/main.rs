//! Read-model tests against embedded SurrealDB.

use souk_messages::Sku;
use souk_messages::stock::Levels;
use souk_storage::{DbSettings, StockChange, StockRepo};

async fn repo() -> StockRepo {
    let db = souk_storage::connect(&DbSettings {
        endpoint: "mem://".into(),
        namespace: "test".into(),
        database: uuid_like(),
        root: None,
    })
    .await
    .expect("mem db");
    StockRepo::new(db)
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn change(sku: &str, version: u64, on_hand: u64, reserved: u64) -> StockChange {
    StockChange {
        sku: Sku::parse(sku).expect("sku"),
        version,
        seq: version,
        levels: Levels { on_hand, reserved },
    }
}

#[tokio::test]
async fn apply_keeps_the_newest_version_and_the_checkpoint_only_grows() {
    let repo = repo().await;
    assert_eq!(repo.checkpoint().await.expect("checkpoint"), 0);
    repo.apply(&[change("A", 2, 10, 3), change("B", 1, 5, 0)], 7).await.expect("apply");
    // An older version of A, replayed, changes nothing; the checkpoint does not go back.
    repo.apply(&[change("A", 1, 10, 0)], 3).await.expect("replay");
    let items = repo.list(None, None, 10).await.expect("list");
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].sku.as_str(), items[0].available, items[0].version), ("A", 7, 2));
    assert_eq!(repo.checkpoint().await.expect("checkpoint"), 7);
}

#[tokio::test]
async fn list_pages_by_sku_and_filters_low_stock() {
    let repo = repo().await;
    let changes: Vec<StockChange> = (0..5).map(|i| change(&format!("S{i}"), 1, i * 10, 0)).collect();
    repo.apply(&changes, 5).await.expect("apply");
    let first = repo.list(None, None, 2).await.expect("page 1");
    assert_eq!(first.iter().map(|v| v.sku.as_str()).collect::<Vec<_>>(), ["S0", "S1"]);
    let second = repo.list(Some(&first[1].sku), None, 2).await.expect("page 2");
    assert_eq!(second.iter().map(|v| v.sku.as_str()).collect::<Vec<_>>(), ["S2", "S3"]);
    let low = repo.list(None, Some(15), 10).await.expect("low");
    assert_eq!(low.iter().map(|v| v.sku.as_str()).collect::<Vec<_>>(), ["S0", "S1"]);
}
