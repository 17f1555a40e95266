//! Demo data for a fresh node: a few SKUs with stock and two accounts (an admin and a
//! customer), created only where missing.

use souk_api::auth::{Auth, NewUser};
use souk_messages::stock::{Quantity, StockCommand, StockRequest};
use souk_messages::user::{Email, Name, Role};
use souk_messages::{ErrorCode, Sku};
use souk_nats::health::Readiness;
use souk_nats::{Bus, BusError};
use std::collections::BTreeSet;
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

/// The demo accounts: email, name, role.
pub const DEMO_USERS: &[(&str, &str, Role)] = &[
    ("admin@demo.souk.dev", "Demo Admin", Role::Admin),
    ("customer@demo.souk.dev", "Demo Customer", Role::Customer),
];

/// Waits until the node is ready, then creates every demo SKU and account that is missing,
/// and prints the credentials of the accounts it created.
pub async fn run(bus: &Bus, auth: &Auth, readiness: &Readiness) -> anyhow::Result<()> {
    while !readiness.report().ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (sku, qty) in DEMO_STOCK {
        let sku = Sku::parse(*sku)?;
        match bus.request(&StockRequest::new(sku.clone(), StockCommand::Get)).await {
            Ok(_) => continue,
            Err(BusError::Rejected(e)) if e.code == ErrorCode::UnknownSku => {}
            Err(e) => return Err(e.into()),
        }
        let quantity = Quantity::try_from(*qty)?;
        bus.request(&StockRequest::new(sku, StockCommand::Restock { quantity })).await?;
    }
    tracing::info!(skus = DEMO_STOCK.len(), "seed stock in place");
    for (email, name, role) in DEMO_USERS {
        // A fresh random password per created account: a seeded shop has no known password.
        let password = format!("demo-{}", souk_api::auth::tokens::random_token(12));
        let new = NewUser {
            email: Email::parse(email)?,
            name: Name::parse(name)?,
            phone: None,
            password: password.clone(),
            roles: BTreeSet::from([*role]),
        };
        match auth.register(new, "seed").await {
            Ok(_) => {
                tracing::info!(email, role = role.as_str(), "demo account created");
                println!("demo {} account: {email} / {password}", role.as_str());
            }
            Err(souk_api::error::ApiError::Rejected(e)) if e.code == ErrorCode::EmailTaken => {
                println!("demo {} account: {email} (exists; password unchanged)", role.as_str());
            }
            Err(e) => return Err(anyhow::anyhow!("demo account {email}: {e}")),
        }
    }
    Ok(())
}
