//! The storage benchmark behind `./storage-bench.sh`: PostgreSQL alone, no broker. It loads
//! synthetic events (the generator's own factory, in time order over `--days`) with the
//! collector's binary COPY, and reports in one run:
//!
//! - the COPY rate into the partitioned layout against the old unpartitioned one, the same rows
//!   into both, batch by batch as the collector writes (the ratio);
//! - the bulk load of the rest, the window rows, and the text-index build of the sealed days;
//! - p50/p95 of each query the API serves, through the collector's own router, with the
//!   `EXPLAIN (ANALYZE)` of each (the evidence for every index);
//! - the time to drop a day, and the size on disk per million rows;
//! - the stored rate of a paced writer alone and with eight clients running worst-case queries.
//!
//! Nothing here is a pass/fail on time (speed is reported, not asserted); the exit code fails only
//! on wrong answers: a query that is not 200 where it should be, rows that do not add up.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use logpipe_collector::config::{DatabaseSettings, StorageSettings};
use logpipe_collector::copy::{CopyEncoder, LOG_EVENT_COLUMNS};
use logpipe_collector::db::{Db, StoredEvent};
use logpipe_collector::query::{events_query, EventsFilter, STATS_SQL, TOP_MESSAGES_SQL};
use logpipe_collector::storage;
use logpipe_common::{Level, LogEvent};
use logpipe_generator::events::{EventFactory, Profile};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

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
            crate::report::machine(),
            crate::report::git_commit(),
        );
    }

    /// The next `n` events, in time order, with their Kafka coordinates; counted into windows.
    fn make(&mut self, n: usize) -> Vec<(LogEvent, i32, i64)> {
        let span_ms = (self.end - self.start).num_milliseconds() as u64;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.made;
            self.made += 1;
            let ts =
                self.start + TimeDelta::milliseconds((i * span_ms / self.args.rows.max(1)) as i64);
            let elapsed = Duration::from_secs((ts - self.start).num_seconds().max(0) as u64);
            let mut e = self.factory.next_event(ts, elapsed);
            e.timestamp = ts;
            e.event_id = format!("sb-{i:010}");
            for width in [10i32, 60] {
                let w = i64::from(width);
                let start = ts.timestamp().div_euclid(w) * w;
                *self
                    .windows
                    .entry((width, start, e.service.clone(), e.level.as_str()))
                    .or_default() += 1;
            }
            out.push((e, (i % 6) as i32, (i / 6) as i64));
        }
        out
    }

    /// The same rows into both layouts, batch by batch, alternating which goes first.
    async fn ratio(&mut self) -> anyhow::Result<()> {
        let total = self.args.ratio_rows.min(self.args.rows);
        let batch = self.args.batch_rows.max(1);
        let (mut t_part, mut t_flat) = (Duration::ZERO, Duration::ZERO);
        let mut part = self.part.acquire().await?.detach();
        let mut flat = self.flat.acquire().await?.detach();
        let mut done = 0u64;
        let mut round = 0u64;
        while done < total {
            let n = (total - done).min(batch as u64) as usize;
            let rows = self.make(n);
            let data = encode(&rows);
            if round.is_multiple_of(2) {
                t_flat += copy_batch(&mut flat, &data).await?;
                t_part += copy_batch(&mut part, &data).await?;
            } else {
                t_part += copy_batch(&mut part, &data).await?;
                t_flat += copy_batch(&mut flat, &data).await?;
            }
            done += n as u64;
            round += 1;
        }
        let rate = |t: Duration| total as f64 / t.as_secs_f64().max(1e-9);
        let (rp, rf) = (rate(t_part), rate(t_flat));
        let _ = writeln!(
            self.out,
            "## Ingest: partitioned vs unpartitioned\n\n| layout | rows | COPY rate (rows/s) |\n\
             |---|---:|---:|\n| unpartitioned (the old layout: PK event_id, B-trees ts and \
             service+ts) | {total} | {rf:.0} |\n| partitioned by day (PK ts+event_id, B-tree \
             service+ts) | {total} | {rp:.0} |\n\n**Ratio partitioned / unpartitioned: {:.2}** \
             (goal >= 0.95).\n",
            rp / rf
        );
        println!(
            "storage-bench: ratio {:.2} ({rp:.0}/s vs {rf:.0}/s)",
            rp / rf
        );
        Ok(())
    }

    /// The rest of the rows into the partitioned layout (bigger COPYs), then the window rows.
    async fn bulk_load(&mut self) -> anyhow::Result<()> {
        let mut conn = self.part.acquire().await?.detach();
        let started = Instant::now();
        let first = self.made;
        let mut last_print = Instant::now();
        // PostgreSQL's time alone: making the events takes this one thread longer than storing.
        let mut copying = Duration::ZERO;
        while self.made < self.args.rows {
            let n = (self.args.rows - self.made).min(50_000) as usize;
            let rows = self.make(n);
            copying += copy_batch(&mut conn, &encode(&rows)).await?;
            if last_print.elapsed() > Duration::from_secs(30) {
                last_print = Instant::now();
                println!(
                    "storage-bench: loaded {} of {} rows",
                    self.made, self.args.rows
                );
            }
        }
        let loaded = self.made - first;
        let took = started.elapsed();
        let windows_started = Instant::now();
        let n_windows = self.insert_windows().await?;
        let windows_took = windows_started.elapsed();
        let analyze_started = Instant::now();
        sqlx::query("VACUUM (ANALYZE) log_events")
            .execute(&mut conn)
            .await?;
        sqlx::query("VACUUM (ANALYZE) window_stats")
            .execute(&mut conn)
            .await?;
        let _ = writeln!(
            self.out,
            "Bulk load of the other {loaded} rows (COPY of 50,000): {:.0} rows/s counting the \
             COPYs alone ({:.0} s of {:.0} s; the rest is making the events); {n_windows} window \
             rows in {:.1} s; VACUUM ANALYZE {:.0} s.\n",
            loaded as f64 / copying.as_secs_f64().max(1e-9),
            copying.as_secs_f64(),
            took.as_secs_f64(),
            windows_took.as_secs_f64(),
            analyze_started.elapsed().as_secs_f64()
        );
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events")
            .fetch_one(&mut conn)
            .await?;
        let want = self.args.rows as i64;
        self.check(stored == want, || {
            format!("{stored} rows stored, {want} loaded")
        });
        let default_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events_default")
            .fetch_one(&mut conn)
            .await?;
        self.check(default_rows == 0, || {
            format!("{default_rows} rows in the default partition: a day without its partition")
        });
        conn.close().await?;
        Ok(())
    }

    async fn insert_windows(&mut self) -> anyhow::Result<usize> {
        let rows: Vec<_> = self.windows.drain().collect();
        for chunk in rows.chunks(50_000) {
            let mut widths = Vec::with_capacity(chunk.len());
            let mut starts = Vec::with_capacity(chunk.len());
            let mut services = Vec::with_capacity(chunk.len());
            let mut levels = Vec::with_capacity(chunk.len());
            let mut counts = Vec::with_capacity(chunk.len());
            for ((w, s, svc, lvl), n) in chunk {
                widths.push(*w);
                starts.push(DateTime::from_timestamp(*s, 0).unwrap_or_default());
                services.push(svc.as_str());
                levels.push(*lvl);
                counts.push(*n);
            }
            sqlx::query(
                "INSERT INTO window_stats (width_secs, slide_secs, window_start, service, level,
                                           event_count)
                 SELECT w, w, s, sv, l, n
                   FROM UNNEST($1::int4[], $2::timestamptz[], $3::text[], $4::text[], $5::int8[])
                        AS u(w, s, sv, l, n)",
            )
            .bind(&widths)
            .bind(&starts)
            .bind(&services)
            .bind(&levels)
            .bind(&counts)
            .execute(&self.part)
            .await?;
        }
        Ok(rows.len())
    }

    /// The maintenance pass the collector runs, now with text indexes: it builds the trigram
    /// index of every sealed day.
    async fn text_indexes(&mut self) -> anyhow::Result<()> {
        let mut conn = self.db.maintenance_connection().await?;
        let started = Instant::now();
        let report =
            storage::run_pass(&mut conn, &storage_settings(&self.args, true), Utc::now()).await?;
        let took = started.elapsed();
        let failures = report.failures.join("; ");
        self.check(report.failures.is_empty(), || {
            format!("maintenance: {failures}")
        });
        sqlx::query("ANALYZE log_events").execute(&mut conn).await?;
        conn.close().await?;
        let _ = writeln!(
            self.out,
            "Text (trigram) index of the {} sealed days built by the maintenance pass: {:.0} s \
             ({:.1} s a day); the day being written has none.\n",
            report.text_indexed.len(),
            took.as_secs_f64(),
            took.as_secs_f64() / report.text_indexed.len().max(1) as f64
        );
        Ok(())
    }

    async fn sizes(&mut self) -> anyhow::Result<()> {
        let part_rows = self.args.rows as f64 / 1e6;
        let flat_rows = self.args.ratio_rows.min(self.args.rows) as f64 / 1e6;
        // Heap (with TOAST), then each index family, summed over partitions.
        let part: Vec<(String, i64)> = sqlx::query_as(
            "SELECT CASE WHEN c.relkind IN ('r', 'p') THEN 'table (heap + TOAST)'
                         WHEN c.relname LIKE '%message_trgm' THEN 'index: message trigram (sealed days)'
                         WHEN c.relname LIKE '%pkey' THEN 'index: primary key (ts, event_id)'
                         ELSE 'index: (service, ts)' END AS part,
                    sum(CASE WHEN c.relkind IN ('r', 'p') THEN pg_table_size(c.oid)
                             ELSE pg_relation_size(c.oid) END)::int8
               FROM pg_class c
              WHERE c.relnamespace = current_schema()::regnamespace
                AND c.relname LIKE 'log_events%' AND c.relkind IN ('r', 'p', 'i')
              GROUP BY 1 ORDER BY 1 DESC",
        )
        .fetch_all(&self.part)
        .await?;
        let flat: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('log_events')::int8")
            .fetch_one(&self.flat)
            .await?;
        let mut total = 0i64;
        let _ = writeln!(
            self.out,
            "## Size on disk\n\n| partitioned layout | bytes | MB per million rows |\n|---|---:|---:|"
        );
        for (what, bytes) in &part {
            total += bytes;
            let _ = writeln!(
                self.out,
                "| {what} | {bytes} | {:.1} |",
                *bytes as f64 / 1e6 / part_rows
            );
        }
        let _ = writeln!(
            self.out,
            "| **all** | {total} | **{:.1}** |\n\nThe unpartitioned layout with the same first rows: \
             {:.1} MB per million rows (no text index).\n",
            total as f64 / 1e6 / part_rows,
            flat as f64 / 1e6 / flat_rows.max(1e-9)
        );
        Ok(())
    }

    /// Each query the API serves, through the collector's router, `repeat` times.
    async fn queries(&mut self) -> anyhow::Result<()> {
        let (addr, stop) = serve_api(&self.db).await?;
        let client = reqwest::Client::new();
        let now = Utc::now();
        let day_end = storage::slot_start(now, TimeDelta::hours(24)) - TimeDelta::days(1);
        let day = (day_end - TimeDelta::days(1), day_end);
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let last_day = format!("from={}&to={}", rfc(now - TimeDelta::days(1)), rfc(now));
        let sealed = format!("from={}&to={}", rfc(day.0), rfc(day.1));
        let queries: Vec<(&str, String, Option<EventsFilter>)> = vec![
            (
                "events, last hour",
                "/api/v1/events".into(),
                Some(filter(now - TimeDelta::hours(1), now)),
            ),
            (
                "events, one service, last hour",
                format!("/api/v1/events?service={SERVICE}"),
                Some(EventsFilter {
                    service: Some(SERVICE.into()),
                    ..filter(now - TimeDelta::hours(1), now)
                }),
            ),
            (
                "events, WARN and above, last hour",
                "/api/v1/events?min_level=WARN".into(),
                Some(EventsFilter {
                    min_level: Some(Level::Warn),
                    ..filter(now - TimeDelta::hours(1), now)
                }),
            ),
            (
                "events, FATAL, last 24 h",
                format!("/api/v1/events?level=FATAL&{last_day}"),
                Some(EventsFilter {
                    level: Some(Level::Fatal),
                    ..filter(now - TimeDelta::days(1), now)
                }),
            ),
            (
                "q (a match), one sealed day",
                format!("/api/v1/events?q=charge%20declined&{sealed}"),
                Some(EventsFilter {
                    text: Some(TERM_MATCH.into()),
                    ..filter(day.0, day.1)
                }),
            ),
            (
                "q (no match), one sealed day",
                format!("/api/v1/events?q={TERM_NONE}&{sealed}"),
                Some(EventsFilter {
                    text: Some(TERM_NONE.into()),
                    ..filter(day.0, day.1)
                }),
            ),
            (
                "q (no match), last 24 h (includes the day being written)",
                format!("/api/v1/events?q={TERM_NONE}&{last_day}"),
                Some(EventsFilter {
                    text: Some(TERM_NONE.into()),
                    ..filter(now - TimeDelta::days(1), now)
                }),
            ),
            ("stats, one day", format!("/api/v1/stats?{last_day}"), None),
            (
                "stats, one service, one day",
                format!("/api/v1/stats/{SERVICE}?{last_day}"),
                None,
            ),
        ];
        let _ = writeln!(
            self.out,
            "## Queries (through the collector's API, {} runs each after a warm-up)\n\n\
             | query | p50 ms | p95 ms | max ms | rows |\n|---|---:|---:|---:|---:|",
            self.args.repeat
        );
        for (name, path, explain) in &queries {
            let url = format!("http://{addr}{path}");
            let mut ms = Vec::new();
            let mut rows = 0usize;
            let mut answer = None;
            for i in 0..=self.args.repeat {
                let started = Instant::now();
                let r = client.get(&url).send().await?;
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let took = started.elapsed().as_secs_f64() * 1e3;
                if status != 200 {
                    answer = Some(format!("{name}: {status} {body}"));
                    break;
                }
                rows = body["events"]
                    .as_array()
                    .map(Vec::len)
                    .or_else(|| body["total"].as_i64().map(|n| n as usize))
                    .unwrap_or(0);
                if i > 0 {
                    ms.push(took);
                }
            }
            self.check(answer.is_none(), || answer.unwrap_or_default());
            let t = timing(ms);
            let _ = writeln!(
                self.out,
                "| {name} | {:.1} | {:.1} | {:.1} | {rows} |",
                t.p50, t.p95, t.max
            );
            println!(
                "storage-bench: {name}: p50 {:.1} ms p95 {:.1} ms",
                t.p50, t.p95
            );
            let plan = match explain {
                Some(f) => self.explain_events(f).await?,
                None => {
                    self.explain_stats(now, path.contains(SERVICE).then_some(SERVICE))
                        .await?
                }
            };
            let _ = writeln!(self.explain, "### {name}\n\n```\n{plan}\n```\n");
        }
        stop.cancel();
        let _ = writeln!(
            self.out,
            "\n`rows` is the page's length (events) or the events counted (stats). The plans, \
             with the index each query uses, are in `explain.md`.\n"
        );
        Ok(())
    }

    async fn explain_events(&self, f: &EventsFilter) -> anyhow::Result<String> {
        let mut q = events_query("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ", f);
        let lines: Vec<String> = q
            .build_query_scalar()
            .fetch_all(self.db.query_pool())
            .await?;
        Ok(lines.join("\n"))
    }

    /// The stats endpoints' two queries over the last day: counts, then top messages.
    async fn explain_stats(
        &self,
        now: DateTime<Utc>,
        service: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut lines: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {STATS_SQL}"
        ))
        .bind(logpipe_collector::query::stats_width(
            &[10, 60],
            TimeDelta::days(1),
        ))
        .bind(now - TimeDelta::days(1))
        .bind(now)
        .bind(service)
        .fetch_all(self.db.query_pool())
        .await?;
        lines.push(String::new());
        lines.extend(
            sqlx::query_scalar::<_, String>(&format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {TOP_MESSAGES_SQL}"
            ))
            .bind(now - TimeDelta::days(1))
            .bind(now)
            .bind(service)
            .bind(logpipe_collector::query::TOP_MESSAGES_SAMPLE)
            .fetch_all(self.db.query_pool())
            .await?,
        );
        Ok(lines.join("\n"))
    }

    /// A writer paced at `ingest_rate` (batches every 100 ms, as the collector commits), alone
    /// and then with `query_clients` clients running worst-case queries without pause.
    async fn contention(&mut self) -> anyhow::Result<()> {
        let (addr, stop_api) = serve_api(&self.db).await?;
        let alone = self.paced_writer().await?;
        let stop = CancellationToken::new();
        let client = reqwest::Client::new();
        let now = Utc::now();
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        // The widest range the API allows a scanning query, ending a little after now (the
        // writer's rows are dated now).
        let to = now + TimeDelta::minutes(5);
        let from = to - TimeDelta::hours(i64::from(self.max_range_hours()));
        let range = format!("from={}&to={}", rfc(from), rfc(to));
        let worst = [
            format!("/api/v1/events?q={TERM_NONE}&{range}"),
            format!("/api/v1/stats?{range}"),
            format!("/api/v1/events?level=FATAL&{range}"),
        ];
        let mut clients = Vec::new();
        for i in 0..self.args.query_clients {
            let url = format!("http://{addr}{}", worst[i % worst.len()]);
            let (client, stop) = (client.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut statuses: HashMap<u16, u64> = HashMap::new();
                while !stop.is_cancelled() {
                    let status = match client.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            }));
        }
        let loaded = self.paced_writer().await?;
        stop.cancel();
        let mut statuses: HashMap<u16, u64> = HashMap::new();
        for c in clients {
            for (s, n) in c.await? {
                *statuses.entry(s).or_default() += n;
            }
        }
        stop_api.cancel();
        let mut seen: Vec<_> = statuses.into_iter().collect();
        seen.sort();
        let wrong = seen
            .iter()
            .find(|(s, _)| ![200, 503, 504].contains(s))
            .map(|(s, _)| *s);
        self.check(wrong.is_none(), || {
            format!("a worst-case query answered {wrong:?} during ingest")
        });
        let cut = 1.0 - loaded / alone;
        let _ = writeln!(
            self.out,
            "## Reads against writes\n\nA writer paced at {} rows/s (a COPY every 100 ms), {} s \
             alone, then {} s while {} clients run worst-case queries without pause (`q` with no \
             match over {} days, stats over {} days, FATAL over {} days), through the API (the \
             query pool: 2 connections, 5 s statement timeout). The ranges are the longest the API \
             allows a scanning query ({} h).\n\n| | stored rows/s |\n|---|---:|\n\
             | writer alone | {alone:.0} |\n| with the queries | {loaded:.0} |\n\n**Stored rate cut \
             by {:.1} %** (goal < 10 %). Query answers: {}.\n",
            self.args.ingest_rate,
            self.args.ingest_secs,
            self.args.ingest_secs,
            self.args.query_clients,
            self.args.days,
            self.args.days,
            self.args.days,
            self.max_range_hours(),
            cut * 100.0,
            seen.iter()
                .map(|(s, n)| format!("{n} × {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("storage-bench: writer {alone:.0}/s alone, {loaded:.0}/s under queries");
        Ok(())
    }

    fn max_range_hours(&self) -> u32 {
        DatabaseSettings::default().query_max_range_hours
    }

    /// Rows stored per second by a writer paced at `ingest_rate` for `ingest_secs`, rows dated now.
    async fn paced_writer(&mut self) -> anyhow::Result<f64> {
        let mut conn = self.part.acquire().await?.detach();
        let per_tick = (self.args.ingest_rate / 10).max(1) as usize;
        let mut factory = EventFactory::new(self.made, "bench-writer", Profile::Steady);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.args.ingest_secs);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut stored = 0u64;
        while Instant::now() < deadline {
            tick.tick().await;
            let now = Utc::now();
            let rows: Vec<(LogEvent, i32, i64)> = (0..per_tick)
                .map(|_| {
                    let i = self.made;
                    self.made += 1;
                    let mut e = factory.next_event(now, Duration::ZERO);
                    e.event_id = format!("sb-{i:010}");
                    (e, 0, i as i64)
                })
                .collect();
            copy_batch(&mut conn, &encode(&rows)).await?;
            stored += rows.len() as u64;
        }
        conn.close().await?;
        Ok(stored as f64 / started.elapsed().as_secs_f64())
    }

    /// Retention's step: the oldest day's partition dropped, as the maintenance task drops it.
    async fn drop_a_day(&mut self) -> anyhow::Result<()> {
        let mut conn = self.db.maintenance_connection().await?;
        // The oldest partition holding rows (older ones were made empty for the retention window).
        let mut oldest = None;
        for (name, _) in storage::partitions_of(&mut conn, "log_events").await? {
            let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{name}\""))
                .fetch_one(&mut conn)
                .await?;
            if rows > 0 {
                oldest = Some((name, rows));
                break;
            }
        }
        let Some((oldest, rows)) = oldest else {
            bail!("no partition with rows to drop");
        };
        let oldest = &oldest;
        let before: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events")
            .fetch_one(&mut conn)
            .await?;
        let started = Instant::now();
        storage::drop_partition(&mut conn, &storage_settings(&self.args, true), oldest).await?;
        let took = started.elapsed();
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM log_events")
            .fetch_one(&mut conn)
            .await?;
        self.check(before - after == rows, || {
            format!(
                "dropping {oldest} removed {} rows, it held {rows}",
                before - after
            )
        });
        conn.close().await?;
        let _ = writeln!(
            self.out,
            "## Retention\n\nDropping a day (`{oldest}`, {rows} rows): **{:.0} ms** (goal < 1 s).\n",
            took.as_secs_f64() * 1e3
        );
        Ok(())
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

