//! An Elasticsearch `_bulk` body, read: NDJSON action/source pairs ([`read_bulk`]), and each
//! source document mapped to an event from its ECS fields, with fallbacks ([`document_event`],
//! over the fields [`super::source`] reads).
//! Pure: no I/O, so every decision here is unit-tested and fuzzed.

use chrono::{DateTime, Utc};
use logpipe_common::event::{Level, LogEvent};
use serde::Deserialize;
use serde_json::Value;

use super::source::Fields;

/// What an action line asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Index,
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Index => "index",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// The metadata of an action line that logpipe reads.
#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    #[serde(default, rename = "_index")]
    pub index: Option<String>,
    #[serde(default, rename = "_id")]
    pub id: Option<String>,
}

/// One action with its source line (none for `delete`).
#[derive(Debug)]
pub struct Item<'a> {
    pub op: Op,
    pub meta: Meta,
    pub source: Option<&'a str>,
}

/// Why a body is not a bulk body at all: Elasticsearch refuses such a request whole (400),
/// since past a bad action line it cannot tell which line is which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BulkError {
    #[error("the bulk body is not UTF-8")]
    Utf8,
    #[error("the bulk body holds no actions")]
    Empty,
    #[error("malformed action/metadata line [{line}]: {reason}")]
    Action { line: usize, reason: String },
    #[error("the action on line [{line}] has no source line after it")]
    MissingSource { line: usize },
}

/// An action line, read in one typed pass (no tree): exactly one of the four actions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionLine {
    #[serde(default)]
    index: Option<Meta>,
    #[serde(default)]
    create: Option<Meta>,
    #[serde(default)]
    update: Option<Meta>,
    #[serde(default)]
    delete: Option<Meta>,
}

fn parse_action(line_no: usize, line: &str) -> Result<(Op, Meta), BulkError> {
    let bad = |reason: String| BulkError::Action {
        line: line_no,
        reason,
    };
    let action: ActionLine = serde_json::from_str(line).map_err(|e| {
        bad(format!(
            "expected one JSON object naming one action (index, create, update, delete) with its metadata: {e}"
        ))
    })?;
    let mut found = [
        (Op::Index, action.index),
        (Op::Create, action.create),
        (Op::Update, action.update),
        (Op::Delete, action.delete),
    ]
    .into_iter()
    .filter_map(|(op, meta)| Some((op, meta?)));
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(bad("expected exactly one action, found none".into())),
        (Some(_), Some(_)) => Err(bad("expected exactly one action, found several".into())),
    }
}

/// Split a bulk body into its items. Blank lines are skipped; line numbers count from 1 as
/// Elasticsearch's messages do.
pub fn read_bulk(body: &[u8]) -> Result<Vec<Item<'_>>, BulkError> {
    let text = std::str::from_utf8(body).map_err(|_| BulkError::Utf8)?;
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty());
    let mut items = Vec::new();
    while let Some((line_no, line)) = lines.next() {
        let (op, meta) = parse_action(line_no, line)?;
        let source = match op {
            Op::Delete => None,
            _ => Some(
                lines
                    .next()
                    .map(|(_, l)| l)
                    .ok_or(BulkError::MissingSource { line: line_no })?,
            ),
        };
        items.push(Item { op, meta, source });
    }
    if items.is_empty() {
        return Err(BulkError::Empty);
    }
    Ok(items)
}

/// A document timestamp: RFC 3339 (a date-time without an offset is UTC, as Elasticsearch reads
/// it), or epoch milliseconds as a number.
pub fn parse_timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|n| n.and_utc())
            }),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

/// Where a document's fields go. Written down in docs/protocols.md.
pub const TIMESTAMP_FIELDS: [&str; 3] = ["@timestamp", "timestamp", "time"];
/// The upper-case names are syslog-ng's: its `elasticsearch-http()` sends `format-json --scope
/// rfc5424` unless told otherwise, so a document written by its defaults maps too.
pub const LEVEL_FIELDS: [&str; 4] = ["log.level", "level", "severity", "PRIORITY"];
pub const SERVICE_FIELDS: [&str; 3] = ["service.name", "service", "PROGRAM"];
pub const MESSAGE_FIELDS: [&str; 5] = ["message", "msg", "log", "event.original", "MESSAGE"];
pub const HOST_FIELDS: [&str; 4] = ["host.name", "host.hostname", "host", "HOST"];
pub const COMPONENT_FIELDS: [&str; 2] = ["log.logger", "component"];

/// The first of `names` that holds a string, taken out of the document. A field of another type is
/// left where it is (it stays in `attributes`, so nothing is lost).
fn take_string(doc: &mut impl Fields, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| doc.take_string_if(name, |_| true))
}

