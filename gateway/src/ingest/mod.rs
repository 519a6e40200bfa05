//! `POST /api/v1/logs`: external events into `logs.raw`.
//!
//! The body is one JSON event, a JSON array of events, NDJSON (`application/x-ndjson`), or raw Apache
//! / syslog lines (`text/plain`, one per line). Every event is validated on its own; the valid ones are
//! produced and the response (202) is sent only after Kafka acknowledged every one of them. If Kafka
//! cannot take them all, the answer is 503 with `Retry-After` and the request counts as not accepted:
//! the client resends it unchanged. Events that did reach Kafka before the failure are not doubled by
//! that resend when their ids are stable — the client's own `event_id`s, or, for events without one,
//! ids derived from the request's `Idempotency-Key` header and the event's position — because the
//! collector stores each `event_id` once.
//!
//! - [`parse`]: body formats, per-event parsing and validation, refusals by index.
//! - [`produce`]: the idempotent producer and what a Kafka failure means for the answer.
//! - here: the settings, the handler, reading the body within its deadline, the OpenAPI schemas.

pub mod intake;
pub mod parse;
pub mod produce;

pub use intake::{read_decoded, respond, Ingress, Intake, Undelivered};
pub use parse::*;
pub use produce::*;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use logpipe_common::event::LogEvent;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{ApiError, ErrorBody};
use crate::ratelimit::RouteClass;
use crate::ratelimit::{rate_limit_headers, refused};
use crate::state::{AppState, Charged};
use crate::telemetry;

/// The request body as bytes, or why not: a slow client is 408, a large one 413 (the rest of its
/// body is drained: see `linger`).
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, crate::error::ApiError> {
    use crate::error::ApiError;
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    // The chunks as they came, joined once at the end (growing one buffer would hold up to twice
    // the limit per request).
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
            len += chunk.len();
            if len > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            chunks.push(chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::RequestTimeout(timeout.as_millis() as u64)),
        Ok(Ok(())) if chunks.len() == 1 => Ok(chunks.swap_remove(0)),
        Ok(Ok(())) => Ok(Bytes::from(chunks.concat())),
        Ok(Err(e @ ApiError::PayloadTooLarge(_))) => {
            linger(stream);
            Err(e)
        }
        Ok(Err(e)) => Err(e),
    }
}

/// How long, and how much, the gateway reads and discards of a body it refused as too large.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: usize = 64 << 20;

/// A "lingering close" (RFC 9112 §9.6; nginx's `lingering_close`): after a 413, read and discard
/// what the client is still sending, up to `LINGER` and `LINGER_MAX_BYTES`, while the refusal is
/// written. A server that closes with unread data makes the kernel send a TCP reset, and a client
/// still writing its body may then lose the 413 it was sent (the fault suite's slow-clients
/// scenario saw 5 of 10 chunked 10 MB clients read a reset instead). Past the bounds the body is
/// dropped and the connection closes as before.
pub fn linger(body: impl futures::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static) {
    use futures::StreamExt;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, body.next()).await {
            read += chunk.len();
            if read > LINGER_MAX_BYTES {
                break;
            }
        }
    });
}

/// The JSON body of `POST /api/v1/logs` (for the document): one event, or a non-empty array of
/// them (at most `max_events`, 10,000 by default).
pub struct IngestJson;

impl utoipa::PartialSchema for IngestJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        use utoipa::openapi::Ref;
        let event = Ref::from_schema_name("LogEvent");
        OneOfBuilder::new()
            .item(event.clone())
            .item(
                ArrayBuilder::new()
                    .items(event)
                    .min_items(Some(1))
                    .max_items(Some(IngestSettings::default().max_events)),
            )
            .into()
    }
}

impl utoipa::ToSchema for IngestJson {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push(("LogEvent".into(), LogEvent::schema()));
        schemas.push(("Level".into(), logpipe_common::event::Level::schema()));
    }
}

/// An NDJSON or raw-lines body (for the document): at least one line that is not blank.
pub struct TextBody;

