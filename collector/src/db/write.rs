//! The batch write: one transaction holds a batch's offset moves (fenced), its rows (binary COPY),
//! window deltas, alert findings and the error-rate judgement of the windows that closed.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{at, BatchOutcome, BatchWrite, Db, DbError, OffsetMove, StoredEvent};
use crate::alerts;
use crate::copy::{CopyEncoder, LOG_EVENT_COLUMNS};
use crate::detect::AlertSettings;
use crate::windows::{Stats, WindowKey};

impl Db {
    /// Write a batch in one transaction: the offset moves first (fenced: a stale owner stops here),
    /// then the events, the window deltas, the alert findings and the error-rate judgement of the
    /// windows that closed.
    pub async fn write_batch(
        &self,
        group: &str,
        topic: &str,
        batch: &BatchWrite<'_>,
        settings: &AlertSettings,
        lateness_secs: i64,
    ) -> Result<BatchOutcome, DbError> {
        self.write_ending(group, topic, batch, settings, lateness_secs, End::Commit)
            .await
    }

    async fn write_ending(
        &self,
        group: &str,
        topic: &str,
        write: &BatchWrite<'_>,
        settings: &AlertSettings,
        lateness_secs: i64,
        end: End,
    ) -> Result<BatchOutcome, DbError> {
        let batch = Batch {
            group,
            topic,
            write,
            settings,
            lateness_secs,
        };
        self.transaction(&batch, end).await
    }

    /// The canary: `batch` written exactly as [`Db::write_batch`] writes, then rolled back. A
    /// known-good batch (the refused record's offset moves, with a synthetic event in place of the
    /// record) that fails too says the database refuses everything (a revoked privilege, a broken
    /// trigger, a full disk), which no event controls; one that succeeds says the record itself
    /// is refused.
    pub async fn probe_batch(
        &self,
        group: &str,
        topic: &str,
        batch: &BatchWrite<'_>,
        settings: &AlertSettings,
        lateness_secs: i64,
    ) -> Result<(), DbError> {
        self.write_ending(group, topic, batch, settings, lateness_secs, End::Rollback)
            .await
            .map(|_| ())
    }

    /// The batch in one transaction, ended as `end` says. The rows go in by binary COPY, which
    /// cannot skip an id that is stored already (a client re-sent an event) and aborts the
    /// transaction on one: then the transaction is rolled back and written again with the rows
    /// inserted skipping duplicates. Not a savepoint around the COPY: that was two more round
    /// trips in every batch, for a case that is rare.
    async fn transaction(&self, batch: &Batch<'_>, end: End) -> Result<BatchOutcome, DbError> {
        let mut rows = Rows::Copy;
        loop {
            let mut tx = self.pool.begin().await?;
            match write_in(&mut tx, batch, rows).await {
                Ok(outcome) => {
                    match end {
                        End::Commit => tx.commit().await?,
                        End::Rollback => tx.rollback().await?,
                    }
                    return Ok(outcome);
                }
                Err(e) if rows == Rows::Copy && e.is_duplicate_row() => {
                    tx.rollback().await?;
                    rows = Rows::SkippingDuplicates;
                }
                // Dropping `tx` rolls back: none of this batch is stored.
                Err(e) => return Err(e),
            }
        }
    }
}

/// What one batch transaction writes, and where.
struct Batch<'a> {
    group: &'a str,
    topic: &'a str,
    write: &'a BatchWrite<'a>,
    settings: &'a AlertSettings,
    lateness_secs: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Commit,
    Rollback,
}

/// How a batch's rows go into `log_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Copy,
    /// An id of the batch is stored already: `INSERT … ON CONFLICT DO NOTHING`.
    SkippingDuplicates,
}

/// The statements of one batch, in a transaction the caller ends.
async fn write_in(
    tx: &mut PgConnection,
    b: &Batch<'_>,
    rows: Rows,
) -> Result<BatchOutcome, DbError> {
    let batch = b.write;
    let watermark = move_offsets(&mut *tx, b.group, b.topic, &batch.moves).await?;
    let mut outcome = BatchOutcome::default();
    if !batch.events.is_empty() {
        outcome.stored = insert_events(&mut *tx, &batch.events, rows)
            .await
            .map_err(at("log_events"))?;
    }
    if !batch.windows.is_empty() {
        upsert_windows(&mut *tx, &batch.windows)
            .await
            .map_err(at("window_stats"))?;
    }
    alerts::record_findings(&mut *tx, &batch.findings, b.settings, &mut outcome.raised)
        .await
        .map_err(at("alerts"))?;
    if !batch.closed.is_empty() {
        // A service's events are spread over every partition (the key is the event id), so
        // a window is judged only once every partition's event time has passed it: the
        // group's watermark, from the offsets rows this transaction updated.
        let (unknown, oldest) = match watermark {
            Some(w) => w,
            None => sqlx::query_as(
                "SELECT bool_or(max_event_ts IS NULL), min(max_event_ts) FROM consumer_offsets
                  WHERE consumer_group = $1 AND topic = $2",
            )
            .bind(b.group)
            .bind(b.topic)
            .fetch_one(&mut *tx)
            .await
            .map_err(at("error_rate"))?,
        };
        let width = i64::from(b.settings.error_rate_window_secs);
        let watermark = match unknown {
            Some(false) => crate::windows::closed_window(oldest, b.lateness_secs, width),
            _ => None, // a partition without event time yet holds every window open
        };
        for (service, upto) in &batch.closed {
            let Some(upto) = watermark.map(|w| w.min(*upto)) else {
                break;
            };
            alerts::judge_error_rate(&mut *tx, b.settings, service, upto, &mut outcome.raised)
                .await
                .map_err(at("error_rate"))?;
        }
    }
    Ok(outcome)
}

