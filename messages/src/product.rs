//! The product entity: what the shop sells, with one or more variants, each a SKU with its
//! own price. Money is integer minor units with an ISO 4217 currency.

use crate::entity::Entity;
use crate::error::{ErrorCode, ReplyError};
use crate::event::Fold;
use crate::ids::Sku;
use crate::subject::EntityKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// The longest title, in characters.
pub const TITLE_MAX: usize = 200;
/// The longest description, in characters.
pub const DESCRIPTION_MAX: usize = 10_000;
/// The most variants of one product.
pub const VARIANTS_MAX: usize = 100;
/// The most categories, attributes or images of one product or variant.
pub const LIST_MAX: usize = 20;
/// The largest price, in minor units (10 billion in a two-decimal currency).
pub const PRICE_MAX: i64 = 1_000_000_000_000;

fn invalid(detail: impl Into<String>) -> ReplyError {
    ReplyError::new(ErrorCode::InvalidInput, detail)
}

fn is_slug(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A product's id, assigned by Souk.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "prd-0c6f8b1f5d0e4a7c9a7e2d3b4c5d6e7f")]
pub struct ProductId(String);

impl ProductId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(format!("prd-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Validates `s`: `prd-` and 32 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let hex = s.strip_prefix("prd-").unwrap_or("");
        if hex.len() == 32 && crate::ids::is_lower_hex(hex) {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid("not a product id"))
        }
    }
}

crate::ids::string_newtype!(ProductId);

/// A URL-friendly product name: 1 to 100 of `a-z 0-9 -`, not starting or ending with `-`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "linen-shirt", pattern = "^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$")]
pub struct Slug(String);

impl Slug {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        if is_slug(s, 100) {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid("slug must be 1 to 100 of a-z, 0-9 and '-', not starting or ending with '-'"))
        }
    }
}

crate::ids::string_newtype!(Slug);

/// An ISO 4217 currency code: three upper-case letters.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "EUR", pattern = "^[A-Z]{3}$")]
pub struct Currency([u8; 3]);

impl Currency {
    /// ISO 4217 `XXX`: no currency (what an empty order or cart shows).
    pub const NONE: Self = Self(*b"XXX");

    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        match s.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(invalid("currency must be an ISO 4217 code such as EUR")),
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = ReplyError;
    fn try_from(s: String) -> Result<Self, ReplyError> {
        Self::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

/// An amount of money: integer minor units (cents) of a currency.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
pub struct Money {
    /// Minor units, 0 to 10¹².
    #[schema(example = 2599, minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: Currency,
}

impl Money {
    /// Validates the amount.
    pub fn new(amount: i64, currency: Currency) -> Result<Self, ReplyError> {
        if (0..=PRICE_MAX).contains(&amount) {
            Ok(Self { amount, currency })
        } else {
            Err(invalid(format!("price must be 0 to {PRICE_MAX} minor units")))
        }
    }
}

/// Where a product stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    /// Being prepared; only staff see it.
    Draft,
    /// On sale; shoppers see it.
    Active,
    /// Withdrawn; only staff see it.
    Archived,
}

impl ProductStatus {
    /// The status's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }
}

/// One sellable variant of a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct Variant {
    /// Its SKU, unique across the catalog.
    #[schema(value_type = String, example = "LINEN-SHIRT-M-WHITE")]
    pub sku: Sku,
    /// Its price.
    pub price: Money,
    /// Its attribute values, such as `{"size": "M", "colour": "white"}`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Everything staff set on a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ProductData {
    /// Title, 1 to 200 characters.
    #[schema(example = "Linen shirt")]
    pub title: String,
    /// Unique URL name.
    pub slug: Slug,
    /// Description, up to 10,000 characters.
    #[serde(default)]
    pub description: String,
    /// Category slugs, up to 20.
    #[serde(default)]
    pub categories: BTreeSet<String>,
    /// Product-level attributes, such as `{"material": "linen"}`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Image URLs (http or https), up to 20.
    #[serde(default)]
    pub images: Vec<String>,
    /// One or more variants.
    pub variants: Vec<Variant>,
}

