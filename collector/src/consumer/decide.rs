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
use logpipe_common::LogEvent;

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
    Event(Box<LogEvent>),
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
            services: BTreeMap::new(),
            filtered: 0,
            late: 0,
            future: 0,
            clamped_latencies: 0,
            overflow: Vec::new(),
        };
        for p in batch {
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
                .is_some_and(|max| e.timestamp < max - lateness);
            if late {
                plan.late += 1;
            } else if e.timestamp > horizon {
                // Dated past the collector's clock plus the lateness (only a raw producer can: the
                // gateway refuses more than its own small allowance): stored and counted, but it
                // neither moves event time nor opens window rows (else one such event would make
                // every on-time event after it late, for good, and far-future rows and keys
                // would pile up where no window ever closes).
                plan.future += 1;
            } else {
                let latency = self.windows.latency_ms(e);
                plan.clamped_latencies += u64::from(latency.is_some_and(|l| l.clamped));
                agg.add(&e.service, e, latency);
                // An event dated ahead of its record's timestamp is windowed under its own time
                // but moves the partition's event time no further than the record's.
                let progress = p.record_ts.map_or(e.timestamp, |r| e.timestamp.min(r));
                m.max_event_ts = Some(m.max_event_ts.map_or(progress, |t| t.max(progress)));
                let secs = e.timestamp.timestamp();
                let s = services.entry(p.partition).or_default();
                match s.get_mut(e.service.as_str()) {
                    Some(last) => *last = (*last).max(secs),
                    None => {
                        s.insert(e.service.clone(), secs);
                    }
                }
            }
            if filter.stores(e) {
                plan.write.events.push(StoredEvent {
                    event: e,
                    partition: p.partition,
                    offset: p.offset,
                });
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
        // Error-rate windows that close because a partition's event time moved past them.
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
        plan.write.windows = agg.into_deltas(self.specs);
        plan.write.moves = moves.into_values().collect();
        plan.write.closed = closed.into_iter().collect();
        plan.services = services;
        plan
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
mod tests {
    use super::*;

    #[test]
    fn a_window_closes_once_event_time_passes_its_end_plus_lateness() {
        let t = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        // 08:00:25 minus 10 s lateness = 08:00:15: the window [08:00:00, 08:00:10) is closed.
        let w = closed_window(t("2026-11-23T08:00:25Z"), 10, 10).unwrap();
        assert_eq!(w, "2026-11-23T08:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(
            closed_upto(t("2026-11-23T08:00:29Z"), 10, 10),
            closed_upto(t("2026-11-23T08:00:20Z"), 10, 10)
        );
        assert!(
            closed_upto(t("2026-11-23T08:00:30Z"), 10, 10)
                > closed_upto(t("2026-11-23T08:00:29Z"), 10, 10)
        );
        assert_eq!(closed_window(None, 10, 10), None);
    }

    #[test]
    fn a_stored_offset_fits_from_the_log_start_up_to_its_end() {
        assert_eq!(offset_misfit(0, 0, 0), None);
        assert_eq!(offset_misfit(5, 0, 5), None);
        assert_eq!(offset_misfit(3, 3, 10), None);
        // The in-memory broker came back empty: stored 213,980, log end 38,800.
        assert_eq!(offset_misfit(213_980, 0, 38_800), Some("past_log_end"));
        assert_eq!(offset_misfit(1, 0, 0), Some("past_log_end"));
        // Retention removed records never stored.
        assert_eq!(offset_misfit(2, 5, 10), Some("before_log_start"));
    }

    #[test]
    fn a_resume_fetch_looks_back_but_never_before_the_log_start() {
        assert_eq!(fetch_start(100, 10, 0), 90);
        assert_eq!(fetch_start(5, 10, 0), 0);
        assert_eq!(fetch_start(100, 10, 95), 95);
        // The record before the offset is always re-read (the replaced-log check).
        assert_eq!(fetch_start(100, 0, 0), 99);
        assert_eq!(fetch_start(0, 0, 0), 0);
        // A log start past the offset (a misfit being handled) never moves the fetch forward.
        assert_eq!(fetch_start(3, 10, 8), 3);
    }

    #[test]
    fn a_misfit_counts_only_when_the_next_snapshot_confirms_it() {
        // First sight: suspected, not acted on.
        let (act, suspect) = confirmed_misfit(None, 200, 0, 100);
        assert_eq!(act, None);
        assert_eq!(suspect, Some(("past_log_end", 200)));
        // A later snapshot caught up with the records already consumed: no misfit at all.
        assert_eq!(confirmed_misfit(suspect, 250, 0, 260), (None, None));
        // The next snapshot shows it again (even with more stored since): act.
        let (act, suspect) = confirmed_misfit(Some(("past_log_end", 200)), 200, 0, 40);
        assert_eq!((act, suspect), (Some("past_log_end"), None));
        // A snapshot whose end passed the earlier offset, with the new one still past it: the
        // earlier sighting was a stale snapshot; start over.
        let (act, suspect) = confirmed_misfit(Some(("past_log_end", 200)), 300, 0, 250);
        assert_eq!((act, suspect), (None, Some(("past_log_end", 300))));
    }

    #[test]
    fn a_partition_with_records_and_a_stored_offset_that_does_not_move_is_unstored() {
        let t0 = Instant::now();
        let after = Duration::from_secs(60);
        let mut w = OrphanWatch::default();
        let none: Vec<i32> = Vec::new();
        // p0 behind, p1 caught up.
        assert_eq!(w.observe(t0, &[(0, 10, 50), (1, 7, 7)], after), none);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(w.observe(t1, &[(0, 10, 60), (1, 7, 7)], after), none);
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(w.observe(t2, &[(0, 10, 60), (1, 7, 9)], after), vec![0]);
        // p1 just fell behind: its clock starts now. p0's owner stores again: its clock restarts.
        let t3 = t0 + Duration::from_secs(100);
        assert_eq!(w.observe(t3, &[(0, 40, 60), (1, 7, 9)], after), none);
        let t4 = t0 + Duration::from_secs(125);
        assert_eq!(w.observe(t4, &[(0, 40, 60), (1, 7, 9)], after), vec![1]);
        // Caught up, or owned by this consumer again (not observed): no longer unstored.
        assert_eq!(w.observe(t4, &[(1, 9, 9)], after), none);
        assert!(w.waiting.is_empty());
    }

    fn owned(next: i64) -> Owned {
        Owned::new(
            1,
            Stored {
                next_offset: next,
                max_event_ts: None,
                last_record_hash: None,
            },
            Instant::now(),
        )
    }

    #[test]
    fn records_in_order_are_taken_and_earlier_ones_skipped() {
        let now = Instant::now();
        let mut o = owned(100);
        assert_eq!(
            o.arrive(98, || 0, now, 5),
            Arrival::Skip,
            "the resume lookback"
        );
        assert_eq!(o.arrive(100, || 0, now, 5), Arrival::Take(1));
        assert_eq!(o.arrive(101, || 0, now, 5), Arrival::Take(1));
        assert_eq!(o.next_fetch, 102);
        assert_eq!(
            o.arrive(101, || 0, now, 5),
            Arrival::Skip,
            "a record read twice"
        );
    }

    #[test]
    fn a_gap_is_refetched_then_waited_for_then_accepted_after_the_retries() {
        let t0 = Instant::now();
        let mut o = owned(10);
        o.log_start = 4;
        // 10..14 missing: fetch again from 10.
        assert_eq!(
            o.arrive(15, || 0, t0, 2),
            Arrival::Repair {
                from: 10,
                log_start: 4
            }
        );
        // Records fetched before the repair are still arriving: skipped, no new re-fetch.
        assert_eq!(
            o.arrive(16, || 0, t0 + Duration::from_millis(500), 2),
            Arrival::Skip
        );
        // Still missing after the wait: a second re-fetch.
        let t1 = t0 + GAP_REPAIR_WAIT;
        assert!(matches!(
            o.arrive(16, || 0, t1, 2),
            Arrival::Repair { from: 10, .. }
        ));
        // After `retries` re-fetches the gap is real: taken, and the partition moves on.
        let t2 = t1 + GAP_REPAIR_WAIT;
        assert_eq!(
            o.arrive(17, || 0, t2, 2),
            Arrival::TakeOverGap {
                epoch: 1,
                missing_from: 10,
                refetches: 2
            }
        );
        assert_eq!(o.next_fetch, 18);
        assert_eq!(o.gap, None);
    }

    #[test]
    fn a_repaired_gap_takes_the_missing_record_when_it_comes() {
        let t0 = Instant::now();
        let mut o = owned(10);
        assert!(matches!(o.arrive(12, || 0, t0, 5), Arrival::Repair { .. }));
        assert_eq!(o.arrive(10, || 0, t0, 5), Arrival::Take(1));
        assert_eq!(o.gap, None);
        assert_eq!(o.arrive(11, || 0, t0, 5), Arrival::Take(1));
    }

    #[test]
    fn with_no_retries_a_gap_is_accepted_at_once_and_a_refused_partition_takes_nothing() {
        let now = Instant::now();
        let mut o = owned(10);
        assert_eq!(o.arrive(20, || 0, now, 0), Arrival::Take(1));
        let mut refused = owned(10);
        refused.refused = Some("past_log_end");
        assert_eq!(refused.arrive(10, || 0, now, 5), Arrival::Skip);
        assert_eq!(refused.next_fetch, 10);
    }

    #[test]
    fn a_resumed_partition_whose_record_before_the_offset_differs_was_replaced() {
        let now = Instant::now();
        let stored = |hash| Stored {
            next_offset: 100,
            max_event_ts: None,
            last_record_hash: Some(hash),
        };
        // The same log: the record at 99 is the one stored last; then records are taken.
        let mut same = Owned::new(1, stored(42), Instant::now());
        assert_eq!(same.verify, Some((99, 42)));
        assert_eq!(same.arrive(90, || 7, now, 5), Arrival::Skip, "the lookback");
        assert_eq!(same.arrive(99, || 42, now, 5), Arrival::Skip);
        assert_eq!(same.verify, None);
        assert_eq!(same.arrive(100, || 8, now, 5), Arrival::Take(1));
        // Another log that already reaches past the offset: nothing of it is taken.
        let mut replaced = Owned::new(1, stored(42), Instant::now());
        assert_eq!(
            replaced.arrive(99, || 43, now, 5),
            Arrival::Replaced { at: 99 }
        );
        assert_eq!(replaced.next_fetch, 100);
        // The record is not served (deleted by retention, say): nothing to compare, go on.
        let mut gone = Owned::new(1, stored(42), Instant::now());
        assert_eq!(gone.arrive(100, || 8, now, 5), Arrival::Take(1));
        // No fingerprint stored (an offset reset, a row from before fingerprints): no check.
        let none = Owned::new(
            1,
            Stored {
                last_record_hash: None,
                ..stored(0)
            },
            Instant::now(),
        );
        assert_eq!(none.verify, None);
    }

    #[test]
    fn a_fingerprint_depends_on_key_payload_and_timestamp_and_is_stable() {
        let f = fingerprint(Some(b"ab"), b"c", Some(1));
        assert_eq!(f, fingerprint(Some(b"ab"), b"c", Some(1)));
        assert_ne!(f, fingerprint(Some(b"a"), b"bc", Some(1)));
        assert_ne!(f, fingerprint(Some(b"ab"), b"c", Some(2)));
        assert_ne!(f, fingerprint(None, b"abc", Some(1)));
        // Stored in Postgres: the value must not change between builds or versions.
        assert_eq!(fingerprint(None, b"", None), 0x1f1e_1550_48d8_f9f5_i64);
    }

    #[test]
    fn only_the_last_record_of_each_partition_in_a_batch_gets_its_fingerprint() {
        let poison = || Item::Poison {
            key: None,
            payload: Vec::new(),
            kind: "test",
            message: String::new(),
            headers: Vec::new(),
        };
        let mut last = LastRecords::default();
        let mut batch = Vec::new();
        for (partition, offset, payload) in [(0, 10, "a"), (1, 5, "b"), (0, 11, "c"), (1, 6, "d")] {
            let mut p = pending(partition, offset, poison());
            p.fingerprint = None;
            last.note(partition, offset, Some(b"k"), payload.as_bytes(), Some(7));
            batch.push(p);
        }
        // A partition noted, then revoked: its records left the batch.
        last.note(2, 40, None, b"gone", None);
        last.stamp(&mut batch);
        let fps: Vec<Option<i64>> = batch.iter().map(|p| p.fingerprint).collect();
        assert_eq!(
            fps,
            vec![
                None,
                None,
                Some(fingerprint(Some(b"k"), b"c", Some(7))),
                Some(fingerprint(Some(b"k"), b"d", Some(7))),
            ]
        );
        // The batch grew while the writer was busy: the new last records are stamped too, and a
        // key that went away is not remembered.
        let mut p = pending(0, 12, poison());
        p.fingerprint = None;
        last.note(0, 12, None, b"e", Some(8));
        batch.push(p);
        last.stamp(&mut batch);
        assert_eq!(batch[4].fingerprint, Some(fingerprint(None, b"e", Some(8))));
        assert_eq!(
            batch[2].fingerprint,
            Some(fingerprint(Some(b"k"), b"c", Some(7)))
        );
    }

    fn event(secs: i64, level: logpipe_common::Level, service: &str) -> LogEvent {
        LogEvent {
            event_id: format!("e{secs}{service}"),
            timestamp: DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            level,
            service: service.into(),
            component: String::new(),
            host: String::new(),
            message: "m".into(),
            trace_id: None,
            span_id: None,
            attributes: serde_json::Map::new(),
        }
    }

    fn pending(partition: i32, offset: i64, item: Item) -> Pending {
        Pending {
            partition,
            offset,
            epoch: 1,
            record_ts: None,
            fingerprint: Some(offset),
            item,
            dlq_done: false,
            trace: None,
        }
    }

    /// What a `Planner` borrows, owned by the test.
    struct PlanFixture {
        filter: Filter,
        detector: Detector,
        windows: WindowSettings,
        specs: Vec<Spec>,
        caps: Caps,
        /// The collector's clock: 300 s after the tests' epoch.
        now: DateTime<Utc>,
    }

    impl PlanFixture {
        fn new(min_level: logpipe_common::Level) -> Self {
            let windows = WindowSettings::default(); // lateness 10 s
            PlanFixture {
                filter: Filter::new(crate::filter::FilterRules {
                    min_level,
                    ..Default::default()
                })
                .unwrap(),
                detector: Detector::new(&crate::detect::AlertSettings::default()).unwrap(),
                specs: windows.specs(),
                caps: Caps::new(3, 60, 2),
                now: DateTime::from_timestamp(1_800_000_300, 0).unwrap(),
                windows,
            }
        }

        fn planner(&mut self) -> Planner<'_> {
            Planner {
                filter: &self.filter,
                detector: &self.detector,
                windows: &self.windows,
                specs: &self.specs,
                error_rate_window_secs: 10,
                now: self.now,
                caps: &mut self.caps,
            }
        }
    }

    /// Events counted in the 10 s tumbling windows of a plan.
    fn windowed(plan: &Plan<'_>) -> i64 {
        plan.write
            .windows
            .iter()
            .filter(|(k, _)| k.spec.width == 10 && k.spec.slide == 10)
            .map(|(_, s)| s.count)
            .sum()
    }

    #[test]
    fn an_event_dated_ahead_of_its_record_moves_event_time_only_to_the_record_time() {
        use logpipe_common::Level;
        let mut fixture = PlanFixture::new(Level::Trace);
        let mut own = HashMap::new();
        own.insert(0, owned(0));
        let at = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        let mut future = pending(0, 0, Item::Event(Box::new(event(290, Level::Info, "api"))));
        future.record_ts = Some(at(0));
        // Produced a second later, dated 2 s before: on time, not late.
        let mut on_time = pending(0, 1, Item::Event(Box::new(event(-1, Level::Info, "web"))));
        on_time.record_ts = Some(at(1));
        let batch = vec![future, on_time];
        let plan = fixture.planner().plan(&batch, &own);
        assert_eq!(plan.late, 0, "the future-dated event pushed nothing");
        assert_eq!(plan.write.moves[0].max_event_ts, Some(at(0)));
        assert_eq!(windowed(&plan), 2, "both are windowed under their own time");
    }

    #[test]
    fn a_plan_moves_each_offset_past_its_last_record_and_keeps_late_events_out_of_windows() {
        use logpipe_common::Level;
        let mut fixture = PlanFixture::new(Level::Info);
        let mut own = HashMap::new();
        own.insert(0, owned(100));
        let mut p1 = owned(7);
        p1.max_ts = Some(DateTime::from_timestamp(1_800_000_100, 0).unwrap());
        p1.services.insert("billing".into(), 1_800_000_095);
        own.insert(1, p1);
        let batch = vec![
            pending(0, 100, Item::Event(Box::new(event(0, Level::Info, "api")))),
            pending(0, 101, Item::Event(Box::new(event(1, Level::Debug, "api")))),
            pending(
                0,
                102,
                Item::Poison {
                    key: None,
                    payload: b"{".to_vec(),
                    kind: "invalid_json",
                    message: "eof".into(),
                    headers: Vec::new(),
                },
            ),
            // 20 s behind partition 1's event time: late (stored raw, not windowed).
            pending(1, 7, Item::Event(Box::new(event(80, Level::Error, "web")))),
            // Partition 1's event time moves to +125 s: windows up to [+100, +110) close.
            pending(1, 8, Item::Event(Box::new(event(125, Level::Info, "web")))),
            // A partition this consumer does not own: nothing of it is planned.
            pending(9, 0, Item::Event(Box::new(event(0, Level::Info, "api")))),
        ];
        let plan = fixture.planner().plan(&batch, &own);
        let moves: Vec<(i32, i64, i64)> = plan
            .write
            .moves
            .iter()
            .map(|m| (m.partition, m.expected, m.next))
            .collect();
        assert_eq!(
            moves,
            vec![(0, 100, 103), (1, 7, 9)],
            "a poison record's offset moves too"
        );
        assert_eq!(plan.late, 1);
        assert_eq!(plan.filtered, 1, "the DEBUG event is below min_level");
        let stored: Vec<i64> = plan.write.events.iter().map(|e| e.offset).collect();
        assert_eq!(stored, vec![100, 7, 8], "late events are still stored raw");
        assert_eq!(
            windowed(&plan),
            3,
            "every on-time event, filtered or not, but not the late one"
        );
        assert_eq!(
            plan.write.moves[1].max_event_ts,
            DateTime::from_timestamp(1_800_000_125, 0)
        );
        // Event time crossed window ends on both partitions (partition 0 had none before): the
        // error-rate windows of the services seen there close, up to the partition's own progress.
        let closed: Vec<(&str, i64)> = plan
            .write
            .closed
            .iter()
            .map(|(s, t)| (s.as_str(), t.timestamp() - 1_800_000_000))
            .collect();
        assert_eq!(closed, vec![("api", -20), ("billing", 100), ("web", 100)]);
    }

    #[test]
    fn a_record_dated_past_the_collectors_clock_is_stored_and_counted_but_moves_no_event_time() {
        use logpipe_common::Level;
        let mut fixture = PlanFixture::new(Level::Trace);
        let mut own = HashMap::new();
        own.insert(0, owned(0));
        let at = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        // A raw producer sets both the event's time and the record's broker timestamp ahead.
        let mut far = pending(
            0,
            0,
            Item::Event(Box::new(event(86_400 * 365, Level::Info, "api"))),
        );
        far.record_ts = Some(at(86_400 * 365));
        let mut on_time = pending(0, 1, Item::Event(Box::new(event(295, Level::Info, "web"))));
        on_time.record_ts = Some(at(295));
        let batch = [far, on_time];
        let plan = fixture.planner().plan(&batch, &own);
        assert_eq!(plan.future, 1);
        assert_eq!(plan.late, 0, "the event after it is on time");
        assert_eq!(plan.write.events.len(), 2, "both are stored");
        assert_eq!(plan.write.moves[0].max_event_ts, Some(at(295)));
        assert_eq!(windowed(&plan), 1, "only the on-time one opens window rows");
    }

    #[test]
    fn services_past_the_cap_are_windowed_under_the_overflow_key_and_say_so_once() {
        use logpipe_common::Level;
        let mut fixture = PlanFixture::new(Level::Trace); // 3 services per 60 s window
        let mut own = HashMap::new();
        own.insert(0, owned(0));
        let names = ["a", "b", "c", "d", "e"];
        let batch: Vec<Pending> = names
            .iter()
            .enumerate()
            .map(|(i, s)| pending(0, i as i64, Item::Event(Box::new(event(1, Level::Info, s)))))
            .collect();
        let plan = fixture.planner().plan(&batch, &own);
        let mut services: Vec<&str> = plan
            .write
            .windows
            .iter()
            .filter(|(k, _)| k.spec.width == 10)
            .map(|(k, _)| k.service.as_str())
            .collect();
        services.dedup();
        assert_eq!(
            services.len(),
            4,
            "three own names and the overflow key: {services:?}"
        );
        assert!(services.contains(&crate::cardinality::OVERFLOW_KEY));
        assert_eq!(windowed(&plan), 5, "every event still counts");
        assert_eq!(
            plan.write.events.len(),
            5,
            "and is stored under its own name"
        );
        assert_eq!(
            plan.overflow,
            vec![("service", 2, vec![1_800_000_000])] // a window start: 60 divides it
        );
        // The next batch in the same window: the overflow is counted, not announced again.
        let again = vec![pending(
            0,
            5,
            Item::Event(Box::new(event(2, Level::Info, "f"))),
        )];
        let mut own2 = HashMap::new();
        own2.insert(0, owned(5));
        let plan = fixture.planner().plan(&again, &own2);
        assert_eq!(plan.overflow, vec![("service", 1, vec![])]);
    }

    #[test]
    fn login_subjects_past_the_cap_count_together_and_can_still_raise_brute_force() {
        use logpipe_common::Level;
        let mut fixture = PlanFixture::new(Level::Trace); // 2 subjects per brute-force window
        let mut own = HashMap::new();
        own.insert(0, owned(0));
        let batch: Vec<Pending> = (0..5)
            .map(|i| {
                let mut e = event(1, Level::Warn, "auth");
                e.message = "login failed".into();
                e.attributes
                    .insert("client.ip".into(), format!("198.51.100.{i}").into());
                pending(0, i, Item::Event(Box::new(e)))
            })
            .collect();
        let plan = fixture.planner().plan(&batch, &own);
        let subjects: Vec<(&str, i64)> = plan
            .write
            .findings
            .failed_logins
            .values()
            .map(|f| (f.subject.as_str(), f.hits))
            .collect();
        assert_eq!(subjects.len(), 3, "{subjects:?}");
        assert!(subjects.contains(&("ip:~other", 3)), "{subjects:?}");
    }

    #[test]
    fn a_partition_forgets_services_long_after_their_last_window_closed() {
        let mut services = BTreeMap::new();
        services.insert("old".to_string(), 0);
        services.insert("recent".to_string(), 3_590);
        let now = DateTime::from_timestamp(3_620, 0);
        forget_services(&mut services, now, 10, 10);
        assert_eq!(services.keys().collect::<Vec<_>>(), vec!["recent"]);
        forget_services(&mut services, None, 10, 10);
        assert_eq!(
            services.len(),
            1,
            "no event time: nothing closed, nothing forgotten"
        );
    }
}
