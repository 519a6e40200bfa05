//! Collector throughput against its ceilings, in one run, on a real broker and Postgres.
//!
//!   LOGPIPE_BENCH_BROKERS=127.0.0.1:9092 \
//!   LOGPIPE_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/logpipe_bench \
//!   cargo bench -p logpipe-collector --bench drain [-- N] [-- N warn] [-- N consume] [-- RATE alerts]
//!
//! Any of them takes `batch=M` besides: the collector's `consumer.batch_max_events` (5,000 unless
//! given), to measure what the batch size does to a drain.
//!
//! The topic (6 partitions) is filled with N events of the generator's `steady` profile first; then,
//! each on the same records:
//! - ceiling "consume": a bare rdkafka consumer loop reading all N records (no parsing): the best of
//!   three tuned fetch settings, each measured in the run (`max.partition.fetch.bytes` 10 MB with
//!   `fetch.wait.max.ms` 100 and `fetch.min.bytes` 1 MB, or waits of 20 and 5 ms); the default
//!   settings are measured too, for reference; so is "consume + parse", the best settings with each
//!   record read and validated as the collector reads it (`RawEvent`) on the one thread (the least
//!   the collector does with every event);
//! - ceiling "copy": the same rows in ONE binary COPY into a fresh, migrated `log_events` (same
//!   table, same indexes), one transaction; batches of 5,000 are measured too, for reference;
//! - "collector": the real collector (windows and alerts on, every event stored raw) draining the
//!   topic into a fresh schema, timed from its first record to the last offset committed;
//! - "collector WARN+": the same with `min_level = WARN` (windows and alerts still see everything);
//! - alert latency: FATAL events (each of its own service, so each raises its own alert) sent 100 ms
//!   apart to a running collector, first on an idle topic, then while a producer loads the topic at
//!   half the all-stored rate just measured; the latency is the alert row's `raised_at` minus the
//!   event's timestamp, set when it was sent (p50/p99/max).
//!
//! Each of consume + parse, the bulk COPY and the two collector phases also prints its µs of CPU per
//! event in this process, the broker (`LOGPIPE_BENCH_BROKER_PID`, else a local process named `nisshi`
//! or `tansu`) and PostgreSQL (every `postgres` process). From those, the CPU ceiling of each drain:
//! the cores ÷ what its bare stages cost per event (every event read and parsed; the share it stores
//! copied as the bulk COPY costs per row), and the collector's rate and CPU per event against it. On
//! a 2-core machine the broker and PostgreSQL take their share of the same cores, which the
//! one-thread "consume + parse" rate does not count (BENCHMARKS.md, "Planning ahead").

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use logpipe_collector::config::CollectorConfig;
use logpipe_collector::copy::{CopyEncoder, LOG_EVENT_COLUMNS};
use logpipe_collector::db::{Db, StoredEvent};
use logpipe_common::kafka::{ensure_topics, KafkaSettings};
use logpipe_common::{Level, LogEvent, RawEvent};
use logpipe_generator::events::{EventFactory, Profile};
use logpipe_load_test::cpu::PhaseCpu;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

#[path = "drain/cpu.rs"]
mod cpu;

const PARTITIONS: i32 = 6;

