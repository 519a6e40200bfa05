//! The whole-path fuzzer: generated inputs ([`gen`]) sent through the real gateway (and, as any
//! broker client can, straight into the raw topic) to the real collector and a real database,
//! mixed with known-good marker events; then the pipeline's promises are checked:
//!
//! - the gateway answers every request with 2xx or a 4xx carrying `{"error", "detail"}` (or, for
//!   the third of NDJSON bodies sent as an Elasticsearch bulk, its error object): no 5xx, no
//!   dropped connection;
//! - a marker sent after each chunk of requests is stored within `marker_timeout` (nothing stalls);
//! - every record Kafka acknowledged (what the gateway produced for its 2xx answers, and every raw
//!   record) is stored exactly once, or sits in the DLQ with a reason; the gateway produced exactly
//!   the events its 2xx answers counted; and no record is `refused_by_database` (validation is
//!   meant to refuse whatever PostgreSQL would, so such a record is a finding);
//! - lag returns to 0 without a restart, `/ready` is 200;
//! - `/api/v1/stats`, `/alerts`, `/events` and `/timeline` answer 200 over the run's range, and
//!   per-service stats of the generated services never 5xx;
//! - the resident memory of the process holding the collector stays under a bound.
//!
//! `storage` holds the storage check. `tests/fuzz.rs` runs the short form in the test command;
//! `logpipe-fuzz` (`./fuzz.sh`) the long form. Both print the seed; `LOGPIPE_FUZZ_SEED` /
//! `--seed` replays it.

pub mod gen;
pub mod send;
mod storage;
pub mod values;

use std::collections::{BTreeMap, HashSet};

use send::{accepted_count, as_bulk, bulk_created, check_answer, send};
use std::time::{Duration, Instant};

use chrono::Utc;
use logpipe_common::kafka::KafkaSettings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

/// Where the stack under test is.
pub struct Target {
    /// The gateway's base URL (`http://127.0.0.1:port`).
    pub gateway: String,
    /// The collector's base URL (`/ready`).
    pub collector: String,
    /// The collector's schema, with `search_path` set.
    pub pool: PgPool,
    pub kafka: KafkaSettings,
    /// The process holding the collector (`/proc/<pid>/status`); `None`: this process.
    pub collector_pid: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Generated events, in all (requests carry 1 to `max_events_per_request`).
    pub events: usize,
    pub max_events_per_request: usize,
    /// Share of generated events written straight into the raw topic.
    pub raw_share: f64,
    /// A marker every this many requests.
    pub marker_every: usize,
    pub marker_timeout: Duration,
    pub drain_timeout: Duration,
    pub rss_limit_kib: u64,
    pub concurrency: usize,
}

