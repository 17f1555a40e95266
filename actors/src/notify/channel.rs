//! A channel actor per provider kind (email, SMS, webhook): it owns its provider, paces sends
//! to the provider's rate limit and keeps a circuit breaker, so a provider that keeps failing
//! is left alone for a while instead of being hammered. The actor only decides; each send runs
//! in a task of its own (as many at once as the worker hands over), so a slow destination
//! holds no other up. The channels supervisor restarts a channel that panics; its breaker
//! starts closed again.

use super::providers::{Provider, SendError};
use crate::metrics::ActorMetrics;
use futures::FutureExt as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use souk_messages::notify::{Channel, Notification};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a channel paces and protects its provider.
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// Sends per second at most for the whole cluster (each live node takes its share); 0: no
    /// limit.
    pub per_second: f64,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one trial send.
    pub breaker_cooldown: Duration,
}

/// What a channel actor is asked.
#[derive(Debug)]
pub enum ChannelMsg {
    /// Send one notification; the reply is the provider's reference or why it failed.
    Send(Box<Notification>, RpcReplyPort<Result<String, SendError>>),
    /// A send's slot of the provider's pace has come.
    Due(Box<Notification>, RpcReplyPort<Result<String, SendError>>),
    /// A send ended: whether its destination looked healthy, for that destination's breaker.
    Settled {
        /// The destination's breaker.
        key: Option<String>,
        /// `None` for a healthy answer, or why the provider failed.
        failure: Option<String>,
    },
    /// A breaker's cool-down is over: report whether any is still open, so the gauge does not
    /// show a breaker open until the next send.
    Recheck,
}

/// A channel: its provider, its pace, its breaker.
#[derive(Debug)]
pub struct ChannelActor;

/// The state of one channel actor.
#[derive(Debug)]
pub struct ChannelState {
    channel: Channel,
    provider: Arc<dyn Provider>,
    limits: ChannelLimits,
    members: watch::Receiver<usize>,
    next_slot: Instant,
    /// One breaker per destination the provider names (one for the whole channel, or one per
    /// webhook endpoint).
    breakers: HashMap<Option<String>, Breaker>,
    metrics: ActorMetrics,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    /// The one send let through after a cool-down is under way: the others wait for it.
    trial: bool,
}

/// What a channel actor starts with.
#[derive(Debug, Clone)]
pub struct ChannelArgs {
    /// The channel.
    pub channel: Channel,
    /// Its provider.
    pub provider: Arc<dyn Provider>,
    /// Its limits.
    pub limits: ChannelLimits,
    /// How many nodes are live: they share the pace.
    pub members: watch::Receiver<usize>,
    /// Where breaker state is reported.
    pub metrics: ActorMetrics,
}

