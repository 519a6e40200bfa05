//! What every service's HTTP surface serves alike: the `{"error", "detail"}` body, `/health` and
//! `/metrics`. Each service keeps its own error enum (its statuses differ) and renders it here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

/// The one error body of the project's APIs: a stable machine-readable `error` and a human `detail`.
pub fn error_response(status: StatusCode, error: &str, detail: impl Into<String>) -> Response {
    let detail: String = detail.into();
    (status, Json(json!({ "error": error, "detail": detail }))).into_response()
}

/// Liveness: the process answers.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Prometheus metrics in the text exposition format.
pub fn metrics_response(handle: &PrometheusHandle) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_body_has_error_and_detail_and_the_status() {
        let resp = error_response(StatusCode::CONFLICT, "conflict", "a run is in progress");
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({ "error": "conflict", "detail": "a run is in progress" })
        );
    }
}
