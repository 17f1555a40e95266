//! Delivery: a durable consumer per channel on `SOUK_NOTIFY`, shared by every node, hands
//! each notification to this node's channel actor. A claim in `souk_notify_claims` makes it go
//! out at most once: `sending` before the provider is called, `sent` after. A notification
//! found `sending` was cut off mid-send by a dying node; whether it left is unknown, so it is
//! dead-lettered for an operator rather than risk sending it twice. Failures are retried with
//! exponential back-off and jitter until the last attempt, then dead-lettered. A message to a
//! person whose account was erased after it was planned is withdrawn: it does not go out, and
//! nothing about them is recorded.

use super::channel::{ChannelMsg, ChannelRefs};
use super::providers::SendError;
use crate::metrics::ActorMetrics;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use souk_messages::ErrorCode;
use souk_messages::event::Event;
use souk_messages::notify::{Channel, DeadLetter, Notification, NotificationEvent, Outcome, WebhookBody};
use souk_messages::subject::{EntityKind, Subjects};
use souk_messages::user::{UserCommand, UserRequest};
use souk_nats::{Bus, BusError, Jet};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, watch};

/// Followed by the queue sequence of the copy being sent.
const SENDING: &[u8] = b"sending ";
const RETRY: &[u8] = b"retry";
const SENT: &[u8] = b"sent";
const DEAD: &[u8] = b"dead";

/// How deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before a notification is dead-lettered.
    pub max_attempts: u32,
    /// The pause after the first failure; doubled after each further one.
    pub base: Duration,
    /// The longest pause.
    pub max: Duration,
    /// How long one send may take before the claim is extended.
    pub ack_wait: Duration,
}

impl RetryPolicy {
    /// The pause after failed attempt `n` (from 1): exponential, with "equal jitter" so
    /// retries from many nodes do not arrive together.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self.base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)));
        let capped = exp.min(self.max);
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        capped.mul_f64(0.5 + jitter / 2.0)
    }
}

/// What a channel's worker needs.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub(crate) jet: Jet,
    pub(crate) bus: Bus,
    pub(crate) channels: ChannelRefs,
    pub(crate) retry: RetryPolicy,
    pub(crate) webhook_retry: RetryPolicy,
    pub(crate) metrics: ActorMetrics,
}

/// Parallel sends per channel per node; the channel actor still paces them.
const PARALLEL: usize = 16;

/// Runs `channel`'s worker until `stop` is set.
pub(crate) async fn run(worker: Worker, channel: Channel, stop: watch::Receiver<bool>) {
    let what = format!("notification worker ({channel})");
    crate::restart::restarting(&what, stop, |stop| drive(&worker, channel, stop)).await;
}

async fn drive(
    w: &Worker,
    channel: Channel,
    mut stop: watch::Receiver<bool>,
) -> Result<(), souk_nats::NatsSource> {
    let name = format!("souk_notify_{channel}");
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: Subjects.notify(channel),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: w.policy(channel).ack_wait,
        max_ack_pending: 4 * PARALLEL as i64,
        ..Default::default()
    };
    let consumer = w.jet.notify.get_or_create_consumer(&name, config).await?;
    let mut messages = consumer.messages().await?;
    let slots = Arc::new(Semaphore::new(PARALLEL));
    loop {
        let Some(msg) = crate::restart::next_or_stop(&mut messages, &mut stop).await else { return Ok(()) };
        let msg = msg?;
        let Ok(permit) = slots.clone().acquire_owned().await else { return Ok(()) };
        let w = w.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("notification", subject = %msg.subject);
            if let Err(e) = tracing::Instrument::instrument(w.deliver(&msg), span).await {
                tracing::warn!(subject = %msg.subject, error = %e, "notification delivery interrupted; it will be redelivered");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            drop(permit);
        });
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

impl Worker {
    /// How `channel`'s deliveries are retried: webhooks for up to a day, the others sooner.
    fn policy(&self, channel: Channel) -> &RetryPolicy {
        if channel == Channel::Webhook { &self.webhook_retry } else { &self.retry }
    }

