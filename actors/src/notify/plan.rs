//! Planning: durable consumers on order, user and stock events decide who hears about each
//! event over which channel, render the messages, and queue them on `SOUK_NOTIFY`. The
//! queue's message id is the notification id, so an event planned twice (redelivered, or
//! planned by two nodes) is queued once; the delivery claim covers anything later.

use super::render::{
    Renderer, customer_context, dispute_message, order_message, reset_message, stock_message,
};
use async_nats::jetstream::AckKind;
use minijinja::Value;
use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use souk_messages::event::Event;
use souk_messages::notify::{Channel, Notification, NotificationId, Topic};
use souk_messages::order::{CancelReason, DisputeStatus, OrderCommand, OrderEvent, OrderId, OrderRequest};
use souk_messages::stock::StockEvent;
use souk_messages::subject::{EntityKind, Subjects};
use souk_messages::user::{Locale, UserCommand, UserEvent, UserRequest, UserView};
use souk_messages::{Sku, UserId};
use souk_nats::{Bus, BusError, Jet};
use souk_storage::UserRepo;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};

/// What planning needs.
#[derive(Debug)]
pub(crate) struct Planner {
    pub(crate) jet: Jet,
    pub(crate) bus: Bus,
    pub(crate) users: UserRepo,
    pub(crate) renderer: Arc<Renderer>,
    /// Where messages that cannot be rendered are counted.
    pub(crate) metrics: crate::metrics::ActorMetrics,
    /// The webhook endpoints.
    pub(crate) endpoints: souk_nats::notify::LiveEndpoints,
    /// Events older than this are history, not news: nobody is told about them (a cluster
    /// that gains notifications does not mail its whole past).
    pub(crate) max_event_age: Duration,
    /// Where a password-reset link points: `<shop url>/reset-password?token=…`.
    pub(crate) reset_url: String,
}

/// Why planning one event failed; it is planned again shortly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot queue a notification: {0}")]
    Queue(String),
    #[error("cannot read the staff list: {0}")]
    Storage(#[from] souk_storage::StorageError),
}

/// Commits one node plans at once per kind: planning mostly waits (on the entities it reads
/// and on the queue), so one at a time would fall behind a busy shop.
const PARALLEL: usize = 16;

/// Runs the planner of `kind`'s events until `stop` is set.
pub(crate) async fn run(planner: Arc<Planner>, kind: EntityKind, stop: watch::Receiver<bool>) {
    let what = format!("notification planner ({kind})");
    crate::restart::restarting(&what, stop, |stop| drive(&planner, kind, stop)).await;
}

async fn drive(
    p: &Arc<Planner>,
    kind: EntityKind,
    mut stop: watch::Receiver<bool>,
) -> Result<(), souk_nats::NatsSource> {
    let name = format!("souk_notify_plan_{kind}");
    let consumer = crate::restart::shared_consumer(&p.jet, &name, kind, Duration::from_secs(30), 256).await?;
    let mut messages = consumer.messages().await?;
    let slots = Arc::new(Semaphore::new(PARALLEL));
    loop {
        let Some(msg) = crate::restart::next_or_stop(&mut messages, &mut stop).await else { return Ok(()) };
        let msg = msg?;
        let Ok(permit) = slots.clone().acquire_owned().await else { return Ok(()) };
        let p = p.clone();
        tokio::spawn(async move {
            // Each notification's id comes from its event, so plans made side by side (or
            // twice) queue each message once, whatever order they finish in.
            if let Err(e) = p.plan_message(kind, &msg).await {
                tracing::warn!(subject = %msg.subject, error = %e, "could not acknowledge a planned commit");
            }
            drop(permit);
        });
    }
}

