//! The gateway's middleware: the server span and metrics of every request ([`observe`], which
//! also decides whose `traceparent` is followed, [`TraceTrust`]), and the guard every routed request
//! passes: the route's declared access, its deadline, authentication, the refusal of bodies a web
//! page could send, and the client's rate limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::Scope;
use crate::auth::{AuthError, Principal};
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::ratelimit::{limit_identity, rate_limit_headers, refused, RouteClass};
use crate::state::{AppState, Charged, ClientIdentity};
use crate::{ingest, telemetry};

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
pub(crate) async fn observe(
    State(trust): State<TraceTrust>,
    mut req: Request,
    next: Next,
) -> Response {
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

pub(crate) fn peer_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Every route passes here. Its access comes from the route table: public routes go straight on;
/// API routes must finish, limiter check included, within `request_timeout_ms` (else 504); a route
/// the table does not hold is refused.
pub(crate) async fn guard(
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
pub(crate) fn json_errors(resp: Response) -> Response {
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

/// Who may call a route: declared where the route is registered (see `Routes::add` in `routes.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ops endpoints (health, readiness, metrics, the OpenAPI document): no key, no limit, and not
    /// shed under load.
    Public,
    /// A key holding the class's scope, and one request spent from the class's window (ingest:
    /// one unit before the body is read, the rest of its events once they are parsed).
    Api(RouteClass),
}

pub(crate) fn scope_for(class: RouteClass) -> Scope {
    match class {
        RouteClass::Control => Scope::Admin,
        RouteClass::Ingest => Scope::Ingest,
        RouteClass::Query | RouteClass::AuthFailure => Scope::Read,
    }
}