impl Options {
    pub fn new(seed: u64, events: usize) -> Options {
        Options {
            seed,
            events,
            max_events_per_request: 40,
            raw_share: 0.1,
            marker_every: 25,
            marker_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(180),
            rss_limit_kib: 2 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

/// The seed to use: `LOGPIPE_FUZZ_SEED` when set (a replay), else a fresh one.
pub fn seed_from_env() -> u64 {
    std::env::var("LOGPIPE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// What a run saw; `failures` empty means every promise held.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub requests: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub generated: usize,
    pub accepted: usize,
    pub raw_records: usize,
    /// Raw records the broker refused for their record timestamp (never in the log).
    pub raw_refused: usize,
    pub markers: usize,
    pub records: usize,
    pub stored_at_own_offset: usize,
    pub stored_as_resend: usize,
    pub dead_lettered: usize,
    pub dlq_kinds: BTreeMap<String, usize>,
    pub marker_worst: Duration,
    pub rss_kib: u64,
    pub failures: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} generated events in {} requests (statuses {:?}) and {} raw records; {} \
             accepted by the gateway; {} markers (slowest stored in {:.1} s); {} records in the raw \
             topic ({} raw refused by the broker for their timestamp): {} stored at their own \
             offset, {} resends stored once, {} in the DLQ {:?}; RSS {} MiB; {} failures",
            self.seed,
            self.generated,
            self.requests,
            self.statuses,
            self.raw_records,
            self.accepted,
            self.markers,
            self.marker_worst.as_secs_f64(),
            self.records,
            self.raw_refused,
            self.stored_at_own_offset,
            self.stored_as_resend,
            self.dead_lettered,
            self.dlq_kinds,
            self.rss_kib / 1024,
            self.failures.len()
        )
    }
}

fn fail(report: &mut Report, what: String) {
    if report.failures.len() < 50 {
        report.failures.push(what);
    }
}

/// Send a chunk of requests, `concurrency` at a time, and check each answer (counted in
/// `report.requests`).
async fn send_chunk(
    http: &reqwest::Client,
    target: &Target,
    chunk: &[gen::IngestRequest],
    concurrency: usize,
    report: &mut Report,
    services: &mut HashSet<String>,
) {
    for group in chunk.chunks(concurrency.max(1)) {
        let sends = group.iter().map(|req| send(http, &target.gateway, req));
        for (req, outcome) in group.iter().zip(futures::future::join_all(sends).await) {
            report.requests += 1;
            match outcome {
                Ok((status, body)) => {
                    *report.statuses.entry(status).or_default() += 1;
                    if let Some(wrong) = check_answer(req, status, &body) {
                        fail(report, wrong);
                    }
                    if (200..300).contains(&status) {
                        report.accepted += if as_bulk(req) {
                            bulk_created(&body)
                        } else {
                            accepted_count(&body)
                        };
                    }
                }
                Err(e) => {
                    let n = report.requests;
                    fail(report, format!("request {n} ({}): {e}", req.content_type));
                }
            }
            collect_services(req, services);
        }
    }
}

/// Every promise checked once the run is over: storage, the query API, the collector's memory.
async fn check_after_run(
    http: &reqwest::Client,
    target: &Target,
    opts: &Options,
    started: chrono::DateTime<Utc>,
    services: &HashSet<String>,
    report: &mut Report,
) {
    storage::check_storage(target, opts, report).await;
    check_queries(http, target, started, services, report).await;
    report.rss_kib = rss_kib(target.collector_pid);
    if report.rss_kib > opts.rss_limit_kib {
        let rss = report.rss_kib;
        fail(
            report,
            format!("RSS {rss} KiB over the bound of {} KiB", opts.rss_limit_kib),
        );
    }
}

/// Run the fuzzer against `target` and check every promise.
pub async fn run(target: &Target, opts: &Options) -> Report {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut report = Report {
        seed: opts.seed,
        ..Report::default()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let producer: FutureProducer = target
        .kafka
        .client_config("logpipe-fuzz")
        .set("enable.idempotence", "true")
        .create()
        .expect("raw producer");
    let started = Utc::now() - chrono::Duration::minutes(1);
    let mut counter = 0u64;
    let seed = opts.seed;
    let mut next_id = move || {
        counter += 1;
        format!("fz-{seed:x}-{counter}")
    };
    let mut markers: Vec<String> = Vec::new();
    let mut services: HashSet<String> = HashSet::new();
    // A client trickling one event at a time from one template: each copy reaches the collector
    // in a batch of its own, so the same window rows are added to batch after batch.
    let mut trickle: Option<(String, u32)> = None;
    while report.generated < opts.events {
        // A chunk of requests, sent `concurrency` at a time, then a marker that must be stored.
        let mut chunk = Vec::new();
        for _ in 0..opts.marker_every {
            if report.generated >= opts.events {
                break;
            }
            if rng.random_bool(opts.raw_share) {
                for _ in 0..rng.random_range(1..=opts.max_events_per_request / 2 + 1) {
                    let id = next_id();
                    let rec = gen::raw_record(&mut rng, Utc::now(), &id);
                    report.generated += 1;
                    report.raw_records += 1;
                    if !send_raw(&producer, &target.kafka.raw_topic, &rec).await {
                        report.raw_refused += 1;
                    }
                }
                continue;
            }
            if rng.random_bool(0.15) {
                let (template, left) = trickle.get_or_insert_with(|| {
                    (gen::event_json(&mut rng, Utc::now(), gen::TEMPLATE_ID), 4)
                });
                let body = template.replace(gen::TEMPLATE_ID, &next_id()).into_bytes();
                *left -= 1;
                if *left == 0 {
                    trickle = None;
                }
                report.generated += 1;
                chunk.push(gen::IngestRequest {
                    content_type: "application/json",
                    service_query: None,
                    body,
                    events: 1,
                });
                continue;
            }
            let req = gen::ingest_request(
                &mut rng,
                Utc::now(),
                &mut next_id,
                opts.max_events_per_request,
            );
            report.generated += req.events.max(1);
            // Sometimes a client resends the same request (a retry): stored once.
            if rng.random_bool(0.03) {
                chunk.push(req.clone());
            }
            chunk.push(req);
        }
        send_chunk(
            &http,
            target,
            &chunk,
            opts.concurrency,
            &mut report,
            &mut services,
        )
        .await;
        let marker = next_id();
        let took = send_marker(&http, target, &marker, opts.marker_timeout).await;
        report.markers += 1;
        match took {
            Ok(t) => report.marker_worst = report.marker_worst.max(t),
            Err(e) => {
                fail(&mut report, format!("marker {marker}: {e}"));
                break;
            }
        }
        markers.push(marker);
    }
    check_after_run(&http, target, opts, started, &services, &mut report).await;
    report
}

/// Service names the requests carried, for the per-service queries.
fn collect_services(req: &gen::IngestRequest, out: &mut HashSet<String>) {
    if out.len() >= 20 || req.content_type == "text/plain" {
        return;
    }
    let text = String::from_utf8_lossy(&req.body);
    if let Some(at) = text.find("\"service\":\"") {
        let rest = &text[at + 11..];
        if let Some(end) = rest.find('"') {
            out.insert(rest[..end].to_owned());
        }
    }
}

/// Writes one raw record; false when the broker refused it for its record timestamp. Apache Kafka
/// does that for a time further ahead than `log.message.timestamp.after.max.ms` (one hour by
/// default since 4.0) or behind than `log.message.timestamp.before.max.ms`, and so does nisshi;
/// Tansu 0.6 takes any. A refused record is not in the log, so no collector owes it a row.
async fn send_raw(producer: &FutureProducer, topic: &str, rec: &gen::RawRecord) -> bool {
    let headers = logpipe_common::kafka::event_headers(rec.content_type, None).insert(
        rdkafka::message::Header {
            key: "logpipe-fuzz",
            value: Some("raw"),
        },
    );
    let mut record = FutureRecord::to(topic)
        .payload(rec.payload.as_slice())
        .headers(headers);
    if let Some(k) = &rec.key {
        record = record.key(k.as_slice());
    }
    if let Some(ts) = rec.timestamp_ms {
        record = record.timestamp(ts);
    }
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => true,
        Err((
            rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::InvalidTimestamp,
            ),
            _,
        )) if rec.timestamp_ms.is_some() => false,
        Err((e, _)) => panic!("the broker refused a raw record: {e}"),
    }
}

