//! The gateway router and its middleware: request id → span, metrics and JSON errors → (API routes
//! only) load shedding at the concurrency limit → deadline, authentication and rate limit → handler.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use futures::future::{join_all, FutureExt};
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
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
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
    /// The console's stage counters, sampled from the first request on.
    pub pipeline: crate::console::Pipeline,
    /// Open event streams, capped in total and per key (`console.max_streams[_per_client]`).
    pub streams: Arc<logpipe_common::permits::StreamPermits>,
    /// `Host` and `Origin` checks (`browser.rs`).
    pub browser: Arc<crate::browser::BrowserPolicy>,
    /// A `/ready` fan-out in progress or just finished, shared by every caller (see `ready`).
    pub ready_flight: ReadyFlight,
    /// Fires when the gateway stops: open event streams end, so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
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
    components(schemas(ErrorBody, Rejected, IngestAccepted)),
    modifiers(&KeySchemes)
)]
struct ApiDoc;

/// The two ways a key is sent, named by each operation's security requirement.
struct KeySchemes;

impl utoipa::Modify for KeySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <key>`; the requirement lists the scope the key needs"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "x_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// Who may call a route: declared where the route is registered (see [`Routes::add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ops endpoints (health, readiness, metrics, the OpenAPI document): no key, no limit, and not
    /// shed under load.
    Public,
    /// A key holding the class's scope, and one request spent from the class's window (ingest:
    /// one unit before the body is read, the rest of its events once they are parsed).
    Api(RouteClass),
}

/// The routes this gateway serves, each with its [`Access`]. One table drives the router, the
/// OpenAPI document (each operation's security and refusals) and the guard, and the guard refuses
/// any matched route the table does not hold: a route cannot be served open by omission.
pub struct Routes {
    router: OpenApiRouter<AppState>,
    access: HashMap<String, Access>,
}

impl Routes {
    fn new(doc: utoipa::openapi::OpenApi) -> Routes {
        Routes {
            router: OpenApiRouter::with_openapi(doc),
            access: HashMap::new(),
        }
    }

    /// Register a handler (from `routes!`) under `access`.
    fn add(mut self, access: Access, route: UtoipaMethodRouter<AppState>) -> Routes {
        let (schemas, mut paths, method_router) = route;
        for (path, item) in paths.paths.iter_mut() {
            let before = self.access.insert(path.clone(), access);
            assert!(
                before.is_none_or(|a| a == access),
                "{path} is declared twice with different access"
            );
            document_access(access, item);
        }
        self.router = self.router.routes((schemas, paths, method_router));
        self
    }

    /// The access each served path template was declared with.
    pub fn access(&self) -> &HashMap<String, Access> {
        &self.access
    }
}

/// Every route the gateway serves. Only API routes shed load: /health, /ready and /metrics must
/// answer while the API is busy.
pub fn routes() -> (Routes, Routes) {
    let api = Routes::new(ApiDoc::openapi())
        .add(Access::Api(RouteClass::Control), routes!(control::start))
        .add(Access::Api(RouteClass::Control), routes!(control::stop))
        .add(Access::Api(RouteClass::Query), routes!(control::status))
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(ingest::ingest_logs),
        )
        .add(Access::Api(RouteClass::Query), routes!(query::stats))
        .add(
            Access::Api(RouteClass::Query),
            routes!(query::service_stats),
        )
        .add(Access::Api(RouteClass::Query), routes!(query::alerts))
        .add(Access::Api(RouteClass::Query), routes!(query::events))
        .add(
            Access::Api(RouteClass::Query),
            routes!(crate::console::events_stream),
        )
        .add(Access::Api(RouteClass::Query), routes!(query::timeline))
        .add(
            Access::Api(RouteClass::Query),
            routes!(crate::console::pipeline),
        );
    let ops = Routes::new(utoipa::openapi::OpenApi::default())
        .add(Access::Public, routes!(health))
        .add(Access::Public, routes!(ready))
        .add(Access::Public, routes!(metrics))
        .add(Access::Public, routes!(openapi_json))
        .add(Access::Public, routes!(crate::console::index))
        .add(Access::Public, routes!(crate::console::file));
    (api, ops)
}

