//! Storage upkeep: time partitions made ahead of need, retention by dropping whole partitions, the
//! text index of sealed `log_events` partitions, and the storage metrics. One pass runs before the
//! consumer starts (so no batch ever meets a missing partition) and then every
//! `maintenance_interval_secs` on a connection of its own, never one of the writer's.
//!
//! Why the collector's own task and not `pg_partman`: see ARCHITECTURE.md, "Storage".

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

pub use crate::config::StorageSettings;
use crate::db::Db;

impl StorageSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=24 * 31).contains(&self.partition_hours) {
            return Err("partition_hours must be from 1 to 744".into());
        }
        let days = [
            self.retention_days,
            self.window_retention_days,
            self.failed_login_retention_days,
            self.alert_retention_days,
        ];
        if days.contains(&0) {
            return Err("every retention must be at least 1 day".into());
        }
        if self.maintenance_interval_secs == 0 {
            return Err("maintenance_interval_secs must be at least 1".into());
        }
        Ok(())
    }

    fn width(&self) -> TimeDelta {
        TimeDelta::hours(i64::from(self.partition_hours))
    }
}

/// A table partitioned by time, and which retention applies to it.
#[derive(Debug, Clone, Copy)]
pub struct Partitioned {
    pub parent: &'static str,
    pub key: &'static str,
    retention: fn(&StorageSettings) -> u32,
}

pub const PARTITIONED: [Partitioned; 3] = [
    Partitioned {
        parent: "log_events",
        key: "ts",
        retention: |s| s.retention_days,
    },
    Partitioned {
        parent: "window_stats",
        key: "window_start",
        retention: |s| s.window_retention_days,
    },
    Partitioned {
        parent: "failed_logins",
        key: "window_start",
        retention: |s| s.failed_login_retention_days,
    },
];

impl Partitioned {
    pub fn retention(&self, s: &StorageSettings) -> TimeDelta {
        TimeDelta::days(i64::from((self.retention)(s)))
    }
}

/// A half-open time range `[from, to)`.
pub type Range = (DateTime<Utc>, DateTime<Utc>);

/// The start of the width-aligned slot holding `t`.
pub fn slot_start(t: DateTime<Utc>, width: TimeDelta) -> DateTime<Utc> {
    let w = width.num_seconds().max(1);
    let s = t.timestamp().div_euclid(w) * w;
    DateTime::from_timestamp(s, 0).unwrap_or(t)
}

/// The partitions a table should have at `now`: every width-aligned slot from the one holding the
/// retention horizon to `premake` slots past the current one, minus what `existing` already
/// covers. Pieces of a slot that existing partitions cover in part (the width was changed) are
/// returned as the uncovered parts, so ranges never overlap and never leave a hole.
pub fn missing_ranges(
    now: DateTime<Utc>,
    width: TimeDelta,
    retention: TimeDelta,
    premake: u32,
    existing: &[Range],
) -> Vec<Range> {
    let mut existing: Vec<Range> = existing.to_vec();
    existing.sort();
    let first = slot_start(now - retention, width);
    let end = slot_start(now, width) + width * (premake as i32 + 1);
    let mut out = Vec::new();
    let mut slot = first;
    while slot < end {
        let slot_end = slot + width;
        let mut cursor = slot;
        for &(a, b) in existing.iter().filter(|(a, b)| *a < slot_end && *b > slot) {
            if a > cursor {
                out.push((cursor, a));
            }
            cursor = cursor.max(b);
        }
        if cursor < slot_end {
            out.push((cursor, slot_end));
        }
        slot = slot_end;
    }
    out
}

