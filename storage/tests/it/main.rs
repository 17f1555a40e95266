//! Read-model tests against embedded SurrealDB.

use souk_messages::Sku;
use souk_messages::log::LogRecord;
use souk_messages::stock::Levels;
use souk_storage::{DbSettings, LogQuery, ReadModels, StockChange, StockRepo, Writers};

/// A fresh in-memory database.
async fn db() -> souk_storage::Db {
    souk_storage::connect(&DbSettings {
        endpoint: "mem://".into(),
        namespace: "test".into(),
        database: uuid::Uuid::new_v4().simple().to_string(),
        root: None,
    })
    .await
    .expect("mem db")
}

/// Every read model over a fresh in-memory database.
async fn read_models() -> ReadModels {
    ReadModels::new(db().await)
}

async fn repo() -> StockRepo {
    read_models().await.stock
}

fn change(sku: &str, version: u64, on_hand: u64, reserved: u64) -> StockChange {
    StockChange {
        sku: Sku::parse(sku).expect("sku"),
        version,
        seq: version,
        levels: Levels { on_hand, reserved, ..Levels::default() },
    }
}

#[tokio::test]
async fn apply_keeps_the_newest_version_and_the_checkpoint_only_grows() {
    let repo = repo().await;
    assert_eq!(repo.checkpoint().await.expect("checkpoint"), 0);
    repo.apply(&[change("A", 2, 10, 3), change("B", 1, 5, 0)], 7, Writers::Shared).await.expect("apply");
    // An older version of A, replayed, changes nothing; the checkpoint does not go back.
    repo.apply(&[change("A", 1, 10, 0)], 3, Writers::Shared).await.expect("replay");
    let items = repo.list(None, None, 10).await.expect("list");
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].sku.as_str(), items[0].available, items[0].version), ("A", 7, 2));
    assert_eq!(repo.checkpoint().await.expect("checkpoint"), 7);
}

#[tokio::test]
async fn rows_a_writer_has_met_and_rows_it_has_not_both_take_each_newer_version() {
    let db = db().await;
    let (a, b) = (StockRepo::new(db.clone()), StockRepo::new(db));
    let levels = |repo: &StockRepo| {
        let repo = repo.clone();
        async move {
            let items = repo.list(None, None, 10).await.expect("list");
            items.iter().map(|v| (v.sku.to_string(), v.on_hand, v.reserved, v.version)).collect::<Vec<_>>()
        }
    };
    a.apply(&[change("A", 1, 10, 0)], 1, Writers::Sole).await.expect("first");
    // A is now known to `a`; B is not: one batch takes both paths.
    a.apply(&[change("A", 2, 10, 4), change("B", 1, 5, 1)], 2, Writers::Sole).await.expect("second");
    assert_eq!(levels(&a).await, [("A".into(), 10, 4, 2), ("B".into(), 5, 1, 1)]);
    // `b` has met neither row (another node's writer over a shared database, or a restart).
    b.apply(&[change("A", 3, 12, 4)], 3, Writers::Shared).await.expect("shared, unknown row");
    b.apply(&[change("A", 2, 10, 4)], 4, Writers::Shared).await.expect("shared replay, known row");
    assert_eq!(levels(&b).await[0], ("A".into(), 12, 4, 3));
    a.apply(&[change("A", 4, 12, 0)], 5, Writers::Sole).await.expect("known row changed by another writer");
    assert_eq!(levels(&a).await, [("A".into(), 12, 0, 4), ("B".into(), 5, 1, 1)]);
    assert_eq!(a.checkpoint().await.expect("checkpoint"), 5);
}

