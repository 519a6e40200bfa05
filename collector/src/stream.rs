//! `GET /api/v1/events/stream`: Server-Sent Events of stored events, for the console's live tail
//! and for `curl -N`.
//!
//! A stream's position is the next Kafka offset per partition (`0:1200,1:1187,…`): rows are stored
//! in offset order per partition, so "every row past this position" is exact, and it survives a
//! reconnect (`Last-Event-ID`) and a restart of the collector. Each poll reads the group's stored
//! offsets from `consumer_offsets` and the rows committed between the stream's position and them
//! (the BRIN index `log_events_tail_brin`), filtered as `GET /api/v1/events` filters. The last
//! message of each poll carries the new position as its `id`; a client that reconnects mid-poll
//! gets that poll's rows again and drops them by `event_id` (at least once, never a gap).
//!
//! Caps, all told to the client: at most `rate` events a second, a second's worth at once (sampled
//! above it, pseudo-randomly by event id, and an `event: dropped` message with how many were left
//! out); a resume point more
//! than `max_scan_records` behind is moved up (counted as dropped); a client that reads nothing
//! for `slow_client_secs` while messages wait is cut off with `event: cutoff` and its reason: what
//! waits for it is a bounded channel, never a growing buffer. Comments every 15 s keep proxies
//! from closing a quiet stream. The collector's shutdown ends every stream (`event: shutdown`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::stream::{self, Stream};
use futures::StreamExt as _;
use logpipe_common::Level;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::QueryBuilder;
use tokio::sync::mpsc;

use crate::http::AppState;
use crate::query::{bad, ApiError, Params, StoredEvent};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    pub poll_ms: u64,
    /// The `rate` a client gets when it asks for none, and the most it may ask for.
    pub default_events_per_sec: u32,
    pub max_events_per_sec: u32,
    /// A resume point further behind than this many records is moved up (and told as dropped).
    pub max_scan_records: i64,
    /// A client that has read nothing this long while messages wait for it is cut off.
    pub slow_client_secs: u64,
    /// Batches (one per poll) waiting for a client at most.
    pub buffer_batches: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            poll_ms: 500,
            default_events_per_sec: 100,
            max_events_per_sec: 1_000,
            max_scan_records: 200_000,
            slow_client_secs: 10,
            buffer_batches: 16,
        }
    }
}

/// The next offset per Kafka partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(pub BTreeMap<i32, i64>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Position {
    pub fn parse(s: &str) -> Option<Position> {
        let mut out = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part.split_once(':')?;
            let (p, o) = (p.trim().parse().ok()?, o.trim().parse().ok()?);
            if p < 0 || o < 0 || out.insert(p, o).is_some() {
                return None;
            }
        }
        Some(Position(out))
    }

    /// What was stored since this position, given the stored offsets `stored`. A new partition
    /// starts at its stored offset. A partition whose stored offset went backwards (its log was
    /// reset, see `offset_resets`) continues from the stored offset and is reported, so the
    /// client is told rather than left with a silent hole. When more than `max` records wait,
    /// each range keeps its newest share and the records passed over are counted.
    pub fn advance(&self, stored: &BTreeMap<i32, i64>, max: i64) -> Advance {
        let mut ranges = Vec::new();
        let mut resets = Vec::new();
        for (p, to) in stored {
            match self.0.get(p) {
                Some(from) if from < to => ranges.push((*p, *from, *to)),
                Some(from) if from > to => resets.push((*p, *from, *to)),
                _ => {}
            }
        }
        let waiting: i64 = ranges.iter().map(|(_, a, b)| b - a).sum();
        let mut skipped = 0;
        if waiting > max && !ranges.is_empty() {
            let share = (max / ranges.len() as i64).max(1);
            for r in &mut ranges {
                if r.2 - r.1 > share {
                    skipped += r.2 - share - r.1;
                    r.1 = r.2 - share;
                }
            }
        }
        Advance {
            ranges,
            next: Position(stored.clone()),
            skipped,
            resets,
        }
    }
}

