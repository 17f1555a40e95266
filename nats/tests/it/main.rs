//! Event store and lease tests against a real nats-server.

use souk_messages::event::Event;
use souk_messages::stock::{Quantity, StockCommand, StockEvent, StockState};
use souk_messages::subject::{EntityKind, ShardId};
use souk_messages::{NodeId, ReservationId};
use souk_nats::cluster::Cluster;
use souk_nats::metrics::StoreMetrics;
use souk_nats::streams::ProvisionSettings;
use souk_nats::{AppendError, ConnectSettings, EventStore, Jet};
use souk_testkit::{NatsServer, eventually};
use std::time::Duration;

async fn jet(url: &str, lease_ttl: Duration) -> Jet {
    let client = souk_nats::connect(
        &ConnectSettings { urls: vec![url.to_owned()], name: "test".into(), ..Default::default() },
        Duration::from_secs(5),
    )
    .await
    .expect("connect");
    souk_nats::provision(
        client,
        ProvisionSettings {
            replicas: 1,
            node_ttl: lease_ttl,
            lease_ttl,
            session_ttl: lease_ttl,
            log_max_age: lease_ttl,
            log_max_bytes: 1 << 24,
        },
    )
    .await
    .expect("provision")
}

fn commit(state: &StockState, cmd: &StockCommand, sku: &str) -> (StockState, Vec<Event<StockEvent>>) {
    let mut next = state.clone();
    let events = state
        .decide(cmd, time::OffsetDateTime::now_utc())
        .expect("decide")
        .into_iter()
        .map(|body| {
            next.apply(&body);
            Event {
                event_id: uuid::Uuid::now_v7(),
                id: sku.to_owned(),
                version: next.version,
                time: time::OffsetDateTime::now_utc(),
                correlation_id: None,
                actor: None,
                body,
            }
        })
        .collect();
    (next, events)
}

fn restock(n: i64) -> StockCommand {
    StockCommand::Restock { quantity: Quantity::try_from(n).expect("qty") }
}

