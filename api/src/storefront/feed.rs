//! Feeds the shelf from `SOUK_EVENTS` through two ordered consumers (ephemeral, no acks; they
//! recreate themselves past a gap): every product event from the start, and each SKU's latest
//! stock event onwards (stock events carry the levels after them, so the last one suffices).

use super::shelf::Shelf;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::{FutureExt as _, StreamExt as _};
use souk_messages::Sku;
use souk_messages::event::Commit;
use souk_messages::product::{ProductEvent, ProductId};
use souk_messages::subject::{EntityKind, Subjects};
use souk_nats::health::Readiness;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The most messages folded under one write lock.
const BATCH: usize = 1024;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Spawns the two followers; the receiver turns true once both have caught up.
pub(super) fn start(
    streams: &souk_nats::EventStreams,
    shelf: &Arc<RwLock<Shelf>>,
    readiness: Readiness,
    stop: &watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (loaded_tx, loaded) = watch::channel(false);
    let (products_tx, products) = watch::channel(false);
    let (stock_tx, stock) = watch::channel(false);
    for (kind, tx) in [(EntityKind::Product, products_tx), (EntityKind::Stock, stock_tx)] {
        tokio::spawn(follow(streams.of(kind).clone(), kind, shelf.clone(), tx, stop.clone()));
    }
    tokio::spawn(async move {
        for mut caught_up in [products, stock] {
            if caught_up.wait_for(|c| *c).await.is_err() {
                return;
            }
        }
        tracing::info!("storefront loaded");
        readiness.set_catalog_loaded();
        loaded_tx.send_replace(true);
    });
    loaded
}

/// Follows one kind's events until `stop`, starting over after a failure where it left off.
async fn follow(
    stream: Stream,
    kind: EntityKind,
    shelf: Arc<RwLock<Shelf>>,
    caught_up: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_seq = 0;
    while !*stop.borrow() {
        let deliver_policy = match (last_seq, kind) {
            (0, EntityKind::Stock) => DeliverPolicy::LastPerSubject,
            (0, _) => DeliverPolicy::All,
            (seq, _) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
        };
        match run(&stream, kind, deliver_policy, &shelf, &caught_up, &mut last_seq, &mut stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, %kind, "storefront feed stopped; restarting"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn run(
    stream: &Stream,
    kind: EntityKind,
    deliver_policy: DeliverPolicy,
    shelf: &RwLock<Shelf>,
    caught_up: &watch::Sender<bool>,
    last_seq: &mut u64,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Failure> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: Subjects.kind_events(kind),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    if consumer.cached_info().num_pending == 0 {
        caught_up.send_replace(true);
    }
    let mut messages = consumer.messages().await?;
    loop {
        let first = tokio::select! {
            m = messages.next() => m,
            _ = stop.changed() => return Ok(()),
        };
        let Some(first) = first else { return Err("the consumer ended".into()) };
        let mut batch = vec![first?];
        while batch.len() < BATCH {
            match messages.next().now_or_never() {
                Some(Some(m)) => batch.push(m?),
                _ => break,
            }
        }
        let mut pending = u64::MAX;
        {
            let mut shelf = shelf.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for m in &batch {
                let info = m.info()?;
                *last_seq = info.stream_sequence;
                pending = info.pending;
                fold(&mut shelf, kind, &m.subject, &m.payload);
            }
        }
        if pending == 0 {
            caught_up.send_replace(true);
        }
    }
}

/// Folds one commit; an undecodable one is logged and skipped, as the projectors do.
fn fold(shelf: &mut Shelf, kind: EntityKind, subject: &str, payload: &[u8]) {
    let id = Subjects.entity_id_of(kind, subject);
    let folded = match kind {
        EntityKind::Product => {
            let id = id.and_then(|s| ProductId::parse(&s).ok());
            let commit = serde_json::from_slice::<Commit<ProductEvent>>(payload).ok();
            id.zip(commit).map(|(id, commit)| shelf.apply_product(&id, &commit))
        }
        _ => {
            let sku = id.and_then(|s| Sku::parse(s).ok());
            let after = souk_messages::stock::commit_levels(payload);
            sku.zip(after).map(|(sku, (version, levels))| shelf.apply_stock(sku, version, levels.available()))
        }
    };
    if folded.is_none() {
        tracing::error!(subject, "storefront skipping an undecodable commit");
    }
}
