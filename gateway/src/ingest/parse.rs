//! Ingest bodies into events: the body's format ([`BodyFormat`]), each event parsed and validated
//! on its own ([`ParseContext`]), refusals by index ([`Rejected`]), and the request's trace
//! context.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use logpipe_common::event::{EventError, LogEvent, MAX_NAME_BYTES};
use logpipe_common::formats::{derived_id, parse_line, LineContext};
use logpipe_common::{RawEvent, Unchecked};

use serde::Serialize;
use serde_json::value::RawValue;

/// The body formats `POST /api/v1/logs` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Ndjson,
    Lines,
}

impl BodyFormat {
    /// From `Content-Type`; `None` for anything else (415).
    pub fn from_content_type(ct: Option<&str>) -> Option<BodyFormat> {
        let essence = ct
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(BodyFormat::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonlines" => {
                Some(BodyFormat::Ndjson)
            }
            "text/plain" => Some(BodyFormat::Lines),
            _ => None,
        }
    }
}

/// One refused event: where it was in the body and why.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Rejected {
    /// Zero-based position among the body's events (blank lines are not events).
    pub index: usize,
    /// Short error kind: `invalid_json`, `missing_field`, `too_long`, `unparseable_line`, ...
    pub error: &'static str,
    pub detail: String,
}

/// The outcome of parsing a body: valid events (in the body's order) and the rejected ones. The
/// own route's events are [`RawEvent`]s, kept as the text they arrived in; the protocols build
/// [`LogEvent`]s.
#[derive(Debug)]
pub struct Parsed<E = LogEvent> {
    pub events: Vec<E>,
    pub rejected: Vec<Rejected>,
}

impl<E> Default for Parsed<E> {
    fn default() -> Self {
        Parsed {
            events: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

/// What [`ParseContext`] fills in before an event's checks: the same for an event read from JSON
/// ([`Unchecked`]) and one built from a line or a protocol's record ([`LogEvent`]).
pub(crate) trait Fill {
    fn event_id(&self) -> &str;
    fn timestamp(&self) -> DateTime<Utc>;
    fn has_trace(&self) -> bool;
    fn set_event_id(&mut self, id: String);
    fn set_trace_id(&mut self, id: String);
}

impl Fill for LogEvent {
    fn event_id(&self) -> &str {
        &self.event_id
    }
    fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }
    fn has_trace(&self) -> bool {
        self.trace_id.is_some()
    }
    fn set_event_id(&mut self, id: String) {
        self.event_id = id;
    }
    fn set_trace_id(&mut self, id: String) {
        self.trace_id = Some(id);
    }
}

impl Fill for Unchecked {
    fn event_id(&self) -> &str {
        Unchecked::event_id(self)
    }
    fn timestamp(&self) -> DateTime<Utc> {
        Unchecked::timestamp(self)
    }
    fn has_trace(&self) -> bool {
        self.trace_id().is_some()
    }
    fn set_event_id(&mut self, id: String) {
        Unchecked::set_event_id(self, id);
    }
    fn set_trace_id(&mut self, id: String) {
        Unchecked::set_trace_id(self, id);
    }
}

/// Problems with the body as a whole (as opposed to one event in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body holds no events")]
    Empty,
    #[error("the body holds {count} events; at most {max} are accepted per request")]
    TooManyEvents { count: usize, max: usize },
    #[error("the body is not valid JSON: {0}")]
    Json(String),
    #[error("the body is not valid UTF-8")]
    Utf8,
}

/// Everything that shapes how a body becomes events.
#[derive(Debug, Clone)]
pub struct ParseContext<'a> {
    pub received_at: DateTime<Utc>,
    pub max_events: usize,
    pub max_future_secs: i64,
    pub max_event_bytes: usize,
    /// Service for lines that name none (`?service=`).
    pub default_service: &'a str,
    /// Seeds stable ids for events without one; `None` means fresh random ids.
    pub id_seed: Option<Vec<u8>>,
    /// The key the events came with. When set, an event's own `event_id` is stored as an id
    /// derived from the key's name and that id: stable across resends by the same key, and no
    /// other key can collide with it (and so make its events vanish as duplicates).
    pub tenant: Option<String>,
    /// The trace the request belongs to, for events that carry none.
    pub trace_id: Option<String>,
}

