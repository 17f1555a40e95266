//! The user account entity, and the rules for the values an account holds.
//!
//! An account's history never holds a password, a hash or a session token: credentials and
//! sessions live in their own KV buckets (see `docs/security.md`). The one exception is the
//! password-reset token, which travels in its own event, `user.password_reset_requested`,
//! so that the notification service can mail it; that event is documented as sensitive.

use crate::entity::Entity;
use crate::error::{ErrorCode, ReplyError};
use crate::event::Fold;
use crate::ids::UserId;
use crate::subject::EntityKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::sync::LazyLock;
use time::OffsetDateTime;

/// The longest accepted email address, in bytes (RFC 5321 path limit).
pub const EMAIL_MAX: usize = 254;
/// The longest accepted display name, in characters.
pub const NAME_MAX: usize = 100;
/// The shortest accepted password, in characters.
pub const PASSWORD_MIN: usize = 10;
/// The longest accepted password, in characters.
pub const PASSWORD_MAX: usize = 128;

static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

fn invalid(code: ErrorCode, detail: impl Into<String>) -> ReplyError {
    ReplyError::new(code, detail)
}

/// A normalised email address: trimmed, with its domain lower-cased.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, format = "email", example = "ada@example.com")]
#[schemars(with = "String")]
pub struct Email(String);

