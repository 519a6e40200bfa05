//! Every metric `docs/endpoints.md` documents for the gateway is in its first scrape, at zero, but the
//! per-route families, which appear with their route's first request. Its own test binary: the
//! Prometheus recorder is process-wide.

use logpipe_integration_tests as it;

/// Labelled by route template: no series exists before a request to that route.
const PER_REQUEST: [&str; 4] = [
    "http_requests_total",
    "http_request_duration_seconds",
    "gateway_rate_limited_total",
    "gateway_auth_failures_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_first_scrape_has_every_documented_metric_but_the_per_route_ones() {
    let gateway = it::start_gateway(it::gateway_config(&it::unique("scrape"))).await;
    let missing = it::missing_documented(&gateway.metrics().await, "gateway", &PER_REQUEST, 6);
    assert!(
        missing.is_empty(),
        "missing from the first scrape: {missing:?}"
    );
    gateway.stop().await;
}
