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
use serde_json::json;
use sqlx::QueryBuilder;
use tokio::sync::mpsc;

pub use crate::config::StreamSettings;
use crate::query::{bad, event_row, ApiError, Params};
use crate::state::AppState;
use logpipe_common::permits::{Permit, Refused};
use logpipe_common::query::StreamParams;

/// Where a stream is: the next offset per Kafka partition, and the last offset reset it knows of
/// (`offset_resets.reset_id`). Text: `0:1200,1:1187;r3`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub offsets: BTreeMap<i32, i64>,
    pub reset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .offsets
            .iter()
            .map(|(p, o)| format!("{p}:{o}"))
            .collect();
        write!(f, "{};r{}", parts.join(","), self.reset)
    }
}

/// An offset reset the collector recorded (`offset_resets`): the partition's stored offset moved
/// from `old` (the end of the old log) to `new` (the new log's start) at `at`. `previous_at`: the
/// reset before it that the stream already knew of, if any; rows stored before that belong to an
/// even older log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    pub id: i64,
    pub old: i64,
    pub new: i64,
    pub at: DateTime<Utc>,
    pub previous_at: Option<DateTime<Utc>>,
}

/// Offsets `[from, to)` of one partition to read; rows stored before or after a reset only, when
/// a reset split the partition's offsets between two logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    pub stored_before: Option<DateTime<Utc>>,
    pub stored_after: Option<DateTime<Utc>>,
}

impl Range {
    fn plain(partition: i32, from: i64, to: i64) -> Range {
        Range {
            partition,
            from,
            to,
            stored_before: None,
            stored_after: None,
        }
    }
}

impl Position {
    /// A resume point must be one this collector could have sent: no reset it never recorded
    /// (`last_reset`), no partition the group does not store, no offset past what was stored
    /// (`stored`, or the end of a partition's log before its reset, `old_ends`). A forged one
    /// would otherwise send each reconnect scanning from wherever it names.
    pub fn check_within(
        &self,
        stored: &BTreeMap<i32, i64>,
        old_ends: &BTreeMap<i32, i64>,
        last_reset: i64,
    ) -> Result<(), String> {
        if self.reset > last_reset {
            return Err(format!(
                "names offset reset r{}, past the last one recorded (r{last_reset})",
                self.reset
            ));
        }
        for (p, o) in &self.offsets {
            let Some(stored_to) = stored.get(p) else {
                return Err(format!("names partition {p}, which is not stored here"));
            };
            let end = (*stored_to).max(old_ends.get(p).copied().unwrap_or(0));
            if *o > end {
                return Err(format!(
                    "partition {p} at offset {o} is past what was stored ({end})"
                ));
            }
        }
        Ok(())
    }

    pub fn parse(s: &str) -> Option<Position> {
        let (offsets, reset) = match s.split_once(';') {
            Some((o, r)) => (o, r.strip_prefix('r')?.parse().ok()?),
            None => (s, 0),
        };
        let mut out = BTreeMap::new();
        for part in offsets.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part.split_once(':')?;
            let (p, o) = (p.trim().parse().ok()?, o.trim().parse().ok()?);
            if p < 0 || o < 0 || out.insert(p, o).is_some() {
                return None;
            }
        }
        Some(Position {
            offsets: out,
            reset,
        })
    }

    /// What was stored since this position, given the stored offsets `stored` and the latest
    /// offset reset of each partition that had one (`resets`). A partition new to the position
    /// starts at 0. A reset partition reads the rest of its old log (rows stored before the
    /// reset) and its new log from the start (rows stored after it), and is announced. A partition
    /// whose stored offset went back with no reset recorded is announced and followed from there.
    /// When more than `max` records wait, each range keeps its newest share and the records passed
    /// over are counted.
    pub fn advance(
        &self,
        stored: &BTreeMap<i32, i64>,
        resets: &BTreeMap<i32, Reset>,
        max: i64,
    ) -> Advance {
        let mut ranges = Vec::new();
        let mut announced = Vec::new();
        for (p, to) in stored {
            // A partition the position does not hold was claimed after it was taken (a stream
            // opened before the collector's first assignment, or partitions added since): all of
            // its rows are new to the stream.
            let from = self.offsets.get(p).copied().unwrap_or(0);
            match resets.get(p) {
                // The reset is older than the position: the position is in the log it began;
                // rows of older logs share its offsets and are kept out by their time.
                Some(r) if r.id <= self.reset => {
                    if from < *to {
                        ranges.push(Range {
                            stored_after: Some(r.at),
                            ..Range::plain(*p, from, *to)
                        });
                    } else if from > *to {
                        announced.push((*p, from, *to));
                    }
                }
                Some(r) => {
                    if from < r.old {
                        ranges.push(Range {
                            stored_before: Some(r.at),
                            stored_after: r.previous_at,
                            ..Range::plain(*p, from, r.old)
                        });
                    }
                    if r.new < *to {
                        ranges.push(Range {
                            stored_after: Some(r.at),
                            ..Range::plain(*p, r.new, *to)
                        });
                    }
                    announced.push((*p, from, r.new));
                }
                None if from < *to => ranges.push(Range::plain(*p, from, *to)),
                None if from > *to => announced.push((*p, from, *to)),
                None => {}
            }
        }
        let waiting: i64 = ranges.iter().map(|r| r.to - r.from).sum();
        let mut skipped = 0;
        if waiting > max && !ranges.is_empty() {
            let share = (max / ranges.len() as i64).max(1);
            for r in &mut ranges {
                if r.to - r.from > share {
                    skipped += r.to - share - r.from;
                    r.from = r.to - share;
                }
            }
        }
        Advance {
            ranges,
            next: Position {
                offsets: stored.clone(),
                reset: resets.values().map(|r| r.id).fold(self.reset, i64::max),
            },
            skipped,
            resets: announced,
        }
    }
}

