//! Helpers for the integration tests in `tests/`: where the real broker and Postgres are, unique
//! names so tests run in parallel (own topic, schema, consumer group), and starting the services
//! exactly as `main` does, on port 0.
//!
//! `LOGPIPE_TEST_BROKERS` (default `127.0.0.1:9092`) and `LOGPIPE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/logpipe_test`) point at the services; the test command starts
//! them.
//!
//! `poison` is the set of records no row can hold, shared with the fault suite's `logpipe-poison`
//! (`src/bin`), which writes them into a running pipeline and reads the DLQ back.
//!
//! `stack` is `TestStack`, the collector (and, when asked, a gateway) most tests start and stop
//! alike, and `wait_rows`.
//!
//! `processes` starts the private broker and Redis a test may kill and start again.
//!
//! `conformance` is the broker conformance cases (`tests/conformance.rs`, and the table printed by
//! `logpipe-broker-conformance`).
//!
//! `fuzz` is the whole-path fuzzer: generated inputs through the real gateway and collector into
//! a real database, and the checks of every promise after the run (`tests/fuzz.rs`, short form;
//! `logpipe-fuzz` and `./fuzz.sh`, long form).

// Functions stay under 100 lines, as in the services (clippy.toml).
#![warn(clippy::too_many_lines)]

use std::future::Future;

use futures::StreamExt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use logpipe_common::kafka::KafkaSettings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn brokers() -> String {
    std::env::var("LOGPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn database_url() -> String {
    std::env::var("LOGPIPE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/logpipe_test".into())
}

/// A name unique to this test run: `<prefix>_<test>_<random>`, safe as topic, schema and group.
pub fn unique(test: &str) -> String {
    format!("t_{test}_{:08x}", rand::random::<u32>())
}

/// Kafka settings on the test broker with this test's own topics.
pub fn kafka(name: &str, partitions: i32) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers(),
        raw_topic: format!("{name}.raw"),
        dlq_topic: format!("{name}.dlq"),
        alerts_topic: format!("{name}.alerts"),
        raw_partitions: partitions,
        ..KafkaSettings::default()
    }
}

/// A running service: its address, its stop token and its task.
pub struct Running {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub task: JoinHandle<()>,
    /// A test that fails (panics) still stops its services: a blocking thread that waits for
    /// shutdown would otherwise keep the test's runtime, and the whole run, from ending.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics text")
    }

    /// Cancel and wait for the service to drain and exit.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("service stopped within 30 s")
            .expect("service task did not panic");
    }
}

pub fn spawn<F, E>(addr: SocketAddr, run: impl FnOnce(CancellationToken) -> F) -> Running
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let token = CancellationToken::new();
    let fut = run(token.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = fut.await {
            panic!("service failed: {e}");
        }
    });
    Running {
        addr,
        _stop_on_drop: token.clone().drop_guard(),
        token,
        task,
    }
}

pub async fn start_generator(config: logpipe_generator::config::GeneratorConfig) -> Running {
    let app = logpipe_generator::Application::build(config)
        .await
        .expect("generator starts");
    let addr = app.local_addr();
    spawn(addr, |t| app.run_until_stopped(t))
}

pub async fn start_collector(
    config: logpipe_collector::config::CollectorConfig,
) -> (
    Running,
    std::sync::Arc<logpipe_collector::consumer::ConsumerHealth>,
) {
    if std::env::var_os("LOGPIPE_TEST_LOG").is_some() {
        logpipe_common::telemetry::init_tracing();
    }
    let app = logpipe_collector::Application::build(config)
        .await
        .expect("collector starts");
    let addr = app.local_addr();
    let health = app.health();
    (spawn(addr, |t| app.run_until_stopped(t)), health)
}

pub async fn start_gateway(config: logpipe_gateway::config::GatewayConfig) -> Running {
    let app = logpipe_gateway::Application::build(config)
        .await
        .expect("gateway starts");
    let addr = app.local_addr();
    spawn(addr, |t| app.run_until_stopped(t))
}