fn check_attributes(what: &str, a: &BTreeMap<String, String>) -> Result<(), ReplyError> {
    if a.len() > LIST_MAX {
        return Err(invalid(format!("{what}: at most {LIST_MAX} attributes")));
    }
    for (k, v) in a {
        let name_ok = !k.is_empty()
            && k.len() <= 40
            && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid(format!("{what}: attribute names are 1 to 40 of a-z, 0-9, '-' and '_'")));
        }
        if v.trim().is_empty() || v.chars().count() > 100 || v.chars().any(char::is_control) {
            return Err(invalid(format!("{what}: attribute values are 1 to 100 characters")));
        }
    }
    Ok(())
}

impl ProductData {
    /// Checks every field against the catalog's rules.
    pub fn validate(&self) -> Result<(), ReplyError> {
        let title = self.title.trim();
        if title.is_empty() || title.chars().count() > TITLE_MAX || title.chars().any(char::is_control) {
            return Err(invalid(format!("title must be 1 to {TITLE_MAX} characters")));
        }
        if self.description.chars().count() > DESCRIPTION_MAX {
            return Err(invalid(format!("description may be at most {DESCRIPTION_MAX} characters")));
        }
        if self.categories.len() > LIST_MAX || !self.categories.iter().all(|c| is_slug(c, 50)) {
            return Err(invalid(format!("categories: at most {LIST_MAX} slugs of a-z, 0-9 and '-'")));
        }
        check_attributes("attributes", &self.attributes)?;
        if self.images.len() > LIST_MAX
            || !self.images.iter().all(|u| {
                (u.starts_with("https://") || u.starts_with("http://"))
                    && u.len() <= 2048
                    && !u.chars().any(|c| c.is_whitespace() || c.is_control())
            })
        {
            return Err(invalid(format!("images: at most {LIST_MAX} http(s) URLs")));
        }
        if self.variants.is_empty() || self.variants.len() > VARIANTS_MAX {
            return Err(invalid(format!("a product has 1 to {VARIANTS_MAX} variants")));
        }
        let mut skus = BTreeSet::new();
        let currency = self.variants[0].price.currency;
        for v in &self.variants {
            if !skus.insert(&v.sku) {
                return Err(invalid(format!("SKU {} appears twice", v.sku)));
            }
            Money::new(v.price.amount, v.price.currency)?;
            if v.price.currency != currency {
                return Err(invalid("all variants of a product are priced in one currency"));
            }
            check_attributes(&format!("variant {}", v.sku), &v.attributes)?;
        }
        Ok(())
    }

    /// The SKUs of its variants.
    pub fn skus(&self) -> BTreeSet<Sku> {
        self.variants.iter().map(|v| v.sku.clone()).collect()
    }
}

/// A command addressed to one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ProductCommand {
    /// Create the product. Idempotent: the same data again changes nothing.
    Create {
        /// Its data, validated; slug and SKUs already claimed for it.
        data: ProductData,
        /// `draft` or `active`.
        status: ProductStatus,
    },
    /// Replace the data and/or the status (`draft` or `active`), if the product is still at
    /// `expected_version`.
    Update {
        /// New data.
        data: ProductData,
        /// `draft` or `active`.
        status: ProductStatus,
        /// The version the change was made against (`If-Match`).
        expected_version: u64,
    },
    /// Withdraw the product from sale.
    Archive {
        /// `If-Match`, if given.
        expected_version: Option<u64>,
    },
    /// Bring an archived product back, as it was before.
    Restore {
        /// `If-Match`, if given.
        expected_version: Option<u64>,
    },
    /// Delete a draft that was never on sale.
    Delete {
        /// `If-Match`, if given.
        expected_version: Option<u64>,
    },
    /// Read it.
    Get,
}