/// A known-good event through the gateway; how long until its row is stored.
async fn send_marker(
    http: &reqwest::Client,
    target: &Target,
    id: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let body = serde_json::json!({
        "event_id": id, "timestamp": Utc::now().to_rfc3339(), "level": "INFO",
        "service": "fuzz-marker", "message": "marker", "attributes": {"latency_ms": 5},
    });
    let sent = Instant::now();
    let resp = http
        .post(format!("{}/api/v1/logs", target.gateway))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().as_u16() != 202 {
        return Err(format!("marker answered {}", resp.status()));
    }
    while sent.elapsed() < timeout {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events WHERE event_id = $1")
            .bind(id)
            .fetch_one(&target.pool)
            .await
            .map_err(|e| e.to_string())?;
        if n == 1 {
            return Ok(sent.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "not stored within {timeout:?}: the pipeline stalled"
    ))
}

/// The query API over the run's range answers 200; per-service stats never 5xx.
async fn check_queries(
    http: &reqwest::Client,
    target: &Target,
    started: chrono::DateTime<Utc>,
    services: &HashSet<String>,
    report: &mut Report,
) {
    let from = gen::url_encode(&started.to_rfc3339());
    let to = gen::url_encode(&(Utc::now() + chrono::Duration::minutes(1)).to_rfc3339());
    let range = format!("from={from}&to={to}");
    let mut urls: Vec<(String, bool)> = [
        format!("/api/v1/stats?{range}"),
        format!("/api/v1/alerts?{range}&limit=1000"),
        format!("/api/v1/events?{range}&limit=1000"),
        format!("/api/v1/events?{range}&min_level=WARN&q=login"),
        format!("/api/v1/timeline?{range}"),
    ]
    .into_iter()
    .map(|u| (u, true))
    .collect();
    for s in services {
        urls.push((
            format!("/api/v1/stats/{}?{range}", gen::url_encode(s)),
            false,
        ));
    }
    for (path, must_be_200) in urls {
        let url = format!("{}{path}", target.gateway);
        match http.get(&url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                if (must_be_200 && status != 200) || status >= 500 {
                    let body: String = r
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    fail(report, format!("GET {path}: {status} {body}"));
                }
            }
            Err(e) => fail(report, format!("GET {path}: {e}")),
        }
    }
}

/// Resident memory (KiB) of `pid`, or of this process.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A stack for the fuzzer in this process: a collector and a gateway exactly as `main` starts them,
/// on port 0, with this run's own topics, schema and limiter keys. The caps on services per
/// window and login subjects per brute-force window are set low (50) so a run takes their
/// overflow paths too.
pub struct FuzzStack {
    pub target: Target,
    pub collector: crate::Running,
    pub gateway: crate::Running,
}

pub async fn start_stack(name: &str) -> FuzzStack {
    let mut config = crate::collector_config(name, 3);
    config.windows.max_services_per_window = 50;
    config.alerts.max_login_subjects_per_window = 50;
    let kafka = config.kafka.clone();
    let (collector, _) = crate::start_collector(config).await;
    let mut gw = crate::gateway_config(name);
    gw.kafka = kafka.clone();
    gw.collector_url = collector.url("");
    let gateway = crate::start_gateway(gw).await;
    let pool = crate::schema_pool(name).await;
    FuzzStack {
        target: Target {
            gateway: gateway.url(""),
            collector: collector.url(""),
            pool,
            kafka,
            collector_pid: None,
        },
        collector,
        gateway,
    }
}