fn filter(from: DateTime<Utc>, to: DateTime<Utc>) -> EventsFilter {
    EventsFilter {
        from,
        to,
        service: None,
        level: None,
        min_level: None,
        text: None,
        cursor: None,
        limit: logpipe_collector::query::DEFAULT_LIMIT,
    }
}

fn encode(rows: &[(LogEvent, i32, i64)]) -> Vec<u8> {
    let mut enc = CopyEncoder::with_capacity(rows.len());
    for (event, partition, offset) in rows {
        enc.row(&StoredEvent {
            event,
            partition: *partition,
            offset: *offset,
        });
    }
    enc.finish()
}

/// One transaction with one binary COPY, as the collector's batch writes its rows.
async fn copy_batch(conn: &mut PgConnection, data: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY log_events ({LOG_EVENT_COLUMNS}) FROM STDIN WITH (FORMAT binary)"
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(started.elapsed())
}

/// The collector's query router on a free port, on this benchmark's database (no consumer).
async fn serve_api(db: &Db) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    use logpipe_collector::http::{router, AppState};
    let state = AppState {
        db: db.clone(),
        health: Arc::new(Default::default()),
        metrics: logpipe_common::telemetry::metrics_handle(),
        filter: logpipe_collector::filter::FilterHandle::new(Default::default(), None)?,
        stats_windows_secs: vec![10, 60],
        max_range_hours: DatabaseSettings::default().query_max_range_hours,
        max_page_bytes: DatabaseSettings::default().query_max_response_bytes,
        streams: Arc::new(logpipe_common::permits::StreamPermits::new(64, 64)),
        stream: Default::default(),
        group_id: "storage-bench".into(),
        topic: "storage-bench".into(),
        shutdown: CancellationToken::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state, Default::default()))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    });
    Ok((addr, stop))
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