impl utoipa::PartialSchema for TextBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some("\\S"))
            .description(Some("One event per line; blank lines are skipped"))
            .into()
    }
}

impl utoipa::ToSchema for TextBody {}

/// A 202's body: how many events Kafka acknowledged, and each refused one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestAccepted {
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// Query parameters of `POST /api/v1/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    /// Service for raw lines that name none.
    pub service: Option<String>,
}

/// Ingest log events into `logs.raw`.
///
/// One JSON event or an array (`application/json`), NDJSON (`application/x-ndjson`), or Apache
/// combined / syslog lines (`text/plain`, `?service=` names their service). Each event is validated;
/// refused ones are listed with their index. 202 is sent only after Kafka acknowledged every accepted
/// event; 503 means none of the request counts as accepted — resend it unchanged (with the same
/// `Idempotency-Key` when events carry no `event_id`). Ingest limits count events, not requests.
#[utoipa::path(post, path = "/api/v1/logs", tag = "ingest",
    params(
        ("service" = Option<String>, Query, min_length = 1, max_length = 128, pattern = "\\S", description = "Service of `text/plain` lines that name none (default `unknown`); not blank"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes ids of events without `event_id` stable across resends"),
    ),
    request_body(description = "A JSON event or array of events, NDJSON, or raw lines", content(
        (IngestJson = "application/json"),
        (TextBody = "application/x-ndjson"),
        (TextBody = "text/plain"),
    )),
    responses(
        (status = 202, description = "Every accepted event is in Kafka", body = IngestAccepted),
        (status = 400, description = "The body is not JSON / UTF-8, holds no events, or a bad parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `ingest` scope", body = ErrorBody),
        (status = 408, description = "The body arrived too slowly", body = ErrorBody),
        (status = 413, description = "Body larger than the limit, or too many events", body = ErrorBody),
        (status = 415, description = "Unsupported content type", body = ErrorBody),
        (status = 422, description = "Every event was refused; `rejected` says why", body = serde_json::Value),
        (status = 429, description = "The ingest limit (events per window) is spent", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge; resend", body = ErrorBody),
    ))]
pub async fn ingest_logs(
    ingress: Ingress,
    query: Result<Query<IngestQuery>, QueryRejection>,
    req: Request,
) -> Response {
    respond(ingest(ingress.intake("/api/v1/logs"), query, req).await)
}

/// The body, read within the size limit and the read timeout. A body announced larger than the
/// limit is refused from its head, before a byte is read.
pub(crate) async fn read_limited(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, ApiError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > s.config.body_limit_bytes as u64) {
        linger(body.into_data_stream());
        return Err(ApiError::PayloadTooLarge(s.config.body_limit_bytes));
    }
    read_body(
        body,
        s.config.body_limit_bytes,
        Duration::from_millis(s.config.ingest.body_read_timeout_ms),
    )
    .await
}

/// The answer when no event of a body was accepted: 413 when every one was too large (the size is
/// the problem, not the content), else 422 listing each refusal.
fn all_refused(rejected: Vec<parse::Rejected>) -> Result<Response, ApiError> {
    if rejected.iter().all(|r| r.error == "event_too_large") {
        let r = &rejected[0];
        return Err(ApiError::EventTooLarge(format!(
            "event {}: {}",
            r.index, r.detail
        )));
    }
    let body = json!({
        "error": "invalid_events",
        "detail": format!("all {} events were refused", rejected.len()),
        "accepted": 0,
        "rejected": rejected,
    });
    Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response())
}

/// Charge a body's events to the client's ingest limit. The guard charged one unit before the
/// body was read; the other events are charged now. The decision for the answer's headers, or
/// the 429 refusal; a body larger than a whole window's limit is 413.
pub(crate) async fn charge_events(
    s: &AppState,
    route: &str,
    identity: &str,
    events: usize,
    charged: Option<Charged>,
) -> Result<Result<Option<crate::ratelimit::Decision>, Response>, ApiError> {
    let decision = charged.map(|Charged(d)| d);
    if !s.limiter.enabled() {
        return Ok(Ok(decision));
    }
    let limit = s.limiter.limit(RouteClass::Ingest);
    if events > limit.limit as usize {
        return Err(ApiError::TooManyEvents(format!(
            "{events} events exceed the ingest limit of {} per {} ms window",
            limit.limit, limit.window_ms
        )));
    }
    let rest = events.saturating_sub(1) as u32;
    if rest == 0 {
        return Ok(Ok(decision));
    }
    let d = s.limiter.check(RouteClass::Ingest, identity, rest).await;
    if !d.allowed {
        return Ok(Err(refused(route, RouteClass::Ingest, &d)));
    }
    Ok(Ok(Some(d)))
}