#[tokio::test]
async fn list_pages_by_sku_and_filters_low_stock() {
    let repo = repo().await;
    let changes: Vec<StockChange> = (0..5).map(|i| change(&format!("S{i}"), 1, i * 10, 0)).collect();
    repo.apply(&changes, 5, Writers::Sole).await.expect("apply");
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
    use souk_storage::{UserEvents, UserRepo};
    use std::collections::BTreeSet;

    async fn repo() -> UserRepo {
        super::read_models().await.users
    }

    fn event(id: &UserId, version: u64, body: UserEvent) -> Event<UserEvent> {
        Event {
            event_id: uuid::Uuid::now_v7(),
            id: id.to_string(),
            version,
            time: time::OffsetDateTime::now_utc(),
            correlation_id: None,
            actor: None,
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
                locale: None,
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
                (
                    3,
                    event(
                        &ada,
                        4,
                        UserEvent::ProfileUpdated {
                            name: Name::parse("Ada Lovelace").expect("name"),
                            phone: None,
                            sms_opt_out: false,
                            locale: Some(souk_messages::user::Locale::parse("fr").expect("tag")),
                        },
                    ),
                ),
            ],
        };
        repo.apply(&[later], 3).await.expect("apply");
        // The whole history again: nothing moves backwards.
        repo.apply(&batch, 2).await.expect("replay");
        assert_eq!(repo.checkpoint().await.expect("checkpoint"), 3);

        let all = repo.list(None, None, 10).await.expect("list");
        assert_eq!(all.len(), 2);
        let a = &all[0];
        assert_eq!((a.id.as_str(), a.version, a.disabled), ("usr-a", 4, true));
        assert_eq!(
            a.locale.as_ref().map(|l| l.as_str()),
            Some("fr"),
            "staff hear about stock in their language"
        );
        assert_eq!(all[1].locale, None);
        assert_eq!(a.roles, BTreeSet::from([Role::Staff]));
        assert_eq!(a.email.as_str(), "Ada@example.com");
        let by_email = repo.list(Some("ADA@EXAMPLE"), None, 10).await.expect("search");
        assert_eq!(by_email.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-a"]);
        let by_name = repo.list(Some("bob"), None, 10).await.expect("search");
        assert_eq!(by_name.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-b"]);
        let page_two = repo.list(None, Some(&ada), 10).await.expect("page");
        assert_eq!(page_two.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-b"]);
    }

    #[tokio::test]
    async fn an_erased_account_leaves_no_row_and_its_tombstone_alone_makes_none() {
        let repo = repo().await;
        let (ada, bob) = (UserId::parse("usr-a").expect("id"), UserId::parse("usr-b").expect("id"));
        let batch = vec![
            UserEvents { id: ada.clone(), events: vec![(1, registered(&ada, "ada@example.com", "Ada"))] },
            UserEvents { id: bob.clone(), events: vec![(2, registered(&bob, "bob@example.com", "Bob"))] },
        ];
        repo.apply(&batch, 2).await.expect("apply");
        let erased = UserEvents { id: ada.clone(), events: vec![(3, event(&ada, 2, UserEvent::Erased {}))] };
        repo.apply(std::slice::from_ref(&erased), 3).await.expect("erase");
        let ids = |users: Vec<souk_messages::user::UserView>| {
            users.into_iter().map(|u| u.id.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(repo.list(None, None, 10).await.expect("list")), ["usr-b"]);
        assert!(repo.list(Some("ada"), None, 10).await.expect("search").is_empty());
        // A rebuild after the purge sees only the tombstone.
        let rebuilt = self::repo().await;
        rebuilt.apply(&[erased], 3).await.expect("rebuild");
        assert!(rebuilt.list(None, None, 10).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn the_staff_are_enabled_staff_and_admins() {
        let repo = repo().await;
        let ids: Vec<UserId> =
            ["usr-s", "usr-c", "usr-a", "usr-d"].iter().map(|i| UserId::parse(*i).expect("id")).collect();
        let mut batch = Vec::new();
        for (i, (id, roles)) in ids
            .iter()
            .zip([vec![Role::Staff], vec![Role::Customer], vec![Role::Admin], vec![Role::Staff]])
            .enumerate()
        {
            let mut events = vec![(i as u64 + 1, registered(id, &format!("{id}@x.test"), "N"))];
            events.push((
                i as u64 + 1,
                event(id, 2, UserEvent::RolesChanged { roles: roles.into_iter().collect() }),
            ));
            if id.as_str() == "usr-d" {
                events.push((i as u64 + 1, event(id, 3, UserEvent::Disabled {})));
            }
            batch.push(UserEvents { id: id.clone(), events });
        }
        repo.apply(&batch, 4).await.expect("apply");
        let staff = repo.staff().await.expect("staff");
        assert_eq!(staff.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-a", "usr-s"]);
        // Roles given at registration count too.
        let boss = UserId::parse("usr-b").expect("id");
        let mut reg = registered(&boss, "boss@x.test", "Boss");
        if let UserEvent::Registered { roles, .. } = &mut reg.body {
            *roles = BTreeSet::from([Role::Admin]);
        }
        repo.apply(&[UserEvents { id: boss, events: vec![(5, reg)] }], 5).await.expect("apply");
        let staff = repo.staff().await.expect("staff");
        assert_eq!(staff.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["usr-a", "usr-b", "usr-s"]);
    }
}

mod notifications {
    use souk_messages::event::Event;
    use souk_messages::notify::{Channel, NotificationEvent, NotificationId, Outcome, Topic};
    use souk_storage::{DeliveryQuery, NotificationEvents};

    fn attempt(id: &NotificationId, n: u64, to: &str, outcome: Outcome) -> Event<NotificationEvent> {
        attempt_at(id, n, to, outcome, time::OffsetDateTime::now_utc())
    }

    fn attempt_at(
        id: &NotificationId,
        n: u64,
        to: &str,
        outcome: Outcome,
        at: time::OffsetDateTime,
    ) -> Event<NotificationEvent> {
        Event {
            event_id: uuid::Uuid::now_v7(),
            id: id.to_string(),
            version: n,
            time: at,
            correlation_id: None,
            actor: None,
            body: NotificationEvent::Attempted {
                channel: Channel::Email,
                topic: Topic::OrderConfirmed,
                to: to.to_owned(),
                customer: None,
                order: None,
                outcome,
                detail: (outcome != Outcome::Sent).then(|| "HTTP 503".to_owned()),
                webhook: None,
            },
        }
    }

    #[tokio::test]
    async fn attempts_gather_under_their_notification_and_filters_find_them() {
        let repo = super::read_models().await.notifications;
        let (a, b) = (
            NotificationId::of(&uuid::Uuid::new_v4(), Channel::Email, "a@x.test"),
            NotificationId::of(&uuid::Uuid::new_v4(), Channel::Email, "b@x.test"),
        );
        let first = vec![
            NotificationEvents {
                id: a.clone(),
                events: vec![(1, attempt(&a, 1, "a@x.test", Outcome::Failed))],
            },
            NotificationEvents {
                id: b.clone(),
                events: vec![(2, attempt(&b, 1, "b@x.test", Outcome::Sent))],
            },
        ];
        repo.apply(&first, 2).await.expect("apply");
        let second = vec![NotificationEvents {
            id: a.clone(),
            events: vec![(3, attempt(&a, 2, "a@x.test", Outcome::Sent))],
        }];
        repo.apply(&second, 3).await.expect("apply");
        repo.apply(&first, 2).await.expect("replay");
        let q = |to: Option<&str>, status: Option<Outcome>| DeliveryQuery {
            to: to.map(str::to_owned),
            status,
            limit: 10,
            ..DeliveryQuery::default()
        };
        let only_a = repo.list(&q(Some("a@x.test"), None)).await.expect("list");
        assert_eq!(only_a.items.len(), 1);
        let attempts: Vec<(u64, Outcome)> =
            only_a.items[0].attempts.iter().map(|x| (x.attempt, x.outcome)).collect();
        assert_eq!(attempts, [(1, Outcome::Failed), (2, Outcome::Sent)]);
        assert_eq!(only_a.items[0].status, Outcome::Sent);
        assert_eq!(repo.list(&q(None, Some(Outcome::Sent))).await.expect("list").items.len(), 2);
        assert_eq!(repo.list(&q(None, Some(Outcome::Failed))).await.expect("list").items.len(), 0);
        assert_eq!(repo.checkpoint().await.expect("checkpoint"), 3);
    }

    #[tokio::test]
    async fn a_person_s_deliveries_are_found_by_customer_or_address_and_redaction_removes_them() {
        let repo = super::read_models().await.notifications;
        let ada = souk_messages::UserId::parse("usr-ada").expect("id");
        let id = |to: &str| NotificationId::of(&uuid::Uuid::new_v4(), Channel::Email, to);
        let (order_mail, staff_mail, other) = (id("ada@x.test"), id("ada@x.test"), id("bob@x.test"));
        let mut about_ada = attempt(&order_mail, 1, "ada@x.test", Outcome::Sent);
        if let NotificationEvent::Attempted { customer, .. } = &mut about_ada.body {
            *customer = Some(ada.clone());
        }
        let batch = vec![
            NotificationEvents { id: order_mail.clone(), events: vec![(1, about_ada)] },
            NotificationEvents {
                id: staff_mail.clone(),
                events: vec![(2, attempt(&staff_mail, 1, "ada@x.test", Outcome::Sent))],
            },
            NotificationEvents {
                id: other.clone(),
                events: vec![(3, attempt(&other, 1, "bob@x.test", Outcome::Sent))],
            },
        ];
        repo.apply(&batch, 3).await.expect("apply");
        let mut expected = [order_mail.to_string(), staff_mail.to_string()];
        expected.sort();
        let ids = |found: Vec<souk_storage::notification::Delivery>| {
            found.into_iter().map(|d| d.id).collect::<Vec<_>>()
        };
        let found = repo.of_person(&ada, &["ada@x.test".to_owned()]).await.expect("find");
        assert_eq!(ids(found), expected);
        assert_eq!(ids(repo.of_person(&ada, &[]).await.expect("find")), [order_mail.to_string()]);

        let redacted = |id: &NotificationId, seq: u64| NotificationEvents {
            id: id.clone(),
            events: vec![(
                seq,
                Event {
                    event_id: uuid::Uuid::now_v7(),
                    id: id.to_string(),
                    version: 2,
                    time: time::OffsetDateTime::now_utc(),
                    correlation_id: None,
                    actor: None,
                    body: NotificationEvent::Redacted {},
                },
            )],
        };
        repo.apply(&[redacted(&order_mail, 4), redacted(&staff_mail, 5)], 5).await.expect("redact");
        assert!(repo.of_person(&ada, &["ada@x.test".to_owned()]).await.expect("find").is_empty());
        let all = repo.list(&DeliveryQuery { limit: 10, ..DeliveryQuery::default() }).await.expect("list");
        assert_eq!(all.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), [other.to_string()]);
        assert!(repo.get(&order_mail).await.expect("get").is_none());
    }

    #[tokio::test]
    async fn the_log_pages_newest_first_and_deliveries_made_in_the_same_nanosecond_come_once_each() {
        let repo = super::read_models().await.notifications;
        let t = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let id = |to: &str| NotificationId::of(&uuid::Uuid::new_v4(), Channel::Email, to);
        let mut tied: Vec<NotificationId> = (0..3).map(|i| id(&format!("t{i}@x.test"))).collect();
        let (older, newer) = (id("old@x.test"), id("new@x.test"));
        let mut batch: Vec<NotificationEvents> = tied
            .iter()
            .enumerate()
            .map(|(i, n)| NotificationEvents {
                id: n.clone(),
                events: vec![(i as u64 + 1, attempt_at(n, 1, &format!("t{i}@x.test"), Outcome::Sent, t))],
            })
            .collect();
        let nanosecond = time::Duration::nanoseconds(1);
        for (seq, n, to, at) in
            [(4, &older, "old@x.test", t - nanosecond), (5, &newer, "new@x.test", t + nanosecond)]
        {
            batch.push(NotificationEvents {
                id: n.clone(),
                events: vec![(seq, attempt_at(n, 1, to, Outcome::Sent, at))],
            });
        }
        repo.apply(&batch, 5).await.expect("apply");

        tied.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut expected = vec![newer.to_string()];
        expected.extend(tied.iter().rev().map(ToString::to_string));
        expected.push(older.to_string());
        let pages = |status: Option<Outcome>| {
            let repo = &repo;
            async move {
                let (mut seen, mut after) = (Vec::new(), None);
                loop {
                    let q = DeliveryQuery { status, after, limit: 1, ..DeliveryQuery::default() };
                    let page = repo.list(&q).await.expect("list");
                    seen.extend(page.items.iter().map(|d| d.id.to_string()));
                    match page.next {
                        Some(next) => after = Some(next),
                        None => return seen,
                    }
                }
            }
        };
        assert_eq!(pages(None).await, expected, "newest first, ties by id descending");
        assert_eq!(pages(Some(Outcome::Sent)).await, expected, "the same through the status index");
        assert!(pages(Some(Outcome::Failed)).await.is_empty());
        // A cursor the log did not hand out is refused rather than read as the first page.
        for bad in ["nonsense", "12|", "x|ntf-1"] {
            let q = DeliveryQuery { after: Some(bad.into()), limit: 1, ..DeliveryQuery::default() };
            assert!(matches!(repo.list(&q).await, Err(souk_storage::StorageError::BadCursor(_))), "{bad}");
        }
    }
}

mod catalog {
    use souk_messages::Sku;
    use souk_messages::event::Event;
    use souk_messages::product::{
        Currency, Money, ProductData, ProductEvent, ProductId, ProductStatus, Slug, Variant,
    };
    use souk_storage::{CatalogQuery, CatalogRepo, ProductEvents, Sort};
    use std::collections::{BTreeMap, BTreeSet};

    async fn repo() -> CatalogRepo {
        super::read_models().await.catalog
    }

    fn product(
        n: usize,
        title: &str,
        description: &str,
        price: i64,
        category: &str,
        size: &str,
    ) -> ProductData {
        ProductData {
            title: title.into(),
            slug: Slug::parse(&format!("p-{n}")).expect("slug"),
            description: description.into(),
            categories: BTreeSet::from([category.to_owned()]),
            attributes: BTreeMap::new(),
            images: Vec::new(),
            variants: vec![Variant {
                sku: Sku::parse(format!("SKU-{n}")).expect("sku"),
                price: Money::new(price, Currency::parse("EUR").expect("eur")).expect("money"),
                attributes: BTreeMap::from([("size".to_owned(), size.to_owned())]),
            }],
        }
    }

    fn created(id: &ProductId, data: ProductData, status: ProductStatus, seq: u64) -> ProductEvents {
        let event = Event {
            event_id: uuid::Uuid::now_v7(),
            id: id.to_string(),
            version: 1,
            time: time::OffsetDateTime::now_utc() + time::Duration::milliseconds(seq as i64),
            correlation_id: None,
            actor: None,
            body: ProductEvent::Created { product: data, status },
        };
        ProductEvents { id: id.clone(), events: vec![(seq, event)] }
    }

    fn titles(page: &souk_storage::CatalogPage) -> Vec<String> {
        page.items.iter().map(|r| r.state.data.as_ref().expect("data").title.clone()).collect()
    }

    #[tokio::test]
    async fn filters_sorts_pages_and_searches_with_title_matches_first() {
        let repo = repo().await;
        let rows = [
            ("Linen shirt", "A light shirt for summer", 3000, "shirts", "M", ProductStatus::Active),
            ("Wool scarf", "Goes with any shirt", 2000, "scarves", "S", ProductStatus::Active),
            ("Denim jacket", "Sturdy", 9000, "jackets", "L", ProductStatus::Active),
            ("Secret shirt", "Not yet", 100, "shirts", "M", ProductStatus::Draft),
        ];
        let batch: Vec<ProductEvents> = rows
            .iter()
            .enumerate()
            .map(|(i, (t, d, p, c, s, st))| {
                created(&ProductId::generate(), product(i, t, d, *p, c, s), *st, i as u64 + 1)
            })
            .collect();
        repo.apply(&batch, 4).await.expect("apply");
        repo.apply(&batch, 4).await.expect("replay changes nothing");

        let q = |f: &dyn Fn(&mut CatalogQuery)| {
            let mut q = CatalogQuery { limit: 10, ..CatalogQuery::default() };
            f(&mut q);
            q
        };
        let newest = repo.list(&q(&|_| {})).await.expect("list");
        assert_eq!(
            titles(&newest),
            ["Denim jacket", "Wool scarf", "Linen shirt"],
            "drafts hidden, newest first"
        );
        let all = repo.list(&q(&|q| q.all_statuses = true)).await.expect("list");
        assert_eq!(all.items.len(), 4);
        let cheap = repo.list(&q(&|q| q.sort = Sort::PriceAsc)).await.expect("list");
        assert_eq!(titles(&cheap), ["Wool scarf", "Linen shirt", "Denim jacket"]);
        let shirts = repo.list(&q(&|q| q.category = Some("shirts".into()))).await.expect("list");
        assert_eq!(titles(&shirts), ["Linen shirt"]);
        let mid = repo
            .list(&q(&|q| {
                q.min_price = Some(2500);
                q.max_price = Some(5000);
            }))
            .await
            .expect("list");
        assert_eq!(titles(&mid), ["Linen shirt"]);
        let large = repo.list(&q(&|q| q.attribute = Some(("size".into(), "l".into())))).await.expect("list");
        assert_eq!(titles(&large), ["Denim jacket"]);

        // Search: title matches rank above description matches; prefixes match.
        let found = repo
            .list(&q(&|q| {
                q.search = Some("shirt".into());
                q.sort = Sort::Relevance;
            }))
            .await
            .expect("search");
        assert_eq!(titles(&found), ["Linen shirt", "Wool scarf"]);
        let prefix = repo.list(&q(&|q| q.search = Some("jack".into()))).await.expect("search");
        assert_eq!(titles(&prefix), ["Denim jacket"]);

        // Pages of one walk the whole catalog in order.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = repo
                .list(&q(&|q| {
                    q.limit = 1;
                    q.sort = Sort::PriceAsc;
                    q.after.clone_from(&after);
                }))
                .await
                .expect("page");
            seen.extend(titles(&page));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["Wool scarf", "Linen shirt", "Denim jacket"]);
        // Cursors the catalog did not hand out are refused, in every order.
        for (sort, bad) in
            [(Sort::PriceAsc, "cheap|prd-1"), (Sort::Newest, "nonsense"), (Sort::Relevance, "-1")]
        {
            let page = repo
                .list(&q(&|q| {
                    q.sort = sort;
                    q.search = Some("shirt".into());
                    q.after = Some(bad.into());
                }))
                .await;
            assert!(matches!(page, Err(souk_storage::StorageError::BadCursor(_))), "{bad}");
        }
        let blank = repo.list(&q(&|q| q.category = Some(String::new()))).await.expect("list");
        assert_eq!(titles(&blank), titles(&newest), "an empty category filters nothing");
        let levels = repo.availability(&[Sku::parse("SKU-0").expect("sku")]).await.expect("levels");
        assert_eq!(levels.values().copied().collect::<Vec<_>>(), [0]);

        // Later events: a stored row is updated (archived: hidden from shoppers), another
        // deleted (gone for staff too).
        let later = |i: usize, body: ProductEvent| {
            let mut e = batch[i].clone();
            e.events[0].0 = 10 + i as u64;
            e.events[0].1.version = 2;
            e.events[0].1.body = body;
            e
        };
        let archived = later(1, ProductEvent::Archived {});
        let deleted = later(3, ProductEvent::Deleted { skus: Vec::new() });
        repo.apply(&[archived, deleted], 13).await.expect("apply");
        assert_eq!(titles(&repo.list(&q(&|_| {})).await.expect("list")), ["Denim jacket", "Linen shirt"]);
        let all = repo.list(&q(&|q| q.all_statuses = true)).await.expect("list");
        assert_eq!(titles(&all), ["Denim jacket", "Wool scarf", "Linen shirt"]);
    }
}

mod logs {
    use souk_messages::log::{Level, LogRecord};
    use souk_storage::LogQuery;

    fn record(node: &str, level: Level, message: &str, request_id: Option<&str>) -> LogRecord {
        let mut span = serde_json::Map::new();
        if let Some(r) = request_id {
            span.insert("request_id".into(), r.into());
        }
        let mut fields = serde_json::Map::new();
        fields.insert("message".into(), message.into());
        LogRecord {
            timestamp: time::OffsetDateTime::now_utc(),
            level,
            node: node.into(),
            target: "souk_api".into(),
            fields,
            span,
        }
    }

    #[tokio::test]
    async fn records_are_found_by_request_words_level_and_node_and_stored_once() {
        let repo = super::read_models().await.logs;
        let batch = vec![
            (1, record("n1", Level::Info, "checkout placed the order", Some("req-1"))),
            (2, record("n2", Level::Warn, "payment provider slow", Some("req-1"))),
            (3, record("n2", Level::Debug, "cache warmed", None)),
        ];
        repo.insert(batch.clone()).await.expect("insert");
        repo.insert(batch).await.expect("again");
        let q = |f: fn(&mut LogQuery)| {
            let mut q = LogQuery { limit: 10, ..LogQuery::default() };
            f(&mut q);
            q
        };
        let messages = |v: Vec<LogRecord>| v.iter().map(|r| r.message().to_owned()).collect::<Vec<_>>();
        let all = repo.search(&q(|_| {})).await.expect("all");
        assert_eq!(all.len(), 3, "each record once");
        let by_request = repo.search(&q(|q| q.request_id = Some("req-1".into()))).await.expect("request");
        assert_eq!(messages(by_request), ["payment provider slow", "checkout placed the order"]);
        let warn = repo.search(&q(|q| q.level = Some(Level::Warn))).await.expect("level");
        assert_eq!(messages(warn), ["payment provider slow"]);
        let words = repo.search(&q(|q| q.q = Some("Checkout".into()))).await.expect("words");
        assert_eq!(messages(words), ["checkout placed the order"]);
        let node = repo.search(&q(|q| q.node = Some("n2".into()))).await.expect("node");
        assert_eq!(node.len(), 2);
        repo.prune(time::OffsetDateTime::now_utc() + time::Duration::seconds(1)).await.expect("prune");
        assert!(repo.search(&q(|_| {})).await.expect("after").is_empty());
    }
}

mod orders {
    use super::read_models;
    use souk_messages::UserId;
    use souk_messages::event::Event;
    use souk_messages::order::{Address, OrderEvent, OrderId, OrderStatus, Placement};
    use souk_messages::product::Currency;
    use souk_storage::{OrderEvents, OrderQuery};

    fn placed(id: &OrderId, customer: &UserId, at_ns: i128, seq: u64) -> OrderEvents {
        let placement = Placement {
            customer: customer.clone(),
            lines: Vec::new(),
            shipping_address: Address::default(),
            payment_method: "pm_card_approve".into(),
            total: 100,
            currency: Currency::NONE,
        };
        let event = Event {
            event_id: uuid::Uuid::new_v4(),
            id: id.to_string(),
            version: 1,
            time: time::OffsetDateTime::from_unix_timestamp_nanos(at_ns).expect("time"),
            correlation_id: None,
            actor: None,
            body: OrderEvent::Placed { placement: Box::new(placement) },
        };
        OrderEvents { id: id.clone(), events: vec![(seq, event)] }
    }

    /// Every page of `q`, following `next`, as order ids.
    async fn pages(
        repo: &souk_storage::OrderRepo,
        customer: Option<UserId>,
        status: Option<OrderStatus>,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let q =
                OrderQuery { customer: customer.clone(), status, after, limit: 1, ..OrderQuery::default() };
            let page = repo.list(&q).await.expect("list");
            seen.extend(page.items.iter().map(|o| o.id.to_string()));
            match page.next {
                Some(next) => after = Some(next),
                None => return seen,
            }
        }
    }

    #[tokio::test]
    async fn pages_run_newest_first_and_orders_placed_in_the_same_nanosecond_come_once_each() {
        let repo = read_models().await.orders;
        let customer = UserId::generate();
        let t = 1_800_000_000_000_000_000_i128;
        let mut tied: Vec<OrderId> = (0..3).map(|_| OrderId::generate()).collect();
        let (older, newer) = (OrderId::generate(), OrderId::generate());
        let mut batch: Vec<OrderEvents> = tied.iter().map(|id| placed(id, &customer, t, 1)).collect();
        batch.push(placed(&older, &customer, t - 1, 1));
        batch.push(placed(&newer, &customer, t + 1, 1));
        batch.push(placed(&OrderId::generate(), &UserId::generate(), t - 2, 1));
        repo.apply(&batch, 6).await.expect("apply");

        tied.sort();
        let mut expected = vec![newer.to_string()];
        expected.extend(tied.iter().rev().map(ToString::to_string));
        expected.push(older.to_string());
        let all = pages(&repo, None, None).await;
        assert_eq!(all.len(), 6, "{all:?}");
        assert_eq!(all[..5], expected[..], "every order, newest first, ties by id descending");
        assert_eq!(
            pages(&repo, Some(customer.clone()), None).await,
            expected,
            "the customer's own, the same way"
        );
        let pending = pages(&repo, None, Some(OrderStatus::Pending)).await;
        assert_eq!(pending, all, "every order is pending; read through the status index");
        assert!(pages(&repo, None, Some(OrderStatus::Confirmed)).await.is_empty());
        let q = OrderQuery { after: Some("yesterday|ord-1".into()), limit: 1, ..OrderQuery::default() };
        assert!(matches!(repo.list(&q).await, Err(souk_storage::StorageError::BadCursor(_))));

        // A later event moves an existing row on; replaying it changes nothing more.
        let mut reserved = placed(&newer, &customer, t + 2, 7);
        reserved.events[0].1.version = 2;
        reserved.events[0].1.body = OrderEvent::Reserved {};
        repo.apply(std::slice::from_ref(&reserved), 7).await.expect("apply");
        repo.apply(&[reserved], 7).await.expect("replay");
        assert_eq!(pages(&repo, None, Some(OrderStatus::Reserved)).await, [newer.to_string()]);
        assert_eq!(pages(&repo, Some(customer), None).await, expected, "placed time and order unchanged");
    }
}

#[tokio::test]
async fn clear_empties_the_read_models_and_their_checkpoints_and_keeps_the_schema_and_the_logs() {
    let models = read_models().await;
    models
        .stock
        .apply(&[change("A", 1, 10, 0), change("B", 1, 5, 1)], 9, Writers::Sole)
        .await
        .expect("apply");
    let record: LogRecord = serde_json::from_value(serde_json::json!({
        "timestamp": "2026-11-27T15:00:00Z", "level": "WARN", "node": "n1", "target": "souk",
        "fields": {"message": "kept across a rebuild"}
    }))
    .expect("log record");
    models.logs.insert(vec![(1, record)]).await.expect("log");
    models.clear().await.expect("clear");
    let logs = models.logs.search(&LogQuery { limit: 10, ..LogQuery::default() }).await.expect("logs");
    assert_eq!(logs.len(), 1, "the central log store is not built from entity histories: it stays");
    assert_eq!(models.stock.checkpoint().await.expect("checkpoint"), 0);
    assert!(models.stock.list(None, None, 10).await.expect("list").is_empty());
    // The schema is still there: rows go in again.
    models.stock.apply(&[change("C", 1, 7, 0)], 3, Writers::Sole).await.expect("apply again");
    let items = models.stock.list(None, None, 10).await.expect("list");
    assert_eq!(items.iter().map(|i| i.sku.as_str()).collect::<Vec<_>>(), ["C"]);
    assert_eq!(models.stock.checkpoint().await.expect("checkpoint"), 3);
}
