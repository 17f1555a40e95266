//! The dead-letter stream, for operators: list what could not be delivered and queue it again
//! (`souk notify dlq list|retry`).

use souk_messages::notify::DeadLetter;
use souk_nats::Jet;

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// A JetStream call failed.
    #[error("jetstream: {0}")]
    Nats(#[from] souk_nats::NatsSource),
    /// A stored letter is unreadable.
    #[error("dead letter {0} is unreadable: {1}")]
    Corrupt(u64, String),
}

fn nats<E: std::error::Error + Send + Sync + 'static>(e: E) -> DlqError {
    DlqError::Nats(Box::new(e))
}

/// The dead letters, oldest first, each with its stream sequence (what `retry` takes).
pub async fn list(jet: &Jet) -> Result<Vec<(u64, DeadLetter)>, DlqError> {
    souk_nats::notify::dead_letters(jet)
        .await?
        .into_iter()
        .map(|(seq, letter)| letter.map(|l| (seq, l)).map_err(|e| DlqError::Corrupt(seq, e.to_string())))
        .collect()
}

/// Queues the dead letters `seqs` (all of them when `None`) again, each with a fresh claim so
/// it is sent once more, and removes them from the dead-letter stream. Returns how many.
pub async fn retry(jet: &Jet, seqs: Option<&[u64]>) -> Result<usize, DlqError> {
    let mut n = 0;
    for (seq, letter) in list(jet).await? {
        if seqs.is_some_and(|s| !s.contains(&seq)) {
            continue;
        }
        let mut notification = letter.notification;
        notification.prior_attempts = letter.attempts;
        souk_nats::notify::resend(jet, &notification, &format!("{}.retry.{seq}", notification.id))
            .await
            .map_err(DlqError::Nats)?;
        jet.dead_letters.delete_message(seq).await.map_err(nats)?;
        n += 1;
    }
    Ok(n)
}