/// Something that happened to a product. Serialized as `{"type": "product.…", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum ProductEvent {
    /// The product was created.
    #[serde(rename = "product.created")]
    Created {
        /// Its data.
        product: ProductData,
        /// Its status.
        status: ProductStatus,
    },
    /// The product's data or status changed; carries the whole product after the change,
    /// and which variants joined or left it (their stock items follow).
    #[serde(rename = "product.updated")]
    Updated {
        /// Its data.
        product: ProductData,
        /// Its status.
        status: ProductStatus,
        /// SKUs of variants added by this change.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        added_skus: Vec<Sku>,
        /// SKUs of variants removed by this change.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed_skus: Vec<Sku>,
    },
    /// The product was withdrawn from sale.
    #[serde(rename = "product.archived")]
    Archived {},
    /// An archived product came back with the status it had before.
    #[serde(rename = "product.restored")]
    Restored {
        /// Its status now.
        status: ProductStatus,
    },
    /// A never-sold draft was deleted; its slug and SKUs are free again.
    #[serde(rename = "product.deleted")]
    Deleted {
        /// The SKUs it had (their stock items are retired).
        #[serde(default)]
        skus: Vec<Sku>,
    },
}

/// A product's full state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductState {
    /// The data; `None` before creation.
    pub data: Option<ProductData>,
    /// The status.
    pub status: Option<ProductStatus>,
    /// The status before archiving, to restore.
    pub before_archive: Option<ProductStatus>,
    /// Whether it has ever been active (and so may have sold).
    pub ever_active: bool,
    /// Deleted: nothing more can happen to it.
    pub deleted: bool,
    /// Events applied.
    pub version: u64,
}

/// A product as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductView {
    /// The product id.
    pub id: ProductId,
    /// Its status.
    pub status: ProductStatus,
    /// Its data.
    #[serde(flatten)]
    pub data: ProductData,
    /// The entity version: send it as `If-Match` to update.
    pub version: u64,
}

fn conflict_version(expected: u64, actual: u64) -> ReplyError {
    ReplyError::new(
        ErrorCode::VersionMismatch,
        format!("the product is at version {actual}, not {expected}; reload it and retry"),
    )
}

impl ProductState {
    fn live(&self) -> Result<(&ProductData, ProductStatus), ReplyError> {
        match (&self.data, self.status, self.deleted) {
            (Some(d), Some(s), false) => Ok((d, s)),
            _ => Err(ReplyError::new(ErrorCode::UnknownProduct, "no such product")),
        }
    }

    fn check_version(&self, expected: Option<u64>) -> Result<(), ReplyError> {
        match expected {
            Some(e) if e != self.version => Err(conflict_version(e, self.version)),
            _ => Ok(()),
        }
    }
}

fn settable(status: ProductStatus) -> Result<(), ReplyError> {
    if status == ProductStatus::Archived {
        Err(invalid("status must be draft or active; archive with the archive route"))
    } else {
        Ok(())
    }
}

impl Fold for ProductState {
    type Event = ProductEvent;

    fn apply(&mut self, event: &ProductEvent) {
        self.version += 1;
        match event {
            ProductEvent::Created { product, status } | ProductEvent::Updated { product, status, .. } => {
                self.data = Some(product.clone());
                self.status = Some(*status);
                self.ever_active |= *status == ProductStatus::Active;
            }
            ProductEvent::Archived {} => {
                self.before_archive = self.status;
                self.status = Some(ProductStatus::Archived);
            }
            ProductEvent::Restored { status } => {
                self.status = Some(*status);
                self.before_archive = None;
            }
            ProductEvent::Deleted { .. } => self.deleted = true,
        }
    }
}

impl Entity for ProductState {
    const KIND: EntityKind = EntityKind::Product;
    type Id = ProductId;
    type Command = ProductCommand;
    type View = ProductView;

    fn id_str(id: &ProductId) -> &str {
        id.as_str()
    }

