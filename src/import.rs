//! `souk import products FILE`: bulk import into a running cluster, with progress on stderr
//! and a summary of what was created, updated, unchanged and refused (with reasons).

use crate::config::Config;
use anyhow::{Context as _, bail};
use souk_api::import::{Format, Summary};
use std::io::Write as _;
use std::path::Path;

/// Imports `file` (JSON lines, or CSV by its `.csv` extension unless `format` says otherwise)
/// and prints the summary as JSON on stdout. Fails (exit 1) if any line was refused.
pub async fn products(cfg: &Config, file: &Path, format: Option<Format>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let format = format.unwrap_or(if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        Format::Csv
    } else {
        Format::Jsonl
    });
    let (entries, rejected) = souk_api::import::parse(format, &text);
    let cluster = crate::client::ClusterClient::connect(cfg, "souk import").await?;
    let catalog = cluster.catalog();
    let total = entries.len();
    let mut summary = Summary { rejected, ..Summary::default() };
    let correlation = format!("import-{}", uuid::Uuid::new_v4().simple());
    souk_api::import::run(&catalog, entries, &correlation, &mut summary, |done| {
        if done == total || done % 25 == 0 {
            eprint!("\rimported {done}/{total} products");
            let _ = std::io::stderr().flush();
        }
    })
    .await;
    eprintln!();
    cluster.close().await?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if !summary.rejected.is_empty() {
        bail!("{} line(s) refused; the others were imported", summary.rejected.len());
    }
    Ok(())
}