/// What the table says of an operation, written into the document: the scope its key needs, the
/// limit it spends, and the refusals that follow from both.
fn document_access(access: Access, item: &mut utoipa::openapi::PathItem) {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let Access::Api(class) = access else {
        return;
    };
    let scope = scope_for(class).as_str();
    let refusals = [
        ("401", "Missing or invalid API key"),
        ("403", "The key lacks the route's scope"),
        (
            "429",
            "The client's limit for this route class is spent; see `Retry-After`",
        ),
    ];
    for op in [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .flatten()
    {
        op.security = Some(vec![
            SecurityRequirement::new("bearer", [scope]),
            SecurityRequirement::new("x_api_key", [scope]),
        ]);
        for (status, description) in refusals {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                utoipa::openapi::ContentBuilder::new()
                                    .schema(Some(RefOr::Ref(
                                        utoipa::openapi::Ref::from_schema_name("ErrorBody"),
                                    )))
                                    .build(),
                            )
                            .build(),
                    )
                });
        }
        let ext = ExtensionsBuilder::new()
            .add("x-logpipe-limit-class", class.as_str())
            .build();
        match &mut op.extensions {
            Some(e) => e.merge(ext),
            None => op.extensions = Some(ext),
        }
    }
}

/// The OpenAPI document of every route this gateway serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (api, ops) = routes();
    let (_, mut doc) = api.router.split_for_parts();
    let (_, ops) = ops.router.split_for_parts();
    doc.merge(ops);
    doc
}

pub fn router(state: AppState) -> Router {
    let x_request_id = header::HeaderName::from_static("x-request-id");
    let (api, ops) = routes();
    let table: Arc<HashMap<String, Access>> = Arc::new(
        api.access
            .iter()
            .chain(ops.access.iter())
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    );
    let (api, mut doc) = api.router.split_for_parts();
    let (ops, ops_doc) = ops.router.split_for_parts();
    doc.merge(ops_doc);
    let doc = Arc::new(doc);
    let guard = middleware::from_fn_with_state((state.clone(), table), guard);
    let api = api.layer(guard.clone()).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: BoxError| async {
                ApiError::Overloaded
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(
                state.config.max_concurrent_requests.max(1),
            )),
    );
    api.merge(ops.layer(guard))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(axum::Extension(doc))
        .layer(middleware::from_fn_with_state(
            state.browser.clone(),
            crate::browser::guard,
        ))
        .layer(middleware::from_fn_with_state(
            TraceTrust::of(&state.config),
            observe,
        ))
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
async fn observe(State(trust): State<TraceTrust>, mut req: Request, next: Next) -> Response {
    if !trust.follows(req.headers()) {
        // An untrusted client's `traceparent` would let anyone have every request traced (its
        // sampled flag is followed). Dropped: the gateway's own ratio decides.
        req.headers_mut().remove("traceparent");
        req.headers_mut().remove("tracestate");
    }
    let route = logpipe_common::telemetry::matched_route(&req);
    let span = logpipe_common::telemetry::http_server_span(&req, &route);
    let started = Instant::now();
    let resp = json_errors(next.run(req).instrument(span.clone()).await);
    let status = resp.status().as_u16();
    logpipe_common::telemetry::record_http_status(&span, status);
    telemetry::http_request(&route, status, started.elapsed());
    resp
}

/// Whose `traceparent` the gateway follows (and with it the client's decision to sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceTrust {
    /// An open gateway on loopback: the only clients are this machine's.
    Everyone,
    /// A keyed gateway: requests that send a key (a wrong one gets one traced 401, and is
    /// limited as an authentication failure).
    KeyHolders,
    /// An open gateway on a reachable address: nobody.
    Nobody,
}

impl TraceTrust {
    pub fn of(config: &GatewayConfig) -> TraceTrust {
        if !config.auth.keys.is_empty() {
            TraceTrust::KeyHolders
        } else if logpipe_common::config::is_loopback(&config.host) {
            TraceTrust::Everyone
        } else {
            TraceTrust::Nobody
        }
    }

