//! The gateway's metrics, by the names ARCHITECTURE.md fixes. Labels are bounded: the route template
//! (never the raw path) and the numeric status.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Register the series whose labels are known before any request, at zero, so dashboards and
/// alert rules see them from the first scrape. (Per-route series appear with their first request.)
pub fn describe() {
    for outcome in ["accepted", "rejected", "failed"] {
        counter!("ingest_events_total", "outcome" => outcome).increment(0);
    }
    for reason in ["host_not_allowed", "cross_origin"] {
        counter!("gateway_browser_refusals_total", "reason" => reason).increment(0);
    }
}

/// A request refused before routing for what a browser would send: `host_not_allowed`,
/// `cross_origin`.
pub fn browser_refused(reason: &'static str) {
    counter!("gateway_browser_refusals_total", "reason" => reason).increment(1);
}

pub fn rate_limited(route: &str) {
    counter!("gateway_rate_limited_total", "route" => route.to_owned()).increment(1);
}

/// 1 on the backend deciding limits now, 0 on the other.
pub fn rate_limit_backend(local: bool) {
    gauge!("gateway_rate_limit_backend", "backend" => "redis").set(if local { 0.0 } else { 1.0 });
    gauge!("gateway_rate_limit_backend", "backend" => "local").set(if local { 1.0 } else { 0.0 });
}

pub fn http_request(route: &str, status: u16, took: Duration) {
    counter!("http_requests_total", "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    histogram!("http_request_duration_seconds", "route" => route.to_owned())
        .record(took.as_secs_f64());
}

/// Events through `POST /api/v1/logs` by outcome: `accepted` (in Kafka), `rejected` (invalid),
/// `failed` (Kafka did not acknowledge; the client resends).
pub fn ingest_events(outcome: &'static str, n: usize) {
    if n > 0 {
        counter!("ingest_events_total", "outcome" => outcome).increment(n as u64);
    }
}

/// A refused authentication, by route template and reason (never the key).
pub fn auth_failure(route: &str, e: &crate::auth::AuthError) {
    let reason = match e {
        crate::auth::AuthError::Missing => "missing",
        crate::auth::AuthError::Invalid => "invalid",
        crate::auth::AuthError::Forbidden(_) => "forbidden",
    };
    counter!("gateway_auth_failures_total", "route" => route.to_owned(), "reason" => reason)
        .increment(1);
}
