//! What the collector's batch adds to its COPY (issue 32 item 3, the per-batch statements): the
//! same batches written five ways, each into a migrated schema of its own (the real partitioned
//! table, every index) through a pool of one connection, whose backend's CPU is read as in
//! `costs`. The layers, each the one before plus one part of what `Db::write_batch` commits:
//!
//! 1. the rows alone: one COPY per transaction;
//! 2. `Db::write_batch` with the rows and the offset moves: one fenced `UPDATE` for every partition
//!    (a fenced `UPDATE` per partition and a savepoint around the COPY before 2026-12-08);
//! 3. and the window deltas of those rows as versions before 2026-12-07 wrote them: a 60/30
//!    hopping window that starts on a minute written beside the minute's tumbling row;
//! 4. and the window deltas as written now (one `INSERT … ON CONFLICT DO UPDATE` over arrays),
//!    such a window written once (`Spec::held_by`), so this layer's line beside the one above is
//!    what that saves;
//! 5. and the detector's findings: the batch as the collector commits it (the error-rate
//!    judgement of closed windows aside: it runs once per window, not per batch).
//!
//! Every batch goes to all five, each batch starting with another, as in `costs`. Window deltas,
//! findings and moves are made before the clock starts: only PostgreSQL's side is compared.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use logpipe_collector::config::DatabaseSettings;
use logpipe_collector::db::{BatchWrite, Db, OffsetMove, StoredEvent};
use logpipe_collector::detect::{AlertSettings, Detector};
use logpipe_collector::storage;
use logpipe_collector::windows::{Aggregator, Spec, Stats, WindowKey, WindowSettings};
use logpipe_common::RawEvent;
use logpipe_generator::events::{EventFactory, Profile};
use sqlx::{ConnectOptions, Connection};

use crate::costs::cpu_ns;
use crate::load::copy_batch;
use crate::{storage_settings, Bench};

const GROUP: &str = "storage-bench";
const TOPIC: &str = "storage-bench.raw";
const PARTITIONS: i32 = 6;
/// Event time between consecutive rows: a stream at 40,000 events/s, the rate of the load test's
/// CPU-per-event run, so each batch touches as many window rows as it would there.
const STEP_MICROS: i64 = 25;

/// (schema, what the layer writes).
const LAYERS: [(&str, &str); 5] = [
    (
        "storage_bench_b_copy",
        "the rows alone: one COPY per transaction",
    ),
    (
        "storage_bench_b_offsets",
        "+ the offset moves (one fenced UPDATE)",
    ),
    (
        "storage_bench_b_windows_twice",
        "+ the window upserts, the minute's hopping windows written twice (before 2026-12-07)",
    ),
    (
        "storage_bench_b_windows",
        "+ the window upserts as written now",
    ),
    (
        "storage_bench_b_findings",
        "+ the detector's findings: the batch as the collector commits it",
    ),
];

struct Layer {
    db: Db,
    pid: i32,
    wall: Duration,
    cpu_ns: Option<u64>,
}

/// One batch as the collector's planner would hand it to the writer.
struct Planned {
    rows: Vec<(RawEvent, i32, i64)>,
    data: Vec<u8>,
    moves: Vec<OffsetMove>,
    windows: Vec<(WindowKey, Stats)>,
    /// The same deltas as versions before 2026-12-07 wrote them.
    windows_twice: Vec<(WindowKey, Stats)>,
    findings: logpipe_collector::detect::Findings,
}

impl Bench {
    /// The per-batch statements' cost beside the COPY, layer by layer.
    pub(crate) async fn batch_costs(&mut self) -> anyhow::Result<()> {
        let total = self.args.ratio_rows.min(self.args.rows).max(1);
        let batch = self.args.batch_rows.max(1);
        let mut layers = Vec::new();
        for (schema, _) in LAYERS {
            layers.push(self.layer(schema).await?);
        }
        let alerts = AlertSettings::default();
        let detector = Detector::new(&alerts)?;
        let windows = WindowSettings::default();
        let specs = windows.specs();
        let lateness = i64::from(windows.allowed_lateness_secs);
        let mut factory = EventFactory::new(13, "batch-host", Profile::Steady);
        let mut next: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        let start = self.end - TimeDelta::microseconds(total as i64 * STEP_MICROS);
        let (mut done, mut round) = (0u64, 0usize);
        while done < total {
            let n = (total - done).min(batch as u64) as usize;
            let rows: Vec<_> = (done..done + n as u64)
                .map(|i| {
                    let ts = start + TimeDelta::microseconds(i as i64 * STEP_MICROS);
                    let mut e = factory.next_event(ts, Duration::from_secs(i / 40_000));
                    e.timestamp = ts;
                    e.event_id = format!("batch-{i:010}");
                    let e = logpipe_common::RawEvent::from_event(&e)
                        .expect("a generated event is valid");
                    (e, (i % 6) as i32, (i / 6) as i64)
                })
                .collect();
            let planned = plan(rows, &mut next, &detector, &windows, &specs);
            for k in 0..layers.len() {
                let v = (round + k) % layers.len();
                let began = cpu_ns(layers[v].pid);
                let started = Instant::now();
                write_layer(v, &layers[v].db, &planned, &alerts, lateness).await?;
                let layer = &mut layers[v];
                layer.wall += started.elapsed();
                layer.cpu_ns = match (layer.cpu_ns, began, cpu_ns(layer.pid)) {
                    (Some(sum), Some(b), Some(a)) => Some(sum + a.saturating_sub(b)),
                    _ => None,
                };
            }
            done += n as u64;
            round += 1;
        }
        self.report_batch_costs(total, &layers);
        for (layer, (schema, _)) in layers.into_iter().zip(LAYERS) {
            if !self.args.keep {
                sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(layer.db.pool())
                    .await?;
            }
            layer.db.pool().close().await;
        }
        Ok(())
    }

