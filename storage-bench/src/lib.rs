//! The storage benchmark behind `./storage-bench.sh`: PostgreSQL alone, no broker. It loads
//! synthetic events (the generator's own factory, in time order over `--days`) with the
//! collector's binary COPY, and reports in one run:
//!
//! - the COPY rate into the partitioned layout against the old unpartitioned one, the same rows
//!   into both, batch by batch as the collector writes (the ratio);
//! - what each index and constraint of a live partition costs the writer, in rows/s and in the
//!   PostgreSQL backend's CPU per row, against the bare heap (`costs`);
//! - what the collector's per-batch statements (offset moves, window upserts, alert findings) add
//!   to the COPY of the same rows (`batches`);
//! - the bulk load of the rest, the window rows, and the text-index build of the sealed days;
//! - p50/p95 of each query the API serves, through the collector's own router, with the
//!   `EXPLAIN (ANALYZE)` of each (the evidence for every index);
//! - the time to drop a day, and the size on disk per million rows;
//! - the stored rate of a paced writer alone and with eight clients running worst-case queries.
//!
//! This file holds the arguments, the run's order and its report; `load` makes and loads the rows
//! (the ratio, the bulk load, windows, text index, sizes, the paced writer, the dropped day) and
//! `queries` times the API's queries alone and under a writer.
//!
//! Nothing here is a pass/fail on time (speed is reported, not asserted); the exit code fails only
//! on wrong answers: a query that is not 200 where it should be, rows that do not add up.

// Functions stay under 100 lines, as in the services (clippy.toml).
#![warn(clippy::too_many_lines)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use logpipe_collector::config::{DatabaseSettings, StorageSettings};
use logpipe_collector::db::Db;
use logpipe_collector::storage;
use logpipe_generator::events::{EventFactory, Profile};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

mod batches;
mod costs;
mod load;
mod queries;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "logpipe-storage-bench",
    about = "Storage benchmark: partitioned vs unpartitioned COPY, query latencies, drop, size"
)]
pub struct StorageArgs {
    #[arg(
        long,
        env = "LOGPIPE_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/logpipe_bench"
    )]
    pub database_url: String,
    /// Rows loaded into the partitioned layout.
    #[arg(long, default_value_t = 50_000_000)]
    pub rows: u64,
    /// The days the rows are spread over, ending now.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Rows copied into both layouts for the ingest ratio (the first ones of the load).
    #[arg(long, default_value_t = 2_000_000)]
    pub ratio_rows: u64,
    /// Rows per COPY transaction in the ratio phase (the collector's `batch_max_events`).
    #[arg(long, default_value_t = 5_000)]
    pub batch_rows: usize,
    /// Runs of each query (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// The paced writer's rate in the contention phase (0 skips that phase).
    #[arg(long, default_value_t = 50_000)]
    pub ingest_rate: u64,
    /// Seconds of each half of the contention phase (writer alone, then with queries).
    #[arg(long, default_value_t = 20)]
    pub ingest_secs: u64,
    /// Concurrent clients running worst-case queries during the second half.
    #[arg(long, default_value_t = 8)]
    pub query_clients: usize,
    #[arg(long, default_value = "storage-bench-report")]
    pub report_dir: PathBuf,
    /// Keep the benchmark's schemas afterwards (to inspect them with psql).
    #[arg(long)]
    pub keep: bool,
}

const PART: &str = "storage_bench_part";
const FLAT: &str = "storage_bench_flat";
/// On-disk bytes per row seen here with every index (heap ~300, B-trees ~90, trigram ~250), with
/// room to spare: the run refuses to start without it.
const BYTES_PER_ROW_NEEDED: u64 = 900;
const TERM_MATCH: &str = "charge declined";
const TERM_NONE: &str = "zq-no-such-text";
const SERVICE: &str = "payments";

/// Quantiles of repeated runs, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