// The collector binary's allocator, so the in-process collector runs as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300_000);
    // `-- alerts RATE`: only the alert-latency phases, with RATE events/s of background load.
    let alerts_only = std::env::args().any(|a| a == "alerts");
    // `-- N warn`: only the fill and the WARN+ collector phase (to profile it alone).
    let warn_only = std::env::args().any(|a| a == "warn");
    // `-- N consume`: only the fill and the consume phases, no PostgreSQL (the broker's ceilings,
    // as `scripts/broker-bench.sh` compares brokers).
    let consume_only = std::env::args().any(|a| a == "consume");
    let brokers =
        std::env::var("LOGPIPE_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let db_url = std::env::var("LOGPIPE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/logpipe_bench".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
        let topic = format!("bench.drain.{tag}");
        let kafka = KafkaSettings {
            brokers,
            raw_topic: topic.clone(),
            dlq_topic: format!("{topic}.dlq"),
            alerts_topic: format!("{topic}.alerts"),
            raw_partitions: PARTITIONS,
            ..KafkaSettings::default()
        };
        ensure_topics(&kafka, &kafka.topics())
            .await
            .expect("topics");
        if alerts_only {
            let idle = alert_latency(&kafka, &db_url, &format!("b_alert_idle_{tag}"), 0.0).await;
            println!("FATAL -> alert row, idle pipeline             {idle}");
            let half = n as f64;
            let loaded =
                alert_latency(&kafka, &db_url, &format!("b_alert_load_{tag}"), half).await;
            println!("FATAL -> alert row, under {half:>6.0} events/s     {loaded}");
            return;
        }
        let start = Utc::now() - chrono::Duration::minutes(10);
        let mut factory = EventFactory::new(1, "bench", Profile::Steady);
        // Spread over 5 minutes of event time, as a live stream at N/300 events/s would be.
        let events: Vec<LogEvent> = (0..n)
            .map(|i| {
                let elapsed = Duration::from_secs(300).mul_f64(i as f64 / n as f64);
                factory.next_event(
                    start + chrono::Duration::from_std(elapsed).unwrap(),
                    elapsed,
                )
            })
            .collect();
        let warn_share = events.iter().filter(|e| e.level >= Level::Warn).count() as f64 / n as f64;
        let filled = std::time::Instant::now();
        fill(&kafka, &events);
        println!(
            "filled {topic}: {n} events, {:.0} bytes each on average, {:.1}% WARN and above, {:.0} events/s",
            events.iter().map(|e| e.to_json().len()).sum::<usize>() as f64 / n as f64,
            warn_share * 100.0,
            n as f64 / filled.elapsed().as_secs_f64()
        );

        if warn_only {
            let (warn, warn_cpu) =
                collector(&kafka, &db_url, &format!("b_warn_{tag}"), Level::Warn, n).await;
            println!("collector (WARN+ stored)          {warn:>9.0} events/s");
            println!("CPU, this process / broker / PostgreSQL: {}", cpu::line(&warn_cpu));
            return;
        }
        let untuned = bare_consume(&kafka, n, &format!("{tag}-default"), &[], false).0;
        println!("reference consume, default fetch  {untuned:>9.0} events/s");
        // The ceiling is the best of these, each measured here: large fetches that wait for
        // data, and short waits (Tansu sleeps about `fetch.wait.max.ms` on every fetch).
        let mut consume = 0.0f64;
        let mut best = tuned("5", "1");
        for (name, wait, min_bytes) in [
            ("wait 100 ms, min 1 MB", "100", "1048576"),
            ("wait 20 ms, min 1 B", "20", "1"),
            ("wait 5 ms, min 1 B", "5", "1"),
        ] {
            let fetch = tuned(wait, min_bytes);
            let rate = bare_consume(&kafka, n, &format!("{tag}-w{wait}"), &fetch, false).0;
            println!("          consume, {name:<21}{rate:>9.0} events/s");
            if rate > consume {
                consume = rate;
                best = fetch;
            }
        }
        println!("ceiling   consume, best of those  {consume:>9.0} events/s");
        if consume_only {
            return;
        }
        // What one thread reads when it also parses and validates each record (the least the
        // collector must do with every event: windows and alerts see them all), best settings.
        let (parsed, parsed_cpu) = bare_consume(&kafka, n, &format!("{tag}-parse"), &best, true);
        println!("reference consume + parse, 1 thread {parsed:>7.0} events/s");
        let (batched, _) = bare_copy(&db_url, &format!("{tag}_b"), &events, 5_000).await;
        println!("reference copy, batches of 5,000  {batched:>9.0} rows/s");
        let (copy, copy_cpu) = bare_copy(&db_url, &format!("{tag}_1"), &events, events.len()).await;
        println!("ceiling   copy, one bulk COPY     {copy:>9.0} rows/s");
        let floor = consume.min(copy);
        let (all, all_cpu) =
            collector(&kafka, &db_url, &format!("b_all_{tag}"), Level::Trace, n).await;
        println!(
            "collector (all stored)            {:>9.0} events/s  = {:.2} x consume, {:.2} x copy, {:.2} x min",
            all,
            all / consume,
            all / copy,
            all / floor
        );
        let (warn, warn_cpu) =
            collector(&kafka, &db_url, &format!("b_warn_{tag}"), Level::Warn, n).await;
        println!(
            "collector (WARN+ stored)          {:>9.0} events/s  = {:.2} x consume, {:.2} x copy, {:.2} x min, {:.2} x consume + parse",
            warn,
            warn / consume,
            warn / copy,
            warn / floor,
            warn / parsed
        );
        print_cpu(&parsed_cpu, &copy_cpu, (&all_cpu, all), (&warn_cpu, warn), warn_share);
        let idle = alert_latency(&kafka, &db_url, &format!("b_alert_idle_{tag}"), 0.0).await;
        println!("FATAL -> alert row, idle pipeline             {idle}");
        let half = all / 2.0;
        let loaded = alert_latency(&kafka, &db_url, &format!("b_alert_load_{tag}"), half).await;
        println!("FATAL -> alert row, under {half:>6.0} events/s     {loaded}");
    });
}

