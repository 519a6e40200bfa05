//! The collector's HTTP surface: the query API (see [`crate::query`]), filter administration,
//! `/health`, `/ready`, `/metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use logpipe_common::http::{error_response, metrics_response};
use logpipe_common::internal::InternalToken;
use serde_json::json;

use crate::query;

pub use crate::state::AppState;

/// Every route; all but `/health` ask for the internal token when one is set.
pub fn router(state: AppState, internal: InternalToken) -> Router {
    Router::new()
        .route("/api/v1/stats", get(query::stats))
        .route("/api/v1/stats/{service}", get(query::service_stats))
        .route("/api/v1/alerts", get(query::alerts))
        .route("/api/v1/events", get(query::events))
        .route("/api/v1/events/stream", get(crate::stream::events_stream))
        .route("/api/v1/timeline", get(query::timeline))
        .route("/admin/filters", get(query::filter_rules))
        .route("/admin/filters/reload", post(query::reload_filters))
        .route("/health", get(logpipe_common::http::health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            internal,
            logpipe_common::internal::require,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Ready when Postgres answers, the consume loop runs, its last write did not fail, no partition
/// is held for an offset outside the broker's log, and no partition goes unstored by the group.
async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let db = s.db.ping().await;
    let consumer = s.health.running.load(Ordering::Relaxed);
    let writes = s.health.db_ok.load(Ordering::Relaxed);
    let refused = s.health.refused_partitions.load(Ordering::Relaxed);
    let unstored = s.health.unstored_partitions.load(Ordering::Relaxed);
    let ok = db && consumer && writes && refused == 0 && unstored == 0;
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "postgres": if db { "up" } else { "down" },
        "consumer": if consumer { "running" } else { "stopped" },
        "last_write": if writes { "ok" } else { "failing" },
        "events_stored": s.health.stored.load(Ordering::Relaxed),
        // Partitions paused because their stored offset does not fit the broker's log.
        "partitions_refused": refused,
        // Partitions with records waiting that no collector of the group stores.
        "partitions_unstored": unstored,
    });
    if ok {
        (StatusCode::OK, Json(body))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    metrics_response(&s.metrics)
}
