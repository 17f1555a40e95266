//! Notifications: planners turn order, user and stock events into rendered messages, and
//! order, stock and product events into webhook posts, queued on `SOUK_NOTIFY`; per-channel
//! workers hand them to this node's channel actors (email, SMS, webhook),
//! which pace and protect their providers; every attempt is recorded for the delivery log, and
//! what still fails is dead-lettered on `SOUK_DLQ` for `souk notify dlq retry`.
//!
//! ```text
//! souk.evt.order|user|stock.> ─▶ planner ─▶ souk.notify.<channel> ─▶ worker ─▶ ChannelActor ─▶ provider
//!                                                                       │
//!                                            souk.evt.notification.<id> ◀┘ ─▶ souk.dlq.<channel>
//! ```

pub mod channel;
pub mod dlq;
mod plan;
pub mod providers;
pub mod render;
mod worker;

pub use channel::ChannelLimits;
pub use providers::{Provider, SendError};
pub use render::Shop;
pub use worker::RetryPolicy;

use crate::metrics::ActorMetrics;
use channel::{ChannelArgs, ChannelRefs, ChannelsSupervisor};
use ractor::{Actor, ActorRef};
use souk_messages::notify::Channel;
use souk_messages::subject::EntityKind;
use souk_nats::{Bus, Jet};
use souk_storage::UserRepo;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How a node sends notifications.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// The shop, as messages name it.
    pub shop: Shop,
    /// The shop's own templates, replacing built-in ones of the same name.
    pub templates: Option<std::path::PathBuf>,
    /// The email provider.
    pub email: Arc<dyn Provider>,
    /// The SMS provider.
    pub sms: Arc<dyn Provider>,
    /// Email pacing and breaker.
    pub email_limits: ChannelLimits,
    /// SMS pacing and breaker.
    pub sms_limits: ChannelLimits,
    /// Retries of email and SMS.
    pub retry: RetryPolicy,
    /// Webhook deliveries: pacing, breakers (one per endpoint), retries, address policy.
    pub webhooks: WebhookChannel,
    /// Events older than this are not announced.
    pub max_event_age: Duration,
}

/// How webhooks are delivered.
#[derive(Debug, Clone, Copy)]
pub struct WebhookChannel {
    /// Pacing and the per-endpoint breaker.
    pub limits: ChannelLimits,
    /// Retries (for up to about a day by default).
    pub retry: RetryPolicy,
    /// Allow endpoints on loopback and private addresses.
    pub allow_private: bool,
    /// How long one delivery may take.
    pub timeout: Duration,
}

/// The running notification system of a node.
#[derive(Debug)]
pub(crate) struct Notifier {
    supervisor: ActorRef<()>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Why notifications could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A template does not compile.
    #[error(transparent)]
    Template(#[from] render::RenderError),
    /// The channel actors did not start.
    #[error("cannot start the notification channels: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    /// The webhook endpoints could not be read.
    #[error("cannot watch the webhook endpoints: {0}")]
    Endpoints(#[from] souk_nats::KvError),
}

/// Keeps `souk_notification_pace_per_second` at this node's share of each channel's pace as
/// nodes come and go.
async fn show_paces(
    paces: Vec<(Channel, f64)>,
    mut members: watch::Receiver<usize>,
    metrics: ActorMetrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for (channel, per_second) in &paces {
            metrics.set_pace(*channel, channel::share(*per_second, &members));
        }
        tokio::select! {
            changed = members.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

impl Notifier {
    /// Starts the channel actors, the planners and the workers.
    pub(crate) async fn start(
        jet: &Jet,
        bus: &Bus,
        users: UserRepo,
        metrics: ActorMetrics,
        s: NotifySettings,
        members: watch::Receiver<usize>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self, NotifyError> {
        let renderer = Arc::new(render::Renderer::new(s.shop.clone(), s.templates.as_deref())?);
        let registry = souk_nats::notify::Endpoints::new(jet);
        let endpoints = registry.live().await?;
        let webhooks = providers::WebhookProvider::new(providers::WebhookSettings {
            endpoints: endpoints.clone(),
            registry,
            allow_private: s.webhooks.allow_private,
            timeout: s.webhooks.timeout,
        });
        let refs: ChannelRefs = ChannelRefs::default();
        let args = vec![
            ChannelArgs {
                channel: Channel::Email,
                provider: s.email,
                limits: s.email_limits,
                members: members.clone(),
                metrics: metrics.clone(),
            },
            ChannelArgs {
                channel: Channel::Sms,
                provider: s.sms,
                limits: s.sms_limits,
                members: members.clone(),
                metrics: metrics.clone(),
            },
            ChannelArgs {
                channel: Channel::Webhook,
                provider: Arc::new(webhooks),
                limits: s.webhooks.limits,
                members: members.clone(),
                metrics: metrics.clone(),
            },
        ];
        let paces: Vec<(Channel, f64)> = args.iter().map(|a| (a.channel, a.limits.per_second)).collect();
        let (supervisor, _) = Actor::spawn(None, ChannelsSupervisor, (args, refs.clone())).await?;
        let planner = Arc::new(plan::Planner {
            jet: jet.clone(),
            bus: bus.clone(),
            users,
            renderer,
            endpoints,
            max_event_age: s.max_event_age,
            reset_url: format!("{}/reset-password", s.shop.url.trim_end_matches('/')),
            metrics: metrics.clone(),
        });
        let worker = worker::Worker {
            jet: jet.clone(),
            bus: bus.clone(),
            channels: refs,
            retry: s.retry,
            webhook_retry: s.webhooks.retry,
            metrics,
        };
        let mut tasks = Vec::new();
        for kind in [EntityKind::Order, EntityKind::User, EntityKind::Stock, EntityKind::Product] {
            tasks.push(tokio::spawn(plan::run(planner.clone(), kind, stop.clone())));
        }
        for channel in Channel::ALL {
            tasks.push(tokio::spawn(worker::run(worker.clone(), channel, stop.clone())));
        }
        tasks.push(tokio::spawn(show_paces(paces, members, worker.metrics.clone(), stop.clone())));
        Ok(Self { supervisor, tasks })
    }

    /// Stops the channel actors (after the tasks have stopped).
    pub(crate) fn stop(&self) {
        self.supervisor.stop(Some("node leaving".into()));
    }
}
