//! Loss and duplicates by event id: every record the run put in Kafka is read back with a tuned
//! bare consumer (what Kafka holds is what it acknowledged), and each id is looked up in
//! PostgreSQL. Records that carry no JSON `event_id` (raw lines, whose id the collector derives)
//! are looked up by partition and offset instead. The same pass gives the end-to-end latency of
//! the stored rows and the alert latency.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use sqlx::pool::PoolConnection;
use sqlx::Postgres;

/// Tansu returns nothing for a fetch that starts inside a record batch (ARCHITECTURE.md, "resume
/// lookback"): the read starts this many records earlier and skips up to the run's first offset.
const LOOKBACK: i64 = 10_000;

/// A bare consumer with the best settings for a bulk read: large fetches, a deep local queue, no
/// group, no commits, and a short fetch wait — Tansu spends about `fetch.wait.max.ms` on every
/// fetch, data or not, so 5 ms reads several times faster than 100 ms (docs/benchmarks.md, "Benchmarks").
pub fn tuned_consumer(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", "logpipe-load-test")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.wait.max.ms", "5")
        .set("queued.min.messages", "1000000")
        .set("queued.max.messages.kbytes", "1048576")
        .set("socket.nagle.disable", "true");
    crate::options::with_operator_options(&mut c);
    c
}

pub fn partitions(brokers: &str, topic: &str) -> anyhow::Result<i32> {
    let c: BaseConsumer = tuned_consumer(brokers).create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let n = md
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if n == 0 {
        bail!("topic {topic} has no partitions (is the broker at --brokers?)");
    }
    Ok(n as i32)
}

#[derive(Debug, Default)]
pub struct ReadBack {
    pub records: u64,
    pub ids: Vec<String>,
    /// Records without a JSON event id: (partition, offset).
    pub no_id: Vec<(i32, i64)>,
    /// Records whose id an earlier record of the run already had (acknowledged twice).
    pub kafka_duplicates: u64,
    pub secs: f64,
    /// The first records' payloads, for the ceilings.
    pub payloads: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
}

/// Reads every record from `start` (per partition) to the log's end, and at least to `min_end`.
pub fn read_back(
    brokers: &str,
    topic: &str,
    start: &BTreeMap<i32, i64>,
    min_end: &BTreeMap<i32, i64>,
    keep_payloads: usize,
    extract_ids: bool,
) -> anyhow::Result<ReadBack> {
    let consumer: BaseConsumer = tuned_consumer(brokers).create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in start {
        tpl.add_partition_offset(topic, *p, Offset::Offset((o - LOOKBACK).max(0)))?;
    }
    consumer.assign(&tpl)?;
    let mut out = ReadBack::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut done: BTreeMap<i32, bool> = start.keys().map(|p| (*p, false)).collect();
    let mut next: BTreeMap<i32, i64> = start.clone();
    let began = Instant::now();
    let mut last_progress = Instant::now();
    while done.values().any(|d| !d) {
        if last_progress.elapsed() > Duration::from_secs(30) {
            bail!(
                "reading the run back from Kafka made no progress for 30 s (at {next:?}, waiting for {:?})",
                done.iter().filter(|(_, d)| !**d).map(|(p, _)| p).collect::<Vec<_>>()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let reached =
                    next.get(&p).copied().unwrap_or(0) >= min_end.get(&p).copied().unwrap_or(0);
                if reached {
                    done.insert(p, true);
                }
            }
            Some(Err(e)) => return Err(e).context("reading the run back from Kafka"),
            Some(Ok(m)) => {
                // Records before the run's start (the lookback) count as progress too.
                last_progress = Instant::now();
                let p = m.partition();
                let o = m.offset();
                if o < start.get(&p).copied().unwrap_or(0) {
                    continue;
                }
                next.insert(p, o + 1);
                done.insert(p, false);
                out.records += 1;
                let payload = m.payload().unwrap_or_default();
                if out.payloads.len() < keep_payloads {
                    out.payloads.push(payload.to_vec());
                }
                if !extract_ids {
                    continue;
                }
                match serde_json::from_slice::<IdOnly<'_>>(payload)
                    .ok()
                    .and_then(|x| x.event_id)
                {
                    Some(id) => {
                        if !seen.insert(id.into_owned()) {
                            out.kafka_duplicates += 1;
                        }
                    }
                    None => out.no_id.push((p, o)),
                }
            }
        }
    }
    out.secs = began.elapsed().as_secs_f64();
    // One copy of each id (a long soak reads tens of millions).
    out.ids = seen.into_iter().collect();
    Ok(out)
}

