//! The shippers' own protocols, beside logpipe's `POST /api/v1/logs`: each decodes its body into
//! the same validated events and delivers them through the same intake (`ingest::Intake`: limits,
//! ids, Kafka acknowledgement), then answers in its protocol's own shape so the client's retry
//! logic does the right thing.
//!
//! - [`otlp`]: OTLP/HTTP logs (`POST /v1/logs`).
//! - [`elastic`]: the Elasticsearch bulk API and the probes shippers send before it.
//! - [`loki`]: Loki's push API (`POST /loki/api/v1/push`).
//! - here: [`protocol_errors`], which rewrites every error answer on those routes (the guard's
//!   401/429 included) from logpipe's `{"error", "detail"}` into the protocol's error shape.

pub mod elastic;
pub mod loki;
pub mod otlp;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ErrorBody;

/// Which protocol a request speaks, by its path (and, for `/`, by what it accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Otlp(otlp::Encoding),
    Elastic,
    Loki,
}

impl Protocol {
    pub fn of(path: &str, headers: &HeaderMap) -> Option<Protocol> {
        if path == "/v1/logs" {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            return Some(Protocol::Otlp(
                otlp::Encoding::from_content_type(ct).unwrap_or(otlp::Encoding::Protobuf),
            ));
        }
        if path == "/loki/api/v1/push" {
            return Some(Protocol::Loki);
        }
        if elastic::is_elastic_path(path) || (path == "/" && elastic::wants_elastic(headers)) {
            return Some(Protocol::Elastic);
        }
        None
    }
}

/// The largest error body this rewrites (logpipe's own are a few hundred bytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// On a protocol's routes, every answer leaves in that protocol's shape: errors are rewritten from
/// `{"error", "detail"}` (keeping the status and `Retry-After`, `RateLimit-*`, `WWW-Authenticate`),
/// and Elasticsearch answers carry the product header its clients check.
pub async fn protocol_errors(req: Request, next: Next) -> Response {
    let Some(protocol) = Protocol::of(req.uri().path(), req.headers()) else {
        return next.run(req).await;
    };
    let mut resp = next.run(req).await;
    if protocol == Protocol::Elastic {
        elastic::mark(resp.headers_mut());
    }
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY).await {
        Ok(b) => b,
        Err(_) => return Response::from_parts(parts, Body::empty()),
    };
    let Ok(error) = serde_json::from_slice::<ErrorBody>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let shaped = shape(protocol, status, error);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in shaped.headers() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, shaped.into_body())
}

fn shape(protocol: Protocol, status: StatusCode, error: ErrorBody) -> Response {
    match protocol {
        Protocol::Otlp(encoding) => otlp::error_response(encoding, status, error.detail),
        Protocol::Elastic => elastic::error_response(status, &error.error, error.detail),
        Protocol::Loki => loki::error_response(status, error.detail),
    }
}