    fn decide(
        &self,
        _id: &ProductId,
        cmd: &ProductCommand,
        _now: OffsetDateTime,
    ) -> Result<Vec<ProductEvent>, ReplyError> {
        if let ProductCommand::Create { data, status } = cmd {
            data.validate()?;
            settable(*status)?;
            return match (&self.data, self.deleted) {
                (None, _) => Ok(vec![ProductEvent::Created { product: data.clone(), status: *status }]),
                (Some(d), false) if d == data && self.status == Some(*status) => Ok(Vec::new()),
                _ => Err(ReplyError::new(ErrorCode::ProductConflict, "this product id is already in use")),
            };
        }
        let (current, status) = self.live()?;
        match cmd {
            ProductCommand::Create { .. } | ProductCommand::Get => Ok(Vec::new()),
            ProductCommand::Update { data, status: new_status, expected_version } => {
                self.check_version(Some(*expected_version))?;
                data.validate()?;
                settable(*new_status)?;
                if status == ProductStatus::Archived {
                    return Err(ReplyError::new(
                        ErrorCode::ProductConflict,
                        "restore the product before changing it",
                    ));
                }
                if data == current && *new_status == status {
                    return Ok(Vec::new());
                }
                let (before, after) = (current.skus(), data.skus());
                Ok(vec![ProductEvent::Updated {
                    product: data.clone(),
                    status: *new_status,
                    added_skus: after.difference(&before).cloned().collect(),
                    removed_skus: before.difference(&after).cloned().collect(),
                }])
            }
            ProductCommand::Archive { expected_version } => {
                self.check_version(*expected_version)?;
                Ok(if status == ProductStatus::Archived {
                    Vec::new()
                } else {
                    vec![ProductEvent::Archived {}]
                })
            }
            ProductCommand::Restore { expected_version } => {
                self.check_version(*expected_version)?;
                Ok(if status == ProductStatus::Archived {
                    vec![ProductEvent::Restored {
                        status: self.before_archive.unwrap_or(ProductStatus::Draft),
                    }]
                } else {
                    Vec::new()
                })
            }
            ProductCommand::Delete { expected_version } => {
                self.check_version(*expected_version)?;
                if status != ProductStatus::Draft || self.ever_active {
                    return Err(ReplyError::new(
                        ErrorCode::ProductConflict,
                        "only a draft that was never on sale can be deleted; archive it instead",
                    ));
                }
                Ok(vec![ProductEvent::Deleted { skus: current.skus().into_iter().collect() }])
            }
        }
    }

    fn view(&self, id: &ProductId) -> ProductView {
        ProductView {
            id: id.clone(),
            status: self.status.unwrap_or(ProductStatus::Draft),
            data: self.data.clone().unwrap_or_else(|| ProductData {
                title: String::new(),
                slug: Slug(String::new()),
                description: String::new(),
                categories: BTreeSet::new(),
                attributes: BTreeMap::new(),
                images: Vec::new(),
                variants: Vec::new(),
            }),
            version: self.version,
        }
    }

    fn version(&self) -> u64 {
        self.version
    }
}