pub fn generator_config(name: &str, partitions: i32) -> logpipe_generator::config::GeneratorConfig {
    logpipe_generator::config::GeneratorConfig {
        port: 0,
        instance_id: format!("gen-{name}"),
        kafka: kafka(name, partitions),
        ..Default::default()
    }
}

pub fn collector_config(name: &str, partitions: i32) -> logpipe_collector::config::CollectorConfig {
    let mut c = logpipe_collector::config::CollectorConfig {
        port: 0,
        kafka: kafka(name, partitions),
        ..Default::default()
    };
    c.database.url = database_url();
    c.database.schema = name.to_owned();
    c.consumer.group_id = format!("{name}-group");
    c.consumer.batch_max_ms = 100;
    c
}

/// Poll `check` until it returns `Some`, or fail after `timeout` with `what` and the last value.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match check().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
}

/// A connection to this test's schema, for assertions.
pub async fn schema_pool(schema: &str) -> sqlx::PgPool {
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;
    let opts = PgConnectOptions::from_str(&database_url())
        .expect("valid url")
        .options([("search_path", schema)]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .expect("connect to test database")
}

/// Drop the test's schema at the end (best effort: a failed test keeps its schema for inspection).
pub async fn drop_schema(pool: &sqlx::PgPool, schema: &str) {
    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await;
}

pub async fn count_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM log_events")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// Build a generator exactly as `main` does (not serving HTTP) and start one run on its engine.
pub async fn generator_running(
    config: &logpipe_generator::config::GeneratorConfig,
    req: &logpipe_generator::engine::StartRequest,
) -> (
    logpipe_generator::Application,
    std::sync::Arc<logpipe_generator::engine::Engine>,
) {
    let app = logpipe_generator::Application::build(config.clone())
        .await
        .expect("generator starts");
    let engine = app.engine();
    let params = logpipe_generator::engine::RunParams::from_request(req, &config.defaults)
        .expect("valid run parameters");
    engine.start(params).expect("run starts");
    (app, engine)
}

/// A producer on the test broker that keeps each partition's records in the order they were sent,
/// retries included (one request in flight), so event-time tests see the order they produced.
pub fn producer(kafka: &KafkaSettings) -> rdkafka::producer::FutureProducer {
    kafka
        .client_config("test-producer")
        .set("linger.ms", "5")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("test producer")
}

/// Produce records (key, payload, content type) and wait until the broker acknowledged all of them.
pub async fn produce_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>, &'static str)>,
) {
    use rdkafka::producer::FutureRecord;
    let sends = records
        .into_iter()
        .map(|(key, payload, content_type)| async move {
            let headers = logpipe_common::kafka::event_headers(content_type, None);
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("record acknowledged");
        });
    futures::stream::iter(sends)
        .buffer_unordered(1000)
        .collect::<Vec<()>>()
        .await;
}

/// Events as JSON records, keyed by event id: the services send theirs unkeyed (librdkafka's
/// sticky partitioner), but a test wants its records spread over every partition whatever its
/// count (the collector reads either alike).
pub async fn produce_events(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    events: &[logpipe_common::LogEvent],
) {
    produce_all(
        producer,
        topic,
        events
            .iter()
            .map(|e| (e.event_id.clone(), e.to_json(), "application/json")),
    )
    .await;
}

/// Wait until the scalar `sql` returns (a count, a sum) equals `want`.
pub async fn wait_scalar(pool: &sqlx::PgPool, sql: &str, want: i64, timeout: Duration) {
    wait_for(&format!("`{sql}` = {want}"), timeout, || async {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
        if n == want {
            Ok(())
        } else {
            Err(n.to_string())
        }
    })
    .await;
}

/// `n` events of a generator profile over simulated time: event `i` happens at
/// `start + i * span / n`, so minutes of a profile's cycle are produced in a moment.
pub fn profile_events(
    profile: logpipe_generator::events::Profile,
    seed: u64,
    start: chrono::DateTime<chrono::Utc>,
    span: Duration,
    n: usize,
) -> Vec<logpipe_common::LogEvent> {
    let mut f = logpipe_generator::events::EventFactory::new(seed, "gen-test", profile);
    (0..n)
        .map(|i| {
            let elapsed = span.mul_f64(i as f64 / n as f64);
            let now = start + chrono::Duration::from_std(elapsed).expect("small duration");
            f.next_event(now, elapsed)
        })
        .collect()
}

