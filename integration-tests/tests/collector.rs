//! The collector against the real broker and Postgres: windows that add up to the raw rows, raw
//! lines, filters and their reload, alerts once per episode for the generator's profiles, the query
//! API, and a Postgres outage that loses nothing.
//!
//! Profile runs use simulated time: the generator's own event factory makes the events of minutes of
//! its cycle with event timestamps spread over those minutes, produced at once. Windows, lateness and
//! alerts all run on event time, so this is the same stream a live run would give, only faster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use logpipe_generator::events::Profile;
use logpipe_integration_tests as it;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use serde_json::Value;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(90);

/// A start time aligned to the minute, an hour ago: profile cycles line up with the windows.
fn aligned_start() -> DateTime<Utc> {
    let now = Utc::now().timestamp() - 3600;
    DateTime::from_timestamp(now - now.rem_euclid(60), 0).unwrap()
}

/// Every item of a cursor-paginated listing (`items` key, `next_cursor`), page after page.
async fn all_pages(
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, String)],
    items: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = it::json_body(client.get(url).query(&q)).await;
        out.extend(page[items].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn wait_rows(pool: &PgPool, sql: &str, want: i64) {
    it::wait_scalar(pool, sql, want, WAIT).await;
}

/// Wait until the collector stored offsets past all `records` produced to its topic.
async fn wait_drained(pool: &PgPool, records: usize) {
    wait_rows(
        pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
        records as i64,
    )
    .await;
}

async fn alert_counts(pool: &PgPool) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT kind, subject, count(*)::int8 FROM alerts GROUP BY kind, subject ORDER BY kind, subject",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_counts_equal_counts_recomputed_from_the_raw_events_after_a_seeded_run() {
    let s = it::TestStack::collector("windows", 3).await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    let events = it::profile_events(
        Profile::MixedFormats,
        42,
        aligned_start(),
        Duration::from_secs(150),
        6000,
    );
    it::produce_events(producer, &kafka.raw_topic, &events).await;
    wait_rows(&pool, "SELECT count(*) FROM log_events", 6000).await;
    wait_drained(&pool, events.len()).await;

    for width in [10, 60] {
        let mismatches: i64 = sqlx::query_scalar(
            "WITH raw AS (
                 SELECT date_bin(make_interval(secs => $1), ts, 'epoch') AS ws, service, level,
                        count(*)::int8 AS n
                   FROM log_events GROUP BY 1, 2, 3),
             win AS (
                 SELECT window_start AS ws, service, level, event_count AS n
                   FROM window_stats WHERE width_secs = $1 AND slide_secs = $1)
             SELECT count(*) FROM raw FULL JOIN win USING (ws, service, level)
              WHERE raw.n IS DISTINCT FROM win.n",
        )
        .bind(width as f64)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            mismatches, 0,
            "{width}-second windows differ from the raw rows"
        );
    }
    // Hopping 60/30: every event is in exactly two windows, and each window counts the raw
    // rows in its minute. Those starting on a minute are the tumbling minute's rows (written
    // once: `Spec::held_by`), the others rows of their own.
    let hopping: i64 = sqlx::query_scalar(
        "SELECT sum(event_count)::int8 FROM window_stats
          WHERE width_secs = 60 AND slide_secs IN (30, 60)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(hopping, 12_000);
    let (hopping_mismatches, twice): (i64, i64) = sqlx::query_as(
        "WITH hop AS (
             SELECT window_start AS ws, service, level, event_count AS n FROM window_stats
              WHERE width_secs = 60 AND slide_secs = 30),
         minute AS (
             SELECT window_start AS ws, service, level, event_count AS n FROM window_stats
              WHERE width_secs = 60 AND slide_secs = 60),
         win AS (SELECT * FROM hop UNION ALL SELECT * FROM minute),
         raw AS (
             SELECT s.ws, e.service, e.level, count(*)::int8 AS n
               FROM log_events e,
                    LATERAL (VALUES (date_bin('30 seconds', e.ts, 'epoch')),
                                    (date_bin('30 seconds', e.ts, 'epoch') - interval '30 seconds'))
                            AS s(ws)
              GROUP BY 1, 2, 3)
         SELECT (SELECT count(*) FROM raw FULL JOIN win USING (ws, service, level)
                  WHERE raw.n IS DISTINCT FROM win.n),
                (SELECT count(*) FROM hop JOIN minute USING (ws, service, level))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (hopping_mismatches, twice),
        (0, 0),
        "hopping windows differ from the raw rows, or are written beside the minute's"
    );
    // Latency statistics come from the events' latency_ms attribute.
    let (lc, max): (i64, f64) = sqlx::query_as(
        "SELECT sum(latency_count)::int8, max(latency_max_ms) FROM window_stats
          WHERE width_secs = 60 AND slide_secs = 60",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let want_max = events
        .iter()
        .map(|e| e.attributes["latency_ms"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(lc, 6000);
    assert_eq!(max, want_max);

    // The stats endpoint sums the same rows.
    let client = reqwest::Client::new();
    let from = (aligned_start() - chrono::Duration::minutes(1)).to_rfc3339();
    let stats: Value = it::json_body(
        client
            .get(s.collector.url("/api/v1/stats"))
            .query(&[("from", from.as_str())]),
    )
    .await;
    assert_eq!(stats["total"], 6000, "{stats}");
    let per_level: i64 = stats["by_level"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(per_level, 6000);
    let payments: Value = it::json_body(
        client
            .get(s.collector.url("/api/v1/stats/payments"))
            .query(&[("from", from.as_str())]),
    )
    .await;
    let p50 = payments["latency_ms"]["p50"].as_f64().unwrap();
    let p95 = payments["latency_ms"]["p95"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p95, "{payments}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apache_and_syslog_records_are_parsed_and_unparseable_lines_go_to_the_dlq() {
    let s = it::TestStack::collector("lines", 1).await;
    let (pool, kafka, producer, name) = (s.pool.clone(), &s.kafka, &s.producer, &s.name);
    let lines = [
        r#"10.1.2.3 - alice [23/Nov/2026:08:00:00 +0000] "GET /cart HTTP/1.1" 503 12 "-" "curl/8""#,
        "<131>1 2026-11-23T08:00:01.000Z web-1 billing 42 - - invoice failed",
        "<14>Nov 23 08:00:02 web-2 cron[7]: job done",
        "this is not a log line",
    ];
    it::produce_all(
        producer,
        &kafka.raw_topic,
        lines
            .iter()
            .map(|l| ("web".to_string(), l.as_bytes().to_vec(), "text/plain")),
    )
    .await;
    wait_drained(&pool, lines.len()).await;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT service, level, component FROM log_events ORDER BY ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("web".into(), "ERROR".into(), "access".into()),
            ("billing".into(), "ERROR".into(), "syslog".into()),
            ("cron".into(), "INFO".into(), "syslog".into()),
        ]
    );
    // The unparseable line is in the DLQ, named as such.
    let consumer: rdkafka::consumer::StreamConsumer = kafka
        .client_config("test-dlq")
        .set("group.id", format!("{name}-dlq"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.dlq_topic]).unwrap();
    let msg = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a DLQ record")
        .unwrap();
    use rdkafka::message::{Headers, Message};
    let headers = msg.headers().unwrap();
    let kind = headers
        .iter()
        .find(|h| h.key == "error.kind")
        .and_then(|h| h.value)
        .unwrap();
    assert_eq!(kind, b"unparseable_line");
    assert_eq!(msg.payload().unwrap(), lines[3].as_bytes());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filter_rules_decide_raw_storage_windows_count_everything_and_reload_applies_new_rules() {
    let name = it::unique("filter");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("filter.toml");
    std::fs::write(
        &rules,
        "min_level = \"WARN\"\nexclude_services = [\"search\"]\nkeep_messages = [\"^keep me\"]\n",
    )
    .unwrap();
    let mut config = it::collector_config(&name, 1);
    config.filter_file = Some(rules.clone());
    let kafka = config.kafka.clone();
    let (collector, _) = it::start_collector(config).await;
    let start = aligned_start();
    let event = |i: i64, level: &str, service: &str, message: &str| {
        logpipe_common::LogEvent::from_json(
            serde_json::json!({
                "event_id": format!("{name}-{i}"), "timestamp": start + chrono::Duration::seconds(i),
                "level": level, "service": service, "message": message,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    };
    let first = vec![
        event(0, "INFO", "payments", "ok"),
        event(1, "INFO", "payments", "keep me please"),
        event(2, "WARN", "payments", "slow"),
        event(3, "ERROR", "search", "excluded service"),
        event(4, "ERROR", "payments", "boom"),
    ];
    let producer = it::producer(&kafka);
    it::produce_events(&producer, &kafka.raw_topic, &first).await;
    let pool = it::schema_pool(&name).await;
    wait_drained(&pool, first.len()).await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT message FROM log_events ORDER BY ts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, vec!["keep me please", "slow", "boom"]);
    let windowed: i64 = sqlx::query_scalar(
        "SELECT sum(event_count)::int8 FROM window_stats WHERE width_secs = 10 AND slide_secs = 10",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(windowed, 5, "windows count filtered events too");

    let client = reqwest::Client::new();
    std::fs::write(&rules, "min_level = \"INFO\"\n").unwrap();
    let resp = it::send(client.post(collector.url("/admin/filters/reload"))).await;
    assert_eq!(resp.status(), 200);
    it::produce_events(
        &producer,
        &kafka.raw_topic,
        &[
            event(5, "INFO", "search", "now stored"),
            event(6, "DEBUG", "search", "not yet"),
        ],
    )
    .await;
    wait_drained(&pool, first.len() + 2).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events WHERE service = 'search'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // A broken file is refused with the reason, and the rules in force stay.
    std::fs::write(&rules, "min_level = \"LOUD\"\n").unwrap();
    let (status, body) = it::call(client.post(collector.url("/admin/filters/reload"))).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "invalid_rules");
    let current: Value = it::json_body(client.get(collector.url("/admin/filters"))).await;
    assert_eq!(current["rules"]["min_level"], "INFO");
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Run a profile for `span` of simulated time through a fresh collector; return the alerts per
/// (kind, subject) and the alerts published to the alerts topic. With `one_batch`, the whole run is
/// in Kafka before the collector starts and it reads the backlog as one batch (every episode in it).
async fn alerts_for(
    profile: Profile,
    test: &str,
    span_secs: u64,
    n: usize,
    one_batch: bool,
) -> Vec<(String, String, i64)> {
    let name = it::unique(test);
    let mut config = it::collector_config(&name, 3);
    if one_batch {
        config.consumer.batch_max_events = n;
        config.consumer.batch_max_ms = 10_000;
    }
    let kafka = config.kafka.clone();
    let events = it::profile_events(
        profile,
        7,
        aligned_start(),
        Duration::from_secs(span_secs),
        n,
    );
    let producer = it::producer(&kafka);
    let collector = if one_batch {
        logpipe_common::kafka::ensure_topics(&kafka, &kafka.topics())
            .await
            .unwrap();
        it::produce_events(&producer, &kafka.raw_topic, &events).await;
        it::start_collector(config).await.0
    } else {
        let (collector, _) = it::start_collector(config).await;
        it::produce_events(&producer, &kafka.raw_topic, &events).await;
        collector
    };
    let pool = it::schema_pool(&name).await;
    wait_drained(&pool, events.len()).await;
    let counts = alert_counts(&pool).await;
    let total: i64 = counts.iter().map(|c| c.2).sum();
    // Every alert is published once to the alerts topic (the outbox marks it).
    wait_rows(
        &pool,
        "SELECT count(*) FROM alerts WHERE published_at IS NOT NULL",
        total,
    )
    .await;
    // Every alert is on the alerts topic under its id, as the contract's `Alert`. The outbox
    // publishes at least once, keyed, so a consumer drops a repeat (after a crash between produce
    // and mark, or a produce retried on a slow broker): a repeat is shown, not failed.
    let records = it::read_topic(&kafka, &kafka.alerts_topic, Duration::from_secs(2)).await;
    let mut on_topic: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        let alert: logpipe_common::query::Alert =
            serde_json::from_slice(r.payload().unwrap()).expect("an alert");
        assert_eq!(r.key(), Some(alert.alert_id.as_bytes()), "keyed by its id");
        *on_topic.entry(alert.alert_id).or_default() += 1;
    }
    let ids: BTreeSet<String> = sqlx::query_scalar("SELECT alert_id FROM alerts")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ids.len() as i64, total);
    assert_eq!(
        on_topic.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "every alert on the topic, and only those"
    );
    let repeats = records.len() - on_topic.len();
    if repeats > 0 {
        println!("alerts topic: {repeats} repeated records of {total} alerts");
    }

    // The alerts endpoint pages through them with a cursor.
    let client = reqwest::Client::new();
    let from = (aligned_start() - chrono::Duration::minutes(1)).to_rfc3339();
    let alerts = all_pages(
        &client,
        &collector.url("/api/v1/alerts"),
        &[("from", from), ("limit", "2".into())],
        "alerts",
    )
    .await;
    let seen = alerts.len() as i64;
    assert_eq!(seen, total);
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_spike_profile_raises_one_alert_per_episode_for_the_spiking_service_only() {
    // Two cycles: episodes at 15-45 s and 75-105 s.
    let counts = alerts_for(Profile::ErrorSpike, "spike", 130, 26_000, false).await;
    assert_eq!(
        counts,
        vec![("error_rate_spike".into(), "payments".into(), 2)],
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_attack_profile_raises_brute_force_and_sql_injection_alerts_once_per_episode() {
    let counts = alerts_for(Profile::SecurityAttack, "attack", 130, 26_000, false).await;
    assert_eq!(counts, security_attack_alerts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_attack_alerts_are_the_same_when_one_batch_holds_every_episode() {
    let counts = alerts_for(Profile::SecurityAttack, "attack1", 130, 26_000, true).await;
    assert_eq!(counts, security_attack_alerts());
}

/// Two cycles of the attack: two episodes for each attacker, attacked user and the SQL injections.
fn security_attack_alerts() -> Vec<(String, String, i64)> {
    let mut want: Vec<(String, String, i64)> = [
        "ip:203.0.113.23",
        "ip:203.0.113.7",
        "ip:203.0.113.99",
        "user:admin",
        "user:root",
        "user:u-1",
    ]
    .iter()
    .map(|s| ("brute_force".to_string(), s.to_string(), 2))
    .collect();
    want.push(("sql_injection".into(), "search".into(), 2));
    want.sort();
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_profile_raises_no_alert() {
    let counts = alerts_for(Profile::Steady, "steady", 130, 26_000, false).await;
    assert!(counts.is_empty(), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_query_filters_by_service_level_and_text_and_pages_with_a_cursor() {
    let s = it::TestStack::collector("events", 2).await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    let events = it::profile_events(
        Profile::Steady,
        3,
        aligned_start(),
        Duration::from_secs(60),
        2000,
    );
    it::produce_events(producer, &kafka.raw_topic, &events).await;
    wait_drained(&pool, events.len()).await;
    let want: Vec<&str> = {
        let mut v: Vec<_> = events
            .iter()
            .filter(|e| {
                e.service == "payments"
                    && e.level >= logpipe_common::Level::Warn
                    && e.message.contains("declined")
            })
            .collect();
        v.sort_by(|a, b| (b.timestamp, &b.event_id).cmp(&(a.timestamp, &a.event_id)));
        v.into_iter().map(|e| e.event_id.as_str()).collect()
    };
    assert!(want.len() > 3, "the sample needs a few matches");
    let client = reqwest::Client::new();
    let from = (aligned_start() - chrono::Duration::minutes(1)).to_rfc3339();
    let got: Vec<String> = all_pages(
        &client,
        &s.collector.url("/api/v1/events"),
        &[
            ("from", from),
            ("service", "payments".into()),
            ("min_level", "warn".into()),
            ("q", "DECLINED".into()),
            ("limit", "3".into()),
        ],
        "events",
    )
    .await
    .iter()
    .map(|e| e["event_id"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(got, want);

    // Every page size reads every event once, in order, whether a page takes one query or
    // continues in chunks (the first reads 64 rows).
    let all: Vec<&str> = {
        let mut v: Vec<_> = events.iter().collect();
        v.sort_by(|a, b| (b.timestamp, &b.event_id).cmp(&(a.timestamp, &a.event_id)));
        v.into_iter().map(|e| e.event_id.as_str()).collect()
    };
    assert!(all.len() > 200, "{} events", all.len());
    for limit in [1, 63, 64, 65, 200, 1000] {
        let got: Vec<String> = all_pages(
            &client,
            &s.collector.url("/api/v1/events"),
            &[
                (
                    "from",
                    (aligned_start() - chrono::Duration::minutes(1)).to_rfc3339(),
                ),
                ("limit", limit.to_string()),
            ],
            "events",
        )
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
        assert_eq!(got, all, "limit {limit}");
    }

    // Bad parameters get a 400 naming the parameter.
    for (param, value) in [
        ("level", "LOUD"),
        ("from", "yesterday"),
        ("limit", "0"),
        ("cursor", "nope"),
        ("servcie", "typo"),
    ] {
        let (status, body) = it::call(
            client
                .get(s.collector.url("/api/v1/events"))
                .query(&[(param, value)]),
        )
        .await;
        assert_eq!(status, 400, "{param}={value}");
        assert_eq!(body["error"], "invalid_parameter");
        assert!(body["detail"].as_str().unwrap().contains(param), "{body}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_pauses_the_collector_and_loses_nothing() {
    // Its own database, so closing it to connections disturbs no other test.
    let name = it::unique("outage");
    let admin = sqlx::PgPool::connect(&it::database_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = {
        let base = it::database_url();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        format!("{prefix}/{name}")
    };
    let mut config = it::collector_config(&name, 2);
    config.database.url = db_url.clone();
    config.database.schema = "public".into();
    config.consumer.retry_max_ms = 500;
    let kafka = config.kafka.clone();
    let (collector, health) = it::start_collector(config).await;
    let producer = it::producer(&kafka);
    let start = aligned_start();
    let batch = |from: usize| {
        it::profile_events(
            Profile::Steady,
            from as u64,
            start,
            Duration::from_secs(60),
            2000,
        )
    };
    it::produce_events(&producer, &kafka.raw_topic, &batch(1)).await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    wait_rows(&pool, "SELECT count(*) FROM log_events", 2000).await;
    pool.close().await;

    // Outage: no new connections, existing ones terminated.
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    it::produce_events(&producer, &kafka.raw_topic, &batch(2)).await;
    it::wait_status(&collector.url("/ready"), 503, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!health.db_ok.load(std::sync::atomic::Ordering::Relaxed));

    sqlx::query(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    wait_rows(&pool, "SELECT count(*) FROM log_events", 4000).await;
    wait_drained(&pool, 4000).await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM log_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(distinct, 4000);
    // Nothing good went to the DLQ because the database was down.
    let consumer: BaseConsumer = kafka.client_config("test-dlq-marks").create().unwrap();
    let (_, dlq) = consumer
        .fetch_watermarks(&kafka.dlq_topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(dlq, 0);
    it::wait_status(&collector.url("/ready"), 200, WAIT).await;
    collector.stop().await;
    pool.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await;
}

/// One event of `service` at `ts`, produced to `partition` itself (not by key).
async fn produce_to(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    events: &[logpipe_common::LogEvent],
) {
    for e in events {
        let payload = e.to_json();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .partition(partition)
                    .key(&e.event_id)
                    .payload(&payload)
                    .headers(logpipe_common::kafka::event_headers(
                        "application/json",
                        None,
                    )),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("record acknowledged");
    }
}

fn events_at(
    service: &str,
    level: logpipe_common::Level,
    ts: DateTime<Utc>,
    n: usize,
) -> Vec<logpipe_common::LogEvent> {
    (0..n)
        .map(|i| logpipe_common::LogEvent {
            event_id: format!("{service}-{level:?}-{}-{i}", ts.timestamp()),
            timestamp: ts + chrono::Duration::milliseconds(i as i64),
            level,
            service: service.into(),
            component: "api".into(),
            host: "h".into(),
            message: "m".into(),
            trace_id: None,
            span_id: None,
            attributes: serde_json::Map::new(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_rate_window_is_judged_only_once_every_partition_has_passed_it() {
    use logpipe_common::Level;
    let s = it::TestStack::collector("watermark", 2).await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    // The window [w, w+10 s): 100 INFO events of `api` on partition 0, and a later event that
    // takes partition 0's event time past the window's end plus the 10 s lateness.
    let w = aligned_start();
    let mut p0 = events_at("api", Level::Info, w, 100);
    p0.extend(events_at(
        "api",
        Level::Info,
        w + chrono::Duration::seconds(25),
        1,
    ));
    produce_to(producer, &kafka.raw_topic, 0, &p0).await;
    wait_drained(&pool, 101).await;
    // Judged now on partition 0 alone, the window would be normal (0 errors) and never judged again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(alert_counts(&pool).await, vec![]);
    // Partition 1 brings the same window's errors: 100 of 200 events, a spike.
    let mut p1 = events_at("api", Level::Error, w + chrono::Duration::seconds(1), 100);
    p1.extend(events_at(
        "api",
        Level::Info,
        w + chrono::Duration::seconds(26),
        1,
    ));
    produce_to(producer, &kafka.raw_topic, 1, &p1).await;
    wait_drained(&pool, 202).await;
    wait_rows(
        &pool,
        "SELECT count(*) FROM alerts WHERE kind = 'error_rate_spike' AND subject = 'api'",
        1,
    )
    .await;
    let (errors, events): (i64, i64) = sqlx::query_as(
        "SELECT (details->>'errors')::int8, (details->>'events')::int8 FROM alerts
          WHERE kind = 'error_rate_spike'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (errors, events),
        (100, 200),
        "judged on both partitions' counts"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn future_dated_events_do_not_make_later_on_time_events_late() {
    use logpipe_common::Level;
    let s = it::TestStack::collector("future", 2).await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    // Six events dated 290 s ahead (a raw producer can send them; the gateway refuses more than
    // its 10 s allowance), on both partitions: stored, but past the collector's clock plus the
    // lateness they open no window rows and move no event time...
    let now = Utc::now();
    let ahead = events_at(
        "payments",
        Level::Error,
        now + chrono::Duration::seconds(290),
        6,
    );
    for (i, e) in ahead.iter().enumerate() {
        produce_to(
            producer,
            &kafka.raw_topic,
            (i % 2) as i32,
            std::slice::from_ref(e),
        )
        .await;
    }
    wait_drained(&pool, 6).await;
    // ...then on-time traffic: none of it may count as late.
    let on_time = events_at(
        "api",
        Level::Info,
        Utc::now() - chrono::Duration::seconds(1),
        200,
    );
    for (i, chunk) in on_time.chunks(100).enumerate() {
        produce_to(producer, &kafka.raw_topic, i as i32, chunk).await;
    }
    wait_drained(&pool, 206).await;
    let windowed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(event_count), 0)::int8 FROM window_stats
          WHERE width_secs = 10 AND slide_secs = 10",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(windowed, 200, "every on-time event windowed, none late");
    let future: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM log_events WHERE service = 'payments' AND ts > now()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(future, 6, "the future-dated events are stored");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_over_its_budget_is_504_and_queries_cannot_starve_the_writer() {
    use logpipe_common::Level;
    let s = it::TestStack::collector_with("qbudget", 2, |config| {
        // Each query may run 20 ms, on one connection of its own.
        config.database.query_statement_timeout_ms = 20;
        config.database.query_max_connections = 1;
        // The scans below must be slow: no text index to answer them.
        config.storage.text_index = false;
    })
    .await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    // 300,000 rows put straight into the table: an unindexed `q` over all of them takes far
    // longer than 20 ms.
    sqlx::query(
        "INSERT INTO log_events (event_id, ts, level, service, message, kafka_partition, kafka_offset)
         SELECT 'bulk-' || i, now() - interval '1 second' * i, 'INFO', 'bulk',
                'message number ' || i, 0, -1
           FROM generate_series(1, 300000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let client = reqwest::Client::new();
    // Four days back (the rows cover three and a half), within the range cap.
    let from =
        (Utc::now() - chrono::Duration::days(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let scan = s
        .collector
        .url(&format!("/api/v1/events?from={from}&q=nomatch"));
    let r = client.get(&scan).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "query_timeout");

    // Eight clients scanning without pause while 2,000 events arrive: every one is stored.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut scanners = Vec::new();
    for _ in 0..8 {
        let (client, scan, stop) = (client.clone(), scan.clone(), stop.clone());
        scanners.push(tokio::spawn(async move {
            let mut statuses = std::collections::BTreeSet::new();
            while !stop.is_cancelled() {
                if let Ok(r) = client.get(&scan).send().await {
                    statuses.insert(r.status().as_u16());
                }
            }
            statuses
        }));
    }
    let events = events_at("api", Level::Info, Utc::now(), 2_000);
    for (i, chunk) in events.chunks(1_000).enumerate() {
        produce_to(producer, &kafka.raw_topic, i as i32, chunk).await;
    }
    wait_drained(&pool, 2_000).await;
    stop.cancel();
    let mut seen = std::collections::BTreeSet::new();
    for s in scanners {
        seen.extend(s.await.unwrap());
    }
    // Scans end as timeouts, or wait for the one query connection (503): never a 500.
    assert!(seen.iter().all(|s| [503, 504].contains(s)), "{seen:?}");
    assert_eq!(
        it::count_events(&pool).await,
        300_000 + 2_000,
        "every event stored while the scans ran"
    );
    s.stop().await;
}

/// The consume loop takes a backlog in bursts (records already queued, without its bookkeeping in
/// between): a batch still holds at most `batch_max_events`, each its own transaction, and every
/// event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_read_in_bursts_is_committed_in_batches_of_at_most_batch_max_events() {
    let name = it::unique("burst_batches");
    let mut config = it::collector_config(&name, 3);
    config.consumer.batch_max_events = 7;
    let kafka = config.kafka.clone();
    let events = it::profile_events(
        Profile::Steady,
        11,
        aligned_start(),
        Duration::from_secs(60),
        500,
    );
    logpipe_common::kafka::ensure_topics(&kafka, &kafka.topics())
        .await
        .unwrap();
    it::produce_events(&it::producer(&kafka), &kafka.raw_topic, &events).await;
    let (collector, _) = it::start_collector(config).await;
    let pool = it::schema_pool(&name).await;
    wait_drained(&pool, events.len()).await;
    // `stored_at` is the writer's transaction time: one value per committed batch.
    let (stored, distinct, batches, largest): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), count(DISTINCT stored_at), \
                (SELECT max(n) FROM (SELECT count(*) AS n FROM log_events GROUP BY stored_at) b) \
           FROM log_events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((stored, distinct), (500, 500), "every event once");
    assert!(
        largest <= 7,
        "a batch of {largest} events, over batch_max_events"
    );
    assert!(
        batches >= 72,
        "{batches} batches for 500 events of at most 7"
    );
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}
