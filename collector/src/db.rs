//! Postgres: pool, migrations, the offset claim made on partition assignment, and the batch write.
//!
//! Exactly-once rests on one rule: a batch's rows and the next offset of every partition it covers
//! commit in one transaction, and the offset update only applies when the stored offset is still the
//! one this consumer started from (a fence against a stale owner after a rebalance).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::alerts;
pub use crate::batch::{BatchOutcome, BatchWrite, OffsetMove, OffsetReset, Stored, StoredEvent};
use crate::config::DatabaseSettings;
use crate::copy::{CopyEncoder, LOG_EVENT_COLUMNS};
use crate::detect::AlertSettings;
use crate::windows::{Stats, WindowKey};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every migration, in order (the upgrade test applies the old ones alone, then the rest).
pub fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("partition {partition}: stored offset moved (expected {expected}); another consumer owns it")]
    Fenced { partition: i32, expected: i64 },
    /// A statement of the batch write failed: `stage` names the table (or step) it wrote, so a
    /// refused record's DLQ headers say which derived row PostgreSQL refused.
    #[error("database error writing {stage}: {source}")]
    Write {
        stage: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// Tag a batch-write statement's error with the step it belongs to.
fn at(stage: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Write { stage, source }
}

impl DbError {
    /// The SQLSTATE of an error the server reported, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            DbError::Sql(sqlx::Error::Database(e))
            | DbError::Write {
                source: sqlx::Error::Database(e),
                ..
            } => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// The step of the batch write that failed, when known.
    pub fn stage(&self) -> Option<&'static str> {
        match self {
            DbError::Write { stage, .. } => Some(stage),
            _ => None,
        }
    }

    /// An error that retrying the same rows cannot cure: data exceptions (class 22), integrity
    /// violations (class 23; the duplicate-id conflict is handled before it gets here) and program
    /// limits (class 54, e.g. an index row too large). Connection, timeout and serialization
    /// failures are transient: the batch is retried as it is.
    pub fn is_permanent(&self) -> bool {
        self.sqlstate()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
    }
}

/// How long `/ready` waits for PostgreSQL to answer.
const PING_TIMEOUT: Duration = Duration::from_millis(1_000);

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    /// For storage maintenance: one connection of its own, apart from both pools, since an index
    /// build can hold it for minutes.
    maintenance_opts: PgConnectOptions,
    /// The query API's pool: its own connections, each with a `statement_timeout`.
    query_pool: PgPool,
}

impl Db {
    /// Connect, create the schema if needed and apply migrations inside it.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Db, DbError> {
        let base = PgConnectOptions::from_str(&settings.url)
            .map_err(DbError::Url)?
            .log_statements(tracing::log::LevelFilter::Trace);
        {
            // The schema name is validated in config (letters, digits, underscores), so quoting it
            // is enough here.
            let mut conn = base.connect().await?;
            sqlx::query(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                settings.schema
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
        }
        let idle = settings.idle_in_transaction_timeout_ms.max(1).to_string();
        let lock = settings.lock_timeout_ms.max(1).to_string();
        let opts = base.clone().options([
            ("search_path", settings.schema.as_str()),
            ("idle_in_transaction_session_timeout", idle.as_str()),
            ("lock_timeout", lock.as_str()),
        ]);
        let maintenance_opts = base
            .clone()
            .options([("search_path", settings.schema.as_str())]);
        // Migrations may wait for locks longer than a writer should: their own connection.
        {
            let mut conn = maintenance_opts.connect().await?;
            MIGRATOR.run(&mut conn).await?;
            conn.close().await?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        let timeout = settings.query_statement_timeout_ms.max(1).to_string();
        let query_opts = base.options([
            ("search_path", settings.schema.as_str()),
            ("statement_timeout", timeout.as_str()),
        ]);
        // Lazy: the query API's connections open on first use, so a collector that is never
        // queried holds only the writer's.
        let query_pool = PgPoolOptions::new()
            .max_connections(settings.query_max_connections.max(1))
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(query_opts);
        Ok(Db {
            pool,
            maintenance_opts,
            query_pool,
        })
    }

    pub async fn maintenance_connection(&self) -> Result<PgConnection, sqlx::Error> {
        self.maintenance_opts.connect().await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// For the query API only.
    pub fn query_pool(&self) -> &PgPool {
        &self.query_pool
    }

    pub async fn ping(&self) -> bool {
        // Bounded well below a probe's timeout: with PostgreSQL down the pool waits its whole
        // acquire timeout (5 s), and a readiness probe must answer "down", not time out (the
        // fault suite's PostgreSQL stop found /ready hanging).
        tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The stored next offset for each partition, creating a row at `0` (start of the log) for a
    /// partition this group has never consumed.
    pub async fn claim_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Stored>, DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO consumer_offsets (consumer_group, topic, kafka_partition, next_offset)
             SELECT $1, $2, p, 0 FROM UNNEST($3::int4[]) AS p
             ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .execute(&mut *tx)
        .await?;
        type Row = (i32, i64, Option<DateTime<Utc>>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT kafka_partition, next_offset, max_event_ts, last_record_hash
               FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|(p, next_offset, max_event_ts, last_record_hash)| {
                (
                    p,
                    Stored {
                        next_offset,
                        max_event_ts,
                        last_record_hash,
                    },
                )
            })
            .collect())
    }

    /// The stored next offset of every partition of `topic` this group has consumed (read only).
    pub async fn stored_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, DbError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Move a partition's stored offset from `old` to `new` after it was found outside the
    /// broker's log, and record why; fenced like a batch (a stale owner changes nothing).
    pub async fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        reset: &OffsetReset,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE consumer_offsets
                SET next_offset = $4, last_record_hash = NULL, updated_at = now()
              WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3
                AND next_offset = $5",
        )
        .bind(group)
        .bind(topic)
        .bind(reset.partition)
        .bind(reset.new_offset)
        .bind(reset.old_offset)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(DbError::Fenced {
                partition: reset.partition,
                expected: reset.old_offset,
            });
        }
        sqlx::query(
            "INSERT INTO offset_resets (consumer_group, topic, kafka_partition, old_offset,
                                        new_offset, log_start, log_end, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(group)
        .bind(topic)
        .bind(reset.partition)
        .bind(reset.old_offset)
        .bind(reset.new_offset)
        .bind(reset.log_start)
        .bind(reset.log_end)
        .bind(reset.reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

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
        let mut tx = self.pool.begin().await?;
        let outcome = write_in(&mut tx, group, topic, batch, settings, lateness_secs).await?;
        tx.commit().await?;
        Ok(outcome)
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
        let mut tx = self.pool.begin().await?;
        write_in(&mut tx, group, topic, batch, settings, lateness_secs).await?;
        tx.rollback().await?;
        Ok(())
    }
}

