//! Queries, forwarded to the collector's query API with the query string untouched: the collector
//! validates parameters (a 400 names the bad one) and its status and JSON body pass through. The
//! parameters and answers the document shows are the contract's types (`logpipe_common::query`). A
//! collector that cannot be reached is a 502, one that is too slow a 504.

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorBody};
use crate::middleware::client_span;
use crate::state::AppState;
use futures::StreamExt;
use logpipe_common::query::{
    AlertsPage, AlertsParams, EventsPage, EventsParams, Stats, StatsParams, Timeline,
    TimelineParams,
};
use tracing::Instrument;

/// Percent-encode one path segment (RFC 3986 unreserved characters pass as they are).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The collector's URL for `path` with the client's query string, untouched.
pub(crate) fn collector_url(s: &AppState, path: &str, query: Option<String>) -> String {
    let mut url = format!("{}{path}", s.config.collector_url);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&q);
    }
    url
}

async fn forward(s: &AppState, headers: &HeaderMap, path: &str, query: Option<String>) -> Response {
    let url = collector_url(s, path, query);
    let timeout = Duration::from_millis(s.config.upstream_timeout_ms);
    let mut req = s.client.get(&url).timeout(timeout);
    let (span, tp) = client_span("GET", &url, headers);
    if let Some(tp) = tp {
        req = req.header("traceparent", tp);
    }
    let resp = match req.send().instrument(span).await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return ApiError::Timeout(timeout.as_millis() as u64).into_response()
        }
        Err(_) => {
            return ApiError::UpstreamUnavailable("the collector is unreachable".into())
                .into_response()
        }
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let cap = s.config.upstream_max_response_bytes;
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return ApiError::UpstreamTooLarge(cap).into_response();
    }
    // Passed through as it arrives, never held whole: however many clients read at once, the
    // gateway holds a chunk each. An answer that grows past the cap is cut (the client sees a
    // broken body, never a truncated one that parses).
    let mut seen = 0usize;
    let body = resp.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len();
        if seen > cap {
            return Err(std::io::Error::other(
                "the collector's answer exceeds upstream_max_response_bytes",
            ));
        }
        Ok(chunk)
    });
    let mut out = Response::new(axum::body::Body::from_stream(body));
    *out.status_mut() = status;
    let ct = content_type
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    out.headers_mut().insert(header::CONTENT_TYPE, ct);
    out
}

/// Counts by level over a range, error rate and top messages, over all services.
#[utoipa::path(get, path = "/api/v1/stats", tag = "query",
    params(StatsParams),
    responses(
        (status = 200, description = "Totals and per-service counts", body = Stats),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 502, description = "Collector unreachable", body = ErrorBody),
    ))]
pub async fn stats(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    forward(&s, &headers, "/api/v1/stats", q).await
}

/// One service: counts by level, error rate, latency percentiles, top messages.
#[utoipa::path(get, path = "/api/v1/stats/{service}", tag = "query",
    params(
        ("service" = String, Path, description = "Service name"),
        StatsParams,
    ),
    responses(
        (status = 200, description = "The service's stats", body = Stats),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 502, description = "Collector unreachable", body = ErrorBody),
    ))]
pub async fn service_stats(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(service): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let path = format!("/api/v1/stats/{}", encode_segment(&service));
    forward(&s, &headers, &path, q).await
}

/// Alerts, newest first, with cursor pagination.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "query",
    params(AlertsParams),
    responses(
        (status = 200, description = "A page of alerts", body = AlertsPage),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 502, description = "Collector unreachable", body = ErrorBody),
    ))]
pub async fn alerts(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    forward(&s, &headers, "/api/v1/alerts", q).await
}

/// Stored events, newest first, with filters, text search and cursor pagination.
#[utoipa::path(get, path = "/api/v1/events", tag = "query",
    params(EventsParams),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 502, description = "Collector unreachable", body = ErrorBody),
    ))]
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    forward(&s, &headers, "/api/v1/events", q).await
}

/// Window counts per service and level over the range (the narrowest tumbling width giving at most
/// 400 windows), oldest first: the console's error-rate chart and window table.
#[utoipa::path(get, path = "/api/v1/timeline", tag = "query",
    params(TimelineParams),
    responses(
        (status = 200, description = "Window counts, oldest first", body = Timeline),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 502, description = "Collector unreachable", body = ErrorBody),
    ))]
pub async fn timeline(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    forward(&s, &headers, "/api/v1/timeline", q).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("pay ments/../x"), "pay%20ments%2F..%2Fx");
        assert_eq!(encode_segment("auth-v2_1.a~b"), "auth-v2_1.a~b");
    }
}
