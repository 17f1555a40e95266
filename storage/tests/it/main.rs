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

mod users {
    use souk_messages::UserId;
    use souk_messages::event::Event;
    use souk_messages::user::{Email, Name, Role, UserEvent};
    use souk_storage::{DbSettings, ReadModels, UserEvents, UserRepo};
    use std::collections::BTreeSet;

    async fn repo() -> UserRepo {
        let db = souk_storage::connect(&DbSettings {
            endpoint: "mem://".into(),
            namespace: "test".into(),
            database: super::uuid_like(),
            root: None,
        })
        .await
        .expect("mem db");
        ReadModels::new(db).users
    }

    fn event(id: &UserId, version: u64, body: UserEvent) -> Event<UserEvent> {
        Event {
            event_id: uuid::Uuid::now_v7(),
            id: id.to_string(),
            version,
            time: time::OffsetDateTime::now_utc(),
            correlation_id: None,
            body,
        }
    }

    fn registered(id: &UserId, email: &str, name: &str) -> Event<UserEvent> {
        event(
            id,
            1,
            UserEvent::Registered {
                email: Email::parse(email).expect("email"),
                name: Name::parse(name).expect("name"),
                phone: None,
                roles: BTreeSet::from([Role::Customer]),
            },
        )
    }

    #[tokio::test]
    async fn events_fold_into_rows_replays_change_nothing_and_search_finds_email_or_name() {
        let repo = repo().await;
        let (ada, bob) = (UserId::parse("usr-a").expect("id"), UserId::parse("usr-b").expect("id"));
        let batch = vec![
            UserEvents {
                id: ada.clone(),
                events: vec![(1, registered(&ada, "Ada@Example.com", "Ada Lovelace"))],
            },
            UserEvents { id: bob.clone(), events: vec![(2, registered(&bob, "bob@example.com", "Bob"))] },
        ];
        repo.apply(&batch, 2).await.expect("apply");
        let later = UserEvents {
            id: ada.clone(),
            events: vec![
                (3, event(&ada, 2, UserEvent::RolesChanged { roles: BTreeSet::from([Role::Staff]) })),
                (3, event(&ada, 3, UserEvent::Disabled {})),
            ],
        };
        repo.apply(&[later], 3).await.expect("apply");
        // The whole history again: nothing moves backwards.
        repo.apply(&batch, 2).await.expect("replay");
        assert_eq!(repo.checkpoint().await.expect("checkpoint"), 3);

        let all = repo.list(None, None, 10).await.expect("list");
        assert_eq!(all.len(), 2);
        let a = &all[0];
        assert_eq!((a.id.as_str(), a.version, a.disabled), ("usr-a", 3, true));
        assert_eq!(a.roles, BTreeSet::from([Role::Staff]));
        assert_eq!(a.email.as_str(), "Ada@example.com");
        let by_email = repo.list(Some("ADA@EXAMPLE"), None, 10).await.expect("search");
        assert_eq!(by_email.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-a"]);
        let by_name = repo.list(Some("bob"), None, 10).await.expect("search");
        assert_eq!(by_name.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-b"]);
        let page_two = repo.list(None, Some(&ada), 10).await.expect("page");
        assert_eq!(page_two.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-b"]);
    }
}
