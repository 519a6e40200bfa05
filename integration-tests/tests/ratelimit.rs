//! The gateway's sliding-window limits against real Redis, and its local fallback.

use std::time::Duration;

use futures::future::join_all;
use logpipe_gateway::ratelimit::Limit;
use logpipe_integration_tests as it;
use serde_json::Value;

fn limited_gateway(
    name: &str,
    redis_url: String,
    limit: u32,
) -> logpipe_gateway::config::GatewayConfig {
    let mut c = it::gateway_config(name);
    c.rate_limit.redis_url = redis_url;
    c.rate_limit.query = Limit {
        limit,
        window_ms: 60_000,
    };
    c
}

fn redis_url() -> String {
    std::env::var("LOGPIPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn hammer(urls: &[String], n: usize) -> Vec<reqwest::Response> {
    let client = reqwest::Client::new();
    join_all((0..n).map(|i| client.get(&urls[i % urls.len()]).send()))
        .await
        .into_iter()
        .map(|r| r.expect("request answered"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_parallel_requests_against_a_limit_of_100_accept_exactly_100() {
    let name = it::unique("rl");
    let gw = it::start_gateway(limited_gateway(&name, redis_url(), 100)).await;
    let responses = hammer(&[gw.url("/api/v1/generator/status")], 200).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<_> = responses
        .into_iter()
        .filter(|r| r.status() == 429)
        .collect();
    assert_eq!(ok, 100);
    assert_eq!(refused.len(), 100);
    let r = refused.into_iter().next().unwrap();
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(r.headers()["ratelimit-limit"], "100");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateway_instances_share_one_exact_limit() {
    let name = it::unique("rl2");
    let a = it::start_gateway(limited_gateway(&name, redis_url(), 50)).await;
    let b = it::start_gateway(limited_gateway(&name, redis_url(), 50)).await;
    let urls = [
        a.url("/api/v1/generator/status"),
        b.url("/api/v1/generator/status"),
    ];
    let responses = hammer(&urls, 120).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 50, "one limit across both instances");
    let next = hammer(&urls[..1], 1).await.remove(0);
    assert_eq!(next.status(), 429);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_gateway_keeps_serving_on_the_local_limiter() {
    let name = it::unique("rllocal");
    let dead = format!("redis://127.0.0.1:{}", it::free_port());
    let gw = it::start_gateway(limited_gateway(&name, dead, 5)).await;
    let responses = hammer(&[gw.url("/api/v1/generator/status")], 8).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(
        ok, 5,
        "the local limiter still holds the limit per instance"
    );
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_rate_limit_backend{backend=\"local\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(reqwest::get(gw.url("/health")).await.unwrap().status(), 200);
    gw.stop().await;
}
