//! Demo data: a catalog of a few hundred products across categories, with variants and stock,
//! generated here (not downloaded), and two accounts (an admin and a customer). Everything is
//! created only where missing, so seeding twice changes nothing.

use souk_api::auth::{Auth, NewUser};
use souk_api::catalog::Catalog;
use souk_messages::product::{Currency, Money, ProductData, ProductStatus, Slug, Variant};
use souk_messages::stock::{Quantity, StockCommand, StockRequest};
use souk_messages::user::{Email, Name, Role};
use souk_messages::{ErrorCode, Sku};
use souk_nats::health::Readiness;
use souk_nats::{Bus, BusError};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How many products the demo catalog has.
pub const DEMO_PRODUCTS: usize = 300;

/// The demo accounts: email, name, role.
pub const DEMO_USERS: &[(&str, &str, Role)] = &[
    ("admin@demo.souk.dev", "Demo Admin", Role::Admin),
    ("customer@demo.souk.dev", "Demo Customer", Role::Customer),
];

/// A category: slug, nouns, price range (minor units), and what its variants vary by.
struct Category {
    slug: &'static str,
    nouns: &'static [&'static str],
    prices: (i64, i64),
    axis: &'static str,
    values: &'static [&'static str],
}

const CATEGORIES: &[Category] = &[
    Category {
        slug: "t-shirts",
        nouns: &["T-shirt", "Tee", "Crew neck"],
        prices: (1500, 3500),
        axis: "size",
        values: &["S", "M", "L", "XL"],
    },
    Category {
        slug: "hoodies",
        nouns: &["Hoodie", "Zip hoodie", "Sweatshirt"],
        prices: (4500, 8900),
        axis: "size",
        values: &["S", "M", "L", "XL"],
    },
    Category {
        slug: "mugs",
        nouns: &["Mug", "Travel mug", "Espresso cup"],
        prices: (900, 2400),
        axis: "colour",
        values: &["white", "black", "sand"],
    },
    Category {
        slug: "posters",
        nouns: &["Poster", "Art print", "Map print"],
        prices: (1200, 4900),
        axis: "format",
        values: &["A3", "A2", "A1"],
    },
    Category {
        slug: "caps",
        nouns: &["Cap", "Beanie", "Bucket hat"],
        prices: (1800, 3900),
        axis: "colour",
        values: &["black", "navy", "olive"],
    },
    Category {
        slug: "bags",
        nouns: &["Tote bag", "Backpack", "Pouch"],
        prices: (1500, 12900),
        axis: "colour",
        values: &["natural", "black"],
    },
    Category {
        slug: "socks",
        nouns: &["Socks", "Sport socks", "Wool socks"],
        prices: (700, 1900),
        axis: "size",
        values: &["36-40", "41-46"],
    },
    Category {
        slug: "notebooks",
        nouns: &["Notebook", "Sketchbook", "Planner"],
        prices: (800, 2900),
        axis: "paper",
        values: &["lined", "dotted", "blank"],
    },
];

const ADJECTIVES: &[&str] = &[
    "Classic",
    "Everyday",
    "Organic",
    "Vintage",
    "Minimal",
    "Bold",
    "Soft",
    "Sturdy",
    "Recycled",
    "Heavyweight",
    "Lightweight",
    "Striped",
    "Woven",
    "Coastal",
    "Alpine",
    "Urban",
    "Garden",
    "Midnight",
    "Sunrise",
    "Harbour",
];
const MATERIALS: &[&str] =
    &["cotton", "linen", "wool", "canvas", "ceramic", "bamboo", "hemp", "recycled paper"];

/// A small deterministic generator, so every seeded shop has the same catalog.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// A demo product: its data, status, and the starting stock of each variant.
pub type DemoProduct = (ProductData, ProductStatus, Vec<(Sku, i64)>);

/// The `i`-th demo product.
fn demo_product(i: usize, rng: &mut Lcg) -> Option<DemoProduct> {
    let cat = &CATEGORIES[i % CATEGORIES.len()];
    let (adjective, noun, material) = (rng.pick(ADJECTIVES), rng.pick(cat.nouns), rng.pick(MATERIALS));
    let title = format!("{adjective} {material} {}", noun.to_lowercase());
    let slug = format!("{}-{}", title.to_lowercase().replace(' ', "-"), i + 1);
    let code: String =
        cat.slug.chars().filter(char::is_ascii_alphabetic).take(4).collect::<String>().to_uppercase();
    // Prices end in 0 or 5 minor units, like a shop's.
    let price = rng.between(cat.prices.0, cat.prices.1) / 50 * 50 + 49;
    let eur = Currency::parse("EUR").ok()?;
    let count = 1 + (rng.next() % cat.values.len() as u64) as usize;
    let mut variants = Vec::new();
    let mut stock = Vec::new();
    for value in &cat.values[..count] {
        let sku =
            Sku::parse(format!("{code}-{:04}-{}", i + 1, value.replace(' ', "").to_uppercase())).ok()?;
        let units = [0, 2, 5, 12, 25, 60][(rng.next() % 6) as usize];
        stock.push((sku.clone(), units));
        variants.push(Variant {
            sku,
            price: Money::new(price, eur).ok()?,
            attributes: BTreeMap::from([(cat.axis.to_owned(), (*value).to_owned())]),
        });
    }
    let data = ProductData {
        title: title.clone(),
        slug: Slug::parse(&slug).ok()?,
        description: format!(
            "{title}: {material}, made to last. A {} from the Souk demo catalog, {}.",
            noun.to_lowercase(),
            if count == 1 { format!("in one {}", cat.axis) } else { format!("in {count} {}s", cat.axis) }
        ),
        categories: BTreeSet::from([cat.slug.to_owned()]),
        attributes: BTreeMap::from([("material".to_owned(), (*material).to_owned())]),
        images: vec![format!("https://img.souk.dev/demo/{slug}.jpg")],
        variants,
    };
    // One product in twenty is still a draft, so staff views differ from shoppers'.
    let status = if i % 20 == 19 { ProductStatus::Draft } else { ProductStatus::Active };
    Some((data, status, stock))
}

