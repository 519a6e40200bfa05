//! The log event as it travels through Kafka (`logs.raw`) and lands in Postgres.
//!
//! The JSON shape is one of the names that must not drift (ARCHITECTURE.md); `event_id` is unique per event and is what makes every
//! write downstream idempotent.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest accepted `event_id`, `service`, `component`, `host` (bytes).
pub const MAX_NAME_BYTES: usize = 128;
/// Longest accepted message (bytes). Longer messages are rejected, not truncated, so nothing is
/// silently altered.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Most attributes one event may carry.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most bytes of keys and strings one event's attributes may hold in all.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Deepest nesting of objects and arrays inside `attributes`.
pub const MAX_ATTRIBUTES_DEPTH: usize = 16;
/// Event timestamps must fall in years 0001..=9999: RFC 3339's range, and well inside what
/// PostgreSQL's `timestamptz` holds (4713 BC to 294276 AD), so the database never refuses one.
pub const MIN_YEAR: i32 = 1;
pub const MAX_YEAR: i32 = 9999;

/// Severity, ordered from least to most severe so filters can say `level >= WARN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
            Level::Fatal => "FATAL",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown level {0:?}; expected one of TRACE DEBUG INFO WARN ERROR FATAL")]
pub struct UnknownLevel(pub String);

/// Every spelling a level is read from, case-insensitively: logpipe's own six and the aliases real
/// emitters send (syslog's `warning`, `err`, `crit`, `emerg`, `alert`, `notice`; `critical`).
const LEVEL_NAMES: [(&str, Level); 15] = [
    ("INFO", Level::Info),
    ("ERROR", Level::Error),
    ("WARN", Level::Warn),
    ("DEBUG", Level::Debug),
    ("FATAL", Level::Fatal),
    ("TRACE", Level::Trace),
    ("WARNING", Level::Warn),
    ("ERR", Level::Error),
    ("NOTICE", Level::Info),
    ("INFORMATION", Level::Info),
    ("CRITICAL", Level::Fatal),
    ("CRIT", Level::Fatal),
    ("EMERG", Level::Fatal),
    ("ALERT", Level::Fatal),
    ("EMERGENCY", Level::Fatal),
];

impl FromStr for Level {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LEVEL_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, level)| level)
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

/// Read as [`FromStr`] does, so a JSON event may say `"level":"warning"` as a syslog template
/// writes it; written back always in the canonical upper case.
impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Level;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a level: TRACE DEBUG INFO WARN ERROR FATAL (or an alias such as warning, err)",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Level, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// One log event, exactly the wire schema (ARCHITECTURE.md). The schema's bounds are the
/// validation's (lengths are bytes here, characters in JSON Schema: equal for ASCII).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEvent {
    /// Absent or null reads as empty, which `validate` refuses: the gateway fills it in first.
    #[serde(default, deserialize_with = "string_or_null")]
    #[schema(required = false, nullable = true, max_length = 128)]
    pub event_id: String,
    /// Within years 1..=9999, and (at the gateway) no more than `max_future_secs` ahead.
    #[serde(serialize_with = "crate::timestamp::serialize_utc")]
    pub timestamp: DateTime<Utc>,
    pub level: Level,
    #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
    pub service: String,
    #[serde(default)]
    #[schema(required = false, max_length = 128)]
    pub component: String,
    #[serde(default)]
    #[schema(required = false, max_length = 128)]
    pub host: String,
    #[schema(min_length = 1, max_length = 32768, pattern = "\\S")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64)]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32)]
    pub span_id: Option<String>,
    /// At most 64 entries, 16 levels deep, 16 KiB of keys and strings; no NUL anywhere.
    #[serde(default)]
    #[schema(value_type = Object, required = false)]
    pub attributes: Map<String, Value>,
}

