//! The batch write against the real PostgreSQL (`Db::write_batch`): every offset move of a batch in
//! one fenced statement, which also reads the group's event-time watermark; and rows whose ids are
//! stored already, which make the COPY fail and the batch go in again skipping them.

use chrono::{DateTime, Duration, Utc};
use logpipe_collector::db::{BatchWrite, Db, DbError, OffsetMove, StoredEvent};
use logpipe_collector::detect::AlertSettings;
use logpipe_collector::windows::closed_window;
use logpipe_common::{LogEvent, RawEvent};
use logpipe_integration_tests as it;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "bw.raw";

/// One partition's row in `consumer_offsets`.
type Row = (i64, Option<DateTime<Utc>>, Option<i64>);

/// `(partition, Row)` as selected.
type Selected = (i32, i64, Option<DateTime<Utc>>, Option<i64>);

async fn rows(pool: &sqlx::PgPool, group: &str) -> Vec<(i32, Row)> {
    let rows: Vec<Selected> = sqlx::query_as(
        "SELECT kafka_partition, next_offset, max_event_ts, last_record_hash FROM consumer_offsets
          WHERE consumer_group = $1 AND topic = $2 ORDER BY kafka_partition",
    )
    .bind(group)
    .bind(TOPIC)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(p, next, ts, hash)| (p, (next, ts, hash)))
        .collect()
}

fn some_time(rng: &mut rand::rngs::StdRng, base: DateTime<Utc>) -> Option<DateTime<Utc>> {
    rng.random_bool(0.8)
        .then(|| base + Duration::seconds(rng.random_range(-300..300)))
}

/// Generated stored offsets and generated batches of moves, each against a model: when every move
/// finds the offset it expects, every one applies (a move that keeps its offset, an idle move,
/// keeps the stored fingerprint) and the error-rate windows are judged up to the group's
/// watermark with the moves applied (none while a partition has no event time); when one does
/// not, the batch is fenced at the first such partition and nothing moves.
#[tokio::test]
async fn offset_moves_apply_all_or_none_and_the_watermark_counts_them() {
    let name = it::unique("batch_moves");
    let config = it::collector_config(&name, 1);
    let pool = it::schema_pool(&name).await;
    let db = Db::connect(&config.database).await.unwrap();
    let settings = AlertSettings::default();
    let width = i64::from(settings.error_rate_window_secs);
    // Whole seconds: PostgreSQL keeps microseconds.
    let base = DateTime::from_timestamp(Utc::now().timestamp() - 3600, 0).unwrap();
    let (mut fenced_cases, mut judged_cases) = (0, 0);
    for case in 0..60u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(case);
        let group = format!("g{case}");
        let service = format!("svc-{case}");
        let partitions: Vec<i32> = (0..rng.random_range(1..7)).collect();
        db.claim_offsets(&group, TOPIC, &partitions).await.unwrap();
        let mut model = Vec::new();
        for &p in &partitions {
            let row: Row = (
                rng.random_range(0..100),
                some_time(&mut rng, base),
                rng.random_bool(0.5).then(|| rng.random()),
            );
            sqlx::query(
                "UPDATE consumer_offsets SET next_offset = $3, max_event_ts = $4,
                        last_record_hash = $5
                  WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $6",
            )
            .bind(&group)
            .bind(TOPIC)
            .bind(row.0)
            .bind(row.1)
            .bind(row.2)
            .bind(p)
            .execute(&pool)
            .await
            .unwrap();
            model.push((p, row));
        }
        // A batch moves some partitions, in partition order (as the planner makes them).
        let mut moves = Vec::new();
        for &(p, (stored, _, _)) in &model {
            if !rng.random_bool(0.7) {
                continue;
            }
            let expected = if rng.random_bool(0.9) {
                stored
            } else {
                stored + 1
            };
            moves.push(OffsetMove {
                partition: p,
                expected,
                next: expected + rng.random_range(0..4),
                max_event_ts: some_time(&mut rng, base),
                last_record_hash: rng.random_bool(0.8).then(|| rng.random()),
            });
        }
        let write = BatchWrite {
            moves: moves.clone(),
            closed: vec![(service.clone(), base + Duration::days(1))],
            ..Default::default()
        };
        let result = db.write_batch(&group, TOPIC, &write, &settings, 10).await;
        let first_fenced = moves.iter().find(|m| {
            model
                .iter()
                .any(|(p, r)| *p == m.partition && r.0 != m.expected)
        });
        if let Some(f) = first_fenced {
            fenced_cases += 1;
            match result {
                Err(DbError::Fenced {
                    partition,
                    expected,
                }) => assert_eq!(
                    (partition, expected),
                    (f.partition, f.expected),
                    "case {case}"
                ),
                other => panic!("case {case}: {other:?}, expected a fence at {f:?}"),
            }
        } else {
            result.unwrap_or_else(|e| panic!("case {case}: {e}"));
            for m in &moves {
                let row = &mut model.iter_mut().find(|(p, _)| *p == m.partition).unwrap().1;
                let hash = if m.next == m.expected {
                    row.2
                } else {
                    m.last_record_hash
                };
                *row = (m.next, m.max_event_ts, hash);
            }
        }
        assert_eq!(rows(&pool, &group).await, model, "case {case}: {moves:?}");
        let judged: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT last_window_start FROM error_rate_state WHERE service = $1")
                .bind(&service)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .flatten();
        let watermark = if first_fenced.is_some() || model.iter().any(|(_, r)| r.1.is_none()) {
            None
        } else {
            closed_window(model.iter().filter_map(|(_, r)| r.1).min(), 10, width)
        };
        judged_cases += usize::from(watermark.is_some());
        assert_eq!(
            judged, watermark,
            "case {case}: the watermark with the moves applied"
        );
    }
    assert!(
        fenced_cases >= 5 && judged_cases >= 5,
        "{fenced_cases} fenced, {judged_cases} judged"
    );
    it::drop_schema(&pool, &name).await;
}

