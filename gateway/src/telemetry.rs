//! The gateway's metrics, by name from the design brief. Labels are bounded: the route template
//! (never the raw path) and the numeric status.

use std::time::Duration;

use metrics::{counter, histogram};

pub fn http_request(route: &str, status: u16, took: Duration) {
    counter!("http_requests_total", "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
    histogram!("http_request_duration_seconds", "route" => route.to_owned())
        .record(took.as_secs_f64());
}
