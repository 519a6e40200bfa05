//! The stall guard's own test (issue 28): a database that refuses every write (a broken trigger,
//! SQLSTATE class 22 like a record's own data exception) stalls loudly, `/ready` 503 and
//! `collector_database_refuses_everything` 1, and dead-letters nothing; once the trigger is gone
//! every event is stored. Its own test binary: the gauge is process-wide.

use std::time::Duration;

use chrono::Utc;
use logpipe_common::{Level, LogEvent};
use logpipe_integration_tests as it;

fn event(message: &str) -> LogEvent {
    LogEvent {
        event_id: LogEvent::new_id(),
        timestamp: Utc::now(),
        level: Level::Info,
        service: "good".into(),
        component: "api".into(),
        host: "h".into(),
        message: message.into(),
        trace_id: None,
        span_id: None,
        attributes: serde_json::Map::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_refuses_every_write_stalls_loudly_and_dead_letters_nothing() {
    let s = it::TestStack::collector_with("refuses_all", 2, |config| {
        config.consumer.retry_max_ms = 500;
    })
    .await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    // A broken trigger: every insert fails with division_by_zero, SQLSTATE 22012, the same class
    // as a record's own data exception. Only the canary can tell them apart.
    sqlx::query(
        "CREATE FUNCTION test_broken() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM 1 / 0; RETURN NEW; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER test_broken BEFORE INSERT ON log_events
         FOR EACH ROW EXECUTE FUNCTION test_broken()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let events: Vec<LogEvent> = (0..100).map(|i| event(&format!("e{i}"))).collect();
    it::produce_events(producer, &kafka.raw_topic, &events).await;
    // Loud: the gauge, and /ready 503 naming the failing write.
    it::wait_for("the stall is visible", Duration::from_secs(60), || {
        let metrics = s.collector.metrics();
        async move {
            let text = metrics.await;
            if text.contains("collector_database_refuses_everything 1") {
                Ok(())
            } else {
                Err("gauge not 1".into())
            }
        }
    })
    .await;
    it::wait_status(&s.collector.url("/ready"), 503, Duration::from_secs(10)).await;
    // It stays stalled, and sends nothing to the DLQ.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dlq = it::read_topic(kafka, &kafka.dlq_topic, Duration::from_secs(2)).await;
    assert!(dlq.is_empty(), "{} records dead-lettered", dlq.len());
    assert!(s
        .collector
        .metrics()
        .await
        .contains("collector_refused_by_database_total 0"));
    // The database heals: every event is stored, none lost.
    sqlx::query("DROP TRIGGER test_broken ON log_events")
        .execute(&pool)
        .await
        .unwrap();
    it::wait_scalar(
        &pool,
        "SELECT count(*) FROM log_events",
        100,
        Duration::from_secs(60),
    )
    .await;
    it::wait_status(&s.collector.url("/ready"), 200, Duration::from_secs(20)).await;
    assert!(s
        .collector
        .metrics()
        .await
        .contains("collector_database_refuses_everything 0"));
    s.stop().await;
}
