//! Backups of everything Souk keeps in JetStream, through JetStream's own snapshot and
//! restore API: each stream's store (messages with their sequences, and its consumers' ack
//! state) as the server writes it, so a restored stream is the same stream, not a replay.
//!
//! A backup is a folder: `manifest.json` (written last, so a folder without one is an
//! unfinished backup) and one `<stream>.snapshot` file per stream.

use crate::NatsSource;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The manifest's format; a restore refuses any other.
const FORMAT: u32 = 1;
/// Bytes per snapshot chunk, each way.
const CHUNK: usize = 128 * 1024;
/// How long the server may take to answer one request of a snapshot or restore.
const STEP: Duration = Duration::from_secs(30);
/// How long the server may take to unpack a restored stream once it has every chunk.
const UNPACK: Duration = Duration::from_secs(600);

/// Streams whose contents are state only while their writers live: node heartbeats and
/// shard leases. Restored, they would name nodes that are gone.
const EPHEMERAL: [&str; 2] = ["KV_souk_nodes", "KV_souk_leases"];

/// The key, in the cluster bucket, of the record of the last completed backup.
pub const LAST_BACKUP_KEY: &str = "backup.last";

/// What the cluster remembers of its last completed backup: every node exports its time, so
/// an alert can tell when backups stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    /// When it was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: time::OffsetDateTime,
    /// Streams in it.
    pub streams: usize,
    /// Messages in it.
    pub messages: u64,
}

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's format.
    pub format: u32,
    /// The Souk release that took it.
    pub souk_version: String,
    /// When it was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: time::OffsetDateTime,
    /// Every stream in it.
    pub streams: Vec<StreamBackup>,
}

/// One stream of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamBackup {
    /// The stream's name.
    pub name: String,
    /// Its snapshot file, relative to the backup folder.
    pub file: String,
    /// The snapshot's size in bytes.
    pub bytes: u64,
    /// The stream's configuration when the snapshot began, as the server gave it.
    pub config: Value,
    /// The stream's state (messages, sequences) when the snapshot began.
    pub state: Value,
}

impl StreamBackup {
    /// Messages in the stream when it was backed up.
    pub fn messages(&self) -> u64 {
        self.state["messages"].as_u64().unwrap_or(0)
    }
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// NATS failed underneath.
    #[error("NATS: {0}")]
    Nats(#[source] NatsSource),
    /// JetStream refused a request.
    #[error("JetStream refused the {what} of {stream}: {description} (code {code})")]
    Refused {
        /// Snapshot or restore.
        what: &'static str,
        /// The stream.
        stream: String,
        /// The server's description.
        description: String,
        /// The server's error code.
        code: u64,
    },
    /// The server's answer was not what the API promises.
    #[error("unexpected answer to the {what} of {stream}: {detail}")]
    Protocol {
        /// Snapshot or restore.
        what: &'static str,
        /// The stream.
        stream: String,
        /// What was wrong.
        detail: String,
    },
    /// A file of the backup could not be read or written.
    #[error("{0}: {1}")]
    File(PathBuf, #[source] std::io::Error),
    /// The folder is not a backup this release can restore.
    #[error("{0}")]
    Manifest(String),
    /// The target already holds Souk's streams.
    #[error(
        "NATS already holds {0}: restore into a JetStream account without Souk's streams (a new cluster, or one whose streams were deleted), or stop every node and restore with --replace"
    )]
    Exists(String),
    /// `--replace` while nodes are running on the target.
    #[error(
        "nodes are running on this NATS ({0}): stop every node first (a node killed rather than stopped counts until its heartbeat expires)"
    )]
    Running(String),
    /// A restored stream does not hold what was backed up.
    #[error("restored {stream} holds {restored} messages where the backup has {backed_up}")]
    Mismatch {
        /// The stream.
        stream: String,
        /// Messages after the restore.
        restored: u64,
        /// Messages in the backup.
        backed_up: u64,
    },
}

fn nats(e: impl std::error::Error + Send + Sync + 'static) -> BackupError {
    BackupError::Nats(Box::new(e))
}

/// Every stream on the server.
async fn stream_names(js: &async_nats::jetstream::Context) -> Result<Vec<String>, BackupError> {
    js.stream_names().try_collect().await.map_err(nats)
}

/// The streams a backup takes out of `all`: every Souk stream and bucket but heartbeats and
/// leases.
fn souk_streams(all: &[String]) -> Vec<String> {
    let mut names: Vec<String> = all
        .iter()
        .filter(|n| (n.starts_with("SOUK_") || n.starts_with("KV_souk_")) && !EPHEMERAL.contains(&n.as_str()))
        .cloned()
        .collect();
    names.sort();
    names
}

/// The nodes whose heartbeats are in NATS, given `all` the server's streams.
async fn running_nodes(
    js: &async_nats::jetstream::Context,
    all: &[String],
) -> Result<Vec<String>, BackupError> {
    let bucket = crate::streams::NODES_BUCKET;
    if !all.contains(&format!("KV_{bucket}")) {
        return Ok(Vec::new());
    }
    let nodes = js.get_key_value(bucket).await.map_err(nats)?;
    let mut running: Vec<String> = nodes.keys().await.map_err(nats)?.try_collect().await.map_err(nats)?;
    running.sort();
    Ok(running)
}

