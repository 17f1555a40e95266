//! `souk load`: a load generator for reservations, catalog browsing and checkouts against a running node,
//! with the same generator run against a bare axum handler in-process as the ceiling of this
//! machine.

mod checkout;
mod jetstream;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The node's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long each scenario runs.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub duration: Duration,
    /// SKUs to spread reservations over.
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// Scenarios to run, comma-separated: spread, hot, ceiling, jetstream, actors, failover,
    /// browse, checkout, checkout-hot (`--concurrency` is then the number of virtual customers).
    #[arg(long, default_value = "spread,hot,ceiling", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// For `actors`: how many stock items to make resident.
    #[arg(long, default_value_t = 100_000)]
    pub actors: usize,
    /// For `actors` and `failover`: the node process whose memory to read or to kill -9.
    #[arg(long)]
    pub pid: Option<u32>,
    /// A staff or admin account to log in as (inventory routes need one).
    #[arg(long, env = "SOUK_LOAD_EMAIL")]
    pub email: Option<String>,
    /// Its password.
    #[arg(long, env = "SOUK_LOAD_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// For `jetstream`: the URL of the node's nats-server (a local one's is in
    /// `<data dir>/nats-url`).
    #[arg(long)]
    pub nats: Option<String>,
    /// For `jetstream`: scratch streams to spread the appends over (each stream's writes are
    /// fsynced one after another; separate streams' are not).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// For `browse`: the size of the catalog to import (the demo generator's first N products)
    /// before measuring. Importing again is harmless: it is idempotent by SKU.
    #[arg(long, default_value_t = 10_000)]
    pub products: usize,
}

#[derive(Debug, Serialize)]
struct Summary {
    scenario: String,
    concurrency: usize,
    seconds: f64,
    requests: u64,
    succeeded: u64,
    rejected: u64,
    errors: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    oversold: Option<bool>,
}

