//! Demo stock for a fresh node: a few SKUs with stock, created only where missing.

use souk_messages::stock::{Quantity, StockCommand, StockRequest};
use souk_messages::{ErrorCode, Sku};
use souk_nats::health::Readiness;
use souk_nats::{Bus, BusError};
use std::time::Duration;

/// The demo SKUs and their starting stock.
pub const DEMO_STOCK: &[(&str, i64)] = &[
    ("TSHIRT-RED-S", 40),
    ("TSHIRT-RED-M", 60),
    ("TSHIRT-RED-L", 45),
    ("TSHIRT-BLUE-M", 30),
    ("HOODIE-GREY-M", 25),
    ("HOODIE-GREY-L", 3),
    ("MUG-CLASSIC", 120),
    ("TOTE-CANVAS", 80),
    ("CAP-BLACK", 15),
    ("POSTER-A2", 2),
];

/// Waits until the node is ready, then restocks every demo SKU that does not exist yet.
pub async fn run(bus: &Bus, readiness: &Readiness) -> anyhow::Result<()> {
    while !readiness.report().ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (sku, qty) in DEMO_STOCK {
        let sku = Sku::parse(*sku)?;
        let get = StockRequest { sku: sku.clone(), command: StockCommand::Get, correlation_id: None };
        match bus.request(&get).await {
            Ok(_) => continue,
            Err(BusError::Rejected(e)) if e.code == ErrorCode::UnknownSku => {}
            Err(e) => return Err(e.into()),
        }
        let quantity = Quantity::try_from(*qty)?;
        let restock = StockRequest { sku, command: StockCommand::Restock { quantity }, correlation_id: None };
        bus.request(&restock).await?;
    }
    tracing::info!(skus = DEMO_STOCK.len(), "seed stock in place");
    Ok(())
}