/// Snapshots every Souk stream into the empty (or new) folder `dir`, calling `progress`
/// after each stream.
pub async fn backup(
    client: &async_nats::Client,
    dir: &Path,
    mut progress: impl FnMut(&StreamBackup),
) -> Result<Manifest, BackupError> {
    // A backup holds password hashes and, unless keys are configured, the token signing key.
    tokio::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).await.map_err(in_file(dir))?;
    let mut entries = tokio::fs::read_dir(dir).await.map_err(in_file(dir))?;
    if entries.next_entry().await.map_err(in_file(dir))?.is_some() {
        return Err(BackupError::Manifest(format!(
            "{} is not empty: a backup goes into a new folder, never over another",
            dir.display()
        )));
    }
    let js = async_nats::jetstream::new(client.clone());
    let mut streams = Vec::new();
    for name in souk_streams(&stream_names(&js).await?) {
        let file = format!("{name}.snapshot");
        let path = dir.join(&file);
        let (config, state, bytes) = snapshot(client, &name, &path).await?;
        let stream = StreamBackup { name, file, bytes, config, state };
        progress(&stream);
        streams.push(stream);
    }
    let manifest = Manifest {
        format: FORMAT,
        souk_version: env!("CARGO_PKG_VERSION").to_owned(),
        taken_at: time::OffsetDateTime::now_utc(),
        streams,
    };
    let path = dir.join("manifest.json");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    let mut out = private_file(&path).await.map_err(in_file(&path))?;
    out.write_all(&json).await.map_err(in_file(&path))?;
    out.sync_all().await.map_err(in_file(&path))?;
    Ok(manifest)
}

/// Records `manifest` as the cluster's last completed backup (see [`LastBackup`]).
pub async fn record(client: &async_nats::Client, manifest: &Manifest) -> Result<(), BackupError> {
    let last = LastBackup {
        taken_at: manifest.taken_at,
        streams: manifest.streams.len(),
        messages: manifest.streams.iter().map(StreamBackup::messages).sum(),
    };
    let json = serde_json::to_vec(&last).map_err(|e| BackupError::Manifest(e.to_string()))?;
    let js = async_nats::jetstream::new(client.clone());
    let bucket =
        js.get_key_value(crate::streams::CLUSTER_BUCKET).await.map_err(|e| BackupError::Nats(Box::new(e)))?;
    bucket.put(LAST_BACKUP_KEY, json.into()).await.map_err(|e| BackupError::Nats(Box::new(e)))?;
    Ok(())
}

/// The error of an I/O step on `path`.
fn in_file(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::File(path.to_owned(), e)
}

/// A new file only its owner can read.
async fn private_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await
}

