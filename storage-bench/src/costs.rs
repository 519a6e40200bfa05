//! What each part of a live `log_events` partition costs the writer: the same rows, batch by
//! batch as the collector writes them (one binary COPY per transaction), into plain tables that
//! differ by one index or constraint each, and into one that has them all. For each: rows/s and
//! the PostgreSQL backend's own CPU per row (its scheduler time from `/proc`, so the VM's noisy
//! neighbours do not move it), and what each part adds to the bare heap. Issue 32 asks which of
//! these a served query needs while a partition is being written.
//!
//! The rows come from a factory of their own, so the load's counts and windows stay untouched.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::TimeDelta;
use logpipe_generator::events::{EventFactory, Profile};
use sqlx::{ConnectOptions, Connection, PgConnection};

use logpipe_collector::copy::CopyEncoder;

use crate::load::{copy_into, encode, encode_into};
use crate::Bench;

const SCHEMA: &str = "storage_bench_cost";

/// The columns of `log_events` as the partitioned layout declares them, without any key, index or
/// check (defaults kept: COPY leaves `stored_at` to its default).
const COLUMNS: &str = "event_id TEXT COLLATE \"C\" NOT NULL, ts TIMESTAMPTZ NOT NULL, \
    level TEXT NOT NULL, service TEXT NOT NULL, component TEXT NOT NULL DEFAULT '', \
    host TEXT NOT NULL DEFAULT '', message TEXT NOT NULL, trace_id TEXT, span_id TEXT, \
    attributes JSONB NOT NULL DEFAULT '{}'::jsonb, kafka_partition INTEGER NOT NULL, \
    kafka_offset BIGINT NOT NULL, stored_at TIMESTAMPTZ NOT NULL DEFAULT now()";

/// (table, what it has beyond the bare heap, the statements that add it).
const VARIANTS: [(&str, &str, &[&str]); 10] = [
    ("heap", "nothing: the bare heap", &[]),
    (
        "level_check",
        "the CHECK on level",
        &["ALTER TABLE level_check ADD CHECK (level IN ('TRACE','DEBUG','INFO','WARN','ERROR','FATAL'))"],
    ),
    (
        "primary_key",
        "the primary key (ts, event_id)",
        &["ALTER TABLE primary_key ADD PRIMARY KEY (ts, event_id)"],
    ),
    (
        "service_ts",
        "the B-tree (service, ts DESC)",
        &["CREATE INDEX ON service_ts (service, ts DESC)"],
    ),
    (
        "service_ts_asc",
        "the B-tree (service, ts) ascending (the alternative: read backwards for newest first)",
        &["CREATE INDEX ON service_ts_asc (service, ts)"],
    ),
    (
        "service_only",
        "a B-tree (service) alone (the alternative: equal keys deduplicated)",
        &["CREATE INDEX ON service_only (service)"],
    ),
    (
        "tail_brin",
        "the BRIN (kafka_offset, stored_at)",
        &["CREATE INDEX ON tail_brin USING brin (kafka_offset, stored_at)"],
    ),
    (
        "attrs_json",
        "attributes as json, not jsonb (the text kept as sent, checked by a parse)",
        &["ALTER TABLE attrs_json ALTER attributes DROP DEFAULT, ALTER attributes TYPE json, \
           ALTER attributes SET DEFAULT '{}'"],
    ),
    (
        "attrs_text",
        "attributes as text, not jsonb (not checked at all)",
        &["ALTER TABLE attrs_text ALTER attributes DROP DEFAULT, ALTER attributes TYPE text, \
           ALTER attributes SET DEFAULT '{}'"],
    ),
    (
        "live",
        "all of them: a live partition as written today",
        &[
            "ALTER TABLE live ADD CHECK (level IN ('TRACE','DEBUG','INFO','WARN','ERROR','FATAL'))",
            "ALTER TABLE live ADD PRIMARY KEY (ts, event_id)",
            "CREATE INDEX ON live (service, ts DESC)",
            "CREATE INDEX ON live USING brin (kafka_offset, stored_at)",
        ],
    ),
];

/// Nanoseconds a process has run on a CPU (its main thread: a PostgreSQL backend has one), or
/// none where the server's processes cannot be read (another host).
pub(crate) fn cpu_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One variant's connection and what its COPYs took.
struct Writer {
    conn: PgConnection,
    pid: i32,
    wall: Duration,
    cpu_ns: Option<u64>,
}