impl ParseContext<'_> {
    fn id_for(&self, index: usize, ts: DateTime<Utc>) -> String {
        match &self.id_seed {
            Some(seed) => {
                let mut s = seed.clone();
                s.extend_from_slice(&(index as u64).to_be_bytes());
                derived_id(ts, &s)
            }
            None => LogEvent::new_id(),
        }
    }

    /// Refuse an event whose text is larger than one event may be, before it is parsed.
    pub(crate) fn check_size(&self, len: usize) -> Result<(), EventError> {
        if len > self.max_event_bytes {
            return Err(EventError::TooLarge {
                len,
                max: self.max_event_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn finish(
        &self,
        index: usize,
        mut event: LogEvent,
        had_id: bool,
    ) -> Result<LogEvent, EventError> {
        self.fill(index, &mut event, had_id)?;
        event.validate()?;
        Ok(event)
    }

    /// The event's id (its own, scoped to the key, or one made here), the request's trace when it
    /// carries none, and the bound on how far ahead it may be: what comes before its own checks.
    fn fill(&self, index: usize, event: &mut impl Fill, had_id: bool) -> Result<(), EventError> {
        if !had_id {
            let id = self.id_for(index, event.timestamp());
            event.set_event_id(id);
        } else if let Some(tenant) = &self.tenant {
            // The client's id is checked as the event's own would be, before it is replaced.
            let own = event.event_id();
            if own.len() > MAX_NAME_BYTES {
                return Err(EventError::TooLong {
                    field: "event_id",
                    len: own.len(),
                    max: MAX_NAME_BYTES,
                });
            }
            let seed = [b"event_id\n", tenant.as_bytes(), b"\n", own.as_bytes()].concat();
            let id = derived_id(event.timestamp(), &seed);
            event.set_event_id(id);
        }
        if !event.has_trace() {
            if let Some(trace) = &self.trace_id {
                event.set_trace_id(trace.clone());
            }
        }
        let ahead = (event.timestamp() - self.received_at).num_seconds();
        if ahead > self.max_future_secs {
            return Err(EventError::InFuture {
                ahead_secs: ahead,
                max_secs: self.max_future_secs,
            });
        }
        Ok(())
    }

    /// One event's JSON, kept as its text with its fields located (no `String` per field, no
    /// tree of its attributes): it goes to Kafka as [`RawEvent::write_json`] writes it.
    fn event_from_json(&self, index: usize, json: &str) -> Result<RawEvent, EventError> {
        self.check_size(json.len())?;
        if !json.trim_start().starts_with('{') {
            return Err(EventError::Json(
                match serde_json::from_str::<serde::de::IgnoredAny>(json) {
                    Err(e) => e.to_string(),
                    Ok(_) => "an event must be a JSON object".into(),
                },
            ));
        }
        let mut event = RawEvent::read_json(json)?;
        let had_id = !event.event_id().is_empty();
        self.fill(index, &mut event, had_id)?;
        event.check()
    }

    fn event_from_line(&self, index: usize, line: &str) -> Result<RawEvent, EventError> {
        self.check_size(line.len())?;
        let ctx = LineContext {
            event_id: "pending".into(),
            default_service: self.default_service,
            received_at: self.received_at,
        };
        let event = parse_line(line, &ctx)?;
        RawEvent::from_event(&self.finish(index, event, false)?)
    }

    /// Split, parse and validate a body.
    pub fn parse(&self, format: BodyFormat, body: &[u8]) -> Result<Parsed<RawEvent>, BodyError> {
        let mut parsed = Parsed::default();
        let mut push = |index: usize, r: Result<RawEvent, EventError>| match r {
            Ok(e) => parsed.events.push(e),
            Err(e) => parsed.rejected.push(Rejected {
                index,
                error: e.kind(),
                detail: e.to_string(),
            }),
        };
        match format {
            BodyFormat::Json => {
                // The body is checked as JSON and split into events without building a tree;
                // each event is then read on its own, so one bad event refuses only itself.
                let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
                let items: Vec<&RawValue> = if is_array {
                    serde_json::from_slice(body)
                } else {
                    serde_json::from_slice(body).map(|one| vec![one])
                }
                .map_err(|e| BodyError::Json(e.to_string()))?;
                self.check_count(items.len())?;
                for (i, raw) in items.into_iter().enumerate() {
                    push(i, self.event_from_json(i, raw.get()));
                }
            }
            BodyFormat::Ndjson | BodyFormat::Lines => {
                let text = std::str::from_utf8(body).map_err(|_| BodyError::Utf8)?;
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                self.check_count(lines.len())?;
                for (i, line) in lines.into_iter().enumerate() {
                    let r = if format == BodyFormat::Ndjson {
                        self.event_from_json(i, line)
                    } else {
                        self.event_from_line(i, line)
                    };
                    push(i, r);
                }
            }
        }
        Ok(parsed)
    }

    fn check_count(&self, count: usize) -> Result<(), BodyError> {
        if count == 0 {
            Err(BodyError::Empty)
        } else if count > self.max_events {
            Err(BodyError::TooManyEvents {
                count,
                max: self.max_events,
            })
        } else {
            Ok(())
        }
    }
}

/// A W3C `traceparent` header, when present and well formed.
pub fn traceparent(headers: &HeaderMap) -> Option<String> {
    logpipe_common::telemetry::well_formed_traceparent(headers.get("traceparent")?.to_str().ok()?)
}

/// The `?service=` of a lines upload, checked like an event's service.
pub fn default_service(service: Option<&str>) -> Result<&str, String> {
    match service {
        None => Ok("unknown"),
        Some(s) if s.trim().is_empty() => Err("`service` must not be empty".into()),
        Some(s) if s.len() > MAX_NAME_BYTES => Err(format!(
            "`service` is {} bytes; at most {MAX_NAME_BYTES} allowed",
            s.len()
        )),
        Some(s) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

    /// One event's JSON from parts each valid or not: ids absent, null, given or too long;
    /// timestamps past, near, ahead or malformed; strings with escapes, NUL or past their bound;
    /// attributes absent, nested, repeated, not an object or holding a NUL; an unknown field.
    fn record() -> impl Strategy<Value = String> {
        (
            select(vec![
                "",
                r#""event_id":null,"#,
                r#""event_id":"e-1","#,
                r#""event_id":"é\"q","#,
                r#""event_id":"  ","#,
            ]),
            prop_oneof![Just(None), Just(Some(200usize))],
            select(vec![-86_400i64, -1, 0, 9, 11, 3_600]),
            select(vec![r#""INFO""#, r#""warning""#, r#""Fatal""#, r#""LOUD""#]),
            select(vec![r#""api""#, r#""""#, r#"" ""#, r#""a\u0000b""#, r#""p\u00e9""#]),
            select(vec![r#""m""#, r#""q \"x\" \\ \n é""#, r#""""#]),
            select(vec!["", r#","trace_id":"abc""#, r#","trace_id":null"#]),
            select(vec![
                "",
                r#","attributes":{}"#,
                r#","attributes":{"b":"x", "a":[1,{"c":null}],"n":-2.5e3}"#,
                r#","attributes":{"a":1,"a":2}"#,
                r#","attributes":{"k":"\u0000"}"#,
                r#","attributes":[1]"#,
                r#","attributes":null"#,
            ]),
            select(vec!["", r#","unknown":{"x":[1]}"#, r#","timestamp":"2026-01-01T00:00:00Z""#]),
        )
            .prop_map(
                |(id, long_id, ahead, level, service, message, trace, attributes, extra)| {
                    let id = match long_id {
                        Some(n) if !id.is_empty() => format!(r#""event_id":"{}","#, "x".repeat(n)),
                        _ => id.to_owned(),
                    };
                    let received: DateTime<Utc> = "2026-12-07T10:00:00Z".parse().unwrap();
                    let ts = (received + chrono::Duration::seconds(ahead)).to_rfc3339();
                    format!(
                        r#"{{{id}"timestamp":"{ts}","level":{level},"service":{service},"message":{message}{trace}{attributes}{extra}}}"#
                    )
                },
            )
    }

    fn context(tenant: bool, seed: bool, trace: bool) -> ParseContext<'static> {
        ParseContext {
            received_at: "2026-12-07T10:00:00Z".parse().unwrap(),
            max_events: 10,
            max_future_secs: 10,
            max_event_bytes: 4096,
            default_service: "edge",
            id_seed: seed.then(|| b"seed".to_vec()),
            tenant: tenant.then(|| "tenant-a".into()),
            trace_id: trace.then(|| "4bf92f3577b34da6a3ce929d0e0e4736".into()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The own route keeps each event as its text and writes it on without a tree; it must
        /// accept, refuse, fill in and send what reading it into a `LogEvent` and writing that
        /// (the protocols' path, and this route's before) would.
        #[test]
        fn the_own_route_sends_what_the_event_type_would(
            record in record(),
            (tenant, seed, trace) in (any::<bool>(), any::<bool>(), any::<bool>()),
        ) {
            let ctx = context(tenant, seed, trace);
            let reference = serde_json::from_str::<LogEvent>(&record)
                .map_err(|e| EventError::Json(e.to_string()))
                .and_then(|e| {
                    let had_id = !e.event_id.is_empty();
                    ctx.finish(0, e, had_id)
                });
            let parsed = ctx.parse(BodyFormat::Json, record.as_bytes()).unwrap();
            match (parsed.events.first(), reference) {
                (Some(raw), Ok(mut expected)) => {
                    let mut wire = Vec::new();
                    raw.write_json(&mut wire);
                    let sent = LogEvent::from_json(&wire).unwrap();
                    if !seed && !record.contains(r#""event_id":""#) {
                        // No id of its own and no seed: a fresh random id on each side.
                        prop_assert_eq!(sent.event_id.len(), 26);
                        expected.event_id.clone_from(&sent.event_id);
                    }
                    prop_assert_eq!(sent, expected, "{}", record);
                }
                (None, Err(e)) => {
                    prop_assert_eq!(parsed.rejected[0].error, e.kind(), "{}: {}", record, e);
                    if !matches!(e, EventError::Json(_)) {
                        prop_assert_eq!(&parsed.rejected[0].detail, &e.to_string());
                    }
                }
                (raw, reference) => {
                    prop_assert!(false, "{record}: route {raw:?} {:?}, reference {reference:?}", parsed.rejected)
                }
            }
        }
    }
}
