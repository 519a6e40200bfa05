//! The ops endpoints, public and never shed: `/health`, `/ready` (coalesced: one fan-out a second
//! however often it is called), `/metrics`, the OpenAPI document; and the JSON 404.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::{join_all, FutureExt};
use serde_json::json;

use crate::control;
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "Alive")))]
pub(crate) async fn health() -> Json<serde_json::Value> {
    logpipe_common::http::health().await
}

/// Readiness: Kafka, every generator instance and the collector answer. Redis is reported but does
/// not make the gateway unready: without it, limits fall back to the local limiter.
#[utoipa::path(get, path = "/ready", tag = "ops", responses(
    (status = 200, description = "Every dependency answers", body = serde_json::Value),
    (status = 503, description = "A dependency is down; the body names it", body = serde_json::Value),
))]
pub(crate) async fn ready(State(s): State<AppState>) -> Response {
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

pub(crate) async fn check_ready(s: &AppState) -> (StatusCode, axum::body::Bytes) {
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
pub(crate) async fn metrics(State(s): State<AppState>) -> Response {
    logpipe_common::http::metrics_response(&s.metrics)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops", responses((status = 200, description = "The OpenAPI 3 document", body = serde_json::Value)))]
pub(crate) async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}
