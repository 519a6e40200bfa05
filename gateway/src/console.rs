//! The web console (`GET /`): its files, embedded in the binary (`gateway/console/`, no CDN, no
//! build step), its settings (`/console/config.json`), the stage counters it charts
//! (`GET /api/v1/pipeline`, sampled here every 2 s for 15 minutes, so a page opened now shows the
//! last 15 minutes at once) and the live tail's stream (`GET /api/v1/events/stream`, passed through
//! from the collector as it arrives, at most `max_streams` at once).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use logpipe_common::permits::Refused;
use serde::Deserialize;

use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, Sample};
use logpipe_common::query::StreamParams;

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/style.css");
const UPLOT_JS: &str = include_str!("../console/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../console/vendor/uPlot.min.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small and versioned with the binary: the browser asks again after a minute.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The console; to an Elasticsearch client (one that asks for JSON), the cluster's identity.
#[utoipa::path(get, path = "/", tag = "console", responses(
    (status = 200, description = "The console's page, or for a client asking for JSON, an Elasticsearch cluster's identity", content(
        (String = "text/html"),
        (serde_json::Value = "application/json"),
    )),
))]
pub async fn index(headers: HeaderMap) -> Response {
    if crate::protocols::elastic::wants_elastic(&headers) {
        return crate::protocols::elastic::info();
    }
    asset("text/html; charset=utf-8", INDEX)
}

/// The console's scripts and styles.
#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "app.js, style.css, uPlot.iife.min.js or uPlot.min.css")),
    responses(
        (status = 200, description = "The file"),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
pub async fn file(State(s): State<AppState>, Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "style.css" => asset("text/css; charset=utf-8", STYLE),
        "uPlot.iife.min.js" => asset("text/javascript; charset=utf-8", UPLOT_JS),
        "uPlot.min.css" => asset("text/css; charset=utf-8", UPLOT_CSS),
        "config.json" => Json(serde_json::json!({
            "zipkin_ui_url": s.config.console.zipkin_ui_url,
            "keys_required": !s.config.auth.keys.is_empty(),
        }))
        .into_response(),
        _ => ApiError::NotFound(format!("no console file {file}")).into_response(),
    }
}

const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES_KEPT: usize = 450;

#[derive(Debug, Deserialize)]
pub struct PipelineQuery {
    /// Only samples after this time (Unix milliseconds).
    since_ms: Option<i64>,
}

/// The pipeline's stage counters over the last 15 minutes, one sample every 2 s: events
/// generated and acknowledged (every generator), consumed and stored (the collector), the
/// consumer lag per partition. The console charts their rates.
#[utoipa::path(get, path = "/api/v1/pipeline", tag = "query",
    params(("since_ms" = Option<i64>, Query, description = "Only samples taken after this Unix time in milliseconds")),
    responses(
        (status = 200, description = "Samples, oldest first", body = serde_json::Value),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
    ))]
pub async fn pipeline(
    State(s): State<AppState>,
    Query(q): Query<PipelineQuery>,
) -> Json<serde_json::Value> {
    s.pipeline.started.get_or_init(|| {
        tokio::spawn(sample_forever(s.clone()));
    });
    let since = q.since_ms.unwrap_or(0);
    let samples: Vec<Sample> = s
        .pipeline
        .samples
        .lock()
        .expect("samples lock")
        .iter()
        .filter(|x| x.t > since)
        .cloned()
        .collect();
    Json(serde_json::json!({
        "interval_ms": SAMPLE_EVERY.as_millis() as u64,
        "samples": samples,
    }))
}

async fn sample_forever(s: AppState) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sample = sample(&s).await;
        let mut v = s.pipeline.samples.lock().expect("samples lock");
        v.push_back(sample);
        while v.len() > SAMPLES_KEPT {
            v.pop_front();
        }
    }
}

