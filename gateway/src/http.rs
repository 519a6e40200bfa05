//! The gateway router and its middleware: request id → span, metrics and JSON errors → (API routes
//! only) load shedding at the concurrency limit → deadline, authentication and rate limit → handler.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use futures::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthError, Authenticator, Principal, Scope};
use crate::config::GatewayConfig;
use crate::error::{ApiError, ErrorBody};
use crate::ingest::{IngestAccepted, IngestProducer, Rejected};
use crate::ratelimit::{Decision, RateLimiterService, RouteClass};
use crate::{control, ingest, query, telemetry};

/// What every handler shares. Extractors and middleware clone the state on every request, so it is
/// one `Arc`: one reference count to bump, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: GatewayConfig,
    pub limiter: RateLimiterService,
    pub auth: Authenticator,
    pub producer: Arc<IngestProducer>,
    pub client: reqwest::Client,
    pub metrics: PrometheusHandle,
    pub status_flight: control::StatusFlight,
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "logpipe gateway",
        description = "The public entry of logpipe: generator control, log ingest and queries. \
            Send the API key as `Authorization: Bearer <key>` or `X-API-Key`. Limited routes answer with \
            `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a refusal is 429 with `Retry-After`. \
            Every error is `{\"error\": \"...\", \"detail\": \"...\"}`."
    ),
    components(schemas(ErrorBody, Rejected, IngestAccepted))
)]
struct ApiDoc;

/// The API routes, registered together with their OpenAPI operations so the document cannot drift
/// from what is served.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(control::start))
        .routes(routes!(control::stop))
        .routes(routes!(control::status))
        .routes(routes!(ingest::ingest_logs))
        .routes(routes!(query::stats))
        .routes(routes!(query::service_stats))
        .routes(routes!(query::alerts))
        .routes(routes!(query::events))
}

fn ops_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The OpenAPI document of every route this gateway serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_routes().split_for_parts();
    let (_, ops) = ops_routes().split_for_parts();
    doc.merge(ops);
    doc
}

pub fn router(state: AppState) -> Router {
    let x_request_id = header::HeaderName::from_static("x-request-id");
    let (api, _) = api_routes().split_for_parts();
    let (ops, _) = ops_routes().split_for_parts();
    let doc = Arc::new(openapi());
    // Only API routes shed load: /health, /ready and /metrics must answer while the API is busy.
    let api = api
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::Overloaded
                }))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(
                    state.config.max_concurrent_requests.max(1),
                )),
        );
    api.merge(ops)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(axum::Extension(doc))
        .layer(middleware::from_fn(observe))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(
            x_request_id,
            SequentialRequestId::new(),
        ))
        .with_state(state)
}

/// Request ids: a random 64-bit prefix per process and a counter, as 32 hex digits. Unique across
/// instances like a UUID, without a `getrandom` system call per request.
#[derive(Clone)]
struct SequentialRequestId {
    prefix: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> SequentialRequestId {
        SequentialRequestId {
            prefix: rand::random(),
            next: Arc::default(),
        }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:016x}{n:016x}", self.prefix);
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// A client span for a call to an upstream, and the `traceparent` to send with it: this span's
/// when tracing is on, else the caller's own header passed through.
pub fn client_span(
    method: &str,
    url: &str,
    incoming: &HeaderMap,
) -> (tracing::Span, Option<String>) {
    let span = tracing::info_span!(
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        http.request.method = %method,
        url.full = %url,
    );
    let tp =
        logpipe_common::telemetry::traceparent_of(&span).or_else(|| ingest::traceparent(incoming));
    (span, tp)
}

/// Every request: its server span (named by the route template), errors in the JSON shape, and
/// `http_requests_total{route,status}` with the latency histogram. One middleware rather than three:
/// each axum middleware layer clones the boxed inner service on every request.
async fn observe(req: Request, next: Next) -> Response {
    let route = logpipe_common::telemetry::matched_route(&req);
    let span = logpipe_common::telemetry::http_server_span(&req, &route);
    let started = Instant::now();
    let resp = json_errors(next.run(req).instrument(span.clone()).await);
    let status = resp.status().as_u16();
    logpipe_common::telemetry::record_http_status(&span, status);
    telemetry::http_request(&route, status, started.elapsed());
    resp
}

fn route_class(route: &str) -> Option<RouteClass> {
    match route {
        "/api/v1/generator/start" | "/api/v1/generator/stop" => Some(RouteClass::Control),
        "/api/v1/logs" => Some(RouteClass::Ingest),
        "/api/v1/generator/status"
        | "/api/v1/stats"
        | "/api/v1/stats/{service}"
        | "/api/v1/alerts"
        | "/api/v1/events" => Some(RouteClass::Query),
        _ => None,
    }
}

fn scope_for(class: RouteClass) -> Scope {
    match class {
        RouteClass::Control => Scope::Admin,
        RouteClass::Ingest => Scope::Ingest,
        RouteClass::Query | RouteClass::AuthFailure => Scope::Read,
    }
}

fn peer_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Who a limit applies to: the key's name when authenticated by key, else the peer address.
pub fn limit_identity(principal: &Principal, ip: IpAddr) -> String {
    match &principal.key_name {
        Some(name) => format!("key:{name}"),
        None => format!("ip:{ip}"),
    }
}

pub fn rate_limit_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// The refusal for a spent limit: 429 with `Retry-After` and the `RateLimit-*` headers.
pub fn refused(route: &str, class: RouteClass, d: &Decision) -> Response {
    telemetry::rate_limited(route);
    let mut resp = ApiError::RateLimited {
        class: class.as_str(),
        retry_after_secs: d.reset_secs.max(1),
    }
    .into_response();
    rate_limit_headers(&mut resp, d);
    resp
}

/// API routes: the whole request, limiter check included, must finish within
/// `request_timeout_ms`, else 504.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let ms = s.config.request_timeout_ms;
    match tokio::time::timeout(Duration::from_millis(ms), auth_and_limit(&s, req, next)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout(ms).into_response(),
    }
}