/// Each phase's CPU per event, and each drain against the ceiling its bare stages' CPU sets.
fn print_cpu(
    parsed: &PhaseCpu,
    copy: &PhaseCpu,
    (all, all_rate): (&PhaseCpu, f64),
    (warn, warn_rate): (&PhaseCpu, f64),
    warn_share: f64,
) {
    println!("CPU per event, this process / broker / PostgreSQL:");
    println!("  consume + parse, 1 thread       {}", cpu::line(parsed));
    println!("  one bulk COPY (per row)         {}", cpu::line(copy));
    println!("  collector (all stored)          {}", cpu::line(all));
    println!("  collector (WARN+ stored)        {}", cpu::line(warn));
    let cores = logpipe_load_test::cpu::cores();
    println!(
        "CPU ceiling, all stored:   {}",
        cpu::judged(cpu::bare_us(parsed, copy, 1.0), cores, all_rate, all)
    );
    println!(
        "CPU ceiling, WARN+ stored: {}",
        cpu::judged(
            cpu::bare_us(parsed, copy, warn_share),
            cores,
            warn_rate,
            warn
        )
    );
}

/// The tuned fetch settings of a bare consumer, with `fetch.wait.max.ms` and `fetch.min.bytes` given.
fn tuned(wait: &'static str, min_bytes: &'static str) -> [(&'static str, &'static str); 5] {
    [
        ("fetch.wait.max.ms", wait),
        ("fetch.min.bytes", min_bytes),
        ("max.partition.fetch.bytes", "10485760"),
        ("fetch.max.bytes", "52428800"),
        ("fetch.queue.backoff.ms", "10"),
    ]
}