#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub records: u64,
    pub lost: u64,
    pub lost_sample: Vec<String>,
    pub stored_twice: u64,
    pub kafka_duplicates: u64,
    /// End-to-end latency of the run's rows, ms: p50, p95, p99, p99.9, max.
    pub latency_ms: Option<[f64; 5]>,
    /// Per second of storing (seconds since the epoch): p50, p99 in ms.
    pub latency_by_second: Vec<(i64, f64, f64)>,
    /// Per alert kind and severity: alerts raised, p50, p99, max latency ms (from the first
    /// triggering event to the row; a window alert waits for its window to close by design).
    pub alerts: Vec<(String, String, i64, f64, f64, f64)>,
}

/// COPY text-format escaping for one field.
fn copy_field(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Compares what was read back with PostgreSQL on one connection (its temporary tables
/// `lt_ids` and `lt_pos` stay for the COPY ceiling).
pub async fn compare(
    conn: &mut PoolConnection<Postgres>,
    rb: &ReadBack,
    run_began: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Verdict> {
    sqlx::query("CREATE TEMP TABLE lt_ids (event_id text NOT NULL)")
        .execute(&mut **conn)
        .await?;
    sqlx::query("CREATE TEMP TABLE lt_pos (p integer NOT NULL, o bigint NOT NULL)")
        .execute(&mut **conn)
        .await?;
    let mut buf = Vec::with_capacity(rb.ids.len() * 28);
    for id in &rb.ids {
        copy_field(id, &mut buf);
        buf.push(b'\n');
    }
    let mut copy = conn
        .copy_in_raw("COPY lt_ids (event_id) FROM STDIN")
        .await?;
    copy.send(buf).await?;
    copy.finish().await?;
    let mut buf = Vec::new();
    for (p, o) in &rb.no_id {
        buf.extend_from_slice(format!("{p}\t{o}\n").as_bytes());
    }
    let mut copy = conn.copy_in_raw("COPY lt_pos (p, o) FROM STDIN").await?;
    copy.send(buf).await?;
    copy.finish().await?;
    sqlx::query("ANALYZE lt_ids").execute(&mut **conn).await?;
    sqlx::query("ANALYZE lt_pos").execute(&mut **conn).await?;

    let mut v = Verdict {
        records: rb.records,
        kafka_duplicates: rb.kafka_duplicates,
        ..Verdict::default()
    };
    let lost_ids: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lt_ids i WHERE NOT EXISTS \
         (SELECT 1 FROM log_events e WHERE e.event_id = i.event_id)",
    )
    .fetch_one(&mut **conn)
    .await?;
    let lost_pos: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lt_pos x WHERE NOT EXISTS \
         (SELECT 1 FROM log_events e WHERE e.kafka_partition = x.p AND e.kafka_offset = x.o)",
    )
    .fetch_one(&mut **conn)
    .await?;
    v.lost = (lost_ids + lost_pos) as u64;
    if v.lost > 0 {
        v.lost_sample = sqlx::query_scalar(
            "SELECT event_id FROM lt_ids i WHERE NOT EXISTS \
             (SELECT 1 FROM log_events e WHERE e.event_id = i.event_id) LIMIT 5",
        )
        .fetch_all(&mut **conn)
        .await?;
    }
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) - count(DISTINCT e.event_id) FROM log_events e JOIN lt_ids i USING (event_id)",
    )
    .fetch_one(&mut **conn)
    .await?;
    v.stored_twice = twice.max(0) as u64;

    let row: (Option<Vec<f64>>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99, 0.999]) WITHIN GROUP (ORDER BY ms), max(ms) \
         FROM (SELECT extract(epoch FROM e.stored_at - e.ts)::float8 * 1000 AS ms \
               FROM log_events e JOIN lt_ids i USING (event_id)) x",
    )
    .fetch_one(&mut **conn)
    .await?;
    if let (Some(p), Some(max)) = row {
        if p.len() == 4 {
            v.latency_ms = Some([p[0], p[1], p[2], p[3], max]);
        }
    }
    v.latency_by_second = sqlx::query_as(
        "SELECT floor(extract(epoch FROM e.stored_at))::bigint AS s, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.stored_at - e.ts)::float8 * 1000), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM e.stored_at - e.ts)::float8 * 1000) \
         FROM log_events e JOIN lt_ids i USING (event_id) GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut **conn)
    .await?;
    v.alerts = sqlx::query_as(
        "SELECT kind, severity, count(*), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
         FROM (SELECT kind, severity, extract(epoch FROM raised_at - first_seen)::float8 * 1000 AS ms \
               FROM alerts WHERE raised_at >= $1) a GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(run_began)
    .fetch_all(&mut **conn)
    .await?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fields_escape_what_text_format_reads_as_syntax() {
        let mut out = Vec::new();
        copy_field("a\tb\\c\nd", &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\nd");
    }
}