async fn ingest(
    intake: Intake<'_>,
    query: Result<Query<IngestQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, Undelivered> {
    let Query(query) = query.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = BodyFormat::from_content_type(content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(content_type.unwrap_or_default().to_owned())
    })?;
    let service = default_service(query.service.as_deref()).map_err(ApiError::InvalidParameter)?;
    let body = read_decoded(intake.s, &parts.headers, body).await?;
    let ctx = intake.context(&parts.headers, service, &body, false);
    let parsed = ctx.parse(format, &body).map_err(|e| match e {
        BodyError::TooManyEvents { .. } => ApiError::TooManyEvents(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    })?;
    telemetry::ingest_events("rejected", parsed.rejected.len());
    if parsed.events.is_empty() {
        return Ok(all_refused(parsed.rejected)?);
    }
    let decision = intake.deliver(&parts.headers, &parsed.events).await?;
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(IngestAccepted {
            accepted: parsed.events.len(),
            rejected: parsed.rejected,
        }),
    )
        .into_response();
    if let Some(d) = &decision {
        rate_limit_headers(&mut resp, d);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn ctx() -> ParseContext<'static> {
        ParseContext {
            received_at: "2026-11-23T08:00:00Z".parse().unwrap(),
            max_events: 5,
            max_future_secs: 10,
            max_event_bytes: 4096,
            default_service: "edge",
            id_seed: None,
            tenant: None,
            trace_id: None,
        }
    }

    const GOOD: &str = r#"{"event_id":"e1","timestamp":"2026-11-23T07:59:00Z","level":"INFO","service":"api","message":"ok"}"#;

    #[test]
    fn a_json_array_reports_each_bad_event_by_index() {
        let body = format!(
            r#"[{GOOD},{{"timestamp":"2026-11-23T07:59:00Z","level":"LOUD","service":"api","message":"m"}},{{"timestamp":"2026-11-23T07:59:00Z","level":"INFO","service":"","message":"m"}},7]"#
        );
        let p = ctx().parse(BodyFormat::Json, body.as_bytes()).unwrap();
        assert_eq!(p.events.len(), 1);
        let idx: Vec<(usize, &str)> = p.rejected.iter().map(|r| (r.index, r.error)).collect();
        assert_eq!(
            idx,
            vec![
                (1, "invalid_json"),
                (2, "missing_field"),
                (3, "invalid_json")
            ]
        );
        assert!(p.rejected[0].detail.contains("LOUD"));
        assert!(p.rejected[1].detail.contains("service"));
    }

    #[test]
    fn what_postgres_would_refuse_is_refused_by_index_naming_the_field() {
        let body = format!(
            r#"[{GOOD},{{"timestamp":"2026-11-23T07:59:00Z","level":"ERROR","service":"payments","message":"a\u0000b"}},{{"timestamp":"2026-11-23T07:59:00Z","level":"INFO","service":"api","message":"m","attributes":{{"a":[{{"b":"\u0000"}}]}}}},{{"timestamp":"-5000-01-01T00:00:00Z","level":"INFO","service":"api","message":"m"}}]"#
        );
        let p = ctx().parse(BodyFormat::Json, body.as_bytes()).unwrap();
        assert_eq!(p.events.len(), 1);
        let got: Vec<(usize, &str, &str)> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.error, r.detail.as_str()))
            .collect();
        assert_eq!(got[0].0, 1);
        assert_eq!(got[0].1, "nul_character");
        assert!(got[0].2.contains("`message`"), "{got:?}");
        assert_eq!(got[1].0, 2);
        assert!(got[1].2.contains("`attributes.a[0].b`"), "{got:?}");
        assert_eq!((got[2].0, got[2].1), (3, "timestamp_out_of_range"));
    }

    #[test]
    fn a_single_object_body_with_a_null_id_gets_an_id_and_a_non_object_line_names_why() {
        let body = r#" {"event_id":null,"timestamp":"2026-11-23T07:59:00Z","level":"INFO","service":"api","message":"ok"}"#;
        let p = ctx().parse(BodyFormat::Json, body.as_bytes()).unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].event_id().len(), 26, "a fresh ULID");
        let p = ctx()
            .parse(
                BodyFormat::Ndjson,
                format!("{GOOD}\n[1]\nnot json\n").as_bytes(),
            )
            .unwrap();
        assert_eq!(p.events[0].event_id(), "e1", "a given id is kept");
        let details: Vec<(usize, &str)> = p
            .rejected
            .iter()
            .map(|r| (r.index, r.detail.as_str()))
            .collect();
        assert_eq!(
            details[0],
            (1, "invalid JSON: an event must be a JSON object")
        );
        assert_eq!(details[1].0, 2);
        assert!(
            details[1].1.starts_with("invalid JSON: expected"),
            "{details:?}"
        );
    }

    #[test]
    fn ndjson_skips_blank_lines_and_assigns_ids_to_events_without_one() {
        let body = format!(
            "{GOOD}\n\n{}\n",
            r#"{"timestamp":"2026-11-23T07:59:00Z","level":"WARN","service":"api","message":"no id"}"#
        );
        let p = ctx().parse(BodyFormat::Ndjson, body.as_bytes()).unwrap();
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.events[0].event_id(), "e1");
        assert_eq!(p.events[1].event_id().len(), 26, "a ULID");
    }

    #[test]
    fn an_idempotency_seed_gives_the_same_ids_on_a_resend() {
        let body = br#"{"timestamp":"2026-11-23T07:59:00Z","level":"WARN","service":"api","message":"no id"}"#;
        let mut c = ctx();
        c.id_seed = Some(b"key-1".to_vec());
        let a = c.parse(BodyFormat::Json, body).unwrap();
        let b = c.parse(BodyFormat::Json, body).unwrap();
        assert_eq!(a.events[0].event_id(), b.events[0].event_id());
        c.id_seed = Some(b"key-2".to_vec());
        let other = c.parse(BodyFormat::Json, body).unwrap();
        assert_ne!(a.events[0].event_id(), other.events[0].event_id());
    }

    #[test]
    fn a_keys_own_event_ids_are_scoped_to_the_key_and_stable_across_resends() {
        let mut c = ctx();
        c.tenant = Some("tenant-a".into());
        let a1 = c.parse(BodyFormat::Json, GOOD.as_bytes()).unwrap();
        let a2 = c.parse(BodyFormat::Json, GOOD.as_bytes()).unwrap();
        c.tenant = Some("tenant-b".into());
        let b = c.parse(BodyFormat::Json, GOOD.as_bytes()).unwrap();
        let (a1, a2, b) = (
            a1.events[0].event_id(),
            a2.events[0].event_id(),
            b.events[0].event_id(),
        );
        assert_eq!(a1, a2, "a resend by the same key keeps its id");
        assert_ne!(
            a1, b,
            "another key sending the same id cannot collide with it"
        );
        assert_ne!(a1, "e1");
        assert_eq!(a1.len(), 26, "a ULID: {a1}");
        // A client id the event's own validation would refuse is refused before it is replaced.
        let long = GOOD.replace(r#""e1""#, &format!("{:?}", "x".repeat(200)));
        let p = c.parse(BodyFormat::Json, long.as_bytes()).unwrap();
        assert_eq!(p.rejected[0].error, "too_long");
        assert!(
            p.rejected[0].detail.contains("event_id"),
            "{:?}",
            p.rejected
        );
    }

    #[test]
    fn an_event_larger_than_the_limit_is_refused_by_index_before_it_is_parsed() {
        let big = format!(
            r#"{{"timestamp":"2026-11-23T07:59:00Z","level":"INFO","service":"api","message":"m","attributes":{{"blob":"{}"}}}}"#,
            "x".repeat(5000)
        );
        let p = ctx()
            .parse(BodyFormat::Json, format!("[{GOOD},{big}]").as_bytes())
            .unwrap();
        assert_eq!(p.events.len(), 1);
        assert_eq!(
            (p.rejected[0].index, p.rejected[0].error),
            (1, "event_too_large")
        );
        let line = format!("<13>Nov 23 07:58:00 web-1 app: {}", "y".repeat(5000));
        let p = ctx().parse(BodyFormat::Lines, line.as_bytes()).unwrap();
        assert_eq!(p.rejected[0].error, "event_too_large");
    }

    #[test]
    fn text_lines_become_events_with_the_default_service() {
        let body = concat!(
            "10.0.0.1 - - [23/Nov/2026:07:59:00 +0000] \"GET /x HTTP/1.1\" 500 12 \"-\" \"curl\"\n",
            "<13>Nov 23 07:58:00 web-1 sshd[42]: Failed password for root\n",
            "garbage\n"
        );
        let p = ctx().parse(BodyFormat::Lines, body.as_bytes()).unwrap();
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.events[0].service(), "edge");
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(
            (p.rejected[0].index, p.rejected[0].error),
            (2, "unparseable_line")
        );
    }

    #[test]
    fn too_many_events_and_empty_bodies_are_body_errors() {
        let body = format!("[{}]", [GOOD; 6].join(","));
        assert_eq!(
            ctx().parse(BodyFormat::Json, body.as_bytes()).unwrap_err(),
            BodyError::TooManyEvents { count: 6, max: 5 }
        );
        assert_eq!(
            ctx().parse(BodyFormat::Ndjson, b"\n \n").unwrap_err(),
            BodyError::Empty
        );
        assert!(matches!(
            ctx().parse(BodyFormat::Json, b"{oops").unwrap_err(),
            BodyError::Json(_)
        ));
    }

    #[test]
    fn a_timestamp_far_in_the_future_is_rejected() {
        let body =
            br#"{"timestamp":"2026-11-24T08:00:00Z","level":"INFO","service":"api","message":"m"}"#;
        let p = ctx().parse(BodyFormat::Json, body).unwrap();
        assert_eq!(p.rejected[0].error, "timestamp_in_future");
        assert!(
            p.rejected[0].detail.contains("`timestamp`"),
            "{:?}",
            p.rejected
        );
        let soon =
            br#"{"timestamp":"2026-11-23T08:00:09Z","level":"INFO","service":"api","message":"m"}"#;
        assert_eq!(ctx().parse(BodyFormat::Json, soon).unwrap().events.len(), 1);
    }

    #[test]
    fn the_request_trace_fills_events_without_one() {
        let mut c = ctx();
        c.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        let p = c.parse(BodyFormat::Json, GOOD.as_bytes()).unwrap();
        assert_eq!(p.events[0].trace_id(), c.trace_id.as_deref());
    }

    #[test]
    fn traceparent_is_taken_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(traceparent(&h).is_some());
        h.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert!(traceparent(&h).is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Any body, in any of the three formats, is parsed or refused: never a panic.
        #[test]
        fn an_arbitrary_body_never_panics_the_parser(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            text in "\\PC{0,200}",
        ) {
            for format in [BodyFormat::Json, BodyFormat::Ndjson, BodyFormat::Lines] {
                let _ = ctx().parse(format, &bytes);
                let _ = ctx().parse(format, text.as_bytes());
                let _ = ctx().parse(format, format!("[{text}]").as_bytes());
            }
        }
    }

    #[test]
    fn content_types_map_to_formats() {
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/x-ndjson")),
            Some(BodyFormat::Ndjson)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("text/plain")),
            Some(BodyFormat::Lines)
        );
        assert_eq!(BodyFormat::from_content_type(Some("text/csv")), None);
    }
}