#[tokio::test]
async fn two_writers_with_the_same_expected_sequence_exactly_one_wins() {
    let nats = NatsServer::start();
    // Two connections, as two nodes that both believe they own the entity.
    let w1 = EventStore::new(jet(nats.url(), Duration::from_secs(5)).await, StoreMetrics::unregistered());
    let w2 = EventStore::new(jet(nats.url(), Duration::from_secs(5)).await, StoreMetrics::unregistered());
    let sku = "FENCE-1";
    let mut wins = 0;
    for round in 0..20 {
        let l1 = w1.load::<StockState>(EntityKind::Stock, sku).await.expect("load 1");
        let l2 = w2.load::<StockState>(EntityKind::Stock, sku).await.expect("load 2");
        assert_eq!(l1.last_seq, l2.last_seq);
        let (_, e1) = commit(&l1.state, &restock(1), sku);
        let (_, e2) = commit(&l2.state, &restock(100), sku);
        let (r1, r2) = tokio::join!(
            w1.append(EntityKind::Stock, sku, l1.last_seq, &e1),
            w2.append(EntityKind::Stock, sku, l2.last_seq, &e2)
        );
        let ok = [r1.is_ok(), r2.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(ok, 1, "round {round}: exactly one append may win");
        for r in [r1, r2] {
            if let Err(e) = r {
                assert!(matches!(e, AppendError::Conflict(..)), "the loser is told it was fenced: {e}");
            }
        }
        wins += 1;
    }
    // One linear history: 20 commits, versions 1..=20, whichever writer won each round.
    let l = w1.load::<StockState>(EntityKind::Stock, sku).await.expect("load");
    assert_eq!(l.state.version, wins);
    assert_eq!(l.replayed, wins);
}

#[tokio::test]
async fn load_resumes_from_a_snapshot_and_replays_only_later_commits() {
    let nats = NatsServer::start();
    let store = EventStore::new(jet(nats.url(), Duration::from_secs(5)).await, StoreMetrics::unregistered());
    let sku = "SNAP-1";
    let mut state = StockState::default();
    let mut seq = 0;
    for i in 0..10 {
        let cmd = if i == 0 {
            restock(100)
        } else {
            StockCommand::Reserve {
                reservation: ReservationId::parse(format!("r{i}")).expect("id"),
                quantity: Quantity::try_from(2).expect("qty"),
                expires_at: None,
            }
        };
        let (next, events) = commit(&state, &cmd, sku);
        seq = store.append(EntityKind::Stock, sku, seq, &events).await.expect("append");
        state = next;
        if i == 5 {
            store.save_snapshot(EntityKind::Stock, sku, seq, &state).await;
        }
    }
    let loaded = store.load::<StockState>(EntityKind::Stock, sku).await.expect("load");
    assert_eq!(loaded.state, state);
    assert_eq!(loaded.last_seq, seq);
    assert_eq!(loaded.replayed, 4, "only the commits after the snapshot are replayed");
    let empty = store.load::<StockState>(EntityKind::Stock, "NEVER").await.expect("load");
    assert_eq!((empty.last_seq, empty.state.version), (0, 0));
}

#[tokio::test]
async fn a_snapshot_too_large_for_the_server_is_skipped_and_counted() {
    let nats = NatsServer::start();
    let mut registry = prometheus_client::registry::Registry::default();
    let store =
        EventStore::new(jet(nats.url(), Duration::from_secs(5)).await, StoreMetrics::register(&mut registry));
    let mut big = StockState::default();
    for i in 0..40_000 {
        big.reservations.insert(
            ReservationId::parse(format!("reservation-{i:08}")).expect("id"),
            souk_messages::stock::Reservation {
                quantity: 1,
                status: souk_messages::stock::ReservationStatus::Released,
                expires_at: None,
                settled_at: None,
            },
        );
    }
    store.save_snapshot(EntityKind::Stock, "BIG", 1, &big).await;
    store.save_snapshot(EntityKind::Stock, "SMALL", 1, &StockState::default()).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("souk_snapshots_total{kind=\"stock\",outcome=\"too_large\"} 1"), "{text}");
    assert!(text.contains("souk_snapshots_total{kind=\"stock\",outcome=\"ok\"} 1"), "{text}");
}

/// The sequence and state of the snapshot stored for stock item `sku`, read straight from the
/// bucket.
async fn stored_snapshot(jet: &Jet, sku: &str) -> Option<(u64, StockState)> {
    #[derive(serde::Deserialize)]
    struct Stored {
        seq: u64,
        state: StockState,
    }
    let bytes = jet.snapshots.get(format!("stock.{sku}")).await.expect("get")?;
    let s: Stored = serde_json::from_slice(&bytes).expect("snapshot");
    Some((s.seq, s.state))
}