    fn follows(self, headers: &HeaderMap) -> bool {
        match self {
            TraceTrust::Everyone => true,
            TraceTrust::KeyHolders => {
                headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key")
            }
            TraceTrust::Nobody => false,
        }
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

/// Every route passes here. Its access comes from the route table: public routes go straight on;
/// API routes must finish, limiter check included, within `request_timeout_ms` (else 504); a route
/// the table does not hold is refused.
async fn guard(
    State((s, table)): State<(AppState, Arc<HashMap<String, Access>>)>,
    req: Request,
    next: Next,
) -> Response {
    let Some(route) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        // Nothing matched: the fallback answers 404.
        return next.run(req).await;
    };
    match table.get(&route) {
        Some(Access::Public) => next.run(req).await,
        Some(Access::Api(class)) => {
            let ms = s.config.request_timeout_ms;
            let call = auth_and_limit(&s, &route, *class, req, next);
            match tokio::time::timeout(Duration::from_millis(ms), call).await {
                Ok(resp) => resp,
                Err(_) => ApiError::Timeout(ms).into_response(),
            }
        }
        None => {
            tracing::error!(
                route,
                "refused a route that was registered without declared access"
            );
            ApiError::Undeclared(route).into_response()
        }
    }
}

/// Who the request is for limits and caps: `key:<name>` or `ip:<address>`.
#[derive(Debug, Clone)]
pub struct ClientIdentity(pub String);

/// The first unit an ingest request spends, before its body is read; the handler charges the
/// rest of its events once they are parsed.
#[derive(Debug, Clone, Copy)]
pub struct Charged(pub Decision);

/// Authenticate, authorize the route's scope, then pass the client's sliding window. Every class
/// spends one unit here, before any body is read, so a client over its limit costs no body read
/// and no parse. Repeated bad keys from one address are limited on their own and then refused
/// outright until that window frees up.
async fn auth_and_limit(
    s: &AppState,
    route: &str,
    class: RouteClass,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = peer_ip(&req);
    if let Some(secs) = s.auth.blocked_for(ip) {
        return ApiError::AuthBlocked(secs).into_response();
    }
    let principal = match s.auth.authorize(req.headers(), scope_for(class)) {
        Ok(p) => p,
        Err(e) => {
            telemetry::auth_failure(route, &e);
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
    if let Some(refusal) = body_refusal(s, class, &principal, req.headers()) {
        return refusal.into_response();
    }
    req.extensions_mut().insert(principal);
    req.extensions_mut()
        .insert(ClientIdentity(identity.clone()));
    if !s.limiter.enabled() {
        return next.run(req).await;
    }
    let decision = s.limiter.check(class, &identity, 1).await;
    if !decision.allowed {
        return refused(route, class, &decision);
    }
    req.extensions_mut().insert(Charged(decision));
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key("ratelimit-remaining") {
        rate_limit_headers(&mut resp, &decision);
    }
    resp
}

/// Bodies a web page could send cross-site without asking first (a "simple" request) are not taken
/// where they change state: control bodies must be JSON, and on a gateway without keys a
/// `text/plain` ingest from a browser (or from anyone, with `ingest.open_text_plain = false`) is
/// refused.
fn body_refusal(
    s: &AppState,
    class: RouteClass,
    principal: &Principal,
    headers: &HeaderMap,
) -> Option<ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match class {
        RouteClass::Control => {
            let has_body = headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
                || headers.contains_key(header::TRANSFER_ENCODING);
            match content_type.as_deref() {
                Some("application/json") => None,
                None if !has_body => None,
                other => Some(ApiError::NotJson(format!(
                    "control requests take `content-type: application/json` (got {}): a web                      page can send other types to any address without asking first",
                    other.map_or("none".to_owned(), |t| format!("{t:?}"))
                ))),
            }
        }
        RouteClass::Ingest
            if principal.key_name.is_none()
                && content_type.as_deref() == Some("text/plain")
                && (!s.config.ingest.open_text_plain || crate::browser::from_browser(headers)) =>
        {
            Some(ApiError::NotJson(
                "text/plain ingest on a gateway without API keys is refused from web pages (any                  page could send it; `ingest.open_text_plain` allows it from other clients):                  send application/json or application/x-ndjson, or configure keys"
                    .into(),
            ))
        }
        _ => None,
    }
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
    let flight = {
        let mut current = s.ready_flight.lock().expect("ready flight lock");
        match current.as_ref() {
            // A fan-out on its way, or one that finished within the last second: shared. Anyone
            // may call /ready; however often they do, the instances behind see one check a second.
            Some((started, f)) if f.peek().is_none() || started.elapsed() < READY_REUSE => {
                f.clone()
            }
            _ => {
                let state = s.clone();
                let f = async move { check_ready(&state).await }.boxed().shared();
                *current = Some((Instant::now(), f.clone()));
                f
            }
        }
    };
    let (status, body) = flight.await;
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// How long a finished readiness check answers for.
const READY_REUSE: Duration = Duration::from_secs(1);

/// See [`ready`].
pub type ReadyFlight = std::sync::Mutex<
    Option<(
        Instant,
        futures::future::Shared<
            futures::future::BoxFuture<'static, (StatusCode, axum::body::Bytes)>,
        >,
    )>,
>;

async fn check_ready(s: &AppState) -> (StatusCode, axum::body::Bytes) {
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
    (
        status,
        axum::body::Bytes::from(serde_json::to_vec(&body).expect("a JSON value")),
    )
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
