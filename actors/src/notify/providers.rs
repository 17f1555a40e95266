//! The services that carry notifications: SMTP (lettre) and SendGrid for email, Twilio for
//! SMS, signed HTTP posts for webhooks, and `log`, which only writes what it would send, for
//! development.

use futures::future::BoxFuture;
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use souk_messages::notify::Notification;
use std::time::Duration;

/// Why a provider did not take a notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// It may work later: the provider is down, slow or throttling.
    #[error("{0}")]
    Retryable(String),
    /// It can never work as it is (a refused address, bad credentials); retrying is pointless.
    #[error("{0}")]
    Permanent(String),
    /// The channel's circuit breaker is open: the provider was not called.
    #[error("circuit breaker open: the provider keeps failing")]
    BreakerOpen,
}

/// A service that delivers one kind of notification.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The provider's name, for logs and metrics.
    fn name(&self) -> &'static str;
    /// Which circuit breaker guards `n`'s destination: one per channel (`None`), or one per
    /// destination when destinations fail independently (webhook endpoints).
    fn breaker_key(&self, _n: &Notification) -> Option<String> {
        None
    }
    /// Delivers `n`; `Ok` carries the provider's reference for it.
    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>>;
}

/// Writes what it would send to the log. For development; never for a shop's customers.
/// The recipient and the text (a password-reset link among them) go to the log at debug
/// only: a shop that has not configured a provider yet must not put customers' addresses,
/// orders and reset tokens into its production log. `./dev up` shows them.
#[derive(Debug, Clone, Copy)]
pub struct LogProvider;

impl Provider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            tracing::info!(
                channel = %n.channel, topic = n.topic.as_str(), id = %n.id,
                "notification not sent: the channel's provider is `log`"
            );
            tracing::debug!(
                channel = %n.channel, to = %n.to, topic = n.topic.as_str(), subject = n.subject.as_deref(),
                text = %n.text, "notification (log provider: not sent)"
            );
            Ok("logged".to_owned())
        })
    }
}

/// How to reach the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain text (a relay on the same host or network only).
    None,
    /// Upgrade with STARTTLS (usually port 587).
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

/// SMTP settings.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// User name and password, if the server wants them.
    pub credentials: Option<(String, String)>,
    /// The sender, e.g. `Shop <orders@shop.example>`.
    pub from: String,
    /// How long one message may take.
    pub timeout: Duration,
}

/// Email over SMTP.
#[derive(Debug)]
pub struct SmtpProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpProvider {
    /// A client of the server in `s`. Connections are made when sending.
    pub fn new(s: &SmtpSettings) -> Result<Self, String> {
        let builder = match s.security {
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                .map_err(|e| format!("smtp host {}: {e}", s.host))?,
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
                .map_err(|e| format!("smtp host {}: {e}", s.host))?,
        };
        let mut builder = builder.port(s.port).timeout(Some(s.timeout));
        if let Some((user, password)) = &s.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let from = s.from.parse().map_err(|e| format!("email_from {:?}: {e}", s.from))?;
        Ok(Self { transport: builder.build(), from })
    }
}

impl Provider for SmtpProvider {
    fn name(&self) -> &'static str {
        "smtp"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let to: Mailbox =
                n.to.parse().map_err(|e| SendError::Permanent(format!("recipient {}: {e}", n.to)))?;
            let builder = lettre::Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(n.subject.clone().unwrap_or_default())
                .message_id(Some(format!("<{}@souk>", n.id)));
            let text = SinglePart::builder().header(ContentType::TEXT_PLAIN).body(n.text.clone());
            let message = match &n.html {
                Some(html) => builder.multipart(
                    MultiPart::alternative()
                        .singlepart(text)
                        .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone())),
                ),
                None => builder.singlepart(text),
            }
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
            match self.transport.send(message).await {
                Ok(reply) => Ok(reply.message().collect::<Vec<_>>().join(" ")),
                Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("smtp: {e}"))),
                Err(e) => Err(SendError::Retryable(format!("smtp: {e}"))),
            }
        })
    }
}

