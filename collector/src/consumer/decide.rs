//! The consume loop's decisions, pure: no rdkafka, no sqlx, no clock of its own (callers pass
//! `now`). The shell around them (`mod.rs`: the loop; `context.rs`: rebalance and statistics
//! callbacks; `write.rs`: the writer and the DLQ) asks these and acts on the answers.
//!
//! - [`Ownership`] / [`Owned`]: the partitions this consumer owns, each under an assignment epoch,
//!   with the stored offset its next write must find; [`Owned::arrive`] decides offset continuity
//!   (take, skip, or re-fetch a gap: the "gap re-fetch" Tansu workaround).
//! - Offset fit: [`offset_misfit`] and [`confirmed_misfit`] (two statistics snapshots must agree),
//!   [`fetch_start`] (the "resume lookback" Tansu workaround), and [`fingerprint`] (the record
//!   before a stored offset, re-read on resume: a replaced log that already reaches past the
//!   stored offset); [`LastRecords`] keeps each partition's last record so that only the record
//!   whose fingerprint is stored gets hashed.
//! - Batch planning: [`Planner::plan`] turns consumed records into one transaction's write, under
//!   the cardinality caps, with event time bounded by the clock it is given; [`forget_services`]
//!   keeps each partition's set of services bounded.
//! - Window closing: [`closed_upto`] and [`closed_window`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use logpipe_common::RawEvent;

use crate::batch::{BatchWrite, OffsetMove, Stored, StoredEvent};
use crate::cardinality::{cap_findings, Caps};
use crate::detect::Detector;
use crate::filter::Filter;
use crate::windows::{closed_upto, closed_window, Aggregator, Spec, WindowSettings};

/// Partitions this consumer owns: assignment epoch and the stored offset its next write must see.
#[derive(Debug, Default)]
pub(super) struct Ownership {
    pub(super) epoch: u64,
    pub(super) partitions: HashMap<i32, Owned>,
}

#[derive(Debug, Clone)]
pub(super) struct Owned {
    pub(super) epoch: u64,
    /// Stored next offset: what the next write must find in Postgres.
    pub(super) expected: i64,
    /// The offset the next record must have. Lower ones were re-read on purpose (the lookback, a
    /// repair) and are skipped; a higher one is a gap, re-fetched (see `accept`).
    pub(super) next_fetch: i64,
    /// The gap being repaired: its position, how often it was re-fetched, and when last.
    pub(super) gap: Option<(i64, u32, Instant)>,
    /// Stored event-time progress (newest event time seen).
    pub(super) max_ts: Option<DateTime<Utc>>,
    /// When the last record of this partition arrived (idle detection).
    pub(super) last_record: Instant,
    /// Services seen on this partition, each with its newest event time (epoch seconds): whose
    /// error-rate windows it closes. Services not seen for `SERVICE_MEMORY_WINDOWS` closed
    /// windows are forgotten (see `forget_services`), so the set stays bounded.
    pub(super) services: BTreeMap<String, i64>,
    /// The broker's log start when last seen: fetches never start before it.
    pub(super) log_start: i64,
    /// Why the partition is held paused (its stored offset does not fit the log), if it is.
    pub(super) refused: Option<&'static str>,
    /// A misfit seen in one statistics snapshot, with the stored offset then: acted on only if
    /// the next snapshot confirms it (see `confirmed_misfit`).
    pub(super) suspect: Option<(&'static str, i64)>,
    /// The record to re-read before taking any: its offset (`expected - 1`) and the fingerprint
    /// stored with the offset. Cleared once it was seen, or once a later record came first.
    pub(super) verify: Option<(i64, i64)>,
}

impl Owned {
    /// `now`: when it was claimed (the core has no clock of its own).
    pub(super) fn new(epoch: u64, stored: Stored, now: Instant) -> Owned {
        Owned {
            epoch,
            expected: stored.next_offset,
            next_fetch: stored.next_offset,
            gap: None,
            max_ts: stored.max_event_ts,
            last_record: now,
            services: BTreeMap::new(),
            log_start: 0,
            refused: None,
            suspect: None,
            verify: stored
                .last_record_hash
                .filter(|_| stored.next_offset > 0)
                .map(|h| (stored.next_offset - 1, h)),
        }
    }
}

/// A record's fingerprint: FNV-1a (64 bits) over its key, payload and timestamp. Stable across
/// builds and versions (it is stored in Postgres and compared after an upgrade), and cheap (a
/// few hundred cycles per event). Two logs that hold the same bytes at an offset are, for the
/// collector, the same log there.
pub(super) fn fingerprint(key: Option<&[u8]>, payload: &[u8], timestamp_ms: Option<i64>) -> i64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET_BASIS;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    // Lengths first, so (key "ab", payload "c") and (key "a", payload "bc") differ.
    eat(&(key.map_or(-1, |k| k.len() as i64)).to_le_bytes());
    eat(key.unwrap_or_default());
    eat(&(payload.len() as i64).to_le_bytes());
    eat(payload);
    eat(&timestamp_ms.unwrap_or(-1).to_le_bytes());
    h as i64
}

