//! Bulk product import from JSON lines or CSV, idempotent by SKU: a line whose SKUs (or slug)
//! already belong to a product updates that product; otherwise it creates one. Used by
//! `souk import products FILE` and `POST /v1/admin/import`.

use crate::catalog::Catalog;
use crate::catalog::ProductBody;
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use souk_messages::product::{Currency, Money, ProductData, ProductStatus, Slug, Variant};
use souk_messages::{ErrorCode, Sku};
use std::collections::BTreeMap;

/// The file formats an import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One product per line, shaped like the body of `POST /v1/products`.
    Jsonl,
    /// One variant per row, grouped into products by `slug`; columns `slug, title,
    /// description, status, categories (;-separated), images (;-separated), sku, price
    /// (minor units), currency, attributes (name=value;…)`.
    Csv,
}

/// One product to import, with the line it starts on.
#[derive(Debug, Clone)]
pub struct Entry {
    /// 1-based line (JSON lines) or row (CSV, header is line 1).
    pub line: usize,
    /// The product and status.
    pub product: ProductData,
    /// `draft` or `active`.
    pub status: ProductStatus,
}

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Rejection {
    /// The line (JSON lines) or row (CSV).
    pub line: usize,
    /// Why it was refused, with the stable error code's words.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    /// Products created.
    pub created: usize,
    /// Products changed.
    pub updated: usize,
    /// Products already as in the file.
    pub unchanged: usize,
    /// Lines refused.
    pub rejected: Vec<Rejection>,
}

/// Parses `text`: the importable entries, and the lines refused already.
pub fn parse(format: Format, text: &str) -> (Vec<Entry>, Vec<Rejection>) {
    match format {
        Format::Jsonl => parse_jsonl(text),
        Format::Csv => parse_csv(text),
    }
}

fn parse_jsonl(text: &str) -> (Vec<Entry>, Vec<Rejection>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match crate::extract::decode::<ProductBody>(raw.as_bytes()) {
            Ok(j) => match j.product.validate() {
                Ok(()) => ok.push(Entry { line, product: j.product, status: j.status }),
                Err(e) => bad.push(Rejection { line, reason: format!("{}: {}", e.code, e.detail) }),
            },
            Err(e) => bad.push(Rejection { line, reason: format!("invalid_body: {e}") }),
        }
    }
    (ok, bad)
}

#[derive(Deserialize)]
struct CsvRow {
    slug: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    categories: String,
    #[serde(default)]
    images: String,
    sku: String,
    price: i64,
    currency: String,
    #[serde(default)]
    attributes: String,
}

fn split_list(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(';').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned)
}

/// One row as a one-variant product.
fn csv_row(row: CsvRow) -> Result<(ProductData, ProductStatus), String> {
    let slug = Slug::parse(row.slug.trim()).map_err(|e| format!("{}: {}", e.code, e.detail))?;
    let status = match row.status.trim() {
        "" | "draft" => ProductStatus::Draft,
        "active" => ProductStatus::Active,
        other => return Err(format!("invalid_input: status must be draft or active, not {other:?}")),
    };
    let sku = Sku::parse(row.sku.trim()).map_err(|e| format!("invalid_sku: {e}"))?;
    let currency = Currency::parse(row.currency.trim()).map_err(|e| format!("{}: {}", e.code, e.detail))?;
    let price = Money::new(row.price, currency).map_err(|e| format!("{}: {}", e.code, e.detail))?;
    let mut attributes = BTreeMap::new();
    for pair in split_list(&row.attributes) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("invalid_input: attribute {pair:?} is not name=value"))?;
        attributes.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let data = ProductData {
        title: row.title,
        slug,
        description: row.description,
        categories: split_list(&row.categories).collect(),
        attributes: BTreeMap::new(),
        images: split_list(&row.images).collect(),
        variants: vec![Variant { sku, price, attributes }],
    };
    Ok((data, status))
}