/// The group's event-time watermark as a batch leaves it: whether a partition has no event time
/// yet, and the oldest event time.
type Watermark = (Option<bool>, Option<DateTime<Utc>>);

/// Every offset move of the batch in one statement, fenced: each partition's stored offset must
/// still be the one this consumer expects, or nothing moves (`DbError::Fenced`, and the caller's
/// transaction rolls back). Rows are locked in partition order, as two owners of a partition
/// (a stale one and the new one) may write at once. Returns the group's watermark with the moves
/// applied, read in the same statement; `None` when there is nothing to move.
async fn move_offsets(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    moves: &[OffsetMove],
) -> Result<Option<Watermark>, DbError> {
    if moves.is_empty() {
        return Ok(None);
    }
    let partitions: Vec<i32> = moves.iter().map(|m| m.partition).collect();
    let nexts: Vec<i64> = moves.iter().map(|m| m.next).collect();
    let expected: Vec<i64> = moves.iter().map(|m| m.expected).collect();
    let event_times: Vec<Option<DateTime<Utc>>> = moves.iter().map(|m| m.max_event_ts).collect();
    let hashes: Vec<Option<i64>> = moves.iter().map(|m| m.last_record_hash).collect();
    // The outer query sees the table as it was before the update (a data-modifying CTE's
    // effects are not visible to its own statement): the moved partitions' new event times
    // come from RETURNING.
    let (moved, unknown, oldest): (Vec<i32>, Option<bool>, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH m AS (
                 SELECT * FROM UNNEST($3::int4[], $4::int8[], $5::int8[], $6::timestamptz[],
                                      $7::int8[]) AS m(p, next, expected, ts, hash)),
             locked AS (
                 SELECT kafka_partition FROM consumer_offsets
                  WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)
                  ORDER BY kafka_partition FOR UPDATE),
             moved AS (
                 UPDATE consumer_offsets c
                    SET next_offset = m.next, max_event_ts = m.ts,
                        last_record_hash = CASE WHEN m.next = m.expected
                                                THEN c.last_record_hash ELSE m.hash END,
                        updated_at = now()
                   FROM m
                  WHERE c.consumer_group = $1 AND c.topic = $2 AND c.kafka_partition = m.p
                    AND c.next_offset = m.expected
                    AND c.kafka_partition IN (SELECT kafka_partition FROM locked)
                 RETURNING c.kafka_partition, c.max_event_ts)
             SELECT ARRAY(SELECT kafka_partition FROM moved), bool_or(t.ts IS NULL), min(t.ts)
               FROM (SELECT max_event_ts AS ts FROM consumer_offsets
                      WHERE consumer_group = $1 AND topic = $2
                        AND kafka_partition NOT IN (SELECT kafka_partition FROM moved)
                     UNION ALL
                     SELECT max_event_ts FROM moved) AS t",
    )
    .bind(group)
    .bind(topic)
    .bind(&partitions)
    .bind(&nexts)
    .bind(&expected)
    .bind(&event_times)
    .bind(&hashes)
    .fetch_one(&mut *tx)
    .await
    .map_err(at("consumer_offsets"))?;
    if let Some(m) = moves.iter().find(|m| !moved.contains(&m.partition)) {
        return Err(DbError::Fenced {
            partition: m.partition,
            expected: m.expected,
        });
    }
    Ok(Some((unknown, oldest)))
}