impl Writer {
    async fn copy(&mut self, table: &str, data: &[u8]) -> anyhow::Result<()> {
        let before = cpu_ns(self.pid);
        self.wall += copy_into(&mut self.conn, table, data).await?;
        self.cpu_ns = match (self.cpu_ns, before, cpu_ns(self.pid)) {
            (Some(sum), Some(b), Some(a)) => Some(sum + a.saturating_sub(b)),
            _ => None,
        };
        Ok(())
    }
}

impl Bench {
    /// The cost of each index and constraint of a live partition, against the bare heap.
    pub(crate) async fn index_costs(&mut self) -> anyhow::Result<()> {
        let total = self.args.ratio_rows.min(self.args.rows).max(1);
        let batch = self.args.batch_rows.max(1);
        let mut setup = self.base.connect().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .execute(&mut setup)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {SCHEMA}"))
            .execute(&mut setup)
            .await?;
        let mut writers = Vec::new();
        for (table, _, statements) in VARIANTS {
            let mut conn = self
                .base
                .clone()
                .options([("search_path", SCHEMA)])
                .connect()
                .await?;
            sqlx::query(&format!("CREATE TABLE {table} ({COLUMNS})"))
                .execute(&mut conn)
                .await?;
            for s in statements {
                sqlx::query(s).execute(&mut conn).await?;
            }
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await?;
            writers.push(Writer {
                conn,
                pid,
                wall: Duration::ZERO,
                cpu_ns: cpu_ns(pid).map(|_| 0),
            });
        }
        let mut factory = EventFactory::new(11, "cost-host", Profile::Steady);
        let (mut done, mut round) = (0u64, 0usize);
        while done < total {
            let n = (total - done).min(batch as u64) as usize;
            let rows: Vec<_> = (0..n as u64)
                .map(|k| {
                    let i = done + k;
                    let ts = self.end - TimeDelta::milliseconds((total - i) as i64);
                    let mut e = factory.next_event(ts, Duration::from_secs(i / 10_000));
                    e.timestamp = ts;
                    e.event_id = format!("cost-{i:010}");
                    let e = logpipe_common::RawEvent::from_event(&e)
                        .expect("a generated event is valid");
                    (e, (i % 6) as i32, (i / 6) as i64)
                })
                .collect();
            let data = encode(&rows);
            // A json or text column takes the JSON text without jsonb's version byte.
            let text = encode_into(CopyEncoder::for_json_attributes(n), &rows);
            // Each batch starts with another variant, so the machine's drift falls on all alike.
            for k in 0..writers.len() {
                let v = (round + k) % writers.len();
                let table = VARIANTS[v].0;
                let data = if table.starts_with("attrs_") {
                    &text
                } else {
                    &data
                };
                writers[v].copy(table, data).await?;
            }
            done += n as u64;
            round += 1;
        }
        self.report_costs(total, &writers);
        for w in writers {
            w.conn.close().await?;
        }
        if !self.args.keep {
            sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
                .execute(&mut setup)
                .await?;
        }
        setup.close().await?;
        Ok(())
    }

    fn report_costs(&mut self, total: u64, writers: &[Writer]) {
        let per_row_us = |w: &Writer| w.cpu_ns.map(|ns| ns as f64 / 1e3 / total as f64);
        let heap = per_row_us(&writers[0]);
        let _ = writeln!(
            self.out,
            "## What each part of a live partition costs the writer\n\n{total} rows in batches of \
             {}, one binary COPY per transaction, into tables that differ by one part each \
             (`storage-bench/src/costs.rs`). CPU is the PostgreSQL backend's own (WAL writing \
             and checkpoints run elsewhere and are not in it).\n\n| table has | rows/s | backend \
             CPU µs/row | added to the bare heap |\n|---|---:|---:|---:|",
            self.args.batch_rows
        );
        for ((_, what, _), w) in VARIANTS.iter().zip(writers) {
            let cpu = per_row_us(w);
            let fmt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
            let added = match (cpu, heap) {
                (Some(c), Some(h)) if w.pid != writers[0].pid => format!("{:+.2}", c - h),
                _ => "".into(),
            };
            let _ = writeln!(
                self.out,
                "| {what} | {:.0} | {} | {added} |",
                total as f64 / w.wall.as_secs_f64().max(1e-9),
                fmt(cpu),
            );
        }
        let _ = writeln!(self.out);
        println!("storage-bench: index costs measured on {total} rows");
    }
}
