//! Stored offsets that do not fit the broker's log. Each test runs its own in-memory Tansu broker
//! on a free port and kills it mid-run: it comes back with empty topics, so the offsets stored in
//! Postgres lie past the new log's end. The collector must say so and follow its policy, never
//! skip the new records silently, also when the new log has already grown past those offsets
//! before the collector looks (the record before each stored offset is then not the one stored).
//!
//! Its own test binary: the metrics it reads are process-wide.

use std::time::Duration;

use chrono::Utc;
use logpipe_collector::config::OffsetPolicy;
use logpipe_common::LogEvent;
use logpipe_generator::events::Profile;
use logpipe_integration_tests as it;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use std::collections::BTreeMap;

const WAIT: Duration = Duration::from_secs(90);

fn events(seed: u64, n: usize) -> Vec<LogEvent> {
    it::profile_events(
        Profile::Steady,
        seed,
        Utc::now() - chrono::Duration::seconds(30),
        Duration::from_secs(30),
        n,
    )
}

/// Produce with a fresh producer (an idempotent producer's state does not survive the broker's),
/// keyed by event id so both partitions get records.
async fn produce(kafka: &logpipe_common::kafka::KafkaSettings, events: &[LogEvent]) {
    it::produce_events(&it::producer(kafka), &kafka.raw_topic, events).await;
}

async fn scalar(pool: &PgPool, sql: &str) -> Result<i64, String> {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())
}

async fn wait_scalar(pool: &PgPool, sql: &str, want: i64) {
    it::wait_scalar(pool, sql, want, WAIT).await;
}

