//! Loki's push API: `POST /loki/api/v1/push`, what Promtail, Grafana Alloy, Fluent Bit's `loki`
//! output, Vector's `loki` sink and the Loki client libraries send. JSON (`application/json`,
//! optionally gzip) or snappy-compressed protobuf (`application/x-protobuf`, Loki's `logproto`).
//!
//! Each entry is one event: its line is the `message`; its nanosecond timestamp the `timestamp`
//! (PostgreSQL keeps microseconds, so a timestamp finer than that is also kept whole in
//! `attributes.timestamp_ns`); the stream's labels name the service, level and host (see
//! [`SERVICE_LABELS`], [`LEVEL_LABELS`], [`HOST_LABELS`]), and the other labels and the entry's
//! structured metadata become `attributes`. The answer is Loki's: 204 when every entry was taken;
//! 400 with a text body naming the refused entries (the others are delivered, as Loki does, and
//! a client does not resend a 400); 429/503 with `Retry-After` for what a resend can cure.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use logpipe_common::event::{EventError, Level, LogEvent};
use prost::Message;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::ingest::intake::{respond, Ingress};
use crate::ingest::{read_decoded, Intake, ParseContext, Parsed, Rejected, Undelivered};
use crate::ratelimit::rate_limit_headers;
use crate::telemetry;

/// Labels that name the service, first found wins (`service_name` is what Loki 3 derives).
pub const SERVICE_LABELS: [&str; 6] = [
    "service_name",
    "service",
    "app",
    "application",
    "job",
    "container",
];
/// Labels (then structured metadata) that name the level.
pub const LEVEL_LABELS: [&str; 4] = ["level", "detected_level", "severity", "lvl"];
/// Labels that name the host.
pub const HOST_LABELS: [&str; 4] = ["host", "hostname", "instance", "node"];

/// `logproto.PushRequest`, as Loki defines it (`pkg/push/push.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// A label set as text: `{job="api", level="error"}`.
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPair>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The JSON push body: `{"streams": [{"stream": {labels}, "values": [["<ns>", "<line>", {metadata}?]]}]}`.
#[derive(Debug, Deserialize)]
struct JsonPush {
    streams: Vec<JsonStream>,
}

#[derive(Debug, Deserialize)]
struct JsonStream {
    #[serde(default)]
    stream: Map<String, Value>,
    #[serde(default)]
    values: Vec<JsonValue>,
}

/// One `[ts, line]` or `[ts, line, metadata]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonValue {
    Two((Value, String)),
    Three((Value, String, Map<String, Value>)),
}

/// Name/value pairs: a stream's labels, an entry's structured metadata.
pub type Pairs = Vec<(String, String)>;

/// One entry: nanoseconds since the epoch, the line, its structured metadata.
pub type Entry = (i128, String, Pairs);

/// One stream's labels and its entries, whatever the encoding.
#[derive(Debug, Default, PartialEq)]
pub struct Stream {
    pub labels: Pairs,
    pub entries: Vec<Entry>,
}

/// A Prometheus label set, `{name="value", ...}`, as Loki's protobuf streams carry it.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let bad = |why: &str| format!("labels {text:?}: {why}");
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| bad("not in braces"))?;
    let mut labels = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return Err(bad("expected a label name"));
        }
        let name = &rest[..name_len];
        rest = rest[name_len..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| bad("expected `=`"))?
            .trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| bad("expected a quoted value"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(bad("unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("unterminated escape")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(bad("expected `,` between labels"));
        }
    }
    Ok(labels)
}

fn json_nanos(v: &Value) -> Result<i128, String> {
    match v {
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("timestamp {s:?} is not nanoseconds")),
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .ok_or_else(|| format!("timestamp {n} is not nanoseconds")),
        other => Err(format!("timestamp {other} is not nanoseconds")),
    }
}