/// Runs the chosen scenarios and prints one JSON summary per scenario on stdout.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    // `jetstream` alone talks to nats-server, not to a node.
    let needs_node = args.scenarios.iter().any(|s| s != "jetstream");
    if let (true, Some(email), Some(password)) = (needs_node, &args.email, &args.password) {
        let token = login(&args.target, email, password).await?;
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    for scenario in &args.scenarios {
        let summary = match scenario.as_str() {
            "spread" => {
                let skus: Vec<String> = (0..args.skus).map(|i| format!("LOAD-{run_id}-{i}")).collect();
                restock(&client, &args.target, &skus, 1_000_000).await?;
                drive(&args, "spread", http(&client, reservations(&args.target, &skus, &run_id, "spread")))
                    .await
            }
            "hot" => {
                let skus = vec![format!("HOT-{run_id}")];
                restock(&client, &args.target, &skus, 1_000_000).await?;
                let mut s =
                    drive(&args, "hot", http(&client, reservations(&args.target, &skus, &run_id, "hot")))
                        .await;
                s.oversold = Some(oversold(&client, &args.target, &skus[0], s.succeeded).await?);
                s
            }
            "ceiling" => {
                let base = bare_server().await?;
                let skus: Vec<String> = (0..args.skus).map(|i| format!("BARE-{i}")).collect();
                drive(
                    &args,
                    "ceiling (bare axum handler)",
                    http(&client, reservations(&base, &skus, &run_id, "ceiling")),
                )
                .await
            }
            "jetstream" => {
                let url = args
                    .nats
                    .as_deref()
                    .context("--nats, the node's nats-server, is needed for `jetstream`")?;
                jetstream::run(url, &args, &run_id).await?
            }
            "actors" => {
                let pid = args.pid.context("--pid of the node is needed for `actors`")?;
                println!("{}", serde_json::to_string(&resident(&client, &args, pid, &run_id).await?)?);
                continue;
            }
            "failover" => {
                let pid = args.pid.context("--pid of the node to kill is needed for `failover`")?;
                println!("{}", serde_json::to_string(&failover(&client, &args, pid, &run_id).await?)?);
                continue;
            }
            "checkout" | "checkout-hot" => {
                let summary = checkout::run(&client, &args, scenario == "checkout-hot", &run_id).await?;
                println!("{}", serde_json::to_string(&summary)?);
                continue;
            }
            "browse" => {
                for summary in browse(&client, &args).await? {
                    println!("{}", serde_json::to_string(&summary)?);
                }
                continue;
            }
            other => bail!(
                "unknown scenario {other}; use spread, hot, ceiling, jetstream, actors, failover, browse, checkout or checkout-hot"
            ),
        };
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// Imports an `args.products` catalog (admin needed), then measures what anonymous shoppers
/// see: product pages, searches, and the same GET against a bare handler.
async fn browse(client: &reqwest::Client, args: &LoadArgs) -> anyhow::Result<Vec<Summary>> {
    let products = crate::seed::demo_catalog(args.products);
    // Shoppers ask for the products on sale; drafts would be 404s.
    let slugs: Arc<Vec<String>> = Arc::new(
        products
            .iter()
            .filter(|(_, status, _)| *status == souk_messages::product::ProductStatus::Active)
            .map(|(p, _, _)| p.slug.as_str().to_owned())
            .collect(),
    );
    let started = Instant::now();
    for (i, chunk) in products.chunks(500).enumerate() {
        let mut body = String::new();
        for (p, status, _) in chunk {
            let mut line = serde_json::to_value(p)?;
            line["status"] = serde_json::to_value(status)?;
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let res = client
            .post(format!("{}/v1/admin/import?format=jsonl", args.target))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .context("import request (log in as an admin with --email/--password)")?;
        if !res.status().is_success() {
            bail!("import answered {}", res.status());
        }
        eprintln!("browse: catalog {} / {} products", ((i + 1) * 500).min(products.len()), products.len());
    }
    // The storefront lags the import slightly: wait until shoppers see its last product.
    on_sale(&args.target, slugs.last().context("no products")?).await?;
    eprintln!("browse: catalog in place after {:.0} s", started.elapsed().as_secs_f64());
    // Shoppers browse without signing in.
    let shopper = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = args.target.clone();
    let detail: MakeRequest = {
        let (base, slugs) = (base.clone(), slugs.clone());
        Arc::new(move |c, w, n| {
            c.get(format!("{base}/v1/products/{}", slugs[(w * 7919 + n * 104_729) % slugs.len()]))
        })
    };
    let words = crate::seed::search_words();
    let search: MakeRequest = Arc::new(move |c, w, n| {
        c.get(format!("{base}/v1/products?limit=24&q={}", words[(w * 31 + n * 7) % words.len()]))
    });
    let bare = bare_server().await?;
    let ceiling: MakeRequest = Arc::new(move |c, _, n| c.get(format!("{bare}/v1/products/p-{}", n % 1000)));
    Ok(vec![
        drive(args, "browse: product page", http(&shopper, detail)).await,
        drive(args, "browse: search", http(&shopper, search)).await,
        drive(args, "ceiling (bare axum GET)", http(&shopper, ceiling)).await,
    ])
}

/// Resident set size of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// Makes `args.actors` stock items resident (one restock each) and reports the node's RSS
/// before and after.
async fn resident(
    client: &reqwest::Client,
    args: &LoadArgs,
    pid: u32,
    run_id: &str,
) -> anyhow::Result<serde_json::Value> {
    let before = rss_mib(pid)?;
    let skus: Vec<String> = (0..args.actors).map(|i| format!("RES-{run_id}-{i}")).collect();
    let started = Instant::now();
    for (i, chunk) in skus.chunks(10_000).enumerate() {
        restock(client, &args.target, chunk, 1).await?;
        eprintln!("actors: {} resident, node RSS {:.0} MiB", (i + 1) * chunk.len(), rss_mib(pid)?);
    }
    let after = rss_mib(pid)?;
    Ok(json!({
        "scenario": "resident stock-item actors",
        "actors": args.actors,
        "seconds_to_create": started.elapsed().as_secs_f64(),
        "rss_before_mib": before,
        "rss_after_mib": after,
        "kib_per_actor": (after - before) * 1024.0 / args.actors as f64,
    }))
}

/// Stocks `args.skus` SKUs, kills the node `pid` with SIGKILL, and measures how long until every
/// SKU answers again through `args.target` (another node), with its state intact.
async fn failover(
    client: &reqwest::Client,
    args: &LoadArgs,
    pid: u32,
    run_id: &str,
) -> anyhow::Result<serde_json::Value> {
    use futures::StreamExt as _;
    let skus: Vec<String> = (0..args.skus).map(|i| format!("FO-{run_id}-{i}")).collect();
    restock(client, &args.target, &skus, 5).await?;
    let probe = |sku: String| {
        let url = format!("{}/v1/inventory/{sku}", args.target);
        async move {
            match client.get(url).timeout(Duration::from_millis(500)).send().await {
                Ok(r) if r.status().is_success() => {
                    r.json::<serde_json::Value>().await.ok().map(|v| v["on_hand"] == 5)
                }
                _ => None,
            }
        }
    };
    let killed = Instant::now();
    std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status()?;
    let mut first_failure = None;
    loop {
        let answers: Vec<Option<bool>> =
            futures::stream::iter(skus.iter().cloned().map(probe)).buffer_unordered(64).collect().await;
        if answers.contains(&Some(false)) {
            bail!("a SKU answered with wrong state after failover");
        }
        if answers.iter().all(Option::is_some) {
            break;
        }
        first_failure.get_or_insert_with(|| killed.elapsed());
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("SKUs still failing 120 s after the kill");
        }
    }
    Ok(json!({
        "scenario": "failover after kill -9",
        "skus": args.skus,
        "first_failure_after_kill_s": first_failure.map(|d| d.as_secs_f64()),
        "all_answer_after_kill_s": killed.elapsed().as_secs_f64(),
        "failover_window_s": first_failure.map(|f| (killed.elapsed() - f).as_secs_f64()),
    }))
}

async fn restock(client: &reqwest::Client, base: &str, skus: &[String], qty: u32) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(skus.iter().map(|sku| async move {
        let res = client
            .post(format!("{base}/v1/inventory/{sku}/restock"))
            .json(&json!({ "quantity": qty }))
            .send()
            .await
            .context("restock request")?;
        if !res.status().is_success() {
            bail!("restock of {sku} answered {}", res.status());
        }
        Ok(())
    }))
    .buffer_unordered(64)
    .collect()
    .await;
    results.into_iter().collect()
}

/// What one operation of the generator came to.
enum Outcome {
    /// Done (HTTP 2xx, or an acknowledged append).
    Ok,
    /// Refused as the scenario expects some to be (HTTP 409: no stock left).
    Rejected,
    /// Anything else.
    Error,
}

/// Starts the `n`-th operation of worker `w`.
type Operation = Arc<dyn Fn(usize, usize) -> futures::future::BoxFuture<'static, Outcome> + Send + Sync>;

/// Builds the `n`-th request of worker `w`.
type MakeRequest = Arc<dyn Fn(&reqwest::Client, usize, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// The requests `make` builds, sent with `client`, as operations.
fn http(client: &reqwest::Client, make: MakeRequest) -> Operation {
    let client = client.clone();
    Arc::new(move |w, n| {
        let request = make(&client, w, n);
        Box::pin(async move {
            match request.send().await.map(|r| r.status().as_u16()) {
                Ok(200..=299) => Outcome::Ok,
                Ok(409) => Outcome::Rejected,
                _ => Outcome::Error,
            }
        })
    })
}

/// Reservations of one unit on `skus` at `base`, each with a fresh reservation id.
fn reservations(base: &str, skus: &[String], run_id: &str, name: &str) -> MakeRequest {
    let (base, skus, run_id, tag) = (base.to_owned(), skus.to_vec(), run_id.to_owned(), name.len());
    Arc::new(move |client, w, n| {
        let sku = &skus[(w * 7919 + n * 104_729) % skus.len()];
        client
            .post(format!("{base}/v1/inventory/{sku}/reservations"))
            .json(&json!({ "reservation_id": format!("{run_id}-{tag}-{w}-{n}"), "quantity": 1 }))
    })
}

/// Runs `op` from `args.concurrency` workers, each one operation at a time, for `args.duration`.
async fn drive(args: &LoadArgs, name: &str, op: Operation) -> Summary {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let (mut ok, mut rejected, mut errors) = (0u64, 0u64, 0u64);
            let mut n: usize = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let outcome = op(w, n).await;
                n += 1;
                lat.push(t.elapsed().as_micros() as u32);
                match outcome {
                    Outcome::Ok => ok += 1,
                    Outcome::Rejected => rejected += 1,
                    Outcome::Error => errors += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, ok, rejected, errors)
        }));
    }
    let progress = {
        let (done, stop) = (done.clone(), stop.clone());
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!("{name}: {now} requests, {}/s", now - last);
                last = now;
            }
        })
    };
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut ok, mut rejected, mut errors) = (0, 0, 0);
    for w in workers {
        if let Ok((l, o, r, e)) = w.await {
            lat.extend(l);
            ok += o;
            rejected += r;
            errors += e;
        }
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let requests = lat.len() as u64;
    Summary {
        scenario: name.to_owned(),
        concurrency: args.concurrency,
        seconds,
        requests,
        succeeded: ok,
        rejected,
        errors,
        per_second: requests as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        oversold: None,
    }
}

