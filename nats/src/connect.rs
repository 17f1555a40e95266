//! Connection settings and the connect call.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct ConnectSettings {
    /// One or more server URLs; the client fails over between them.
    pub urls: Vec<String>,
    /// A `.creds` file (JWT + NKey seed).
    pub credentials: Option<PathBuf>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<String>,
    /// A bearer token.
    pub token: Option<String>,
    /// Refuse to connect without TLS.
    pub require_tls: bool,
    /// The name this client shows in the server's monitoring.
    pub name: String,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No URL was given.
    #[error("no NATS URL configured")]
    NoUrl,
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials {0}: {1}")]
    Credentials(PathBuf, #[source] std::io::Error),
    /// The options were rejected (for example a malformed URL).
    #[error("cannot connect to NATS at {0}: {1}")]
    Connect(String, #[source] async_nats::ConnectError),
    /// No server answered in time.
    #[error("no NATS server at {0} answered within {1:?}")]
    NotReached(String, Duration),
}

/// Connects, waiting up to `initial_wait` for the first connection (a node may start before
/// its NATS servers), and reconnecting forever afterwards.
pub async fn connect(
    s: &ConnectSettings,
    initial_wait: Duration,
) -> Result<async_nats::Client, ConnectError> {
    if s.urls.is_empty() {
        return Err(ConnectError::NoUrl);
    }
    let mut opts = async_nats::ConnectOptions::new()
        .name(&s.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .require_tls(s.require_tls)
        .connection_timeout(Duration::from_secs(2));
    if let Some(path) = &s.credentials {
        opts = opts.credentials_file(path).await.map_err(|e| ConnectError::Credentials(path.clone(), e))?;
    }
    if let (Some(u), Some(p)) = (&s.user, &s.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &s.token {
        opts = opts.token(t.clone());
    }
    let joined = s.urls.join(",");
    let addrs = s
        .urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| ConnectError::Connect(u.clone(), e.into())))
        .collect::<Result<Vec<_>, _>>()?;
    let client =
        opts.connect(addrs.as_slice()).await.map_err(|e| ConnectError::Connect(joined.clone(), e))?;
    // With retry_on_initial_connect the call returns at once; wait for the first connection.
    let start = tokio::time::Instant::now();
    let mut told = false;
    while !connected(&client) {
        let waited = start.elapsed();
        if waited >= initial_wait {
            return Err(ConnectError::NotReached(joined, initial_wait));
        }
        // The client's own reports of each failed attempt say neither where nor for how long.
        if !told && waited >= Duration::from_secs(2) {
            tracing::warn!(urls = %joined, wait = ?initial_wait, "NATS does not answer yet; waiting for it");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(client)
}

/// Whether `client` is connected to a server now. While it is not, requests wait for a
/// reconnect until their timeout, so callers that can do without one skip it.
pub fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