/// One attribute value, recursively: no NUL in any key or string, bounded depth and size. The path
/// for the error is built only when there is an error.
fn check_attribute(
    key: &str,
    value: &Value,
    depth: usize,
    bytes: &mut usize,
    path: &mut dyn FnMut() -> String,
) -> Result<(), EventError> {
    if depth > MAX_ATTRIBUTES_DEPTH {
        return Err(EventError::TooDeep);
    }
    *bytes += key.len();
    if key.contains('\0') {
        return Err(EventError::NulCharacter(path()));
    }
    match value {
        Value::String(s) => {
            *bytes += s.len();
            if s.contains('\0') {
                return Err(EventError::NulCharacter(path()));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_attribute("", item, depth + 1, bytes, &mut || {
                    format!("{}[{i}]", path())
                })?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_attribute(k, v, depth + 1, bytes, &mut || format!("{}.{k}", path()))?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => *bytes += 8,
    }
    if *bytes > MAX_ATTRIBUTES_BYTES {
        return Err(EventError::TooLong {
            field: "attributes",
            len: *bytes,
            max: MAX_ATTRIBUTES_BYTES,
        });
    }
    Ok(())
}

fn string_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Why an event was refused; the message names the field so a client can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    #[error("field `{field}` is {len} bytes; at most {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field `attributes` has {0} entries; at most {MAX_ATTRIBUTES} allowed")]
    TooManyAttributes(usize),
    #[error("not a valid {format} line: {reason}")]
    Unparseable {
        format: &'static str,
        reason: String,
    },
    /// PostgreSQL's text and jsonb cannot hold U+0000; refusing it here means the database never
    /// sees it (it would refuse the whole batch).
    #[error("field `{0}` contains a NUL character (U+0000), which cannot be stored")]
    NulCharacter(String),
    #[error("field `timestamp` {0} is outside years {MIN_YEAR:04}..={MAX_YEAR}")]
    TimestampOutOfRange(String),
    #[error("field `attributes` nests deeper than {MAX_ATTRIBUTES_DEPTH} levels")]
    TooDeep,
    #[error("the event is {len} bytes; at most {max} are accepted per event")]
    TooLarge { len: usize, max: usize },
    #[error("field `timestamp` is {ahead_secs} s ahead of the receiver's clock; at most {max_secs} s allowed")]
    InFuture { ahead_secs: i64, max_secs: i64 },
}

impl EventError {
    /// A short, bounded name for metrics and DLQ headers (never the free-text message).
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::Json(_) => "invalid_json",
            EventError::Empty(_) => "missing_field",
            EventError::TooLong { .. } => "too_long",
            EventError::TooManyAttributes(_) => "too_many_attributes",
            EventError::Unparseable { .. } => "unparseable_line",
            EventError::NulCharacter(_) => "nul_character",
            EventError::TimestampOutOfRange(_) => "timestamp_out_of_range",
            EventError::TooDeep => "too_deep",
            EventError::TooLarge { .. } => "event_too_large",
            EventError::InFuture { .. } => "timestamp_in_future",
        }
    }
}

impl LogEvent {
    /// A fresh, time-ordered, unique event id (ULID: sorts by creation time, which keeps the
    /// primary-key index append-mostly in Postgres).
    pub fn new_id() -> String {
        ulid::Ulid::new().to_string()
    }

    /// Parse and validate one JSON payload.
    pub fn from_json(bytes: &[u8]) -> Result<LogEvent, EventError> {
        let event: LogEvent =
            serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every field is a plain string, number or map.
        serde_json::to_vec(self).expect("LogEvent serializes")
    }

    /// Everything PostgreSQL would refuse is refused here, naming the field: the gateway answers
    /// 422 with it, the collector sends such records to the DLQ. Shared so the two never disagree
    /// (the collector's [`crate::RawEvent`] checks the same fields with the same function).
    pub fn validate(&self) -> Result<(), EventError> {
        validate_fields(&Fields {
            event_id: &self.event_id,
            service: &self.service,
            component: &self.component,
            host: &self.host,
            message: &self.message,
            trace_id: self.trace_id.as_deref(),
            span_id: self.span_id.as_deref(),
            timestamp: self.timestamp,
            attributes: self.attributes.len(),
        })?;
        let mut bytes = 0;
        for (k, v) in &self.attributes {
            check_attribute(k, v, 1, &mut bytes, &mut || format!("attributes.{k}"))?;
        }
        Ok(())
    }
}

/// An event's named fields, borrowed, and how many attributes it has: what [`validate_fields`]
/// checks before the attributes' contents.
pub(crate) struct Fields<'a> {
    pub event_id: &'a str,
    pub service: &'a str,
    pub component: &'a str,
    pub host: &'a str,
    pub message: &'a str,
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
    pub timestamp: DateTime<Utc>,
    pub attributes: usize,
}

