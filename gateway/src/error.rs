//! The gateway's one error type. Every failure leaves as `{"error": "...", "detail": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no generator instance answered: {0}")]
    UpstreamUnavailable(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request took longer than {0} ms")]
    Timeout(u64),
    #[error("rate limit for {class} requests exceeded; retry in {retry_after_secs} s")]
    RateLimited {
        class: &'static str,
        retry_after_secs: u64,
    },
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.parts();
        (
            status,
            Json(json!({ "error": error, "detail": self.to_string() })),
        )
            .into_response()
    }
}
