//! `souk serve`: start a node and run it until SIGTERM or SIGINT.

use crate::config::Config;
use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use souk_actors::metrics::ActorMetrics;
use souk_actors::{ActorSettings, Node, NodeDeps};
use souk_api::auth::password::Hasher;
use souk_api::auth::{Auth, NewUser};
use souk_messages::NodeId;
use souk_messages::cart::CartRules;
use souk_messages::user::{Email, Name, Role};
use souk_nats::accounts::Accounts;
use souk_nats::cluster::Cluster;
use souk_nats::health::Readiness;
use souk_nats::metrics::StoreMetrics;
use souk_nats::server::{LocalServer, ServerOptions, Supervised};
use souk_nats::streams::ProvisionSettings;
use souk_nats::{Bus, ConnectSettings, EventStore, JsonKv};
use souk_storage::{DbSettings, ReadModels};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Runs a node until a shutdown signal, then leaves the cluster gracefully.
pub async fn run(cfg: Config, seed: bool, logs: Arc<crate::logs::LogSink>) -> anyhow::Result<()> {
    let mut signals = Signals::install().context("cannot listen for SIGTERM and SIGINT")?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    // Settings that can be wrong are read before anything starts, so a mistake is one clear
    // error, not a local nats-server and a database started only to be stopped again.
    let shards = cfg.shard_counts().map_err(anyhow::Error::msg)?;
    let payments = payment_gateway(&cfg)?;
    let notify = cfg.notify_settings()?;
    let cors_origins = cfg.cors_origins()?;
    // Held until the process exits, whichever way it exits.
    let _data_dir = lock_data_dir(&cfg)?;
    let node_id = node_id(&cfg)?;
    logs.set_node(&node_id.to_string());
    tracing::info!(node = %node_id, "starting souk node");
    // Bound before the node joins the cluster: a node that cannot serve must not take shards
    // only to drop them (a taken port would disturb the cluster on every restart).
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.http_addr))?;

    // No NATS configured: run our own, so one node works with nothing else set up.
    let mut local_nats = None;
    let nats_exits = Counter::default();
    let mut urls = cfg.nats_urls();
    if urls.is_empty() {
        let sync = cfg.sync_policy().map_err(anyhow::Error::msg)?;
        let dir = cfg.data_dir.join("nats");
        let server = tokio::task::spawn_blocking(move || {
            LocalServer::start(ServerOptions {
                dir,
                name: "souk-local".into(),
                port: None,
                sync,
                cluster: None,
            })
        })
        .await??;
        tracing::info!(url = server.url(), "started local nats-server");
        urls.push(server.url().to_owned());
        // Other `souk` commands (admin create) on this data dir find the server here.
        std::fs::write(cfg.local_nats_file(), server.url())?;
        local_nats = Some(Supervised::new(server, nats_exits.clone()));
    }

    // A signal during start-up stops the node there: the process exits 0 and takes its local
    // nats-server with it, as after a stop at any other time. A node that joined the cluster
    // before the stop (or a failure) leaves it again, so no shard waits out its lease.
    let mut joined: Option<Node> = None;
    let startup = async {
        let client = connect(&cfg, urls, format!("souk {node_id}")).await?;
        let readiness = Readiness::new(client.clone());
        let jet = provision(&client, &cfg).await?;
        readiness.set_provisioned();
        let cluster = Cluster::new(&jet, node_id.clone());
        cluster.agree_on_shards(shards).await?;

        let db = souk_storage::connect(&DbSettings {
            endpoint: cfg.db_endpoint(),
            namespace: cfg.db_namespace.clone(),
            database: cfg.db_database.clone(),
            root: cfg.db_user.clone().zip(cfg.db_password.clone()),
        })
        .await
        .context("cannot open the read-model database")?;
        let read_models = ReadModels::new(db);

        let mut registry = Registry::default();
        let store = EventStore::new(jet.clone(), StoreMetrics::register(&mut registry));
        let history = store.clone();
        let actor_metrics = ActorMetrics::register(&mut registry);
        let http = souk_api::metrics::HttpMetrics::register(&mut registry);
        let nats_metrics = souk_nats::monitor::NatsMetrics::register(&mut registry);
        registry.register(
            "souk_log_records_dropped",
            "Log records not forwarded to the central log store (queue full or NATS unreachable)",
            logs.dropped.clone(),
        );
        registry.register(
            "souk_local_nats_exits",
            "Times this node's own nats-server (run when no nats_url is set) ended without being stopped; it is started again",
            nats_exits.clone(),
        );
        let bus = Bus::new(client.clone(), shards, cfg.request_timeout);

        // Embedded read models are per node, so each node projects everything through its own
        // consumers; a shared database shares one consumer per kind.
        let projector_suffix =
            if cfg.db_endpoint().starts_with("ws") { String::new() } else { format!("_{node_id}") };
        let node = Node::start(
            ActorSettings {
                shards,
                tick: (cfg.lease_ttl / 3).max(Duration::from_millis(200)),
                snapshot_every: cfg.snapshot_every,
                idle_after: cfg.idle_after,
                projector_suffix,
                saga: souk_actors::saga::SagaSettings {
                    reservation_ttl: cfg.reservation_ttl,
                    payment_timeout: cfg.payment_timeout,
                },
                log_retention: cfg.log_retention,
            },
            NodeDeps {
                jet: jet.clone(),
                bus: bus.clone(),
                store,
                cluster,
                read_models: read_models.clone(),
                readiness: readiness.clone(),
                metrics: actor_metrics,
                payments,
                notify,
            },
        )
        .await?;

        joined = Some(node);

        let auth = auth(&cfg, &jet, bus.clone()).await?;
        let addr = listener.local_addr()?;
        // The configured admin exists before the first request is served.
        if let (Some(email), Some(password)) = (&cfg.admin_email, &cfg.admin_password) {
            ensure_admin(&auth, email, password.clone()).await.context("admin_email")?;
        }
        tracing::info!(%addr, "http listening");

        let (stop_feeds, feeds_stop) = tokio::sync::watch::channel(false);
        let storefront = souk_api::storefront::Storefront::start(&jet, readiness.clone(), &feeds_stop);
        auth.follow_revocations(
            jet.events.of(souk_messages::subject::EntityKind::User),
            readiness.clone(),
            &feeds_stop,
        );
        tokio::spawn({
            let (jet, stop) = (jet.clone(), feeds_stop.clone());
            async move { nats_metrics.watch(jet, Duration::from_secs(5), stop).await }
        });
        tokio::spawn({
            let (client, stop) = (client.clone(), feeds_stop.clone());
            async move { logs.forward(client, stop).await }
        });
        let catalog =
            souk_api::catalog::Catalog::new(bus.clone(), souk_nats::catalog::CatalogClaims::new(&jet));
        if seed {
            let (bus, auth, catalog, readiness) =
                (bus.clone(), auth.clone(), catalog.clone(), readiness.clone());
            tokio::spawn(async move {
                // Seeding is idempotent: one cut short by a stop is finished by the next start.
                let draining = readiness.until_draining();
                tokio::select! {
                    seeded = crate::seed::run(&bus, &auth, &catalog, &readiness) => {
                        if let Err(e) = seeded {
                            tracing::error!(error = %e, "seeding failed");
                        }
                    }
                    () = draining => tracing::info!("demo seeding stopped by the shutdown; the next start finishes it"),
                }
            });
        }

        let carts = souk_api::cart::Carts::new(
            bus.clone(),
            storefront.clone(),
            CartRules { max_quantity: cfg.cart_max_quantity, idle_secs: cfg.cart_idle_ttl.as_secs() },
        );
        let live = souk_api::live::LiveOrders::start(history.clone(), &http, &feeds_stop)
            .await
            .context("cannot follow the order stream")?;
        let state = Arc::new(souk_api::App {
            live,
            store: history,
            reservation_ttl: cfg.reservation_ttl,
            body_timeout: cfg.body_timeout,
            bus: bus.clone(),
            stock: read_models.stock,
            users: read_models.users,
            catalog,
            catalog_repo: read_models.catalog,
            orders: read_models.orders,
            notifications: read_models.notifications,
            endpoints: souk_nats::notify::Endpoints::new(&jet),
            logs: read_models.logs,
            webhooks_allow_private: cfg.webhooks_allow_private,
            jet: jet.clone(),
            webhooks: souk_api::webhook::Webhooks::new(
                cfg.payments_webhook_secret.clone(),
                JsonKv::new(jet.webhooks.clone()),
            ),
            checkout: souk_api::checkout::Checkout::new(
                bus.clone(),
                carts.clone(),
                JsonKv::new(jet.checkouts.clone()),
            ),
            carts,
            storefront,
            auth,
            rate_limiter: Arc::new(souk_api::rate_limit::RateLimiter::new(cfg.rate_settings())),
            cors_origins,
            readiness: readiness.clone(),
            registry: Arc::new(registry),
            http,
        });
        anyhow::Ok((client, readiness, listener, state, stop_feeds))
    };
    let outcome = tokio::select! {
        started = startup => Some(started),
        () = signals.recv() => None,
    };
    let (client, readiness, listener, state, stop_feeds) = match outcome {
        Some(Ok(started)) => started,
        stopped_or_failed => {
            if let Some(node) = joined.take() {
                node.leave().await;
            }
            stop_local(local_nats, &cfg).await?;
            let Some(Err(e)) = stopped_or_failed else {
                tracing::info!("stopped during start-up");
                return Ok(());
            };
            return Err(e);
        }
    };
    let node = joined.take().context("start-up finished without a node")?;
    let draining = readiness.clone();
    let serving = souk_api::serve(listener, state, async move {
        signals.recv().await;
        tracing::info!("shutting down: no new requests; finishing in-flight ones");
        draining.set_draining();
    });
    // Every request answers within `request_timeout` and live streams end on the drain, so a
    // connection still open after that is a stuck client; it must not keep the node up.
    let drain_limit = {
        let (draining, limit) = (readiness.until_draining(), cfg.request_timeout);
        async move {
            draining.await;
            tokio::time::sleep(limit).await;
        }
    };
    tokio::select! {
        served = serving => served?,
        () = drain_limit => tracing::warn!("requests still open after request_timeout; leaving without them"),
    }

    stop_feeds.send_replace(true);
    node.leave().await;
    // With NATS unreachable a flush waits for a reconnect that may never come; what was not
    // sent by now is lost either way, and the process must still exit.
    if !souk_nats::connected(&client) {
        tracing::warn!("NATS unreachable; exiting without a flush");
    } else if tokio::time::timeout(Duration::from_secs(5), client.flush()).await.is_err() {
        tracing::warn!("could not flush to NATS within 5 s; exiting anyway");
    }
    drop(client);
    stop_local(local_nats, &cfg).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Stops the node's own nats-server, if it runs one.