/// The checks of every named field, in the order their errors are reported.
pub(crate) fn validate_fields(f: &Fields<'_>) -> Result<(), EventError> {
    fn non_empty(field: &'static str, v: &str) -> Result<(), EventError> {
        if v.trim().is_empty() {
            Err(EventError::Empty(field))
        } else {
            Ok(())
        }
    }
    fn max_len(field: &'static str, v: &str, max: usize) -> Result<(), EventError> {
        if v.len() > max {
            Err(EventError::TooLong {
                field,
                len: v.len(),
                max,
            })
        } else {
            Ok(())
        }
    }
    non_empty("event_id", f.event_id)?;
    non_empty("service", f.service)?;
    non_empty("message", f.message)?;
    max_len("event_id", f.event_id, MAX_NAME_BYTES)?;
    max_len("service", f.service, MAX_NAME_BYTES)?;
    max_len("component", f.component, MAX_NAME_BYTES)?;
    max_len("host", f.host, MAX_NAME_BYTES)?;
    max_len("message", f.message, MAX_MESSAGE_BYTES)?;
    if let Some(t) = f.trace_id {
        max_len("trace_id", t, 64)?;
    }
    if let Some(s) = f.span_id {
        max_len("span_id", s, 32)?;
    }
    if f.attributes > MAX_ATTRIBUTES {
        return Err(EventError::TooManyAttributes(f.attributes));
    }
    let year = chrono::Datelike::year(&f.timestamp);
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return Err(EventError::TimestampOutOfRange(f.timestamp.to_rfc3339()));
    }
    for (field, v) in [
        ("event_id", f.event_id),
        ("service", f.service),
        ("component", f.component),
        ("host", f.host),
        ("message", f.message),
        ("trace_id", f.trace_id.unwrap_or_default()),
        ("span_id", f.span_id.unwrap_or_default()),
    ] {
        if v.contains('\0') {
            return Err(EventError::NulCharacter(field.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LogEvent {
        LogEvent {
            event_id: LogEvent::new_id(),
            timestamp: "2026-11-23T08:00:00.123Z".parse().unwrap(),
            level: Level::Error,
            service: "payments".into(),
            component: "api".into(),
            host: "gen-1".into(),
            message: "charge declined".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: Some("00f067aa0ba902b7".into()),
            attributes: serde_json::json!({"http.status": 502, "client.ip": "10.1.2.3"})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn event_round_trips_through_the_wire_format() {
        let e = sample();
        let back = LogEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_design_brief_example_parses() {
        let raw = br#"{"event_id":"01JABC","timestamp":"2026-11-23T08:00:00.123Z","level":"ERROR","service":"payments",
 "component":"api","host":"gen-1","message":"charge declined","trace_id":"abc","span_id":"def",
 "attributes":{"http.status":502,"client.ip":"10.1.2.3","user":"u-42"}}"#;
        let e = LogEvent::from_json(raw).unwrap();
        assert_eq!(e.level, Level::Error);
        assert_eq!(e.attributes["http.status"], 502);
    }

    #[test]
    fn empty_service_is_rejected_naming_the_field() {
        let mut e = sample();
        e.service = " ".into();
        assert_eq!(e.validate(), Err(EventError::Empty("service")));
    }

    #[test]
    fn oversized_message_is_rejected_not_truncated() {
        let mut e = sample();
        e.message = "x".repeat(MAX_MESSAGE_BYTES + 1);
        let err = e.validate().unwrap_err();
        assert_eq!(err.kind(), "too_long");
        assert!(err.to_string().contains("message"));
    }

    #[test]
    fn unknown_level_is_invalid_json_with_a_clear_message() {
        let raw = br#"{"event_id":"1","timestamp":"2026-11-23T08:00:00Z","level":"LOUD","service":"s","message":"m"}"#;
        let err = LogEvent::from_json(raw).unwrap_err();
        assert_eq!(err.kind(), "invalid_json");
        assert!(err.to_string().contains("LOUD"), "{err}");
    }

    #[test]
    fn a_nul_character_anywhere_is_refused_naming_its_field() {
        let mut e = sample();
        e.message = "a\0b".into();
        assert_eq!(
            e.validate(),
            Err(EventError::NulCharacter("message".into()))
        );
        let raw =
            br#"{"event_id":"1","timestamp":"2026-11-23T08:00:00Z","level":"INFO","service":"s",
            "message":"m","attributes":{"req":{"headers":[{"x":"ok"},{"y":"a\u0000"}]}}}"#;
        let err = LogEvent::from_json(raw).unwrap_err();
        assert_eq!(
            err,
            EventError::NulCharacter("attributes.req.headers[1].y".into())
        );
        assert_eq!(err.kind(), "nul_character");
        let key =
            br#"{"event_id":"1","timestamp":"2026-11-23T08:00:00Z","level":"INFO","service":"s",
            "message":"m","attributes":{"k\u0000":1}}"#;
        assert_eq!(
            LogEvent::from_json(key).unwrap_err().kind(),
            "nul_character"
        );
    }

    #[test]
    fn timestamps_outside_years_1_to_9999_are_refused() {
        for (ts, ok) in [
            ("-5000-01-01T00:00:00Z", false),
            ("0000-12-31T23:59:59Z", false),
            ("0001-01-01T00:00:00Z", true),
            ("9999-12-31T23:59:59.999Z", true),
            ("+10000-01-01T00:00:00Z", false),
        ] {
            let Ok(t) = ts.parse::<DateTime<Utc>>() else {
                assert!(!ok, "{ts} should parse");
                continue;
            };
            let mut e = sample();
            e.timestamp = t;
            assert_eq!(e.validate().is_ok(), ok, "{ts}");
            if !ok {
                assert_eq!(e.validate().unwrap_err().kind(), "timestamp_out_of_range");
            }
        }
    }

    #[test]
    fn attributes_too_deep_or_too_large_are_refused() {
        let mut e = sample();
        let mut v = Value::String("leaf".into());
        for _ in 0..MAX_ATTRIBUTES_DEPTH + 1 {
            v = serde_json::json!([v]);
        }
        e.attributes.insert("deep".into(), v);
        assert_eq!(e.validate(), Err(EventError::TooDeep));
        let mut e = sample();
        e.attributes.insert(
            "big".into(),
            Value::String("x".repeat(MAX_ATTRIBUTES_BYTES)),
        );
        assert_eq!(e.validate().unwrap_err().kind(), "too_long");
    }

    #[test]
    fn levels_order_from_trace_to_fatal_and_parse_aliases() {
        assert!(Level::Trace < Level::Warn && Level::Error < Level::Fatal);
        assert_eq!("warning".parse::<Level>().unwrap(), Level::Warn);
        assert_eq!("crit".parse::<Level>().unwrap(), Level::Fatal);
        assert!("nope".parse::<Level>().is_err());
        assert!("".parse::<Level>().is_err());
    }

    #[test]
    fn a_json_level_reads_any_case_and_syslogs_aliases_and_writes_back_canonical() {
        for (text, level) in [
            ("warning", Level::Warn),
            ("Err", Level::Error),
            ("notice", Level::Info),
            ("emerg", Level::Fatal),
            ("INFO", Level::Info),
        ] {
            let raw = format!(
                r#"{{"event_id":"1","timestamp":"2026-11-23T08:00:00Z","level":"{text}","service":"s","message":"m"}}"#
            );
            let e = LogEvent::from_json(raw.as_bytes()).unwrap();
            assert_eq!(e.level, level, "{text}");
            assert!(String::from_utf8(e.to_json())
                .unwrap()
                .contains(level.as_str()));
        }
        let raw = br#"{"event_id":"1","timestamp":"2026-11-23T08:00:00Z","level":7,"service":"s","message":"m"}"#;
        assert_eq!(LogEvent::from_json(raw).unwrap_err().kind(), "invalid_json");
    }

    proptest::proptest! {
        /// Any text is read as a level exactly when its upper case is one of the known names, and
        /// the JSON and `FromStr` readings agree.
        #[test]
        fn any_level_text_is_read_exactly_when_it_names_a_level(text in "[a-zA-Z]{0,12}|\\PC{0,12}") {
            let by_str = text.parse::<Level>().ok();
            let known = LEVEL_NAMES.iter().any(|(n, _)| n.eq_ignore_ascii_case(&text));
            proptest::prop_assert_eq!(by_str.is_some(), known);
            let json = serde_json::to_string(&text).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<Level>(&json).ok(), by_str);
        }
    }
}
