//! The Elasticsearch bulk API, for the shippers that speak it (Filebeat, Fluent Bit's `es`,
//! Vector's `elasticsearch` sink, Logstash, syslog-ng's `elasticsearch-http()`, rsyslog's
//! `omelasticsearch`, the Elasticsearch clients' bulk helpers).
//!
//! - [`bulk`]: the body's action/source pairs and each document's field mapping (pure).
//! - [`source`]: a document's fields read in one pass into slots for that mapping.
//! - here: `POST /_bulk` and `POST /{index}/_bulk`, answered per item in Elasticsearch's shape
//!   (`errors`, `items[].status`), so a refused document is reported alone and the rest is not
//!   resent; the probes shippers send first (`GET /`, `HEAD /`, `GET /_license`, index templates
//!   and lifecycle policies), answered as an Elasticsearch 8 cluster would; and the error shape.
//!
//! Elasticsearch is a store, logpipe a pipeline: `index` and `create` append (an `_id` is the
//! event's id, so a resent document is stored once, where Elasticsearch would overwrite or answer
//! 409); `update` and `delete` are refused per item.

pub mod bulk;
pub mod source;

use std::time::Instant;

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use logpipe_common::event::LogEvent;
use serde_json::json;

use self::bulk::{document_event, read_bulk, Item, Op};
use self::source::Source;
use crate::error::ApiError;
use crate::ingest::intake::{respond, Ingress};
use crate::ingest::{read_decoded, Intake, ParseContext, Undelivered};
use crate::ratelimit::rate_limit_headers;
use crate::telemetry;

/// The version logpipe answers as: the 8.x line the current shippers and clients expect.
pub const VERSION: &str = "8.17.0";

/// Paths of this API (for the error shape and the product header).
pub fn is_elastic_path(path: &str) -> bool {
    path.ends_with("/_bulk")
        || path == "/_license"
        || path == "/_cluster/health"
        || path.starts_with("/_index_template/")
        || path.starts_with("/_template/")
        || path.starts_with("/_ilm/")
}

/// `GET /` is the console for a browser and the cluster's identity for an Elasticsearch client:
/// those ask for JSON (`Accept: application/json` or `application/vnd.elasticsearch+json`), send
/// their client meta header, or send a HEAD (a ping).
pub fn wants_elastic(headers: &HeaderMap) -> bool {
    headers.contains_key("x-elastic-client-meta")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("json") && !a.contains("text/html"))
}

/// The header Elasticsearch 7.14+ clients check on every answer before they trust it.
pub fn mark(headers: &mut HeaderMap) {
    headers.insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
}

/// The cluster's identity, as `GET /` answers it.
pub fn info() -> Response {
    let mut resp = Json(json!({
        "name": "logpipe",
        "cluster_name": "logpipe",
        "cluster_uuid": "logpipe",
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "logpipe",
            "lucene_version": "9.12.0",
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0"
        },
        "tagline": "You Know, for Search"
    }))
    .into_response();
    mark(resp.headers_mut());
    resp
}

/// `GET /_license`: an active basic licence (Beats check it before they send).
#[utoipa::path(get, path = "/_license", tag = "protocols",
    responses((status = 200, description = "An active basic licence, as Elasticsearch answers")))]
pub async fn license() -> Response {
    Json(json!({"license": {
        "status": "active", "uid": "logpipe", "type": "basic", "mode": "basic",
        "issue_date_in_millis": 0, "max_nodes": 1000, "issued_to": "logpipe", "issuer": "logpipe"
    }}))
    .into_response()
}

/// `GET /_cluster/health`: green (Vector's health check, and others, ask before they ship).
#[utoipa::path(get, path = "/_cluster/health", tag = "protocols",
    responses((status = 200, description = "A green single-node cluster, as Elasticsearch answers")))]
pub async fn cluster_health() -> Response {
    Json(json!({
        "cluster_name": "logpipe", "status": "green", "timed_out": false,
        "number_of_nodes": 1, "number_of_data_nodes": 1, "active_primary_shards": 1,
        "active_shards": 1, "relocating_shards": 0, "initializing_shards": 0,
        "unassigned_shards": 0, "active_shards_percent_as_number": 100.0
    }))
    .into_response()
}

