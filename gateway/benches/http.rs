//! Gateway throughput and latency against a bare axum route, in one run, on real Redis and Kafka.
//!
//!   LOGPIPE_BENCH_BROKERS=127.0.0.1:9092 cargo bench -p logpipe-gateway --bench http [-- SECS]
//!
//! Started in-process: a bare axum server (the ceiling: a route that answers a small JSON, and one
//! that reads a body and answers 202), one idle generator, and the real gateway with its Redis
//! sliding-window limiter on (limits far above the load, so every request pays the Redis check and
//! none is refused). The load comes from this process too, over loopback keep-alive connections:
//!
//! 1. status: `GET /api/v1/generator/status` (auth, Redis check, fan-out to the generator), closed
//!    loop with 64 connections for SECS seconds; the same against the bare route → ratio.
//! 2. ingest: `POST /api/v1/logs` with 1,000-event JSON batches (validation, Redis check counting
//!    1,000, produce and wait for Kafka's acks), closed loop with 8 connections; the same body to the
//!    bare body route → ratio.
//! 3. latency: each of the two at half its goal rate (10,000 requests/s; 25 batches/s = 25,000
//!    events/s), paced, p50/p99/max; status also at half the rate measured in step 1.
//!
//! The client shares the 2 cores with the servers, so absolute numbers are lower than a remote
//! client would see; the ratios compare like with like.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use logpipe_common::kafka::KafkaSettings;
use logpipe_gateway::config::GatewayConfig;
use logpipe_gateway::ratelimit::Limit;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let brokers =
        std::env::var("LOGPIPE_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(Duration::from_secs(secs), brokers));
}

async fn serve(router: Router, token: CancellationToken) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(l, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap();
    });
    addr
}

async fn run(secs: Duration, brokers: String) {
    let token = CancellationToken::new();
    let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let kafka = KafkaSettings {
        brokers,
        raw_topic: format!("bench.gateway.{tag}"),
        raw_partitions: 6,
        ..KafkaSettings::default()
    };
    logpipe_common::kafka::ensure_topics(&kafka, &[(kafka.raw_topic.clone(), 6)])
        .await
        .expect("topic");

    // The ceiling: bare axum doing the least a route can do.
    let bare = Router::new()
        .route(
            "/status",
            get(|| async { axum::Json(json!({"state": "idle"})) }),
        )
        .route(
            "/logs",
            post(|body: axum::body::Bytes| async move {
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(json!({"accepted": body.len() / 200})),
                )
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20));
    let bare = serve(bare, token.clone()).await;

    let generator =
        logpipe_generator::Application::build(logpipe_generator::config::GeneratorConfig {
            port: 0,
            kafka: kafka.clone(),
            ..Default::default()
        })
        .await
        .expect("generator");
    let gen_addr = generator.local_addr();
    let t = token.clone();
    tokio::spawn(async move { generator.run_until_stopped(t).await });

    let mut config = GatewayConfig {
        port: 0,
        generator_urls: vec![format!("http://{gen_addr}")],
        kafka: kafka.clone(),
        ..Default::default()
    };
    config.rate_limit.key_prefix = format!("bench:{tag}");
    config.rate_limit.query = Limit {
        limit: 100_000_000,
        window_ms: 1_000,
    };
    config.rate_limit.ingest = Limit {
        limit: 1_000_000_000,
        window_ms: 1_000,
    };
    // A second gateway without the limiter, to show what the Redis check costs.
    let mut unlimited = config.clone();
    unlimited.rate_limit.enabled = false;
    let gateway = logpipe_gateway::Application::build(config)
        .await
        .expect("gateway");
    let unlimited = logpipe_gateway::Application::build(unlimited)
        .await
        .expect("gateway");
    let gw_free = unlimited.local_addr();
    let t = token.clone();
    tokio::spawn(async move { unlimited.run_until_stopped(t).await });
    let gw = gateway.local_addr();
    let t = token.clone();
    tokio::spawn(async move { gateway.run_until_stopped(t).await });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let batch = batch_body(1_000);
    println!(
        "gateway benchmark: {}s per phase, batch body {} bytes",
        secs.as_secs(),
        batch.len()
    );

    let status_url = format!("http://{gw}/api/v1/generator/status");
    // Warm up connections, the limiter script and the generator.
    closed_loop(&client, Req::get(&status_url), 16, Duration::from_secs(1)).await;
    let s_bare = closed_loop(
        &client,
        Req::get(&format!("http://{bare}/status")),
        64,
        secs,
    )
    .await;
    let s_gw = closed_loop(&client, Req::get(&status_url), 64, secs).await;
    let h_gw = closed_loop(&client, Req::get(&format!("http://{gw}/health")), 64, secs).await;
    let s_free = closed_loop(
        &client,
        Req::get(&format!("http://{gw_free}/api/v1/generator/status")),
        64,
        secs,
    )
    .await;
    report("status, bare axum (ceiling)", &s_bare, 1);
    report("gateway /health (middleware only)", &h_gw, 1);
    report("status, gateway without the Redis check", &s_free, 1);
    report("status, gateway", &s_gw, 1);
    println!(
        "  status ratio gateway/bare: {:.3}   goal 20,000 req/s: {}",
        s_gw.rate() / s_bare.rate(),
        verdict(s_gw.rate() >= 20_000.0)
    );

    let logs_url = format!("http://{gw}/api/v1/logs");
    closed_loop(
        &client,
        Req::post(&logs_url, &batch),
        4,
        Duration::from_secs(1),
    )
    .await;
    let i_bare = closed_loop(
        &client,
        Req::post(&format!("http://{bare}/logs"), &batch),
        8,
        secs,
    )
    .await;
    let i_gw = closed_loop(&client, Req::post(&logs_url, &batch), 8, secs).await;
    report("ingest, bare axum (ceiling)", &i_bare, 1_000);
    report("ingest, gateway", &i_gw, 1_000);
    println!(
        "  ingest ratio gateway/bare: {:.3}   goal 50,000 events/s: {}",
        i_gw.rate() / i_bare.rate(),
        verdict(i_gw.rate() * 1_000.0 >= 50_000.0)
    );

    let s_half = paced(&client, Req::get(&status_url), 10_000.0, secs).await;
    report("status at 10,000 req/s (half the goal)", &s_half, 1);
    println!("  p99 under 5 ms: {}", verdict(s_half.p(0.99) < 5.0));
    let half_measured = (s_gw.rate() / 2.0).floor().max(1.0);
    let s_half_m = paced(&client, Req::get(&status_url), half_measured, secs).await;
    report(
        &format!("status at {half_measured:.0} req/s (half of what this run measured)"),
        &s_half_m,
        1,
    );
    let i_half = paced(&client, Req::post(&logs_url, &batch), 25.0, secs).await;
    report(
        "ingest at 25 batches/s = 25,000 events/s (half the goal)",
        &i_half,
        1_000,
    );
    println!("  p99 under 5 ms: {}", verdict(i_half.p(0.99) < 5.0));
    token.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn batch_body(n: usize) -> Vec<u8> {
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"timestamp": now.to_rfc3339(), "level": if i % 10 == 0 { "ERROR" } else { "INFO" },
                   "service": format!("svc-{}", i % 8), "component": "api", "host": "bench-1",
                   "message": format!("request {i} served in {} ms", i % 97),
                   "attributes": {"http.status": 200, "latency_ms": i % 97}})
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

