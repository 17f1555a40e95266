//! Monitoring: a real Prometheus scrapes a running node; every metric the dashboards and alert
//! rules query is one the node exports, and every dashboard query is valid PromQL.

use serde_json::Value;
use souk_testkit::{NatsServer, SoukNode, eventually, free_port, http};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring")
}

/// `name` from PATH; `./dev setup` installs Debian's prometheus package when it is missing.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: run ./dev setup (it installs Debian's prometheus)")
        })
}

/// A Prometheus process, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_scraping(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: souk\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_request_counter_of_a_running_node() {
    let nats = NatsServer::start();
    let node = SoukNode::start(crate::bin(), nats.url(), &[]).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let target = node.url().trim_start_matches("http://").to_owned();
    let prometheus = prometheus_scraping(&target);
    let query = format!("{}/api/v1/query?query=souk_http_requests_total", prometheus.url);
    let series = eventually("Prometheus to have scraped the node", Duration::from_secs(60), || async {
        // Requests keep the counter moving while Prometheus starts.
        let _ = http.get(format!("{}/healthz", node.url())).send().await;
        let v: Value = souk_testkit::json_at(&http, &query).await?;
        let result = v["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    })
    .await;
    assert!(
        series
            .iter()
            .any(|s| s["metric"]["route"] == "/healthz" && s["metric"]["instance"] == target.as_str()),
        "{series:?}"
    );
}

/// Every `souk_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("souk_") {
        let start = i + at;
        // Not inside a name, and not a label value (`consumer="souk_checkout"`).
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'"'));
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Every PromQL expression of the dashboards, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dir = monitoring().join("grafana/dashboards");
    for entry in std::fs::read_dir(&dir).expect("dashboards") {
        let path = entry.expect("entry").path();
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("dashboard json");
        for panel in d["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
                out.push((format!("{} / {}", path.display(), panel["title"]), expr));
            }
        }
    }
    assert!(out.len() >= 20, "the four dashboards have their panels");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_only_metrics_the_node_exports_in_valid_promql() {
    let nats = NatsServer::start();
    let node = SoukNode::start(crate::bin(), nats.url(), &[]).expect("node");
    let http = http();
    crate::ready(&http, &node).await;
    let exposition = http
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // Each family is declared (`# TYPE name kind`) as soon as it is registered, before any
    // sample exists; a sample's name adds `_total` (counters) or `_bucket|_sum|_count`.
    let mut exported = BTreeSet::new();
    for line in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => exported.insert(format!("{name}_total")),
            "histogram" => {
                exported.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
                true
            }
            _ => exported.insert(name.to_owned()),
        };
    }

    let queries = dashboard_queries();
    let alerts = std::fs::read_to_string(monitoring().join("alerts.yml")).expect("alerts");
    let mut used = metric_names(&alerts);
    for (_, q) in &queries {
        used.extend(metric_names(q));
    }
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}\nexported: {exported:?}");
    for needed in ["souk_http_requests_total", "souk_consumer_pending_messages", "souk_saga_outcomes_total"] {
        assert!(used.contains(needed), "{needed} is on a dashboard or in an alert");
    }

    // promtool parses each dashboard query as a recording rule.
    let dir = tempfile::tempdir().expect("dir");
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, q)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: souk_dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(q).expect("json")
        ));
    }
    let file = dir.path().join("dashboards.rules.yml");
    std::fs::write(&file, rules).expect("write");
    let out = Command::new(tool("promtool")).arg("check").arg("rules").arg(&file).output().expect("promtool");
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL: {}{}\n{queries:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