/// See [`Position::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub ranges: Vec<Range>,
    pub next: Position,
    /// Records passed over because more waited than a poll may read.
    pub skipped: i64,
    /// `(partition, was, continues at)`: partitions whose log was reset.
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
    let p = Params::new(raw, StreamParams::NAMES)?;
    let settings = s.stream.clone();
    // The gateway names its client; it can, because only it holds the internal token.
    let client = headers
        .get("x-logpipe-client")
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.is_empty() && c.len() <= 256)
        .unwrap_or("direct");
    let permit = s.streams.try_acquire(client).map_err(|r| match r {
        Refused::Total(n) => ApiError::TooManyStreams(format!(
            "{n} event streams are open, this collector's limit (`stream.max_streams`); retry later"
        )),
        Refused::PerClient(n) => ApiError::TooManyClientStreams(format!(
            "this client has {n} event streams open, the most one client may hold \
             (`stream.max_streams_per_client`)"
        )),
    })?;
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
    let last = last_reset(&s).await?;
    let start = match resumed.clone() {
        Some(p) => {
            let old_ends = reset_ends(&s).await?;
            p.check_within(&stored, &old_ends, last)
                .map_err(|reason| bad("Last-Event-ID", reason))?;
            p
        }
        None => Position {
            offsets: stored,
            reset: last,
        },
    };
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
    Ok(Sse::new(messages(hello, rx, ended, permit))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The hello, then every batch the producer sends, then the reason it stopped, if it said one.
fn messages(
    hello: Event,
    rx: mpsc::Receiver<Batch>,
    ended: Arc<Mutex<Option<Event>>>,
    permit: Permit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // Holds the stream's slot until the client goes.
    struct Guard {
        _slot: Permit,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            crate::telemetry::stream_closed();
        }
    }
    let batches = stream::unfold(
        (rx, ended, Guard { _slot: permit }),
        |(mut rx, ended, guard)| async move {
            match rx.recv().await {
                Some(batch) => Some((batch, (rx, ended, guard))),
                None => {
                    let last = ended.lock().expect("stream end lock").take()?;
                    // Closed: the next call finds nothing and ends the stream.
                    rx.close();
                    Some((vec![last], (rx, ended, guard)))
                }
            }
        },
    );
    stream::once(async move { vec![hello] })
        .chain(batches)
        .flat_map(|batch| stream::iter(batch.into_iter().map(Ok)))
}

/// The `reset` event: a partition's log was reset under the stream's position.
fn reset_event(partition: i32, was: i64, now: i64) -> Event {
    Event::default().event("reset").data(
        json!({
            "partition": partition,
            "position": was,
            "continues_at": now,
            "reason": "the partition's log was reset (as after a restart of an in-memory broker): \
                       the rest of the old log, then the new log from its start",
        })
        .to_string(),
    )
}

