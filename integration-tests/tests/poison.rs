//! Poison records mixed into a large run: every record that can never be stored ends in the DLQ
//! with its provenance and error headers, every good event is stored exactly once, and the
//! collector keeps going (lag back to 0, ready) without a restart.
//!
//! Its own test binary: the lag gauge it reads is process-wide.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use logpipe_generator::events::Profile;
use logpipe_integration_tests as it;
use rdkafka::message::{Headers, Message};

/// 100,000 by default (the check); `LOGPIPE_POISON_GOOD_EVENTS` makes it smaller by hand.
fn good_events() -> usize {
    std::env::var("LOGPIPE_POISON_GOOD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// The shared poison set, plus valid events a CHECK constraint (added by the test) refuses.
fn poison_records() -> Vec<(Vec<u8>, &'static str, &'static str)> {
    let now = Utc::now().to_rfc3339();
    let json_event = it::poison::json_event;
    let mut v = it::poison::records();
    v.extend([
        // Valid events the database refuses (a CHECK constraint this test adds): found by
        // splitting their batches, not by validation.
        (
            json_event(&now, "db-poison one", "{}"),
            "application/json",
            "refused_by_database",
        ),
        (
            json_event(&now, "db-poison two", "{}"),
            "application/json",
            "refused_by_database",
        ),
        (
            json_event(&now, "db-poison three", "{}"),
            "application/json",
            "refused_by_database",
        ),
    ]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_go_to_the_dlq_with_headers_and_every_good_event_is_stored_once() {
    let s = it::TestStack::collector_with("poison", 3, |config| {
        config.consumer.batch_max_ms = 200;
    })
    .await;
    let (pool, kafka, producer) = (s.pool.clone(), &s.kafka, &s.producer);
    // A constraint stands for whatever else PostgreSQL may refuse that validation did not foresee.
    sqlx::query(
        "ALTER TABLE log_events ADD CONSTRAINT test_no_db_poison CHECK (message NOT LIKE 'db-poison%')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let n = good_events();
    let mut good = it::profile_events(
        Profile::Steady,
        7,
        Utc::now() - chrono::Duration::seconds(60),
        Duration::from_secs(60),
        n,
    );
    // The range edges are good events: stored, never refused.
    for ts in ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z"] {
        let mut e = good[0].clone();
        e.event_id = logpipe_common::LogEvent::new_id();
        e.timestamp = ts.parse().unwrap();
        good.push(e);
    }
    let poison = poison_records();
    // Poison spread through the run: one after every len/poison good events, on every partition.
    let mut records: Vec<(String, Vec<u8>, &'static str)> = Vec::with_capacity(good.len() + 20);
    let every = good.len() / poison.len();
    let mut bad = poison.iter();
    for (i, e) in good.iter().enumerate() {
        records.push((e.event_id.clone(), e.to_json(), "application/json"));
        if i % every == every / 2 {
            if let Some((payload, ct, _)) = bad.next() {
                records.push((format!("poison-{i}"), payload.clone(), ct));
            }
        }
    }
    for (payload, ct, _) in bad {
        records.push(("poison-tail".into(), payload.clone(), ct));
    }
    let total = records.len();
    it::produce_all(producer, &kafka.raw_topic, records).await;

    // Every record's offset is stored: nothing stalls.
    it::wait_for("all offsets stored", Duration::from_secs(180), || async {
        let stored: i64 =
            sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets")
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
        if stored == total as i64 {
            Ok(())
        } else {
            Err(format!("{stored} of {total}"))
        }
    })
    .await;
    let (rows, distinct, refused): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id),
                count(*) FILTER (WHERE message LIKE 'db-poison%')
           FROM log_events",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, refused),
        (good.len() as i64, good.len() as i64, 0)
    );
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM UNNEST($1::text[]) AS g(id)
          WHERE NOT EXISTS (SELECT 1 FROM log_events e WHERE e.event_id = g.id)",
    )
    .bind(good.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(missing, 0, "good events missing from log_events");

    // Exactly the poison records in the DLQ, each with where it came from and why.
    let dlq = it::read_topic(kafka, &kafka.dlq_topic, Duration::from_secs(5)).await;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for m in &dlq {
        let h = m.headers().expect("DLQ headers");
        let get = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("DLQ record without header {k}"))
        };
        assert_eq!(get("source.topic"), kafka.raw_topic);
        let partition: i32 = get("source.partition").parse().unwrap();
        assert!((0..3).contains(&partition));
        let _offset: i64 = get("source.offset").parse().unwrap();
        assert!(!get("error.message").is_empty());
        *kinds.entry(get("error.kind")).or_default() += 1;
        assert!(m.payload().is_some_and(|p| !p.is_empty()));
    }
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, kind) in &poison {
        *want.entry((*kind).to_owned()).or_default() += 1;
    }
    assert_eq!(kinds, want);

    // No restart needed: lag back to 0 on every partition, and ready.
    it::wait_for("lag 0 on every partition", Duration::from_secs(30), || {
        let metrics = s.collector.metrics();
        async move {
            let text = metrics.await;
            let lags: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("collector_consumer_lag{"))
                .collect();
            if lags.len() == 3 && lags.iter().all(|l| l.ends_with(" 0")) {
                Ok(())
            } else {
                Err(format!("{lags:?}"))
            }
        }
    })
    .await;
    it::wait_status(&s.collector.url("/ready"), 200, Duration::from_secs(10)).await;
    s.stop().await;
}
