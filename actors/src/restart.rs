//! Background tasks of a node (projectors, followers, the saga driver) run until the node
//! stops them, starting over after a pause whenever an attempt fails; those that share work
//! across the cluster read one durable consumer that every node binds to.

use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use souk_messages::subject::{EntityKind, Subjects};
use souk_nats::Jet;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// The pause before an attempt that failed starts over.
const PAUSE: Duration = Duration::from_millis(500);

/// Runs `attempt` until `stop` is set; a failed attempt is logged as `what` and started over.
/// Each attempt gets its own receiver of `stop` and should return `Ok` once it sees it set.
pub(crate) async fn restarting<F, Fut, E>(what: &str, mut stop: watch::Receiver<bool>, mut attempt: F)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    while !*stop.borrow() {
        if let Err(e) = attempt(stop.clone()).await {
            tracing::warn!(error = %e, "{what} stopped; restarting");
        }
        tokio::select! {
            () = tokio::time::sleep(PAUSE) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The next message of `messages`, or `None` once it ends or `stop` is set.
pub(crate) async fn next_or_stop<S: futures::Stream + Unpin>(
    messages: &mut S,
    stop: &mut watch::Receiver<bool>,
) -> Option<S::Item> {
    tokio::select! {
        m = futures::StreamExt::next(messages) => m,
        _ = stop.changed() => None,
    }
}

/// The durable consumer `name` on every event of `kind`, shared by all nodes: each message
/// goes to one node and comes back to another if it is not acknowledged within `ack_wait`.
/// An existing consumer takes the settings given here, so a release that changes them
/// changes them for a running cluster too.
pub(crate) async fn shared_consumer(
    jet: &Jet,
    name: &str,
    kind: EntityKind,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<Consumer<pull::Config>, souk_nats::NatsSource> {
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: Subjects.kind_events(kind),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        ..Default::default()
    };
    Ok(jet.events.of(kind).create_consumer(config).await?)
}