/// See [`Position::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// `(partition, from, to)`: the offsets to read.
    pub ranges: Vec<(i32, i64, i64)>,
    pub next: Position,
    /// Records passed over because more waited than a poll may read.
    pub skipped: i64,
    /// `(partition, was, now)`: partitions whose stored offset went backwards.
    pub resets: Vec<(i32, i64, i64)>,
}

/// What the stream's client asked for.
#[derive(Debug, Clone)]
struct Filter {
    service: Option<String>,
    levels: Option<Vec<&'static str>>,
    text: Option<String>,
    rate: u32,
}

/// A message for the client, or a batch of them (one poll).
type Batch = Vec<Event>;

/// `GET /api/v1/events/stream?service&min_level&q&rate`
pub async fn events_stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["service", "min_level", "q", "rate"])?;
    let settings = s.stream.clone();
    let rate = match p.typed("rate") {
        None => settings.default_events_per_sec,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=settings.max_events_per_sec).contains(n))
            .ok_or_else(|| {
                bad(
                    "rate",
                    format!(
                        "must be an integer from 1 to {}",
                        settings.max_events_per_sec
                    ),
                )
            })?,
    };
    let text = p.str("q").map(str::to_owned);
    if text.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(bad("q", "at most 200 bytes"));
    }
    let filter = Filter {
        service: p.str("service").map(str::to_owned),
        levels: p.level("min_level")?.map(|min| {
            Level::ALL
                .iter()
                .filter(|l| **l >= min)
                .map(|l| l.as_str())
                .collect()
        }),
        text,
        rate,
    };
    let resumed = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(Position::parse)
                .ok_or_else(|| bad("Last-Event-ID", "not a position this stream sent"))?,
        ),
    };
    let stored = stored_offsets(&s).await?;
    let start = resumed.clone().unwrap_or(Position(stored));
    let (tx, rx) = mpsc::channel::<Batch>(settings.buffer_batches.max(1));
    let ended: Arc<Mutex<Option<Event>>> = Arc::default();
    let hello = Event::default().event("hello").id(start.to_string()).data(
        json!({
            "position": start.to_string(),
            "resumed": resumed.is_some(),
            "rate": filter.rate,
            "poll_ms": settings.poll_ms,
        })
        .to_string(),
    );
    crate::telemetry::stream_opened();
    tokio::spawn(produce(
        s.clone(),
        filter,
        start,
        resumed.is_some(),
        tx,
        ended.clone(),
    ));
    Ok(Sse::new(messages(hello, rx, ended))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The hello, then every batch the producer sends, then the reason it stopped, if it said one.
fn messages(
    hello: Event,
    rx: mpsc::Receiver<Batch>,
    ended: Arc<Mutex<Option<Event>>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            crate::telemetry::stream_closed();
        }
    }
    let batches = stream::unfold((rx, ended, Guard), |(mut rx, ended, guard)| async move {
        match rx.recv().await {
            Some(batch) => Some((batch, (rx, ended, guard))),
            None => {
                let last = ended.lock().expect("stream end lock").take()?;
                // Closed: the next call finds nothing and ends the stream.
                rx.close();
                Some((vec![last], (rx, ended, guard)))
            }
        }
    });
    stream::once(async move { vec![hello] })
        .chain(batches)
        .flat_map(|batch| stream::iter(batch.into_iter().map(Ok)))
}

