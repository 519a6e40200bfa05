//! Ingest bodies into events: the body's format ([`BodyFormat`]), each event parsed and validated
//! on its own ([`ParseContext`]), refusals by index ([`Rejected`]), and the request's trace
//! context.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use logpipe_common::event::{EventError, LogEvent, MAX_NAME_BYTES};
use logpipe_common::formats::{derived_id, parse_line, LineContext};

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

/// The outcome of parsing a body: valid events (with their index) and the rejected ones.
#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<LogEvent>,
    pub rejected: Vec<Rejected>,
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
        if !had_id {
            event.event_id = self.id_for(index, event.timestamp);
        } else if let Some(tenant) = &self.tenant {
            // The client's id is checked as the event's own would be, before it is replaced.
            if event.event_id.len() > MAX_NAME_BYTES {
                return Err(EventError::TooLong {
                    field: "event_id",
                    len: event.event_id.len(),
                    max: MAX_NAME_BYTES,
                });
            }
            let seed = [
                b"event_id\n",
                tenant.as_bytes(),
                b"\n",
                event.event_id.as_bytes(),
            ]
            .concat();
            event.event_id = derived_id(event.timestamp, &seed);
        }
        if event.trace_id.is_none() {
            event.trace_id.clone_from(&self.trace_id);
        }
        let ahead = (event.timestamp - self.received_at).num_seconds();
        if ahead > self.max_future_secs {
            return Err(EventError::InFuture {
                ahead_secs: ahead,
                max_secs: self.max_future_secs,
            });
        }
        event.validate()?;
        Ok(event)
    }

    /// One event's JSON, straight into the event type (no intermediate `Value` tree).
    fn event_from_json(&self, index: usize, json: &str) -> Result<LogEvent, EventError> {
        self.check_size(json.len())?;
        if !json.trim_start().starts_with('{') {
            return Err(EventError::Json(
                match serde_json::from_str::<serde::de::IgnoredAny>(json) {
                    Err(e) => e.to_string(),
                    Ok(_) => "an event must be a JSON object".into(),
                },
            ));
        }
        let event: LogEvent =
            serde_json::from_str(json).map_err(|e| EventError::Json(e.to_string()))?;
        let had_id = !event.event_id.is_empty();
        self.finish(index, event, had_id)
    }

    fn event_from_line(&self, index: usize, line: &str) -> Result<LogEvent, EventError> {
        self.check_size(line.len())?;
        let ctx = LineContext {
            event_id: "pending".into(),
            default_service: self.default_service,
            received_at: self.received_at,
        };
        let event = parse_line(line, &ctx)?;
        self.finish(index, event, false)
    }

    /// Split, parse and validate a body.
    pub fn parse(&self, format: BodyFormat, body: &[u8]) -> Result<Parsed, BodyError> {
        let mut parsed = Parsed::default();
        let mut push = |index: usize, r: Result<LogEvent, EventError>| match r {
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