/// Index templates and lifecycle policies: logpipe's schema is fixed, so a shipper's template is
/// acknowledged and not applied, and a lookup finds one (so the shipper does not try to install it).
#[utoipa::path(method(get, head, put), path = "/_index_template/{name}", tag = "protocols",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "Acknowledged; logpipe's schema is fixed, so it is not applied"),
        (status = 401, description = "Missing or invalid API key (`security_exception`)"),
        (status = 403, description = "The key lacks the `ingest` scope"),
        (status = 429, description = "The ingest limit is spent"),
    ))]
pub async fn template(Path(name): Path<String>) -> Response {
    template_answer(&name)
}

/// Legacy templates (`/_template/{name}`), answered like index templates.
#[utoipa::path(method(get, head, put), path = "/_template/{name}", tag = "protocols",
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, description = "Acknowledged and not applied"),
        (status = 401, description = "Missing or invalid API key (`security_exception`)"),
        (status = 403, description = "The key lacks the `ingest` scope"),
        (status = 429, description = "The ingest limit is spent"),
    ))]
pub async fn legacy_template(Path(name): Path<String>) -> Response {
    template_answer(&name)
}

fn template_answer(name: &str) -> Response {
    Json(json!({
        "acknowledged": true,
        "index_templates": [{"name": name, "index_template": {"index_patterns": [format!("{name}*")]}}],
        name: {"index_patterns": [format!("{name}*")]}
    }))
    .into_response()
}

/// Lifecycle policies, answered like templates.
#[utoipa::path(method(get, head, put), path = "/_ilm/policy/{name}", tag = "protocols",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, description = "Acknowledged and not applied"),
        (status = 401, description = "Missing or invalid API key (`security_exception`)"),
        (status = 403, description = "The key lacks the `ingest` scope"),
        (status = 429, description = "The ingest limit is spent"),
    ))]
pub async fn ilm_policy(Path(name): Path<String>) -> Response {
    Json(json!({"acknowledged": true, name: {"version": 1, "policy": {"phases": {}}}}))
        .into_response()
}

/// An error as Elasticsearch writes it: `{"error": {"root_cause": [...], "type", "reason"},
/// "status"}`.
pub fn error_response(status: StatusCode, code: &str, reason: String) -> Response {
    let kind = match status.as_u16() {
        401 | 403 => "security_exception",
        429 => "es_rejected_execution_exception",
        413 => "content_too_long_exception",
        502..=504 => "unavailable_shards_exception",
        _ if code == "bad_request" => "illegal_argument_exception",
        _ => code,
    };
    let cause = json!({"type": kind, "reason": reason});
    let mut resp = (
        status,
        Json(json!({
            "error": {"root_cause": [cause.clone()], "type": kind, "reason": reason},
            "status": status.as_u16()
        })),
    )
        .into_response();
    mark(resp.headers_mut());
    resp
}

/// Bulk into the default index (`POST /_bulk`).
#[utoipa::path(method(post, put), path = "/_bulk", tag = "protocols",
    request_body(description = "NDJSON action/source pairs (Elasticsearch takes either content type)", content(
        (String = "application/x-ndjson"),
        (String = "application/json"),
    )),
    responses(
        (status = 200, description = "Per item: 201 stored (in Kafka), 400 refused; `errors` tells whether any was refused"),
        (status = 400, description = "Not a bulk body (a malformed action line): nothing is stored"),
        (status = 401, description = "Missing or invalid API key (`security_exception`)"),
        (status = 403, description = "The key lacks the `ingest` scope (`security_exception`)"),
        (status = 408, description = "The body arrived too slowly"),
        (status = 413, description = "Body (decoded) or action count over the limit"),
        (status = 415, description = "An unknown `Content-Encoding`"),
        (status = 429, description = "The ingest limit is spent (`es_rejected_execution_exception`)"),
        (status = 503, description = "Kafka did not acknowledge; resend"),
    ))]
pub async fn bulk(ingress: Ingress, req: Request) -> Response {
    respond(run_bulk(ingress.intake("/_bulk"), None, req).await)
}