    async fn deliver(&self, msg: &async_nats::jetstream::Message) -> Result<(), Failure> {
        let n: Notification = match serde_json::from_slice(&msg.payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(subject = %msg.subject, error = %e, "dropping an unreadable notification");
                msg.ack_with(AckKind::Term).await?;
                return Ok(());
            }
        };
        if self.to_someone_erased(&n).await? {
            self.metrics.notification(n.channel, "withdrawn");
            msg.ack().await?;
            return Ok(());
        }
        let info = msg.info()?;
        let delivered = u32::try_from(info.delivered).unwrap_or(u32::MAX);
        let attempt = n.prior_attempts.saturating_add(delivered);
        let mut sending = SENDING.to_vec();
        sending.extend_from_slice(info.stream_sequence.to_string().as_bytes());
        let key = n.id.as_str();
        let claims = &self.jet.notify_claims;
        let entry = claims.entry(key).await?.filter(|e| e.operation == kv::Operation::Put);
        match entry {
            None => {
                if claims.create(key, sending.into()).await.is_err() {
                    // Another copy was claimed a moment ago; look again shortly.
                    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await?;
                    return Ok(());
                }
            }
            Some(e) if e.value.as_ref() == SENT || e.value.as_ref() == DEAD => {
                self.metrics.notification(n.channel, "duplicate");
                msg.ack().await?;
                return Ok(());
            }
            Some(e) if e.value.starts_with(SENDING) && e.value.as_ref() != sending.as_slice() => {
                // Another copy of it (queued again by a late replan) is going out.
                self.metrics.notification(n.channel, "duplicate");
                msg.ack().await?;
                return Ok(());
            }
            Some(e) if e.value.starts_with(SENDING) => {
                let error = "interrupted mid-send by a node failure; it may or may not have been delivered";
                self.dead_letter(&n, attempt, error, e.revision).await?;
                msg.ack().await?;
                return Ok(());
            }
            Some(e) => {
                if claims.update(key, sending.into(), e.revision).await.is_err() {
                    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await?;
                    return Ok(());
                }
            }
        }
        let outcome = self.send(msg, &n).await;
        let revision = claims.entry(key).await?.map_or(0, |e| e.revision);
        // Erased while it was being sent: the erasure has looked for its record already, so
        // none is made. Not knowing (the account cannot be asked now) records it as before.
        if self.to_someone_erased(&n).await.unwrap_or(false) {
            claims.update(key, if outcome.is_ok() { SENT } else { DEAD }.into(), revision).await?;
            self.metrics.notification(n.channel, "withdrawn");
            msg.ack().await?;
            return Ok(());
        }
        match outcome {
            Ok(reference) => {
                claims.update(key, SENT.into(), revision).await?;
                self.record(&n, attempt, Outcome::Sent, Some(reference)).await?;
                self.metrics.notification(n.channel, "sent");
                msg.ack().await?;
            }
            Err(SendError::Permanent(e)) => {
                self.dead_letter(&n, attempt, &e, revision).await?;
                msg.ack().await?;
            }
            Err(e) if delivered >= self.policy(n.channel).max_attempts => {
                self.dead_letter(&n, attempt, &e.to_string(), revision).await?;
                msg.ack().await?;
            }
            Err(e) => {
                claims.update(key, RETRY.into(), revision).await?;
                self.record(&n, attempt, Outcome::Failed, Some(e.to_string())).await?;
                self.metrics.notification(n.channel, "failed");
                let pause = self.policy(n.channel).backoff(delivered);
                tracing::info!(channel = %n.channel, notification = %n.id, attempt, error = %e, ?pause, "notification failed; retrying");
                msg.ack_with(AckKind::Nak(Some(pause))).await?;
            }
        }
        Ok(())
    }

    /// Whether `n` is to a person whose account has been erased since it was planned.
    async fn to_someone_erased(&self, n: &Notification) -> Result<bool, BusError> {
        let Some(user) = &n.customer else { return Ok(false) };
        match self.bus.request(&UserRequest::new(user.clone(), UserCommand::Get)).await {
            Ok(_) => Ok(false),
            Err(BusError::Rejected(e)) if e.code == ErrorCode::UnknownUser => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Hands `n` to the channel actor, keeping the message claimed while the provider works.
    async fn send(
        &self,
        msg: &async_nats::jetstream::Message,
        n: &Notification,
    ) -> Result<String, SendError> {
        let Some(actor) = self.channels.read().ok().and_then(|m| m.get(&n.channel).cloned()) else {
            return Err(SendError::Retryable(format!("no {} channel on this node", n.channel)));
        };
        let call = actor.call(|reply| ChannelMsg::Send(Box::new(n.clone()), reply), None);
        tokio::pin!(call);
        let every = (self.policy(n.channel).ack_wait / 3).max(Duration::from_millis(100));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                r = &mut call => {
                    return match r {
                        Ok(ractor::rpc::CallResult::Success(outcome)) => outcome,
                        Ok(_) => Err(SendError::Retryable("the channel did not answer".into())),
                        Err(e) => Err(SendError::Retryable(format!("the channel is down: {e}"))),
                    };
                }
                _ = progress.tick() => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        n: &Notification,
        attempts: u32,
        error: &str,
        revision: u64,
    ) -> Result<(), Failure> {
        let letter = DeadLetter {
            notification: n.clone(),
            attempts,
            error: error.to_owned(),
            at: OffsetDateTime::now_utc(),
        };
        self.jet
            .js
            .publish(Subjects.dead_letters(n.channel), serde_json::to_vec(&letter)?.into())
            .await?
            .await?;
        self.jet.notify_claims.update(n.id.as_str(), DEAD.into(), revision).await?;
        self.record(n, attempts, Outcome::DeadLettered, Some(error.to_owned())).await?;
        self.metrics.notification(n.channel, "dead_lettered");
        tracing::warn!(channel = %n.channel, notification = %n.id, attempts, error, "notification dead-lettered");
        Ok(())
    }

    /// Records attempt `attempt` on `souk.evt.notification.<id>` for the delivery log.
    async fn record(
        &self,
        n: &Notification,
        attempt: u32,
        outcome: Outcome,
        detail: Option<String>,
    ) -> Result<(), Failure> {
        let event = Event {
            event_id: uuid::Uuid::new_v4(),
            id: n.id.to_string(),
            version: u64::from(attempt),
            time: OffsetDateTime::now_utc(),
            correlation_id: n.order.as_ref().map(|o| o.to_string()),
            actor: None,
            body: NotificationEvent::Attempted {
                channel: n.channel,
                topic: n.topic,
                to: n.to.clone(),
                customer: n.customer.clone(),
                order: n.order.clone(),
                outcome,
                detail,
                webhook: (n.channel == Channel::Webhook).then(|| WebhookBody {
                    event_type: n.subject.clone().unwrap_or_default(),
                    body: n.text.clone(),
                }),
            },
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}.{attempt}", n.id).as_str());
        let subject = Subjects.entity_events(EntityKind::Notification, n.id.as_str());
        self.jet
            .js
            .publish_with_headers(subject, headers, serde_json::to_vec(&vec![event])?.into())
            .await?
            .await?;
        Ok(())
    }
}