    /// A fresh migrated schema with its partitions made, reached through one connection.
    async fn layer(&self, schema: &str) -> anyhow::Result<Layer> {
        // A schema left by an interrupted run (perhaps by another build's migrations) goes first.
        let mut conn = self.base.connect().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let db = Db::connect(&DatabaseSettings {
            url: self.args.database_url.clone(),
            schema: schema.into(),
            max_connections: 1,
            ..DatabaseSettings::default()
        })
        .await?;
        storage::first_pass(&db, &storage_settings(&self.args, false)).await?;
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        db.claim_offsets(GROUP, TOPIC, &partitions).await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(db.pool())
            .await?;
        Ok(Layer {
            db,
            pid,
            wall: Duration::ZERO,
            cpu_ns: cpu_ns(pid).map(|_| 0),
        })
    }

    fn report_batch_costs(&mut self, total: u64, layers: &[Layer]) {
        let per_row_us = |l: &Layer| l.cpu_ns.map(|ns| ns as f64 / 1e3 / total as f64);
        let _ = writeln!(
            self.out,
            "## What the collector's batch adds to its COPY\n\n{total} rows in batches of {}, \
             event time as at 40,000 events/s, into the migrated table (every index), each \
             layer the one above plus one part of `Db::write_batch` \
             (`storage-bench/src/batches.rs`). CPU is the PostgreSQL backend's own.\n\n| the \
             batch writes | rows/s | backend CPU µs/row | added to the layer above |\n\
             |---|---:|---:|---:|",
            self.args.batch_rows
        );
        let mut above: Option<f64> = None;
        for ((_, what), l) in LAYERS.iter().zip(layers) {
            let cpu = per_row_us(l);
            let fmt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
            let added = match (cpu, above) {
                (Some(c), Some(a)) => format!("{:+.2}", c - a),
                _ => String::new(),
            };
            let _ = writeln!(
                self.out,
                "| {what} | {:.0} | {} | {added} |",
                total as f64 / l.wall.as_secs_f64().max(1e-9),
                fmt(cpu),
            );
            above = cpu;
        }
        let _ = writeln!(self.out);
        println!("storage-bench: batch statement costs measured on {total} rows");
    }
}

/// The moves, window deltas and findings of one batch, made as the collector's planner makes them.
fn plan(
    rows: Vec<(RawEvent, i32, i64)>,
    next: &mut BTreeMap<i32, i64>,
    detector: &Detector,
    windows: &WindowSettings,
    specs: &[Spec],
) -> Planned {
    // Before: each family aggregated alone, so none held another's windows.
    let mut agg = Aggregator::default();
    let mut alone: Vec<Aggregator> = specs.iter().map(|_| Aggregator::default()).collect();
    let mut findings = Default::default();
    let mut ends: BTreeMap<i32, (i64, DateTime<Utc>)> = BTreeMap::new();
    for (e, partition, offset) in &rows {
        detector.inspect(e, &mut findings);
        agg.add(e.service(), e, windows.latency_ms(e));
        for a in &mut alone {
            a.add(e.service(), e, windows.latency_ms(e));
        }
        let end = ends.entry(*partition).or_insert((0, e.timestamp()));
        *end = (offset + 1, end.1.max(e.timestamp()));
    }
    let moves = ends
        .into_iter()
        .map(|(partition, (end, max_ts))| OffsetMove {
            partition,
            expected: next.insert(partition, end).unwrap_or(0),
            next: end,
            max_event_ts: Some(max_ts),
            last_record_hash: None,
        })
        .collect();
    let mut twice: Vec<(WindowKey, Stats)> = alone
        .into_iter()
        .zip(specs)
        .flat_map(|(a, spec)| a.into_deltas(std::slice::from_ref(spec)))
        .collect();
    twice.sort_by(|a, b| a.0.cmp(&b.0));
    Planned {
        data: crate::load::encode(&rows),
        rows,
        moves,
        windows: agg.into_deltas(specs),
        windows_twice: twice,
        findings,
    }
}

/// Layer `v` of one batch.
async fn write_layer(
    v: usize,
    db: &Db,
    p: &Planned,
    alerts: &AlertSettings,
    lateness_secs: i64,
) -> anyhow::Result<()> {
    if v == 0 {
        let mut conn = db.pool().acquire().await?;
        copy_batch(&mut conn, &p.data).await?;
        return Ok(());
    }
    let write = BatchWrite {
        events: p
            .rows
            .iter()
            .map(|(event, partition, offset)| StoredEvent {
                event,
                partition: *partition,
                offset: *offset,
            })
            .collect(),
        moves: p.moves.clone(),
        windows: match v {
            2 => p.windows_twice.clone(),
            3.. => p.windows.clone(),
            _ => Vec::new(),
        },
        findings: if v >= 4 {
            p.findings.clone()
        } else {
            Default::default()
        },
        closed: Vec::new(),
    };
    let outcome = db
        .write_batch(GROUP, TOPIC, &write, alerts, lateness_secs)
        .await?;
    anyhow::ensure!(
        outcome.stored as usize == p.rows.len(),
        "layer {v} stored {} of {} rows",
        outcome.stored,
        p.rows.len()
    );
    Ok(())
}
