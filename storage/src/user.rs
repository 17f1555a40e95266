//! The `users` read model: one row per account, for the admin user list and search. Rows are
//! folded from user events with the entity's own fold, so the read model and the entity can
//! never disagree about what an event means. An erased account's row is deleted.

use crate::{Db, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use souk_messages::UserId;
use souk_messages::event::Event;
use souk_messages::user::{Email, Locale, Name, Phone, Role, UserEvent, UserState, UserView};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The projection name under which the user projector records its checkpoint.
const PROJECTION: &str = "user";

/// Where the user projection writes its rows.
const TABLE: crate::db::Table = crate::db::Table {
    name: "users",
    key: "uid",
    fields: &[
        "email",
        "name",
        "phone",
        "sms_opt_out",
        "locale",
        "roles",
        "disabled",
        "session_epoch",
        "search",
        "created_at",
        "seq",
        "version",
    ],
};
/// The user projection's write statement.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| TABLE.upsert(false));

/// One user's events in a projected batch, in stream order.
#[derive(Debug, Clone)]
pub struct UserEvents {
    /// The user.
    pub id: UserId,
    /// Its events, each with the stream sequence of its commit.
    pub events: Vec<(u64, Event<UserEvent>)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct UserRow {
    uid: String,
    email: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
    #[serde(default)]
    sms_opt_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    locale: Option<String>,
    roles: BTreeSet<Role>,
    disabled: bool,
    session_epoch: u64,
    search: String,
    created_at: String,
    version: u64,
    seq: u64,
}

impl UserRow {
    fn state(&self) -> Result<UserState, StorageError> {
        let corrupt =
            |e: souk_messages::ReplyError| StorageError::Corrupt { table: "users", detail: e.detail };
        Ok(UserState {
            email: Some(Email::parse(&self.email).map_err(corrupt)?),
            name: Some(Name::parse(&self.name).map_err(corrupt)?),
            phone: self.phone.as_deref().map(Phone::parse).transpose().map_err(corrupt)?,
            sms_opt_out: self.sms_opt_out,
            locale: self.locale.as_deref().map(Locale::parse).transpose().map_err(corrupt)?,
            roles: self.roles.clone(),
            disabled: self.disabled,
            session_epoch: self.session_epoch,
            reset: None,
            earlier_resets: Vec::new(),
            erased: false,
            version: self.version,
        })
    }

    fn view(&self) -> Result<UserView, StorageError> {
        let id = UserId::parse(self.uid.clone())
            .map_err(|e| StorageError::Corrupt { table: "users", detail: e.to_string() })?;
        let state = self.state()?;
        Ok(souk_messages::Entity::view(&state, &id))
    }
}

fn views(rows: Vec<serde_json::Value>) -> Result<Vec<UserView>, StorageError> {
    rows.into_iter()
        .map(|v| {
            let row: UserRow = serde_json::from_value(v)
                .map_err(|e| StorageError::Corrupt { table: "users", detail: e.to_string() })?;
            row.view()
        })
        .collect()
}

/// The users table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UserRepo {
    db: Arc<Db>,
}

impl UserRepo {
    /// The repository over a shared handle.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Folds each user's events into its row and advances the checkpoint, in one
    /// transaction. Events at or below a row's version are skipped, so replays are harmless.
    pub async fn apply(&self, batch: &[UserEvents], checkpoint: u64) -> Result<(), StorageError> {
        let ids: Vec<&str> = batch.iter().map(|u| u.id.as_str()).collect();
        let existing: Vec<UserRow> = crate::db::rows_by_id(&self.db, "users", ids).await?;
        let mut rows: HashMap<String, UserRow> = existing.into_iter().map(|r| (r.uid.clone(), r)).collect();
        let mut out = crate::db::Rows::default();
        for user in batch {
            let row = rows.remove(user.id.as_str());
            let exists = row.is_some();
            let mut state = row.as_ref().map(UserRow::state).transpose()?.unwrap_or_default();
            let mut created_at = row.as_ref().map(|r| r.created_at.clone());
            let mut seq = row.as_ref().map_or(0, |r| r.seq);
            let changed = crate::fold_new(&mut state, &mut created_at, &mut seq, &user.events);
            if state.erased {
                if exists {
                    out.delete(user.id.as_str());
                }
                continue;
            }
            let (Some(email), Some(name)) = (&state.email, &state.name) else { continue };
            if !changed {
                continue;
            }
            let row = UserRow {
                uid: user.id.to_string(),
                email: email.to_string(),
                name: name.as_str().to_owned(),
                phone: state.phone.as_ref().map(|p| p.as_str().to_owned()),
                sms_opt_out: state.sms_opt_out,
                locale: state.locale.as_ref().map(ToString::to_string),
                roles: state.roles.clone(),
                disabled: state.disabled,
                session_epoch: state.session_epoch,
                search: format!("{} {}", email.unique_key(), name.as_str().to_lowercase()),
                created_at: created_at.unwrap_or_default(),
                version: state.version,
                seq,
            };
            let value = serde_json::to_value(&row)
                .map_err(|e| StorageError::Corrupt { table: "users", detail: e.to_string() })?;
            out.push(&row.uid, exists, value);
        }
        // Rows were folded from the stored ones above, and only this node's projector
        // writes them, so a newer row simply replaces the old one.
        crate::db::apply_projection(&self.db, &UPSERT, out, PROJECTION, checkpoint).await
    }

    /// The last stream sequence the projection has applied; 0 for an empty database.
    pub async fn checkpoint(&self) -> Result<u64, StorageError> {
        crate::db::checkpoint(&self.db, PROJECTION).await
    }

    /// Every enabled staff member and admin: who hears about the shop's stock.
    pub async fn staff(&self) -> Result<Vec<UserView>, StorageError> {
        let mut res = self
            .db
            .query(
                r"SELECT * OMIT id FROM users
                  WHERE disabled = false AND (roles CONTAINS 'staff' OR roles CONTAINS 'admin')
                  ORDER BY uid ASC LIMIT 1000",
            )
            .await?;
        views(res.take(0)?)
    }

    /// A page of users ordered by id, after `after`, whose email or name contains `query`
    /// (case-insensitive).
    pub async fn list(
        &self,
        query: Option<&str>,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<UserView>, StorageError> {
        let mut res = self
            .db
            .query(
                r"SELECT * OMIT id FROM users
                  WHERE uid > $after AND string::contains(search, $q)
                  ORDER BY uid ASC LIMIT $limit",
            )
            .bind(json!({
                "after": after.map_or("", UserId::as_str),
                "q": query.unwrap_or("").to_lowercase(),
                "limit": limit,
            }))
            .await?;
        views(res.take(0)?)
    }
}