/// The first `n` demo products (the demo catalog is the first 300).
pub fn demo_catalog(n: usize) -> Vec<DemoProduct> {
    let mut rng = Lcg(0x5eed_50c1);
    (0..n).filter_map(|i| demo_product(i, &mut rng)).collect()
}

/// Words that occur in demo titles and descriptions, for search load.
pub fn search_words() -> Vec<String> {
    ADJECTIVES.iter().chain(MATERIALS).map(|w| w.split(' ').next().unwrap_or(w).to_lowercase()).collect()
}

/// Creates the demo catalog's missing products and gives new stock items their stock.
pub async fn catalog(bus: &Bus, catalog: &Catalog, products: usize) -> anyhow::Result<usize> {
    let mut created = 0;
    for (data, status, stock) in demo_catalog(products) {
        if catalog.upsert(data, status, "seed").await? == souk_api::import::Outcome::Created {
            created += 1;
        }
        for (sku, units) in stock {
            restock_if_empty(bus, sku, units).await?;
        }
    }
    Ok(created)
}

/// Restocks `sku` by `units` unless it already has stock (so seeding twice adds nothing).
async fn restock_if_empty(bus: &Bus, sku: Sku, units: i64) -> anyhow::Result<()> {
    if units == 0 {
        return Ok(());
    }
    match bus.request(&StockRequest::new(sku.clone(), StockCommand::Get)).await {
        Ok(v) if v.on_hand > 0 || v.reserved > 0 => return Ok(()),
        Ok(_) => {}
        Err(BusError::Rejected(e)) if e.code == ErrorCode::UnknownSku => {}
        Err(e) => return Err(e.into()),
    }
    let quantity = Quantity::try_from(units)?;
    bus.request(&StockRequest::new(sku, StockCommand::Restock { quantity })).await?;
    Ok(())
}

/// Creates the demo accounts that are missing and prints the credentials of those it made.
pub async fn accounts(auth: &Auth) -> anyhow::Result<()> {
    for (email, name, role) in DEMO_USERS {
        // A fresh random password per created account: a seeded shop has no known password.
        let password = format!("demo-{}", souk_api::auth::tokens::random_token(12));
        let new = NewUser {
            email: Email::parse(email)?,
            name: Name::parse(name)?,
            phone: None,
            locale: None,
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

/// `souk serve --seed`: waits until the node is ready, then seeds accounts and catalog.
pub async fn run(
    bus: &Bus,
    auth: &Auth,
    catalog_service: &Catalog,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    while !readiness.report().ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accounts(auth).await?;
    let created = catalog(bus, catalog_service, DEMO_PRODUCTS).await?;
    tracing::info!(created, products = DEMO_PRODUCTS, "demo catalog in place");
    Ok(())
}

/// `souk seed`: the same against a running cluster.
pub async fn standalone(cfg: &crate::config::Config) -> anyhow::Result<()> {
    let cluster = crate::client::ClusterClient::connect(cfg, "souk seed").await?;
    let auth = crate::serve::auth(cfg, &cluster.jet, cluster.bus.clone()).await?;
    accounts(&auth).await?;
    let created = catalog(&cluster.bus, &cluster.catalog(), DEMO_PRODUCTS).await?;
    eprintln!("demo catalog: {created} products created, {} already there", DEMO_PRODUCTS - created);
    cluster.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_is_valid_deterministic_and_unique() {
        let (mut a, mut b) = (Lcg(0x5eed_50c1), Lcg(0x5eed_50c1));
        let mut slugs = BTreeSet::new();
        let mut skus = BTreeSet::new();
        for i in 0..DEMO_PRODUCTS {
            let (p, _, _) = demo_product(i, &mut a).expect("product");
            assert_eq!(Some(&p), demo_product(i, &mut b).map(|(q, _, _)| q).as_ref());
            p.validate().expect("valid");
            assert!(slugs.insert(p.slug.clone()), "slug {} twice", p.slug.as_str());
            for v in &p.variants {
                assert!(skus.insert(v.sku.clone()), "sku {} twice", v.sku);
            }
        }
        assert!(skus.len() > DEMO_PRODUCTS, "products have several variants");
    }
}
