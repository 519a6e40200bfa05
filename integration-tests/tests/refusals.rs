//! What the database refuses, told apart by something no event controls (issue 28):
//!
//! - the new user's stall: two ingest requests of 200 valid events whose latency sits at the edge
//!   of f64 once overflowed the window upsert, and a count of refusals stalled every partition;
//!   now every event is stored and a marker after them too;
//! - a record whose derived row the database refuses (a constraint on `window_stats`) goes to the
//!   DLQ with its SQLSTATE, the stage and the row, and the rest moves on;
//!
//! The stall guard's own test (a database that refuses every write) is `tests/stall_guard.rs`:
//! its gauge is process-wide.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use logpipe_common::{Level, LogEvent};
use logpipe_integration_tests as it;
use rdkafka::message::{Headers, Message};

fn event(service: &str, message: &str, latency: serde_json::Value) -> LogEvent {
    let mut attributes = serde_json::Map::new();
    attributes.insert("latency_ms".into(), latency);
    LogEvent {
        event_id: LogEvent::new_id(),
        timestamp: Utc::now(),
        level: Level::Info,
        service: service.into(),
        component: "api".into(),
        host: "h".into(),
        message: message.into(),
        trace_id: None,
        span_id: None,
        attributes,
    }
}

fn headers_of(m: &rdkafka::message::OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_owned(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latencies_at_the_edge_of_f64_are_stored_and_do_not_stall_the_pipeline() {
    let s = it::TestStack::collector("edge_latency", 3).await;
    let (pool, kafka, name) = (s.pool.clone(), &s.kafka, &s.name);
    let mut gw = it::gateway_config(name);
    gw.kafka = kafka.clone();
    let gateway = it::start_gateway(gw).await;
    let http = reqwest::Client::new();
    // As seen: two requests of 200 valid events, one numeric attribute at the edge of its type.
    for value in [
        serde_json::json!(1.7e308),
        serde_json::json!("1.7976931348623157e308"),
    ] {
        let body: Vec<LogEvent> = (0..200)
            .map(|_| event("payments", "charge", value.clone()))
            .collect();
        let resp = it::send_ingest(http.post(gateway.url("/api/v1/logs")).json(&body)).await;
        assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    }
    let marker = event("marker", "after the edge", serde_json::json!(5));
    let resp = it::send_ingest(http.post(gateway.url("/api/v1/logs")).json(&marker)).await;
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    it::wait_scalar(
        &pool,
        "SELECT count(*) FROM log_events",
        401,
        Duration::from_secs(60),
    )
    .await;
    let (max, sum, count): (f64, f64, i64) = sqlx::query_as(
        "SELECT max(latency_max_ms), max(latency_sum_ms), max(latency_count)
           FROM window_stats WHERE service = 'payments'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(max, 86_400_000.0, "the latency counts as one day");
    assert_eq!(count, 400);
    assert_eq!(sum, 400.0 * 86_400_000.0);
    let clamped = s.collector.metrics().await;
    assert!(
        clamped.contains("collector_values_clamped_total{field=\"latency_ms\"} 400"),
        "{}",
        clamped
            .lines()
            .filter(|l| l.contains("clamped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    it::wait_status(&s.collector.url("/ready"), 200, Duration::from_secs(10)).await;
    gateway.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_whose_window_row_is_refused_goes_to_the_dlq_with_its_sqlstate_stage_and_row() {
    let s = it::TestStack::collector("refused_row", 2).await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    // Stands for any derived row PostgreSQL may refuse that the bounds did not foresee.
    sqlx::query(
        "ALTER TABLE window_stats ADD CONSTRAINT test_no_refused CHECK (service <> 'refused')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut events: Vec<LogEvent> = (0..300)
        .map(|i| event("good", &format!("e{i}"), serde_json::json!(3)))
        .collect();
    // More refused records than the old guard's 32 in a row: a count would have stalled here.
    for i in 0..40 {
        events.insert(
            i * 7,
            event("refused", "no window row", serde_json::json!(1)),
        );
    }
    it::produce_events(producer, &kafka.raw_topic, &events).await;
    it::wait_scalar(
        &pool,
        "SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets",
        340,
        Duration::from_secs(120),
    )
    .await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events WHERE service = 'good'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 300);
    let dlq = it::read_topic(kafka, &kafka.dlq_topic, Duration::from_secs(3)).await;
    assert_eq!(dlq.len(), 40);
    for m in &dlq {
        let h = headers_of(m);
        assert_eq!(h["error.kind"], "refused_by_database");
        assert_eq!(h["error.sqlstate"], "23514", "{h:?}");
        assert_eq!(h["error.stage"], "window_stats", "{h:?}");
        let row: serde_json::Value = serde_json::from_str(&h["error.row"]).unwrap();
        assert_eq!(row[0]["service"], "refused", "{row}");
        assert!(h["error.message"].contains("test_no_refused"), "{h:?}");
    }
    let metrics = s.collector.metrics().await;
    assert!(metrics.contains("collector_database_refuses_everything 0"));
    it::wait_status(&s.collector.url("/ready"), 200, Duration::from_secs(10)).await;
    s.stop().await;
}