/// Reads the manifest of the backup in `dir`.
pub async fn manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join("manifest.json");
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        BackupError::Manifest(format!(
            "{}: {e} (a backup folder without its manifest is an unfinished backup)",
            path.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Manifest(format!("{}: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Manifest(format!(
            "{}: format {} is not one this release restores ({FORMAT})",
            path.display(),
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Restores the backup in `dir` into a JetStream account holding none of its streams or,
/// with `replace` and no node running there, in place of every Souk stream it holds; calls
/// `progress` after each stream. All or nothing: streams this call restored are deleted again
/// when a later one fails (the replaced ones are gone by then: run it again).
pub async fn restore(
    client: &async_nats::Client,
    dir: &Path,
    replace: bool,
    mut progress: impl FnMut(&StreamBackup),
) -> Result<Manifest, BackupError> {
    let manifest = manifest(dir).await?;
    for stream in &manifest.streams {
        let path = dir.join(&stream.file);
        tokio::fs::metadata(&path).await.map_err(|e| BackupError::File(path, e))?;
    }
    let js = async_nats::jetstream::new(client.clone());
    let all = stream_names(&js).await?;
    let present = souk_streams(&all);
    if replace {
        // Checked first, and only then anything deleted: a running node would go on writing
        // into the old history, or provision empty streams under the restore.
        let running = running_nodes(&js, &all).await?;
        if !running.is_empty() {
            return Err(BackupError::Running(running.join(", ")));
        }
        for name in &present {
            js.delete_stream(name).await.map_err(nats)?;
            tracing::info!(stream = %name, "deleted to be replaced by the backup");
        }
    } else if let Some(name) = manifest.streams.iter().map(|s| &s.name).find(|n| present.contains(n)) {
        return Err(BackupError::Exists(name.clone()));
    }
    let mut restored = Vec::new();
    for stream in &manifest.streams {
        match restore_one(client, dir, stream).await {
            Ok(()) => {
                restored.push(stream.name.clone());
                progress(stream);
            }
            Err(e) => {
                for name in restored {
                    if let Err(undo) = js.delete_stream(&name).await {
                        tracing::warn!(stream = %name, error = %undo, "could not delete a restored stream after a failed restore");
                    }
                }
                // The failed stream may exist half-restored.
                let _ = js.delete_stream(&stream.name).await;
                return Err(e);
            }
        }
    }
    Ok(manifest)
}

async fn restore_one(
    client: &async_nats::Client,
    dir: &Path,
    stream: &StreamBackup,
) -> Result<(), BackupError> {
    let path = dir.join(&stream.file);
    let mut input = tokio::fs::File::open(&path).await.map_err(|e| BackupError::File(path.clone(), e))?;
    let refused = |v: &Value| refusal("restore", &stream.name, v);
    let request = serde_json::json!({ "config": stream.config, "state": stream.state });
    let answer = api(client, &format!("$JS.API.STREAM.RESTORE.{}", stream.name), &request, STEP).await?;
    if let Some(e) = refused(&answer) {
        return Err(e);
    }
    let Some(deliver) = answer["deliver_subject"].as_str().map(str::to_owned) else {
        return Err(protocol("restore", &stream.name, "no deliver_subject"));
    };
    let mut chunk = vec![0; CHUNK];
    loop {
        let n = input.read(&mut chunk).await.map_err(|e| BackupError::File(path.clone(), e))?;
        if n == 0 {
            break;
        }
        let ack = request_raw(client, &deliver, Bytes::copy_from_slice(&chunk[..n]), STEP).await?;
        if !ack.is_empty() {
            let answer: Value = serde_json::from_slice(&ack).unwrap_or(Value::Null);
            return Err(
                refused(&answer).unwrap_or_else(|| protocol("restore", &stream.name, "chunk refused"))
            );
        }
    }
    // An empty chunk ends the upload; the answer comes once the server has unpacked it.
    let done = request_raw(client, &deliver, Bytes::new(), UNPACK).await?;
    let answer: Value = serde_json::from_slice(&done)
        .map_err(|e| protocol("restore", &stream.name, &format!("final answer: {e}")))?;
    if let Some(e) = refused(&answer) {
        return Err(e);
    }
    let restored = answer["state"]["messages"].as_u64().unwrap_or(0);
    if restored != stream.messages() {
        return Err(BackupError::Mismatch {
            stream: stream.name.clone(),
            restored,
            backed_up: stream.messages(),
        });
    }
    Ok(())
}

/// Streams the snapshot of `stream` into the new file `path`: its configuration, its state
/// and the bytes written. Each chunk is acknowledged, which is the server's flow control.
async fn snapshot(
    client: &async_nats::Client,
    stream: &str,
    path: &Path,
) -> Result<(Value, Value, u64), BackupError> {
    let mut out = private_file(path).await.map_err(in_file(path))?;
    let inbox = client.new_inbox();
    // Subscribed before asking, so the first chunk has somewhere to go.
    let mut chunks = client.subscribe(inbox.clone()).await.map_err(nats)?;
    let request = serde_json::json!({
        "deliver_subject": inbox,
        "no_consumers": false,
        "chunk_size": CHUNK,
    });
    let answer = api(client, &format!("$JS.API.STREAM.SNAPSHOT.{stream}"), &request, STEP).await?;
    if let Some(e) = refusal("snapshot", stream, &answer) {
        return Err(e);
    }
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::time::timeout(STEP, chunks.next())
            .await
            .map_err(|_| protocol("snapshot", stream, "no chunk within 30 s"))?
            .ok_or_else(|| protocol("snapshot", stream, "the subscription ended"))?;
        // An empty message without a reply subject is the end of the snapshot.
        if chunk.payload.is_empty() && chunk.reply.is_none() {
            break;
        }
        out.write_all(&chunk.payload).await.map_err(in_file(path))?;
        bytes += chunk.payload.len() as u64;
        if let Some(reply) = chunk.reply {
            client.publish(reply, Bytes::new()).await.map_err(nats)?;
        }
    }
    out.sync_all().await.map_err(in_file(path))?;
    Ok((answer["config"].clone(), answer["state"].clone(), bytes))
}

/// A JetStream API request with a JSON answer.
async fn api(
    client: &async_nats::Client,
    subject: &str,
    body: &Value,
    wait: Duration,
) -> Result<Value, BackupError> {
    let answer = request_raw(client, subject, Bytes::from(body.to_string()), wait).await?;
    serde_json::from_slice(&answer).map_err(|e| protocol("request", subject, &e.to_string()))
}

async fn request_raw(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    wait: Duration,
) -> Result<Bytes, BackupError> {
    let request = async_nats::Request::new().payload(payload).timeout(Some(wait));
    Ok(client.send_request(subject.to_owned(), request).await.map_err(nats)?.payload)
}

fn refusal(what: &'static str, stream: &str, answer: &Value) -> Option<BackupError> {
    let e = answer.get("error")?;
    Some(BackupError::Refused {
        what,
        stream: stream.to_owned(),
        description: e["description"].as_str().unwrap_or("no description").to_owned(),
        code: e["err_code"].as_u64().or_else(|| e["code"].as_u64()).unwrap_or(0),
    })
}

fn protocol(what: &'static str, stream: &str, detail: &str) -> BackupError {
    BackupError::Protocol { what, stream: stream.to_owned(), detail: detail.to_owned() }
}