/// The last record taken of each partition, its bytes copied into buffers that are reused, so a
/// batch's fingerprints are computed for the few records whose fingerprint is stored (one per
/// partition) instead of for every record.
#[derive(Debug, Default)]
pub(super) struct LastRecords {
    by_partition: HashMap<i32, LastRecord>,
}

#[derive(Debug, Default)]
struct LastRecord {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    timestamp_ms: Option<i64>,
}

impl LastRecords {
    /// Remember a record just taken into the batch.
    pub(super) fn note(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) {
        let last = self.by_partition.entry(partition).or_default();
        last.offset = offset;
        match (key, &mut last.key) {
            (Some(k), Some(buf)) => {
                buf.clear();
                buf.extend_from_slice(k);
            }
            (Some(k), none) => *none = Some(k.to_vec()),
            (None, k) => *k = None,
        }
        last.payload.clear();
        last.payload.extend_from_slice(payload);
        last.timestamp_ms = timestamp_ms;
    }

    /// Set the fingerprint of each partition's last record in `batch`, when it is the record
    /// noted last (records dropped from the batch since, for a revoked partition, leave theirs
    /// unset).
    pub(super) fn stamp(&self, batch: &mut [Pending]) {
        let mut seen: Vec<i32> = Vec::with_capacity(self.by_partition.len());
        for p in batch.iter_mut().rev() {
            if seen.len() == self.by_partition.len() {
                break;
            }
            if seen.contains(&p.partition) {
                continue;
            }
            seen.push(p.partition);
            if let Some(last) = self.by_partition.get(&p.partition) {
                if last.offset == p.offset && p.fingerprint.is_none() {
                    p.fingerprint = Some(fingerprint(
                        last.key.as_deref(),
                        &last.payload,
                        last.timestamp_ms,
                    ));
                }
            }
        }
    }
}

/// A misfit is acted on only when two statistics snapshots in a row show it: librdkafka reads a
/// partition's bounds for a snapshot without ordering that against the records it queues, so one
/// snapshot can lag behind records already consumed; the next one (a second later) cannot.
/// `previous` is the misfit and stored offset seen at the last snapshot.
pub(super) fn confirmed_misfit(
    previous: Option<(&'static str, i64)>,
    expected: i64,
    low: i64,
    high: i64,
) -> (Option<&'static str>, Option<(&'static str, i64)>) {
    let Some(reason) = offset_misfit(expected, low, high) else {
        return (None, None);
    };
    match previous {
        Some((_, before)) if offset_misfit(before, low, high).is_some() => (Some(reason), None),
        _ => (None, Some((reason, expected))),
    }
}

/// Whether a stored next offset fits the broker's log `[low, high]` (high = the next offset the
/// broker will assign). `None` when it fits; else the reason, as counted and recorded.
pub(super) fn offset_misfit(stored: i64, low: i64, high: i64) -> Option<&'static str> {
    if stored > high {
        Some("past_log_end")
    } else if stored < low {
        Some("before_log_start")
    } else {
        None
    }
}