fn parse_csv(text: &str) -> (Vec<Entry>, Vec<Rejection>) {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::Headers).from_reader(text.as_bytes());
    let mut bad = Vec::new();
    // Rows of one product, in file order, keyed by slug.
    let mut products: Vec<(usize, ProductData, ProductStatus, Vec<usize>)> = Vec::new();
    let mut by_slug: BTreeMap<String, usize> = BTreeMap::new();
    for (i, record) in reader.deserialize::<CsvRow>().enumerate() {
        let line = i + 2;
        let row = match record.map_err(|e| format!("invalid_body: {e}")).and_then(csv_row) {
            Ok(r) => r,
            Err(reason) => {
                bad.push(Rejection { line, reason });
                continue;
            }
        };
        let (row, status) = row;
        match by_slug.get(row.slug.as_str()) {
            Some(&idx) => {
                let (_, data, _, lines) = &mut products[idx];
                data.variants.extend(row.variants);
                lines.push(line);
            }
            None => {
                by_slug.insert(row.slug.as_str().to_owned(), products.len());
                products.push((line, row, status, vec![line]));
            }
        }
    }
    let mut ok = Vec::new();
    for (line, product, status, lines) in products {
        match product.validate() {
            Ok(()) => ok.push(Entry { line, product, status }),
            Err(e) => bad.extend(
                lines.into_iter().map(|line| Rejection { line, reason: format!("{}: {}", e.code, e.detail) }),
            ),
        }
    }
    bad.sort_by_key(|r| r.line);
    (ok, bad)
}

/// How one entry went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new product.
    Created,
    /// An existing product changed.
    Updated,
    /// Already so.
    Unchanged,
}

/// Imports `entries` one by one, calling `progress` after each; adds the results to `summary`.
pub async fn run(
    catalog: &Catalog,
    entries: Vec<Entry>,
    correlation: &str,
    summary: &mut Summary,
    mut progress: impl FnMut(usize),
) {
    for (done, entry) in entries.into_iter().enumerate() {
        match catalog.upsert(entry.product, entry.status, correlation).await {
            Ok(Outcome::Created) => summary.created += 1,
            Ok(Outcome::Updated) => summary.updated += 1,
            Ok(Outcome::Unchanged) => summary.unchanged += 1,
            Err(e) => summary.rejected.push(Rejection { line: entry.line, reason: reason(&e) }),
        }
        progress(done + 1);
    }
    summary.rejected.sort_by_key(|r| r.line);
}

fn reason(e: &ApiError) -> String {
    match e {
        ApiError::Rejected(r) => format!("{}: {}", r.code, r.detail),
        other => format!("{}: {other}", ErrorCode::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_group_into_products_and_bad_rows_are_reported_by_line() {
        let text = "slug,title,description,status,categories,images,sku,price,currency,attributes\n\
                    tee,Tee,Soft,active,shirts;basics,,TEE-S,1500,EUR,size=S\n\
                    tee,Tee,Soft,active,shirts;basics,,TEE-M,1500,EUR,size=M\n\
                    mug,Mug,,draft,,,MUG 1,900,EUR,\n\
                    cap,Cap,,draft,,,CAP-1,-5,EUR,\n\
                    bag,Bag,,draft,,,BAG-1,2500,EUR,colour=black\n";
        let (ok, bad) = parse(Format::Csv, text);
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].product.variants.len(), 2);
        assert_eq!(ok[0].status, ProductStatus::Active);
        assert_eq!(bad.iter().map(|r| r.line).collect::<Vec<_>>(), [4, 5]);
        assert!(bad[0].reason.starts_with("invalid_sku"), "{}", bad[0].reason);
    }

    #[test]
    fn json_lines_report_each_bad_line() {
        let good = r#"{"title":"Tee","slug":"tee","variants":[{"sku":"T-1","price":{"amount":1,"currency":"EUR"}}]}"#;
        let text = format!("{good}\n\nnot json\n{{\"title\":\"\",\"slug\":\"x\",\"variants\":[]}}\n");
        let (ok, bad) = parse(Format::Jsonl, &text);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.iter().map(|r| r.line).collect::<Vec<_>>(), [3, 4]);
    }
}