#[derive(Clone)]
struct Req {
    url: String,
    body: Option<bytes::Bytes>,
}

impl Req {
    fn get(url: &str) -> Req {
        Req {
            url: url.into(),
            body: None,
        }
    }
    fn post(url: &str, body: &[u8]) -> Req {
        Req {
            url: url.into(),
            body: Some(bytes::Bytes::copy_from_slice(body)),
        }
    }
    async fn send(&self, client: &reqwest::Client) -> bool {
        let r = match &self.body {
            None => client.get(&self.url).send().await,
            Some(b) => {
                client
                    .post(&self.url)
                    .header("content-type", "application/json")
                    .body(b.clone())
                    .send()
                    .await
            }
        };
        match r {
            Ok(resp) => {
                let ok = resp.status().is_success();
                let _ = resp.bytes().await;
                ok
            }
            Err(_) => false,
        }
    }
}

struct Outcome {
    ok: u64,
    failed: u64,
    took: Duration,
    /// Latencies in milliseconds, sorted.
    latencies: Vec<f64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.took.as_secs_f64()
    }
    fn p(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }
}

fn report(what: &str, o: &Outcome, per_request: u64) {
    println!(
        "{what}: {:.0} req/s ({:.0} events/s), {} failed; latency ms p50 {:.2} p99 {:.2} max {:.2}",
        o.rate(),
        o.rate() * per_request as f64,
        o.failed,
        o.p(0.5),
        o.p(0.99),
        o.latencies.last().copied().unwrap_or(f64::NAN)
    );
}

/// `conns` workers each send back to back for `dur`.
async fn closed_loop(client: &reqwest::Client, req: Req, conns: usize, dur: Duration) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (client, req, stop, failed) =
                (client.clone(), req.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if req.send(&client).await {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let took = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Outcome {
        ok: latencies.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        took,
        latencies,
    }
}

/// Requests started at a fixed rate (open loop) for `dur`; latency is measured from each request's
/// scheduled start, so a stall shows up as latency rather than as a lower rate.
async fn paced(client: &reqwest::Client, req: Req, per_sec: f64, dur: Duration) -> Outcome {
    let n = (per_sec * dur.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / per_sec);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, req) = (client.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let ok = req.send(&client).await;
            (ok, due.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (ok, ms) = t.await.unwrap();
        if ok {
            latencies.push(ms);
        } else {
            failed += 1;
        }
    }
    let took = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Outcome {
        ok: latencies.len() as u64,
        failed,
        took,
        latencies,
    }
}