fn as_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// A push body as streams, from either encoding. A protobuf body is snappy-compressed (block
/// format), and its decoded size is held to `limit`.
pub fn decode(protobuf: bool, body: &[u8], limit: usize) -> Result<Vec<Stream>, ApiError> {
    if protobuf {
        let len = snap::raw::decompress_len(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not snappy-compressed: {e}")))?;
        if len > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let raw = snap::raw::Decoder::new()
            .decompress_vec(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not snappy-compressed: {e}")))?;
        let push = PushRequest::decode(&raw[..]).map_err(|e| {
            ApiError::BadRequest(format!("the body is not a Loki PushRequest: {e}"))
        })?;
        push.streams
            .into_iter()
            .map(|s| {
                Ok(Stream {
                    labels: parse_labels(&s.labels).map_err(ApiError::BadRequest)?,
                    entries: s
                        .entries
                        .into_iter()
                        .map(|e| {
                            let ts = e.timestamp.unwrap_or_default();
                            let nanos =
                                i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
                            let meta = e
                                .structured_metadata
                                .into_iter()
                                .map(|p| (p.name, p.value))
                                .collect();
                            (nanos, e.line, meta)
                        })
                        .collect(),
                })
            })
            .collect()
    } else {
        let push: JsonPush = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a Loki JSON push: {e}")))?;
        push.streams
            .into_iter()
            .map(|s| {
                let labels = s.stream.into_iter().map(|(k, v)| (k, as_text(v))).collect();
                let entries = s
                    .values
                    .into_iter()
                    .map(|v| {
                        let (ts, line, meta) = match v {
                            JsonValue::Two((ts, line)) => (ts, line, Map::new()),
                            JsonValue::Three((ts, line, meta)) => (ts, line, meta),
                        };
                        let meta = meta.into_iter().map(|(k, v)| (k, as_text(v))).collect();
                        Ok((json_nanos(&ts).map_err(ApiError::BadRequest)?, line, meta))
                    })
                    .collect::<Result<_, ApiError>>()?;
                Ok(Stream { labels, entries })
            })
            .collect()
    }
}

fn take(pairs: &mut Vec<(String, String)>, names: &[&str]) -> Option<String> {
    let i = names
        .iter()
        .find_map(|n| pairs.iter().position(|(k, _)| k == n))?;
    Some(pairs.remove(i).1)
}

/// One entry as an event, before the context's ids and checks.
fn entry_event(
    labels: &[(String, String)],
    nanos: i128,
    line: String,
    meta: Vec<(String, String)>,
) -> Result<LogEvent, EventError> {
    let mut labels = labels.to_vec();
    let mut meta = meta;
    let service = take(&mut labels, &SERVICE_LABELS).unwrap_or_else(|| "unknown".into());
    let level_text = take(&mut labels, &LEVEL_LABELS).or_else(|| take(&mut meta, &LEVEL_LABELS));
    let mut attributes = Map::new();
    let level = match level_text {
        Some(t) => t.parse().unwrap_or_else(|_| {
            attributes.insert("level".into(), Value::String(t));
            Level::Info
        }),
        None => Level::Info,
    };
    let host = take(&mut labels, &HOST_LABELS).unwrap_or_default();
    let component = take(&mut labels, &["component", "logger"]).unwrap_or_default();
    let trace_id = take(&mut meta, &["trace_id", "traceID", "traceId"]);
    let span_id = take(&mut meta, &["span_id", "spanID", "spanId"]);
    let in_range = i64::try_from(nanos).ok();
    let timestamp = in_range
        .map(DateTime::from_timestamp_nanos)
        .ok_or_else(|| EventError::TimestampOutOfRange(format!("{nanos} ns since the epoch")))?;
    if nanos % 1_000 != 0 {
        attributes.insert("timestamp_ns".into(), Value::String(nanos.to_string()));
    }
    for (k, v) in labels.into_iter().chain(meta) {
        attributes.entry(k).or_insert(Value::String(v));
    }
    Ok(LogEvent {
        event_id: String::new(),
        timestamp,
        level,
        service,
        component,
        host,
        message: line,
        trace_id,
        span_id,
        attributes,
    })
}

/// Every entry as an event or a refusal, indexed in order (stream by stream).
pub fn to_events(ctx: &ParseContext<'_>, streams: Vec<Stream>) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index = 0;
    for stream in streams {
        for (nanos, line, meta) in stream.entries {
            let r = ctx
                .check_size(line.len())
                .and_then(|()| entry_event(&stream.labels, nanos, line, meta))
                .and_then(|e| ctx.finish(index, e, false));
            match r {
                Ok(e) => parsed.events.push(e),
                Err(e) => parsed.rejected.push(Rejected {
                    index,
                    error: e.kind(),
                    detail: e.to_string(),
                }),
            }
            index += 1;
        }
    }
    parsed
}

/// An error as Loki answers it: the status and a line of text.
pub fn error_response(status: StatusCode, detail: String) -> Response {
    let mut resp = (status, format!("{detail}\n")).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Push log entries, as Loki takes them.
///
/// JSON or snappy-compressed protobuf. 204 when every entry is in Kafka; 400 naming the refused
/// entries (the rest are delivered).
#[utoipa::path(post, path = "/loki/api/v1/push", tag = "protocols",
    request_body(description = "A Loki push request", content(
        (Vec<u8> = "application/x-protobuf"),
        (serde_json::Value = "application/json"),
    )),
    responses(
        (status = 204, description = "Every entry is in Kafka"),
        (status = 400, description = "Not a push body, or some entries refused (named; the rest delivered)"),
        (status = 401, description = "Missing or invalid API key"),
        (status = 403, description = "The key lacks the `ingest` scope"),
        (status = 408, description = "The body arrived too slowly"),
        (status = 413, description = "Body (decoded) or entry count over the limit"),
        (status = 415, description = "Not JSON or protobuf, or an unknown `Content-Encoding`"),
        (status = 429, description = "The ingest limit is spent; resend after `Retry-After`"),
        (status = 503, description = "Kafka did not acknowledge; resend"),
    ))]
pub async fn push(ingress: Ingress, req: Request) -> Response {
    respond(run_push(ingress.intake("/loki/api/v1/push"), req).await)
}

async fn run_push(intake: Intake<'_>, req: Request) -> Result<Response, Undelivered> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf");
    let protobuf = match content_type.split(';').next().unwrap_or("").trim() {
        "application/x-protobuf" | "application/protobuf" => true,
        "application/json" => false,
        other => return Err(ApiError::UnsupportedMediaType(other.to_owned()).into()),
    };
    let body = read_decoded(intake.s, &parts.headers, body).await?;
    let streams = decode(protobuf, &body, intake.s.config.body_limit_bytes)?;
    let count: usize = streams.iter().map(|s| s.entries.len()).sum();
    let ctx = intake.context(&parts.headers, "unknown", &body, true);
    if count > ctx.max_events {
        return Err(ApiError::TooManyEvents(format!(
            "the push holds {count} entries; at most {} are accepted per request",
            ctx.max_events
        ))
        .into());
    }
    let parsed = to_events(&ctx, streams);
    telemetry::ingest_events("rejected", parsed.rejected.len());
    let decision = if parsed.events.is_empty() {
        None
    } else {
        intake.deliver(&parts.headers, &parsed.events).await?
    };
    let mut resp = if parsed.rejected.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        let first: Vec<String> = parsed
            .rejected
            .iter()
            .take(5)
            .map(|r| format!("entry {}: {}", r.index, r.detail))
            .collect();
        error_response(
            StatusCode::BAD_REQUEST,
            format!(
                "{} of {count} entries refused ({} delivered): {}",
                parsed.rejected.len(),
                parsed.events.len(),
                first.join("; ")
            ),
        )
    };
    if let Some(d) = &decision {
        rate_limit_headers(&mut resp, d);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests;