fn fill(kafka: &KafkaSettings, events: &[LogEvent]) {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config("bench-fill")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for e in events {
        let payload = e.to_json();
        let mut record = BaseRecord::to(&kafka.raw_topic)
            .key(e.service.as_str())
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// Events per second a bare consumer reads, from its first record to its N-th; `tuned` sets the
/// fetch sizes that read fastest here (larger fetches, fewer round trips).
fn bare_consume(
    kafka: &KafkaSettings,
    n: usize,
    tag: &str,
    fetch: &[(&str, &str)],
    parse: bool,
) -> (f64, PhaseCpu) {
    let mut config = kafka.client_config("bench-consume");
    config
        .set("group.id", format!("bench-consume-{tag}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    for (k, v) in fetch {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    consumer.subscribe(&[&kafka.raw_topic]).expect("subscribe");
    let meter = cpu::meter();
    let mut first: Option<(Instant, _)> = None;
    let mut seen = 0usize;
    let mut bytes = 0usize;
    while seen < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(|| {
                let before = meter.read();
                (Instant::now(), before)
            });
            let payload = m.payload().unwrap_or_default();
            bytes += if parse {
                RawEvent::from_json(payload).map_or(0, |e| e.message().len())
            } else {
                payload.len()
            };
            seen += 1;
        }
    }
    std::hint::black_box(bytes);
    let (first, before) = first.expect("records");
    let rate = n as f64 / first.elapsed().as_secs_f64();
    (rate, meter.phase("consume", n as u64, &before))
}

/// Rows per second of a bare COPY of the same rows into a fresh, migrated schema, `chunk` rows per
/// COPY and transaction, and what they cost per row.
async fn bare_copy(db_url: &str, tag: &str, events: &[LogEvent], chunk: usize) -> (f64, PhaseCpu) {
    let mut settings = CollectorConfig::default().database;
    settings.url = db_url.to_owned();
    settings.schema = format!("b_copy_{tag}");
    let db = Db::connect(&settings).await.expect("bench database");
    // Read as the collector holds them, before the clock starts: the ceiling is the COPY.
    let events: Vec<RawEvent> = events
        .iter()
        .map(|e| RawEvent::from_event(e).expect("a generated event is valid"))
        .collect();
    let meter = cpu::meter();
    let before = meter.read();
    let started = Instant::now();
    for (i, rows) in events.chunks(chunk).enumerate() {
        let mut enc = CopyEncoder::with_capacity(rows.len());
        for (j, e) in rows.iter().enumerate() {
            enc.row(&StoredEvent {
                event: e,
                partition: 0,
                offset: (i * chunk + j) as i64,
            });
        }
        let data = enc.finish();
        let mut tx = db.pool().begin().await.expect("begin");
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY log_events ({LOG_EVENT_COLUMNS}) FROM STDIN WITH (FORMAT binary)"
            ))
            .await
            .expect("copy");
        copy.send(data.as_slice()).await.expect("send");
        copy.finish().await.expect("finish");
        tx.commit().await.expect("commit");
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    // Read before the pool closes: a PostgreSQL backend that exits takes its CPU time with it.
    let spent = meter.phase("copy", events.len() as u64, &before);
    drop_schema(&db, &settings.schema).await;
    (rate, spent)
}

/// The collector as production runs it, on port 0, into its own schema and group.
fn collector_config(kafka: &KafkaSettings, db_url: &str, schema: &str) -> CollectorConfig {
    let mut config = CollectorConfig {
        port: 0,
        kafka: kafka.clone(),
        ..Default::default()
    };
    config.database.url = db_url.to_owned();
    config.database.schema = schema.to_owned();
    config.consumer.group_id = format!("{schema}-group");
    // `-- N batch=M`: the collector's `consumer.batch_max_events` (default 5,000).
    if let Some(m) = std::env::args().find_map(|a| a.strip_prefix("batch=")?.parse().ok()) {
        config.consumer.batch_max_events = m;
    }
    config
}

/// Events per second the collector drains: from its first consumed record until the offsets stored
/// in Postgres cover all N, and what that cost per event.
async fn collector(
    kafka: &KafkaSettings,
    db_url: &str,
    schema: &str,
    min: Level,
    n: usize,
) -> (f64, PhaseCpu) {
    let mut config = collector_config(kafka, db_url, schema);
    config.filter.min_level = min;
    let app = logpipe_collector::Application::build(config)
        .await
        .expect("collector");
    let health = app.health();
    let db = app.db();
    let token = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(token.clone()));
    let meter = cpu::meter();
    while health.consumed.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = meter.read();
    let started = Instant::now();
    loop {
        let stored: i64 =
            sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets")
                .fetch_one(db.pool())
                .await
                .expect("offsets");
        if stored as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let spent = meter.phase("collector", n as u64, &before);
    token.cancel();
    let _ = task.await;
    drop_schema(&db, schema).await;
    (rate, spent)
}

async fn drop_schema(db: &Db, schema: &str) {
    let _ = sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(db.pool())
        .await;
}

/// Send 50 FATAL events, 100 ms apart, each of its own service, to a running collector on a fresh
/// topic, with a background load of `load_per_sec` steady events/s; report the spread of
/// `raised_at - timestamp` of their alert rows.
async fn alert_latency(
    kafka: &KafkaSettings,
    db_url: &str,
    schema: &str,
    load_per_sec: f64,
) -> String {
    const FATALS: usize = 50;
    let topic = format!("{}.{schema}", kafka.raw_topic);
    let kafka = KafkaSettings {
        raw_topic: topic.clone(),
        dlq_topic: format!("{topic}.dlq"),
        alerts_topic: format!("{topic}.alerts"),
        ..kafka.clone()
    };
    ensure_topics(&kafka, &kafka.topics())
        .await
        .expect("topics");
    let config = collector_config(&kafka, db_url, schema);
    let app = logpipe_collector::Application::build(config)
        .await
        .expect("collector");
    let db = app.db();
    let token = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(token.clone()));
    // Let the group settle before timing anything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = (load_per_sec > 0.0).then(|| {
        let (kafka, stop) = (kafka.clone(), stop_load.clone());
        std::thread::spawn(move || background_load(&kafka, load_per_sec, &stop))
    });
    if load.is_some() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let producer: rdkafka::producer::FutureProducer = kafka
        .client_config("bench-fatal")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let mut factory = EventFactory::new(2, "bench", Profile::Steady);
    // A first record connects the producer, so no FATAL's time includes that.
    let warm = factory.next_event(Utc::now(), Duration::ZERO).to_json();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key("warm-up")
                .payload(&warm),
            Duration::from_secs(10),
        )
        .await
        .expect("warm-up acknowledged");
    for i in 0..FATALS {
        let mut e = factory.next_event(Utc::now(), Duration::ZERO);
        e.level = Level::Fatal;
        e.service = format!("fatal-{i}");
        e.timestamp = Utc::now();
        let payload = e.to_json();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(e.event_id.as_str())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("fatal event acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies: Vec<f64> = Vec::new();
    for _ in 0..200 {
        latencies = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (raised_at - first_seen))::float8 * 1000
               FROM alerts WHERE kind = 'fatal_event'",
        )
        .fetch_all(db.pool())
        .await
        .expect("alerts");
        if latencies.len() >= FATALS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(l) = load {
        let _ = l.join();
    }
    token.cancel();
    let _ = task.await;
    drop_schema(&db, schema).await;
    if latencies.len() < FATALS {
        return format!("only {} of {FATALS} alerts raised", latencies.len());
    }
    latencies.sort_by(f64::total_cmp);
    let pct =
        |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).min(latencies.len()) - 1];
    format!(
        "p50 {:>5.1} ms  p99 {:>5.1} ms  max {:>5.1} ms  ({} alerts)",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1],
        latencies.len()
    )
}

/// Produce steady events at `per_sec` until told to stop (paced in 10 ms steps).
fn background_load(kafka: &KafkaSettings, per_sec: f64, stop: &std::sync::atomic::AtomicBool) {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config("bench-load")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut factory = EventFactory::new(3, "bench", Profile::Steady);
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
        while sent < due {
            let e = factory.next_event(Utc::now(), started.elapsed());
            let payload = e.to_json();
            let record = BaseRecord::to(&kafka.raw_topic)
                .key(e.event_id.as_str())
                .payload(&payload);
            if producer.send(record).is_err() {
                producer.poll(Duration::from_millis(5));
                break;
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = producer.flush(Duration::from_secs(30));
}