/// Partitions whose whole range is older than `horizon`.
pub fn expired(partitions: &[(String, Range)], horizon: DateTime<Utc>) -> Vec<&(String, Range)> {
    partitions
        .iter()
        .filter(|(_, (_, upper))| *upper <= horizon)
        .collect()
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    pub text_indexed: Vec<String>,
    pub alerts_deleted: u64,
    /// Steps that failed (a lock not granted in time, an error); retried on the next pass.
    pub failures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage maintenance: {0}")]
    Sql(#[from] sqlx::Error),
}

/// One pass over every partitioned table at `now`. Each step is its own transaction; a step that
/// fails is reported and left for the next pass, the others still run.
pub async fn run_pass(
    conn: &mut PgConnection,
    settings: &StorageSettings,
    now: DateTime<Utc>,
) -> Result<PassReport, StorageError> {
    let mut report = PassReport::default();
    for table in PARTITIONED {
        let existing = partitions_of(conn, table.parent).await?;
        let ranges: Vec<Range> = existing.iter().map(|(_, r)| *r).collect();
        let missing = missing_ranges(
            now,
            settings.width(),
            table.retention(settings),
            settings.premake_partitions,
            &ranges,
        );
        for (from, to) in missing {
            match ensure_partition(conn, settings, table, from, to).await {
                Ok(name) => report.created.push(name),
                Err(e) => report
                    .failures
                    .push(format!("create {} {from}..{to}: {e}", table.parent)),
            }
        }
        let horizon = now - table.retention(settings);
        for (name, _) in expired(&existing, horizon) {
            match drop_partition(conn, settings, name).await {
                Ok(()) => report.dropped.push(name.clone()),
                Err(e) => report.failures.push(format!("drop {name}: {e}")),
            }
        }
        // The one row delete: expired rows that landed in the default partition (events dated
        // before the retention horizon), which no partition drop will ever take.
        let deleted = sqlx::query(&format!(
            "DELETE FROM {}_default WHERE {} < $1",
            table.parent, table.key
        ))
        .bind(horizon)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if deleted > 0 {
            tracing::info!(table = table.parent, rows = deleted, %horizon,
                "deleted expired rows from the default partition");
        }
    }
    report.alerts_deleted = delete_old_alerts(conn, settings, now).await?;
    delete_idle_error_rate_state(conn, settings, now).await?;
    if settings.text_index {
        text_indexes(conn, settings, now, &mut report).await?;
    }
    Ok(report)
}

/// `(name, (lower, upper))` of a table's partitions, oldest first.
pub async fn partitions_of(
    conn: &mut PgConnection,
    parent: &str,
) -> Result<Vec<(String, Range)>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT partition, lower_bound, upper_bound FROM time_partitions
          WHERE parent = $1 ORDER BY lower_bound",
    )
    .bind(parent)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(n, a, b)| (n, (a, b))).collect())
}

async fn ensure_partition(
    conn: &mut PgConnection,
    settings: &StorageSettings,
    table: Partitioned,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    let mut tx = conn.begin().await?;
    set_lock_timeout(&mut tx, settings).await?;
    let name: String = sqlx::query_scalar("SELECT ensure_time_partition($1, $2, $3, $4)")
        .bind(table.parent)
        .bind(table.key)
        .bind(from)
        .bind(to)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(name)
}

pub async fn drop_partition(
    conn: &mut PgConnection,
    settings: &StorageSettings,
    name: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    set_lock_timeout(&mut tx, settings).await?;
    // The name comes from `time_partitions`, written only by `ensure_time_partition`.
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{name}\""))
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM time_partitions WHERE partition = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(partition = name, "dropped an expired partition");
    Ok(())
}

async fn set_lock_timeout(conn: &mut PgConnection, s: &StorageSettings) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = {}",
        s.ddl_lock_timeout_ms.max(1)
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Alert episodes whose last detection is past retention, except one an error-rate judgement
/// still holds open and one the outbox has not published yet. Alerts are few (one row per
/// episode), so they are deleted as rows, in bounded chunks.
async fn delete_old_alerts(
    conn: &mut PgConnection,
    settings: &StorageSettings,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let horizon = now - TimeDelta::days(i64::from(settings.alert_retention_days));
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM alerts WHERE alert_id IN (
                 SELECT alert_id FROM alerts
                  WHERE last_seen < $1 AND published_at IS NOT NULL
                    AND alert_id NOT IN (SELECT open_alert_id FROM error_rate_state
                                          WHERE open_alert_id IS NOT NULL)
                  LIMIT 10000)",
        )
        .bind(horizon)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}

