//! The gateway's one error type. Every failure leaves as `{"error": "...", "detail": "..."}`, with
//! `Retry-After` where waiting helps and `WWW-Authenticate` on a 401.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;

/// The JSON body of every error (for the OpenAPI document).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Short, stable error kind, e.g. `rate_limited`, `invalid_parameter`.
    pub error: String,
    /// What went wrong, for a human.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    TooManyEvents(String),
    #[error("{0}")]
    EventTooLarge(String),
    #[error("request took longer than {0} ms")]
    Timeout(u64),
    #[error("the request body did not arrive within {0} ms")]
    RequestTimeout(u64),
    #[error("rate limit for {class} requests exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        class: &'static str,
        retry_after_secs: u64,
    },
    #[error("too many failed authentications from this client; retry in {0} s")]
    AuthBlocked(u64),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("the body does not fit the request's schema: {0}")]
    InvalidBody(String),
    #[error(
        "unsupported content type {0:?}: send application/json, application/x-ndjson or text/plain"
    )]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}: send gzip or no `Content-Encoding`")]
    UnsupportedEncoding(String),
    #[error("{0}; nothing from this request is acknowledged, resend it unchanged")]
    KafkaUnavailable(String),
    #[error("the gateway is at its concurrency limit; retry shortly")]
    Overloaded,
    #[error("{0} event streams are open through this gateway, its limit (`console.max_streams`); retry later")]
    TooManyStreams(usize),
    #[error("this client has {0} event streams open, the most one key (or address) may hold (`console.max_streams_per_client`); close one or retry later")]
    TooManyClientStreams(usize),
    #[error("{0} is served but declares no access; it is refused until it does")]
    Undeclared(String),
    #[error("host {0:?} is not a name of this gateway (`browser.allowed_hosts`); a page whose name resolves here may not use it")]
    HostNotAllowed(String),
    #[error("a browser page of origin {0} may not change state here (`browser.allowed_origins` lists the pages that may)")]
    CrossOrigin(String),
    #[error("{0}")]
    NotJson(String),
    #[error("the collector's answer is larger than {0} bytes (`upstream_max_response_bytes`); narrow the query")]
    UpstreamTooLarge(usize),
}

impl ApiError {
    /// The stable `error` string (a bounded metric label).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::TooManyEvents(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_events"),
            ApiError::EventTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "event_too_large"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::AuthBlocked(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_auth_failures"),
            ApiError::Auth(AuthError::Missing) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Auth(AuthError::Invalid) => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            ApiError::Auth(AuthError::Forbidden(_)) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ApiError::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding")
            }
            ApiError::KafkaUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::TooManyStreams(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"),
            ApiError::Undeclared(_) => (StatusCode::FORBIDDEN, "undeclared_route"),
            ApiError::TooManyClientStreams(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_client_streams")
            }
            ApiError::HostNotAllowed(_) => (StatusCode::MISDIRECTED_REQUEST, "host_not_allowed"),
            ApiError::CrossOrigin(_) => (StatusCode::FORBIDDEN, "cross_origin"),
            ApiError::NotJson(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::UpstreamTooLarge(_) => (StatusCode::BAD_GATEWAY, "upstream_too_large"),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::AuthBlocked(s) => Some(*s),
            ApiError::KafkaUnavailable(_) | ApiError::Overloaded | ApiError::NotReady(_) => Some(1),
            ApiError::TooManyStreams(_) | ApiError::TooManyClientStreams(_) => Some(5),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.parts();
        let mut resp = logpipe_common::http::error_response(status, error, self.to_string());
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"logpipe\""),
            );
        }
        resp
    }
}