/// Poll, read, send; until the client goes, is too slow, or the collector stops.
async fn produce(
    s: AppState,
    filter: Filter,
    mut position: Position,
    resumed: bool,
    tx: mpsc::Sender<Batch>,
    ended: Arc<Mutex<Option<Event>>>,
) {
    let settings = s.stream.clone();
    let poll = Duration::from_millis(settings.poll_ms.max(50));
    // A token bucket: `rate` events a second, and a burst of up to a second's worth.
    let rate = f64::from(filter.rate);
    let mut tokens = rate;
    let mut refilled = Instant::now();
    // A first poll after a resume reads without the `stored_at` bound: the rows it resumes at may
    // be older than the bound.
    let mut unbounded = resumed;
    let mut last_sent = Instant::now();
    let end = |event: Event| *ended.lock().expect("stream end lock") = Some(event);
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => {
                end(Event::default().event("shutdown").data(r#"{"reason":"the collector is stopping; reconnect with Last-Event-ID"}"#));
                return;
            }
            _ = tx.closed() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let stored = match stored_offsets(&s).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "event stream: cannot read the stored offsets");
                continue;
            }
        };
        let Advance {
            ranges,
            next,
            skipped,
            resets,
        } = position.advance(&stored, settings.max_scan_records);
        let mut batch: Batch = Vec::new();
        for (partition, was, now) in resets {
            batch.push(Event::default().event("reset").data(
                json!({
                    "partition": partition,
                    "position": was,
                    "stored": now,
                    "reason": "the partition's stored offset went back (its log was reset, as after \
                               a restart of an in-memory broker); the stream continues from there",
                })
                .to_string(),
            ));
        }
        tokens = (tokens + refilled.elapsed().as_secs_f64() * rate).min(rate);
        refilled = Instant::now();
        if !ranges.is_empty() {
            let limit = (tokens as i64).max(1);
            match read(&s, &filter, &ranges, limit, unbounded).await {
                Ok((rows, matched)) => {
                    tokens -= rows.len() as f64;
                    let dropped = matched - rows.len() as i64 + skipped;
                    if dropped > 0 {
                        crate::telemetry::stream_dropped(dropped as u64);
                        batch.push(Event::default().event("dropped").data(
                            json!({
                                "dropped": dropped,
                                "reason": if skipped > 0 {
                                    "the stream was further behind than it may read at once"
                                } else {
                                    "more events matched than the stream's rate; these were left out"
                                },
                                "rate": filter.rate,
                            })
                            .to_string(),
                        ));
                    }
                    for e in rows {
                        batch.push(
                            Event::default()
                                .event("log")
                                .data(serde_json::to_string(&e).unwrap_or_default()),
                        );
                    }
                }
                Err(e) => {
                    // Not moved: the same rows are read at the next poll.
                    tracing::warn!(error = %e, "event stream: read failed");
                    continue;
                }
            }
        }
        unbounded = false;
        let moved = next != position;
        position = next;
        if batch.is_empty() {
            // Nothing to show: still tell the client where it is now and then, so a reconnect
            // after a quiet filter does not read everything since it began.
            if !moved || last_sent.elapsed() < Duration::from_secs(5) {
                continue;
            }
            batch.push(Event::default().event("position").data("{}"));
        }
        if let Some(last) = batch.pop() {
            batch.push(last.id(position.to_string()));
        }
        match tx
            .send_timeout(batch, Duration::from_secs(settings.slow_client_secs))
            .await
        {
            Ok(()) => last_sent = Instant::now(),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                crate::telemetry::stream_cut_off();
                end(Event::default().event("cutoff").data(
                    json!({"reason": format!(
                        "the client read nothing for {} s while {} batches waited; reconnect with \
                         Last-Event-ID to continue",
                        settings.slow_client_secs, settings.buffer_batches
                    )})
                    .to_string(),
                ));
                return;
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
        }
    }
}

/// The group's stored next offsets, read on the query API's pool (never the writer's).
async fn stored_offsets(s: &AppState) -> Result<BTreeMap<i32, i64>, ApiError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, next_offset FROM consumer_offsets
          WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(&s.group_id)
    .bind(&s.topic)
    .fetch_all(s.db.query_pool())
    .await?;
    Ok(rows.into_iter().collect())
}

