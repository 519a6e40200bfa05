//! Loading: the synthetic rows made in time order, COPY into both layouts (the ratio), the bulk
//! load, the window rows, the sealed days' text index, sizes on disk, a paced writer and the
//! dropped day.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, TimeDelta, Utc};
use logpipe_collector::copy::{CopyEncoder, LOG_EVENT_COLUMNS};
use logpipe_collector::db::StoredEvent;
use logpipe_collector::storage;
use logpipe_common::RawEvent;
use logpipe_generator::events::{EventFactory, Profile};
use sqlx::{Connection, PgConnection};

use crate::{storage_settings, Bench};

impl Bench {
    /// The next `n` events, in time order, with their Kafka coordinates; counted into windows.
    pub(crate) fn make(&mut self, n: usize) -> Vec<(RawEvent, i32, i64)> {
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
            let e = RawEvent::from_event(&e).expect("a generated event is valid");
            out.push((e, (i % 6) as i32, (i / 6) as i64));
        }
        out
    }

    /// The same rows into both layouts, batch by batch, alternating which goes first.
    pub(crate) async fn ratio(&mut self) -> anyhow::Result<()> {
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
    pub(crate) async fn bulk_load(&mut self) -> anyhow::Result<()> {
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

    pub(crate) async fn insert_windows(&mut self) -> anyhow::Result<usize> {
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
    pub(crate) async fn text_indexes(&mut self) -> anyhow::Result<()> {
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

    pub(crate) async fn sizes(&mut self) -> anyhow::Result<()> {
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

    /// Rows stored per second by a writer paced at `ingest_rate` for `ingest_secs`, rows dated now.
    pub(crate) async fn paced_writer(&mut self) -> anyhow::Result<f64> {
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
            let rows: Vec<(RawEvent, i32, i64)> = (0..per_tick)
                .map(|_| {
                    let i = self.made;
                    self.made += 1;
                    let mut e = factory.next_event(now, Duration::ZERO);
                    e.event_id = format!("sb-{i:010}");
                    let e = RawEvent::from_event(&e).expect("a generated event is valid");
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
    pub(crate) async fn drop_a_day(&mut self) -> anyhow::Result<()> {
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
}

pub(crate) fn encode(rows: &[(RawEvent, i32, i64)]) -> Vec<u8> {
    encode_into(CopyEncoder::with_capacity(rows.len()), rows)
}

/// The rows through `enc` (a jsonb or a json attributes column).
pub(crate) fn encode_into(mut enc: CopyEncoder, rows: &[(RawEvent, i32, i64)]) -> Vec<u8> {
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
pub(crate) async fn copy_batch(conn: &mut PgConnection, data: &[u8]) -> anyhow::Result<Duration> {
    copy_into(conn, "log_events", data).await
}

/// [`copy_batch`] into another table with `log_events`' columns.
pub(crate) async fn copy_into(
    conn: &mut PgConnection,
    table: &str,
    data: &[u8],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY {table} ({LOG_EVENT_COLUMNS}) FROM STDIN WITH (FORMAT binary)"
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(started.elapsed())
}