/// The rows into `log_events`: binary COPY, or (`Rows::SkippingDuplicates`) one insert that skips
/// ids stored already. Returns how many rows were new.
async fn insert_events(
    tx: &mut PgConnection,
    events: &[StoredEvent<'_>],
    rows: Rows,
) -> Result<u64, sqlx::Error> {
    if rows == Rows::SkippingDuplicates {
        return insert_events_skipping_duplicates(tx, events).await;
    }
    let mut enc = CopyEncoder::with_capacity(events.len());
    for e in events {
        enc.row(e);
    }
    let data = enc.finish();
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY log_events ({LOG_EVENT_COLUMNS}) FROM STDIN WITH (FORMAT binary)"
        ))
        .await?;
    if let Err(e) = copy.send(data.as_slice()).await {
        let _ = copy.abort(e.to_string()).await;
        return Err(e);
    }
    copy.finish().await
}

/// One statement for the whole batch: columns as arrays, unnested server-side.
async fn insert_events_skipping_duplicates(
    tx: &mut PgConnection,
    events: &[StoredEvent<'_>],
) -> Result<u64, sqlx::Error> {
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut levels = Vec::with_capacity(n);
    let mut services = Vec::with_capacity(n);
    let mut components = Vec::with_capacity(n);
    let mut hosts = Vec::with_capacity(n);
    let mut messages = Vec::with_capacity(n);
    let mut trace_ids = Vec::with_capacity(n);
    let mut span_ids = Vec::with_capacity(n);
    let mut attributes = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    for s in events {
        let e = s.event;
        ids.push(e.event_id());
        ts.push(e.timestamp());
        levels.push(e.level().as_str());
        services.push(e.service());
        components.push(e.component());
        hosts.push(e.host());
        messages.push(e.message());
        trace_ids.push(e.trace_id());
        span_ids.push(e.span_id());
        attributes.push(e.attributes_json());
        partitions.push(s.partition);
        offsets.push(s.offset);
    }
    let result = sqlx::query(
        "INSERT INTO log_events (event_id, ts, level, service, component, host, message,
                                 trace_id, span_id, attributes, kafka_partition, kafka_offset)
         SELECT e, t, l, s, c, h, m, ti, si, a::jsonb, p, o
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::int8[])
              AS u(e, t, l, s, c, h, m, ti, si, a, p, o)
         ON CONFLICT (ts, event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&ts)
    .bind(&levels)
    .bind(&services)
    .bind(&components)
    .bind(&hosts)
    .bind(&messages)
    .bind(&trace_ids)
    .bind(&span_ids)
    .bind(&attributes)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected())
}

/// Add the batch's partial window statistics to their rows, creating rows as needed.
async fn upsert_windows(
    tx: &mut PgConnection,
    rows: &[(WindowKey, Stats)],
) -> Result<(), sqlx::Error> {
    let n = rows.len();
    let mut widths = Vec::with_capacity(n);
    let mut slides = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut services = Vec::with_capacity(n);
    let mut levels = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut lat_counts = Vec::with_capacity(n);
    let mut lat_sums = Vec::with_capacity(n);
    let mut lat_maxes = Vec::with_capacity(n);
    let mut hists = Vec::with_capacity(n);
    for (k, s) in rows {
        widths.push(k.spec.width as i32);
        slides.push(k.spec.slide as i32);
        starts.push(DateTime::from_timestamp(k.start_secs, 0).unwrap_or_default());
        services.push(k.service.as_str());
        levels.push(k.level.as_str());
        counts.push(s.count);
        lat_counts.push(s.latency_count);
        lat_sums.push(s.latency_sum_ms);
        lat_maxes.push(s.latency_max_ms);
        hists.push(s.hist_literal());
    }
    sqlx::query(
        "INSERT INTO window_stats AS w (width_secs, slide_secs, window_start, service, level,
                                       event_count, latency_count, latency_sum_ms, latency_max_ms,
                                       latency_hist)
         SELECT wi, sl, st, sv, lv, c, lc, ls, lm, h::int8[]
         FROM UNNEST($1::int4[], $2::int4[], $3::timestamptz[], $4::text[], $5::text[],
                     $6::int8[], $7::int8[], $8::float8[], $9::float8[], $10::text[])
              AS u(wi, sl, st, sv, lv, c, lc, ls, lm, h)
         ON CONFLICT (width_secs, slide_secs, window_start, service, level) DO UPDATE SET
             event_count = w.event_count + EXCLUDED.event_count,
             latency_count = w.latency_count + EXCLUDED.latency_count,
             latency_sum_ms = w.latency_sum_ms + EXCLUDED.latency_sum_ms,
             latency_max_ms = GREATEST(w.latency_max_ms, EXCLUDED.latency_max_ms),
             latency_hist = hist_add(w.latency_hist, EXCLUDED.latency_hist),
             updated_at = now()",
    )
    .bind(&widths)
    .bind(&slides)
    .bind(&starts)
    .bind(&services)
    .bind(&levels)
    .bind(&counts)
    .bind(&lat_counts)
    .bind(&lat_sums)
    .bind(&lat_maxes)
    .bind(&hists)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