impl Email {
    /// Validates and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let s = s.trim();
        let bad = |why: &str| invalid(ErrorCode::InvalidEmail, format!("not a valid email address: {why}"));
        if s.len() > EMAIL_MAX {
            return Err(bad("longer than 254 characters"));
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(|| bad("no @"))?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
        if !local_ok {
            return Err(bad("the part before @"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_ok {
            return Err(bad("the domain"));
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    /// The key that makes an address unique: the whole address lower-cased, so that
    /// `Ada@example.com` and `ada@example.com` are one account.
    pub fn unique_key(&self) -> String {
        self.0.to_lowercase()
    }
}

crate::ids::string_newtype!(Email);

/// A display name: 1 to [`NAME_MAX`] characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, min_length = 1, max_length = 100, example = "Ada Lovelace")]
pub struct Name(String);

impl Name {
    /// Validates and trims `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let s = s.trim();
        let n = s.chars().count();
        if n == 0 || n > NAME_MAX || s.chars().any(char::is_control) {
            return Err(invalid(
                ErrorCode::InvalidInput,
                format!("name must be 1 to {NAME_MAX} characters without control characters"),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

crate::ids::string_newtype!(Name);

/// A phone number in E.164 form (`+` and 8 to 15 digits). Spaces, dots, dashes and
/// parentheses in the input are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "+442071838750")]
pub struct Phone(String);

impl Phone {
    /// Validates and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let compact: String = s.chars().filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')')).collect();
        let digits = compact.strip_prefix('+').unwrap_or("");
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) || s.len() > 32 {
            return Err(invalid(
                ErrorCode::InvalidInput,
                "phone must be in international form: + and 8 to 15 digits",
            ));
        }
        Ok(Self(compact))
    }
}

crate::ids::string_newtype!(Phone);

/// A language tag (BCP 47: a language, then optionally a script and a region), in which a
/// person's messages are written: `fr`, `pt-BR`, `zh-Hant-TW`. Normalised to the usual case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "fr-CA", pattern = r"^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?$")]
#[schemars(with = "String")]
pub struct Locale(String);

impl Locale {
    /// Validates and normalises `s` (`FR-ca` → `fr-CA`).
    pub fn parse(s: &str) -> Result<Self, ReplyError> {
        let bad = || {
            invalid(ErrorCode::InvalidInput, "locale must be a language tag such as fr, pt-BR or zh-Hant-TW")
        };
        let mut parts = s.split('-');
        let language =
            parts.next().filter(|l| (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
        let mut tag = language.ok_or_else(bad)?.to_ascii_lowercase();
        let mut rest = parts.peekable();
        if let Some(script) = rest.next_if(|p| p.len() == 4 && p.bytes().all(|b| b.is_ascii_alphabetic())) {
            tag.push('-');
            tag.push_str(&script[..1].to_ascii_uppercase());
            tag.push_str(&script[1..].to_ascii_lowercase());
        }
        let region = |p: &&str| {
            (p.len() == 2 && p.bytes().all(|b| b.is_ascii_alphabetic()))
                || (p.len() == 3 && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if let Some(region) = rest.next_if(region) {
            tag.push('-');
            tag.push_str(&region.to_ascii_uppercase());
        }
        if rest.next().is_some() {
            return Err(bad());
        }
        Ok(Self(tag))
    }

    /// The tags to try for this one, most specific first: `zh-Hant-TW`, `zh-Hant`, `zh`.
    pub fn fallbacks(&self) -> impl Iterator<Item = &str> {
        let tag = self.0.as_str();
        let cuts = tag.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>();
        std::iter::once(tag).chain(cuts.into_iter().rev().map(move |i| &tag[..i]))
    }
}

crate::ids::string_newtype!(Locale);

/// Checks a new password against the policy: [`PASSWORD_MIN`] to [`PASSWORD_MAX`]
/// characters, not one of the 10,000 most common passwords, not the account's email.
pub fn check_password(password: &str, email: Option<&Email>) -> Result<(), ReplyError> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(invalid(
            ErrorCode::WeakPassword,
            format!("password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"),
        ));
    }
    let lower = password.to_lowercase();
    if COMMON_PASSWORDS.contains(lower.as_str()) {
        return Err(invalid(ErrorCode::WeakPassword, "this password is too common; choose another"));
    }
    if email.is_some_and(|e| e.unique_key() == lower) {
        return Err(invalid(ErrorCode::WeakPassword, "the password may not be the email address"));
    }
    Ok(())
}

/// A secret string (a reset token) whose `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// The secret itself, for the one place that must show it (the reset email's link).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the strings differ.
    pub fn matches(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// What a user may do. Roles are a set; `admin` includes everything `staff` may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A shopper: their own account, cart and orders.
    Customer,
    /// Shop staff: catalog and inventory.
    Staff,
    /// Everything, including users and roles.
    Admin,
}

impl Role {
    /// The role's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Staff => "staff",
            Self::Admin => "admin",
        }
    }
}

/// Why a password changed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PasswordChange {
    /// The user changed it, knowing the current one.
    Changed,
    /// The user set it with a reset token.
    Reset,
}

/// A command addressed to one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserCommand {
    /// Create the account. Idempotent: the same id and email again changes nothing.
    Register {
        /// The email, already claimed for this id.
        email: Email,
        /// Display name.
        name: Name,
        /// Phone, for SMS.
        phone: Option<Phone>,
        /// The language of their messages; the shop's default if none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<Locale>,
        /// Initial roles.
        roles: BTreeSet<Role>,
    },
    /// Change name, phone, text-message preference and/or language.
    UpdateProfile {
        /// New name, if it changes.
        name: Option<Name>,
        /// New phone, if it changes.
        phone: Option<Phone>,
        /// Remove the phone.
        clear_phone: bool,
        /// Turn text messages off (`true`) or on again (`false`), if it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sms_opt_out: Option<bool>,
        /// The language of their messages, if it changes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<Locale>,
        /// Go back to the shop's default language.
        #[serde(default, skip_serializing_if = "crate::stock::is_false")]
        clear_locale: bool,
    },
    /// Record that the password changed: every session started before is revoked.
    RecordPasswordChange,
    /// Issue a single-use password-reset token.
    RequestPasswordReset {
        /// The token, generated by the caller.
        token: Secret,
        /// When it stops working.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// Spend a reset token: every session is revoked.
    ResetPassword {
        /// The token from the reset request.
        token: Secret,
    },
    /// Replace the roles.
    SetRoles {
        /// The new roles; at least one.
        roles: BTreeSet<Role>,
    },
    /// Disable the account: no logins, no refreshes.
    Disable,
    /// Enable a disabled account.
    Enable,
    /// Erase the account's personal data: it ends for good, and its history keeps only the
    /// record that it was erased. Idempotent.
    Erase,
    /// Read the account.
    Get,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    /// The user id.
    #[schema(value_type = String, example = "usr-0c6f8b1f5d0e4a7c9a7e2d3b4c5d6e7f")]
    pub id: UserId,
    /// Email address.
    pub email: Email,
    /// Display name.
    pub name: Name,
    /// Phone, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Phone>,
    /// The user turned text messages off.
    #[serde(default)]
    pub sms_opt_out: bool,
    /// The language of their messages; absent for the shop's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    /// Roles.
    pub roles: BTreeSet<Role>,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Bumped whenever every session must end (password change or reset); a refresh token
    /// from an older epoch is refused.
    pub session_epoch: u64,
    /// The entity version.
    pub version: u64,
}

/// Something that happened to a user. Serialized as `{"type": "user.…", "data": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    /// The account was created.
    #[serde(rename = "user.registered")]
    Registered {
        /// Email address.
        email: Email,
        /// Display name.
        name: Name,
        /// Phone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<Phone>,
        /// The language of their messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<Locale>,
        /// Initial roles.
        roles: BTreeSet<Role>,
    },
    /// Name, phone, text-message preference or language changed; carries the whole profile
    /// after the change.
    #[serde(rename = "user.profile_updated")]
    ProfileUpdated {
        /// Display name.
        name: Name,
        /// Phone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<Phone>,
        /// The user turned text messages off.
        #[serde(default, skip_serializing_if = "crate::stock::is_false")]
        sms_opt_out: bool,
        /// The language of their messages; absent for the shop's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locale: Option<Locale>,
    },
    /// The password changed; sessions from before `session_epoch` are revoked.
    #[serde(rename = "user.password_changed")]
    PasswordChanged {
        /// Changed by the user, or reset with a token.
        reason: PasswordChange,
        /// The new session epoch.
        session_epoch: u64,
    },
    /// The roles were replaced.
    #[serde(rename = "user.roles_changed")]
    RolesChanged {
        /// The roles after the change.
        roles: BTreeSet<Role>,
    },
    /// The account was disabled.
    #[serde(rename = "user.disabled")]
    Disabled {},
    /// The account was enabled again.
    #[serde(rename = "user.enabled")]
    Enabled {},
    /// The account was erased: the user's earlier events are purged and this one, which names
    /// nobody, is all that stays of its history.
    #[serde(rename = "user.erased")]
    Erased {},
    /// A password reset was requested. **Sensitive**: carries the single-use token.
    #[serde(rename = "user.password_reset_requested")]
    PasswordResetRequested {
        /// Where to send the token.
        email: Email,
        /// The token.
        token: Secret,
        /// When it stops working.
        #[schemars(with = "String")]
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
}

impl UserEvent {
    /// The event's `type` on the wire.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "user.registered",
            Self::ProfileUpdated { .. } => "user.profile_updated",
            Self::PasswordChanged { .. } => "user.password_changed",
            Self::RolesChanged { .. } => "user.roles_changed",
            Self::Disabled {} => "user.disabled",
            Self::Enabled {} => "user.enabled",
            Self::Erased {} => "user.erased",
            Self::PasswordResetRequested { .. } => "user.password_reset_requested",
        }
    }
}

/// How many password resets an account keeps open at once: asking again does not void the
/// emails already on their way, and while this many are open asking again sends nothing, so
/// nobody can flood an address with reset emails (at most this many per reset lifetime).
pub const OPEN_RESETS: usize = 3;

/// An open password reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReset {
    /// The token.
    pub token: Secret,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A user's full state, folded from its events. Snapshots store exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    /// Email; `None` until registered.
    pub email: Option<Email>,
    /// Display name.
    pub name: Option<Name>,
    /// Phone.
    pub phone: Option<Phone>,
    /// The user turned text messages off.
    pub sms_opt_out: bool,
    /// The language of their messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    /// Roles.
    pub roles: BTreeSet<Role>,
    /// Disabled accounts cannot log in or refresh.
    pub disabled: bool,
    /// Sessions from an older epoch are revoked.
    pub session_epoch: u64,
    /// The newest open password reset, if any.
    pub reset: Option<PendingReset>,
    /// Resets asked for before the newest one and still open (at most
    /// [`OPEN_RESETS`]` - 1`): a customer who asked again because the first email was slow
    /// may follow whichever arrives first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_resets: Vec<PendingReset>,
    /// The account was erased.
    #[serde(default, skip_serializing_if = "crate::stock::is_false")]
    pub erased: bool,
    /// How many events have been applied.
    pub version: u64,
}

impl UserState {
    /// What an erasure leaves of an account whose erasure is its `version`th event: a
    /// disabled account naming nobody.
    pub fn erased(version: u64) -> Self {
        Self { erased: true, disabled: true, version, ..Self::default() }
    }

    fn require_exists(&self) -> Result<(), ReplyError> {
        if self.email.is_some() { Ok(()) } else { Err(invalid(ErrorCode::UnknownUser, "no such user")) }
    }

    /// Every open password reset, newest last.
    fn open_resets(&self) -> impl Iterator<Item = &PendingReset> {
        self.earlier_resets.iter().chain(&self.reset)
    }

    fn password_changed(&self, reason: PasswordChange) -> UserEvent {
        UserEvent::PasswordChanged { reason, session_epoch: self.session_epoch + 1 }
    }
}

impl Fold for UserState {
    type Event = UserEvent;

    fn apply(&mut self, event: &UserEvent) {
        self.version += 1;
        match event {
            UserEvent::Registered { email, name, phone, locale, roles } => {
                self.email = Some(email.clone());
                self.name = Some(name.clone());
                self.phone.clone_from(phone);
                self.locale.clone_from(locale);
                self.roles.clone_from(roles);
            }
            UserEvent::ProfileUpdated { name, phone, sms_opt_out, locale } => {
                self.name = Some(name.clone());
                self.phone.clone_from(phone);
                self.sms_opt_out = *sms_opt_out;
                self.locale.clone_from(locale);
            }
            UserEvent::PasswordChanged { session_epoch, .. } => {
                self.session_epoch = *session_epoch;
                self.reset = None;
                self.earlier_resets.clear();
            }
            UserEvent::RolesChanged { roles } => self.roles.clone_from(roles),
            UserEvent::Disabled {} => self.disabled = true,
            UserEvent::Enabled {} => self.disabled = false,
            UserEvent::Erased {} => {
                *self = Self::erased(self.version);
            }
            UserEvent::PasswordResetRequested { token, expires_at, .. } => {
                let newest = PendingReset { token: token.clone(), expires_at: *expires_at };
                if let Some(previous) = self.reset.replace(newest) {
                    self.earlier_resets.push(previous);
                    let over = self.earlier_resets.len().saturating_sub(OPEN_RESETS - 1);
                    self.earlier_resets.drain(..over);
                }
            }
        }
    }
}

impl Entity for UserState {
    const KIND: EntityKind = EntityKind::User;
    type Id = UserId;
    type Command = UserCommand;
    type View = UserView;

    fn id_str(id: &UserId) -> &str {
        id.as_str()
    }

    fn decide(
        &self,
        _id: &UserId,
        cmd: &UserCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<UserEvent>, ReplyError> {
        if self.erased {
            // An erased account answers as one that never existed, except to a repeated erasure.
            return match cmd {
                UserCommand::Erase => Ok(Vec::new()),
                _ => Err(invalid(ErrorCode::UnknownUser, "no such user")),
            };
        }
        if let UserCommand::Register { email, name, phone, locale, roles } = cmd {
            return match &self.email {
                None => Ok(vec![UserEvent::Registered {
                    email: email.clone(),
                    name: name.clone(),
                    phone: phone.clone(),
                    locale: locale.clone(),
                    roles: roles.clone(),
                }]),
                Some(existing) if existing == email => Ok(Vec::new()),
                Some(_) => Err(invalid(ErrorCode::EmailTaken, "this user id is already registered")),
            };
        }
        self.require_exists()?;
        match cmd {
            UserCommand::Register { .. } | UserCommand::Get => Ok(Vec::new()),
            UserCommand::UpdateProfile { name, phone, clear_phone, sms_opt_out, locale, clear_locale } => {
                let name = name.clone().or_else(|| self.name.clone());
                let phone = if *clear_phone { None } else { phone.clone().or_else(|| self.phone.clone()) };
                let sms_opt_out = sms_opt_out.unwrap_or(self.sms_opt_out);
                let locale =
                    if *clear_locale { None } else { locale.clone().or_else(|| self.locale.clone()) };
                match name {
                    Some(name)
                        if Some(&name) != self.name.as_ref()
                            || phone != self.phone
                            || sms_opt_out != self.sms_opt_out
                            || locale != self.locale =>
                    {
                        Ok(vec![UserEvent::ProfileUpdated { name, phone, sms_opt_out, locale }])
                    }
                    _ => Ok(Vec::new()),
                }
            }
            UserCommand::RecordPasswordChange => Ok(vec![self.password_changed(PasswordChange::Changed)]),
            UserCommand::RequestPasswordReset { token, expires_at } => {
                let email =
                    self.email.clone().ok_or_else(|| invalid(ErrorCode::UnknownUser, "no such user"))?;
                // Answered like any other request (the caller never learns whether an address
                // has an account), but no new link and no email.
                if self.open_resets().filter(|r| r.expires_at > now).count() >= OPEN_RESETS {
                    return Ok(Vec::new());
                }
                Ok(vec![UserEvent::PasswordResetRequested {
                    email,
                    token: token.clone(),
                    expires_at: *expires_at,
                }])
            }
            UserCommand::ResetPassword { token } => {
                // Spending any open token changes the password, which closes all of them.
                if self.open_resets().any(|r| r.token.matches(&token.0) && r.expires_at > now) {
                    Ok(vec![self.password_changed(PasswordChange::Reset)])
                } else {
                    Err(invalid(ErrorCode::InvalidToken, "the reset token is invalid, used or expired"))
                }
            }
            UserCommand::SetRoles { roles } => {
                if roles.is_empty() {
                    return Err(invalid(ErrorCode::InvalidInput, "a user needs at least one role"));
                }
                Ok(if *roles == self.roles {
                    Vec::new()
                } else {
                    vec![UserEvent::RolesChanged { roles: roles.clone() }]
                })
            }
            UserCommand::Disable => Ok(if self.disabled { Vec::new() } else { vec![UserEvent::Disabled {}] }),
            UserCommand::Enable => Ok(if self.disabled { vec![UserEvent::Enabled {}] } else { Vec::new() }),
            UserCommand::Erase => Ok(vec![UserEvent::Erased {}]),
        }
    }

    fn view(&self, id: &UserId) -> UserView {
        UserView {
            id: id.clone(),
            // Only called after `decide` succeeded, which requires a registered user, except
            // for the answer to an erasure: that names nobody, in values that still decode
            // (`.invalid` is a domain that can never exist).
            email: self.email.clone().unwrap_or_else(|| Email("erased@souk.invalid".to_owned())),
            name: self.name.clone().unwrap_or_else(|| Name("Erased account".to_owned())),
            phone: self.phone.clone(),
            sms_opt_out: self.sms_opt_out,
            locale: self.locale.clone(),
            roles: self.roles.clone(),
            disabled: self.disabled,
            session_epoch: self.session_epoch,
            version: self.version,
        }
    }

    fn version(&self) -> u64 {
        self.version
    }
}

/// A request addressed to one user.
pub type UserRequest = crate::entity::Request<UserState>;

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn registered() -> UserState {
        let mut s = UserState::default();
        let id = UserId::generate();
        let cmd = UserCommand::Register {
            email: Email::parse("Ada@Example.COM").expect("email"),
            name: Name::parse("Ada").expect("name"),
            phone: None,
            locale: None,
            roles: BTreeSet::from([Role::Customer]),
        };
        for e in s.decide(&id, &cmd, OffsetDateTime::now_utc()).expect("register") {
            s.apply(&e);
        }
        s
    }

    fn run(s: &mut UserState, cmd: &UserCommand, now: OffsetDateTime) -> Result<usize, ErrorCode> {
        let events = s.decide(&UserId::generate(), cmd, now).map_err(|e| e.code)?;
        for e in &events {
            s.apply(e);
        }
        Ok(events.len())
    }

    #[test]
    fn emails_are_normalised_and_validated() {
        let e = Email::parse("  Ada.L+shop@Example.COM ").expect("valid");
        assert_eq!(e.as_str(), "Ada.L+shop@example.com");
        assert_eq!(e.unique_key(), "ada.l+shop@example.com");
        for bad in
            ["", "ada", "ada@", "@example.com", "ada@example", "a b@example.com", "ada@-x.com", "a..b@x.com"]
        {
            assert_eq!(Email::parse(bad).expect_err(bad).code, ErrorCode::InvalidEmail, "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn password_policy() {
        assert!(check_password("correct horse battery", None).is_ok());
        assert_eq!(check_password("short", None).expect_err("short").code, ErrorCode::WeakPassword);
        assert!(check_password(&"x".repeat(129), None).is_err());
        assert!(check_password(&"é".repeat(128), None).is_ok(), "length counts characters");
        // Common passwords are refused whatever their case.
        assert!(check_password("1234567890", None).is_err());
        assert!(check_password("QWERTYUIOP", None).is_err());
        let email = Email::parse("someone@example.com").expect("email");
        assert!(check_password("Someone@Example.com", Some(&email)).is_err());
        assert!(COMMON_PASSWORDS.len() >= 9_990, "the shipped list is complete");
    }

    #[test]
    fn phones_and_names() {
        assert_eq!(Phone::parse("+44 (20) 7183-8750").expect("phone").as_str(), "+442071838750");
        assert!(Phone::parse("020 7183 8750").is_err());
        assert!(Phone::parse("+12").is_err());
        assert!(Name::parse("  ").is_err());
        assert!(Name::parse(&"n".repeat(101)).is_err());
        assert!(Name::parse("bad\u{7}name").is_err());
    }

    #[test]
    fn locales_are_language_tags_in_their_usual_case_and_fall_back_to_the_language() {
        let tag = |s: &str| Locale::parse(s).map(|l| l.to_string());
        assert_eq!(tag("FR-ca").as_deref(), Ok("fr-CA"));
        assert_eq!(tag("zh-hant-tw").as_deref(), Ok("zh-Hant-TW"));
        assert_eq!(tag("es-419").as_deref(), Ok("es-419"));
        assert_eq!(tag("ast").as_deref(), Ok("ast"));
        for bad in ["", "f", "french", "fr_CA", "fr-", "fr-CA-x", "fr-Latn-CA-1", "../fr", "fr/email", "12"] {
            assert_eq!(Locale::parse(bad).expect_err(bad).code, ErrorCode::InvalidInput, "{bad:?}");
        }
        let tw = Locale::parse("zh-Hant-TW").expect("tag");
        assert_eq!(tw.fallbacks().collect::<Vec<_>>(), ["zh-Hant-TW", "zh-Hant", "zh"]);
        assert_eq!(Locale::parse("fr").expect("tag").fallbacks().collect::<Vec<_>>(), ["fr"]);
    }

    #[test]
    fn a_profile_keeps_its_language_until_it_is_changed_or_cleared() {
        let mut s = registered();
        let fr = Locale::parse("fr").expect("tag");
        let update = |locale, clear_locale| UserCommand::UpdateProfile {
            name: None,
            phone: None,
            clear_phone: false,
            sms_opt_out: None,
            locale,
            clear_locale,
        };
        assert_eq!(run(&mut s, &update(Some(fr.clone()), false), OffsetDateTime::now_utc()), Ok(1));
        assert_eq!(s.locale.as_ref(), Some(&fr));
        assert_eq!(run(&mut s, &update(Some(fr.clone()), false), OffsetDateTime::now_utc()), Ok(0));
        assert_eq!(run(&mut s, &update(None, false), OffsetDateTime::now_utc()), Ok(0), "absent leaves it");
        assert_eq!(s.locale.as_ref(), Some(&fr));
        // As it travels to the entity.
        let clear: UserCommand =
            serde_json::from_value(serde_json::to_value(update(None, true)).expect("json")).expect("command");
        assert_eq!(run(&mut s, &clear, OffsetDateTime::now_utc()), Ok(1));
        assert_eq!(s.locale, None);
    }

    #[test]
    fn register_is_idempotent_and_commands_need_a_user() {
        let mut s = registered();
        let again = UserCommand::Register {
            email: Email::parse("Ada@example.com").expect("email"),
            name: Name::parse("Ada").expect("name"),
            phone: None,
            locale: None,
            roles: BTreeSet::from([Role::Customer]),
        };
        assert_eq!(run(&mut s, &again, OffsetDateTime::now_utc()), Ok(0));
        let mut nobody = UserState::default();
        assert_eq!(
            run(&mut nobody, &UserCommand::Disable, OffsetDateTime::now_utc()),
            Err(ErrorCode::UnknownUser)
        );
    }

    #[test]
    fn an_erased_account_keeps_nothing_personal_and_refuses_everything_but_erasure() {
        let now = OffsetDateTime::now_utc();
        let mut s = registered();
        assert_eq!(run(&mut s, &UserCommand::Erase, now), Ok(1));
        let kept = serde_json::to_string(&s).expect("serialize");
        assert!(!kept.to_lowercase().contains("ada"), "{kept}");
        assert_eq!(run(&mut s, &UserCommand::Erase, now), Ok(0), "idempotent");
        let register = UserCommand::Register {
            email: Email::parse("ada@example.com").expect("email"),
            name: Name::parse("Ada").expect("name"),
            phone: None,
            locale: None,
            roles: BTreeSet::from([Role::Customer]),
        };
        for cmd in [UserCommand::Get, UserCommand::Enable, UserCommand::RecordPasswordChange, register] {
            assert_eq!(run(&mut s, &cmd, now), Err(ErrorCode::UnknownUser), "{cmd:?}");
        }
        // What stays of the history after the purge folds to the same state.
        let mut from_tombstone = UserState::default();
        from_tombstone.apply(&UserEvent::Erased {});
        assert!(from_tombstone.erased && from_tombstone.email.is_none());
        assert_eq!(run(&mut from_tombstone, &UserCommand::Get, now), Err(ErrorCode::UnknownUser));
    }

    #[test]
    fn reset_tokens_are_single_use_and_expire() {
        let now = OffsetDateTime::now_utc();
        let mut s = registered();
        let token = Secret("tok-1".into());
        let request = UserCommand::RequestPasswordReset {
            token: token.clone(),
            expires_at: now + Duration::minutes(30),
        };
        run(&mut s, &request, now).expect("request");
        let wrong = UserCommand::ResetPassword { token: Secret("tok-2".into()) };
        assert_eq!(run(&mut s, &wrong, now), Err(ErrorCode::InvalidToken));
        let late = UserCommand::ResetPassword { token: token.clone() };
        assert_eq!(run(&mut s, &late, now + Duration::minutes(31)), Err(ErrorCode::InvalidToken));
        assert_eq!(run(&mut s, &late, now), Ok(1));
        assert_eq!(s.session_epoch, 1);
        assert_eq!(run(&mut s, &late, now), Err(ErrorCode::InvalidToken), "single use");
    }

    #[test]
    fn asking_again_keeps_the_emails_on_their_way_usable_and_spending_one_closes_all() {
        let now = OffsetDateTime::now_utc();
        let mut s = registered();
        let ask = |n: usize| UserCommand::RequestPasswordReset {
            token: Secret(format!("tok-{n}")),
            expires_at: now + Duration::minutes(30) + Duration::minutes(n as i64),
        };
        let spend = |n: usize| UserCommand::ResetPassword { token: Secret(format!("tok-{n}")) };
        for n in 1..=OPEN_RESETS {
            assert_eq!(run(&mut s, &ask(n), now), Ok(1), "request {n}");
        }
        // While three are open, asking again sends nothing: no flood of emails to one address.
        let next = OPEN_RESETS + 1;
        assert_eq!(run(&mut s, &ask(next), now), Ok(0));
        assert_eq!(run(&mut s.clone(), &spend(next), now), Err(ErrorCode::InvalidToken));
        // Once the oldest has expired a new one is sent, and the oldest is no longer kept.
        let later = now + Duration::minutes(31) + Duration::seconds(30);
        assert_eq!(run(&mut s, &ask(next), later), Ok(1));
        assert_eq!(run(&mut s.clone(), &spend(1), now), Err(ErrorCode::InvalidToken));
        // The three open are each usable, whichever email comes first.
        for n in 2..=next {
            assert_eq!(run(&mut s.clone(), &spend(n), later), Ok(1), "token {n}");
        }
        assert_eq!(run(&mut s, &spend(2), later), Ok(1));
        for n in 2..=next {
            assert_eq!(
                run(&mut s, &spend(n), later),
                Err(ErrorCode::InvalidToken),
                "token {n} after a reset"
            );
        }
        // A password change closes them all, so asking again sends a link at once.
        assert_eq!(run(&mut s, &ask(next + 1), later), Ok(1));
        // A snapshot from before earlier resets were kept still reads, with its one reset.
        let mut old = serde_json::to_value(registered()).expect("serialize");
        old["reset"] = serde_json::json!({"token": "tok-old", "expires_at": "2999-01-01T00:00:00Z"});
        let mut old: UserState = serde_json::from_value(old).expect("old snapshot");
        assert_eq!(
            run(&mut old, &UserCommand::ResetPassword { token: Secret("tok-old".into()) }, now),
            Ok(1)
        );
    }

    #[test]
    fn events_never_carry_credentials_but_the_reset_token_event() {
        let e = UserEvent::PasswordChanged { reason: PasswordChange::Reset, session_epoch: 3 };
        let json = serde_json::to_value(&e).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"type": "user.password_changed", "data": {"reason": "reset", "session_epoch": 3}})
        );
        assert_eq!(format!("{:?}", Secret("hunter2hunter2".into())), "Secret(…)");
        let disabled = serde_json::to_value(UserEvent::Disabled {}).expect("serialize");
        assert_eq!(serde_json::from_value::<UserEvent>(disabled).expect("back"), UserEvent::Disabled {});
    }
}