impl Owned {
    /// Offset continuity, the "gap re-fetch" Tansu workaround: each partition's records must come
    /// with consecutive offsets. Tansu 0.6 can serve a later record batch before an earlier one is
    /// readable; taking it would move the stored offset past records never seen. So a record past
    /// the expected offset asks for a re-fetch from the missing one, up to `retries` times
    /// `GAP_REPAIR_WAIT` apart, before the gap is accepted as real.
    ///
    /// Before that, the "replaced log" check: the resume fetch starts at least one record before
    /// the stored offset, and that record must be the one stored last (same `fingerprint`). A
    /// different one means the broker's log is not the one the offset was stored against.
    /// `fingerprint` is asked for only when the record is the one to compare (hashing every
    /// record cost 15 % of the consume thread).
    pub(super) fn arrive(
        &mut self,
        offset: i64,
        fingerprint: impl FnOnce() -> i64,
        now: Instant,
        retries: u32,
    ) -> Arrival {
        if self.refused.is_some() {
            // Fetched before the pause took effect; its offset is not trusted.
            return Arrival::Skip;
        }
        self.last_record = now;
        if let Some((at, stored)) = self.verify {
            if offset < at {
                return Arrival::Skip;
            }
            self.verify = None;
            if offset == at && fingerprint() != stored {
                return Arrival::Replaced { at };
            }
            if offset > at {
                // The record is gone (retention, compaction, a transaction marker) or came late:
                // nothing to compare with. The offset checks still apply.
                tracing::debug!(
                    offset = at,
                    "the record before the stored offset was not served"
                );
            }
        }
        if offset < self.next_fetch {
            return Arrival::Skip;
        }
        if offset == self.next_fetch {
            self.next_fetch = offset + 1;
            self.gap = None;
            return Arrival::Take(self.epoch);
        }
        match self.gap {
            // A repair is under way: records fetched before it are still arriving.
            Some((at, _, since))
                if at == self.next_fetch && now.duration_since(since) < GAP_REPAIR_WAIT =>
            {
                Arrival::Skip
            }
            Some((at, n, _)) if at == self.next_fetch && n >= retries => {
                let missing_from = self.next_fetch;
                self.gap = None;
                self.next_fetch = offset + 1;
                Arrival::TakeOverGap {
                    epoch: self.epoch,
                    missing_from,
                    refetches: n,
                }
            }
            _ if retries == 0 => {
                self.next_fetch = offset + 1;
                Arrival::Take(self.epoch)
            }
            gap => {
                let n = gap.filter(|g| g.0 == self.next_fetch).map_or(0, |g| g.1);
                self.gap = Some((self.next_fetch, n + 1, now));
                Arrival::Repair {
                    from: self.next_fetch,
                    log_start: self.log_start,
                }
            }
        }
    }
}

/// How a consumed record relates to the offset its partition expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The record the partition expects: take it under this assignment epoch.
    Take(u64),
    /// Offsets `missing_from..` this record stayed missing after `refetches` re-fetches: take it,
    /// the gap is real (Kafka leaves gaps for transaction markers and compaction).
    TakeOverGap {
        epoch: u64,
        missing_from: i64,
        refetches: u32,
    },
    /// Read again on purpose (the resume lookback, a repair), fetched before a repair took
    /// effect, or the partition is refused: not taken.
    Skip,
    /// A gap: fetch again from `from` (never before `log_start`).
    Repair { from: i64, log_start: i64 },
    /// The record at `at` (just before the stored offset) is not the one stored: the log was
    /// replaced. Nothing of the partition is taken until the offset policy has acted.
    Replaced { at: i64 },
}

/// After a repair seek, records fetched before it may still arrive; they are skipped for this long
/// before another re-fetch counts.
pub(super) const GAP_REPAIR_WAIT: Duration = Duration::from_secs(2);

/// Where to fetch from to resume at `next`: a lookback earlier (see `resume_lookback_records`),
/// at least one record (the replaced-log check re-reads the record before `next`), never before
/// the log's start (Kafka refuses such a fetch).
pub(super) fn fetch_start(next: i64, lookback: i64, log_start: i64) -> i64 {
    next.saturating_sub(lookback.max(1))
        .max(log_start.min(next))
        .max(0)
}

/// One consumed record, owned, tagged with the assignment epoch it was read under.
pub(super) struct Pending {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) epoch: u64,
    /// The record's Kafka timestamp (when it was produced, or appended): the most an event's
    /// own timestamp may move its partition's event time to (see `Planner::plan`).
    pub(super) record_ts: Option<DateTime<Utc>>,
    /// The record's `fingerprint`, stored with the offset after it: set (by [`LastRecords::stamp`])
    /// on the last record of each partition in a batch handed to the writer. A move whose last
    /// record has none (a half of a split batch) stores none, and the next resume skips the check.
    pub(super) fingerprint: Option<i64>,
    pub(super) item: Item,
    /// Poison records: whether the DLQ already acknowledged it (a retried batch does not resend).
    pub(super) dlq_done: bool,
    /// The record's processing span, when its `traceparent` says the trace is sampled. It lives
    /// until the batch holding the record is committed.
    pub(super) trace: Option<tracing::Span>,
}