async fn sample(s: &AppState) -> Sample {
    let (status, metrics) = tokio::join!(
        crate::control::aggregate(s),
        s.client
            .get(format!("{}/metrics", s.config.collector_url))
            .timeout(Duration::from_millis(s.config.upstream_timeout_ms))
            .send(),
    );
    let mut out = Sample {
        t: chrono::Utc::now().timestamp_millis(),
        ..Sample::default()
    };
    if status.instances_reachable > 0 {
        out.generated = Some(status.events_generated);
        out.acked = Some(status.events_acked);
    }
    if let Ok(resp) = metrics {
        if let Ok(text) = resp.text().await {
            let m = parse_metrics(&text);
            out.consumed = m.get("collector_events_consumed_total").map(|v| *v as u64);
            out.stored = m.get("collector_events_stored_total").map(|v| *v as u64);
            out.dlq = m.get("collector_dlq_total").map(|v| *v as u64);
            for (k, v) in &m {
                if let Some(p) = k
                    .strip_prefix("collector_consumer_lag{partition=\"")
                    .and_then(|r| r.strip_suffix("\"}"))
                {
                    out.lag.insert(p.to_owned(), *v as i64);
                }
            }
        }
    }
    out
}

/// `name{labels} value` lines of a Prometheus text page, by `name{labels}`.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Stored events as they are stored, as Server-Sent Events: the collector's stream, passed
/// through. Filters as `GET /api/v1/events` (`service`, `min_level`, `q`) and `rate` (events a
/// second, 1-1000, default 100; above it events are sampled and an `event: dropped` message says
/// how many were left out). Each poll's last message carries an `id`: send it back as
/// `Last-Event-ID` to resume where the stream left off. Named events: `hello`, `log`, `dropped`,
/// `position`, `reset` (a partition's log restarted), `cutoff` (the client read too slowly; the
/// reason is in `data`), `shutdown`.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "query",
    params(
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last message received, to resume"),
    ),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 502, description = "Collector unreachable", body = ErrorBody),
        (status = 429, description = "This key (or address) holds `console.max_streams_per_client` streams already", body = ErrorBody),
        (status = 503, description = "Too many streams open through this gateway", body = ErrorBody),
    ))]
pub async fn events_stream(
    State(s): State<AppState>,
    axum::Extension(client): axum::Extension<crate::state::ClientIdentity>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let permit = match s.streams.try_acquire(&client.0) {
        Ok(p) => p,
        Err(Refused::Total(n)) => return ApiError::TooManyStreams(n).into_response(),
        Err(Refused::PerClient(n)) => return ApiError::TooManyClientStreams(n).into_response(),
    };
    let url = crate::query::collector_url(&s, "/api/v1/events/stream", q);
    // No overall timeout: the body lasts as long as the client stays. The headers must come
    // within the usual deadline.
    // The collector caps streams per client too: it learns who from the gateway (a header it
    // trusts only with the internal token).
    let mut req = s
        .client
        .get(&url)
        .header("x-logpipe-client", client.0.as_str());
    if let Some(id) = headers.get("last-event-id") {
        req = req.header("last-event-id", id.as_bytes());
    }
    let resp = match tokio::time::timeout(
        Duration::from_millis(s.config.upstream_timeout_ms),
        req.send(),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            return ApiError::UpstreamUnavailable("the collector is unreachable".into())
                .into_response()
        }
        Err(_) => return ApiError::Timeout(s.config.upstream_timeout_ms).into_response(),
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    // The permit lives as long as the body: the stream counts until its client goes. The
    // gateway's shutdown ends it (the client reconnects elsewhere with `Last-Event-ID`).
    let stop = s.shutdown.clone();
    let body = resp
        .bytes_stream()
        .map(move |chunk| {
            let _held = &permit;
            chunk
        })
        .take_until(async move { stop.cancelled().await });
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    out.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies in front must not buffer it.
    out.headers_mut().insert(
        header::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_read_by_name_and_labels() {
        let m = parse_metrics(
            "# HELP x\ncollector_events_stored_total 12\ncollector_consumer_lag{partition=\"3\"} -2\nbad\n",
        );
        assert_eq!(m["collector_events_stored_total"], 12.0);
        assert_eq!(m["collector_consumer_lag{partition=\"3\"}"], -2.0);
        assert_eq!(m.len(), 2);
    }
}
