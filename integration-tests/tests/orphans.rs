//! No silent stall across the group: a partition that a member of the collector's group holds
//! but never stores (a stand-in for Tansu's "orphaned assignment", and for an owner that cannot
//! write) must make the collector not ready, and name it, until it is stored again.
//!
//! Its own test binary: the metrics it reads are process-wide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use logpipe_generator::events::Profile;
use logpipe_integration_tests as it;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// A member of the group that takes partitions and never stores anything.
struct Squatter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Squatter {
    /// Joins `group` alone and returns once it owns every partition of `topic`.
    fn join(kafka: &logpipe_common::kafka::KafkaSettings, group: &str, partitions: usize) -> Self {
        let consumer: BaseConsumer = kafka
            .client_config("squatter")
            .set("group.id", group)
            // The collector's protocol, so both can be members of one group.
            .set(
                "partition.assignment.strategy",
                logpipe_collector::config::AssignmentStrategy::default().as_str(),
            )
            .set("session.timeout.ms", "10000")
            .set("enable.auto.commit", "false")
            .create()
            .expect("squatter consumer");
        consumer.subscribe(&[&kafka.raw_topic]).expect("subscribe");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while consumer.assignment().map_or(0, |a| a.count()) < partitions {
            assert!(
                std::time::Instant::now() < deadline,
                "squatter got no assignment"
            );
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                // Stays in the group (serves rebalances) and drops what it reads.
                let _ = consumer.poll(Duration::from_millis(100));
            }
            consumer.unsubscribe();
            let _ = consumer.poll(Duration::from_millis(500));
        });
        Squatter { stop, thread }
    }

    fn leave(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("squatter thread");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_no_member_stores_fails_ready_until_it_is_stored_again() {
    let name = it::unique("orphan");
    let mut config = it::collector_config(&name, 2);
    config.consumer.orphan_after_secs = 3;
    let kafka = config.kafka.clone();
    logpipe_common::kafka::ensure_topics(&kafka, &kafka.topics())
        .await
        .expect("topics");
    let squatter = Squatter::join(&kafka, &config.consumer.group_id, 2);
    let (collector, _) = it::start_collector(config).await;
    let pool = it::schema_pool(&name).await;

    let events = it::profile_events(
        Profile::Steady,
        7,
        Utc::now() - chrono::Duration::seconds(20),
        Duration::from_secs(20),
        400,
    );
    let producer = it::producer(&kafka);
    it::produce_events(&producer, &kafka.raw_topic, &events).await;

    // The squatter keeps at least one partition: its records wait, its offset never moves.
    let ready = collector.url("/ready");
    let body: serde_json::Value = it::wait_for(
        "ready names an unstored partition",
        Duration::from_secs(90),
        || async {
            let r = reqwest::get(&ready).await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            if status == 503 && body["partitions_unstored"].as_u64() >= Some(1) {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    assert_eq!(body["status"], "not_ready");
    let stored_meanwhile = it::count_events(&pool).await;
    assert!(
        stored_meanwhile < 400,
        "{stored_meanwhile} stored while a partition was held"
    );
    let metrics = collector.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("collector_partitions_unstored ") && !l.ends_with(" 0")),
        "collector_partitions_unstored not raised"
    );

    // The squatter leaves: the collector takes its partition, stores everything, turns ready.
    squatter.leave();
    it::wait_for("all 400 stored", Duration::from_secs(90), || async {
        let n = it::count_events(&pool).await;
        if n == 400 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    })
    .await;
    it::wait_status(&ready, 200, Duration::from_secs(30)).await;
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}
