//! OTLP/HTTP logs: `POST /v1/logs`, what the OpenTelemetry SDKs' and Collector's `otlphttp`
//! exporters send. Protobuf (`application/x-protobuf`) or JSON (`application/json`), gzip or not.
//!
//! - [`proto`]: the messages, for both encodings.
//! - here: the record → event mapping ([`to_events`]), the handler, and the answer: 200 with an
//!   `ExportLogsServiceResponse` in the request's encoding, its `partial_success` counting the
//!   refused records; a request whose every record was refused is 400 (resending cannot help); a
//!   failure a resend can cure is 429/503 with `Retry-After` (the exporters retry those).
//!
//! The mapping (docs/protocols.md holds the table): `service.name` and `host.name` of the resource
//! → `service` and `host`; the scope's name → `component`; `time_unix_nano`, else
//! `observed_time_unix_nano`, else the arrival time → `timestamp`; the severity number's range
//! (1-4 TRACE … 21-24 FATAL), else the severity text, else INFO → `level`; a string body →
//! `message` (any other body as its JSON text; no body: the event name); trace and span ids as hex;
//! the record's attributes → `attributes`, the resource's other attributes under
//! `attributes.resource`, the event name under `attributes["event.name"]`.

pub mod proto;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use logpipe_common::event::{EventError, Level, LogEvent};
use prost::Message;
use serde_json::{Map, Value as Json};

use self::proto::{AnyValue, ExportLogsServiceRequest, KeyValue, LogRecord, Value};
use crate::error::ApiError;
use crate::ingest::intake::{respond, Ingress};
use crate::ingest::{read_decoded, Intake, ParseContext, Parsed, Rejected, Undelivered};
use crate::ratelimit::rate_limit_headers;
use crate::telemetry;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From `Content-Type`; `None` is a 415.
    pub fn from_content_type(ct: Option<&str>) -> Option<Encoding> {
        let essence = ct?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// A message in this encoding, as a response with `status`.
    pub fn respond<M: Message + serde::Serialize>(self, status: StatusCode, msg: &M) -> Response {
        let body = match self {
            Encoding::Protobuf => msg.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(msg).expect("plain message serializes"),
        };
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type()),
        );
        resp
    }
}

/// The body as an export request, or why it is not one.
pub fn decode(encoding: Encoding, body: &[u8]) -> Result<ExportLogsServiceRequest, String> {
    match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body)
            .map_err(|e| format!("the body is not an OTLP ExportLogsServiceRequest: {e}")),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| format!("the body is not OTLP/JSON ExportLogsServiceRequest: {e}")),
    }
}

/// An OTLP value as JSON: kvlists as objects, arrays as arrays, bytes as base64, a non-finite
/// double as its name (JSON has no NaN).
pub fn to_json(v: &AnyValue) -> Json {
    use base64::Engine;
    match &v.value {
        None => Json::Null,
        Some(Value::String(s)) => Json::String(s.clone()),
        Some(Value::Bool(b)) => Json::Bool(*b),
        Some(Value::Int(i)) => Json::from(*i),
        Some(Value::Double(d)) => serde_json::Number::from_f64(*d)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(d.to_string())),
        Some(Value::Array(a)) => Json::Array(a.values.iter().map(to_json).collect()),
        Some(Value::Kvlist(kv)) => Json::Object(to_map(&kv.values)),
        Some(Value::Bytes(b)) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

fn to_map(kvs: &[KeyValue]) -> Map<String, Json> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map_or(Json::Null, to_json),
            )
        })
        .collect()
}

/// A severity number's level: each level spans four numbers.
pub fn level_of(number: i32, text: &str) -> Level {
    match number {
        1..=4 => Level::Trace,
        5..=8 => Level::Debug,
        9..=12 => Level::Info,
        13..=16 => Level::Warn,
        17..=20 => Level::Error,
        21..=24 => Level::Fatal,
        _ => text.trim().parse().unwrap_or(Level::Info),
    }
}

fn time_of(nanos: u64) -> Option<DateTime<Utc>> {
    (nanos != 0)
        .then(|| i64::try_from(nanos).ok())
        .flatten()
        .map(DateTime::from_timestamp_nanos)
}

fn hex(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty() && bytes.iter().any(|b| *b != 0))
        .then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn string_attr<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// What a resource gives each of its records.
struct ResourceFields {
    service: String,
    host: String,
    rest: Map<String, Json>,
}

impl ResourceFields {
    fn of(resource: Option<&proto::Resource>, default_service: &str) -> ResourceFields {
        let attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
        let mut rest = to_map(attrs);
        rest.remove("service.name");
        rest.remove("host.name");
        ResourceFields {
            service: string_attr(attrs, "service.name")
                .unwrap_or(default_service)
                .to_owned(),
            host: string_attr(attrs, "host.name").unwrap_or("").to_owned(),
            rest,
        }
    }
}

/// One record as an event, before the context's ids and checks (`ParseContext::finish`).
fn record_event(
    received_at: DateTime<Utc>,
    resource: &ResourceFields,
    component: &str,
    r: &LogRecord,
) -> LogEvent {
    let message = match r.body.as_ref().map(|b| (b, b.value.as_ref())) {
        Some((_, Some(Value::String(s)))) => s.clone(),
        Some((b, Some(_))) => to_json(b).to_string(),
        _ => r.event_name.clone(),
    };
    let mut attributes = to_map(&r.attributes);
    if !resource.rest.is_empty() {
        attributes.insert("resource".into(), Json::Object(resource.rest.clone()));
    }
    if !r.event_name.is_empty() {
        attributes.insert("event.name".into(), Json::String(r.event_name.clone()));
    }
    LogEvent {
        event_id: String::new(),
        timestamp: time_of(r.time_unix_nano)
            .or_else(|| time_of(r.observed_time_unix_nano))
            .unwrap_or(received_at),
        level: level_of(r.severity_number, &r.severity_text),
        service: resource.service.clone(),
        component: component.to_owned(),
        host: resource.host.clone(),
        message,
        trace_id: hex(&r.trace_id),
        span_id: hex(&r.span_id),
        attributes,
    }
}