/// Maps an HTTP provider's answer: 2xx is sent; 429 and 5xx may pass; 401 and 403 refuse
/// Souk's `credentials` (settings), not the message, so they may pass once the shop fixes
/// them; other 4xx never will.
async fn http_outcome(
    provider: &str,
    credentials: &str,
    res: Result<reqwest::Response, reqwest::Error>,
) -> Result<String, SendError> {
    let res = res.map_err(|e| SendError::Retryable(format!("{provider}: {e}")))?;
    let status = res.status();
    let reference = res.headers().get("x-message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = res.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    if status.is_success() {
        let sid = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_owned));
        return Ok(reference.or(sid).unwrap_or_else(|| status.to_string()));
    }
    let detail = format!("{provider}: HTTP {status}: {body}");
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        // A rotated or mistyped key would otherwise dead-letter every message at once; retried,
        // they go out once it is fixed, and the breaker spares the provider meanwhile.
        tracing::error!(provider, %status, "the provider refused Souk's credentials: check {credentials}");
        return Err(SendError::Retryable(detail));
    }
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Retryable(detail))
    } else {
        Err(SendError::Permanent(detail))
    }
}

/// SendGrid settings.
#[derive(Debug, Clone)]
pub struct SendGridSettings {
    /// API key (`SG.…`).
    pub api_key: String,
    /// API base URL.
    pub base_url: String,
    /// The sender address.
    pub from: String,
    /// How long one request may take.
    pub timeout: Duration,
}

/// Email through SendGrid's v3 mail-send API.
#[derive(Debug)]
pub struct SendGridProvider {
    http: reqwest::Client,
    settings: SendGridSettings,
    from: Mailbox,
}

impl SendGridProvider {
    /// A client with `s`.
    pub fn new(s: SendGridSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder().timeout(s.timeout).build().map_err(|e| e.to_string())?;
        let from = s.from.parse().map_err(|e| format!("email_from {:?}: {e}", s.from))?;
        Ok(Self { http, settings: s, from })
    }
}

impl Provider for SendGridProvider {
    fn name(&self) -> &'static str {
        "sendgrid"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let mut content = vec![serde_json::json!({ "type": "text/plain", "value": n.text })];
            if let Some(html) = &n.html {
                content.push(serde_json::json!({ "type": "text/html", "value": html }));
            }
            let mut from = serde_json::json!({ "email": self.from.email.to_string() });
            if let Some(name) = &self.from.name {
                from["name"] = serde_json::json!(name);
            }
            let body = serde_json::json!({
                "personalizations": [{ "to": [{ "email": n.to }] }],
                "from": from,
                "subject": n.subject.clone().unwrap_or_default(),
                "content": content,
                "custom_args": { "souk_notification": n.id.as_str() },
            });
            let res = self
                .http
                .post(format!("{}/v3/mail/send", self.settings.base_url.trim_end_matches('/')))
                .bearer_auth(&self.settings.api_key)
                .json(&body)
                .send()
                .await;
            http_outcome("sendgrid", "sendgrid_api_key", res).await
        })
    }
}

/// Twilio settings.
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    /// Account SID (`AC…`).
    pub account_sid: String,
    /// Auth token.
    pub auth_token: String,
    /// The sending number, in international form.
    pub from: String,
    /// API base URL.
    pub base_url: String,
    /// How long one request may take.
    pub timeout: Duration,
}

/// SMS through Twilio's Messages API.
#[derive(Debug)]
pub struct TwilioProvider {
    http: reqwest::Client,
    settings: TwilioSettings,
}

impl TwilioProvider {
    /// A client with `s`.
    pub fn new(s: TwilioSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder().timeout(s.timeout).build().map_err(|e| e.to_string())?;
        Ok(Self { http, settings: s })
    }
}

