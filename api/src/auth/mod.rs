//! Accounts and sessions: registration, login, refresh-token rotation, logout, password change
//! and reset. Each flow is a short sequence of steps over the user entity (through the bus)
//! and the account buckets (email claims, password hashes, token families); handlers call
//! these and stay thin.

pub mod access;
pub mod keys;
pub mod password;
pub mod revocations;
pub mod throttle;
pub mod tokens;

use crate::error::ApiError;
use keys::KeySet;
use password::Hasher;
use serde::Serialize;
use souk_messages::subject::EntityKind;
use souk_messages::user::{
    Email, Locale, Name, Phone, Role, Secret, UserCommand, UserRequest, UserState, UserView, check_password,
};
use souk_messages::{ErrorCode, ReplyError, UserId};
use souk_nats::accounts::{Accounts, Credential, EmailClaim, SPENT_KEPT, Session, email_key};
use souk_nats::{Bus, EventStore};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use throttle::{Subject, Throttle};
use time::OffsetDateTime;
use tokens::{TokenSettings, digest, random_token, same};

/// A claim older than this whose user never got registered (its node died mid-way) may be
/// taken over by a new registration.
const STALE_CLAIM: Duration = Duration::from_secs(60);

/// How accounts and sessions behave.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Access-token issuer, audience and lifetime.
    pub tokens: TokenSettings,
    /// Lifetime of a refresh token.
    pub refresh_ttl: Duration,
    /// Lifetime of a password-reset token.
    pub reset_ttl: Duration,
    /// Use the last `X-Forwarded-For` address as the client address (behind a trusted proxy).
    pub trust_forwarded_for: bool,
}

/// A new account's details, validated.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Email.
    pub email: Email,
    /// Display name.
    pub name: Name,
    /// Phone.
    pub phone: Option<Phone>,
    /// The language of their messages.
    pub locale: Option<Locale>,
    /// Password, checked against the policy by [`Auth::register`].
    pub password: String,
    /// Initial roles.
    pub roles: BTreeSet<Role>,
}

/// An access token and the refresh token that renews it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// The access token (a JWT): send it as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The refresh token: single use, exchanged at `/v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// The account service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

/// How many verified access tokens a node remembers.
const VERIFIED_KEPT: usize = 50_000;

#[derive(Debug)]
struct Inner {
    settings: AuthSettings,
    keys: KeySet,
    /// Access tokens already verified, by digest, until they expire: a signature check costs
    /// far more than the rest of a typical request's work at the edge.
    verified: std::sync::Mutex<std::collections::HashMap<String, tokens::Claims>>,
    /// Recent account changes that revoke tokens before they expire.
    revocations: revocations::Revocations,
    hasher: Hasher,
    accounts: Accounts,
    throttle: Throttle,
    bus: Bus,
}

fn invalid_credentials() -> ApiError {
    ApiError::invalid(ErrorCode::InvalidCredentials, "the email address or password is wrong")
}

fn invalid_token() -> ApiError {
    ApiError::invalid(ErrorCode::InvalidToken, "the token is invalid, expired or revoked; log in again")
}

