//! Postgres: pool, migrations, the offset claim made on partition assignment and offset resets;
//! the batch write is `db/write.rs`.
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

pub use crate::batch::{BatchOutcome, BatchWrite, OffsetMove, OffsetReset, Stored, StoredEvent};
use crate::config::DatabaseSettings;

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

    /// The COPY met an event id that is stored already.
    fn is_duplicate_row(&self) -> bool {
        self.stage() == Some("log_events") && self.sqlstate().as_deref() == Some("23505")
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
}

mod write;