/// A consumer of `topic` from its beginning, in a group of its own.
fn reader(kafka: &KafkaSettings, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = kafka
        .client_config("test-reader")
        .set(
            "group.id",
            format!("{topic}-reader-{:08x}", rand::random::<u32>()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Read `n` records of `topic` from the beginning (fails after `timeout`).
pub async fn consume_n(
    kafka: &KafkaSettings,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = reader(kafka, topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => panic!("consuming {topic}: {e}"),
            Err(_) => panic!(
                "only {} of {n} records in {topic} after {timeout:?}",
                out.len()
            ),
        }
    }
    out
}

/// Every record of `topic` from the beginning: read until none has arrived for `quiet`.
pub async fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    quiet: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = reader(kafka, topic);
    let mut out = Vec::new();
    // The group join takes a moment before the first record can arrive.
    let mut wait = quiet.max(Duration::from_secs(10));
    while let Ok(next) = tokio::time::timeout(wait, consumer.recv()).await {
        out.push(
            next.unwrap_or_else(|e| panic!("consuming {topic}: {e}"))
                .detach(),
        );
        wait = quiet;
    }
    out
}

/// A gateway on port 0 with this test's own topics and limiter keys, and no upstreams listening.
pub fn gateway_config(name: &str) -> logpipe_gateway::config::GatewayConfig {
    let mut c = logpipe_gateway::config::GatewayConfig {
        port: 0,
        generator_urls: vec!["http://127.0.0.1:9".into()],
        collector_url: "http://127.0.0.1:9".into(),
        upstream_timeout_ms: 1_000,
        kafka: kafka(name, 2),
        ..Default::default()
    };
    c.rate_limit.key_prefix = name.to_owned();
    // A burst into a debug build on 2 cores can keep a Redis check waiting past the 50 ms default.
    c.rate_limit.redis_timeout_ms = 2_000;
    c
}

/// `GET url` as JSON (panics on a transport or JSON error: for tests).
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Wait until `GET url` answers `status`.
pub async fn wait_status(url: &str, status: u16, timeout: Duration) {
    let client = reqwest::Client::new();
    wait_for(&format!("{url} to answer {status}"), timeout, || {
        let (client, url) = (client.clone(), url.to_owned());
        async move {
            let s = client
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .status();
            if s.as_u16() == status {
                Ok(())
            } else {
                Err(s.to_string())
            }
        }
    })
    .await;
}

/// The metric names the reference documents for `service` ("generator", "gateway" or "collector"),
/// from the "Metrics exported today" paragraph of `docs/endpoints.md`, label sets dropped.
pub fn documented_metrics(service: &str) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let readme =
        std::fs::read_to_string(root.join("docs/endpoints.md")).expect("docs/endpoints.md");
    let start = readme
        .find("Metrics exported today:")
        .expect("docs/endpoints.md lists the metrics");
    let paragraph = &readme[start
        ..readme[start..]
            .find("\n\n")
            .map_or(readme.len(), |e| start + e)];
    // "... (generator); ... (gateway); ... (collector)."
    let marker = format!("({service})");
    let end = paragraph.find(&marker).expect("the service's metrics");
    let begin = ["(generator)", "(gateway)", "(collector)"]
        .iter()
        .filter_map(|m| paragraph[..end].rfind(m).map(|i| i + m.len()))
        .max()
        .unwrap_or(0);
    let names = regex::Regex::new(r"`([a-z_]+)(\{[^`]*\})?`").expect("regex");
    names
        .captures_iter(&paragraph[begin..end])
        .map(|c| c[1].to_owned())
        .collect()
}

/// Which of `names` a Prometheus text scrape lacks (no sample line of that family).
pub fn missing_metrics(scrape: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            !scrape.lines().any(|l| {
                l.strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
        })
        .cloned()
        .collect()
}