/// True when the hot SKU shows more units reserved than the generator was granted, or
/// negative availability.
async fn oversold(client: &reqwest::Client, base: &str, sku: &str, granted: u64) -> anyhow::Result<bool> {
    let v: serde_json::Value = client.get(format!("{base}/v1/inventory/{sku}")).send().await?.json().await?;
    let reserved = v["reserved"].as_u64().unwrap_or(u64::MAX);
    let on_hand = v["on_hand"].as_u64().unwrap_or(0);
    Ok(reserved > on_hand || reserved != granted)
}

/// Waits (up to a minute) until shoppers see the product `slug`.
async fn on_sale(base: &str, slug: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if reqwest::get(format!("{base}/v1/products/{slug}")).await?.status().is_success() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the catalog never showed {slug}")
}

/// Logs in and returns the access token.
async fn login(base: &str, email: &str, password: &str) -> anyhow::Result<String> {
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .context("login request")?;
    if !res.status().is_success() {
        bail!("login as {email} answered {}", res.status());
    }
    let body: serde_json::Value = res.json().await?;
    body["access_token"].as_str().map(str::to_owned).context("login answer without access_token")
}

/// A bare axum handler on a free loopback port: the same HTTP work without Souk behind it.
async fn bare_server() -> anyhow::Result<String> {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/v1/products/{slug}",
            get(|axum::extract::Path(slug): axum::extract::Path<String>| async move {
                axum::Json(json!({ "slug": slug, "title": "A product", "variants": [], "available": {} }))
            }),
        )
        .route(
        "/v1/inventory/{sku}/reservations",
        post(|axum::extract::Path(sku): axum::extract::Path<String>, axum::Json(b): axum::Json<serde_json::Value>| async move {
            (axum::http::StatusCode::CREATED, axum::Json(json!({ "reservation_id": b["reservation_id"], "quantity": 1, "stock": { "sku": sku } })))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}