pub fn timing(mut ms: Vec<f64>) -> Timing {
    if ms.is_empty() {
        return Timing::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Timing {
        p50: at(0.5),
        p95: at(0.95),
        max: ms[ms.len() - 1],
    }
}

struct Bench {
    args: StorageArgs,
    base: PgConnectOptions,
    part: PgPool,
    flat: PgPool,
    db: Db,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    factory: EventFactory,
    /// Rows made so far (the next row's index).
    made: u64,
    /// (width, window start, service, level) → events: the window rows, as the collector counts.
    windows: HashMap<(i32, i64, String, &'static str), i64>,
    out: String,
    explain: String,
    checks: usize,
    errors: Vec<String>,
    pg_version: String,
}

pub async fn run(args: StorageArgs) -> anyhow::Result<bool> {
    let base: PgConnectOptions = args.database_url.parse().context("database url")?;
    check_disk(&base, args.rows).await?;
    let mut conn = base.connect().await.context("connect")?;
    for schema in [PART, FLAT] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    let settings = storage_settings(&args, false);
    let db = Db::connect(&DatabaseSettings {
        url: args.database_url.clone(),
        schema: PART.into(),
        ..DatabaseSettings::default()
    })
    .await
    .context("the partitioned layout")?;
    storage::first_pass(&db, &settings).await?;
    let flat = schema_pool(&base, FLAT, 2).await?;
    sqlx::query(&format!("CREATE SCHEMA {FLAT}"))
        .execute(&flat)
        .await?;
    old_layout().run(&flat).await.context("the old layout")?;
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&flat)
        .await?;
    let end = Utc::now();
    let mut b = Bench {
        pg_version,
        part: schema_pool(&base, PART, 4).await?,
        flat,
        db,
        start: end - TimeDelta::days(i64::from(args.days)),
        end,
        factory: EventFactory::new(7, "bench-host", Profile::Steady),
        made: 0,
        windows: HashMap::new(),
        out: String::new(),
        explain: String::new(),
        checks: 0,
        errors: Vec::new(),
        base,
        args,
    };
    b.header();
    b.ratio().await?;
    b.index_costs().await?;
    b.batch_costs().await?;
    b.bulk_load().await?;
    b.text_indexes().await?;
    b.sizes().await?;
    b.queries().await?;
    if b.args.ingest_rate > 0 {
        b.contention().await?;
    }
    b.drop_a_day().await?;
    b.finish().await
}

fn storage_settings(args: &StorageArgs, text_index: bool) -> StorageSettings {
    StorageSettings {
        // Every loaded day stays: retention is measured by dropping one on purpose.
        retention_days: args.days + 2,
        window_retention_days: args.days + 2,
        failed_login_retention_days: args.days + 2,
        text_index,
        ..StorageSettings::default()
    }
}

/// The layout before time partitions: the migrations older than the partitioning one.
fn old_layout() -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            logpipe_collector::db::migrator()
                .iter()
                .filter(|m| m.version < 20261130000000)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

async fn schema_pool(base: &PgConnectOptions, schema: &str, n: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(n)
        .connect_with(base.clone().options([("search_path", schema)]))
        .await?)
}

/// Refuse to start when the database's disk cannot hold the run.
async fn check_disk(base: &PgConnectOptions, rows: u64) -> anyhow::Result<()> {
    let mut conn = base.connect().await.context("connect to PostgreSQL")?;
    let dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail", &dir])
        .output()
        .context("df")?;
    let free: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df's answer")?;
    let need = rows * BYTES_PER_ROW_NEEDED;
    if free < need {
        bail!(
            "{rows} rows need about {} GB free under {dir}; {} GB are (use --rows)",
            need / 1_000_000_000,
            free / 1_000_000_000
        );
    }
    println!(
        "storage-bench: {} GB free under {dir}, about {} GB needed",
        free / 1_000_000_000,
        need / 1_000_000_000
    );
    Ok(())
}
impl Bench {
    fn header(&mut self) {
        let a = &self.args;
        let _ = writeln!(
            self.out,
            "# Storage benchmark\n\n{} rows over {} days ({} .. {}), the generator's steady \
             profile; ratio on the first {} rows in batches of {}; PostgreSQL {}.\n\nMachine: {}; \
             commit {}.\n",
            a.rows,
            a.days,
            self.start.format("%Y-%m-%d %H:%M"),
            self.end.format("%Y-%m-%d %H:%M"),
            a.ratio_rows.min(a.rows),
            a.batch_rows,
            self.pg_version,
            logpipe_common::host::machine(),
            logpipe_common::host::git_commit(),
        );
    }

    async fn finish(mut self) -> anyhow::Result<bool> {
        if !self.errors.is_empty() {
            let _ = writeln!(self.out, "## Errors\n");
            for e in &self.errors {
                let _ = writeln!(self.out, "- {e}");
            }
        }
        std::fs::create_dir_all(&self.args.report_dir)?;
        std::fs::write(self.args.report_dir.join("summary.md"), &self.out)?;
        std::fs::write(
            self.args.report_dir.join("explain.md"),
            format!("# Query plans (EXPLAIN ANALYZE)\n\n{}", self.explain),
        )?;
        println!("{}", self.out);
        println!(
            "storage-bench: report in {}",
            self.args.report_dir.display()
        );
        if !self.args.keep {
            let mut conn = self.base.connect().await?;
            for schema in [PART, FLAT] {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await?;
            }
        }
        // The test command counts this line with the others.
        println!(
            "storage-bench: {} passed, {} failed",
            self.checks - self.errors.len(),
            self.errors.len()
        );
        Ok(self.errors.is_empty())
    }

    /// A check of an answer (not of a time): counted, and its message kept when it fails.
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.errors.push(message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_reads_quantiles_from_sorted_runs() {
        let t = timing((1..=100).map(f64::from).collect());
        assert_eq!(t.p50, 51.0);
        assert_eq!(t.p95, 95.0);
        assert_eq!(t.max, 100.0);
        assert_eq!(timing(Vec::new()).p50, 0.0);
    }
}
