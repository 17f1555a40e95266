//! The catalog service: product changes with their slug and SKU claims. Creating or changing
//! a product first claims any new slug and SKUs cluster-wide (a KV create), then asks the
//! product entity; a failure releases what was claimed.

use crate::auth::access::caller;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use souk_messages::product::{
    ProductCommand, ProductData, ProductId, ProductRequest, ProductStatus, ProductView,
};
use souk_messages::{ErrorCode, Sku};
use souk_nats::catalog::{CatalogClaims, ProductClaim};
use souk_nats::{Bus, JsonKv};
use souk_storage::CatalogRepo;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

/// `POST /v1/products` and `PUT /v1/products/{id}`: the product, and its status.
// Also each line of a JSON-lines import. Decoded by hand (below); the serde attributes only
// give the OpenAPI document its shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    /// `draft` (default) or `active`.
    #[serde(default = "draft")]
    pub status: ProductStatus,
    /// Everything else.
    #[serde(flatten)]
    pub product: ProductData,
}

fn draft() -> ProductStatus {
    ProductStatus::Draft
}

/// A derived decoder would hand the flattened product data its fields as a buffer, out of
/// reach of [`crate::extract::decode`]'s check for unknown fields; this one takes `status`
/// out and decodes the rest strictly itself.
impl<'de> Deserialize<'de> for ProductBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut fields = serde_json::Map::deserialize(d)?;
        let status = match fields.remove("status") {
            Some(v) => ProductStatus::deserialize(v).map_err(|e| D::Error::custom(format!("status: {e}")))?,
            None => draft(),
        };
        let product = crate::extract::decode_value(serde_json::Value::Object(fields))
            .map_err(|e| D::Error::custom(e.to_string()))?;
        Ok(Self { status, product })
    }
}

/// A claim older than this whose product never got created may be taken over.
const STALE_CLAIM: Duration = Duration::from_secs(60);

/// Product commands and lookups. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    bus: Bus,
    claims: CatalogClaims,
}

/// A claim this request made, to release if the change fails.
struct Claimed<'a> {
    kv: &'a JsonKv<ProductClaim>,
    key: String,
    revision: u64,
}

impl Catalog {
    /// The service over its parts.
    pub fn new(bus: Bus, claims: CatalogClaims) -> Self {
        Self { bus, claims }
    }

    /// Sends a command to a product.
    pub async fn command(
        &self,
        id: &ProductId,
        command: ProductCommand,
        correlation: &str,
    ) -> Result<ProductView, ApiError> {
        Ok(self
            .bus
            .request(&ProductRequest::new(id.clone(), command).correlated(correlation).by(caller()))
            .await?)
    }

    /// The product with this id or slug, current (from its entity).
    pub async fn get(&self, id_or_slug: &str, correlation: &str) -> Result<ProductView, ApiError> {
        let unknown = || ApiError::invalid(ErrorCode::UnknownProduct, "no such product");
        let id = match ProductId::parse(id_or_slug) {
            Ok(id) => id,
            Err(_) => {
                let slug = souk_messages::product::Slug::parse(id_or_slug).map_err(|_| unknown())?;
                self.claims.slugs.get(slug.as_str()).await?.ok_or_else(unknown)?.0.product
            }
        };
        self.command(&id, ProductCommand::Get, correlation).await
    }

    /// Units available per SKU of `views`, from the stock read model in `repo`.
    pub async fn availability(
        repo: &CatalogRepo,
        views: &[&ProductView],
    ) -> Result<BTreeMap<Sku, u64>, ApiError> {
        let skus: Vec<Sku> =
            views.iter().flat_map(|v| v.data.variants.iter().map(|x| x.sku.clone())).collect();
        Ok(repo.availability(&skus).await?)
    }

