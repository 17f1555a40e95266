//! A channel actor per provider kind (email, SMS): it owns its provider, paces sends to the
//! provider's rate limit and keeps a circuit breaker, so a provider that keeps failing is left
//! alone for a while instead of being hammered. The channels supervisor restarts a channel
//! that panics; its breaker starts closed again.

use super::providers::{Provider, SendError};
use crate::metrics::ActorMetrics;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use souk_messages::notify::{Channel, Notification};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How a channel paces and protects its provider.
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// Sends per second at most (per node); 0: no limit.
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
            ChannelMsg::Send(n, reply) => (n, reply),
            ChannelMsg::Recheck => {
                st.report_breakers();
                return Ok(());
            }
        };
        let now = Instant::now();
        let key = st.provider.breaker_key(&n);
        let threshold = st.limits.breaker_failures.max(1);
        let breaker = st.breakers.entry(key.clone()).or_default();
        if let Some(until) = breaker.open_until {
            if now < until {
                let _ = reply.send(Err(SendError::BreakerOpen));
                return Ok(());
            }
            // Half open: this send is the trial; one more failure opens it again.
            breaker.failures = threshold - 1;
            breaker.open_until = None;
        }
        if st.limits.per_second > 0.0 {
            let slot = st.next_slot.max(now);
            tokio::time::sleep_until(slot).await;
            st.next_slot = slot + Duration::from_secs_f64(1.0 / st.limits.per_second);
        }
        let outcome = st.provider.send(&n).await;
        let breaker = st.breakers.entry(key.clone()).or_default();
        match &outcome {
            // A refused message says nothing about the provider's health.
            Ok(_) | Err(SendError::Permanent(_)) => *breaker = Breaker::default(),
            Err(SendError::Retryable(e)) => {
                breaker.failures += 1;
                if breaker.failures >= threshold {
                    tracing::warn!(channel = %st.channel, provider = st.provider.name(), destination = key.as_deref(),
                        error = %e, "circuit breaker open: the provider keeps failing");
                    breaker.open_until = Some(Instant::now() + st.limits.breaker_cooldown);
                    me.send_after(st.limits.breaker_cooldown, || ChannelMsg::Recheck);
                }
            }
            Err(SendError::BreakerOpen) => {}
        }
        // Forget healthy destinations, so the map holds only those with a recent failure.
        st.breakers.retain(|_, b| b.failures > 0 || b.open_until.is_some());
        st.report_breakers();
        let _ = reply.send(outcome);
        Ok(())
    }
}

impl ChannelState {
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
