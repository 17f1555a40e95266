//! Where account data that must never appear in an event lives: email claims, password
//! hashes, refresh-token families, login-failure counters and the token signing keys. Each
//! is a KV bucket, so every node sees the same data and writes are revision-checked.

use crate::kv::JsonKv;
use crate::streams::Jet;
use serde::{Deserialize, Serialize};
use souk_messages::UserId;
use souk_messages::user::Email;
use time::OffsetDateTime;

/// Who owns an email address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailClaim {
    /// The owning user.
    pub user: UserId,
    /// When the claim was made; a claim whose user never got registered is stale after a while.
    #[serde(with = "time::serde::rfc3339")]
    pub claimed_at: OffsetDateTime,
}

/// A user's password, as an argon2id PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// `$argon2id$v=19$m=…`.
    pub password_hash: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(…)")
    }
}

/// A refresh-token family: the chain of tokens issued from one login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user.
    pub user: UserId,
    /// The user's session epoch when the family was last confirmed; an older epoch is revoked.
    pub epoch: u64,
    /// SHA-256 (hex) of the one refresh token that may be presented next.
    pub current: String,
    /// Hashes of tokens already spent: presenting one of them revokes the family.
    pub spent: Vec<String>,
    /// When the current token expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Revoked by logout, reuse detection or a password change.
    pub revoked: bool,
}

/// How many spent token hashes a family remembers.
pub const SPENT_KEPT: usize = 32;

/// Recent login failures of one account or one client address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Failures in a row.
    pub count: u32,
    /// No attempt is checked before this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub blocked_until: Option<OffsetDateTime>,
}

/// The token signing keys every node shares when none are configured.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedKeys {
    /// PKCS#8 PEM private keys, oldest first.
    pub pems: Vec<String>,
}

impl std::fmt::Debug for SharedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedKeys({} keys)", self.pems.len())
    }
}

/// The account buckets.
#[derive(Debug, Clone)]
pub struct Accounts {
    /// Email claims, by [`email_key`].
    pub emails: JsonKv<EmailClaim>,
    /// Password hashes, by user id.
    pub credentials: JsonKv<Credential>,
    /// Refresh-token families, by family id.
    pub sessions: JsonKv<Session>,
    /// Login failures, by `acct.<hex>` or `ip.<hex>`.
    pub failures: JsonKv<Failures>,
    /// Shared signing keys, under [`SHARED_KEYS`].
    pub keys: JsonKv<SharedKeys>,
}

/// The key of the shared signing keys in the cluster bucket.
pub const SHARED_KEYS: &str = "auth.signing_keys";

impl Accounts {
    /// The account buckets of a provisioned JetStream.
    pub fn new(jet: &Jet) -> Self {
        Self {
            emails: JsonKv::new(jet.emails.clone()),
            credentials: JsonKv::new(jet.credentials.clone()),
            sessions: JsonKv::new(jet.sessions.clone()),
            failures: JsonKv::new(jet.throttle.clone()),
            keys: JsonKv::new(jet.cluster.clone()),
        }
    }
}

/// The KV key of an email address: the hex of its unique form, so any address is a valid key.
pub fn email_key(email: &Email) -> String {
    hex(email.unique_key().as_bytes())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
