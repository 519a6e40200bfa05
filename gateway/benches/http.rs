//! Gateway throughput and latency against its ceilings, in one run, on real Redis and Kafka.
//!
//!   LOGPIPE_BENCH_BROKERS=127.0.0.1:9092 cargo bench -p logpipe-gateway --bench http [-- SECS [PHASE..]]
//!
//! PHASE is `status`, `ingest`, `latency` or `protocols` (default: the first three, in that order).
//!
//! The servers run on a two-worker runtime, as the gateway binary does: a bare axum server (the
//! ceiling: a route that answers a small JSON, and one that reads a body and answers 202), one idle
//! generator, and the real gateway with its Redis sliding-window limiter on (limits far above the
//! load, so every request pays the Redis check and none is refused), plus a second gateway with the
//! limiter off to show what the check costs.
//!
//! The load comes from this process's own thread and single-threaded runtime (the role `wrk -t1`
//! plays), over keep-alive HTTP/1.1 connections made with hyper's connection API, so the client costs
//! as little as a client can:
//!
//! 1. status: `GET /api/v1/generator/status` (auth, Redis check, fan-out to the generator), closed
//!    loop over 64 connections for SECS seconds; the same against the bare route → ratio.
//! 2. ingest: `POST /api/v1/logs` with 1,000-event JSON batches (parse, validation, Redis check
//!    counting 1,000, produce and wait for Kafka's acks), closed loop over 8 connections; ceilings:
//!    the same body to the bare route, and the gateway's own producer sending the same 1,000 events
//!    and awaiting the acks with no HTTP in front (what Kafka alone allows); and the CPU per event
//!    of each (this process's threads, less the load client's).
//! 3. latency: each at half its goal rate (10,000 requests/s; 25 batches/s = 25,000 events/s),
//!    paced: every connection sends on a fixed schedule, and a request held up by a slow previous
//!    one counts from its scheduled start, so a stall shows up as latency rather than as a lower
//!    rate (wrk2's correction). The produce ceiling is paced the same way.
//!
//! 4. protocols: the same 1,000 events through each shipper protocol, closed loop over 8
//!    connections, interleaved with the gateway's own JSON path in four slices each (goal: each
//!    ≥ 0.8 of its events/s), with the servers' CPU per event of both (`common/cpu.rs`):
//!    OTLP/HTTP protobuf, the same gzip-compressed (as the exporters send it), OTLP/JSON, an
//!    Elasticsearch bulk body of ECS documents, and a Loki push (snappy protobuf, as Promtail sends).
//!
//! The client shares the 2 cores with the servers, Redis and the broker, so absolute numbers are
//! lower than a remote client would see; the ratios compare like with like.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use logpipe_common::event::LogEvent;
use logpipe_common::kafka::KafkaSettings;
use logpipe_gateway::config::GatewayConfig;
use logpipe_gateway::ingest::IngestProducer;
use logpipe_gateway::ratelimit::Limit;
use serde_json::{json, Value};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

#[path = "common/bodies.rs"]
mod bodies;
#[path = "common/cpu.rs"]
mod cpu;
use bodies::{bulk_body, gzip, loki_body, otlp_body, otlp_json};

