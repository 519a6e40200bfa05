//! Postgres: pool, migrations, the offset claim made on partition assignment, and the batch write.
//!
//! Exactly-once rests on one rule: a batch's rows and the next offset of every partition it covers
//! commit in one transaction, and the offset update only applies when the stored offset is still the
//! one this consumer started from (a fence against a stale owner after a rebalance).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use logpipe_common::LogEvent;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseSettings;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

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
}

/// One event with the Kafka coordinates it came from.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: LogEvent,
    pub partition: i32,
    pub offset: i64,
}

/// The offset move for one partition inside a batch: from the stored value this consumer expects to
/// the offset after the batch's last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetMove {
    pub partition: i32,
    pub expected: i64,
    pub next: i64,
}

#[derive(Clone)]
pub struct Db {
    pool: PgPool,
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
        let opts = base.options([("search_path", settings.schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Db { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// The stored next offset for each partition, creating a row at `0` (start of the log) for a
    /// partition this group has never consumed.
    pub async fn claim_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>, DbError> {
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
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = ANY($3)",
        )
        .bind(group)
        .bind(topic)
        .bind(partitions)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().collect())
    }

    /// Write a batch: its events (duplicates by `event_id` are skipped) and each partition's offset
    /// move, all in one transaction. Returns how many rows were new.
    pub async fn write_batch(
        &self,
        group: &str,
        topic: &str,
        events: &[StoredEvent],
        moves: &[OffsetMove],
    ) -> Result<u64, DbError> {
        let mut tx = self.pool.begin().await?;
        let inserted = if events.is_empty() {
            0
        } else {
            insert_events(&mut tx, events).await?
        };
        for m in moves {
            let updated = sqlx::query(
                "UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
                 WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3
                   AND next_offset = $5",
            )
            .bind(group)
            .bind(topic)
            .bind(m.partition)
            .bind(m.next)
            .bind(m.expected)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                // Dropping `tx` rolls back: none of this batch is stored.
                return Err(DbError::Fenced {
                    partition: m.partition,
                    expected: m.expected,
                });
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }
}

/// One statement for the whole batch: columns as arrays, unnested server-side.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    events: &[StoredEvent],
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
        let e = &s.event;
        ids.push(e.event_id.as_str());
        ts.push(e.timestamp);
        levels.push(e.level.as_str());
        services.push(e.service.as_str());
        components.push(e.component.as_str());
        hosts.push(e.host.as_str());
        messages.push(e.message.as_str());
        trace_ids.push(e.trace_id.as_deref());
        span_ids.push(e.span_id.as_deref());
        attributes.push(serde_json::Value::Object(e.attributes.clone()).to_string());
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
         ON CONFLICT (event_id) DO NOTHING",
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
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}
