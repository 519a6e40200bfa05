//! The gateway router and its middleware.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::config::GatewayConfig;
use crate::control;
use crate::error::ApiError;
use crate::ratelimit::{Decision, RateLimiterService, RouteClass};
use crate::telemetry;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<GatewayConfig>,
    pub limiter: Arc<RateLimiterService>,
    pub client: reqwest::Client,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let x_request_id = header::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/api/v1/generator/start", post(control::start))
        .route("/api/v1/generator/stop", post(control::stop))
        .route("/api/v1/generator/status", get(control::status))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(record_metrics))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// `http_requests_total{route,status}` and the latency histogram, labelled by route template.
async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    telemetry::http_request(&route, resp.status().as_u16(), started.elapsed());
    resp
}

fn route_class(route: &str) -> Option<RouteClass> {
    match route {
        "/api/v1/generator/start" | "/api/v1/generator/stop" => Some(RouteClass::Control),
        "/api/v1/generator/status" => Some(RouteClass::Query),
        _ => None,
    }
}

/// Who the limit applies to: the API key when one is sent (hashed before use), else the peer address.
fn client_key(req: &Request) -> String {
    if let Some(key) = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        return format!("key:{key}");
    }
    match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".into(),
    }
}

fn rate_limit_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// Every limited route passes the client's sliding window first; a refusal is 429 with
/// `Retry-After` and the `RateLimit-*` headers.
async fn rate_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let Some(class) = route_class(&route).filter(|_| s.limiter.enabled()) else {
        return next.run(req).await;
    };
    let decision = s.limiter.check(class, &client_key(&req), 1).await;
    if !decision.allowed {
        telemetry::rate_limited(&route);
        let mut resp = ApiError::RateLimited {
            class: class.as_str(),
            retry_after_secs: decision.reset_secs.max(1),
        }
        .into_response();
        rate_limit_headers(&mut resp, &decision);
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(decision.reset_secs.max(1)),
        );
        return resp;
    }
    let mut resp = next.run(req).await;
    rate_limit_headers(&mut resp, &decision);
    resp
}

/// The whole request must finish within `request_timeout_ms`, else 504.
async fn deadline(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let ms = s.config.request_timeout_ms;
    match tokio::time::timeout(Duration::from_millis(ms), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(ms).into_response(),
    }
}

/// axum's own rejections (body too large, wrong method) are plain text; give them our JSON shape.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = resp.status();
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let detail = status.canonical_reason().unwrap_or("error");
    let mut out = (status, Json(json!({ "error": error, "detail": detail }))).into_response();
    if let Some(allow) = resp.headers().get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when every generator instance and the collector answer.
async fn ready(State(s): State<AppState>) -> Response {
    let timeout = Duration::from_millis(s.config.upstream_timeout_ms.min(2_000));
    let checks = s
        .config
        .generator_urls
        .iter()
        .map(|u| format!("{u}/health"))
        .chain([format!("{}/health", s.config.collector_url)])
        .map(|url| {
            let client = s.client.clone();
            async move {
                let ok = client
                    .get(&url)
                    .timeout(timeout)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (url, ok)
            }
        });
    let results = join_all(checks).await;
    let all_ok = results.iter().all(|(_, ok)| *ok);
    let deps: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(url, ok)| (url, json!(if ok { "up" } else { "down" })))
        .collect();
    let body =
        json!({ "status": if all_ok { "ready" } else { "not_ready" }, "dependencies": deps });
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.metrics.render(),
    )
}
