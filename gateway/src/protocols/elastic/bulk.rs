//! An Elasticsearch `_bulk` body, read: NDJSON action/source pairs ([`read_bulk`]), and each
//! source document mapped to an event from its ECS fields, with fallbacks ([`document_event`]).
//! Pure: no I/O, so every decision here is unit-tested and fuzzed.

use chrono::{DateTime, Utc};
use logpipe_common::event::{Level, LogEvent};
use serde::Deserialize;
use serde_json::{Map, Value};

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

/// Take a field by its dotted ECS name, whether the document writes it flat (`"log.level": …`) or
/// nested (`"log": {"level": …}`); an object left empty by the take is removed too.
pub fn take(doc: &mut Map<String, Value>, dotted: &str) -> Option<Value> {
    if let Some(v) = doc.remove(dotted) {
        return Some(v);
    }
    let (head, rest) = dotted.split_once('.')?;
    let Some(Value::Object(inner)) = doc.get_mut(head) else {
        return None;
    };
    let v = take(inner, rest)?;
    if inner.is_empty() {
        doc.remove(head);
    }
    Some(v)
}

/// The first of `names` that holds a string, taken out of the document. A field of another type is
/// left where it is (it stays in `attributes`, so nothing is lost).
fn take_string(doc: &mut Map<String, Value>, names: &[&str]) -> Option<String> {
    for name in names {
        match take(doc, name) {
            Some(Value::String(s)) => return Some(s),
            Some(other) => put_back(doc, name, other),
            None => {}
        }
    }
    None
}

fn put_back(doc: &mut Map<String, Value>, dotted: &str, v: Value) {
    doc.insert(dotted.to_owned(), v);
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

/// A source document read in one pass: the top-level fields the mapping may take (by their name,
/// flat or as the head of a nested one) set aside in a small map, every other field straight into
/// the attributes, so the mapping's lookups never search the whole document.
#[derive(Debug, Default)]
pub struct Source {
    pub mapped: Map<String, Value>,
    pub rest: Map<String, Value>,
}

/// Whether a top-level key is one the mapping may take (a name in its lists, or the head of one).
fn may_map(key: &str) -> bool {
    matches!(
        key,
        "@timestamp"
            | "timestamp"
            | "time"
            | "log"
            | "log.level"
            | "log.logger"
            | "level"
            | "severity"
            | "PRIORITY"
            | "service"
            | "service.name"
            | "PROGRAM"
            | "message"
            | "msg"
            | "event"
            | "event.original"
            | "MESSAGE"
            | "host"
            | "host.name"
            | "host.hostname"
            | "HOST"
            | "component"
            | "trace"
            | "trace.id"
            | "span"
            | "span.id"
    )
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> serde::de::Visitor<'de> for SourceVisitor {
            type Value = Source;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Source, A::Error> {
                let mut src = Source::default();
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if may_map(&key) {
                        src.mapped.insert(key, value);
                    } else {
                        src.rest.insert(key, value);
                    }
                }
                Ok(src)
            }
        }
        d.deserialize_map(SourceVisitor)
    }
}

/// A source document as an event: [`document_event`] on the fields it may map, the rest kept as
/// they came.
pub fn source_event(
    src: Source,
    default_service: &str,
    received_at: DateTime<Utc>,
) -> Result<LogEvent, String> {
    let mut event = document_event(src.mapped, default_service, received_at)?;
    let left = std::mem::replace(&mut event.attributes, src.rest);
    event.attributes.extend(left);
    Ok(event)
}

/// One source document as an event (its id and checks come after, from the intake's context):
/// `default_service` is the action's or the URL's index, used when the document names no service.
pub fn document_event(
    mut doc: Map<String, Value>,
    default_service: &str,
    received_at: DateTime<Utc>,
) -> Result<LogEvent, String> {
    let mut timestamp = None;
    for name in TIMESTAMP_FIELDS {
        if let Some(v) = take(&mut doc, name) {
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
    let mut level = Level::Info;
    for name in LEVEL_FIELDS {
        match take(&mut doc, name) {
            Some(Value::String(s)) => match s.parse() {
                Ok(l) => {
                    level = l;
                    break;
                }
                // An unknown level is kept as it came, where it came.
                Err(_) => put_back(&mut doc, name, Value::String(s)),
            },
            Some(other) => put_back(&mut doc, name, other),
            None => {}
        }
    }
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
        attributes: doc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2026-12-05T12:00:00Z".parse().unwrap()
    }

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
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Any body is split or refused, and any document is mapped or refused: never a panic,
        /// and a mapped document keeps every field it did not map.
        #[test]
        fn any_bulk_body_or_document_is_read_or_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            lines in proptest::collection::vec("\\PC{0,40}", 0..6),
            keys in proptest::collection::vec("(@timestamp|log|log\\.level|log\\.logger|level|service|service\\.name|message|msg|host|host\\.name|host\\.hostname|event|trace|span|x)", 0..8),
            values in proptest::collection::vec(proptest::prelude::any::<i64>(), 0..8),
        ) {
            let _ = read_bulk(&bytes);
            let _ = read_bulk(lines.join("\n").as_bytes());
            let mut doc = Map::new();
            for (k, v) in keys.iter().zip(values.iter()) {
                let value = match v.rem_euclid(8) {
                    0 => json!(v),
                    1 => json!(v.to_string()),
                    2 => json!({"level": v.to_string(), "name": "n"}),
                    3 => json!({}),
                    4 => json!({"level": v, "logger": [v], "id": {"x": v}}),
                    5 => json!({"name": "svc", "original": "o", "hostname": "h", "extra": null}),
                    6 => json!([v, {"level": "WARN"}]),
                    _ => json!("ERROR"),
                };
                doc.insert(k.clone(), value);
            }
            let whole = document_event(doc.clone(), "idx", now());
            let text = Value::Object(doc.clone()).to_string();
            let split: Source = serde_json::from_value(Value::Object(doc)).unwrap();
            let split = source_event(split, "idx", now());
            // From the text, as the route reads it, the same.
            let read: Source = serde_json::from_str(&text).unwrap();
            let read = source_event(read, "idx", now());
            proptest::prop_assert_eq!(&split, &read);
            // Reading in one pass maps exactly as the mapping over the whole document.
            proptest::prop_assert_eq!(whole.map_err(|e| e.len()), split.map_err(|e| e.len()));
        }
    }
}
