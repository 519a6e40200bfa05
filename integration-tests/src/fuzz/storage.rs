//! The fuzzer's storage check, once the run's inputs are in: lag back to 0, the dead letters read
//! with their provenance, and every record of the raw topic matched to its stored row (stored at
//! its own offset, dead-lettered, or a resent copy of an event stored once).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};

use super::{fail, Options, Report, Target};

/// Lag back to 0: every partition's stored offset at the log's end (`ends`) within the drain
/// timeout; false (and a failure) when not.
async fn wait_lag_zero(
    target: &Target,
    ends: &BTreeMap<i32, i64>,
    opts: &Options,
    report: &mut Report,
) -> bool {
    let deadline = Instant::now() + opts.drain_timeout;
    loop {
        let stored: Vec<(i32, i64)> =
            sqlx::query_as("SELECT kafka_partition, next_offset FROM consumer_offsets")
                .fetch_all(&target.pool)
                .await
                .unwrap_or_default();
        let stored: BTreeMap<i32, i64> = stored.into_iter().collect();
        let behind: Vec<_> = ends
            .iter()
            .filter(|(p, end)| stored.get(p).copied().unwrap_or(0) < **end)
            .collect();
        if behind.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            fail(
                report,
                format!(
                    "lag did not return to 0 within {:?}: log ends {ends:?}, stored {stored:?}",
                    opts.drain_timeout
                ),
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The DLQ: where each dead-lettered record came from, and why (each counted in `dlq_kinds`).
/// A record dead-lettered twice, one without provenance, or a valid one the database refused, is
/// a failure.
async fn dead_letters(target: &Target, report: &mut Report) -> HashMap<(i32, i64), String> {
    let dlq = crate::read_topic(
        &target.kafka,
        &target.kafka.dlq_topic,
        Duration::from_secs(3),
    )
    .await;
    let mut dead: HashMap<(i32, i64), String> = HashMap::new();
    for m in &dlq {
        let header = |k: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == k)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let at = header("source.partition")
            .and_then(|p| p.parse().ok())
            .zip(header("source.offset").and_then(|o| o.parse().ok()));
        let kind = header("error.kind").unwrap_or_default();
        if kind == "refused_by_database" {
            // Validation is meant to refuse whatever PostgreSQL would: a valid event the
            // database refused (a derived value out of range, a key too long) is a finding.
            fail(
                report,
                format!(
                    "the database refused a valid record {at:?}: {} ({})",
                    header("error.message").unwrap_or_default(),
                    header("error.row").unwrap_or_default()
                ),
            );
        }
        match at {
            Some(at) if !kind.is_empty() => {
                *report.dlq_kinds.entry(kind.clone()).or_default() += 1;
                if dead.insert(at, kind).is_some() {
                    fail(report, format!("record {at:?} dead-lettered twice"));
                }
            }
            _ => fail(report, "a DLQ record without provenance or reason".into()),
        }
    }
    dead
}

/// Each record of the raw topic against the stored rows (by their Kafka coordinates, and every
/// stored id): stored at its own offset, dead-lettered, or a resent copy of an event stored once.
fn match_records_to_rows(
    raw: &[rdkafka::message::OwnedMessage],
    rows: Vec<(i32, i64, String)>,
    dead: &HashMap<(i32, i64), String>,
    report: &mut Report,
) {
    // Stored rows by their Kafka coordinates, and every stored id.
    let mut at_offset: HashMap<(i32, i64), usize> = HashMap::new();
    let mut ids: HashSet<String> = HashSet::new();
    for (p, o, id) in rows {
        *at_offset.entry((p, o)).or_default() += 1;
        ids.insert(id);
    }
    // Records carry no key, so a resent request's copies may sit on any partitions, in any
    // order: a copy with no row at its offset passes when its id was sent more than once and
    // exactly one of its copies is stored at its own offset.
    let id_of = |m: &rdkafka::message::OwnedMessage| {
        m.payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|v| v["event_id"].as_str().map(str::to_owned))
    };
    let mut copies: HashMap<String, usize> = HashMap::new();
    for id in raw.iter().filter_map(id_of) {
        *copies.entry(id).or_default() += 1;
    }
    let mut stored_copies: HashMap<String, usize> = HashMap::new();
    let mut resent: HashSet<String> = HashSet::new();
    for m in raw {
        let at = (m.partition(), m.offset());
        let id = id_of(m);
        let sent_again = id
            .as_ref()
            .is_some_and(|id| copies.get(id).copied().unwrap_or(0) > 1);
        let stored = at_offset.get(&at).copied().unwrap_or(0);
        match (stored, dead.contains_key(&at)) {
            (1, false) => {
                report.stored_at_own_offset += 1;
                if let Some(id) = &id {
                    *stored_copies.entry(id.clone()).or_default() += 1;
                }
            }
            (0, true) => {}
            (0, false) if sent_again && id.as_ref().is_some_and(|i| ids.contains(i)) => {
                report.stored_as_resend += 1;
                resent.extend(id);
            }
            (n, d) => fail(
                report,
                format!(
                    "record {at:?} (id {id:?}): {n} rows at its offset, dead-lettered: {d}; payload {}",
                    m.payload()
                        .map(|p| String::from_utf8_lossy(&p[..p.len().min(300)]).into_owned())
                        .unwrap_or_default()
                ),
            ),
        }
    }
    for id in resent {
        let n = stored_copies.get(&id).copied().unwrap_or(0);
        if n != 1 {
            fail(
                report,
                format!(
                    "id {id:?} was sent {} times and stored at {n} of their offsets",
                    copies[&id]
                ),
            );
        }
    }
}

/// Every record of the raw topic stored once or dead-lettered; lag back to 0; ready.
pub(super) async fn check_storage(target: &Target, opts: &Options, report: &mut Report) {
    let raw = crate::read_topic(
        &target.kafka,
        &target.kafka.raw_topic,
        Duration::from_secs(3),
    )
    .await;
    report.records = raw.len();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut gateway_records = 0usize;
    for m in &raw {
        let e = ends.entry(m.partition()).or_default();
        *e = (*e).max(m.offset() + 1);
        let is_raw = m
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == "logpipe-fuzz"));
        if !is_raw {
            gateway_records += 1;
        }
    }
    // The gateway produced exactly what its 2xx answers accepted (plus the markers).
    if gateway_records != report.accepted + report.markers {
        let accepted = report.accepted;
        let markers = report.markers;
        fail(
            report,
            format!(
                "the gateway produced {gateway_records} records; its answers accepted {accepted} (+{markers} markers)"
            ),
        );
    }
    if !wait_lag_zero(target, &ends, opts, report).await {
        return;
    }
    let dead = dead_letters(target, report).await;
    report.dead_lettered = dead.len();
    let rows: Vec<(i32, i64, String)> =
        sqlx::query_as("SELECT kafka_partition, kafka_offset, event_id FROM log_events")
            .fetch_all(&target.pool)
            .await
            .expect("read stored rows");
    match_records_to_rows(&raw, rows, &dead, report);
    let ready = reqwest::get(format!("{}/ready", target.collector)).await;
    match ready {
        Ok(r) if r.status().as_u16() == 200 => {}
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            fail(report, format!("collector /ready {status}: {body}"));
        }
        Err(e) => fail(report, format!("collector /ready: {e}")),
    }
}
