//! Background tasks of a node (projectors, followers, the saga driver) run until the node
//! stops them, starting over after a pause whenever an attempt fails.

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