impl Auth {
    /// The service over its parts.
    pub fn new(settings: AuthSettings, keys: KeySet, hasher: Hasher, accounts: Accounts, bus: Bus) -> Self {
        let throttle = Throttle::new(accounts.failures.clone());
        let verified = std::sync::Mutex::new(std::collections::HashMap::new());
        let revocations = revocations::Revocations::default();
        Self {
            inner: Arc::new(Inner { settings, keys, verified, revocations, hasher, accounts, throttle, bus }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.inner.settings
    }

    /// The keys.
    pub fn keys(&self) -> &KeySet {
        &self.inner.keys
    }

    /// Follows the account changes that revoke access tokens early, until `stop`; `readiness`
    /// learns when they have been read up to the present.
    pub fn follow_revocations(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        readiness: souk_nats::health::Readiness,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) {
        self.inner.revocations.follow(stream, self.inner.settings.tokens.access_ttl, readiness, stop);
    }

    /// Checks an access token (see [`tokens::verify`]), remembering good ones until expiry,
    /// and refuses one its user's later account changes revoked.
    pub fn verify_access(&self, token: &str) -> Result<tokens::Claims, tokens::TokenError> {
        let claims = self.verify_signed(token)?;
        if self.inner.revocations.refuses(&claims) {
            return Err(tokens::TokenError::Revoked);
        }
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<tokens::Claims, tokens::TokenError> {
        let key = digest(token);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let lock = || self.inner.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(claims) = lock().get(&key).filter(|c| c.exp > now) {
            return Ok(claims.clone());
        }
        let claims = tokens::verify(&self.inner.keys, &self.inner.settings.tokens, token)?;
        let mut verified = lock();
        if verified.len() >= VERIFIED_KEPT {
            verified.retain(|_, c| c.exp > now);
            if verified.len() >= VERIFIED_KEPT {
                verified.clear();
            }
        }
        verified.insert(key, claims.clone());
        Ok(claims)
    }

    async fn user(&self, request: UserRequest) -> Result<UserView, ApiError> {
        Ok(self.inner.bus.request(&request).await?)
    }

    /// Sends a command to a user entity.
    pub async fn command(
        &self,
        user: &UserId,
        command: UserCommand,
        correlation: &str,
    ) -> Result<UserView, ApiError> {
        self.user(UserRequest::new(user.clone(), command).correlated(correlation).by(access::caller())).await
    }

    /// Creates an account: claims the email cluster-wide, stores the password hash, then
    /// registers the user entity; a failure after the claim releases it.
    pub async fn register(&self, new: NewUser, correlation: &str) -> Result<UserView, ApiError> {
        check_password(&new.password, Some(&new.email))?;
        let hash =
            self.inner.hasher.hash(new.password).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let id = UserId::generate();
        let key = email_key(&new.email);
        let claim = EmailClaim { user: id.clone(), claimed_at: OffsetDateTime::now_utc() };
        let emails = &self.inner.accounts.emails;
        let revision = match emails.create(&key, &claim).await? {
            Some(rev) => rev,
            None => self.take_stale_claim(&key, &claim).await?,
        };
        let registered = async {
            self.inner.accounts.credentials.put(id.as_str(), &Credential { password_hash: hash }).await?;
            let cmd = UserCommand::Register {
                email: new.email,
                name: new.name,
                phone: new.phone,
                locale: new.locale,
                roles: new.roles,
            };
            self.command(&id, cmd, correlation).await
        }
        .await;
        if registered.is_err() {
            let _ = self.inner.accounts.credentials.delete(id.as_str(), None).await;
            if let Err(e) = emails.delete(&key, Some(revision)).await {
                tracing::warn!(error = %e, "could not release an email claim; it is reclaimable once stale");
            }
        }
        registered
    }

    /// Takes over a claim whose registration never finished, or reports the email taken.
    async fn take_stale_claim(&self, key: &str, claim: &EmailClaim) -> Result<u64, ApiError> {
        let taken = || ApiError::invalid(ErrorCode::EmailTaken, "an account with this email address exists");
        let emails = &self.inner.accounts.emails;
        let Some((existing, rev)) = emails.get(key).await? else {
            return emails.create(key, claim).await?.ok_or_else(taken);
        };
        let stale = existing.claimed_at + STALE_CLAIM < claim.claimed_at;
        if !stale {
            return Err(taken());
        }
        match self.user(UserRequest::new(existing.user.clone(), UserCommand::Get)).await {
            Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownUser => {
                emails.update(key, claim, rev).await?.ok_or_else(taken)
            }
            Err(e) => Err(e),
            Ok(_) => Err(taken()),
        }
    }

    /// The user owning `email`, if any.
    async fn owner(&self, email: &Email) -> Result<Option<UserId>, ApiError> {
        let claim = self.inner.accounts.emails.get(&email_key(email)).await?;
        Ok(claim.map(|(c, _)| c.user))
    }

    /// Checks a password and starts a session. Unknown email and wrong password answer the
    /// same, after the same work.
    pub async fn login(
        &self,
        email: &Email,
        password: String,
        client: Option<std::net::IpAddr>,
        correlation: &str,
    ) -> Result<TokenPair, ApiError> {
        let now = OffsetDateTime::now_utc();
        let account = Subject::account(&email_key(email));
        let mut subjects = vec![account.clone()];
        subjects.extend(client.map(Subject::address));
        let throttle = &self.inner.throttle;
        if let Some(wait) = throttle.wait(&subjects, now).await? {
            return Err(ApiError::Throttled(wait));
        }
        let owner = self.owner(email).await?;
        let credential = match &owner {
            Some(id) => self.inner.accounts.credentials.get(id.as_str()).await?,
            // The same lookup as for a known account, so both paths cost the same.
            None => self.inner.accounts.credentials.get("-").await?,
        };
        let phc = credential.map(|(c, _)| c.password_hash);
        let matched = self.inner.hasher.verify(password, phc).await;
        let (Some(id), true) = (owner, matched) else {
            throttle.failed(&subjects, now).await?;
            return Err(invalid_credentials());
        };
        let view = match self.command(&id, UserCommand::Get, correlation).await {
            Ok(v) => v,
            Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownUser => {
                return Err(invalid_credentials());
            }
            Err(e) => return Err(e),
        };
        if view.disabled {
            return Err(ApiError::invalid(ErrorCode::AccountDisabled, "this account is disabled"));
        }
        throttle.succeeded(&account).await?;
        let family = random_token(16);
        let secret = random_token(32);
        let session = Session {
            user: id,
            epoch: view.session_epoch,
            current: digest(&secret),
            spent: Vec::new(),
            expires_at: now + self.inner.settings.refresh_ttl,
            revoked: false,
        };
        self.inner.accounts.sessions.put(&family, &session).await?;
        self.pair(&view, &family, &secret, now)
    }

    fn pair(
        &self,
        user: &UserView,
        family: &str,
        secret: &str,
        now: OffsetDateTime,
    ) -> Result<TokenPair, ApiError> {
        let s = &self.inner.settings;
        let access = tokens::issue(
            &self.inner.keys,
            &s.tokens,
            &user.id,
            family,
            &user.roles,
            user.session_epoch,
            now,
        )
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(TokenPair {
            access_token: access,
            token_type: "Bearer",
            expires_in: s.tokens.access_ttl.as_secs(),
            refresh_token: format!("{family}.{secret}"),
            refresh_expires_in: s.refresh_ttl.as_secs(),
        })
    }

    /// Spends a refresh token for a new pair. A token that was already spent revokes its
    /// whole family: either the client or a thief holds a copy, and we cannot tell which.
    pub async fn refresh(&self, token: &str, correlation: &str) -> Result<TokenPair, ApiError> {
        let (family, secret) = token.split_once('.').ok_or_else(invalid_token)?;
        if !is_family_id(family) {
            return Err(invalid_token());
        }
        let sessions = &self.inner.accounts.sessions;
        let presented = digest(secret);
        for _ in 0..5 {
            let now = OffsetDateTime::now_utc();
            let (mut session, rev) = sessions.get(family).await?.ok_or_else(invalid_token)?;
            if session.revoked {
                return Err(invalid_token());
            }
            if !same(&session.current, &presented) {
                if session.spent.iter().any(|h| same(h, &presented)) {
                    tracing::warn!(user = %session.user, "a spent refresh token was presented; revoking its family");
                    self.revoke(family).await?;
                }
                return Err(invalid_token());
            }
            if session.expires_at <= now {
                return Err(invalid_token());
            }
            let view = match self.command(&session.user, UserCommand::Get, correlation).await {
                Ok(view) => view,
                // The account was erased.
                Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownUser => {
                    self.revoke(family).await?;
                    return Err(invalid_token());
                }
                Err(e) => return Err(e),
            };
            if view.disabled {
                self.revoke(family).await?;
                return Err(ApiError::invalid(ErrorCode::AccountDisabled, "this account is disabled"));
            }
            if view.session_epoch != session.epoch {
                self.revoke(family).await?;
                return Err(invalid_token());
            }
            let next = random_token(32);
            session.spent.insert(0, presented.clone());
            session.spent.truncate(SPENT_KEPT);
            session.current = digest(&next);
            session.expires_at = now + self.inner.settings.refresh_ttl;
            // Revision-checked: of two concurrent refreshes with one token, one wins and the
            // other sees the token spent on its next pass.
            if sessions.update(family, &session, rev).await?.is_some() {
                return self.pair(&view, family, &next, now);
            }
        }
        Err(invalid_token())
    }

    /// Revokes a token family. Idempotent.
    pub async fn revoke(&self, family: &str) -> Result<(), ApiError> {
        let sessions = &self.inner.accounts.sessions;
        for _ in 0..5 {
            let Some((mut session, rev)) = sessions.get(family).await? else { return Ok(()) };
            if session.revoked {
                return Ok(());
            }
            session.revoked = true;
            if sessions.update(family, &session, rev).await?.is_some() {
                return Ok(());
            }
        }
        Err(ApiError::Internal("session kept changing while being revoked".into()))
    }

    /// Ends the session a refresh token belongs to. Answers the same for any token.
    pub async fn logout(&self, token: &str) -> Result<(), ApiError> {
        let Some((family, secret)) = token.split_once('.') else { return Ok(()) };
        if !is_family_id(family) {
            return Ok(());
        }
        let Some((session, _)) = self.inner.accounts.sessions.get(family).await? else { return Ok(()) };
        let presented = digest(secret);
        if same(&session.current, &presented) || session.spent.iter().any(|h| same(h, &presented)) {
            self.revoke(family).await?;
        }
        Ok(())
    }

    /// Changes a password knowing the current one. Every other session ends; the caller's
    /// (`session`) continues.
    pub async fn change_password(
        &self,
        user: &UserId,
        session: &str,
        current: String,
        new: String,
        correlation: &str,
    ) -> Result<UserView, ApiError> {
        let view = self.command(user, UserCommand::Get, correlation).await?;
        check_password(&new, Some(&view.email))?;
        let credentials = &self.inner.accounts.credentials;
        let (credential, rev) = credentials.get(user.as_str()).await?.ok_or_else(invalid_credentials)?;
        if !self.inner.hasher.verify(current, Some(credential.password_hash)).await {
            return Err(ApiError::invalid(ErrorCode::InvalidCredentials, "the current password is wrong"));
        }
        let hash = self.inner.hasher.hash(new).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        // Sessions are revoked first: if storing the hash then fails, the old password still
        // works and the user can retry, but no session outlives the attempt.
        let view = self.command(user, UserCommand::RecordPasswordChange, correlation).await?;
        if credentials.update(user.as_str(), &Credential { password_hash: hash }, rev).await?.is_none() {
            return Err(ApiError::invalid(
                ErrorCode::InvalidCredentials,
                "the password changed meanwhile; retry",
            ));
        }
        self.carry_session(session, view.session_epoch).await?;
        Ok(view)
    }

    /// Moves the caller's own session to the new epoch, so a password change keeps it.
    async fn carry_session(&self, family: &str, epoch: u64) -> Result<(), ApiError> {
        let sessions = &self.inner.accounts.sessions;
        for _ in 0..5 {
            let Some((mut s, rev)) = sessions.get(family).await? else { return Ok(()) };
            s.epoch = epoch;
            if sessions.update(family, &s, rev).await?.is_some() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Checks a user's password: what the caller must show, beyond an access token, before
    /// an act that cannot be undone.
    pub async fn confirm_password(&self, user: &UserId, password: String) -> Result<(), ApiError> {
        let credential = self.inner.accounts.credentials.get(user.as_str()).await?;
        if self.inner.hasher.verify(password, credential.map(|(c, _)| c.password_hash)).await {
            Ok(())
        } else {
            Err(ApiError::invalid(ErrorCode::InvalidCredentials, "the password is wrong"))
        }
    }

    /// Erases an account (see [`UserCommand::Erase`]): the user entity records the erasure,
    /// then the email claim, the password hash and the history before the erasure go. Every
    /// step is idempotent, so repeating a failed erasure finishes it. Returns the account as
    /// it was, unless it had been erased already.
    pub async fn erase(
        &self,
        store: &EventStore,
        user: &UserId,
        correlation: &str,
    ) -> Result<Option<UserView>, ApiError> {
        let before = match self.command(user, UserCommand::Get, correlation).await {
            Ok(view) => Some(view),
            // Erased already (or never registered, which the erasure itself refuses).
            Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownUser => None,
            Err(e) => return Err(e),
        };
        let erased = self.command(user, UserCommand::Erase, correlation).await?;
        let accounts = &self.inner.accounts;
        if let Some(email) = before.as_ref().map(|v| &v.email) {
            let key = email_key(email);
            if let Some((claim, rev)) = accounts.emails.get(&key).await?
                && claim.user == *user
            {
                accounts.emails.delete(&key, Some(rev)).await?;
            }
        }
        accounts.credentials.delete(user.as_str(), None).await?;
        store
            .forget_all_but_last(EntityKind::User, user.as_str(), &UserState::erased(erased.version))
            .await?;
        Ok(before)
    }

    /// Starts a password reset for `email` if it has an account. Runs in the background and
    /// the caller answers 202 at once, so neither the answer nor its timing reveals whether
    /// the account exists.
    pub fn request_reset(&self, email: Email, correlation: String) {
        let auth = self.clone();
        tokio::spawn(async move {
            let Ok(Some(id)) = auth.owner(&email).await else { return };
            let token = Secret(format!("{id}.{}", random_token(32)));
            let expires_at = OffsetDateTime::now_utc() + auth.inner.settings.reset_ttl;
            let cmd = UserCommand::RequestPasswordReset { token, expires_at };
            if let Err(e) = auth.command(&id, cmd, &correlation).await {
                tracing::warn!(user = %id, error = %e, "password reset request not recorded");
            }
        });
    }

    /// Sets a new password with a reset token. Every session ends.
    pub async fn confirm_reset(&self, token: &str, new: String, correlation: &str) -> Result<(), ApiError> {
        let id =
            token.split_once('.').and_then(|(id, _)| UserId::parse(id).ok()).ok_or_else(invalid_token)?;
        let view = match self.command(&id, UserCommand::Get, correlation).await {
            Ok(v) => v,
            Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownUser => return Err(invalid_token()),
            Err(e) => return Err(e),
        };
        check_password(&new, Some(&view.email))?;
        let hash = self.inner.hasher.hash(new).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        self.command(&id, UserCommand::ResetPassword { token: Secret(token.to_owned()) }, correlation)
            .await?;
        self.inner.accounts.credentials.put(id.as_str(), &Credential { password_hash: hash }).await?;
        let _ = self.inner.throttle.succeeded(&Subject::account(&email_key(&view.email))).await;
        Ok(())
    }

    /// Creates an account with `roles`, or, if the email has one, gives it those roles too.
    /// For the first admin (`souk admin create`, config) and the demo users.
    pub async fn ensure_user(&self, new: NewUser) -> Result<UserView, ApiError> {
        let roles = new.roles.clone();
        // Several nodes starting at once may all try to create the account; the losers of
        // the email claim find the winner's account on the next pass.
        for _ in 0..3 {
            let Some(id) = self.owner(&new.email).await? else {
                match self.register(new.clone(), "bootstrap").await {
                    Err(ApiError::Rejected(e)) if e.code == ErrorCode::EmailTaken => continue,
                    other => return other,
                }
            };
            let view = match self.command(&id, UserCommand::Get, "bootstrap").await {
                // A claim whose registration is still under way (or died): try again.
                Err(ApiError::Rejected(e)) if e.code == ErrorCode::UnknownUser => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                other => other?,
            };
            let all: BTreeSet<Role> = view.roles.union(&roles).copied().collect();
            return self.command(&id, UserCommand::SetRoles { roles: all }, "bootstrap").await;
        }
        Err(ApiError::invalid(ErrorCode::Unavailable, "the account is being created elsewhere; retry"))
    }
}

/// Whether `s` can be a family id (and so a KV key): base64url characters only.
fn is_family_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `ReplyError` for a field that failed validation, named.
pub fn field_error(field: &str, e: ReplyError) -> ApiError {
    let ReplyError { code, detail } = e;
    ApiError::Rejected(ReplyError::new(code, format!("{field}: {detail}")))
}
