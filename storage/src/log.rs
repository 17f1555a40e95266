//! The central log store: the records of every node, from `SOUK_LOGS`, searchable by text,
//! level, node, request id and time, for `GET /v1/admin/logs`.

use crate::{Db, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use souk_messages::log::{Level, LogRecord};
use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    /// `<stream sequence>`, so a redelivered record overwrites itself.
    lid: u64,
    ts_ns: i64,
    level: Level,
    /// 0 (error) to 4 (trace), for "at least" filters.
    severity: u8,
    node: String,
    request_id: String,
    /// Message and fields as one lower-case text, for the search index.
    text: String,
    record: LogRecord,
}

/// Which records a search returns.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Words the record must contain (message or fields).
    pub q: Option<String>,
    /// The least severe level.
    pub level: Option<Level>,
    /// Only this node's.
    pub node: Option<String>,
    /// Only this request's (its request id or correlation id).
    pub request_id: Option<String>,
    /// From this time on.
    pub since: Option<OffsetDateTime>,
    /// Before this time.
    pub until: Option<OffsetDateTime>,
    /// At most this many, newest first.
    pub limit: u32,
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt { table: "logs", detail: e.to_string() }
}

fn ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// The logs table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogRepo {
    db: Arc<Db>,
}

impl LogRepo {
    /// The repository over a shared handle.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Stores `records`, each with its stream sequence; storing one again changes nothing.
    pub async fn insert(&self, records: Vec<(u64, LogRecord)>) -> Result<(), StorageError> {
        let rows: Vec<serde_json::Value> = records
            .into_iter()
            .map(|(seq, r)| {
                let request_id =
                    r.field("request_id").or_else(|| r.field("correlation_id")).unwrap_or_default();
                let mut text = r.message().to_lowercase();
                for (k, v) in r.fields.iter().chain(r.span.iter()).filter(|(k, _)| *k != "message") {
                    text.push(' ');
                    text.push_str(k);
                    text.push('=');
                    text.push_str(&v.as_str().map_or_else(|| v.to_string(), str::to_owned).to_lowercase());
                }
                let row = Row {
                    lid: seq,
                    ts_ns: ns(r.timestamp),
                    level: r.level,
                    severity: Level::ALL.iter().position(|l| *l == r.level).unwrap_or(4) as u8,
                    node: r.node.clone(),
                    request_id,
                    text,
                    record: r,
                };
                let mut v = serde_json::to_value(&row).map_err(corrupt)?;
                v["id"] = json!(seq);
                Ok(v)
            })
            .collect::<Result<_, StorageError>>()?;
        if rows.is_empty() {
            return Ok(());
        }
        self.db.query("INSERT IGNORE INTO logs $rows").bind(("rows", rows)).await?.check()?;
        Ok(())
    }

    /// Forgets records older than `before`.
    pub async fn prune(&self, before: OffsetDateTime) -> Result<(), StorageError> {
        self.db.query("DELETE logs WHERE ts_ns < $before").bind(("before", ns(before))).await?.check()?;
        Ok(())
    }

    /// Records matching `q`, newest first.
    pub async fn search(&self, q: &LogQuery) -> Result<Vec<LogRecord>, StorageError> {
        let q_text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
        // Only the filters given, so a request's records are read through its index.
        let conditions = crate::db::given(&[
            (q_text.is_some(), "text @@ $q"),
            (q.node.as_deref().is_some_and(|n| !n.is_empty()), "node = $node"),
            (q.request_id.as_deref().is_some_and(|r| !r.is_empty()), "request_id = $request_id"),
            (true, "severity <= $severity AND ts_ns >= $since AND ts_ns < $until"),
        ]);
        let mut res = self
            .db
            .query(format!(
                "SELECT record, ts_ns, lid FROM logs WHERE {conditions} ORDER BY ts_ns DESC, lid DESC LIMIT $limit"
            ))
            .bind(json!({
                "node": q.node.as_deref().unwrap_or(""),
                "request_id": q.request_id.as_deref().unwrap_or(""),
                "severity": q.level.map_or(4, |l| Level::ALL.iter().position(|x| *x == l).unwrap_or(4)),
                "since": q.since.map_or(i64::MIN, ns),
                "until": q.until.map_or(i64::MAX, ns),
                "q": q_text.unwrap_or(""),
                "limit": q.limit,
            }))
            .await?;
        let rows: Vec<serde_json::Value> = res.take(0)?;
        rows.into_iter().map(|mut v| serde_json::from_value(v["record"].take()).map_err(corrupt)).collect()
    }
}