impl Actor for ChannelActor {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Arguments = ChannelArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<ChannelMsg>,
        a: ChannelArgs,
    ) -> Result<ChannelState, ActorProcessingErr> {
        a.metrics.set_breaker(a.channel, false);
        Ok(ChannelState {
            channel: a.channel,
            provider: a.provider,
            limits: a.limits,
            members: a.members,
            next_slot: Instant::now(),
            breakers: HashMap::new(),
            metrics: a.metrics,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ChannelMsg>,
        msg: ChannelMsg,
        st: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        let (n, reply) = match msg {
            ChannelMsg::Send(n, reply) => {
                let now = Instant::now();
                // Refused at once while its destination's breaker is open; otherwise it takes
                // the next free slot of the provider's pace now, so that sends waiting for
                // their slots keep the pace between them.
                if st.breakers.get(&st.provider.breaker_key(&n)).is_some_and(|b| b.refuses(now)) {
                    let _ = reply.send(Err(SendError::BreakerOpen));
                    return Ok(());
                }
                let slot = st.take_slot(now);
                if slot > now {
                    me.send_after(slot - now, move || ChannelMsg::Due(n, reply));
                    return Ok(());
                }
                (n, reply)
            }
            ChannelMsg::Due(n, reply) => (n, reply),
            ChannelMsg::Settled { key, failure } => {
                st.settle(&me, key, failure);
                return Ok(());
            }
            ChannelMsg::Recheck => {
                st.report_breakers();
                return Ok(());
            }
        };
        // The breaker is asked again when the send is due: one that opened while the send
        // waited for its slot refuses it too.
        let now = Instant::now();
        let key = st.provider.breaker_key(&n);
        let threshold = st.limits.breaker_failures.max(1);
        let breaker = st.breakers.entry(key.clone()).or_default();
        if breaker.refuses(now) {
            let _ = reply.send(Err(SendError::BreakerOpen));
            return Ok(());
        }
        if breaker.open_until.take().is_some() {
            // Half open: this send is the trial; one more failure opens it again.
            breaker.failures = threshold - 1;
            breaker.trial = true;
        }
        let provider = st.provider.clone();
        tokio::spawn(async move {
            let sent = std::panic::AssertUnwindSafe(provider.send(&n)).catch_unwind().await;
            let outcome = sent.unwrap_or_else(|_| Err(SendError::Retryable("the provider failed".into())));
            let failure = match &outcome {
                // A refused message says nothing about the provider's health.
                Ok(_) | Err(SendError::Permanent(_) | SendError::BreakerOpen) => None,
                Err(SendError::Retryable(e)) => Some(e.clone()),
            };
            // The breaker learns the outcome before the worker does, so the worker's next send
            // meets it up to date.
            let _ = me.cast(ChannelMsg::Settled { key, failure });
            let _ = reply.send(outcome);
        });
        Ok(())
    }
}

impl Breaker {
    /// Whether a send now is refused: the breaker is open, or its one trial is under way.
    fn refuses(&self, now: Instant) -> bool {
        self.trial || self.open_until.is_some_and(|until| now < until)
    }
}

/// This node's share of a pace of `per_second` for the whole cluster.
pub(crate) fn share(per_second: f64, members: &watch::Receiver<usize>) -> f64 {
    per_second / (*members.borrow()).max(1) as f64
}

impl ChannelState {
    /// The next free slot of the provider's pace, taken: `now` when there is no limit.
    fn take_slot(&mut self, now: Instant) -> Instant {
        if self.limits.per_second <= 0.0 {
            return now;
        }
        let slot = self.next_slot.max(now);
        self.next_slot = slot + Duration::from_secs_f64(1.0 / share(self.limits.per_second, &self.members));
        slot
    }

    /// Counts a send's outcome against its destination's breaker.
    fn settle(&mut self, me: &ActorRef<ChannelMsg>, key: Option<String>, failure: Option<String>) {
        let threshold = self.limits.breaker_failures.max(1);
        let destination = key.clone();
        let breaker = self.breakers.entry(key).or_default();
        breaker.trial = false;
        match failure {
            None => *breaker = Breaker::default(),
            Some(e) => {
                breaker.failures += 1;
                if breaker.failures >= threshold && breaker.open_until.is_none() {
                    tracing::warn!(channel = %self.channel, provider = self.provider.name(), destination = destination.as_deref(),
                        error = %e, "circuit breaker open: the provider keeps failing");
                    breaker.open_until = Some(Instant::now() + self.limits.breaker_cooldown);
                    me.send_after(self.limits.breaker_cooldown, || ChannelMsg::Recheck);
                }
            }
        }
        // Forget healthy destinations, so the map holds only those with a recent failure.
        self.breakers.retain(|_, b| b.failures > 0 || b.open_until.is_some() || b.trial);
        self.report_breakers();
    }

    /// Sets the breaker gauge: whether any destination's breaker is open now.
    fn report_breakers(&self) {
        let any_open = self.breakers.values().any(|b| b.open_until.is_some_and(|u| u > Instant::now()));
        self.metrics.set_breaker(self.channel, any_open);
    }
}

/// Supervises the channel actors and restarts one that fails.
#[derive(Debug)]
pub struct ChannelsSupervisor;

/// The channels and how to start each again.
#[derive(Debug)]
pub struct ChannelsState {
    args: HashMap<Channel, ChannelArgs>,
    live: Arc<std::sync::RwLock<HashMap<Channel, ActorRef<ChannelMsg>>>>,
}

/// Where the running channel actors are found; updated when one is restarted.
pub type ChannelRefs = Arc<std::sync::RwLock<HashMap<Channel, ActorRef<ChannelMsg>>>>;

impl Actor for ChannelsSupervisor {
    type Msg = ();
    type State = ChannelsState;
    type Arguments = (Vec<ChannelArgs>, ChannelRefs);

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        (args, live): (Vec<ChannelArgs>, ChannelRefs),
    ) -> Result<ChannelsState, ActorProcessingErr> {
        let mut st = ChannelsState { args: HashMap::new(), live };
        for a in args {
            st.args.insert(a.channel, a.clone());
            spawn(&me, &st, a).await?;
        }
        Ok(st)
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        evt: SupervisionEvent,
        st: &mut ChannelsState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, e) = &evt {
            let failed = st
                .live
                .read()
                .ok()
                .and_then(|m| m.iter().find(|(_, r)| r.get_id() == cell.get_id()).map(|(c, _)| *c));
            if let Some(channel) = failed {
                tracing::error!(%channel, error = %e, "a notification channel failed; restarting it");
                if let Some(a) = st.args.get(&channel).cloned() {
                    spawn(&me, st, a).await?;
                }
            }
        }
        Ok(())
    }
}