fn event(i: usize, at: DateTime<Utc>) -> RawEvent {
    let e = LogEvent {
        event_id: format!("bw-{i}"),
        timestamp: at + Duration::milliseconds(i as i64),
        level: logpipe_common::Level::Info,
        service: "api".into(),
        component: "c".into(),
        host: "h".into(),
        message: format!("event {i}"),
        trace_id: None,
        span_id: None,
        attributes: serde_json::Map::new(),
    };
    RawEvent::from_event(&e).unwrap()
}

/// A client that re-sends events puts ids in a batch that are stored already: the COPY fails on
/// them, and the batch goes in again (in a new transaction) storing only the new rows, with its
/// offsets moved once.
#[tokio::test]
async fn a_batch_holding_ids_stored_already_stores_only_the_new_rows_and_moves_its_offsets() {
    let name = it::unique("batch_dups");
    let config = it::collector_config(&name, 1);
    let pool = it::schema_pool(&name).await;
    let db = Db::connect(&config.database).await.unwrap();
    logpipe_collector::storage::first_pass(&db, &config.storage)
        .await
        .unwrap();
    db.claim_offsets("g", TOPIC, &[0]).await.unwrap();
    let settings = AlertSettings::default();
    let at = DateTime::from_timestamp(Utc::now().timestamp() - 300, 0).unwrap();
    let events: Vec<RawEvent> = (0..30).map(|i| event(i, at)).collect();
    let batch = |range: std::ops::Range<usize>, expected: i64| BatchWrite {
        events: range
            .clone()
            .map(|i| StoredEvent {
                event: &events[i],
                partition: 0,
                offset: i as i64,
            })
            .collect(),
        moves: vec![OffsetMove {
            partition: 0,
            expected,
            next: range.end as i64,
            max_event_ts: Some(at),
            last_record_hash: Some(range.end as i64),
        }],
        ..Default::default()
    };
    let first = db
        .write_batch("g", TOPIC, &batch(0..20, 0), &settings, 10)
        .await
        .unwrap();
    assert_eq!(first.stored, 20);
    // Ids 10 to 19 again, with 20 to 29 new.
    let mut again = batch(10..30, 20);
    again.events.rotate_left(3); // the stored ones are not all in front
    let second = db
        .write_batch("g", TOPIC, &again, &settings, 10)
        .await
        .unwrap();
    assert_eq!(second.stored, 10, "only the new rows");
    let (count, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM log_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((count, distinct), (30, 30));
    assert_eq!(rows(&pool, "g").await, vec![(0, (30, Some(at), Some(30)))]);
    it::drop_schema(&pool, &name).await;
}