/// The `dropped` event: matching events the stream left out, because it was too far behind
/// (`behind`) or over its rate.
fn dropped_event(dropped: i64, behind: bool, rate: u32) -> Event {
    Event::default().event("dropped").data(
        json!({
            "dropped": dropped,
            "reason": if behind {
                "the stream was further behind than it may read at once"
            } else {
                "more events matched than the stream's rate; these were left out"
            },
            "rate": rate,
        })
        .to_string(),
    )
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
        let resets = match latest_resets(&s, position.reset).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "event stream: cannot read the offset resets");
                continue;
            }
        };
        let Advance {
            ranges,
            next,
            skipped,
            resets,
        } = position.advance(&stored, &resets, settings.max_scan_records);
        let mut batch: Batch = Vec::new();
        for (partition, was, now) in resets {
            batch.push(reset_event(partition, was, now));
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
                        batch.push(dropped_event(dropped, skipped > 0, filter.rate));
                    }
                    for json in rows {
                        batch.push(Event::default().event("log").data(json));
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

/// The end of each partition's log before its latest reset (its highest `old_offset`).
async fn reset_ends(s: &AppState) -> Result<BTreeMap<i32, i64>, ApiError> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition, max(old_offset)::int8 FROM offset_resets
          WHERE consumer_group = $1 AND topic = $2 GROUP BY kafka_partition",
    )
    .bind(&s.group_id)
    .bind(&s.topic)
    .fetch_all(s.db.query_pool())
    .await?;
    Ok(rows.into_iter().collect())
}

/// The newest offset reset recorded for this group and topic (0: none).
async fn last_reset(s: &AppState) -> Result<i64, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(max(reset_id), 0)::int8 FROM offset_resets
          WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(&s.group_id)
    .bind(&s.topic)
    .fetch_one(s.db.query_pool())
    .await?)
}

/// The latest offset reset of each partition that had one, with the time of the latest one up to
/// `after` (the log the stream's position is in began then).
async fn latest_resets(s: &AppState, after: i64) -> Result<BTreeMap<i32, Reset>, ApiError> {
    type Row = (i32, i64, i64, i64, DateTime<Utc>, Option<DateTime<Utc>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT DISTINCT ON (r.kafka_partition) r.kafka_partition, r.reset_id, r.old_offset,
                r.new_offset, r.reset_at,
                (SELECT max(k.reset_at) FROM offset_resets k
                  WHERE k.consumer_group = r.consumer_group AND k.topic = r.topic
                    AND k.kafka_partition = r.kafka_partition AND k.reset_id <= $3)
           FROM offset_resets r
          WHERE r.consumer_group = $1 AND r.topic = $2
          ORDER BY r.kafka_partition, r.reset_id DESC",
    )
    .bind(&s.group_id)
    .bind(&s.topic)
    .bind(after)
    .fetch_all(s.db.query_pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p, id, old, new, at, previous_at)| {
            (
                p,
                Reset {
                    id,
                    old,
                    new,
                    at,
                    previous_at,
                },
            )
        })
        .collect())
}

/// The rows of `ranges` that match, at most `limit` of them (a pseudo-random sample by event id
/// when more match) and, past the first, at most `max_bytes` of their JSON, oldest first; and how
/// many matched.
async fn read(
    s: &AppState,
    f: &Filter,
    ranges: &[Range],
    limit: i64,
    unbounded: bool,
) -> Result<(Vec<String>, i64), ApiError> {
    let mut q = QueryBuilder::new(
        "SELECT event_id, ts, level, service, component, host, message, trace_id, span_id,
                attributes::text AS attributes, kafka_partition, kafka_offset,
                count(*) OVER () AS matched
           FROM log_events WHERE (",
    );
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(kafka_partition = ")
            .push_bind(r.partition)
            .push(" AND kafka_offset >= ")
            .push_bind(r.from)
            .push(" AND kafka_offset < ")
            .push_bind(r.to);
        // `stored_at` is the writing transaction's start: a row of the old log was written before
        // the reset's transaction, a row of the new log after it.
        if let Some(at) = r.stored_before {
            q.push(" AND stored_at < ").push_bind(at);
        }
        if let Some(at) = r.stored_after {
            q.push(" AND stored_at >= ").push_bind(at);
        }
        q.push(")");
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
    let mut rows = q.build().fetch(s.db.query_pool());
    let mut matched = 0;
    let mut bytes = 0;
    let mut out: Vec<(DateTime<Utc>, String, String)> = Vec::new();
    while let Some(r) = futures::TryStreamExt::try_next(&mut rows).await? {
        use sqlx::Row;
        matched = r.try_get::<i64, _>("matched")?;
        let json = serde_json::to_string(&event_row(&r)?)
            .map_err(|e| ApiError::Internal(format!("an event did not encode: {e}")))?;
        bytes += json.len();
        if !out.is_empty() && bytes > s.stream.max_batch_bytes {
            // The rest of the sample stays unread; it is counted in `matched` and told as dropped.
            break;
        }
        out.push((r.try_get("ts")?, r.try_get("event_id")?, json));
    }
    out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok((out.into_iter().map(|(_, _, e)| e).collect(), matched))
}

#[cfg(test)]
mod tests;
