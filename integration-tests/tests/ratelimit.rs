//! The gateway's sliding-window limits against real Redis, and its local fallback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    two_hundred_against_100(64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_is_as_exact_with_one_check_per_script_call() {
    two_hundred_against_100(1).await;
}

/// 200 parallel status requests against a limit of 100, with checks batched up to `batch_max`.
async fn two_hundred_against_100(batch_max: usize) {
    let name = it::unique("rl");
    let mut config = limited_gateway(&name, redis_url(), 100);
    config.rate_limit.redis_batch_max = batch_max;
    let gw = it::start_gateway(config).await;
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
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("gateway_rate_limit_backend{backend=\"local\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(reqwest::get(gw.url("/health")).await.unwrap().status(), 200);
    gw.stop().await;
}

/// For every accepted request i, the accepted requests sent no earlier than i and answered less than
/// one window after i was sent: their Redis-side decisions all lie in one window-long interval, so
/// there may be at most `limit` of them. Sound whatever the network delay: it only counts requests
/// whose decision time is certain to be inside the interval.
fn most_accepted_in_one_window(accepted: &[(Instant, Instant)], window: Duration) -> usize {
    accepted
        .iter()
        .map(|&(sent_i, _)| {
            accepted
                .iter()
                .filter(|&&(sent, answered)| sent >= sent_i && answered < sent_i + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_window_long_interval_accepts_more_than_the_limit_across_two_instances() {
    let name = it::unique("rlslide");
    let limit = 20;
    let window = Duration::from_millis(1_000);
    let config = || {
        let mut c = limited_gateway(&name, redis_url(), limit);
        c.rate_limit.query.window_ms = window.as_millis() as u64;
        c
    };
    let a = it::start_gateway(config()).await;
    let b = it::start_gateway(config()).await;
    let urls = [
        a.url("/api/v1/generator/status"),
        b.url("/api/v1/generator/status"),
    ];
    let client = reqwest::Client::new();
    let run = Duration::from_millis(3_500);
    let started = Instant::now();
    // Eight clients, alternating instances, each sending every few milliseconds for 3.5 windows.
    let workers = (0..8).map(|w| {
        let (client, url) = (client.clone(), urls[w % 2].clone());
        async move {
            let mut accepted = Vec::new();
            let mut refused = 0;
            while started.elapsed() < run {
                let sent = Instant::now();
                let r = client.get(&url).send().await.expect("answered");
                match r.status().as_u16() {
                    200 => accepted.push((sent, Instant::now())),
                    429 => refused += 1,
                    other => panic!("status {other}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (accepted, refused)
        }
    });
    let mut accepted = Vec::new();
    let mut refused = 0;
    for (acc, r) in join_all(workers).await {
        accepted.extend(acc);
        refused += r;
    }
    assert!(refused > 0, "the load exceeded the limit");
    let most = most_accepted_in_one_window(&accepted, window);
    assert!(
        most <= limit as usize,
        "{most} requests accepted inside one {window:?} window, limit {limit}"
    );
    // Exact, not merely strict: a sliding window over 3.5 windows of demand accepts at least three
    // full windows' worth.
    assert!(
        accepted.len() >= 3 * limit as usize,
        "only {} accepted",
        accepted.len()
    );
    a.stop().await;
    b.stop().await;
}

/// Wait until `gateway_rate_limit_backend` names `backend`.
async fn wait_backend(gw: &it::Running, backend: &str) {
    let gauge = format!("gateway_rate_limit_backend{{backend=\"{backend}\"}} 1");
    it::wait_for(
        &format!("the {backend} limiter"),
        Duration::from_secs(30),
        || async {
            if gw.metrics().await.contains(&gauge) {
                Ok(())
            } else {
                Err(format!("not on {backend}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_redis_mid_load_keeps_the_gateway_serving_locally_until_redis_returns() {
    let name = it::unique("rlkill");
    let port = it::free_port();
    let mut redis = it::start_redis(port);
    let mut config = limited_gateway(&name, format!("redis://127.0.0.1:{port}"), 1_000_000);
    config.rate_limit.redis_timeout_ms = 50;
    let gw = it::start_gateway(config).await;
    let url = gw.url("/api/v1/generator/status");
    wait_backend(&gw, "redis").await;

    // Steady load from four clients for the whole test; every answer is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let client = reqwest::Client::new();
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, stop, answers) =
                (client.clone(), url.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = match client.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    answers.lock().unwrap().push((Instant::now(), status));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.kill().unwrap();
    redis.wait().unwrap();
    let killed = Instant::now();
    wait_backend(&gw, "local").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let served_without_redis = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, s)| *at > killed && *s == 200)
        .count();

    let mut redis = it::start_redis(port);
    let back = Instant::now();
    wait_backend(&gw, "redis").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let failed: Vec<_> = answers.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "every request answered 200 through the outage: {} were not, first {:?}",
        failed.len(),
        failed.first().map(|(at, s)| (at.duration_since(killed), s))
    );
    assert!(
        served_without_redis > 10,
        "{served_without_redis} served while Redis was down"
    );
    assert!(
        answers.iter().filter(|(at, _)| *at > back).count() > 0,
        "served after Redis returned"
    );
    gw.stop().await;
    redis.kill().unwrap();
    let _ = redis.wait();
}