#[tokio::test]
async fn a_late_snapshot_never_replaces_a_newer_one_or_what_a_purge_left() {
    let nats = NatsServer::start();
    let jet = jet(nats.url(), Duration::from_secs(5)).await;
    let store = EventStore::new(jet.clone(), StoreMetrics::unregistered());
    let sku = "LATE-1";
    let mut states = vec![StockState::default()];
    let mut seq = 0;
    for n in 1..=3 {
        let (next, events) = commit(states.last().expect("state"), &restock(n), sku);
        seq = store.append(EntityKind::Stock, sku, seq, &events).await.expect("append");
        states.push(next);
    }
    // Snapshots are written from tasks of their own: the one after the third commit lands
    // first, the one after the second late. The newer one stays.
    store.save_snapshot(EntityKind::Stock, sku, seq, &states[3]).await;
    store.save_snapshot(EntityKind::Stock, sku, seq - 1, &states[2]).await;
    assert_eq!(stored_snapshot(&jet, sku).await, Some((seq, states[3].clone())));

    // The history is cut down to its last commit with the state it leaves; a snapshot of the
    // state before, arriving after that, does not bring the old state back.
    let left = StockState { on_hand: 99, version: 3, ..StockState::default() };
    store.forget_all_but_last(EntityKind::Stock, sku, &left).await.expect("forget");
    store.save_snapshot(EntityKind::Stock, sku, seq, &states[3]).await;
    store.save_snapshot(EntityKind::Stock, sku, seq - 1, &states[2]).await;
    assert_eq!(stored_snapshot(&jet, sku).await, Some((seq, left.clone())));
    let loaded = store.load::<StockState>(EntityKind::Stock, sku).await.expect("load");
    assert_eq!((loaded.state, loaded.replayed), (left, 0));

    // A snapshot from a history that no longer exists (ahead of it) is dropped at the next
    // load, so the history's own snapshots are written again.
    let other = "LATE-2";
    let (next, events) = commit(&StockState::default(), &restock(5), other);
    let seq = store.append(EntityKind::Stock, other, 0, &events).await.expect("append");
    store.save_snapshot(EntityKind::Stock, other, seq + 1000, &StockState::default()).await;
    let loaded = store.load::<StockState>(EntityKind::Stock, other).await.expect("load");
    assert_eq!(loaded.state, next);
    store.save_snapshot(EntityKind::Stock, other, seq, &next).await;
    assert_eq!(stored_snapshot(&jet, other).await, Some((seq, next)));
}

#[tokio::test]
async fn a_lease_has_one_holder_and_expires_when_not_renewed() {
    let nats = NatsServer::start();
    let ttl = Duration::from_secs(1);
    let j = jet(nats.url(), ttl).await;
    let a = Cluster::new(&j, NodeId::parse("a").expect("id"));
    let b = Cluster::new(&j, NodeId::parse("b").expect("id"));
    let shard = ShardId { kind: EntityKind::Stock, index: 3 };

    let mut lease_a = a.acquire(shard).await.expect("acquire").expect("free shard is granted");
    assert!(b.acquire(shard).await.expect("acquire").is_none(), "a held lease is refused");
    assert!(a.renew(&mut lease_a).await.expect("renew"));
    assert_eq!(a.owners().await.expect("owners").get(&shard).map(NodeId::as_str), Some("a"));

    // Not renewed for longer than the TTL: it expires, b takes it with a higher epoch,
    // and a learns it lost the lease.
    let lease_b = eventually("the unrenewed lease to expire", Duration::from_secs(10), || async {
        b.acquire(shard).await.expect("acquire")
    })
    .await;
    assert!(lease_b.epoch > lease_a.epoch, "epochs only grow");
    assert!(!a.renew(&mut lease_a).await.expect("renew"), "the old holder's renewal is refused");

    // A released lease is free at once.
    b.release(&lease_b).await.expect("release");
    assert!(a.acquire(shard).await.expect("acquire").is_some());
}

#[tokio::test]
async fn a_restarted_node_adopts_the_leases_of_its_previous_run() {
    let nats = NatsServer::start();
    let j = jet(nats.url(), Duration::from_secs(60)).await;
    let shard = ShardId { kind: EntityKind::Stock, index: 1 };
    let mut crashed_run = Cluster::new(&j, NodeId::parse("a").expect("id"));
    let mut old = crashed_run.acquire(shard).await.expect("acquire").expect("granted");
    // Same node id (same data dir), new process: no need to wait a minute for expiry.
    crashed_run = Cluster::new(&j, NodeId::parse("a").expect("id"));
    let adopted = crashed_run.acquire(shard).await.expect("acquire").expect("adopted");
    assert!(adopted.epoch > old.epoch, "adoption mints a new epoch");
    assert!(!crashed_run.renew(&mut old).await.expect("renew"), "the previous run's lease is dead");
    // Another node still cannot take it.
    let b = Cluster::new(&j, NodeId::parse("b").expect("id"));
    assert!(b.acquire(shard).await.expect("acquire").is_none());
}