/// The rows of `ranges` that match, at most `limit` of them (a pseudo-random sample by event id
/// when more match), oldest first; and how many matched.
async fn read(
    s: &AppState,
    f: &Filter,
    ranges: &[(i32, i64, i64)],
    limit: i64,
    unbounded: bool,
) -> Result<(Vec<StoredEvent>, i64), ApiError> {
    let mut q = QueryBuilder::new(
        "SELECT event_id, ts, level, service, component, host, message, trace_id, span_id,
                attributes::text AS attributes, kafka_partition, kafka_offset,
                count(*) OVER () AS matched
           FROM log_events WHERE (",
    );
    for (i, (p, from, to)) in ranges.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(kafka_partition = ")
            .push_bind(*p)
            .push(" AND kafka_offset >= ")
            .push_bind(*from)
            .push(" AND kafka_offset < ")
            .push_bind(*to)
            .push(")");
    }
    q.push(")");
    if !unbounded {
        // Rows committed within the hour: lets the BRIN index skip old blocks whose offsets
        // overlap (a log that restarted at 0).
        q.push(" AND stored_at >= now() - interval '1 hour'");
    }
    if let Some(svc) = &f.service {
        q.push(" AND service = ").push_bind(svc.as_str());
    }
    if let Some(levels) = &f.levels {
        q.push(" AND level = ANY(")
            .push_bind(levels.clone())
            .push(")");
    }
    if let Some(text) = &f.text {
        q.push(" AND message ILIKE ")
            .push_bind(crate::query::contains_pattern(text));
    }
    q.push(" ORDER BY hashtext(event_id) LIMIT ")
        .push_bind(limit);
    let rows = q.build().fetch_all(s.db.query_pool()).await?;
    let mut matched = 0;
    let mut out: Vec<(DateTime<Utc>, String, StoredEvent)> = Vec::with_capacity(rows.len());
    for r in &rows {
        use sqlx::Row;
        matched = r.try_get::<i64, _>("matched")?;
        let e = StoredEvent::from_row(r)?;
        out.push((r.try_get("ts")?, r.try_get("event_id")?, e));
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok((out.into_iter().map(|(_, _, e)| e).collect(), matched))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> Position {
        Position::parse(s).unwrap()
    }

    #[test]
    fn a_position_round_trips_through_its_text() {
        let p = pos("0:12,1:0,5:999");
        assert_eq!(p.to_string(), "0:12,1:0,5:999");
        assert_eq!(Position::parse("").unwrap(), Position::default());
        for bad in ["0", "a:1", "0:-1", "0:1,0:2", "0:1;1:2"] {
            assert!(Position::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn advance_reads_what_was_stored_since_and_moves_to_it() {
        let stored = pos("0:20,1:5,2:7").0;
        let a = pos("0:10,1:5,2:3").advance(&stored, 1000);
        assert_eq!(a.ranges, vec![(0, 10, 20), (2, 3, 7)]);
        assert_eq!(a.next, pos("0:20,1:5,2:7"));
        assert_eq!(a.skipped, 0);
        assert!(a.resets.is_empty());
    }

    #[test]
    fn a_partition_that_went_backwards_is_reported_and_a_new_one_starts_at_its_stored_offset() {
        let stored = pos("0:4,1:9").0;
        let a = pos("0:100").advance(&stored, 1000);
        assert!(a.ranges.is_empty(), "{:?}", a.ranges);
        assert_eq!(a.next, pos("0:4,1:9"));
        assert_eq!(a.resets, vec![(0, 100, 4)]);
    }

    #[test]
    fn a_resume_point_too_far_behind_keeps_the_newest_records_and_counts_the_rest() {
        let stored = pos("0:1000,1:1000").0;
        let a = pos("0:0,1:900").advance(&stored, 200);
        assert_eq!(a.ranges, vec![(0, 900, 1000), (1, 900, 1000)]);
        assert_eq!(a.skipped, 900);
    }
}