async fn stop_local(local_nats: Option<Supervised>, cfg: &Config) -> anyhow::Result<()> {
    if let Some(server) = local_nats {
        tokio::task::spawn_blocking(move || server.stop(Duration::from_secs(10))).await?;
        let _ = std::fs::remove_file(cfg.local_nats_file());
    }
    Ok(())
}

/// The configured payment provider.
fn payment_gateway(cfg: &Config) -> anyhow::Result<Arc<dyn souk_actors::payments::PaymentGateway>> {
    use souk_actors::payments::{Sandbox, Stripe, StripeSettings};
    match cfg.payments.as_str() {
        "sandbox" => Ok(Arc::new(Sandbox::default())),
        "stripe" => {
            let api_key = cfg.stripe_api_key.clone().context("payments = \"stripe\" needs stripe_api_key")?;
            let settings = StripeSettings {
                base_url: cfg.stripe_base_url.clone(),
                api_key,
                timeout: cfg.payment_timeout,
            };
            Ok(Arc::new(Stripe::new(settings).map_err(|e| anyhow::anyhow!("stripe client: {e}"))?))
        }
        other => anyhow::bail!("payments = {other:?}: the providers are sandbox and stripe"),
    }
}

/// Connects to NATS with the configured credentials.
pub async fn connect(cfg: &Config, urls: Vec<String>, name: String) -> anyhow::Result<souk_nats::Client> {
    Ok(souk_nats::connect(
        &ConnectSettings {
            urls,
            credentials: cfg.nats_credentials.clone(),
            user: cfg.nats_user.clone(),
            password: cfg.nats_password.clone(),
            token: cfg.nats_token.clone(),
            require_tls: cfg.nats_tls,
            name,
        },
        Duration::from_secs(30),
    )
    .await?)
}