/// The metrics `docs/endpoints.md` documents for `service`, but `except`, that the `scrape` lacks. Fails
/// when it lists fewer than `at_least` for it (a parse that found nothing proves nothing).
pub fn missing_documented(
    scrape: &str,
    service: &str,
    except: &[&str],
    at_least: usize,
) -> Vec<String> {
    let documented = documented_metrics(service);
    assert!(documented.len() >= at_least, "{service}: {documented:?}");
    let expected: Vec<String> = documented
        .into_iter()
        .filter(|n| !except.contains(&n.as_str()))
        .collect();
    missing_metrics(scrape, &expected)
}

/// A Server-Sent Events reader for the event stream's tests.
pub mod conformance;
pub mod fuzz;
mod processes;
pub use processes::{broker_bin, free_port, spawn_listening, start_broker, start_redis, BrokerLog};
pub mod stack;
pub use stack::{wait_rows, TestStack, WAIT};
pub mod poison;

pub mod sse {
    use futures::StreamExt;

    /// One parsed SSE message.
    #[derive(Debug, Default, Clone)]
    pub struct Message {
        pub event: String,
        pub data: String,
        pub id: Option<String>,
    }

    /// Reads messages off a streaming response.
    pub struct Reader {
        body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
        buf: String,
        /// Heartbeats keep a stream alive for ever: a test reads for 90 s at most.
        deadline: std::time::Instant,
    }

    impl Reader {
        pub fn new(resp: reqwest::Response) -> Reader {
            Reader {
                body: resp.bytes_stream().boxed(),
                buf: String::new(),
                deadline: std::time::Instant::now() + std::time::Duration::from_secs(90),
            }
        }

        /// The next message; `None` when the stream ends or its 90 s are up.
        pub async fn next(&mut self) -> Option<Message> {
            loop {
                if let Some(cut) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..cut + 2).collect();
                    let mut m = Message {
                        event: "message".into(),
                        ..Default::default()
                    };
                    let mut any = false;
                    for line in block.lines() {
                        if line.starts_with(':') || line.is_empty() {
                            continue;
                        }
                        any = true;
                        let (field, value) = line.split_once(':').unwrap_or((line, ""));
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "event" => m.event = value.into(),
                            "data" => m.data.push_str(value),
                            "id" => m.id = Some(value.into()),
                            _ => {}
                        }
                    }
                    if any {
                        return Some(m);
                    }
                    continue;
                }
                let chunk = tokio::time::timeout(
                    self.deadline
                        .saturating_duration_since(std::time::Instant::now()),
                    self.body.next(),
                )
                .await
                .ok()??
                .ok()?;
                self.buf.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    }

    /// `GET url` as an event stream (resuming at `last_id`); panics unless it answers 200.
    pub async fn open(url: &str, last_id: Option<&str>) -> Reader {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        Reader::new(resp)
    }
}

/// Send a test's request (panics on a transport error: for tests).
pub async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.expect("request sent")
}

/// Send an ingest request as the API tells a client to: a 503 (Kafka did not acknowledge in
/// time; nothing of the request counts as accepted) is resent unchanged after its `Retry-After`,
/// up to three times, each one printed. The ids stay the same, so a resend stores nothing twice;
/// a broker that stays down still fails the test with the last answer.
pub async fn send_ingest(req: reqwest::RequestBuilder) -> reqwest::Response {
    for attempt in 1..=3 {
        let resp = send(req.try_clone().expect("a body that can be resent")).await;
        if resp.status().as_u16() != 503 {
            return resp;
        }
        let wait = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1);
        eprintln!(
            "ingest answered 503 (attempt {attempt}), resending in {wait} s: {}",
            resp.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    send(req).await
}

/// Send a test's request and read its answer as JSON (panics when it is not JSON).
pub async fn json_body(req: reqwest::RequestBuilder) -> serde_json::Value {
    send(req).await.json().await.expect("a JSON answer")
}

/// Send a test's request: its status and its answer as JSON (panics when it is not JSON).
pub async fn call(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let resp = send(req).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}
