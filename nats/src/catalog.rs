//! Catalog-wide uniqueness: product slugs and SKUs are claimed with a KV create, so two
//! products (on two nodes, at the same instant) can never share one.

use crate::kv::JsonKv;
use crate::streams::Jet;
use serde::{Deserialize, Serialize};
use souk_messages::product::ProductId;
use time::OffsetDateTime;

/// Which product owns a slug or SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductClaim {
    /// The owner.
    pub product: ProductId,
    /// When it was claimed; a claim whose product never got created is stale after a while.
    #[serde(with = "time::serde::rfc3339")]
    pub claimed_at: OffsetDateTime,
}

/// The claim buckets.
#[derive(Debug, Clone)]
pub struct CatalogClaims {
    /// By slug.
    pub slugs: JsonKv<ProductClaim>,
    /// By SKU.
    pub skus: JsonKv<ProductClaim>,
}

impl CatalogClaims {
    /// The claim buckets of a provisioned JetStream.
    pub fn new(jet: &Jet) -> Self {
        Self { slugs: JsonKv::new(jet.slugs.clone()), skus: JsonKv::new(jet.skus.clone()) }
    }
}