/// The statements of one batch, in a transaction the caller commits (or rolls back: the canary).
async fn write_in(
    tx: &mut PgConnection,
    group: &str,
    topic: &str,
    batch: &BatchWrite<'_>,
    settings: &AlertSettings,
    lateness_secs: i64,
) -> Result<BatchOutcome, DbError> {
    for m in &batch.moves {
        let updated = sqlx::query(
            "UPDATE consumer_offsets
                    SET next_offset = $4, max_event_ts = $6,
                        last_record_hash = CASE WHEN $4 = $5 THEN last_record_hash ELSE $7 END,
                        updated_at = now()
                  WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3
                    AND next_offset = $5",
        )
        .bind(group)
        .bind(topic)
        .bind(m.partition)
        .bind(m.next)
        .bind(m.expected)
        .bind(m.max_event_ts)
        .bind(m.last_record_hash)
        .execute(&mut *tx)
        .await
        .map_err(at("consumer_offsets"))?
        .rows_affected();
        if updated != 1 {
            // Dropping `tx` rolls back: none of this batch is stored.
            return Err(DbError::Fenced {
                partition: m.partition,
                expected: m.expected,
            });
        }
    }
    let mut outcome = BatchOutcome::default();
    if !batch.events.is_empty() {
        outcome.stored = insert_events(&mut *tx, &batch.events)
            .await
            .map_err(at("log_events"))?;
    }
    if !batch.windows.is_empty() {
        upsert_windows(&mut *tx, &batch.windows)
            .await
            .map_err(at("window_stats"))?;
    }
    alerts::record_findings(&mut *tx, &batch.findings, settings, &mut outcome.raised)
        .await
        .map_err(at("alerts"))?;
    if !batch.closed.is_empty() {
        // A service's events are spread over every partition (the key is the event id), so
        // a window is judged only once every partition's event time has passed it: the
        // group's watermark, from the offsets rows this transaction just updated.
        let (unknown, oldest): (Option<bool>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT bool_or(max_event_ts IS NULL), min(max_event_ts) FROM consumer_offsets
                  WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_one(&mut *tx)
        .await
        .map_err(at("error_rate"))?;
        let width = i64::from(settings.error_rate_window_secs);
        let watermark = match unknown {
            Some(false) => crate::windows::closed_window(oldest, lateness_secs, width),
            _ => None, // a partition without event time yet holds every window open
        };
        for (service, upto) in &batch.closed {
            let Some(upto) = watermark.map(|w| w.min(*upto)) else {
                break;
            };
            alerts::judge_error_rate(&mut *tx, settings, service, upto, &mut outcome.raised)
                .await
                .map_err(at("error_rate"))?;
        }
    }
    Ok(outcome)
}

/// COPY (binary) into `log_events`. COPY cannot skip duplicates, so it runs under a savepoint; if an
/// `event_id` is already stored (a client re-sent an event), the batch falls back to one
/// `INSERT … ON CONFLICT DO NOTHING` over arrays. Returns how many rows were new.
async fn insert_events(
    tx: &mut PgConnection,
    events: &[StoredEvent<'_>],
) -> Result<u64, sqlx::Error> {
    let mut enc = CopyEncoder::with_capacity(events.len());
    for e in events {
        enc.row(e);
    }
    let data = enc.finish();
    sqlx::query("SAVEPOINT copy_events")
        .execute(&mut *tx)
        .await?;
    let copied = async {
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
    .await;
    match copied {
        Ok(n) => {
            sqlx::query("RELEASE SAVEPOINT copy_events")
                .execute(&mut *tx)
                .await?;
            Ok(n)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            sqlx::query("ROLLBACK TO SAVEPOINT copy_events")
                .execute(&mut *tx)
                .await?;
            insert_events_skipping_duplicates(tx, events).await
        }
        Err(e) => Err(e),
    }
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