// The allocator the gateway binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STATUS_GOAL: f64 = 20_000.0;
const INGEST_GOAL: f64 = 50_000.0;
const BATCH: usize = 1_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    let mut phases: Vec<Phase> = args.iter().filter_map(|a| Phase::parse(a)).collect();
    if phases.is_empty() {
        phases = vec![Phase::Status, Phase::Ingest, Phase::Latency];
    }
    let brokers =
        std::env::var("LOGPIPE_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let token = CancellationToken::new();
    let targets = servers.block_on(start_servers(brokers, token.clone()));
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let secs = Duration::from_secs(secs);
    let batch = Bytes::from(batch_body(BATCH, false));
    println!(
        "gateway benchmark: {}s per phase, batch body {} bytes",
        secs.as_secs(),
        batch.len()
    );
    for phase in phases {
        let servers = servers.handle().clone();
        client.block_on(async {
            match phase {
                Phase::Status => status(secs, &targets).await,
                Phase::Ingest => ingest(secs, &targets, &batch, &servers).await,
                Phase::Latency => latency(secs, &targets, &batch, &servers).await,
                Phase::Protocols => protocols(secs, &targets, &batch).await,
            }
        });
    }
    token.cancel();
    servers.block_on(async {
        targets.producer.flush(Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
}

#[derive(Clone, Copy)]
enum Phase {
    Status,
    Ingest,
    Latency,
    Protocols,
}

impl Phase {
    fn parse(s: &str) -> Option<Phase> {
        match s {
            "status" => Some(Phase::Status),
            "ingest" => Some(Phase::Ingest),
            "latency" => Some(Phase::Latency),
            "protocols" => Some(Phase::Protocols),
            _ => None,
        }
    }
}

struct Targets {
    bare: SocketAddr,
    gateway: SocketAddr,
    unlimited: SocketAddr,
    producer: Arc<IngestProducer>,
    events: Arc<Vec<LogEvent>>,
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

async fn start_servers(brokers: String, token: CancellationToken) -> Targets {
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
    let producer = Arc::new(IngestProducer::new(&kafka, &config.ingest).expect("producer"));
    let mut unlimited = config.clone();
    unlimited.rate_limit.enabled = false;
    let gateway = logpipe_gateway::Application::build(config)
        .await
        .expect("gateway");
    let unlimited = logpipe_gateway::Application::build(unlimited)
        .await
        .expect("gateway");
    let targets = Targets {
        bare,
        gateway: gateway.local_addr(),
        unlimited: unlimited.local_addr(),
        producer,
        events: Arc::new(serde_json::from_slice(&batch_body(BATCH, true)).expect("events")),
    };
    let t = token.clone();
    tokio::spawn(async move { unlimited.run_until_stopped(t).await });
    tokio::spawn(async move { gateway.run_until_stopped(token).await });
    targets
}

const WARM: Duration = Duration::from_secs(1);

/// Throughput of a rate-limited status request against the bare route.
async fn status(secs: Duration, t: &Targets) {
    let status = Target::get(t.gateway, "/api/v1/generator/status");
    http(&status, 16, Load::Closed(WARM)).await;

    let s_bare = http(&Target::get(t.bare, "/status"), 64, Load::Closed(secs)).await;
    let h_gw = http(&Target::get(t.gateway, "/health"), 64, Load::Closed(secs)).await;
    let s_free = http(
        &Target::get(t.unlimited, "/api/v1/generator/status"),
        64,
        Load::Closed(secs),
    )
    .await;
    let s_gw = http(&status, 64, Load::Closed(secs)).await;
    report("status, bare axum (ceiling)", &s_bare, 1);
    report("gateway /health (middleware only)", &h_gw, 1);
    report("status, gateway without the Redis check", &s_free, 1);
    report("status, gateway", &s_gw, 1);
    println!(
        "  status ratio gateway/bare: {:.3}   goal {STATUS_GOAL:.0} req/s: {}",
        s_gw.rate() / s_bare.rate(),
        verdict(s_gw.rate() >= STATUS_GOAL)
    );
}

/// Throughput of 1,000-event batches against the bare body route and the producer alone.
async fn ingest(secs: Duration, t: &Targets, batch: &Bytes, servers: &Handle) {
    let logs = Target::post(t.gateway, "/api/v1/logs", batch.clone());
    http(&logs, 4, Load::Closed(WARM)).await;
    let i_bare = http(
        &Target::post(t.bare, "/logs", batch.clone()),
        8,
        Load::Closed(secs),
    )
    .await;
    let (i_kafka, kafka_ns) = cpu::servers_ns(produce(t, servers, 8, Load::Closed(secs))).await;
    let (i_gw, gw_ns) = cpu::servers_ns(http(&logs, 8, Load::Closed(secs))).await;
    report("ingest, bare axum body route (ceiling)", &i_bare, BATCH);
    report(
        "ingest, producer alone: 1,000 events to Kafka acks (ceiling)",
        &i_kafka,
        BATCH,
    );
    report("ingest, gateway", &i_gw, BATCH);
    // The servers' CPU (this process less the load client's thread; the broker and Redis are
    // processes of their own): steadier than events/s on a VM whose speed moves.
    let us_per_event = |o: &Outcome, ns: u64| ns as f64 / 1e3 / (o.ok as f64 * BATCH as f64);
    println!(
        "  CPU per event: producer alone {:.2} µs, gateway {:.2} µs",
        us_per_event(&i_kafka, kafka_ns),
        us_per_event(&i_gw, gw_ns)
    );
    println!(
        "  ingest ratio gateway/bare: {:.3}, gateway/producer alone: {:.3}   goal {INGEST_GOAL:.0} events/s: {}",
        i_gw.rate() / i_bare.rate(),
        i_gw.rate() / i_kafka.rate(),
        verdict(i_gw.rate() * BATCH as f64 >= INGEST_GOAL)
    );
}

/// The same events through each shipper protocol against the gateway's own JSON path.
async fn protocols(secs: Duration, t: &Targets, batch: &Bytes) {
    let events: Vec<LogEvent> = serde_json::from_slice(&batch_body(BATCH, true)).expect("events");
    let otlp = Bytes::from(otlp_body(&events));
    let targets = [
        (
            "own JSON path, POST /api/v1/logs",
            Target::post(t.gateway, "/api/v1/logs", batch.clone()),
        ),
        (
            "OTLP/HTTP protobuf, POST /v1/logs",
            Target::post(t.gateway, "/v1/logs", otlp.clone())
                .typed("application/x-protobuf", false),
        ),
        (
            "OTLP/HTTP protobuf gzip",
            Target::post(t.gateway, "/v1/logs", Bytes::from(gzip(&otlp)))
                .typed("application/x-protobuf", true),
        ),
        (
            "OTLP/HTTP JSON",
            Target::post(t.gateway, "/v1/logs", Bytes::from(otlp_json(&events))),
        ),
        (
            "Elasticsearch bulk, POST /_bulk",
            Target::post(t.gateway, "/_bulk", Bytes::from(bulk_body(&events)))
                .typed("application/x-ndjson", false),
        ),
        (
            "Loki push, snappy protobuf, POST /loki/api/v1/push",
            Target::post(
                t.gateway,
                "/loki/api/v1/push",
                Bytes::from(loki_body(&events)),
            )
            .typed("application/x-protobuf", false),
        ),
    ];
    for (_, target) in &targets {
        http(target, 4, Load::Closed(WARM)).await;
    }
    // Interleaved: the own path and the protocol take turns in ROUNDS slices each, so the
    // machine's drift (the VM's speed moves by a third within a minute, the in-memory broker's
    // log grows) falls on both sides of each ratio alike. Beside events/s, the servers' CPU per
    // event: what each path costs, which the neighbours' load does not move.
    const ROUNDS: u32 = 4;
    let slice = (secs / ROUNDS).max(Duration::from_secs(1));
    let (own_what, own) = &targets[0];
    for (what, target) in &targets[1..] {
        let (mut base, mut o) = (Tally::default(), Tally::default());
        for _ in 0..ROUNDS {
            base.add(cpu::servers_ns(http(own, 8, Load::Closed(slice))).await);
            o.add(cpu::servers_ns(http(target, 8, Load::Closed(slice))).await);
        }
        base.report(own_what, own.body.len());
        o.report(what, target.body.len());
        let ratio = o.rate() / base.rate();
        println!(
            "  ratio to the own JSON path: {ratio:.3}   goal 0.8: {}   CPU per event: {:.2}x the own path's",
            verdict(ratio >= 0.8),
            o.cpu_us() / base.cpu_us()
        );
    }
}

/// Requests, time and the servers' CPU summed over a path's slices.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    took: Duration,
    cpu_ns: u64,
    p99s: Vec<f64>,
}

impl Tally {
    fn add(&mut self, (o, cpu_ns): (Outcome, u64)) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.took += o.took;
        self.cpu_ns += cpu_ns;
        self.p99s.push(o.p(0.99));
    }
    fn rate(&self) -> f64 {
        self.ok as f64 * BATCH as f64 / self.took.as_secs_f64()
    }
    /// The servers' CPU per event, in microseconds.
    fn cpu_us(&self) -> f64 {
        self.cpu_ns as f64 / 1e3 / (self.ok as f64 * BATCH as f64)
    }
    fn report(&self, what: &str, body_bytes: usize) {
        let p99s: Vec<String> = self.p99s.iter().map(|p| format!("{p:.1}")).collect();
        println!(
            "{what} ({body_bytes} bytes): {:.0} events/s, {} failed; servers' CPU {:.2} us per event; p99 ms by slice {}",
            self.rate(),
            self.failed,
            self.cpu_us(),
            p99s.join(" ")
        );
    }
}

/// Latency at half of each goal, paced, against the same ceilings.
async fn latency(secs: Duration, t: &Targets, batch: &Bytes, servers: &Handle) {
    let status = Target::get(t.gateway, "/api/v1/generator/status");
    let logs = Target::post(t.gateway, "/api/v1/logs", batch.clone());
    http(&status, 16, Load::Closed(WARM)).await;
    let half = STATUS_GOAL / 2.0;
    let s_bare_half = http(
        &Target::get(t.bare, "/status"),
        64,
        Load::Paced {
            per_sec: half,
            dur: secs,
        },
    )
    .await;
    let s_half = http(
        &status,
        64,
        Load::Paced {
            per_sec: half,
            dur: secs,
        },
    )
    .await;
    report(
        &format!("status at {half:.0} req/s, bare axum (ceiling)"),
        &s_bare_half,
        1,
    );
    report(
        &format!("status at {half:.0} req/s (half the goal), gateway"),
        &s_half,
        1,
    );
    println!(
        "  p99 under 5 ms: {}   p99 ratio gateway/bare: {:.2}",
        verdict(s_half.p(0.99) < 5.0),
        s_half.p(0.99) / s_bare_half.p(0.99)
    );
    let batches_per_sec = INGEST_GOAL / 2.0 / BATCH as f64;
    let i_kafka_half = produce(
        t,
        servers,
        8,
        Load::Paced {
            per_sec: batches_per_sec,
            dur: secs,
        },
    )
    .await;
    let i_half = http(
        &logs,
        8,
        Load::Paced {
            per_sec: batches_per_sec,
            dur: secs,
        },
    )
    .await;
    report(
        &format!("ingest at {batches_per_sec:.0} batches/s, producer alone (ceiling)"),
        &i_kafka_half,
        BATCH,
    );
    report(
        &format!(
            "ingest at {batches_per_sec:.0} batches/s = {:.0} events/s (half the goal), gateway",
            INGEST_GOAL / 2.0
        ),
        &i_half,
        BATCH,
    );
    println!(
        "  p99 under 5 ms: {}   p99 ratio gateway/producer alone: {:.2}",
        verdict(i_half.p(0.99) < 5.0),
        i_half.p(0.99) / i_kafka_half.p(0.99)
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// `n` events as a JSON array; with ids when they are to be produced directly.
fn batch_body(n: usize, with_ids: bool) -> Vec<u8> {
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..n)
        .map(|i| {
            let mut e = json!({"timestamp": now.to_rfc3339(),
                   "level": if i % 10 == 0 { "ERROR" } else { "INFO" },
                   "service": format!("svc-{}", i % 8), "component": "api", "host": "bench-1",
                   "message": format!("request {i} served in {} ms", i % 97),
                   "attributes": {"http.status": 200, "latency_ms": i % 97}});
            if with_ids {
                e["event_id"] = json!(LogEvent::new_id());
            }
            e
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

/// One kind of request to one server.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    method: hyper::Method,
    path: &'static str,
    body: Bytes,
    content_type: &'static str,
    gzip: bool,
}

impl Target {
    fn get(addr: SocketAddr, path: &'static str) -> Target {
        Target {
            addr,
            method: hyper::Method::GET,
            path,
            body: Bytes::new(),
            content_type: "application/json",
            gzip: false,
        }
    }

    fn post(addr: SocketAddr, path: &'static str, body: Bytes) -> Target {
        Target {
            addr,
            method: hyper::Method::POST,
            path,
            body,
            content_type: "application/json",
            gzip: false,
        }
    }

    fn typed(mut self, content_type: &'static str, gzip: bool) -> Target {
        self.content_type = content_type;
        self.gzip = gzip;
        self
    }

    fn request(&self) -> hyper::Request<Full<Bytes>> {
        let mut b = hyper::Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            // A name the gateway answers to (its browser check refuses other `Host`s with 421).
            .header(hyper::header::HOST, "127.0.0.1");
        if !self.body.is_empty() {
            b = b.header(hyper::header::CONTENT_TYPE, self.content_type);
        }
        if self.gzip {
            b = b.header(hyper::header::CONTENT_ENCODING, "gzip");
        }
        b.body(Full::new(self.body.clone())).expect("request")
    }
}

/// One keep-alive connection; reopened after an error.
struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// What a load worker does once per request; true when it succeeded.
trait Op: Send + 'static {
    fn run(&mut self) -> impl std::future::Future<Output = bool> + Send;
}

impl Op for Conn {
    /// True when the answer was a 2xx and its body was read.
    async fn run(&mut self) -> bool {
        match self.try_send().await {
            Ok(ok) => ok,
            Err(_) => {
                self.sender = None;
                false
            }
        }
    }
}

/// The gateway's producer sending the same batch with no HTTP in front of it.
struct Produce {
    producer: Arc<IngestProducer>,
    events: Arc<Vec<LogEvent>>,
}

impl Op for Produce {
    async fn run(&mut self) -> bool {
        self.producer.produce_all(&self.events, None).await.is_ok()
    }
}

impl Conn {
    fn new(target: &Target) -> Conn {
        Conn {
            target: target.clone(),
            sender: None,
        }
    }

    async fn try_send(&mut self) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(self.target.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected");
        sender.ready().await?;
        let resp = sender.send_request(self.target.request()).await?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        Ok(ok)
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

    fn from_workers(parts: Vec<(Vec<f64>, u64)>, took: Duration) -> Outcome {
        let mut latencies = Vec::new();
        let mut failed = 0;
        for (l, f) in parts {
            latencies.extend(l);
            failed += f;
        }
        latencies.sort_by(f64::total_cmp);
        Outcome {
            ok: latencies.len() as u64,
            failed,
            took,
            latencies,
        }
    }
}

fn report(what: &str, o: &Outcome, per_request: usize) {
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

#[derive(Clone, Copy)]
enum Load {
    /// Each worker sends back to back for this long.
    Closed(Duration),
    /// `per_sec` requests per second shared by the workers, for `dur` (open loop): worker `i` of
    /// `n` sends its k-th request at `(k * n + i) / per_sec`; when it is late because the previous
    /// request was slow, latency counts from that due time (wrk2's correction).
    Paced { per_sec: f64, dur: Duration },
}

/// Run one worker per op on `rt` under `load`.
async fn drive<T: Op>(rt: &Handle, load: Load, ops: Vec<T>) -> Outcome {
    let n = ops.len();
    // Paced workers start together a moment from now, so the first due times are not already past.
    let started = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(i, mut op)| {
            rt.spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0u64);
                for k in 0.. {
                    let from = match load {
                        Load::Closed(dur) => {
                            let now = Instant::now();
                            if now >= started + dur {
                                break;
                            }
                            now
                        }
                        Load::Paced { per_sec, dur } => {
                            let at = Duration::from_secs_f64((k * n + i) as f64 / per_sec);
                            if at >= dur {
                                break;
                            }
                            let due = started + at;
                            if due > Instant::now() {
                                // On time: count from when the timer let us go, so the timer's
                                // own coarseness (a millisecond) is not charged to the server.
                                tokio::time::sleep_until(due.into()).await;
                                Instant::now()
                            } else {
                                // Late because the last request took too long: that wait is
                                // the server's, so it counts.
                                due
                            }
                        }
                    };
                    if op.run().await {
                        lat.push(from.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let mut parts = Vec::new();
    for w in workers {
        parts.push(w.await.expect("worker"));
    }
    Outcome::from_workers(parts, started.elapsed())
}

/// Load over `conns` connections from this (the client's) runtime.
async fn http(target: &Target, conns: usize, load: Load) -> Outcome {
    let ops = (0..conns).map(|_| Conn::new(target)).collect();
    drive(&Handle::current(), load, ops).await
}

/// The produce ceiling: `workers` batches in flight, on the servers' runtime.
async fn produce(t: &Targets, servers: &Handle, workers: usize, load: Load) -> Outcome {
    let ops = (0..workers)
        .map(|_| Produce {
            producer: t.producer.clone(),
            events: t.events.clone(),
        })
        .collect();
    drive(servers, load, ops).await
}
