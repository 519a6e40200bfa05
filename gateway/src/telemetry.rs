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

/// The syslog listeners' series, at zero, when a listener is on.
pub fn describe_syslog(transports: &[&'static str]) {
    for &t in transports {
        for outcome in ["accepted", "refused", "undelivered"] {
            counter!("syslog_messages_total", "transport" => t, "outcome" => outcome).increment(0);
        }
        counter!("syslog_unparsed_total", "transport" => t).increment(0);
        counter!("syslog_truncated_total", "transport" => t).increment(0);
        if t == "udp" {
            for reason in ["peer_share", "queue_full", "rate_limited"] {
                counter!("syslog_udp_dropped_total", "reason" => reason).increment(0);
            }
            gauge!("syslog_udp_kernel_drops").set(0.0);
        } else {
            gauge!("syslog_tcp_connections").set(0.0);
        }
    }
}

/// Syslog messages by outcome: `accepted` (in Kafka), `refused` (not even its text can be an
/// event, or a TCP message cut short by its sender), `undelivered` (read, not in Kafka by shutdown).
pub fn syslog_messages(transport: &'static str, outcome: &'static str, n: usize) {
    if n > 0 {
        counter!("syslog_messages_total", "transport" => transport, "outcome" => outcome)
            .increment(n as u64);
    }
}

/// A message that was not syslog, kept as its text.
pub fn syslog_unparsed(transport: &'static str) {
    counter!("syslog_unparsed_total", "transport" => transport).increment(1);
}

/// A message over `max_message_bytes`, kept as its head.
pub fn syslog_truncated(transport: &'static str) {
    counter!("syslog_truncated_total", "transport" => transport).increment(1);
}

/// Datagrams the UDP listener dropped: `peer_share`, `queue_full`, `rate_limited`.
pub fn syslog_udp_dropped(reason: &'static str, n: usize) {
    if n > 0 {
        counter!("syslog_udp_dropped_total", "reason" => reason).increment(n as u64);
    }
}

/// The kernel's drops on the UDP socket (its receive buffer was full), as the kernel counts them.
pub fn syslog_udp_kernel_drops(n: u64) {
    gauge!("syslog_udp_kernel_drops").set(n as f64);
}

/// A listener held a batch back (TCP: and stopped reading) because of `rate_limited` or `kafka`;
/// counted in milliseconds waited.
pub fn syslog_backpressure(transport: &'static str, reason: &'static str, waited: Duration) {
    counter!("syslog_backpressure_ms_total", "transport" => transport, "reason" => reason)
        .increment(waited.as_millis() as u64);
}

pub fn syslog_connections(delta: f64) {
    gauge!("syslog_tcp_connections").increment(delta);
}

/// A TCP connection closed at accept: `total` or `per_peer` cap reached.
pub fn syslog_connection_refused(reason: &'static str) {
    counter!("syslog_tcp_connections_refused_total", "reason" => reason).increment(1);
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
