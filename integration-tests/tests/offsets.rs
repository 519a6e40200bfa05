//! Stored offsets that do not fit the broker's log. Each test runs its own in-memory Tansu broker
//! on a free port and kills it mid-run: it comes back with empty topics, so the offsets stored in
//! Postgres lie past the new log's end. The collector must say so and follow its policy, never
//! skip the new records silently.
//!
//! Its own test binary: the metrics it reads are process-wide.

use std::time::Duration;

use chrono::Utc;
use logpipe_collector::config::OffsetPolicy;
use logpipe_common::LogEvent;
use logpipe_generator::events::Profile;
use logpipe_integration_tests as it;
use sqlx::PgPool;

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
    let producer = it::producer(kafka);
    it::produce_all(
        &producer,
        &kafka.raw_topic,
        events
            .iter()
            .map(|e| (e.event_id.clone(), e.to_json(), "application/json")),
    )
    .await;
}

async fn scalar(pool: &PgPool, sql: &str) -> Result<i64, String> {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())
}

async fn wait_scalar(pool: &PgPool, sql: &str, want: i64) {
    it::wait_for(&format!("`{sql}` = {want}"), WAIT, || async {
        let n = scalar(pool, sql).await?;
        if n == want {
            Ok(())
        } else {
            Err(n.to_string())
        }
    })
    .await;
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
    collector: it::Running,
    pool: PgPool,
}

/// A private broker and a collector on it; 300 events stored before anything else happens.
async fn stack_with_stored_events(test: &str, policy: OffsetPolicy) -> Stack {
    let name = it::unique(test);
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = it::free_port();
    let broker = Broker(it::start_tansu(port, &dir, "memory://tansu/"));
    let mut config = it::collector_config(&name, 2);
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.consumer.offset_out_of_range = policy;
    let kafka = config.kafka.clone();
    let (collector, _) = it::start_collector(config).await;
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
        self.broker = Broker(it::start_tansu(self.port, &self.dir, "memory://tansu/"));
        logpipe_common::kafka::ensure_topics(&self.kafka, &self.kafka.topics())
            .await
            .expect("topics created again");
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
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM UNNEST($1::text[]) AS a(id)
          WHERE NOT EXISTS (SELECT 1 FROM log_events e WHERE e.event_id = a.id)",
    )
    .bind(after.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>())
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(missing, 0);

    // Recorded in Postgres with the old and new offsets, and counted.
    let resets: Vec<(i32, i64, i64, String)> = sqlx::query_as(
        "SELECT kafka_partition, old_offset, new_offset, reason FROM offset_resets
          ORDER BY kafka_partition, reset_id",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
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
    // them (a new log that grows past them first is the one case offsets cannot show: README);
    // then more, so the new log passes the client's old position, where a position alone would
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