pub(super) enum Item {
    Event(Box<RawEvent>),
    /// A record that cannot be stored: it goes to the DLQ with `kind` and `message` as headers,
    /// and `headers` besides (a refused record's SQLSTATE, stage and derived row).
    Poison {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        kind: &'static str,
        message: String,
        headers: Vec<(&'static str, String)>,
    },
}

/// A batch turned into its write, plus what the loop learns from it.
pub(super) struct Plan<'a> {
    pub(super) write: BatchWrite<'a>,
    /// Where each of `write.events` sits in the batch (so a plan can be kept apart from it).
    pub(super) rows: Vec<usize>,
    /// Per partition, the services (as counted: own name or the overflow key) of its on-time
    /// events, each with its newest event time.
    pub(super) services: BTreeMap<i32, BTreeMap<String, i64>>,
    pub(super) filtered: u64,
    pub(super) late: u64,
    /// Events dated past the collector's clock plus the allowed lateness: stored, but not
    /// windowed, and they move no event time.
    pub(super) future: u64,
    /// Latencies cut to `MAX_LATENCY_MS`.
    pub(super) clamped_latencies: u64,
    /// Aggregated under the overflow key: `(what, events or findings, epoch starts first
    /// overflowed in this batch)`.
    pub(super) overflow: Vec<(&'static str, u64, Vec<i64>)>,
}

/// What planning a batch needs from the loop's settings.
pub(super) struct Planner<'a> {
    pub(super) filter: &'a Filter,
    pub(super) detector: &'a Detector,
    pub(super) windows: &'a WindowSettings,
    pub(super) specs: &'a [Spec],
    pub(super) error_rate_window_secs: u32,
    /// The collector's clock: no event moves event time past `now + allowed_lateness`.
    pub(super) now: DateTime<Utc>,
    /// The cardinality caps, kept across batches.
    pub(super) caps: &'a mut Caps,
}

impl Planner<'_> {
    /// What a batch writes: rows kept by the filter, window deltas and detector findings from every
    /// on-time event, offset and event-time moves, and the error-rate windows that close.
    pub(super) fn plan<'a>(&mut self, batch: &'a [Pending], own: &HashMap<i32, Owned>) -> Plan<'a> {
        let filter = self.filter;
        let lateness = chrono::Duration::seconds(i64::from(self.windows.allowed_lateness_secs));
        // No client steers others: whatever an event's own time or its record's broker timestamp
        // (any producer sets both), event time moves no further than the collector's own clock
        // plus the lateness windows already wait for.
        let horizon = self.now + lateness;
        let mut moves: BTreeMap<i32, OffsetMove> = BTreeMap::new();
        let mut services: BTreeMap<i32, BTreeMap<String, i64>> = BTreeMap::new();
        let mut agg = Aggregator::default();
        let mut plan = Plan {
            write: BatchWrite::default(),
            rows: Vec::new(),
            services: BTreeMap::new(),
            filtered: 0,
            late: 0,
            future: 0,
            clamped_latencies: 0,
            overflow: Vec::new(),
        };
        for (i, p) in batch.iter().enumerate() {
            let Some(o) = own.get(&p.partition) else {
                continue;
            };
            let m = moves.entry(p.partition).or_insert(OffsetMove {
                partition: p.partition,
                expected: o.expected,
                next: p.offset + 1,
                max_event_ts: o.max_ts,
                last_record_hash: p.fingerprint,
            });
            if p.offset + 1 >= m.next {
                m.next = p.offset + 1;
                m.last_record_hash = p.fingerprint;
            }
            let Item::Event(e) = &p.item else {
                continue;
            };
            self.detector.inspect(e, &mut plan.write.findings);
            let late = m
                .max_event_ts
                .is_some_and(|max| e.timestamp() < max - lateness);
            if late {
                plan.late += 1;
            } else if e.timestamp() > horizon {
                // Dated past the collector's clock plus the lateness (only a raw producer can: the
                // gateway refuses more than its own small allowance): stored and counted, but it
                // neither moves event time nor opens window rows (else one such event would make
                // every on-time event after it late, for good, and far-future rows and keys
                // would pile up where no window ever closes).
                plan.future += 1;
            } else {
                let latency = self.windows.latency_ms(e);
                plan.clamped_latencies += u64::from(latency.is_some_and(|l| l.clamped));
                agg.add(e.service(), e, latency);
                // An event dated ahead of its record's timestamp is windowed under its own time
                // but moves the partition's event time no further than the record's.
                let progress = p.record_ts.map_or(e.timestamp(), |r| e.timestamp().min(r));
                m.max_event_ts = Some(m.max_event_ts.map_or(progress, |t| t.max(progress)));
                let secs = e.timestamp().timestamp();
                let s = services.entry(p.partition).or_default();
                match s.get_mut(e.service()) {
                    Some(last) => *last = (*last).max(secs),
                    None => {
                        s.insert(e.service().to_owned(), secs);
                    }
                }
            }
            if filter.stores(e) {
                plan.write.events.push(StoredEvent {
                    event: e,
                    partition: p.partition,
                    offset: p.offset,
                });
                plan.rows.push(i);
            } else {
                plan.filtered += 1;
            }
        }
        let epoch_secs = self.caps.service_epoch_secs;
        let capped = agg.cap_services(&mut self.caps.services, epoch_secs);
        if capped.events > 0 {
            plan.overflow
                .push(("service", capped.events, capped.first_epochs.clone()));
        }
        for s in services.values_mut() {
            *s = capped.rename(std::mem::take(s), epoch_secs);
        }
        plan.overflow
            .extend(cap_findings(&mut plan.write.findings, self.caps, self.now));
        let closed = self.closed_error_windows(&moves, own, &services);
        plan.write.windows = agg.into_deltas(self.specs);
        plan.write.moves = moves.into_values().collect();
        plan.write.closed = closed.into_iter().collect();
        plan.services = services;
        plan
    }

    /// The error-rate windows that close because a partition's event time moved past them: per
    /// service, the newest window start that closed (services the partition knew or saw now).
    fn closed_error_windows(
        &self,
        moves: &BTreeMap<i32, OffsetMove>,
        own: &HashMap<i32, Owned>,
        services: &BTreeMap<i32, BTreeMap<String, i64>>,
    ) -> BTreeMap<String, DateTime<Utc>> {
        let width = i64::from(self.error_rate_window_secs);
        let lateness_secs = i64::from(self.windows.allowed_lateness_secs);
        let mut closed: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for m in moves.values() {
            let Some(o) = own.get(&m.partition) else {
                continue;
            };
            let before = closed_upto(o.max_ts, lateness_secs, width);
            let after = closed_upto(m.max_event_ts, lateness_secs, width);
            if after <= before {
                continue;
            }
            let Some(upto) = closed_window(m.max_event_ts, lateness_secs, width) else {
                continue;
            };
            let seen = services.get(&m.partition);
            for s in o
                .services
                .keys()
                .chain(seen.into_iter().flat_map(|s| s.keys()))
            {
                let e = closed.entry(s.clone()).or_insert(upto);
                *e = (*e).max(upto);
            }
        }
        closed
    }
}