/// Every record of a request as an event or a refusal, indexed in the order they appear (resource
/// by resource, scope by scope).
pub fn to_events(ctx: &ParseContext<'_>, req: &ExportLogsServiceRequest) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index = 0;
    for rl in &req.resource_logs {
        let resource = ResourceFields::of(rl.resource.as_ref(), ctx.default_service);
        for sl in &rl.scope_logs {
            let component = sl.scope.as_ref().map_or("", |s| s.name.as_str());
            for r in &sl.log_records {
                let event = record_event(ctx.received_at, &resource, component, r);
                let size = r.encoded_len();
                let checked: Result<LogEvent, EventError> = ctx
                    .check_size(size)
                    .and_then(|()| ctx.finish(index, event, false));
                match checked {
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
    }
    parsed
}

/// The refusals of a partial success, for a human: the first few, and how many more.
fn summary(rejected: &[Rejected]) -> String {
    let mut out: Vec<String> = rejected
        .iter()
        .take(5)
        .map(|r| format!("record {}: {}", r.index, r.detail))
        .collect();
    if rejected.len() > 5 {
        out.push(format!("and {} more", rejected.len() - 5));
    }
    out.join("; ")
}

/// Export logs over OTLP/HTTP.
///
/// An `ExportLogsServiceRequest`, protobuf or JSON (optionally gzip). 200 with an
/// `ExportLogsServiceResponse` once Kafka acknowledged every accepted record; refused records are
/// counted in `partial_success`. Errors are a `google.rpc.Status` in the request's encoding.
#[utoipa::path(post, path = "/v1/logs", tag = "protocols",
    request_body(description = "An OTLP ExportLogsServiceRequest", content(
        (Vec<u8> = "application/x-protobuf"),
        (serde_json::Value = "application/json"),
    )),
    responses(
        (status = 200, description = "Every accepted record is in Kafka; `partial_success` counts the refused ones"),
        (status = 400, description = "Not an OTLP request, or every record was refused; do not resend"),
        (status = 413, description = "Body (decoded) or record count over the limit"),
        (status = 415, description = "Not protobuf or JSON, or an unknown `Content-Encoding`"),
        (status = 401, description = "Missing or invalid API key (a `google.rpc.Status`, code 16)"),
        (status = 403, description = "The key lacks the `ingest` scope (code 7)"),
        (status = 408, description = "The body arrived too slowly"),
        (status = 429, description = "The ingest limit is spent; resend after `Retry-After` (code 8)"),
        (status = 503, description = "Kafka did not acknowledge; resend after `Retry-After` (code 14)"),
    ))]
pub async fn export_logs(ingress: Ingress, req: Request) -> Response {
    respond(export(ingress.intake("/v1/logs"), req).await)
}

async fn export(intake: Intake<'_>, req: Request) -> Result<Response, Undelivered> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let encoding = Encoding::from_content_type(content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(content_type.unwrap_or_default().to_owned())
    })?;
    let body: Bytes = read_decoded(intake.s, &parts.headers, body).await?;
    let request = decode(encoding, &body).map_err(ApiError::BadRequest)?;
    let count: usize = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    let ctx = intake.context(&parts.headers, "unknown_service", &body, true);
    if count > ctx.max_events {
        return Err(ApiError::TooManyEvents(format!(
            "the request holds {count} log records; at most {} are accepted per request",
            ctx.max_events
        ))
        .into());
    }
    let parsed = to_events(&ctx, &request);
    telemetry::ingest_events("rejected", parsed.rejected.len());
    if count > 0 && parsed.events.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "all {count} log records were refused: {}",
            summary(&parsed.rejected)
        ))
        .into());
    }
    let decision = if parsed.events.is_empty() {
        None
    } else {
        intake.deliver(&parts.headers, &parsed.events).await?
    };
    let answer = proto::ExportLogsServiceResponse {
        partial_success: (!parsed.rejected.is_empty()).then(|| proto::ExportLogsPartialSuccess {
            rejected_log_records: parsed.rejected.len() as i64,
            error_message: summary(&parsed.rejected),
        }),
    };
    let mut resp = encoding.respond(StatusCode::OK, &answer);
    if let Some(d) = &decision {
        rate_limit_headers(&mut resp, d);
    }
    Ok(resp)
}

/// An error answer as OTLP/HTTP writes it: a `google.rpc.Status` in the request's encoding, its
/// code the gRPC one for the HTTP status.
pub fn error_response(encoding: Encoding, status: StatusCode, message: String) -> Response {
    let code = match status.as_u16() {
        400 | 413 | 415 | 422 => 3, // INVALID_ARGUMENT
        401 => 16,                  // UNAUTHENTICATED
        403 => 7,                   // PERMISSION_DENIED
        404 => 5,                   // NOT_FOUND
        408 | 504 => 4,             // DEADLINE_EXCEEDED
        429 => 8,                   // RESOURCE_EXHAUSTED
        502 | 503 => 14,            // UNAVAILABLE
        _ => 2,                     // UNKNOWN
    };
    encoding.respond(status, &proto::Status { code, message })
}

#[cfg(test)]
mod tests;
