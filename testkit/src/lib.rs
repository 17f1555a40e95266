//! Test helpers shared by Souk's integration tests: real `nats-server` processes on free
//! loopback ports (single or a three-server cluster), embedded databases, and real `souk`
//! node processes that tests can stop, kill and restart.
//!
//! Dev-only. Depends on `souk-messages`, `souk-nats` and `souk-storage`.

pub mod smtp;

use anyhow::{Context as _, bail};
use souk_nats::server::{ClusterOptions, LocalServer, ServerOptions, SyncPolicy};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The admin every test node creates at start-up (`SOUK_ADMIN_EMAIL`).
pub const ADMIN_EMAIL: &str = "admin@souk.test";
/// That admin's password (`SOUK_ADMIN_PASSWORD`).
pub const ADMIN_PASSWORD: &str = "test admin password 1";

/// Settings every test node and every `souk` command of a test share: small shard counts
/// (the cluster refuses a command that shards differently), short leases, cheap hashing (the
/// default cost is covered by unit tests).
pub const CLUSTER_SETTINGS: &[(&str, &str)] = &[
    ("SOUK_SHARDS_STOCK", "16"),
    ("SOUK_SHARDS_USER", "16"),
    ("SOUK_SHARDS_PRODUCT", "16"),
    ("SOUK_SHARDS_CART", "16"),
    ("SOUK_SHARDS_ORDER", "16"),
    ("SOUK_LEASE_TTL", "2s"),
    // Failing payments give up sooner; the saga's ack wait follows (2 × this + 20 s).
    ("SOUK_PAYMENT_TIMEOUT", "2s"),
    ("SOUK_ARGON2_MEMORY_KIB", "1024"),
    ("SOUK_ARGON2_ITERATIONS", "1"),
];

/// `bin <args>` as a command-line tool of the cluster at `nats_url`, with its own data dir and
/// the shared test settings; add more with `.env(…)`.
pub fn souk_command(bin: &Path, nats_url: &str, data_dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(CLUSTER_SETTINGS.iter().copied())
        .env("SOUK_NATS_URL", nats_url)
        .env("SOUK_DATA_DIR", data_dir);
    cmd
}

/// A JetStream-enabled nats-server on a free loopback port, in its own temp dir. Killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    server: LocalServer,
    _dir: TempDir,
}

