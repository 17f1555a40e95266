//! Access tokens refused before they expire. Each edge node follows the user events of the
//! last access-token lifetime and refuses a token whose user has since been disabled, has
//! changed password (a newer session epoch than the token's) or lost a role the token claims.
//! Older changes need no memory: every token issued before them has expired.

use super::tokens::Claims;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::StreamExt as _;
use souk_messages::event::Commit;
use souk_messages::subject::{EntityKind, Subjects};
use souk_messages::user::{Role, UserEvent};
use souk_nats::health::Readiness;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Extra history read at start-up and kept in memory beyond the token lifetime: clock skew
/// between the node that stamped an event and this one.
const MARGIN: Duration = Duration::from_secs(60);

/// What changed for one user recently.
#[derive(Debug, Clone, Default)]
struct Standing {
    /// The session epoch after the latest password change.
    epoch: u64,
    disabled: bool,
    /// The roles after the latest change, if one is known.
    roles: Option<BTreeSet<Role>>,
    changed: Option<Instant>,
}

/// The recent account changes that revoke access tokens. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    users: Arc<RwLock<HashMap<String, Standing>>>,
}

impl Revocations {
    /// Whether a verified token must be refused anyway.
    pub fn refuses(&self, claims: &Claims) -> bool {
        let users = self.users.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        users.get(&claims.sub).is_some_and(|s| {
            s.disabled || claims.sep < s.epoch || s.roles.as_ref().is_some_and(|r| !claims.roles.is_subset(r))
        })
    }

    /// Folds one user's event in.
    fn apply(&self, user: &str, event: &UserEvent) {
        let mut users = self.users.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let standing = match event {
            UserEvent::PasswordChanged { session_epoch, .. } => {
                let s = users.entry(user.to_owned()).or_default();
                s.epoch = s.epoch.max(*session_epoch);
                s
            }
            UserEvent::RolesChanged { roles } => {
                let s = users.entry(user.to_owned()).or_default();
                s.roles = Some(roles.clone());
                s
            }
            UserEvent::Disabled {} | UserEvent::Erased {} => {
                let s = users.entry(user.to_owned()).or_default();
                s.disabled = true;
                s
            }
            UserEvent::Enabled {} => match users.get_mut(user) {
                Some(s) => {
                    s.disabled = false;
                    s
                }
                None => return,
            },
            _ => return,
        };
        standing.changed = Some(Instant::now());
    }

    /// Forgets changes older than `keep`: no unexpired token predates them.
    fn prune(&self, keep: Duration) {
        let mut users = self.users.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        users.retain(|_, s| s.changed.is_some_and(|c| c.elapsed() < keep));
    }

    /// Follows user events from one token lifetime ago until `stop`, starting over after a
    /// failure where it left off. The node is not ready until they are read up to the present:
    /// until then a revoked token could still pass.
    pub fn follow(
        &self,
        stream: &Stream,
        access_ttl: Duration,
        readiness: Readiness,
        stop: &watch::Receiver<bool>,
    ) {
        let (me, stream, mut stop) = (self.clone(), stream.clone(), stop.clone());
        let keep = access_ttl + MARGIN;
        tokio::spawn(async move {
            let mut last_seq = 0;
            while !*stop.borrow() {
                let deliver_policy = if last_seq == 0 {
                    DeliverPolicy::ByStartTime { start_time: time::OffsetDateTime::now_utc() - keep }
                } else {
                    DeliverPolicy::ByStartSequence { start_sequence: last_seq + 1 }
                };
                match me.run(&stream, deliver_policy, keep, &readiness, &mut last_seq, &mut stop).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "token revocation feed stopped; restarting"),
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => {}
                }
            }
        });
    }

    async fn run(
        &self,
        stream: &Stream,
        deliver_policy: DeliverPolicy,
        keep: Duration,
        readiness: &Readiness,
        last_seq: &mut u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: Subjects.kind_events(EntityKind::User),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        if consumer.cached_info().num_pending == 0 {
            readiness.set_revocations_loaded();
        }
        let mut messages = consumer.messages().await?;
        let mut pruned = Instant::now();
        loop {
            let next = tokio::select! {
                m = messages.next() => m,
                _ = stop.changed() => return Ok(()),
            };
            let Some(m) = next else { return Ok(()) };
            let m = m?;
            let info = m.info()?;
            *last_seq = info.stream_sequence;
            let caught_up = info.pending == 0;
            let user = Subjects.entity_id_of(EntityKind::User, &m.subject);
            // Events this release cannot read revoke nothing it knows of.
            if let (Some(user), Ok(commit)) = (user, serde_json::from_slice::<Commit<UserEvent>>(&m.payload))
            {
                for e in &commit {
                    self.apply(&user, &e.body);
                }
            }
            if caught_up {
                readiness.set_revocations_loaded();
            }
            if pruned.elapsed() > MARGIN {
                self.prune(keep);
                pruned = Instant::now();
            }
        }
    }
}