/// Error-rate state (a baseline per service) of services not judged within the window retention
/// and with no open episode: without it the table grows with every service name a client ever
/// sent. A service that comes back starts from the default baseline again.
async fn delete_idle_error_rate_state(
    conn: &mut PgConnection,
    settings: &StorageSettings,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let horizon = now - TimeDelta::days(i64::from(settings.window_retention_days));
    Ok(sqlx::query(
        "DELETE FROM error_rate_state
          WHERE open_alert_id IS NULL AND COALESCE(last_window_start, '-infinity') < $1",
    )
    .bind(horizon)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Build the trigram index of every sealed `log_events` partition that lacks one. `CREATE INDEX
/// CONCURRENTLY` on the partition alone: writes into other partitions are never blocked, and
/// the partition itself takes no more rows.
async fn text_indexes(
    conn: &mut PgConnection,
    settings: &StorageSettings,
    now: DateTime<Utc>,
    report: &mut PassReport,
) -> Result<(), sqlx::Error> {
    let sealed_before = now - TimeDelta::seconds(settings.text_index_delay_secs as i64);
    let todo: Vec<String> = sqlx::query_scalar(
        "SELECT partition FROM time_partitions
          WHERE parent = 'log_events' AND NOT text_indexed AND upper_bound <= $1
          ORDER BY lower_bound DESC",
    )
    .bind(sealed_before)
    .fetch_all(&mut *conn)
    .await?;
    if todo.is_empty() {
        return Ok(());
    }
    let Some(trgm_schema) = trgm_schema(conn).await else {
        report
            .failures
            .push("text index: the pg_trgm extension is not available".into());
        return Ok(());
    };
    sqlx::query("SET maintenance_work_mem = '256MB'")
        .execute(&mut *conn)
        .await?;
    for partition in todo {
        let index = format!("{partition}_message_trgm");
        // A concurrent build that failed half-way leaves an invalid index behind: drop it first.
        sqlx::query(&format!(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE c.relname = '{index}' AND c.relnamespace = current_schema()::regnamespace
                   AND NOT i.indisvalid)
               THEN EXECUTE 'DROP INDEX \"{index}\"'; END IF; END $$"
        ))
        .execute(&mut *conn)
        .await?;
        let started = std::time::Instant::now();
        let built = sqlx::query(&format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{index}\" ON \"{partition}\"
               USING gin (message \"{trgm_schema}\".gin_trgm_ops)"
        ))
        .execute(&mut *conn)
        .await;
        match built {
            Ok(_) => {
                sqlx::query("UPDATE time_partitions SET text_indexed = true WHERE partition = $1")
                    .bind(&partition)
                    .execute(&mut *conn)
                    .await?;
                tracing::info!(%partition, took_ms = started.elapsed().as_millis() as u64,
                    "built the text index of a sealed partition");
                report.text_indexed.push(partition);
            }
            Err(e) => report.failures.push(format!("text index {partition}: {e}")),
        }
    }
    Ok(())
}

/// The schema `pg_trgm` lives in, installing it (into `public`) where it is available and missing.
async fn trgm_schema(conn: &mut PgConnection) -> Option<String> {
    let find =
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'";
    if let Ok(Some(s)) = sqlx::query_scalar::<_, String>(find)
        .fetch_optional(&mut *conn)
        .await
    {
        return Some(s);
    }
    if let Err(e) = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public")
        .execute(&mut *conn)
        .await
    {
        tracing::warn!(error = %e, "pg_trgm is not available: `q` searches scan their range");
        return None;
    }
    sqlx::query_scalar(find)
        .fetch_optional(&mut *conn)
        .await
        .ok()
        .flatten()
}

/// Sizes and bounds for the storage metrics, per partitioned table.
pub async fn observe(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for table in PARTITIONED {
        // The oldest data kept is the oldest partition's start: retention moves in partitions.
        let (bytes, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT (SELECT COALESCE(sum(pg_total_relation_size(relid)), 0)::int8
                       FROM pg_partition_tree($1::regclass)),
                    (SELECT min(lower_bound) FROM time_partitions WHERE parent = $1)",
        )
        .bind(table.parent)
        .fetch_one(&mut *conn)
        .await?;
        let default_rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM {}_default LIMIT 1000000) d",
            table.parent
        ))
        .fetch_one(&mut *conn)
        .await?;
        crate::telemetry::storage(table.parent, bytes, oldest, default_rows);
    }
    Ok(())
}

/// One pass at start; the caller waits for it (the consumer starts after it).
pub async fn first_pass(db: &Db, settings: &StorageSettings) -> Result<PassReport, StorageError> {
    let started = std::time::Instant::now();
    let mut conn = db.maintenance_connection().await?;
    let report = run_pass(&mut conn, settings, Utc::now()).await?;
    observe(&mut conn).await?;
    crate::telemetry::storage_maintenance(started.elapsed());
    log_report(&report);
    let _ = conn.close().await;
    Ok(report)
}

