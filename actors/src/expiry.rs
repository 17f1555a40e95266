//! Reservation expiry. A held reservation's lapse time is in its `stock.reserved` event, and
//! every stock event carries the item's earliest pending lapse (`next_expiry`), so the stock
//! read model always knows which items are due. Each node sweeps its read model once a second
//! and wakes the due items of the shards it owns; the item releases what is due. The timer is
//! therefore as durable as the event history (it fires after restarts and failovers, whichever
//! node owns the shard then), and a release happens once: the item decides it, and a second
//! wake finds nothing held.

use crate::context::NodeContext;
use souk_messages::stock::{StockCommand, StockRequest};
use souk_messages::subject::{EntityKind, shard_of};
use souk_nats::{Bus, BusError};
use souk_storage::StockRepo;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often each node looks for due reservations.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The most items woken per sweep.
const SWEEP_MAX: u32 = 1000;

/// Sweeps until `stop` is set.
pub async fn run(ctx: Arc<NodeContext>, repo: StockRepo, bus: Bus, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let due = match repo.due(now, SWEEP_MAX).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep could not read the stock read model");
                continue;
            }
        };
        let shards = bus.shards();
        let mine: Vec<_> = {
            let owned = ctx.owned_shards.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            due.into_iter()
                .filter(|sku| owned.contains(&shard_of(EntityKind::Stock, sku.as_str(), shards.stock)))
                .collect()
        };
        let wakes = mine.into_iter().map(|sku| {
            let bus = bus.clone();
            async move {
                match bus.request(&StockRequest::new(sku.clone(), StockCommand::ExpireDue)).await {
                    Ok(_) | Err(BusError::Rejected(_)) => {}
                    Err(e) => {
                        tracing::warn!(%sku, error = %e, "could not wake a stock item with due reservations")
                    }
                }
            }
        });
        futures::future::join_all(wakes).await;
    }
}
