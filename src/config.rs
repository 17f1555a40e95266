//! Configuration: defaults, then an optional TOML file, then `SOUK_*` environment variables.

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};
use souk_messages::subject::ShardCounts;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a node writes its log on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// One readable line per record, for a developer's terminal.
    Text,
}

/// Every setting of a node. Field `x` is `x` in the TOML file and `SOUK_X` in the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the node keeps its id, its embedded database and its local NATS server's files.
    pub data_dir: PathBuf,
    /// This node's id; generated and kept in the data dir when not given.
    pub node_id: Option<String>,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// NATS server URL(s), comma-separated. Unset: start a local nats-server.
    pub nats_url: Option<String>,
    /// NATS `.creds` file.
    pub nats_credentials: Option<PathBuf>,
    /// NATS user (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<String>,
    /// NATS token.
    pub nats_token: Option<String>,
    /// Require TLS to NATS.
    pub nats_tls: bool,
    /// Replicas of the stream and buckets: 1 for one NATS server, 3 for a cluster.
    pub nats_replicas: usize,
    /// The local nats-server's fsync policy: `always`, or an interval such as `1s`.
    pub nats_sync: String,
    /// SurrealDB endpoint: `surrealkv://<path>`, `mem://` or `ws://host:port`.
    /// Unset: `surrealkv://<data_dir>/db`.
    pub db: Option<String>,
    /// SurrealDB namespace.
    pub db_namespace: String,
    /// SurrealDB database.
    pub db_database: String,
    /// SurrealDB root user, for a remote server.
    pub db_user: Option<String>,
    /// SurrealDB root password.
    pub db_password: Option<String>,
    /// Shards of stock items. Fixed for the life of a cluster.
    pub shards_stock: u32,
    /// Shards of user accounts. Fixed for the life of a cluster.
    pub shards_user: u32,
    /// Shards of products. Fixed for the life of a cluster.
    pub shards_product: u32,
    /// How long a shard lease (and a node's heartbeat) lasts without renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long the edge waits for an entity's answer, retrying while its shard moves.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a request's body may take to arrive in full, from the request's start.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Write an entity snapshot after this many commits.
    pub snapshot_every: u64,
    /// Forget entities idle this long (they reload on their next command).
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// Log filter, e.g. `info` or `souk=debug,info`.
    pub log: String,
    /// How `souk serve` writes its log on stdout.
    pub log_format: LogFormat,
    /// The least severe level forwarded to the central log store (`SOUK_LOGS`); `off`: none.
    pub log_forward: String,
    /// How long the central log store keeps a record.
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// The most bytes the central log stream holds; the oldest records go first.
    pub log_max_bytes: u64,
    /// Access-token issuer (`iss`).
    pub auth_issuer: String,
    /// Access-token audience (`aud`).
    pub auth_audience: String,
    /// Access-token lifetime.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Refresh-token lifetime (renewed by each refresh).
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Password-reset token lifetime.
    #[serde(with = "humantime_serde")]
    pub reset_ttl: Duration,
    /// Token signing key files (Ed25519 PKCS#8 PEM), comma-separated, oldest first: the last
    /// signs, all verify. Unset (and no `auth_keys_pem`): the cluster shares a generated key.
    pub auth_keys: Option<String>,
    /// Token signing keys as PEM text, oldest first; added after `auth_keys`.
    pub auth_keys_pem: Option<String>,
    /// argon2id memory cost, KiB.
    pub argon2_memory_kib: u32,
    /// argon2id passes.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// An admin account to ensure at start-up (with `admin_password`).
    pub admin_email: Option<String>,
    /// The password of `admin_email`, used only when the account is created.
    pub admin_password: Option<String>,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
    /// Web origins whose browser pages may call the API (comma-separated; `*` for any).
    pub cors_origins: Option<String>,
    /// Sustained requests per second one client address may make of this node; 0: no limit.
    pub rate_limit_per_second: f64,
    /// Requests one client address may send at once after being idle.
    pub rate_limit_burst: f64,
    /// How long a stock reservation holds, unless committed or released, when the request
    /// does not say.
    #[serde(with = "humantime_serde")]
    pub reservation_ttl: Duration,
    /// Shards of carts. Fixed for the life of a cluster.
    pub shards_cart: u32,
    /// Shards of orders. Fixed for the life of a cluster.
    pub shards_order: u32,
    /// The payment provider: `sandbox` (built in; test cards only) or `stripe`.
    pub payments: String,
    /// Stripe's secret API key (`sk_…`), for `payments = "stripe"`.
    pub stripe_api_key: Option<String>,
    /// Stripe's API base URL.
    pub stripe_base_url: String,
    /// The signing secret of the payment provider's webhooks (`whsec_…`).
    pub payments_webhook_secret: Option<String>,
    /// How long the checkout waits for one payment step before giving up on it.
    #[serde(with = "humantime_serde")]
    pub payment_timeout: Duration,
    /// The most units of one SKU in a cart.
    pub cart_max_quantity: u32,
    /// How long a cart may sit unchanged before its lines lapse.
    #[serde(with = "humantime_serde")]
    pub cart_idle_ttl: Duration,
    /// The shop's name, as its emails and text messages sign.
    pub shop_name: String,
    /// The storefront's address, for links in messages (password reset, order pages).
    pub shop_url: String,
    /// The language of the shop's default templates (the built-in ones are English).
    pub shop_locale: String,
    /// A folder of the shop's own message templates, each replacing the built-in one of the
    /// same name (`email/order_confirmed.html`, …).
    pub templates_dir: Option<PathBuf>,
    /// Email provider: `log` (development: write to the log), `smtp` or `sendgrid`.
    pub email_provider: String,
    /// The sender of emails, e.g. `Shop <orders@shop.example>`.
    pub email_from: String,
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP server port.
    pub smtp_port: u16,
    /// SMTP transport security: `starttls`, `tls` or `none`.
    pub smtp_security: souk_actors::notify::providers::SmtpSecurity,
    /// SMTP user name.
    pub smtp_username: Option<String>,
    /// SMTP password.
    pub smtp_password: Option<String>,
    /// SendGrid API key.
    pub sendgrid_api_key: Option<String>,
    /// SendGrid API base URL.
    pub sendgrid_base_url: String,
    /// SMS provider: `log` or `twilio`.
    pub sms_provider: String,
    /// Twilio account SID.
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token.
    pub twilio_auth_token: Option<String>,
    /// The number text messages come from, in international form.
    #[serde(default, deserialize_with = "text")]
    pub twilio_from: Option<String>,
    /// Twilio API base URL.
    pub twilio_base_url: String,
    /// How long one provider call may take.
    #[serde(with = "humantime_serde")]
    pub notify_timeout: Duration,
    /// Emails per second at most, per node; 0: no limit.
    pub email_rate_per_second: f64,
    /// Text messages per second at most, per node; 0: no limit.
    pub sms_rate_per_second: f64,
    /// Consecutive provider failures that open a channel's circuit breaker.
    pub notify_breaker_failures: u32,
    /// How long an open breaker waits before one trial send.
    #[serde(with = "humantime_serde")]
    pub notify_breaker_cooldown: Duration,
    /// Attempts before a notification is dead-lettered.
    pub notify_max_attempts: u32,
    /// The pause after a notification's first failure; doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub notify_retry_base: Duration,
    /// The longest pause between attempts.
    #[serde(with = "humantime_serde")]
    pub notify_retry_max: Duration,
    /// Events older than this are not announced (a cluster that gains notifications does
    /// not mail its past).
    #[serde(with = "humantime_serde")]
    pub notify_max_event_age: Duration,
    /// Allow webhook endpoints on loopback and private addresses (never on the internet:
    /// it lets admins make the node call internal services).
    pub webhooks_allow_private: bool,
    /// How long one webhook delivery may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Webhook deliveries per second at most, per node; 0: no limit.
    pub webhook_rate_per_second: f64,
    /// Attempts before a webhook delivery is dead-lettered (the default spans about a day).
    pub webhook_max_attempts: u32,
    /// The longest pause between webhook attempts.
    #[serde(with = "humantime_serde")]
    pub webhook_retry_max: Duration,
}