/// A pass every `maintenance_interval_secs` until `shutdown`.
pub async fn run_maintenance(db: Db, settings: StorageSettings, shutdown: CancellationToken) {
    let mut conn: Option<PgConnection> = None;
    // `first_pass` ran at start.
    let mut wait = Duration::from_secs(settings.maintenance_interval_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = Duration::from_secs(settings.maintenance_interval_secs);
        if conn.is_none() {
            match db.maintenance_connection().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "storage maintenance: no connection; retrying");
                    crate::telemetry::storage_maintenance_failed();
                    wait = Duration::from_secs(10);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = std::time::Instant::now();
        let outcome = async {
            let report = run_pass(c, &settings, Utc::now()).await?;
            observe(c).await?;
            Ok::<_, StorageError>(report)
        }
        .await;
        crate::telemetry::storage_maintenance(started.elapsed());
        match outcome {
            Ok(report) => {
                log_report(&report);
                if !report.failures.is_empty() {
                    // Locks not granted or a failed build: try again soon, not in an interval.
                    wait = wait.min(Duration::from_secs(10));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "storage maintenance pass failed; retrying");
                crate::telemetry::storage_maintenance_failed();
                conn = None;
                wait = Duration::from_secs(10);
            }
        }
    }
}

fn log_report(r: &PassReport) {
    for name in &r.dropped {
        // Labelled by table (`log_events_p20261130` → `log_events`): a bounded set.
        let table = PARTITIONED
            .iter()
            .find(|t| name.starts_with(&format!("{}_p", t.parent)))
            .map_or("other", |t| t.parent);
        crate::telemetry::partition_dropped(table);
    }
    if !r.created.is_empty() || !r.dropped.is_empty() || r.alerts_deleted > 0 {
        tracing::info!(created = ?r.created, dropped = ?r.dropped,
            alerts_deleted = r.alerts_deleted, "storage maintenance");
    }
    for f in &r.failures {
        crate::telemetry::storage_maintenance_failed();
        tracing::warn!(step = %f, "storage maintenance step failed; retried on the next pass");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_fresh_table_gets_every_day_from_the_horizon_to_two_days_ahead() {
        let now = t("2026-11-30T13:00:00Z");
        let got = missing_ranges(now, TimeDelta::hours(24), TimeDelta::days(7), 2, &[]);
        assert_eq!(got.first().unwrap().0, t("2026-11-23T00:00:00Z"));
        assert_eq!(got.last().unwrap().1, t("2026-12-03T00:00:00Z"));
        assert_eq!(got.len(), 10);
        assert!(got.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
    }

    #[test]
    fn existing_partitions_are_not_made_again() {
        let now = t("2026-11-30T13:00:00Z");
        let all = missing_ranges(now, TimeDelta::hours(24), TimeDelta::days(1), 1, &[]);
        let got = missing_ranges(now, TimeDelta::hours(24), TimeDelta::days(1), 1, &all);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_narrower_width_fills_only_what_daily_partitions_leave_open() {
        let now = t("2026-11-30T13:00:00Z");
        let today = (t("2026-11-30T00:00:00Z"), t("2026-12-01T00:00:00Z"));
        let got = missing_ranges(now, TimeDelta::hours(6), TimeDelta::hours(1), 5, &[today]);
        // Today is covered; the six-hour slots after it are made.
        assert_eq!(got.first().unwrap().0, t("2026-12-01T00:00:00Z"));
        assert!(got.iter().all(|(a, b)| *b - *a == TimeDelta::hours(6)));
    }

    #[test]
    fn a_wider_width_fills_the_gaps_around_narrower_partitions() {
        let now = t("2026-11-30T13:00:00Z");
        let piece = (t("2026-11-30T06:00:00Z"), t("2026-11-30T12:00:00Z"));
        let got = missing_ranges(now, TimeDelta::hours(24), TimeDelta::hours(1), 0, &[piece]);
        assert_eq!(
            got,
            vec![
                (t("2026-11-30T00:00:00Z"), t("2026-11-30T06:00:00Z")),
                (t("2026-11-30T12:00:00Z"), t("2026-12-01T00:00:00Z")),
            ]
        );
    }

    #[test]
    fn only_partitions_wholly_past_the_horizon_expire() {
        let day = |d: &str, e: &str| (d.to_owned(), (t(d), t(e)));
        let parts = vec![
            day("2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"),
            day("2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"),
        ];
        let got = expired(&parts, t("2026-11-21T12:00:00Z"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "2026-11-20T00:00:00Z");
    }

    #[test]
    fn slots_align_to_the_epoch_for_times_before_it_too() {
        let w = TimeDelta::hours(24);
        assert_eq!(
            slot_start(t("1969-12-31T23:00:00Z"), w),
            t("1969-12-31T00:00:00Z")
        );
        assert_eq!(
            slot_start(t("2026-11-30T00:00:00Z"), w),
            t("2026-11-30T00:00:00Z")
        );
    }

    #[test]
    fn settings_refuse_a_zero_retention() {
        let s = StorageSettings {
            retention_days: 0,
            ..StorageSettings::default()
        };
        assert!(s.validate().is_err());
    }
}
