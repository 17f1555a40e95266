//! The `jetstream` scenario: the node's nats-server alone, taking appends shaped like Souk's
//! (a publish that waits for its acknowledgement and states the subject's expected last
//! sequence), each worker on subjects of its own as spread reservations are. It runs at the
//! server's fsync policy, so it shows what that policy leaves for everything above it.

use super::{LoadArgs, Outcome, Summary, drive};
use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use souk_messages::subject::Subjects;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Appends to `args.streams` scratch streams for `args.duration`, then deletes them.
pub(super) async fn run(url: &str, args: &LoadArgs, run_id: &str) -> anyhow::Result<Summary> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client);
    let streams = args.streams.max(1);
    let names: Vec<String> =
        (0..streams).map(|i| format!("SOUK_LOAD_{}_{i}", run_id.to_uppercase())).collect();
    for (i, name) in names.iter().enumerate() {
        let created = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![Subjects.load_probe_stream(run_id, i)],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await;
        if let Err(e) = created {
            remove(&js, &names[..i]).await;
            return Err(e).context("creating a scratch stream");
        }
    }
    // Each worker has its own subjects, so no append waits for another's and none conflicts.
    let per_worker = (args.skus / args.concurrency.max(1)).max(1);
    let last: Arc<Vec<AtomicU64>> =
        Arc::new((0..per_worker * args.concurrency).map(|_| AtomicU64::new(0)).collect());
    let (run, publisher) = (run_id.to_owned(), js.clone());
    let summary = drive(
        args,
        &format!("ceiling (bare JetStream appends, expected subject sequence, {streams} stream(s))"),
        Arc::new(move |w, n| {
            let (js, last, run) = (publisher.clone(), last.clone(), run.clone());
            Box::pin(async move {
                let slot = w * per_worker + n % per_worker;
                let expected = last[slot].load(Ordering::Relaxed);
                let msg = PublishMessage::build()
                    // About the size of a small stock commit.
                    .payload(format!(r#"{{"slot":{slot},"n":{n},"pad":"{:0>160}"}}"#, 0).into())
                    .expected_last_subject_sequence(expected);
                let acked = match js.send_publish(Subjects.load_probe(&run, slot % streams, slot), msg).await
                {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(ack) => {
                        last[slot].store(ack.sequence, Ordering::Relaxed);
                        Outcome::Ok
                    }
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Outcome::Rejected,
                    Err(_) => Outcome::Error,
                }
            })
        }),
    )
    .await;
    remove(&js, &names).await;
    Ok(summary)
}

/// Deletes the scratch streams `names`; one already gone is no matter.
async fn remove(js: &jetstream::Context, names: &[String]) {
    for name in names {
        let _ = js.delete_stream(name).await;
    }
}