async fn spawn(me: &ActorRef<()>, st: &ChannelsState, a: ChannelArgs) -> Result<(), ActorProcessingErr> {
    let channel = a.channel;
    let (r, _) = Actor::spawn_linked(None, ChannelActor, a, me.get_cell()).await?;
    if let Ok(mut m) = st.live.write() {
        m.insert(channel, r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use prometheus_client::registry::Registry;
    use souk_messages::notify::{NotificationId, Topic};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A provider that is down: every send fails, and is counted.
    #[derive(Debug, Default)]
    struct Down(AtomicUsize);

    impl Provider for Down {
        fn name(&self) -> &'static str {
            "down"
        }

        fn send<'a>(&'a self, _n: &'a Notification) -> BoxFuture<'a, Result<String, SendError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(SendError::Retryable("the provider is down".into())) })
        }
    }

    fn sms(i: u32) -> Notification {
        let to = format!("+4479460{i:05}");
        Notification {
            id: NotificationId::of(&uuid::Uuid::new_v4(), Channel::Sms, &to),
            channel: Channel::Sms,
            topic: Topic::OrderShipped,
            to,
            customer: None,
            order: None,
            subject: None,
            text: "Your order is on its way".into(),
            html: None,
            caused_at: time::OffsetDateTime::now_utc(),
            prior_attempts: 0,
        }
    }

    // The clock is paused: it moves on only when every task waits, so the first send's
    // failure has reached the breaker before the next slot comes.
    #[tokio::test(start_paused = true)]
    async fn sends_waiting_for_their_slot_are_refused_once_the_breaker_opens() {
        let provider = Arc::new(Down::default());
        let (_members, members) = watch::channel(1);
        let limits = ChannelLimits {
            per_second: 10.0,
            breaker_failures: 1,
            breaker_cooldown: Duration::from_secs(60),
        };
        let args = ChannelArgs {
            channel: Channel::Sms,
            provider: provider.clone(),
            limits,
            members,
            metrics: ActorMetrics::register(&mut Registry::default()),
        };
        let (actor, _) = Actor::spawn(None, ChannelActor, args).await.expect("spawn");
        let sends = (0..4).map(|i| actor.call(move |r| ChannelMsg::Send(Box::new(sms(i)), r), None));
        let outcomes: Vec<_> = futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| match r.expect("call") {
                ractor::rpc::CallResult::Success(outcome) => outcome,
                other => panic!("no answer: {other:?}"),
            })
            .collect();
        assert!(matches!(outcomes[0], Err(SendError::Retryable(_))), "{outcomes:?}");
        assert!(outcomes[1..].iter().all(|o| *o == Err(SendError::BreakerOpen)), "{outcomes:?}");
        assert_eq!(provider.0.load(Ordering::SeqCst), 1, "the provider was called once");
        actor.stop(None);
    }
}