/// Bulk into `{index}` (`POST /{index}/_bulk`): the index names the service of documents that
/// name none.
#[utoipa::path(method(post, put), path = "/{index}/_bulk", tag = "protocols",
    params(("index" = String, Path, description = "Default index of the items (and service of documents naming none)")),
    request_body(description = "NDJSON action/source pairs (Elasticsearch takes either content type)", content(
        (String = "application/x-ndjson"),
        (String = "application/json"),
    )),
    responses(
        (status = 200, description = "Per item: 201 stored (in Kafka), 400 refused"),
        (status = 400, description = "Not a bulk body: nothing is stored"),
        (status = 401, description = "Missing or invalid API key (`security_exception`)"),
        (status = 403, description = "The key lacks the `ingest` scope (`security_exception`)"),
        (status = 408, description = "The body arrived too slowly"),
        (status = 413, description = "Body (decoded) or action count over the limit"),
        (status = 415, description = "An unknown `Content-Encoding`"),
        (status = 429, description = "The ingest limit is spent (`es_rejected_execution_exception`)"),
        (status = 503, description = "Kafka did not acknowledge; resend"),
    ))]
pub async fn bulk_index(ingress: Ingress, Path(index): Path<String>, req: Request) -> Response {
    respond(run_bulk(ingress.intake("/{index}/_bulk"), Some(&index), req).await)
}

/// What becomes of one item: the event it made (by its position among the events), or its refusal.
#[derive(Debug)]
pub enum Outcome {
    Event(usize),
    Refused(&'static str, String),
}

/// Each item's event or refusal, in order.
pub fn items_to_events(
    ctx: &ParseContext<'_>,
    items: &[Item<'_>],
    url_index: Option<&str>,
) -> (Vec<LogEvent>, Vec<Outcome>) {
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let index = item
            .meta
            .index
            .as_deref()
            .or(url_index)
            .unwrap_or(ctx.default_service);
        let outcome = match (item.op, item.source) {
            (Op::Index | Op::Create, Some(source)) => match item_event(ctx, i, index, item, source)
            {
                Ok(event) => {
                    events.push(event);
                    Outcome::Event(events.len() - 1)
                }
                Err((kind, reason)) => Outcome::Refused(kind, reason),
            },
            (op, _) => Outcome::Refused(
                "illegal_argument_exception",
                format!(
                    "logpipe stores log events append-only: [{}] is not supported",
                    op.as_str()
                ),
            ),
        };
        outcomes.push(outcome);
    }
    (events, outcomes)
}

fn item_event(
    ctx: &ParseContext<'_>,
    i: usize,
    index: &str,
    item: &Item<'_>,
    source: &str,
) -> Result<LogEvent, (&'static str, String)> {
    let parsing = |reason: String| ("document_parsing_exception", reason);
    ctx.check_size(source.len())
        .map_err(|e| parsing(e.to_string()))?;
    let doc: Source = serde_json::from_str(source)
        .map_err(|e| parsing(format!("the source is not a JSON object: {e}")))?;
    let mut event = document_event(doc, index, ctx.received_at).map_err(parsing)?;
    let had_id = match &item.meta.id {
        Some(id) if !id.is_empty() => {
            event.event_id = id.clone();
            true
        }
        _ => false,
    };
    ctx.finish(i, event, had_id)
        .map_err(|e| parsing(e.to_string()))
}

async fn run_bulk(
    intake: Intake<'_>,
    url_index: Option<&str>,
    req: Request,
) -> Result<Response, Undelivered> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let body = read_decoded(intake.s, &parts.headers, body).await?;
    let items = read_bulk(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ctx = intake.context(&parts.headers, url_index.unwrap_or("unknown"), &body, true);
    if items.len() > ctx.max_events {
        return Err(ApiError::TooManyEvents(format!(
            "the bulk body holds {} actions; at most {} are accepted per request",
            items.len(),
            ctx.max_events
        ))
        .into());
    }
    let (events, outcomes) = items_to_events(&ctx, &items, url_index);
    telemetry::ingest_events("rejected", outcomes.len() - events.len());
    let decision = if events.is_empty() {
        None
    } else {
        intake.deliver(&parts.headers, &events).await?
    };
    let answer = bulk_answer(
        &items,
        &outcomes,
        &events,
        url_index,
        started.elapsed().as_millis(),
    );
    let mut resp = Json(answer).into_response();
    if let Some(d) = &decision {
        rate_limit_headers(&mut resp, d);
    }
    Ok(resp)
}

/// The bulk answer, in Elasticsearch's shape. Written straight from borrowed fields (no JSON
/// tree): for a 1,000-item bulk it is as large as the request's events.
#[derive(Debug, serde::Serialize)]
pub struct BulkAnswer<'a> {
    took: u128,
    errors: bool,
    items: Vec<ItemAnswer<'a>>,
}