impl NatsServer {
    /// Starts one server.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = LocalServer::start(ServerOptions {
            dir: dir.path().to_owned(),
            name: "test".into(),
            port: None,
            sync: SyncPolicy::Every(Duration::from_secs(1)),
            cluster: None,
        })
        .expect("nats-server did not start: run `./dev setup` or set NATS_SERVER_BIN");
        Self { server, _dir: dir }
    }

    /// Its client URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }
    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// Three JetStream servers in one cluster, routed over loopback. Killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    /// The servers, by index.
    pub servers: Vec<LocalServer>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` servers that route to each other.
    pub fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let name = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let servers = (0..n)
            .map(|i| {
                LocalServer::start(ServerOptions {
                    dir: dir.path().join(format!("s{i}")),
                    name: format!("{name}-s{i}"),
                    port: Some(free_port()),
                    sync: SyncPolicy::Every(Duration::from_secs(1)),
                    cluster: Some(ClusterOptions {
                        name: name.clone(),
                        port: routes[i],
                        peers: routes.clone(),
                    }),
                })
                .expect("cluster server did not start")
            })
            .collect();
        Self { servers, _dir: dir }
    }

    /// Every server's URL, comma-separated, as `SOUK_NATS_URL` takes them.
    pub fn urls(&self) -> String {
        self.servers.iter().map(LocalServer::url).collect::<Vec<_>>().join(",")
    }
}

/// A free TCP port on 127.0.0.1 (for nats-server's route ports, which must be known before
/// the servers start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `souk serve` process with its own data dir. Killed on drop.
#[derive(Debug)]
pub struct SoukNode {
    bin: PathBuf,
    env: BTreeMap<String, String>,
    dir: TempDir,
    child: Option<Child>,
    url: String,
    starts: usize,
}

impl SoukNode {
    /// Starts `bin serve` against NATS at `nats_url`, with test-friendly settings
    /// (16 stock shards, 2 s leases) overridden by `env`.
    pub fn start(bin: &Path, nats_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut vars: BTreeMap<String, String> = [
            ("SOUK_NATS_URL", nats_url),
            ("SOUK_HTTP_ADDR", "127.0.0.1:0"),
            ("SOUK_REQUEST_TIMEOUT", "15s"),
            // The log provider's messages (recipient and text) are at debug.
            ("SOUK_LOG", "info,surrealdb=warn,surrealkv=warn,souk_actors::notify::providers=debug"),
            ("SOUK_ADMIN_EMAIL", ADMIN_EMAIL),
            ("SOUK_ADMIN_PASSWORD", ADMIN_PASSWORD),
            // Tests drive many requests from one address; the limit has its own test.
            ("SOUK_RATE_LIMIT_PER_SECOND", "0"),
        ]
        .into_iter()
        .chain(CLUSTER_SETTINGS.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in env {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut node = Self {
            bin: bin.to_owned(),
            env: vars,
            dir: tempfile::tempdir()?,
            child: None,
            url: String::new(),
            starts: 0,
        };
        node.spawn()?;
        Ok(node)
    }

    /// The node's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited with status 0.
    pub fn stop(&mut self) -> anyhow::Result<bool> {
        let Some(mut c) = self.child.take() else { return Ok(true) };
        Command::new("kill").arg("-TERM").arg(c.id().to_string()).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("node did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes one setting for the next [`restart`](Self::restart): the same node (data dir,
    /// node id, read models) started differently, as an operator would.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    /// Starts the process again with the same data dir and settings.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// The node's data dir (its node id, database and, without a NATS URL, its own server).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("node-{}.log", self.starts))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path())?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("SOUK_DATA_DIR", self.data_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start souk")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(addr) = self.listening_addr() {
                self.url = format!("http://{addr}");
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("souk exited with {status} before listening:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!("souk did not start listening within 60 s:\n{}", self.log())
    }

    fn listening_addr(&self) -> Option<String> {
        let f = std::fs::File::open(self.log_path()).ok()?;
        BufReader::new(f).lines().map_while(Result::ok).find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            (v["fields"]["message"] == "http listening")
                .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
        })
    }
}

impl Drop for SoukNode {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what its nodes warned about: the log goes with the temp dir.
        if std::thread::panicking() {
            let log = self.log();
            let notable: Vec<&str> =
                log.lines().filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"")).collect();
            eprintln!("--- {}: last warnings and errors of {} ---", self.url, notable.len());
            for line in &notable[notable.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// An HTTP client for tests, with a timeout so a hung request fails the test.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

/// Logs in at `base` and returns the answer (`access_token`, `refresh_token`, …), retrying
/// while the account's shard is still settling.
pub async fn login(base: &str, email: &str, password: &str) -> serde_json::Value {
    let client = http();
    let body = serde_json::json!({ "email": email, "password": password });
    eventually("login", Duration::from_secs(30), || async {
        let r = client.post(format!("{base}/v1/auth/login")).json(&body).send().await.ok()?;
        match r.status().as_u16() {
            200 => r.json().await.ok(),
            503 | 504 => None,
            other => panic!("login as {email} answered {other}: {}", r.text().await.unwrap_or_default()),
        }
    })
    .await
}

/// An HTTP client that sends `token` as its bearer token on every request.
pub fn http_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {token}").parse().expect("header");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A client signed in as the test admin of the node at `base`.
pub async fn admin_http(base: &str) -> reqwest::Client {
    http_with_token(&access_token(base, ADMIN_EMAIL, ADMIN_PASSWORD).await)
}

/// Logs in and answers the access token alone.
pub async fn access_token(base: &str, email: &str, password: &str) -> String {
    login(base, email, password).await["access_token"].as_str().expect("access_token").to_owned()
}

/// GETs `url` and reads its JSON body; `None` when either fails, for [`eventually`]'s checks.
pub async fn json_at(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> Option<serde_json::Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
