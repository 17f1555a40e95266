//! Logs: every `tracing` event becomes one line on stdout (JSON, or readable text with
//! `log_format = "text"`) and, at the configured level, one record on
//! `souk.log.<node>.<level>` for the central log store. Forwarding never blocks the code that
//! logs: records wait in a bounded queue, and when it is full they are dropped and counted
//! (`souk_log_records_dropped_total`). `souk logs tail` follows them.

use crate::config::Config;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use souk_messages::log::{Level, LogRecord};
use souk_messages::subject::Subjects;
use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Records waiting to be forwarded, at most.
const QUEUE: usize = 16_384;

/// Where log records go besides stdout. Shared by the layer and the node.
#[derive(Debug)]
pub struct LogSink {
    tx: mpsc::Sender<LogRecord>,
    rx: Mutex<Option<mpsc::Receiver<LogRecord>>>,
    forward: Option<Level>,
    node: OnceLock<String>,
    /// Records the queue had no room for.
    pub dropped: Counter,
}

impl LogSink {
    /// A sink forwarding records at `forward` or more severe (`None`: none).
    pub fn new(forward: Option<Level>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Arc::new(Self {
            tx,
            rx: Mutex::new(Some(rx)),
            forward,
            node: OnceLock::new(),
            dropped: Counter::default(),
        })
    }

    /// Names the node in every record from now on.
    pub fn set_node(&self, node: &str) {
        let _ = self.node.set(node.to_owned());
    }

    /// Publishes queued records to NATS until `stop` is set. Call once.
    pub async fn forward(&self, client: souk_nats::Client, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else { return };
        loop {
            let record = tokio::select! {
                r = rx.recv() => r,
                _ = stop.changed() => None,
            };
            let Some(record) = record else { return };
            let Ok(body) = serde_json::to_vec(&record) else { continue };
            // Core publish: the stream stores it; a full or absent server never holds us up.
            if client.publish(Subjects.log(&record.node, record.level), body.into()).await.is_err() {
                self.dropped.inc();
            }
        }
    }
}

/// The `tracing` layer that forwards records and, unless another layer writes stdout, writes
/// them there as JSON lines.
#[derive(Debug)]
pub struct JsonLayer {
    sink: Arc<LogSink>,
    stdout: bool,
}

impl JsonLayer {
    /// A layer feeding `sink`, and writing JSON lines on stdout when `stdout` is set.
    pub fn new(sink: Arc<LogSink>, stdout: bool) -> Self {
        Self { sink, stdout }
    }
}

/// A span's fields, kept in its extensions.
struct SpanFields(Map<String, Value>);

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

fn level_of(l: &tracing::Level) -> Level {
    match *l {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        tracing::Level::DEBUG => Level::Debug,
        tracing::Level::TRACE => Level::Trace,
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for JsonLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Map::new();
        attrs.record(&mut Fields(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(f) = span.extensions_mut().get_mut::<SpanFields>() {
            values.record(&mut Fields(&mut f.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let mut span = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for s in scope.from_root() {
                if let Some(f) = s.extensions().get::<SpanFields>() {
                    span.extend(f.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let record = LogRecord {
            timestamp: OffsetDateTime::now_utc(),
            level: level_of(event.metadata().level()),
            node: self.sink.node.get().cloned().unwrap_or_default(),
            target: event.metadata().target().to_owned(),
            fields,
            span,
        };
        if self.stdout
            && let Ok(line) = serde_json::to_string(&record)
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
        if self.sink.forward.is_some_and(|f| record.level.passes(f)) && self.sink.tx.try_send(record).is_err()
        {
            self.sink.dropped.inc();
        }
    }
}

/// `souk logs tail`: prints records as nodes publish them, one JSON line each, filtered by
/// least severe level, node, request id (or correlation id) and text.
pub async fn tail(
    cfg: &Config,
    level: Option<Level>,
    node: Option<&str>,
    request_id: Option<&str>,
    grep: Option<&str>,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let urls = cfg.nats_urls_or_local();
    anyhow::ensure!(!urls.is_empty(), "no NATS to reach: set SOUK_NATS_URL, or run next to a `souk serve`");
    let client = crate::serve::connect(cfg, urls, "souk logs".to_owned()).await?;
    let mut sub = client.subscribe(Subjects.logs_of(node)).await?;
    let grep = grep.map(str::to_lowercase);
    while let Some(msg) = sub.next().await {
        let Ok(r) = serde_json::from_slice::<LogRecord>(&msg.payload) else { continue };
        let wanted = level.is_none_or(|l| r.level.passes(l))
            && request_id.is_none_or(|id| {
                r.field("request_id").as_deref() == Some(id)
                    || r.field("correlation_id").as_deref() == Some(id)
            })
            && grep
                .as_deref()
                .is_none_or(|g| String::from_utf8_lossy(&msg.payload).to_lowercase().contains(g));
        if wanted {
            println!("{}", String::from_utf8_lossy(&msg.payload));
        }
    }
    Ok(())
}