/// One source document as an event (its id and checks come after, from the intake's context):
/// `default_service` is the action's or the URL's index, used when the document names no service.
/// The route reads documents as [`Source`]s; a whole object maps the same (the tests' reference).
pub fn document_event(
    mut doc: impl Fields,
    default_service: &str,
    received_at: DateTime<Utc>,
) -> Result<LogEvent, String> {
    let mut timestamp = None;
    for name in TIMESTAMP_FIELDS {
        if let Some(v) = doc.take_value(name) {
            match parse_timestamp(&v) {
                Some(t) => {
                    timestamp = Some(t);
                    break;
                }
                None => {
                    return Err(format!(
                        "field `{name}` is not an RFC 3339 date or epoch milliseconds: {v}"
                    ))
                }
            }
        }
    }
    // An unknown level is kept as it came, where it came.
    let level = LEVEL_FIELDS
        .iter()
        .find_map(|name| doc.take_string_if(name, |s| s.parse::<Level>().is_ok()))
        .and_then(|s| s.parse().ok())
        .unwrap_or(Level::Info);
    let service =
        take_string(&mut doc, &SERVICE_FIELDS).unwrap_or_else(|| default_service.to_owned());
    let message = take_string(&mut doc, &MESSAGE_FIELDS).unwrap_or_default();
    let host = take_string(&mut doc, &HOST_FIELDS).unwrap_or_default();
    let component = take_string(&mut doc, &COMPONENT_FIELDS).unwrap_or_default();
    let trace_id = take_string(&mut doc, &["trace.id"]);
    let span_id = take_string(&mut doc, &["span.id"]);
    Ok(LogEvent {
        event_id: String::new(),
        timestamp: timestamp.unwrap_or(received_at),
        level,
        service,
        component,
        host,
        message,
        trace_id,
        span_id,
        attributes: doc.into_attributes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

    use crate::protocols::elastic::source::Source;
    use serde_json::Map;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn an_ecs_document_maps_flat_and_nested_fields_and_keeps_the_rest() {
        let doc = obj(json!({
            "@timestamp": "2026-12-05T11:59:58.123Z",
            "log": {"level": "warning", "file": {"path": "/var/log/app.log"}},
            "service.name": "checkout",
            "host": {"name": "web-1", "ip": ["10.0.0.1"]},
            "message": "slow response",
            "trace": {"id": "4bf92f3577b34da6a3ce929d0e0e4736"},
            "http": {"status": 503}
        }));
        let e = document_event(doc, "logs-app", now()).unwrap();
        assert_eq!(e.timestamp.to_rfc3339(), "2026-12-05T11:59:58.123+00:00");
        assert_eq!(e.level, Level::Warn);
        assert_eq!(
            (e.service.as_str(), e.host.as_str(), e.message.as_str()),
            ("checkout", "web-1", "slow response")
        );
        assert_eq!(
            e.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            Value::Object(e.attributes),
            json!({"log": {"file": {"path": "/var/log/app.log"}}, "host": {"ip": ["10.0.0.1"]}, "http": {"status": 503}})
        );
    }

    #[test]
    fn a_value_the_mapping_cannot_use_stays_where_it_came_in_both_readings() {
        let text = r#"{"log": {"level": "bogus", "file": "f"}, "host": {"name": 7},
            "service": {"name": "api"}, "message": "m", "trace": {}}"#;
        let whole: Map<String, Value> = serde_json::from_str(text).unwrap();
        let read: Source = serde_json::from_str(text).unwrap();
        for e in [
            document_event(whole, "idx", now()).unwrap(),
            document_event(read, "idx", now()).unwrap(),
        ] {
            assert_eq!((e.level, e.service.as_str()), (Level::Info, "api"));
            assert_eq!(
                Value::Object(e.attributes),
                json!({"log": {"level": "bogus", "file": "f"}, "host": {"name": 7}, "trace": {}}),
                "an unknown level and a host name that is no string stay nested; an object sent \
                 empty stays, one emptied by the mapping (service) goes"
            );
        }
    }

    #[test]
    fn a_document_in_syslog_ngs_default_template_maps_too() {
        let doc = obj(
            json!({"PROGRAM": "sshd", "PRIORITY": "err", "HOST": "bastion",
            "MESSAGE": "Failed password", "FACILITY": "auth", "PID": "42",
            "@timestamp": "2026-12-05T11:59:00+01:00"}),
        );
        let e = document_event(doc, "syslog", now()).unwrap();
        assert_eq!(
            (
                e.service.as_str(),
                e.level,
                e.host.as_str(),
                e.message.as_str()
            ),
            ("sshd", Level::Error, "bastion", "Failed password")
        );
        assert_eq!(e.timestamp.to_rfc3339(), "2026-12-05T10:59:00+00:00");
        assert_eq!(
            Value::Object(e.attributes),
            json!({"FACILITY": "auth", "PID": "42"})
        );
    }

    #[test]
    fn fallbacks_fill_what_the_document_leaves_out_and_odd_fields_stay() {
        let doc = obj(json!({"log": "raw line", "level": 3, "severity": "bogus", "ts": 1}));
        let e = document_event(doc, "syslog", now()).unwrap();
        assert_eq!(e.message, "raw line");
        assert_eq!(e.service, "syslog", "the index names the service");
        assert_eq!(e.timestamp, now(), "no timestamp: the arrival time");
        assert_eq!(e.level, Level::Info);
        assert_eq!(
            Value::Object(e.attributes),
            json!({"level": 3, "severity": "bogus", "ts": 1}),
            "a level that is not one stays as it came"
        );
        let millis = obj(json!({"@timestamp": 1764936000000i64, "message": "m"}));
        assert_eq!(
            document_event(millis, "x", now()).unwrap().timestamp,
            "2025-12-05T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let bad = obj(json!({"@timestamp": "yesterday", "message": "m"}));
        assert!(document_event(bad, "x", now())
            .unwrap_err()
            .contains("@timestamp"));
    }

    #[test]
    fn a_bulk_body_pairs_actions_with_sources_and_refuses_a_broken_one_whole() {
        let body = b"{\"index\":{\"_index\":\"a\",\"_id\":\"1\"}}\r\n{\"message\":\"x\"}\n\n{\"delete\":{\"_id\":\"2\"}}\n{\"create\":{}}\n{\"message\":\"y\"}\n";
        let items = read_bulk(body).unwrap();
        let ops: Vec<(Op, Option<&str>)> = items.iter().map(|i| (i.op, i.source)).collect();
        assert_eq!(
            ops,
            vec![
                (Op::Index, Some("{\"message\":\"x\"}")),
                (Op::Delete, None),
                (Op::Create, Some("{\"message\":\"y\"}"))
            ]
        );
        assert_eq!(items[0].meta.id.as_deref(), Some("1"));
        assert_eq!(
            read_bulk(b"{\"index\":{}}\n").unwrap_err(),
            BulkError::MissingSource { line: 1 }
        );
        assert!(matches!(
            read_bulk(b"{\"message\":\"x\"}\n{\"index\":{}}\n").unwrap_err(),
            BulkError::Action { line: 1, .. }
        ));
        assert!(matches!(
            read_bulk(b"{\"index\":{},\"create\":{}}\n{}\n").unwrap_err(),
            BulkError::Action { .. }
        ));
        assert!(matches!(
            read_bulk(b"{\"index\":{\"_id\":7}}\n{}\n").unwrap_err(),
            BulkError::Action { .. }
        ));
        assert_eq!(read_bulk(b"\n\n").unwrap_err(), BulkError::Empty);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any body is split or refused, never a panic.
        #[test]
        fn any_bulk_body_is_read_or_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            lines in proptest::collection::vec("\\PC{0,40}", 0..6),
        ) {
            let _ = read_bulk(&bytes);
            let _ = read_bulk(lines.join("\n").as_bytes());
        }

        /// A document read in one pass (as the route reads it) maps exactly as the same text read
        /// whole into an object: the same event and attributes, or the same refusal. The keys are
        /// every name the mapping takes, heads and others, sent flat or nested, twice, or with an
        /// escape in the key; the values every JSON type, levels known and unknown, dates good
        /// and bad.
        #[test]
        fn a_document_read_in_one_pass_maps_as_the_whole_object(
            fields in proptest::collection::vec((0usize..32, proptest::prelude::any::<bool>(), 0usize..14, proptest::prelude::any::<i64>()), 0..10),
        ) {
            const NAMES: [&str; 29] = ["@timestamp", "timestamp", "time", "log", "log.level",
                "log.logger", "level", "severity", "PRIORITY", "service", "service.name",
                "PROGRAM", "message", "msg", "event", "event.original", "MESSAGE", "host",
                "host.name", "host.hostname", "HOST", "component", "trace", "trace.id", "span",
                "span.id", "x", "http.status", "logger"];
            let mut text = String::from("{");
            for (n, (name, escaped, kind, v)) in fields.iter().enumerate() {
                let name = NAMES[name % NAMES.len()];
                let key = if *escaped {
                    // The first character as a \u escape: the key is not borrowed from the text.
                    format!("\\u{:04x}{}", name.as_bytes()[0], &name[1..])
                } else {
                    name.to_owned()
                };
                let value = match kind {
                    0 => json!(v),
                    1 => json!(v.to_string()),
                    2 => json!({"level": (["warning", "bogus", "ERROR"][v.rem_euclid(3) as usize]), "name": "n", "logger": "l"}),
                    3 => json!({}),
                    4 => json!({"level": v, "logger": [v], "id": {"x": v}}),
                    5 => json!({"name": "svc", "original": "o", "hostname": "h", "extra": null, "id": "abc"}),
                    6 => json!([v, {"level": "WARN"}]),
                    7 => json!("2026-12-05T11:59:58.123Z"),
                    8 => json!("2026-12-05T11:59:58"),
                    9 => json!(null),
                    10 => json!(*v as f64 / 3.0),
                    11 => json!(v % 2 == 0),
                    12 => json!((["crit", "warning", "notice", "Debug", "nope"][v.rem_euclid(5) as usize])),
                    _ => json!({"level": {"nested": v}, "name": 7}),
                };
                if n > 0 {
                    text.push(',');
                }
                text.push_str(&format!("\"{key}\":{value}"));
            }
            text.push('}');
            let whole: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let whole = document_event(whole, "idx", now());
            let read: Source = serde_json::from_str(&text).unwrap();
            let read = document_event(read, "idx", now());
            proptest::prop_assert_eq!(whole, read, "{}", text);
        }
    }
}
