//! Access tokens (EdDSA JWTs) and opaque random tokens (refresh and reset tokens).

use super::keys::KeySet;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use souk_messages::UserId;
use souk_messages::user::Role;
use std::collections::BTreeSet;
use time::OffsetDateTime;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The refresh-token family (session) the token was issued from.
    pub sid: String,
    /// The user's roles when the token was issued.
    pub roles: BTreeSet<Role>,
    /// The user's session epoch when the token was issued: a password change since makes it
    /// stale. Absent from tokens issued before it existed (read as 0).
    #[serde(default)]
    pub sep: u64,
}

/// Why an access token was refused. Deliberately coarse: the client learns only that it
/// must log in again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, unsigned, wrongly signed, unknown key, wrong issuer or audience.
    #[error("invalid access token")]
    Invalid,
    /// Past its expiry.
    #[error("the access token has expired")]
    Expired,
    /// Its user was disabled, changed password or lost a role since it was issued.
    #[error("the access token was revoked; log in again")]
    Revoked,
}

/// Who issues and accepts access tokens.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of issued tokens, required of accepted ones.
    pub issuer: String,
    /// `aud` of issued tokens, required of accepted ones.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_ttl: std::time::Duration,
}

/// Signs an access token for `user` in session `sid`.
pub fn issue(
    keys: &KeySet,
    s: &TokenSettings,
    user: &UserId,
    sid: &str,
    roles: &BTreeSet<Role>,
    session_epoch: u64,
    now: OffsetDateTime,
) -> Result<String, jsonwebtoken::errors::Error> {
    let iat = now.unix_timestamp();
    let claims = Claims {
        iss: s.issuer.clone(),
        aud: s.audience.clone(),
        sub: user.to_string(),
        iat,
        nbf: iat,
        exp: iat + i64::try_from(s.access_ttl.as_secs()).unwrap_or(i64::MAX / 2),
        jti: random_token(16),
        sid: sid.to_owned(),
        roles: roles.clone(),
        sep: session_epoch,
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(keys.signing_kid().to_owned());
    jsonwebtoken::encode(&header, &claims, keys.signing_key())
}

/// Checks an access token: EdDSA only, a known `kid`, signature, issuer, audience, expiry.
pub fn verify(keys: &KeySet, s: &TokenSettings, token: &str) -> Result<Claims, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Invalid);
    }
    let key = header.kid.as_deref().and_then(|kid| keys.verifying_key(kid)).ok_or(TokenError::Invalid)?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[&s.issuer]);
    v.set_audience(&[&s.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    v.validate_nbf = true;
    v.leeway = 5;
    jsonwebtoken::decode::<Claims>(token, key, &v).map(|d| d.claims).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        _ => TokenError::Invalid,
    })
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // aws-lc's generator only fails if the OS has no entropy source, which nothing survives.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        panic!("the operating system has no source of randomness");
    }
    B64.encode(bytes)
}

/// SHA-256 of `token`, hex: how refresh tokens are stored.
pub fn digest(token: &str) -> String {
    souk_nats::accounts::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

/// Compares two strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    souk_messages::user::Secret(a.to_owned()).matches(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::generate_pem;
    use std::time::Duration;

    fn setup() -> (KeySet, TokenSettings) {
        let keys = KeySet::from_pems(&[generate_pem().expect("pem")]).expect("keys");
        let s = TokenSettings {
            issuer: "souk".into(),
            audience: "souk-api".into(),
            access_ttl: Duration::from_secs(900),
        };
        (keys, s)
    }

    fn token(keys: &KeySet, s: &TokenSettings, now: OffsetDateTime) -> String {
        issue(keys, s, &UserId::generate(), "sid-1", &BTreeSet::from([Role::Staff]), 0, now).expect("issue")
    }

    #[test]
    fn a_fresh_token_verifies_with_its_claims() {
        let (keys, s) = setup();
        let t = token(&keys, &s, OffsetDateTime::now_utc());
        let claims = verify(&keys, &s, &t).expect("valid");
        assert_eq!(claims.sid, "sid-1");
        assert_eq!(claims.roles, BTreeSet::from([Role::Staff]));
        let header = jsonwebtoken::decode_header(&t).expect("header");
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid()));
    }

    #[test]
    fn expired_tampered_foreign_and_misaddressed_tokens_are_refused() {
        let (keys, s) = setup();
        let old = token(&keys, &s, OffsetDateTime::now_utc() - time::Duration::hours(1));
        assert_eq!(verify(&keys, &s, &old), Err(TokenError::Expired));

        let t = token(&keys, &s, OffsetDateTime::now_utc());
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(&parts[1]).expect("b64")).expect("json");
        claims["roles"] = serde_json::json!(["admin"]);
        parts[1] = B64.encode(serde_json::to_vec(&claims).expect("json"));
        assert_eq!(verify(&keys, &s, &parts.join(".")), Err(TokenError::Invalid), "tampered");

        let (other, _) = setup();
        assert_eq!(verify(&other, &s, &t), Err(TokenError::Invalid), "unknown kid");

        let elsewhere = TokenSettings { audience: "someone-else".into(), ..s.clone() };
        assert_eq!(verify(&keys, &elsewhere, &t), Err(TokenError::Invalid), "wrong audience");
        let other_issuer = TokenSettings { issuer: "evil".into(), ..s.clone() };
        assert_eq!(verify(&keys, &other_issuer, &t), Err(TokenError::Invalid), "wrong issuer");

        let none_header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert_eq!(verify(&keys, &s, &unsigned), Err(TokenError::Invalid), "alg none");
        assert_eq!(verify(&keys, &s, "garbage"), Err(TokenError::Invalid));
    }

    #[test]
    fn random_tokens_and_digests() {
        let a = random_token(32);
        assert_eq!(a.len(), 43, "256 bits in base64url");
        assert_ne!(a, random_token(32));
        assert_eq!(digest("abc").len(), 64);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