/// How many of `events` have no row.
async fn not_stored(pool: &PgPool, events: &[LogEvent]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM UNNEST($1::text[]) AS a(id)
          WHERE NOT EXISTS (SELECT 1 FROM log_events e WHERE e.event_id = a.id)",
    )
    .bind(
        events
            .iter()
            .map(|e| e.event_id.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// `offset_resets` rows: partition, old offset, new offset, reason.
async fn recorded_resets(pool: &PgPool) -> Vec<(i32, i64, i64, String)> {
    sqlx::query_as(
        "SELECT kafka_partition, old_offset, new_offset, reason FROM offset_resets
          ORDER BY kafka_partition, reset_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The private broker, killed when dropped: a test that fails half-way leaves no broker running.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Stack {
    name: String,
    dir: std::path::PathBuf,
    port: u16,
    broker: Broker,
    kafka: logpipe_common::kafka::KafkaSettings,
    config: logpipe_collector::config::CollectorConfig,
    collector: it::Running,
    pool: PgPool,
}

/// A private broker and a collector on it; 300 events stored before anything else happens.
async fn stack_with_stored_events(test: &str, policy: OffsetPolicy) -> Stack {
    let name = it::unique(test);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = it::free_port();
    let broker = Broker(it::start_broker(port, &dir, it::BrokerLog::Memory));
    let mut config = it::collector_config(&name, 2);
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.consumer.offset_out_of_range = policy;
    let kafka = config.kafka.clone();
    let (collector, _) = it::start_collector(config.clone()).await;
    let pool = it::schema_pool(&name).await;
    produce(&kafka, &events(1, 300)).await;
    wait_scalar(&pool, "SELECT count(*) FROM log_events", 300).await;
    wait_scalar(
        &pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
        300,
    )
    .await;
    Stack {
        name,
        dir,
        port,
        broker,
        kafka,
        config,
        collector,
        pool,
    }
}

impl Stack {
    /// SIGKILL the in-memory broker and start it again empty; the topics are created again as
    /// the services do at start.
    async fn restart_broker_empty(&mut self) {
        self.broker.0.kill().unwrap();
        self.broker.0.wait().unwrap();
        self.broker = Broker(it::start_broker(
            self.port,
            &self.dir,
            it::BrokerLog::Memory,
        ));
        logpipe_common::kafka::ensure_topics(&self.kafka, &self.kafka.topics())
            .await
            .expect("topics created again");
    }

    /// Stop the collector (graceful, as SIGTERM does); start another with `it::start_collector`.
    async fn stop_collector(&mut self) {
        self.collector.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), &mut self.collector.task)
            .await
            .expect("collector stopped within 30 s")
            .expect("collector task did not panic");
    }

    async fn stop(self) {
        self.collector.stop().await;
        drop(self.broker);
        it::drop_schema(&self.pool, &self.name).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_that_comes_back_empty_resets_offsets_loudly_and_every_later_event_is_stored() {
    let mut s = stack_with_stored_events("reset", OffsetPolicy::ResetToStart).await;
    let old: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, next_offset FROM consumer_offsets ORDER BY kafka_partition",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert!(
        old.iter().all(|(_, o)| *o > 60),
        "both partitions hold records: {old:?}"
    );

    s.restart_broker_empty().await;
    // Fewer records than before: every new offset lies below the stored ones.
    let after = events(2, 100);
    produce(&s.kafka, &after).await;
    wait_scalar(&s.pool, "SELECT count(*) FROM log_events", 400).await;
    let missing = not_stored(&s.pool, &after).await;
    assert_eq!(missing, 0);

    // Recorded in Postgres with the old and new offsets, and counted.
    let resets = recorded_resets(&s.pool).await;
    let want: Vec<(i32, i64, i64, String)> = old
        .iter()
        .map(|(p, o)| (*p, *o, 0, "past_log_end".to_string()))
        .collect();
    assert_eq!(resets, want);
    let metrics = s.collector.metrics().await;
    for (p, _) in &old {
        // At least 1: another test of this binary may reset the same partition number.
        let series =
            format!("collector_offset_resets_total{{partition=\"{p}\",reason=\"past_log_end\"}} ");
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(count.is_some_and(|n| n >= 1.0), "{series}: {count:?}");
    }
    // The stored offsets now cover exactly the new log.
    wait_scalar(
        &s.pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
        100,
    )
    .await;
    it::wait_status(&s.collector.url("/ready"), 200, Duration::from_secs(10)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_refuse_policy_a_broker_that_comes_back_empty_pauses_the_partitions_and_fails_ready(
) {
    let mut s = stack_with_stored_events("refuse", OffsetPolicy::Refuse).await;
    let before = scalar(
        &s.pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
    )
    .await
    .unwrap();
    s.restart_broker_empty().await;
    produce(&s.kafka, &events(3, 100)).await;
    // Each partition is found on its own check (assignment, a refused fetch, or the 5 s round).
    let ready = s.collector.url("/ready");
    it::wait_for("both partitions refused", WAIT, || async {
        let r = reqwest::get(&ready).await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if status == 503 && body["partitions_refused"] == 2 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    // Nothing moved: no rows stored from the new log, no offset changed, no reset recorded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scalar(&s.pool, "SELECT count(*) FROM log_events").await,
        Ok(300)
    );
    assert_eq!(
        scalar(
            &s.pool,
            "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets"
        )
        .await,
        Ok(before)
    );
    assert_eq!(
        scalar(&s.pool, "SELECT count(*) FROM offset_resets").await,
        Ok(0)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_stream_follows_a_restarted_log_from_its_start_and_says_so() {
    let mut s = stack_with_stored_events("streamreset", OffsetPolicy::ResetToStart).await;
    let url = s.collector.url("/api/v1/events/stream?rate=1000");
    // A client that saw everything stored so far, then went away.
    let mut r = it::sse::open(&url, None).await;
    let hello = r.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    let position = hello.id.unwrap();
    drop(r);

    s.restart_broker_empty().await;
    // A few records, so the collector sees the stored offsets past the new log's end and resets
    // them (past_log_end; a log that grows past them first is the next test's case); then more, so the new log passes the client's old position, where a position alone would
    // skip the new log's first offsets without a word.
    let mut after = events(3, 100);
    produce(&s.kafka, &after).await;
    wait_scalar(&s.pool, "SELECT count(*) FROM offset_resets", 2).await;
    let more = events(4, 400);
    produce(&s.kafka, &more).await;
    after.extend(more);
    wait_scalar(&s.pool, "SELECT count(*) FROM log_events", 800).await;

    let mut r = it::sse::open(&url, Some(&position)).await;
    let (mut got, mut resets) = (std::collections::BTreeSet::new(), 0);
    while got.len() < 500 {
        let m = r.next().await.expect("a message before the timeout");
        match m.event.as_str() {
            "log" => {
                let e: serde_json::Value = serde_json::from_str(&m.data).unwrap();
                got.insert(e["event_id"].as_str().unwrap().to_owned());
            }
            "reset" => resets += 1,
            "dropped" => panic!("nothing over the rate: {}", m.data),
            _ => {}
        }
    }
    let want: std::collections::BTreeSet<String> =
        after.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(got, want, "every event of the new log, none of the old one");
    assert_eq!(resets, 2, "each partition's reset announced");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_replaced_while_the_collector_was_down_and_grown_past_the_stored_offsets_is_reset() {
    let mut s = stack_with_stored_events("replaced", OffsetPolicy::ResetToStart).await;
    let hashed = scalar(
        &s.pool,
        "SELECT count(*) FROM consumer_offsets WHERE last_record_hash IS NOT NULL",
    )
    .await;
    assert_eq!(
        hashed,
        Ok(2),
        "each stored offset keeps the fingerprint of its record"
    );

    // A collector restarted on the same log checks the record before each stored offset, finds
    // the one it stored, and goes on: no reset.
    s.stop_collector().await;
    s.collector = it::start_collector(s.config.clone()).await.0;
    produce(&s.kafka, &events(5, 50)).await;
    wait_scalar(&s.pool, "SELECT count(*) FROM log_events", 350).await;
    wait_scalar(
        &s.pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
        350,
    )
    .await;
    assert_eq!(
        scalar(&s.pool, "SELECT count(*) FROM offset_resets").await,
        Ok(0),
        "the same log is not taken for another"
    );
    let old: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, next_offset FROM consumer_offsets ORDER BY kafka_partition",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();

    // Collector down; the broker comes back empty and its new log grows past every stored
    // offset before the collector starts again. Each offset lies inside the new log, so the
    // log's bounds look fine: only the record before each offset tells the logs apart.
    s.stop_collector().await;
    s.restart_broker_empty().await;
    let after = events(6, 1_000);
    produce(&s.kafka, &after).await;
    // Read the new log to its end (Tansu 0.6's ListOffsets(latest) stops short of the end: the
    // "short ListOffsets" workaround in the collector).
    let consumer: BaseConsumer = s
        .kafka
        .client_config("test-new-log")
        .set("group.id", format!("{}-reader", s.name))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, _) in &old {
        tpl.add_partition_offset(&s.kafka.raw_topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ends.values().map(|e| e + 1).sum::<i64>() < after.len() as i64 {
        assert!(
            std::time::Instant::now() < deadline,
            "new log read: {ends:?}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let e = ends.entry(m.partition()).or_insert(-1);
            *e = (*e).max(m.offset());
        }
    }
    drop(consumer);
    assert!(
        old.iter()
            .all(|(p, o)| ends.get(p).is_some_and(|e| e + 1 > *o)),
        "the new log reaches past every stored offset: {ends:?} vs {old:?}"
    );
    s.collector = it::start_collector(s.config.clone()).await.0;

    wait_scalar(&s.pool, "SELECT count(*) FROM log_events", 1_350).await;
    let missing = not_stored(&s.pool, &after).await;
    assert_eq!(missing, 0, "every event of the new log is stored");
    let resets = recorded_resets(&s.pool).await;
    let want: Vec<(i32, i64, i64, String)> = old
        .iter()
        .map(|(p, o)| (*p, *o, 0, "log_replaced".to_string()))
        .collect();
    assert_eq!(resets, want);
    wait_scalar(
        &s.pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
        1_000,
    )
    .await;
    it::wait_status(&s.collector.url("/ready"), 200, Duration::from_secs(10)).await;
    s.stop().await;
}