/// How many error-rate windows a partition remembers a service after its last event: long enough
/// that the group's watermark (the slowest partition) has judged its last window, short enough
/// that services come and go without the set growing (360 windows of 10 s: an hour).
pub(super) const SERVICE_MEMORY_WINDOWS: i64 = 360;

/// Forget the services whose newest event is more than `SERVICE_MEMORY_WINDOWS` closed windows
/// old: their windows were closed (and listed for judging) long ago.
pub(super) fn forget_services(
    services: &mut BTreeMap<String, i64>,
    max_ts: Option<DateTime<Utc>>,
    lateness_secs: i64,
    width: i64,
) {
    let closed = closed_upto(max_ts, lateness_secs, width);
    if closed == i64::MIN {
        return;
    }
    services.retain(|_, last| last.div_euclid(width) > closed - SERVICE_MEMORY_WINDOWS);
}

/// Finds partitions nobody stores: the group's rebalance left them unassigned (Tansu 0.6 can
/// strip every partition from a member when a SIGKILLed member's session expires, and assign
/// them to no one: the "orphaned assignment"), or their owner cannot store. Fed, for each
/// partition this consumer does not own, with its stored next offset and the log's end; a
/// partition is unstored once its log holds records past the stored offset and that offset has
/// not moved for `stall_after`.
#[derive(Debug, Default)]
pub(super) struct OrphanWatch {
    /// partition -> (stored offset, since when it has not moved while records waited)
    waiting: HashMap<i32, (i64, Instant)>,
}

impl OrphanWatch {
    /// `observed`: `(partition, stored next offset, log end)` of every partition this consumer
    /// does not own. Returns the partitions unstored now, in order.
    pub(super) fn observe(
        &mut self,
        now: Instant,
        observed: &[(i32, i64, i64)],
        stall_after: Duration,
    ) -> Vec<i32> {
        let mut unstored = Vec::new();
        let mut waiting = HashMap::new();
        for &(p, stored, end) in observed {
            if end <= stored {
                continue; // nothing to store
            }
            let since = match self.waiting.get(&p) {
                Some(&(before, since)) if before == stored => since,
                _ => now,
            };
            if now.duration_since(since) >= stall_after {
                unstored.push(p);
            }
            waiting.insert(p, (stored, since));
        }
        self.waiting = waiting;
        unstored.sort_unstable();
        unstored
    }
}

#[cfg(test)]
pub(super) mod tests;