impl Planner {
    /// Plans one commit of `kind` and acknowledges it, or asks for it again shortly.
    async fn plan_message(
        &self,
        kind: EntityKind,
        msg: &async_nats::jetstream::Message,
    ) -> Result<(), souk_nats::NatsSource> {
        let all = |_: &str| true;
        let planned = match kind {
            EntityKind::Order => self.plan_commit(&msg.payload, all, |e| self.order(&msg.subject, e)).await,
            EntityKind::User => self.plan_commit(&msg.payload, all, |e| self.user(&msg.subject, e)).await,
            EntityKind::Stock => {
                let low = |t: &str| t == StockEvent::LOW_TYPE;
                self.plan_commit(&msg.payload, low, |e| self.stock(&msg.subject, e)).await
            }
            EntityKind::Product => {
                let none = |_: &str| false;
                self.plan_commit(&msg.payload, none, |_: Event<souk_messages::product::ProductEvent>| async {
                    Ok(Vec::new())
                })
                .await
            }
            _ => Ok(()),
        };
        match planned {
            Ok(()) => msg.ack().await,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "could not plan notifications; retrying");
                msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await
            }
        }
    }

    /// Plans the notifications of one commit. `news` says which event types `plan` can turn
    /// into messages: a commit with none of those and none an endpoint wants is acknowledged
    /// without decoding it (most stock commits are reservations nobody is told about).
    async fn plan_commit<E, F, Fut>(
        &self,
        payload: &[u8],
        news: impl Fn(&str) -> bool,
        plan: F,
    ) -> Result<(), PlanError>
    where
        E: DeserializeOwned,
        F: Fn(Event<E>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Notification>, PlanError>>,
    {
        let Some(types) = souk_messages::event::commit_types(payload) else {
            tracing::error!("not planning an unreadable commit");
            return Ok(());
        };
        if !types.iter().any(|t| news(t) || self.endpoints.any_wants(t)) {
            return Ok(());
        }
        // Commits of event types this release does not know are not for it to announce.
        let Ok(commit) = serde_json::from_slice::<Vec<serde_json::Value>>(payload) else {
            tracing::error!("not planning an unreadable commit");
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        for raw in commit {
            // Events of types this release does not know are not for it to announce.
            let Ok(event) = Event::<E>::deserialize(&raw) else { continue };
            if now - event.time > self.max_event_age {
                continue;
            }
            let mut planned = self.webhooks(&event, &raw);
            planned.extend(plan(event).await?);
            for n in planned {
                self.queue(&n).await?;
            }
        }
        Ok(())
    }

    /// One post of `raw` per endpoint that wants its type.
    fn webhooks<T>(&self, event: &Event<T>, raw: &serde_json::Value) -> Vec<Notification> {
        let Some(kind) = raw.get("type").and_then(|t| t.as_str()) else { return Vec::new() };
        let wanting = self.endpoints.wanting(kind);
        if wanting.is_empty() {
            // Most events (every reservation) interest no endpoint: skip building the body.
            return Vec::new();
        }
        let body = souk_messages::notify::webhook_payload(raw).to_string();
        wanting
            .into_iter()
            .map(|endpoint| Notification {
                id: NotificationId::of(&event.event_id, Channel::Webhook, endpoint.id.as_str()),
                channel: Channel::Webhook,
                topic: Topic::Event,
                to: endpoint.id.to_string(),
                customer: None,
                order: None,
                subject: Some(kind.to_owned()),
                text: body.clone(),
                html: None,
                caused_at: event.time,
                prior_attempts: 0,
            })
            .collect()
    }

    async fn queue(&self, n: &Notification) -> Result<(), PlanError> {
        souk_nats::notify::queue(&self.jet, n, n.id.as_str())
            .await
            .map_err(|e| PlanError::Queue(e.to_string()))
    }

    /// The messages of `topic` to `user` over every channel they can be reached on, each with
    /// `context` for the language it is written in (amounts are written that language's way).
    fn to_user(
        &self,
        event: &Event<impl Sized>,
        topic: Topic,
        user: &UserView,
        order: Option<&OrderId>,
        context: impl Fn(&Locale) -> Value,
    ) -> Vec<Notification> {
        let customer = customer_context(user.name.as_str());
        let mut out = Vec::new();
        let mut reach = vec![(Channel::Email, user.email.to_string())];
        if let (Some(phone), false) = (&user.phone, user.sms_opt_out) {
            reach.push((Channel::Sms, phone.as_str().to_owned()));
        }
        for (channel, to) in reach {
            let language = self.renderer.language(topic, channel, user.locale.as_ref());
            let ctx = minijinja::context! { customer => customer.clone(), ..context(&language) };
            let r = match self.renderer.render(topic, channel, user.locale.as_ref(), &ctx) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                // The same template fails the same way however often it is tried: this message
                // is not sent, and the person's others (and everyone else's) still are. The
                // start-up check finds most such templates; this is one that fails on this
                // event's data alone.
                Err(e) => {
                    tracing::error!(%channel, topic = topic.as_str(), error = %e, "a message could not be rendered and is not sent");
                    self.metrics.notification(channel, "unrenderable");
                    continue;
                }
            };
            out.push(Notification {
                id: NotificationId::of(&event.event_id, channel, &to),
                channel,
                topic,
                to,
                customer: Some(user.id.clone()),
                order: order.cloned(),
                subject: r.subject,
                text: r.text,
                html: r.html,
                caused_at: event.time,
                prior_attempts: 0,
            });
        }
        out
    }

    async fn user_view(&self, id: UserId) -> Result<UserView, BusError> {
        self.bus.request(&UserRequest::new(id, UserCommand::Get)).await
    }

    async fn order(&self, subject: &str, event: Event<OrderEvent>) -> Result<Vec<Notification>, PlanError> {
        let topic = match &event.body {
            OrderEvent::Confirmed {} => Topic::OrderConfirmed,
            OrderEvent::Shipped { .. } => Topic::OrderShipped,
            OrderEvent::Delivered {} => Topic::OrderDelivered,
            OrderEvent::Cancelled {
                reason:
                    CancelReason::PaymentDeclined | CancelReason::InsufficientFunds | CancelReason::PaymentFailed,
                ..
            } => Topic::PaymentFailed,
            OrderEvent::Cancelled { .. } => Topic::OrderCancelled,
            // Staff whose cancellation was refused have the alert; the customer, who asked for
            // nothing, is not told of a cancellation that did not happen.
            OrderEvent::CancelRefused { reason: CancelReason::CustomerRequest } => Topic::OrderCancelRefused,
            OrderEvent::Refunded { .. } => Topic::OrderRefunded,
            OrderEvent::Disputed { .. } => Topic::OrderDisputed,
            _ => return Ok(Vec::new()),
        };
        let Some(id) =
            Subjects.entity_id_of(EntityKind::Order, subject).and_then(|s| OrderId::parse(&s).ok())
        else {
            return Ok(Vec::new());
        };
        let order = match self.bus.request(&OrderRequest::new(id.clone(), OrderCommand::Get)).await {
            Ok(o) => o,
            Err(BusError::Rejected(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if topic == Topic::OrderDisputed {
            // Staff answer a dispute, before its deadline; the customer's bank opened it. One
            // told only once it had ended (or planned late, after that) needs no answer.
            if order.dispute.as_ref().is_none_or(|d| d.status != DisputeStatus::Open) {
                return Ok(Vec::new());
            }
            return self
                .to_staff(&event, topic, Some(&id), |language: &Locale| dispute_message(&order, language))
                .await;
        }
        let user = match self.user_view(order.customer.clone()).await {
            Ok(u) => u,
            Err(BusError::Rejected(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let (refund, tracking) = match &event.body {
            OrderEvent::Refunded { amount, .. } => (Some(*amount), None),
            OrderEvent::Shipped { tracking } => (None, Some(tracking.as_str())),
            _ => (None, None),
        };
        let context = |language: &Locale| order_message(&order, refund, tracking, language);
        Ok(self.to_user(&event, topic, &user, Some(&id), context))
    }

    async fn user(&self, subject: &str, event: Event<UserEvent>) -> Result<Vec<Notification>, PlanError> {
        let UserEvent::PasswordResetRequested { email, token, expires_at } = &event.body else {
            return Ok(Vec::new());
        };
        let Some(id) = Subjects.entity_id_of(EntityKind::User, subject).and_then(|s| UserId::parse(s).ok())
        else {
            return Ok(Vec::new());
        };
        let user = match self.user_view(id).await {
            Ok(u) => u,
            Err(BusError::Rejected(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let link = format!("{}?token={}", self.reset_url, token.expose());
        let expires = expires_at.replace_nanosecond(0).unwrap_or(*expires_at);
        let expires = expires.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        // How long the link works, in whole minutes rounded up: words for any language, where a
        // time would need the reader's time zone.
        let valid_minutes = ((*expires_at - event.time).whole_seconds().max(0) + 59) / 60;
        let ctx = reset_message(&link, &expires, valid_minutes);
        // The link goes to the address the reset was asked for, never by text message.
        let user = UserView { email: email.clone(), phone: None, ..user };
        Ok(self.to_user(&event, Topic::PasswordReset, &user, None, |_: &Locale| ctx.clone()))
    }

    async fn stock(&self, subject: &str, event: Event<StockEvent>) -> Result<Vec<Notification>, PlanError> {
        // The item publishes `stock.low` once per fall below its threshold.
        let StockEvent::Low { levels } = &event.body else { return Ok(Vec::new()) };
        let Some(sku) = Subjects.entity_id_of(EntityKind::Stock, subject).and_then(|s| Sku::parse(&s).ok())
        else {
            return Ok(Vec::new());
        };
        let ctx = stock_message(sku.as_str(), levels);
        self.to_staff(&event, Topic::StockLow, None, |_: &Locale| ctx.clone()).await
    }

    /// `topic`'s message to every staff member, by email only.
    async fn to_staff<E>(
        &self,
        event: &Event<E>,
        topic: Topic,
        order: Option<&OrderId>,
        context: impl Fn(&Locale) -> Value,
    ) -> Result<Vec<Notification>, PlanError> {
        let mut out = Vec::new();
        for staff in self.users.staff().await? {
            let staff = UserView { phone: None, ..staff };
            out.extend(self.to_user(event, topic, &staff, order, &context));
        }
        Ok(out)
    }
}
