//! Inventory follows the catalog: a variant added to a product makes its stock item exist
//! (with nothing on hand); a variant removed retires it. Driven by one durable consumer on
//! product events shared by every node, so each event is handled once in the cluster, one
//! at a time and in stream order, and redelivered until its commands are answered. The
//! commands are idempotent, so a redelivery changes nothing.

use async_nats::jetstream::AckKind;
use souk_messages::Sku;
use souk_messages::event::Commit;
use souk_messages::product::{ProductEvent, ProductId};
use souk_messages::stock::{StockCommand, StockRequest};
use souk_messages::subject::{EntityKind, Subjects};
use souk_nats::{Bus, BusError, Jet};
use std::time::Duration;
use tokio::sync::watch;

/// The consumer every node shares.
const CONSUMER: &str = "souk_stock_follows_catalog";

/// Runs until `stop` is set, restarting after failures.
pub async fn run(jet: Jet, bus: Bus, stop: watch::Receiver<bool>) {
    crate::restart::restarting("inventory follower", stop, |stop| follow(&jet, &bus, stop)).await;
}

async fn follow(jet: &Jet, bus: &Bus, mut stop: watch::Receiver<bool>) -> Result<(), souk_nats::NatsSource> {
    // Short, because the commands are idempotent: an event a crashed node had in flight goes
    // to another node soon, and a slow repeat changes nothing. One commit at a time, cluster
    // wide: tracking and retiring do not commute, so a product's commits must reach its stock
    // in order. With more in flight, a commit retried after a failed request (or one a slower
    // node held) landed after a newer one, and tracking a removed variant again un-retired it.
    let consumer =
        crate::restart::shared_consumer(jet, CONSUMER, EntityKind::Product, Duration::from_secs(10), 1)
            .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let Some(msg) = crate::restart::next_or_stop(&mut messages, &mut stop).await else { return Ok(()) };
        let msg = msg?;
        let id =
            Subjects.entity_id_of(EntityKind::Product, &msg.subject).and_then(|s| ProductId::parse(&s).ok());
        let commit: Option<Commit<ProductEvent>> = serde_json::from_slice(&msg.payload).ok();
        let (Some(id), Some(commit)) = (id, commit) else {
            tracing::error!(subject = %msg.subject, "skipping an undecodable product commit");
            msg.ack().await?;
            continue;
        };
        match apply(bus, &id, &commit).await {
            Ok(()) => msg.ack().await?,
            Err(e) => {
                tracing::warn!(product = %id, error = %e, "stock not yet in step with the catalog; retrying");
                msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await?;
            }
        }
    }
}

/// Sends the stock commands a product commit calls for. A business rejection (retiring a
/// SKU that never existed) needs no retry; a bus failure does.
async fn apply(bus: &Bus, product: &ProductId, commit: &Commit<ProductEvent>) -> Result<(), BusError> {
    for event in commit {
        let track = || StockCommand::Track { product: product.clone() };
        let commands: Vec<(&Sku, StockCommand)> = match &event.body {
            ProductEvent::Created { product: data, .. } => {
                data.variants.iter().map(|v| (&v.sku, track())).collect()
            }
            ProductEvent::Updated { added_skus, removed_skus, .. } => added_skus
                .iter()
                .map(|s| (s, track()))
                .chain(removed_skus.iter().map(|s| (s, StockCommand::Retire)))
                .collect(),
            ProductEvent::Deleted { skus } => skus.iter().map(|s| (s, StockCommand::Retire)).collect(),
            ProductEvent::Archived {} | ProductEvent::Restored { .. } => Vec::new(),
        };
        for (sku, command) in commands {
            // Caused by the product change: its request and its actor.
            let mut request = StockRequest::new(sku.clone(), command).by(event.actor.clone());
            request.correlation_id.clone_from(&event.correlation_id);
            match bus.request(&request).await {
                Ok(_) | Err(BusError::Rejected(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