/// One item's answer under its action's name: `{"create": {...}}`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ItemAnswer<'a> {
    Index(ItemBody<'a>),
    Create(ItemBody<'a>),
    Update(ItemBody<'a>),
    Delete(ItemBody<'a>),
}

#[derive(Debug, serde::Serialize)]
struct ItemBody<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: Option<&'a str>,
    #[serde(rename = "_version", skip_serializing_if = "Option::is_none")]
    version: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    #[serde(rename = "_shards", skip_serializing_if = "Option::is_none")]
    shards: Option<Shards>,
    #[serde(rename = "_seq_no", skip_serializing_if = "Option::is_none")]
    seq_no: Option<usize>,
    #[serde(rename = "_primary_term", skip_serializing_if = "Option::is_none")]
    primary_term: Option<u8>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError<'a>>,
}

#[derive(Debug, serde::Serialize)]
struct Shards {
    total: u8,
    successful: u8,
    failed: u8,
}

#[derive(Debug, serde::Serialize)]
struct ItemError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    reason: &'a str,
}

/// The bulk answer: one entry per item, in order, under its action's name.
fn bulk_answer<'a>(
    items: &'a [Item<'_>],
    outcomes: &'a [Outcome],
    events: &'a [LogEvent],
    url_index: Option<&'a str>,
    took_ms: u128,
) -> BulkAnswer<'a> {
    let mut errors = false;
    let answers = items
        .iter()
        .zip(outcomes)
        .map(|(item, outcome)| {
            let index = item.meta.index.as_deref().or(url_index).unwrap_or("logs");
            let body = match outcome {
                Outcome::Event(n) => ItemBody {
                    index,
                    id: Some(item.meta.id.as_deref().unwrap_or(&events[*n].event_id)),
                    version: Some(1),
                    result: Some("created"),
                    shards: Some(Shards {
                        total: 1,
                        successful: 1,
                        failed: 0,
                    }),
                    seq_no: Some(*n),
                    primary_term: Some(1),
                    status: 201,
                    error: None,
                },
                Outcome::Refused(kind, reason) => {
                    errors = true;
                    ItemBody {
                        index,
                        id: item.meta.id.as_deref(),
                        version: None,
                        result: None,
                        shards: None,
                        seq_no: None,
                        primary_term: None,
                        status: 400,
                        error: Some(ItemError { kind, reason }),
                    }
                }
            };
            match item.op {
                Op::Index => ItemAnswer::Index(body),
                Op::Create => ItemAnswer::Create(body),
                Op::Update => ItemAnswer::Update(body),
                Op::Delete => ItemAnswer::Delete(body),
            }
        })
        .collect();
    BulkAnswer {
        took: took_ms,
        errors,
        items: answers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_answer_has_elasticsearchs_shape_item_by_item() {
        let body = b"{\"create\":{\"_id\":\"a\"}}\n{\"message\":\"m\"}\n{\"delete\":{\"_index\":\"x\",\"_id\":\"b\"}}\n";
        let items = read_bulk(body).unwrap();
        let event: LogEvent = serde_json::from_value(json!({"event_id": "E1",
            "timestamp": "2026-12-05T12:00:00Z", "level": "INFO", "service": "s", "message": "m"}))
        .unwrap();
        let outcomes = vec![
            Outcome::Event(0),
            Outcome::Refused("illegal_argument_exception", "no".into()),
        ];
        let events = [event];
        let answer = bulk_answer(&items, &outcomes, &events, Some("logs-u"), 3);
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"took": 3, "errors": true, "items": [
                {"create": {"_index": "logs-u", "_id": "a", "_version": 1, "result": "created",
                    "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0,
                    "_primary_term": 1, "status": 201}},
                {"delete": {"_index": "x", "_id": "b", "status": 400,
                    "error": {"type": "illegal_argument_exception", "reason": "no"}}}
            ]})
        );
    }
}