/// A setting that is text even when it looks like a number (`+15550001111` in the
/// environment reads as one).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        U(u64),
        I(i64),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::S(s) => s,
        Text::U(n) => format!("+{n}"),
        Text::I(n) => n.to_string(),
    }))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            node_id: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            nats_url: None,
            nats_credentials: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_tls: false,
            nats_replicas: 1,
            nats_sync: "always".to_owned(),
            db: None,
            db_namespace: "souk".to_owned(),
            db_database: "souk".to_owned(),
            db_user: None,
            db_password: None,
            shards_stock: 64,
            lease_ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            snapshot_every: 64,
            idle_after: Duration::from_secs(300),
            log: "info".to_owned(),
            log_format: LogFormat::Json,
            log_forward: "info".to_owned(),
            log_retention: Duration::from_secs(7 * 24 * 3600),
            log_max_bytes: 1 << 30,
            shards_user: 64,
            shards_product: 64,
            auth_issuer: "souk".to_owned(),
            auth_audience: "souk".to_owned(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            reset_ttl: Duration::from_secs(30 * 60),
            auth_keys: None,
            auth_keys_pem: None,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            admin_email: None,
            admin_password: None,
            trust_forwarded_for: false,
            cors_origins: None,
            rate_limit_per_second: 100.0,
            rate_limit_burst: 200.0,
            reservation_ttl: Duration::from_secs(15 * 60),
            shards_cart: 64,
            shards_order: 64,
            payments: "sandbox".to_owned(),
            stripe_api_key: None,
            stripe_base_url: "https://api.stripe.com".to_owned(),
            payments_webhook_secret: None,
            payment_timeout: Duration::from_secs(10),
            cart_max_quantity: 99,
            cart_idle_ttl: Duration::from_secs(14 * 24 * 3600),
            shop_name: "Souk".to_owned(),
            shop_url: "http://localhost:8080".to_owned(),
            shop_locale: "en".to_owned(),
            templates_dir: None,
            email_provider: "log".to_owned(),
            email_from: "Souk <orders@localhost>".to_owned(),
            smtp_host: "localhost".to_owned(),
            smtp_port: 587,
            smtp_security: souk_actors::notify::providers::SmtpSecurity::Starttls,
            smtp_username: None,
            smtp_password: None,
            sendgrid_api_key: None,
            sendgrid_base_url: "https://api.sendgrid.com".to_owned(),
            sms_provider: "log".to_owned(),
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_from: None,
            twilio_base_url: "https://api.twilio.com".to_owned(),
            notify_timeout: Duration::from_secs(10),
            email_rate_per_second: 20.0,
            sms_rate_per_second: 5.0,
            notify_breaker_failures: 5,
            notify_breaker_cooldown: Duration::from_secs(30),
            notify_max_attempts: 8,
            notify_retry_base: Duration::from_secs(2),
            notify_retry_max: Duration::from_secs(600),
            notify_max_event_age: Duration::from_secs(24 * 3600),
            webhooks_allow_private: false,
            webhook_timeout: Duration::from_secs(10),
            webhook_rate_per_second: 50.0,
            webhook_max_attempts: 40,
            webhook_retry_max: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then `SOUK_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Self::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // SOUK_CONFIG names the file itself and SOUK_LOAD_* are `souk load`'s credentials
        // (all read by the command line): they are not node settings.
        fig.merge(Env::prefixed("SOUK_").ignore(&["config", "load_email", "load_password"]))
            .extract()
            .map_err(Box::new)
    }

    /// The SurrealDB endpoint, defaulting to a file database in the data dir.
    pub fn db_endpoint(&self) -> String {
        self.db.clone().unwrap_or_else(|| format!("surrealkv://{}", self.data_dir.join("db").display()))
    }

    /// The NATS URLs, if any are configured.
    pub fn nats_urls(&self) -> Vec<String> {
        self.nats_url
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The shard counts.
    pub fn shard_counts(&self) -> Result<ShardCounts, String> {
        if [self.shards_stock, self.shards_user, self.shards_product, self.shards_cart, self.shards_order]
            .contains(&0)
        {
            return Err("every shards_<kind> setting must be at least 1".into());
        }
        Ok(ShardCounts {
            stock: self.shards_stock,
            user: self.shards_user,
            product: self.shards_product,
            cart: self.shards_cart,
            order: self.shards_order,
        })
    }

    /// The NATS URLs to use: the configured ones, or the local server a running `souk serve`
    /// recorded in the data dir.
    pub fn nats_urls_or_local(&self) -> Vec<String> {
        let urls = self.nats_urls();
        if !urls.is_empty() {
            return urls;
        }
        std::fs::read_to_string(self.local_nats_file()).map(|s| vec![s.trim().to_owned()]).unwrap_or_default()
    }

    /// Where `souk serve` records its local nats-server's URL for other `souk` commands.
    pub fn local_nats_file(&self) -> PathBuf {
        self.data_dir.join("nats-url")
    }

    /// Account and token settings for the edge.
    pub fn auth_settings(&self) -> souk_api::auth::AuthSettings {
        souk_api::auth::AuthSettings {
            tokens: souk_api::auth::tokens::TokenSettings {
                issuer: self.auth_issuer.clone(),
                audience: self.auth_audience.clone(),
                access_ttl: self.access_ttl,
            },
            refresh_ttl: self.refresh_ttl,
            reset_ttl: self.reset_ttl,
            trust_forwarded_for: self.trust_forwarded_for,
        }
    }

    /// The origins allowed to call the API from a browser: each `scheme://host[:port]`, or
    /// `*`.
    pub fn cors_origins(&self) -> anyhow::Result<Vec<String>> {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        for origin in &origins {
            let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            let valid = origin == "*"
                || host.is_some_and(|h| {
                    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                });
            anyhow::ensure!(
                valid,
                "cors_origins: {origin:?} is not an origin: write it as a browser sends it, scheme://host[:port] without a path (or * for any)"
            );
        }
        Ok(origins)
    }

    /// The per-client request rate limit.
    pub fn rate_settings(&self) -> souk_api::rate_limit::RateSettings {
        souk_api::rate_limit::RateSettings {
            per_second: self.rate_limit_per_second,
            burst: self.rate_limit_burst.max(1.0),
        }
    }

    /// argon2id parameters.
    pub fn hash_params(&self) -> souk_api::auth::password::HashParams {
        souk_api::auth::password::HashParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// How notifications are sent: providers, pacing, breakers, retries.
    pub fn notify_settings(&self) -> anyhow::Result<souk_actors::notify::NotifySettings> {
        use anyhow::Context as _;
        use souk_actors::notify::providers::{
            LogProvider, SendGridProvider, SendGridSettings, SmtpProvider, SmtpSettings, TwilioProvider,
            TwilioSettings,
        };
        use souk_actors::notify::{ChannelLimits, Provider, RetryPolicy, Shop};
        use std::sync::Arc;
        let email: Arc<dyn Provider> = match self.email_provider.as_str() {
            "log" => Arc::new(LogProvider),
            "smtp" => Arc::new(
                SmtpProvider::new(&SmtpSettings {
                    host: self.smtp_host.clone(),
                    port: self.smtp_port,
                    security: self.smtp_security,
                    credentials: self.smtp_username.clone().zip(self.smtp_password.clone()),
                    from: self.email_from.clone(),
                    timeout: self.notify_timeout,
                })
                .map_err(anyhow::Error::msg)?,
            ),
            "sendgrid" => Arc::new(
                SendGridProvider::new(SendGridSettings {
                    api_key: self
                        .sendgrid_api_key
                        .clone()
                        .context("email_provider = \"sendgrid\" needs sendgrid_api_key")?,
                    base_url: self.sendgrid_base_url.clone(),
                    from: self.email_from.clone(),
                    timeout: self.notify_timeout,
                })
                .map_err(anyhow::Error::msg)?,
            ),
            other => anyhow::bail!("email_provider = {other:?}: the providers are log, smtp and sendgrid"),
        };
        let sms: Arc<dyn Provider> = match self.sms_provider.as_str() {
            "log" => Arc::new(LogProvider),
            "twilio" => {
                let need = |v: &Option<String>, name: &str| {
                    v.clone().with_context(|| format!("sms_provider = \"twilio\" needs {name}"))
                };
                Arc::new(
                    TwilioProvider::new(TwilioSettings {
                        account_sid: need(&self.twilio_account_sid, "twilio_account_sid")?,
                        auth_token: need(&self.twilio_auth_token, "twilio_auth_token")?,
                        from: need(&self.twilio_from, "twilio_from")?,
                        base_url: self.twilio_base_url.clone(),
                        timeout: self.notify_timeout,
                    })
                    .map_err(anyhow::Error::msg)?,
                )
            }
            other => anyhow::bail!("sms_provider = {other:?}: the providers are log and twilio"),
        };
        let limits = |per_second: f64| ChannelLimits {
            per_second: per_second.max(0.0),
            breaker_failures: self.notify_breaker_failures.max(1),
            breaker_cooldown: self.notify_breaker_cooldown,
        };
        Ok(souk_actors::notify::NotifySettings {
            shop: Shop {
                name: self.shop_name.clone(),
                url: self.shop_url.trim_end_matches('/').to_owned(),
                locale: souk_messages::user::Locale::parse(&self.shop_locale)
                    .map_err(|e| anyhow::anyhow!("shop_locale = {:?}: {}", self.shop_locale, e.detail))?,
            },
            templates: self.templates_dir.clone(),
            email,
            sms,
            email_limits: limits(self.email_rate_per_second),
            sms_limits: limits(self.sms_rate_per_second),
            retry: RetryPolicy {
                max_attempts: self.notify_max_attempts.max(1),
                base: self.notify_retry_base,
                max: self.notify_retry_max.max(self.notify_retry_base),
                // A send may take the provider's whole timeout; the claim outlasts it.
                ack_wait: (self.notify_timeout * 3).max(Duration::from_secs(5)),
            },
            webhooks: souk_actors::notify::WebhookChannel {
                limits: limits(self.webhook_rate_per_second),
                retry: RetryPolicy {
                    max_attempts: self.webhook_max_attempts.max(1),
                    base: self.notify_retry_base,
                    max: self.webhook_retry_max.max(self.notify_retry_base),
                    ack_wait: (self.webhook_timeout * 3).max(Duration::from_secs(5)),
                },
                allow_private: self.webhooks_allow_private,
                timeout: self.webhook_timeout,
            },
            max_event_age: self.notify_max_event_age,
        })
    }

    /// The local nats-server's sync policy.
    pub fn sync_policy(&self) -> Result<souk_nats::server::SyncPolicy, String> {
        if self.nats_sync.eq_ignore_ascii_case("always") {
            return Ok(souk_nats::server::SyncPolicy::Always);
        }
        humantime_serde::re::humantime::parse_duration(&self.nats_sync)
            .map(souk_nats::server::SyncPolicy::Every)
            .map_err(|e| format!("nats_sync must be `always` or a duration like `1s`: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_working_single_node() {
        let c = Config::default();
        assert!(c.nats_urls().is_empty());
        assert!(c.db_endpoint().starts_with("surrealkv://"));
        assert_eq!(c.sync_policy(), Ok(souk_nats::server::SyncPolicy::Always));
    }

    #[test]
    fn a_toml_file_sets_what_it_names_and_leaves_the_rest() {
        let path = std::env::temp_dir().join(format!("souk-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, "http_addr = \"0.0.0.0:9000\"\nlease_ttl = \"3s\"\nshards_stock = 8\n")
            .expect("write");
        let c = Config::load(Some(&path)).expect("load");
        let _ = std::fs::remove_file(&path);
        assert_eq!(c.http_addr.port(), 9000);
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.shards_stock, 8);
        assert_eq!(c.snapshot_every, Config::default().snapshot_every);
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error() {
        let path = std::env::temp_dir().join(format!("souk-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, "lease_tll = \"3s\"\n").expect("write");
        let loaded = Config::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        assert!(loaded.is_err(), "a misspelt key must not be silently ignored");
    }

    #[test]
    fn the_shop_s_language_is_a_language_tag() {
        let shop = |tag: &str| Config { shop_locale: tag.into(), ..Config::default() }.notify_settings();
        assert_eq!(shop("DE").expect("settings").shop.locale.as_str(), "de");
        let refused = shop("german").expect_err("not a tag").to_string();
        assert!(refused.contains("shop_locale"), "{refused}");
    }

    #[test]
    fn urls_split_on_commas() {
        let c = Config { nats_url: Some("nats://a:1, nats://b:2".into()), ..Config::default() };
        assert_eq!(c.nats_urls(), vec!["nats://a:1", "nats://b:2"]);
        let cors =
            |list: &str| Config { cors_origins: Some(list.into()), ..Config::default() }.cors_origins();
        assert_eq!(
            cors("https://shop.example, http://localhost:3000").expect("origins"),
            vec!["https://shop.example", "http://localhost:3000"]
        );
        assert_eq!(cors("*").expect("any"), vec!["*"]);
        assert!(Config::default().cors_origins().expect("none").is_empty());
        for bad in
            ["shop.example", "https://shop.example/", "https://shop.example/path", "ftp://shop.example"]
        {
            assert!(cors(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sync_accepts_intervals_and_rejects_nonsense() {
        let c = Config { nats_sync: "2s".into(), ..Config::default() };
        assert_eq!(c.sync_policy(), Ok(souk_nats::server::SyncPolicy::Every(Duration::from_secs(2))));
        let c = Config { nats_sync: "sometimes".into(), ..Config::default() };
        assert!(c.sync_policy().is_err());
    }
}