    async fn claim<'a>(
        &self,
        kv: &'a JsonKv<ProductClaim>,
        key: &str,
        product: &ProductId,
        taken: ErrorCode,
    ) -> Result<Option<Claimed<'a>>, ApiError> {
        let now = OffsetDateTime::now_utc();
        let claim = ProductClaim { product: product.clone(), claimed_at: now };
        let refuse = || ApiError::invalid(taken, format!("{key} belongs to another product"));
        if let Some(revision) = kv.create(key, &claim).await? {
            return Ok(Some(Claimed { kv, key: key.to_owned(), revision }));
        }
        let Some((existing, rev)) = kv.get(key).await? else {
            let revision = kv.create(key, &claim).await?.ok_or_else(refuse)?;
            return Ok(Some(Claimed { kv, key: key.to_owned(), revision }));
        };
        if existing.product == *product {
            return Ok(None);
        }
        // A claim whose product was never created (its node died mid-way) is reclaimable.
        if existing.claimed_at + STALE_CLAIM < now {
            match self.command(&existing.product, ProductCommand::Get, "claim").await {
                Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownProduct => {
                    let revision = kv.update(key, &claim, rev).await?.ok_or_else(refuse)?;
                    return Ok(Some(Claimed { kv, key: key.to_owned(), revision }));
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Err(refuse())
    }

    /// Claims `data`'s slug and every SKU not yet `product`'s.
    async fn claim_all(&self, product: &ProductId, data: &ProductData) -> Result<Vec<Claimed<'_>>, ApiError> {
        let mut claimed = Vec::new();
        let result = async {
            claimed.extend(
                self.claim(&self.claims.slugs, data.slug.as_str(), product, ErrorCode::SlugTaken).await?,
            );
            for sku in data.skus() {
                claimed
                    .extend(self.claim(&self.claims.skus, sku.as_str(), product, ErrorCode::SkuTaken).await?);
            }
            Ok::<(), ApiError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(claimed),
            Err(e) => {
                release(claimed).await;
                Err(e)
            }
        }
    }

    /// Creates a product.
    pub async fn create(
        &self,
        data: ProductData,
        status: ProductStatus,
        correlation: &str,
    ) -> Result<ProductView, ApiError> {
        data.validate()?;
        let id = ProductId::generate();
        let claimed = self.claim_all(&id, &data).await?;
        match self.command(&id, ProductCommand::Create { data, status }, correlation).await {
            Ok(v) => Ok(v),
            Err(e) => {
                release(claimed).await;
                Err(e)
            }
        }
    }

    /// Replaces a product's data and status, if it is still at `expected_version`. A SKU
    /// dropped from the product stays claimed by it: its stock history belongs to it.
    pub async fn update(
        &self,
        id: &ProductId,
        data: ProductData,
        status: ProductStatus,
        expected_version: u64,
        correlation: &str,
    ) -> Result<ProductView, ApiError> {
        data.validate()?;
        let current = self.command(id, ProductCommand::Get, correlation).await?;
        if current.version != expected_version {
            return Err(ApiError::invalid(
                ErrorCode::VersionMismatch,
                format!("the product is at version {}, not {expected_version}", current.version),
            ));
        }
        let old_slug = current.data.slug.clone();
        let claimed = self.claim_all(id, &data).await?;
        let new_slug = data.slug.clone();
        let cmd = ProductCommand::Update { data, status, expected_version };
        match self.command(id, cmd, correlation).await {
            Ok(v) => {
                if new_slug != old_slug {
                    let _ = self.claims.slugs.delete(old_slug.as_str(), None).await;
                }
                Ok(v)
            }
            Err(e) => {
                release(claimed).await;
                Err(e)
            }
        }
    }

    /// Creates the product, or, if one of its SKUs (or its slug) already belongs to a product,
    /// makes that product so. The import's idempotence.
    pub async fn upsert(
        &self,
        data: ProductData,
        status: ProductStatus,
        correlation: &str,
    ) -> Result<crate::import::Outcome, ApiError> {
        use crate::import::Outcome;
        let mut owner = None;
        for sku in data.skus() {
            if let Some((claim, _)) = self.claims.skus.get(sku.as_str()).await? {
                owner = Some(claim.product);
                break;
            }
        }
        if owner.is_none() {
            owner = self.claims.slugs.get(data.slug.as_str()).await?.map(|(c, _)| c.product);
        }
        let current = match owner {
            None => None,
            Some(id) => match self.command(&id, ProductCommand::Get, correlation).await {
                Ok(v) => Some(v),
                Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownProduct => None,
                Err(e) => return Err(e),
            },
        };
        let Some(current) = current else {
            return self.create(data, status, correlation).await.map(|_| Outcome::Created);
        };
        if current.data == data && current.status == status {
            return Ok(Outcome::Unchanged);
        }
        self.update(&current.id, data, status, current.version, correlation).await.map(|_| Outcome::Updated)
    }

    /// Deletes a never-sold draft and frees its slug and SKUs.
    pub async fn delete(
        &self,
        id: &ProductId,
        expected: Option<u64>,
        correlation: &str,
    ) -> Result<(), ApiError> {
        let current = self.command(id, ProductCommand::Get, correlation).await?;
        self.command(id, ProductCommand::Delete { expected_version: expected }, correlation).await?;
        let keys = std::iter::once((&self.claims.slugs, current.data.slug.as_str().to_owned()))
            .chain(current.data.skus().into_iter().map(|s| (&self.claims.skus, s.to_string())));
        for (kv, key) in keys {
            if let Err(e) = kv.delete(&key, None).await {
                // The product is gone; its stale claim is reclaimable after a minute.
                tracing::warn!(key, error = %e, "could not free a deleted product's claim");
            }
        }
        Ok(())
    }
}

async fn release(claimed: Vec<Claimed<'_>>) {
    for c in claimed {
        if let Err(e) = c.kv.delete(&c.key, Some(c.revision)).await {
            tracing::warn!(key = c.key, error = %e, "could not release a claim; it is reclaimable once stale");
        }
    }
}