/// Authenticate, authorize the route's scope, then pass the client's sliding window (ingest is
/// limited in its handler, by events). Repeated bad keys from one address are limited on their own
/// and then refused outright until that window frees up.
async fn auth_and_limit(s: &AppState, mut req: Request, next: Next) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    let Some(class) = route_class(&route) else {
        return next.run(req).await;
    };
    let ip = peer_ip(&req);
    if let Some(secs) = s.auth.blocked_for(ip) {
        return ApiError::AuthBlocked(secs).into_response();
    }
    let principal = match s.auth.authorize(req.headers(), scope_for(class)) {
        Ok(p) => p,
        Err(e) => {
            telemetry::auth_failure(&route, &e);
            if e == AuthError::Invalid && s.limiter.enabled() {
                let d = s
                    .limiter
                    .check(RouteClass::AuthFailure, &format!("ip:{ip}"), 1)
                    .await;
                if !d.allowed {
                    s.auth.block(ip, d.reset_secs);
                    return ApiError::AuthBlocked(d.reset_secs.max(1)).into_response();
                }
            }
            return ApiError::Auth(e).into_response();
        }
    };
    let identity = limit_identity(&principal, ip);
    req.extensions_mut().insert(principal);
    if class == RouteClass::Ingest || !s.limiter.enabled() {
        return next.run(req).await;
    }
    let decision = s.limiter.check(class, &identity, 1).await;
    if !decision.allowed {
        return refused(&route, class, &decision);
    }
    let mut resp = next.run(req).await;
    rate_limit_headers(&mut resp, &decision);
    resp
}

/// axum's own rejections (body too large, wrong method) are plain text; give them our JSON shape.
fn json_errors(resp: Response) -> Response {
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
    let mut out = logpipe_common::http::error_response(status, error, detail);
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

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "Alive")))]
async fn health() -> Json<serde_json::Value> {
    logpipe_common::http::health().await
}

/// Readiness: Kafka, every generator instance and the collector answer. Redis is reported but does
/// not make the gateway unready: without it, limits fall back to the local limiter.
#[utoipa::path(get, path = "/ready", tag = "ops", responses(
    (status = 200, description = "Every dependency answers", body = serde_json::Value),
    (status = 503, description = "A dependency is down; the body names it", body = serde_json::Value),
))]
async fn ready(State(s): State<AppState>) -> Response {
    let timeout = Duration::from_millis(s.config.upstream_timeout_ms.min(2_000));
    let checks = control::instances(&s.config.generator_urls)
        .await
        .into_iter()
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
    let (results, kafka_ok) = tokio::join!(join_all(checks), s.producer.reachable(timeout));
    let all_ok = kafka_ok && results.iter().all(|(_, ok)| *ok);
    let mut deps: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(url, ok)| (url, json!(if ok { "up" } else { "down" })))
        .collect();
    deps.insert("kafka".into(), json!(if kafka_ok { "up" } else { "down" }));
    if s.limiter.enabled() {
        let redis = if s.limiter.backend() == "redis" {
            "up"
        } else {
            "down (limiting locally)"
        };
        deps.insert("redis".into(), json!(redis));
    }
    let body =
        json!({ "status": if all_ok { "ready" } else { "not_ready" }, "dependencies": deps });
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Metrics", body = String)))]
async fn metrics(State(s): State<AppState>) -> Response {
    logpipe_common::http::metrics_response(&s.metrics)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops", responses((status = 200, description = "The OpenAPI 3 document", body = serde_json::Value)))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}