impl Provider for TwilioProvider {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let s = &self.settings;
            let res = self
                .http
                .post(format!(
                    "{}/2010-04-01/Accounts/{}/Messages.json",
                    s.base_url.trim_end_matches('/'),
                    s.account_sid
                ))
                .basic_auth(&s.account_sid, Some(&s.auth_token))
                .form(&[("To", n.to.as_str()), ("From", s.from.as_str()), ("Body", n.text.as_str())])
                .send()
                .await;
            http_outcome("twilio", "twilio_account_sid and twilio_auth_token", res).await
        })
    }
}

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The endpoints, as last seen in their bucket.
    pub endpoints: souk_nats::notify::LiveEndpoints,
    /// The bucket itself, to turn off an endpoint whose receiver answers 410 Gone.
    pub registry: souk_nats::notify::Endpoints,
    /// Allow loopback and private addresses (tests, trusted networks).
    pub allow_private: bool,
    /// How long one delivery may take.
    pub timeout: Duration,
}

/// Posts events to registered endpoints, signed the Standard Webhooks way: `webhook-id` (the
/// notification id, the same on every retry), `webhook-timestamp` (Unix seconds) and
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` keyed with the
/// base64-decoded part of the endpoint's `whsec_` secret.
#[derive(Debug)]
pub struct WebhookProvider {
    settings: WebhookSettings,
}

impl WebhookProvider {
    /// A provider over `settings`.
    pub fn new(settings: WebhookSettings) -> Self {
        Self { settings }
    }
}

/// The Standard Webhooks signature of `body` sent as message `id` at `timestamp`.
pub fn webhook_signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(secret.strip_prefix("whsec_")?).ok()?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", engine.encode(tag.as_ref())))
}

impl Provider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn breaker_key(&self, n: &Notification) -> Option<String> {
        Some(n.to.clone())
    }

    fn send<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            let Some(endpoint) = self.settings.endpoints.get(&n.to) else {
                return Err(SendError::Permanent("the endpoint was removed".into()));
            };
            if !endpoint.enabled {
                return Err(SendError::Permanent("the endpoint is disabled".into()));
            }
            let target = souk_messages::notify::WebhookTarget::parse(&endpoint.url)
                .map_err(|e| SendError::Permanent(e.detail))?;
            let addr = souk_nats::notify::destination(&target, self.settings.allow_private)
                .await
                .map_err(SendError::Permanent)?;
            // The connection goes to the address just checked, not to a second lookup that a
            // hostile DNS server could answer differently.
            let http = reqwest::Client::builder()
                .timeout(self.settings.timeout)
                .resolve(&target.host, addr)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| SendError::Retryable(e.to_string()))?;
            let now = time::OffsetDateTime::now_utc();
            let timestamp = now.unix_timestamp();
            // During a rotation the old secret signs too: Standard Webhooks receivers accept a
            // delivery if any of the space-separated signatures verifies.
            let signature = endpoint
                .signing_secrets(now)
                .into_iter()
                .map(|secret| webhook_signature(secret, n.id.as_str(), timestamp, &n.text))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| SendError::Permanent("the endpoint's secret is malformed".into()))?
                .join(" ");
            let res = http
                .post(&endpoint.url)
                .header("content-type", "application/json")
                .header("user-agent", "Souk-Webhooks/1")
                .header("webhook-id", n.id.as_str())
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(n.text.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => Ok(format!("HTTP {}", r.status().as_u16())),
                // 410 Gone: the receiver says never again, so the endpoint is turned off for
                // every node: nothing more is planned for it, and what is already queued is
                // dead-lettered unsent, replayable once an admin turns it back on.
                Ok(r) if r.status().as_u16() == 410 => {
                    if let Ok(id) = souk_messages::notify::EndpointId::parse(&n.to) {
                        match self.settings.registry.disable(&id).await {
                            Ok(true) => {
                                tracing::warn!(endpoint = %n.to, "webhook receiver answered 410 Gone; endpoint disabled")
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(endpoint = %n.to, error = %e, "endpoint answered 410 Gone but could not be disabled")
                            }
                        }
                    }
                    Err(SendError::Permanent("HTTP 410 Gone; endpoint disabled".into()))
                }
                Ok(r) => Err(SendError::Retryable(format!("HTTP {}", r.status().as_u16()))),
                Err(e) => Err(SendError::Retryable(format!("webhook: {e}"))),
            }
        })
    }
}
