//! The generator's HTTP API and its one error type.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::Producer;
use serde_json::json;

use crate::engine::{Engine, EngineError, InvalidParam, RunParams, Status};
use logpipe_common::control::{parse_start_request, StartBodyError, START_FIELDS};

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: PrometheusHandle,
    /// Asked of every request but `/health` when set (see `logpipe_common::internal`).
    pub internal: logpipe_common::internal::InternalToken,
}

/// Every error the API returns, as `{"error": "...", "detail": "..."}` with a precise status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request body")]
    BadBody(String),
    #[error("invalid parameter")]
    Invalid(#[from] InvalidParam),
    #[error("conflict")]
    Conflict(String),
    #[error("not ready")]
    NotReady(String),
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::AlreadyRunning => ApiError::Conflict(e.to_string()),
            EngineError::Producer(_) => ApiError::NotReady(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, detail) = match &self {
            ApiError::BadBody(d) => (StatusCode::BAD_REQUEST, "bad_request", d.clone()),
            ApiError::Invalid(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_parameter",
                e.to_string(),
            ),
            ApiError::Conflict(d) => (StatusCode::CONFLICT, "conflict", d.clone()),
            ApiError::NotReady(d) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", d.clone()),
        };
        logpipe_common::http::error_response(status, error, detail)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/generator/start", post(start))
        .route("/api/v1/generator/stop", post(stop))
        .route("/api/v1/generator/status", get(status))
        .route("/health", get(logpipe_common::http::health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            state.internal.clone(),
            logpipe_common::internal::require,
        ))
        .layer(axum::middleware::from_fn(
            logpipe_common::telemetry::trace_http,
        ))
        .with_state(state)
}

async fn start(
    State(s): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Status>), ApiError> {
    // An empty body means "use the configured defaults".
    let req = parse_start_request(&body)
        .map_err(|e| match e {
            StartBodyError::NotJson(_) => ApiError::BadBody(e.to_string()),
            StartBodyError::Field { field, detail } => ApiError::Invalid(InvalidParam {
                // The name as a static string: one of the request's own fields, else the body.
                field: START_FIELDS
                    .iter()
                    .find(|f| **f == field)
                    .copied()
                    .unwrap_or("body"),
                allowed: "a value of the start request's type (see the OpenAPI document)".into(),
                got: detail,
            }),
        })?
        .unwrap_or_default();
    let params = RunParams::from_request(&req, &s.engine.config().defaults)?;
    Ok((StatusCode::ACCEPTED, Json(s.engine.start(params)?)))
}

async fn stop(State(s): State<AppState>) -> Json<Status> {
    Json(s.engine.stop().await)
}

async fn status(State(s): State<AppState>) -> Json<Status> {
    Json(s.engine.status())
}

/// Ready when the broker answers a metadata request for our topic.
async fn ready(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = s.engine.clone();
    let topic = engine.config().kafka.raw_topic.clone();
    let ok = tokio::task::spawn_blocking(move || {
        engine
            .producer()
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    if ok {
        Ok(Json(json!({ "status": "ready", "kafka": "up" })))
    } else {
        Err(ApiError::NotReady(
            "kafka: broker did not answer within 2 s".into(),
        ))
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    logpipe_common::http::metrics_response(&s.metrics)
}
