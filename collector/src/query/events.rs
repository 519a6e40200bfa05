//! `GET /api/v1/events`: a page of stored events, newest first, filtered, with a cursor; written as
//! rows are read and ended at `query_max_response_bytes`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use logpipe_common::query::{EventRow, EventsParams, KafkaPosition};
use logpipe_common::Level;
use serde_json::value::RawValue;
use sqlx::{QueryBuilder, Row};

use super::{bad, cursor_of, ApiError, Params};
use crate::state::AppState;

/// `GET /api/v1/events`
pub async fn events(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, EventsParams::NAMES)?;
    // A filtered page reads every row of its range the filter rules out until it has `limit`
    // (a rare service, a text that matches nothing): capped. An unfiltered page stops at `limit`.
    let filtered = ["q", "service", "level", "min_level"]
        .iter()
        .any(|k| p.typed(k).is_some());
    let (from, to) = if filtered {
        p.capped_range(s.max_range_hours)?
    } else {
        p.range()?
    };
    let text = p.str("q").map(str::to_owned);
    if text.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(bad("q", "at most 200 bytes"));
    }
    let filter = EventsFilter {
        from,
        to,
        service: p.str("service").map(str::to_owned),
        level: p.level("level")?,
        min_level: p.level("min_level")?,
        text,
        cursor: p.cursor()?,
        limit: p.limit()?,
    };
    let body = page_within(&s, filter, s.max_page_bytes).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Rows read by a page's first query: one query for the default page, and at most this many rows
/// held at once however large each is.
const FIRST_CHUNK: i64 = 64;

/// The events page as JSON: at most `filter.limit` events and, after the first, only while the
/// page stays within `max_bytes`. A page cut short by either names the cursor of its last event,
/// so nothing is skipped. Rows are read in chunks continued from the last one read, each sized by
/// what rows cost so far: a page of large events reads about as many rows as it sends, not
/// `limit` of them.
async fn page_within(
    s: &AppState,
    filter: EventsFilter,
    max_bytes: usize,
) -> Result<Vec<u8>, ApiError> {
    let limit = filter.limit;
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"events\":[");
    let mut taken = 0i64;
    let mut last: Option<(DateTime<Utc>, String)> = None;
    let mut more = false;
    let mut event = Vec::new();
    let mut chunk = limit.min(FIRST_CHUNK);
    'pages: loop {
        let f = EventsFilter {
            limit: chunk,
            cursor: last.clone().or_else(|| filter.cursor.clone()),
            ..filter.clone()
        };
        // `limit + 1` rows: the extra one says whether more follow.
        let rows = events_query("", &f)
            .build()
            .fetch_all(s.db.query_pool())
            .await?;
        for r in rows.iter().take(chunk as usize) {
            let e = event_row(r)?;
            event.clear();
            serde_json::to_writer(&mut event, &e)
                .map_err(|e| ApiError::Internal(format!("an event did not encode: {e}")))?;
            if taken > 0 && out.len() + event.len() + 64 > max_bytes {
                more = true;
                break 'pages;
            }
            if taken > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&event);
            taken += 1;
            last = Some((e.timestamp, e.event_id));
        }
        if rows.len() as i64 <= chunk {
            break;
        }
        if taken == limit {
            more = true;
            break;
        }
        let per_row = (out.len() / taken.max(1) as usize).max(1);
        let room = (max_bytes.saturating_sub(out.len()) / per_row) as i64 + 1;
        chunk = (limit - taken).min(room).max(1);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match last.filter(|_| more) {
        Some((ts, id)) => serde_json::to_writer(&mut out, &cursor_of(ts, &id))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(out)
}

/// What `GET /api/v1/events` asks for, checked.
#[derive(Debug, Clone)]
pub struct EventsFilter {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub service: Option<String>,
    pub level: Option<Level>,
    pub min_level: Option<Level>,
    /// A substring of the message, case-insensitive.
    pub text: Option<String>,
    pub cursor: Option<(DateTime<Utc>, String)>,
    pub limit: i64,
}

/// The events page's SQL: newest first, `limit + 1` rows (the extra one says a next page
/// exists). `prefix` goes in front (`EXPLAIN …` in the storage benchmark, which shows the plan of
/// exactly this query).
pub fn events_query<'a>(prefix: &str, f: &'a EventsFilter) -> QueryBuilder<'a, sqlx::Postgres> {
    let mut q = QueryBuilder::new(format!(
        "{prefix}SELECT event_id, ts, level, service, component, host, message, trace_id, span_id,
                attributes::text AS attributes, kafka_partition, kafka_offset
           FROM log_events WHERE ts >= "
    ));
    q.push_bind(f.from).push(" AND ts < ").push_bind(f.to);
    if let Some(svc) = &f.service {
        q.push(" AND service = ").push_bind(svc.as_str());
    }
    if let Some(l) = f.level {
        q.push(" AND level = ").push_bind(l.as_str());
    }
    if let Some(min) = f.min_level {
        let levels: Vec<&str> = Level::ALL
            .iter()
            .filter(|l| **l >= min)
            .map(|l| l.as_str())
            .collect();
        q.push(" AND level = ANY(").push_bind(levels).push(")");
    }
    if let Some(text) = &f.text {
        // Sealed partitions answer it from their trigram index (storage.rs).
        q.push(" AND message ILIKE ")
            .push_bind(contains_pattern(text));
    }
    if let Some((ts, id)) = &f.cursor {
        // Row comparison on the primary key's columns: a backward scan of it, no sort.
        q.push(" AND (ts, event_id) < (")
            .push_bind(*ts)
            .push(", ")
            .push_bind(id.as_str())
            .push(")");
    }
    q.push(" ORDER BY ts DESC, event_id DESC LIMIT ")
        .push_bind(f.limit + 1);
    q
}

/// The `ILIKE` pattern for "contains `text`": a substring, not a pattern, so LIKE's wildcards and
/// its escape character are escaped.
pub(crate) fn contains_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// One stored event's row as the events query and the stream answer it.
pub(crate) fn event_row(r: &sqlx::postgres::PgRow) -> Result<EventRow, ApiError> {
    let attributes: String = r.try_get("attributes")?;
    Ok(EventRow {
        event_id: r.try_get("event_id")?,
        timestamp: r.try_get("ts")?,
        level: r.try_get("level")?,
        service: r.try_get("service")?,
        component: r.try_get("component")?,
        host: r.try_get("host")?,
        message: r.try_get("message")?,
        trace_id: r.try_get("trace_id")?,
        span_id: r.try_get("span_id")?,
        attributes: RawValue::from_string(attributes)
            .map_err(|e| ApiError::Internal(format!("stored attributes are not JSON: {e}")))?,
        kafka: KafkaPosition {
            partition: r.try_get("kafka_partition")?,
            offset: r.try_get("kafka_offset")?,
        },
    })
}