/// The account service: signing keys, password hasher and account buckets.
pub async fn auth(cfg: &Config, jet: &souk_nats::Jet, bus: Bus) -> anyhow::Result<Auth> {
    let accounts = Accounts::new(jet);
    let keys = crate::keys::load(cfg, &accounts).await?;
    tracing::info!(kid = keys.signing_kid(), "token signing key loaded");
    let hasher = Hasher::new(cfg.hash_params()).context("argon2 parameters")?;
    Ok(Auth::new(cfg.auth_settings(), keys, hasher, accounts, bus))
}

/// Makes sure `email` has an admin account, creating it with `password` if needed.
pub async fn ensure_admin(auth: &Auth, email: &str, password: String) -> anyhow::Result<()> {
    let new = NewUser {
        email: Email::parse(email)?,
        name: Name::parse("Admin")?,
        phone: None,
        locale: None,
        password,
        roles: BTreeSet::from([Role::Admin]),
    };
    // The user's shard may still be settling right after start-up: retry a few times.
    let mut last = None;
    for _ in 0..10 {
        match auth.ensure_user(new.clone()).await {
            Ok(view) => {
                tracing::info!(user = %view.id, "admin account in place");
                return Ok(());
            }
            Err(souk_api::error::ApiError::Rejected(e))
                if e.code != souk_messages::ErrorCode::Unavailable =>
            {
                return Err(anyhow::anyhow!("{e}"));
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(anyhow::anyhow!(
        "cannot create the admin account: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Takes the data dir for this process alone. Two nodes on one data dir would share a node id
/// (and so each other's leases), and the second would take the first's nats-server for an
/// orphan and stop it; it must refuse to start instead. The lock is the kernel's, so it goes
/// with the process however that ends, `kill -9` included.
fn lock_data_dir(cfg: &Config) -> anyhow::Result<std::fs::File> {
    use std::io::{Seek as _, Write as _};
    let path = cfg.data_dir.join("souk.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "data dir {} is in use by another souk node (pid {}): give each node its own data_dir",
                cfg.data_dir.display(),
                holder.trim()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

fn node_id(cfg: &Config) -> anyhow::Result<NodeId> {
    if let Some(id) = &cfg.node_id {
        return NodeId::parse(id.clone()).context("node_id");
    }
    let path = cfg.data_dir.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return NodeId::parse(s.trim()).with_context(|| format!("corrupt {}", path.display()));
    }
    let id = NodeId::generate();
    std::fs::write(&path, id.as_str()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Provisions, retrying while a freshly started NATS cluster elects its JetStream leader.
async fn provision(client: &souk_nats::Client, cfg: &Config) -> anyhow::Result<souk_nats::Jet> {
    let settings = ProvisionSettings {
        replicas: cfg.nats_replicas,
        node_ttl: cfg.lease_ttl,
        lease_ttl: cfg.lease_ttl,
        session_ttl: cfg.refresh_ttl,
        log_max_age: cfg.log_retention,
        log_max_bytes: i64::try_from(cfg.log_max_bytes).unwrap_or(i64::MAX),
    };
    let wait = Duration::from_secs(60);
    let start = tokio::time::Instant::now();
    let mut told: Option<tokio::time::Instant> = None;
    loop {
        match souk_nats::provision(client.clone(), settings).await {
            Ok(jet) => return Ok(jet),
            Err(e) if start.elapsed() < wait => {
                // Every ten seconds, not every attempt: a server without JetStream answers at once.
                if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "JetStream not ready; retrying");
                    told = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "JetStream did not become ready within {wait:?}: is it enabled on the NATS servers (`jetstream {{}}` in their configuration, or -js)?"
                )));
            }
        }
    }
}

/// SIGTERM and SIGINT, listened for from the start of `run`: before that, either would end
/// the process at once, leaving its local nats-server running.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