/// A request addressed to one product.
pub type ProductRequest = crate::entity::Request<ProductState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn data(slug: &str, skus: &[&str]) -> ProductData {
        ProductData {
            title: "Linen shirt".into(),
            slug: Slug::parse(slug).expect("slug"),
            description: "Cool in summer".into(),
            categories: BTreeSet::from(["shirts".to_owned()]),
            attributes: BTreeMap::new(),
            images: vec!["https://img.example/1.jpg".into()],
            variants: skus
                .iter()
                .map(|s| Variant {
                    sku: Sku::parse(*s).expect("sku"),
                    price: Money::new(2599, Currency::parse("EUR").expect("eur")).expect("money"),
                    attributes: BTreeMap::from([("size".to_owned(), "M".to_owned())]),
                })
                .collect(),
        }
    }

    fn run(s: &mut ProductState, cmd: &ProductCommand) -> Result<usize, ErrorCode> {
        let events = s.decide(&ProductId::generate(), cmd, OffsetDateTime::now_utc()).map_err(|e| e.code)?;
        for e in &events {
            s.apply(e);
        }
        Ok(events.len())
    }

    #[test]
    fn values_are_validated() {
        assert!(Slug::parse("linen-shirt-2").is_ok());
        for bad in ["", "-a", "a-", "A", "a b", "ä"] {
            assert!(Slug::parse(bad).is_err(), "{bad:?}");
        }
        assert!(
            Currency::parse("EUR").is_ok()
                && Currency::parse("eur").is_err()
                && Currency::parse("EURO").is_err()
        );
        assert!(Money::new(-1, Currency::parse("EUR").expect("eur")).is_err());
        assert!(ProductId::parse(ProductId::generate().as_str()).is_ok());
        assert!(ProductId::parse("prd-xyz").is_err());
        let mut d = data("a", &["A-1", "A-1"]);
        assert!(d.validate().is_err(), "duplicate SKU");
        d.variants.pop();
        assert!(d.validate().is_ok());
        d.title = " ".into();
        assert!(d.validate().is_err());
        let mut d = data("a", &["A-1"]);
        d.images = vec!["javascript:alert(1)".into()];
        assert!(d.validate().is_err());
        let mut d = data("a", &["A-1", "A-2"]);
        d.variants[1].price.currency = Currency::parse("USD").expect("usd");
        assert!(d.validate().is_err(), "one currency per product");
    }

    #[test]
    fn lifecycle_with_versions() {
        let mut s = ProductState::default();
        let create = ProductCommand::Create { data: data("shirt", &["S-1"]), status: ProductStatus::Draft };
        assert_eq!(run(&mut s, &create), Ok(1));
        assert_eq!(run(&mut s, &create), Ok(0), "idempotent");
        let stale = ProductCommand::Update {
            data: data("shirt", &["S-1"]),
            status: ProductStatus::Active,
            expected_version: 7,
        };
        assert_eq!(run(&mut s, &stale), Err(ErrorCode::VersionMismatch));
        let publish = ProductCommand::Update {
            data: data("shirt", &["S-2"]),
            status: ProductStatus::Active,
            expected_version: 1,
        };
        assert_eq!(run(&mut s, &publish), Ok(1));
        let sku = |s: &str| Sku::parse(s).expect("sku");
        let updated = s
            .decide(
                &ProductId::generate(),
                &ProductCommand::Update {
                    data: data("shirt", &["S-3"]),
                    status: ProductStatus::Active,
                    expected_version: 2,
                },
                OffsetDateTime::now_utc(),
            )
            .expect("update");
        assert!(matches!(&updated[..], [ProductEvent::Updated { added_skus, removed_skus, .. }]
            if *added_skus == [sku("S-3")] && *removed_skus == [sku("S-2")]));
        assert_eq!(
            run(&mut s, &ProductCommand::Delete { expected_version: None }),
            Err(ErrorCode::ProductConflict)
        );
        assert_eq!(run(&mut s, &ProductCommand::Archive { expected_version: Some(2) }), Ok(1));
        assert_eq!(s.status, Some(ProductStatus::Archived));
        assert_eq!(run(&mut s, &ProductCommand::Restore { expected_version: None }), Ok(1));
        assert_eq!(s.status, Some(ProductStatus::Active), "restored to what it was");
    }

    #[test]
    fn only_never_sold_drafts_are_deleted() {
        let mut s = ProductState::default();
        let create = ProductCommand::Create { data: data("mug", &["M-1"]), status: ProductStatus::Draft };
        run(&mut s, &create).expect("create");
        assert_eq!(run(&mut s, &ProductCommand::Delete { expected_version: Some(1) }), Ok(1));
        assert_eq!(run(&mut s, &ProductCommand::Get), Err(ErrorCode::UnknownProduct));
        assert_eq!(run(&mut s, &create), Err(ErrorCode::ProductConflict), "a deleted id is not reused");
    }

    /// A newer release may add fields to product data and variants: an older node still reads
    /// the product (the API's refusal of unknown fields is not part of the type).
    #[test]
    fn product_data_with_fields_this_release_does_not_know_still_decodes() {
        let created =
            ProductEvent::Created { product: data("linen-shirt", &["LS-M"]), status: ProductStatus::Active };
        let mut json = serde_json::to_value(&created).expect("json");
        json["data"]["product"]["seo_title"] = serde_json::json!("Linen shirts");
        json["data"]["product"]["variants"][0]["barcode"] = serde_json::json!("4006381333931");
        let read: ProductEvent = serde_json::from_value(json).expect("extended product data decodes");
        assert_eq!(read, created);
    }
}
