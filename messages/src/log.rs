//! Log records as they travel to the central log store: one JSON object per `tracing` event on
//! `souk.log.<node>.<level>` (stream `SOUK_LOGS`), the same shape a node prints on stdout.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A log level, most severe first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong but handled.
    Warn,
    /// Normal operation.
    Info,
    /// Detail for developers.
    Debug,
    /// Everything.
    Trace,
}

impl Level {
    /// Every level, most severe first.
    pub const ALL: [Self; 5] = [Self::Error, Self::Warn, Self::Info, Self::Debug, Self::Trace];

    /// The level as a subject token (lower case).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    /// Parses `error`, `WARN`, …
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether a record at this level passes a filter of `at_least` (e.g. `Warn` passes `Info`).
    pub fn passes(self, at_least: Self) -> bool {
        self <= at_least
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct LogRecord {
    /// When it was logged.
    #[schemars(with = "String")]
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String)]
    pub timestamp: OffsetDateTime,
    /// Its level.
    pub level: Level,
    /// The node that logged it.
    #[serde(default)]
    pub node: String,
    /// The module that logged it.
    pub target: String,
    /// The event's fields, `message` among them.
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The fields of the spans it happened in (the innermost wins).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub span: serde_json::Map<String, serde_json::Value>,
}

impl LogRecord {
    /// The `message` field.
    pub fn message(&self) -> &str {
        self.fields.get("message").and_then(|m| m.as_str()).unwrap_or("")
    }

    /// A field of the record or of its spans, as text.
    pub fn field(&self, name: &str) -> Option<String> {
        let v = self.fields.get(name).or_else(|| self.span.get(name))?;
        Some(v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    }
}

/// The W3C trace id (32 hex digits) of everything correlated by `correlation`: derived, so
/// every node that sees the correlation id names the same trace.
pub fn trace_id(correlation: &str) -> String {
    let a = crate::subject::stable_hash(&[b"trace", correlation.as_bytes()]);
    let b = crate::subject::stable_hash(&[correlation.as_bytes(), b"trace"]);
    format!("{a:016x}{b:016x}")
}

/// A W3C `traceparent` header value for a hop of `correlation`'s trace.
pub fn traceparent(correlation: &str) -> String {
    let span = uuid::Uuid::new_v4().as_u64_pair().0.max(1);
    format!("00-{}-{span:016x}-01", trace_id(correlation))
}

/// The trace id of a `traceparent` header value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace), Some(span)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(trace, 32) && hex(span, 16) && trace != "00000000000000000000000000000000").then_some(trace)
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparents_carry_the_correlations_trace() {
        let h = traceparent("req-1");
        assert_eq!(trace_id_of(&h), Some(trace_id("req-1").as_str()));
        assert_ne!(trace_id("req-1"), trace_id("req-2"));
        assert_eq!(trace_id_of("00-abc-def-01"), None);
    }

    use super::*;

    #[test]
    fn levels_parse_and_filter() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert!(Level::Error.passes(Level::Info));
        assert!(!Level::Debug.passes(Level::Info));
        assert_eq!(serde_json::to_string(&Level::Info).expect("json"), "\"INFO\"");
    }
}