#[tokio::test]
async fn membership_lists_live_nodes_and_forgets_leavers() {
    let nats = NatsServer::start();
    let j = jet(nats.url(), Duration::from_secs(30)).await;
    let a = Cluster::new(&j, NodeId::parse("a").expect("id"));
    let b = Cluster::new(&j, NodeId::parse("b").expect("id"));
    a.heartbeat().await.expect("hb");
    b.heartbeat().await.expect("hb");
    let names = |v: Vec<NodeId>| v.into_iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(names(a.live_nodes().await.expect("nodes")), ["a", "b"]);
    b.leave().await.expect("leave");
    assert_eq!(names(a.live_nodes().await.expect("nodes")), ["a"]);
}

#[tokio::test]
async fn tools_attach_to_the_cluster_without_reconfiguring_it() {
    let nats = NatsServer::start();
    let connect = || async {
        souk_nats::connect(
            &ConnectSettings { urls: vec![nats.url().to_owned()], name: "tool".into(), ..Default::default() },
            Duration::from_secs(5),
        )
        .await
        .expect("connect")
    };
    assert!(
        souk_nats::attach(connect().await).await.is_err(),
        "nothing to attach to before a node provisions"
    );
    let provisioned = jet(nats.url(), Duration::from_secs(7)).await;
    let attached = souk_nats::attach(connect().await).await.expect("attach");
    let leases = attached.leases.clone();
    assert_eq!(leases.status().await.expect("status").max_age(), Duration::from_secs(7));
    let name = |jet: &souk_nats::Jet| jet.events.of(EntityKind::Order).cached_info().config.name.clone();
    assert_eq!(name(&attached), name(&provisioned));
    assert_eq!(name(&attached), "SOUK_EVENTS_ORDER");
}

#[tokio::test]
async fn each_kind_has_its_own_stream_and_a_cluster_with_the_single_legacy_stream_keeps_it() {
    let fresh = NatsServer::start();
    let j = jet(fresh.url(), Duration::from_secs(5)).await;
    let names: Vec<String> = j.events.all().iter().map(|s| s.cached_info().config.name.clone()).collect();
    assert_eq!(
        names,
        [
            "SOUK_EVENTS_STOCK",
            "SOUK_EVENTS_USER",
            "SOUK_EVENTS_PRODUCT",
            "SOUK_EVENTS_CART",
            "SOUK_EVENTS_ORDER",
            "SOUK_EVENTS_NOTIFICATION"
        ]
    );
    let store = EventStore::new(j, StoreMetrics::unregistered());
    let (_, events) = commit(&StockState::default(), &restock(3), "SPLIT-1");
    store.append(EntityKind::Stock, "SPLIT-1", 0, &events).await.expect("append");
    let stock = async_nats::jetstream::new(async_nats::connect(fresh.url()).await.expect("connect"))
        .get_stream("SOUK_EVENTS_STOCK")
        .await
        .expect("stream")
        .get_last_raw_message_by_subject("souk.evt.stock.SPLIT-1")
        .await;
    assert!(stock.is_ok(), "the stock item's history is in the stock stream");

    // A cluster from before the split: every kind stays in its one stream.
    let old = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(old.url()).await.expect("connect"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SOUK_EVENTS".into(),
        subjects: vec![souk_messages::subject::Subjects.all_events().into()],
        ..Default::default()
    })
    .await
    .expect("legacy stream");
    let j = jet(old.url(), Duration::from_secs(5)).await;
    let names: Vec<String> = j.events.all().iter().map(|s| s.cached_info().config.name.clone()).collect();
    assert_eq!(names, ["SOUK_EVENTS"]);
    assert_eq!(j.events.of(EntityKind::Order).cached_info().config.name, "SOUK_EVENTS");
    let store = EventStore::new(j, StoreMetrics::unregistered());
    let (_, events) = commit(&StockState::default(), &restock(3), "OLD-1");
    store.append(EntityKind::Stock, "OLD-1", 0, &events).await.expect("append");
    let loaded = store.load::<StockState>(EntityKind::Stock, "OLD-1").await.expect("load");
    assert_eq!(loaded.state.on_hand, 3);
}
