//! The consume loop. It runs on its own blocking thread with an rdkafka `BaseConsumer`, so rebalance
//! callbacks (served inside `poll`) can wait for Postgres without stalling the async runtime.
//!
//! - On assignment, each partition starts at the offset stored in Postgres, never Kafka's.
//! - Records are parsed into events (JSON, or an Apache/syslog line); a record that cannot be parsed
//!   goes to the DLQ (acknowledged before its offset commits) and never stops the partition.
//! - A batch is written when it is full or its oldest record has waited `batch_max_ms`: the filter
//!   picks the rows stored raw, every on-time event feeds the windows and detectors, and rows,
//!   window deltas, alerts and offsets commit in one transaction.
//! - Event time per partition: its newest event time, stored with the offset. Events older than
//!   that minus the allowed lateness are late (stored raw, not windowed). An idle partition's event
//!   time moves to the wall clock so its last windows close.
//! - When Postgres fails, the assigned partitions are paused (nothing more is fetched, memory stays
//!   bounded) while the loop keeps polling for rebalances; the write is retried with backoff and the
//!   partitions resume by themselves once it succeeds.
//! - On revocation, buffered records of the revoked partitions are dropped before anything else is
//!   written: the next owner resumes from the stored offset, so nothing is lost or doubled.
//! - A batch the database refuses for good (a data or integrity error, or the same error twice) is
//!   split until the refused records stand alone; those go to the DLQ and the rest commit, so one
//!   bad record never stalls a partition. A record whose parser panics is dead-lettered too.
//! - When the connection to the broker drops, fetching pauses until the broker answers metadata
//!   with the topic present (recreated if the broker came back empty); see `BrokerHold`.
//! - A stored offset outside the broker's log (past its end after the broker lost its data, before
//!   its start after retention) is found on assignment, on a fetch the broker refuses, and every
//!   5 s against the watermarks; it is logged at ERROR, counted, and reset to the log start (and
//!   recorded in `offset_resets`) or refused, per `consumer.offset_out_of_range`. Never skipped.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use logpipe_common::event::EventError;
use logpipe_common::formats::{derived_id, parse_line, LineContext};
use logpipe_common::kafka::header_value;
use logpipe_common::LogEvent;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::{CollectorConfig, OffsetPolicy};
use crate::db::{BatchWrite, Db, DbError, OffsetMove, OffsetReset, Stored, StoredEvent};
use crate::detect::Detector;
use crate::filter::FilterHandle;
use crate::telemetry;
use crate::windows::{Aggregator, Spec};

/// Liveness of the loop and of its last write, read by `/ready`.
#[derive(Debug, Default)]
pub struct ConsumerHealth {
    pub running: AtomicBool,
    pub db_ok: AtomicBool,
    /// Records read from owned partitions by this process (including ones later dropped on revoke).
    pub consumed: AtomicU64,
    /// Rows this process inserted.
    pub stored: AtomicU64,
    /// Owned partitions held paused because their stored offset does not fit the broker's log.
    pub refused_partitions: AtomicU64,
}

/// Marks the loop stopped however it ends, a panic included, so `/ready` fails at once.
struct RunningGuard(Arc<ConsumerHealth>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
        if std::thread::panicking() {
            tracing::error!("the consume loop panicked; the collector is not ready and exits");
        }
    }
}

/// Partitions this consumer owns: assignment epoch and the stored offset its next write must see.
#[derive(Debug, Default)]
struct Ownership {
    epoch: u64,
    partitions: HashMap<i32, Owned>,
}

#[derive(Debug, Clone)]
struct Owned {
    epoch: u64,
    /// Stored next offset: what the next write must find in Postgres.
    expected: i64,
    /// The offset the next record must have. Lower ones were re-read on purpose (the lookback, a
    /// repair) and are skipped; a higher one is a gap, re-fetched (see `accept`).
    next_fetch: i64,
    /// The gap being repaired: its position, how often it was re-fetched, and when last.
    gap: Option<(i64, u32, Instant)>,
    /// Stored event-time progress (newest event time seen).
    max_ts: Option<DateTime<Utc>>,
    /// When the last record of this partition arrived (idle detection).
    last_record: Instant,
    /// Services seen on this partition: whose error-rate windows it closes.
    services: BTreeSet<String>,
    /// The broker's log start when last seen: fetches never start before it.
    log_start: i64,
    /// Why the partition is held paused (its stored offset does not fit the log), if it is.
    refused: Option<&'static str>,
    /// A misfit seen in one statistics snapshot, with the stored offset then: acted on only if
    /// the next snapshot confirms it (see `confirmed_misfit`).
    suspect: Option<(&'static str, i64)>,
}

impl Owned {
    fn new(epoch: u64, stored: Stored) -> Owned {
        Owned {
            epoch,
            expected: stored.next_offset,
            next_fetch: stored.next_offset,
            gap: None,
            max_ts: stored.max_event_ts,
            last_record: Instant::now(),
            services: BTreeSet::new(),
            log_start: 0,
            refused: None,
            suspect: None,
        }
    }
}

/// A misfit is acted on only when two statistics snapshots in a row show it: librdkafka reads a
/// partition's bounds for a snapshot without ordering that against the records it queues, so one
/// snapshot can lag behind records already consumed; the next one (a second later) cannot.
/// `previous` is the misfit and stored offset seen at the last snapshot.
fn confirmed_misfit(
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
fn offset_misfit(stored: i64, low: i64, high: i64) -> Option<&'static str> {
    if stored > high {
        Some("past_log_end")
    } else if stored < low {
        Some("before_log_start")
    } else {
        None
    }
}

struct CollectorContext {
    db: Db,
    rt: Handle,
    group: String,
    topic: String,
    lookback: i64,
    policy: OffsetPolicy,
    ownership: Arc<Mutex<Ownership>>,
    cancel: CancellationToken,
    /// Set from librdkafka's threads when a broker connection fails (see `BrokerHold`).
    broker_lost: AtomicBool,
    /// The log's bounds per partition as the latest fetch responses told them (see `Bounds`).
    bounds: Mutex<Bounds>,
}

/// Each partition's log start and end as carried by fetch responses, from librdkafka's statistics
/// (once a second). The offset-fit check and the lag use these, not a ListOffsets query: Tansu
/// 0.6's in-memory engine answers ListOffsets(latest) with the base offset of the newest record
/// batch plus one, short of the log's end by the rest of that batch (the "short ListOffsets"
/// workaround); its fetch responses carry the true high watermark, as Kafka's do.
#[derive(Debug, Default)]
struct Bounds {
    /// Counts statistics snapshots, so the loop knows a new one arrived.
    snapshot: u64,
    /// partition -> (log start, log end); -1 when not known (no fetch response yet, or an error).
    partitions: HashMap<i32, (i64, i64)>,
}

/// How a consumed record relates to the offset its partition expects next.
enum Arrival {
    Take(u64),
    Skip,
    /// Re-fetch from this offset (the partition's log start is the second field).
    Repair(i64, i64),
}

/// After a repair seek, records fetched before it may still arrive; they are skipped for this long
/// before another re-fetch counts.
const GAP_REPAIR_WAIT: Duration = Duration::from_secs(2);

/// Where to fetch from to resume at `next`: a lookback earlier (see `resume_lookback_records`),
/// never before the log's start (Kafka refuses such a fetch).
fn fetch_start(next: i64, lookback: i64, log_start: i64) -> Offset {
    Offset::Offset(
        next.saturating_sub(lookback.max(0))
            .max(log_start.min(next))
            .max(0),
    )
}

/// Tansu workaround, the "unknown-topic fetch crash": Tansu 0.6 answers a fetch for a topic it
/// does not have (an in-memory broker restarted, before anyone recreated the topic) with a zero
/// topic id and a `CurrentLeader` tag; librdkafka 2.12 turns that tag into a metadata update for a
/// topic with no name and crashes (SIGSEGV in `rd_kafka_metadata_cache_find`). So when a broker
/// connection fails, the loop pauses every partition before librdkafka reconnects (reconnect
/// backoff 1 s), and resumes only once the broker answers metadata with the topic present,
/// creating it again if it is missing. On Apache Kafka the pause lasts one metadata round trip.
#[derive(Debug, Default)]
struct BrokerHold {
    held: bool,
    next_probe: Option<Instant>,
}

impl ClientContext for CollectorContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // librdkafka logs every broker connection failure (a disconnect, a refused connect)
        // under the FAIL facility, at once and from the broker's thread.
        if fac == "FAIL" {
            self.broker_lost.store(true, Ordering::Relaxed);
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}");
            }
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut bounds = self.bounds.lock().expect("bounds lock");
        bounds.snapshot += 1;
        for (&p, part) in &topic.partitions {
            if p >= 0 {
                bounds
                    .partitions
                    .insert(p, (part.lo_offset, part.hi_offset));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.broker_lost.store(true, Ordering::Relaxed);
        }
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for CollectorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.claim_with_retry(&partitions);
                let mut own = self.ownership.lock().expect("ownership lock");
                own.epoch += 1;
                let epoch = own.epoch;
                for (&p, &st) in &stored {
                    // Whether the stored offset fits the log is checked once the first fetch
                    // response tells the log's bounds (see `check_offsets`).
                    if let Err(e) = tpl.set_partition_offset(
                        &self.topic,
                        p,
                        fetch_start(st.next_offset, self.lookback, 0),
                    ) {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                    own.partitions.insert(p, Owned::new(epoch, st));
                }
                drop(own);
                tracing::info!(?stored, "partitions assigned; resuming from stored offsets");
                let res = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = res {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut own = self.ownership.lock().expect("ownership lock");
                for p in &partitions {
                    own.partitions.remove(p);
                }
                own.epoch += 1;
                drop(own);
                tracing::info!(
                    ?partitions,
                    "partitions revoked; their buffered records are dropped"
                );
                let res = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = res {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                self.ownership
                    .lock()
                    .expect("ownership lock")
                    .partitions
                    .clear();
                let _ = consumer.unassign();
            }
        }
    }
}

impl CollectorContext {
    /// A stored offset outside `[low, high]`: log it at ERROR, then reset it to the log start
    /// (recorded in Postgres, counted) and return the new offset, or, with the `refuse` policy or
    /// when the reset cannot be recorded, return `Err` (the partition stays paused).
    fn apply_policy(
        &self,
        partition: i32,
        stored: i64,
        low: i64,
        high: i64,
        reason: &'static str,
    ) -> Result<i64, ()> {
        if self.policy == OffsetPolicy::Refuse {
            tracing::error!(
                partition,
                stored,
                log_start = low,
                log_end = high,
                reason,
                "stored offset is outside the broker's log; partition paused (offset_out_of_range \
                 = refuse): set consumer_offsets.next_offset and restart the collector"
            );
            return Err(());
        }
        let reset = OffsetReset {
            partition,
            old_offset: stored,
            new_offset: low,
            log_start: low,
            log_end: high,
            reason,
        };
        match self
            .rt
            .block_on(self.db.reset_offset(&self.group, &self.topic, &reset))
        {
            Ok(()) => {
                tracing::error!(
                    partition,
                    stored,
                    log_start = low,
                    log_end = high,
                    reason,
                    "stored offset is outside the broker's log (did the broker lose its data?); \
                     reset to the log start and recorded in offset_resets"
                );
                telemetry::offset_reset(partition, reason);
                Ok(low)
            }
            Err(e) => {
                tracing::error!(partition, stored, reason, error = %e,
                    "stored offset is outside the broker's log and the reset cannot be recorded; \
                     partition paused until it can");
                Err(())
            }
        }
    }

    /// Postgres must answer before we can start a partition at the right place; keep asking (the
    /// partition is not consumed meanwhile) until it does or we are shutting down.
    fn claim_with_retry(&self, partitions: &[i32]) -> BTreeMap<i32, Stored> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .rt
                .block_on(self.db.claim_offsets(&self.group, &self.topic, partitions))
            {
                Ok(map) => return map,
                Err(e) if self.cancel.is_cancelled() => {
                    tracing::warn!(error = %e, "cannot load offsets during shutdown");
                    return BTreeMap::new();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load stored offsets; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// One consumed record, owned, tagged with the assignment epoch it was read under.
struct Pending {
    partition: i32,
    offset: i64,
    epoch: u64,
    item: Item,
    /// Poison records: whether the DLQ already acknowledged it (a retried batch does not resend).
    dlq_done: bool,
    /// The record's processing span, when its `traceparent` says the trace is sampled. It lives
    /// until the batch holding the record is committed.
    trace: Option<tracing::Span>,
}

enum Item {
    Event(Box<LogEvent>),
    /// A record that cannot be stored: it goes to the DLQ with `kind` and `message` as headers.
    Poison {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        kind: &'static str,
        message: String,
    },
}

pub struct ConsumerLoop {
    config: CollectorConfig,
    db: Db,
    consumer: BaseConsumer<CollectorContext>,
    dlq: FutureProducer,
    ownership: Arc<Mutex<Ownership>>,
    health: Arc<ConsumerHealth>,
    filter: FilterHandle,
    detector: Detector,
    specs: Vec<Spec>,
    rt: Handle,
    cancel: CancellationToken,
    /// Set when the broker refused a fetch position: check every partition's offsets now.
    check_offsets_now: Cell<bool>,
    hold: std::cell::RefCell<BrokerHold>,
    /// Records dead-lettered one after another while splitting a refused batch.
    refused_in_a_row: Cell<u32>,
}

/// See the "orphaned assignment" workaround in `ConsumerLoop::run`.
const UNASSIGNED_REJOIN: Duration = Duration::from_secs(60);

/// See `ConsumerLoop::dead_letter`.
const MAX_REFUSED_IN_A_ROW: u32 = 32;

/// A failed write leaves the partitions paused until this moment.
struct Backoff {
    until: Instant,
    delay: Duration,
}

impl ConsumerLoop {
    pub fn new(
        config: CollectorConfig,
        db: Db,
        health: Arc<ConsumerHealth>,
        filter: FilterHandle,
        detector: Detector,
        cancel: CancellationToken,
    ) -> Result<ConsumerLoop, KafkaError> {
        let rt = Handle::current();
        let ownership = Arc::new(Mutex::new(Ownership::default()));
        let context = CollectorContext {
            db: db.clone(),
            rt: rt.clone(),
            group: config.consumer.group_id.clone(),
            topic: config.kafka.raw_topic.clone(),
            lookback: config.consumer.resume_lookback_records,
            policy: config.consumer.offset_out_of_range,
            ownership: ownership.clone(),
            cancel: cancel.clone(),
            broker_lost: AtomicBool::new(false),
            bounds: Mutex::default(),
        };
        let mut client = config.kafka.client_config("logpipe-collector");
        // Connection failures must reach `CollectorContext::log` (see `BrokerHold`) whatever the
        // log filter; the context forwards them to tracing, which filters.
        client.set_log_level(RDKafkaLogLevel::Info);
        if let Some(id) = &config.consumer.group_instance_id {
            client.set("group.instance.id", id);
        }
        let consumer: BaseConsumer<CollectorContext> = client
            .set("group.id", &config.consumer.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Offsets live in Postgres; Kafka's committed offsets are never read or written.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A fetch position outside the log is an error we handle (see `check_offsets`), never
            // a silent jump: `earliest`/`latest` would move the position without a word.
            .set("auto.offset.reset", "error")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "300000")
            // Bounds what librdkafka prefetches, so a stalled database means bounded memory.
            .set("queued.max.messages.kbytes", "65536")
            // Time for the loop to pause fetching after a connection failure (see `BrokerHold`).
            .set("reconnect.backoff.ms", "1000")
            // Each partition's log bounds from fetch responses, once a second (see `Bounds`).
            .set("statistics.interval.ms", "1000")
            .set(
                "fetch.wait.max.ms",
                config.consumer.fetch_wait_max_ms.to_string(),
            )
            .set(
                "max.partition.fetch.bytes",
                config.consumer.max_partition_fetch_bytes.to_string(),
            )
            .create_with_context(context)?;
        consumer.subscribe(&[&config.kafka.raw_topic])?;
        let dlq: FutureProducer = config
            .kafka
            .client_config("logpipe-collector-dlq")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        let specs = config.windows.specs();
        Ok(ConsumerLoop {
            config,
            db,
            consumer,
            dlq,
            ownership,
            health,
            filter,
            detector,
            specs,
            rt,
            cancel,
            check_offsets_now: Cell::new(false),
            hold: Default::default(),
            refused_in_a_row: Cell::new(0),
        })
    }

    /// Consume until cancelled, then write the last batch and leave the group.
    pub fn run(self) {
        self.health.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(self.health.clone());
        self.health.db_ok.store(true, Ordering::Relaxed);
        let max_events = self.config.consumer.batch_max_events;
        let max_wait = Duration::from_millis(self.config.consumer.batch_max_ms);
        let mut batch: Vec<Pending> = Vec::with_capacity(max_events);
        let mut oldest: Option<Instant> = None;
        let mut seen_epoch = 0;
        let mut backoff: Option<Backoff> = None;
        let mut last_snapshot = 0;
        let mut last_idle_check = Instant::now();
        // When this consumer last owned a partition (see `UNASSIGNED_REJOIN`).
        let mut last_owned = Instant::now();
        while !self.cancel.is_cancelled() {
            // With records in hand, only look at what is already queued: when nothing is, the
            // consumer has caught up and the batch is written now (low latency when quiet,
            // batches as large as the backlog when not).
            let timeout = if batch.is_empty() {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(timeout);
            let caught_up = polled.is_none();
            self.watch_broker(backoff.is_some());
            // A rebalance inside poll may have revoked partitions: forget their buffered records.
            let epoch = self.ownership.lock().expect("ownership lock").epoch;
            if epoch != seen_epoch {
                seen_epoch = epoch;
                self.retain_owned(&mut batch);
                if backoff.is_some() || self.hold.borrow().held {
                    // Newly assigned partitions wait for the database (or the broker) too.
                    self.pause_all();
                } else {
                    // librdkafka keeps a partition's pause across a rebalance: one paused during
                    // a broker or database outage and assigned again after it would never fetch.
                    self.resume_all();
                }
                self.pause_refused();
            }
            match polled {
                Some(Ok(msg)) => {
                    let now = Instant::now();
                    if let Some(p) = self.accept(&msg, now) {
                        batch.push(p);
                        oldest.get_or_insert(now);
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // The broker refused a fetch position (the partition is not named here).
                    tracing::warn!("the broker refused a fetch offset; checking every partition");
                    self.check_offsets_now.set(true);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
                None => {}
            }
            if !self
                .ownership
                .lock()
                .expect("ownership lock")
                .partitions
                .is_empty()
            {
                last_owned = Instant::now();
            } else if last_owned.elapsed() >= UNASSIGNED_REJOIN {
                // The "orphaned assignment": after a member is SIGKILLed, Tansu 0.6 sometimes
                // revokes everything from the member that replaced it when the dead one's session
                // expires, and assigns it nothing again. This makes that loud (a warning a minute)
                // and tries a fresh join; in the one run seen with it (crash test), the rejoin did
                // not win the partitions back. With more collectors than partitions an idle
                // member rejoins once a minute: a rebalance that moves nothing.
                tracing::warn!(
                    secs = UNASSIGNED_REJOIN.as_secs(),
                    "no partition assigned for a minute; joining the group again"
                );
                self.consumer.unsubscribe();
                if let Err(e) = self.consumer.subscribe(&[&self.config.kafka.raw_topic]) {
                    tracing::error!(error = %e, "subscribe failed");
                }
                last_owned = Instant::now();
            }
            if self.check_offsets_now.take() {
                self.check_offsets_by_query(&mut batch);
            }
            let snapshot = self
                .consumer
                .context()
                .bounds
                .lock()
                .expect("bounds lock")
                .snapshot;
            if snapshot != last_snapshot {
                last_snapshot = snapshot;
                self.check_offsets(&mut batch);
                if backoff.is_none() && !self.hold.borrow().held {
                    // Nothing should be paused now: make sure nothing is (a pause librdkafka kept
                    // across a rebalance would stall a partition without a word). Cheap: a no-op
                    // for a partition that fetches.
                    self.resume_all();
                }
            }
            if let Some(b) = &backoff {
                if Instant::now() < b.until {
                    continue;
                }
            } else if batch.is_empty() && last_idle_check.elapsed() >= Duration::from_secs(1) {
                last_idle_check = Instant::now();
                self.advance_idle_partitions();
            }
            let due = caught_up || oldest.is_some_and(|t| t.elapsed() >= max_wait);
            if batch.len() >= max_events || (due && !batch.is_empty()) || backoff.is_some() {
                match self.flush(&mut batch) {
                    Ok(()) => {
                        oldest = None;
                        if backoff.take().is_some() && !self.hold.borrow().held {
                            tracing::info!("database writes succeed again; resuming partitions");
                            self.resume_all();
                            self.pause_refused();
                        }
                    }
                    Err(e) => {
                        let delay = match &backoff {
                            None => Duration::from_millis(self.config.consumer.retry_initial_ms),
                            Some(b) => (b.delay * 2)
                                .min(Duration::from_millis(self.config.consumer.retry_max_ms)),
                        };
                        if backoff.is_none() {
                            self.pause_all();
                        }
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64,
                            pending = batch.len(), "batch write failed; partitions paused");
                        backoff = Some(Backoff {
                            until: Instant::now() + delay,
                            delay,
                        });
                    }
                }
            }
        }
        // Commit the last batch within the drain deadline, then leave the group cleanly.
        let deadline =
            Instant::now() + Duration::from_millis(self.config.consumer.drain_timeout_ms);
        self.retain_owned(&mut batch);
        let mut delay = Duration::from_millis(self.config.consumer.retry_initial_ms);
        while !batch.is_empty() {
            match self.flush(&mut batch) {
                Ok(()) => break,
                Err(e) if Instant::now() + delay >= deadline => {
                    tracing::error!(error = %e, pending = batch.len(),
                        "drain deadline passed; last batch not stored (it will be re-read)");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "last batch write failed; retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                }
            }
        }
        self.consumer.unsubscribe();
        self.health.running.store(false, Ordering::Relaxed);
        tracing::info!("consumer stopped");
    }

    fn assignment(&self) -> Option<TopicPartitionList> {
        self.consumer
            .assignment()
            .ok()
            .filter(|tpl| tpl.count() > 0)
    }

    fn pause_all(&self) {
        if let Some(tpl) = self.assignment() {
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::error!(error = %e, "pause failed");
            }
        }
    }

    /// Resume every partition this consumer owns and does not refuse (by its own record, which a
    /// rebalance in progress cannot hide the way an empty `assignment()` can).
    fn resume_all(&self) {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.ownership.lock().expect("ownership lock").partitions {
            if o.refused.is_none() {
                tpl.add_partition(&self.config.kafka.raw_topic, *p);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::error!(error = %e, "resume failed");
            }
        }
    }

    /// See `BrokerHold`: pause on a connection failure; while held, probe the broker every 500 ms
    /// and resume once it has the topic (creating it again if it came back without it).
    fn watch_broker(&self, db_backoff: bool) {
        let ctx = self.consumer.context();
        if ctx.broker_lost.swap(false, Ordering::Relaxed) && !self.hold.borrow().held {
            tracing::warn!("a broker connection failed; fetching paused until the broker answers with the topic");
            self.pause_all();
            *self.hold.borrow_mut() = BrokerHold {
                held: true,
                next_probe: Some(Instant::now() + Duration::from_millis(500)),
            };
            return;
        }
        let due = {
            let h = self.hold.borrow();
            h.held && h.next_probe.is_none_or(|t| Instant::now() >= t)
        };
        if !due {
            return;
        }
        self.hold.borrow_mut().next_probe = Some(Instant::now() + Duration::from_millis(500));
        let topic = &self.config.kafka.raw_topic;
        let present = match self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(1))
        {
            Ok(md) => md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
            Err(e) => {
                tracing::debug!(error = %e, "broker not answering yet");
                return;
            }
        };
        if !present {
            tracing::warn!(
                topic,
                "the broker answers without the topic (did it lose its data?); creating it"
            );
            let topics = self.config.kafka.topics();
            if let Err(e) = self.rt.block_on(logpipe_common::kafka::ensure_topics(
                &self.config.kafka,
                &topics,
            )) {
                tracing::error!(error = %e, "cannot create the topics again; retrying");
            }
            return;
        }
        tracing::warn!("the broker answers with the topic; fetching resumes");
        *self.hold.borrow_mut() = BrokerHold::default();
        // Anything swallowed while held is looked at again now.
        ctx.broker_lost.store(false, Ordering::Relaxed);
        if !db_backoff {
            self.resume_all();
        }
        self.pause_refused();
        self.check_offsets_now.set(true);
    }

    fn partition_list(&self, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.kafka.raw_topic, p);
        tpl
    }

    /// Hold the partitions whose stored offset does not fit the log (see `check_offsets`).
    fn pause_refused(&self) {
        let refused: Vec<i32> = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .iter()
            .filter(|(_, o)| o.refused.is_some())
            .map(|(p, _)| *p)
            .collect();
        for p in &refused {
            if let Err(e) = self.consumer.pause(&self.partition_list(*p)) {
                tracing::error!(partition = p, error = %e, "pause failed");
            }
        }
        self.health
            .refused_partitions
            .store(refused.len() as u64, Ordering::Relaxed);
        telemetry::partitions_refused(refused.len());
    }

    /// Each partition's log bounds from the latest statistics snapshot (see `Bounds`).
    fn bounds(&self) -> HashMap<i32, (i64, i64)> {
        self.consumer
            .context()
            .bounds
            .lock()
            .expect("bounds lock")
            .partitions
            .clone()
    }

    /// On each statistics snapshot, per owned partition: lag (the log's end, as the latest fetch
    /// response told it, minus the next offset stored in Postgres; negative when the stored
    /// offset is past the log's end) and whether the stored offset fits the log. One that does
    /// not, confirmed by the next snapshot, is handled by the policy, never skipped.
    fn check_offsets(&self, batch: &mut Vec<Pending>) {
        let bounds = self.bounds();
        let mut misfits = Vec::new();
        {
            let mut own = self.ownership.lock().expect("ownership lock");
            for (p, o) in own.partitions.iter_mut() {
                let Some(&(low, high)) = bounds.get(p) else {
                    continue;
                };
                if high < 0 {
                    continue;
                }
                let low = low.max(0);
                o.log_start = low;
                let (misfit, suspect) = confirmed_misfit(o.suspect, o.expected, low, high);
                o.suspect = suspect;
                // An unconfirmed misfit may be a stale snapshot: no alarm for it yet.
                let lag = if suspect.is_some() {
                    0
                } else {
                    high - o.expected
                };
                telemetry::consumer_lag(*p, lag);
                if let Some(reason) = misfit {
                    misfits.push((*p, low, high, reason));
                } else if let Some(reason) = o.refused.filter(|_| {
                    suspect.is_none()
                        && self.config.consumer.offset_out_of_range == OffsetPolicy::ResetToStart
                }) {
                    // An earlier reset could not be recorded and the offset fits again (the new
                    // log grew past it): the log is still not the one the offset was stored
                    // against, so reset it now rather than skip.
                    misfits.push((*p, low, high, reason));
                }
            }
        }
        for (p, low, high, reason) in misfits {
            self.handle_misfit(batch, p, low, high, reason);
        }
        self.pause_refused();
    }

    /// After the broker refused a fetch position (Kafka's OFFSET_OUT_OF_RANGE; the error does not
    /// name the partition): ask the broker for each partition's bounds. The answer is trusted only
    /// where the fetch responses do not contradict it (see `Bounds` for why).
    fn check_offsets_by_query(&self, batch: &mut Vec<Pending>) {
        let owned: Vec<(i32, i64)> = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .iter()
            .map(|(p, o)| (*p, o.expected))
            .collect();
        let bounds = self.bounds();
        for (p, expected) in owned {
            let Ok((low, high)) = self.consumer.fetch_watermarks(
                &self.config.kafka.raw_topic,
                p,
                Duration::from_secs(2),
            ) else {
                continue;
            };
            let low = low.max(0);
            let Some(reason) = offset_misfit(expected, low, high) else {
                continue;
            };
            let fetched = bounds.get(&p).copied().filter(|b| b.1 >= 0);
            if fetched.is_none_or(|(l, h)| offset_misfit(expected, l.max(0), h).is_some()) {
                telemetry::consumer_lag(p, high - expected);
                self.handle_misfit(batch, p, low, high, reason);
            }
        }
        self.pause_refused();
    }

    /// A stored offset outside the broker's log `[low, high]`: apply the policy.
    fn handle_misfit(
        &self,
        batch: &mut Vec<Pending>,
        p: i32,
        low: i64,
        high: i64,
        reason: &'static str,
    ) {
        let ctx = self.consumer.context();
        if self.config.consumer.offset_out_of_range == OffsetPolicy::Refuse {
            let expected = {
                let mut own = self.ownership.lock().expect("ownership lock");
                match own.partitions.get_mut(&p) {
                    Some(o) if o.refused.is_none() => {
                        o.refused = Some(reason);
                        o.expected
                    }
                    _ => return,
                }
            };
            let _ = ctx.apply_policy(p, expected, low, high, reason);
            return;
        }
        // Records buffered from the lost log were acknowledged by it: store them first.
        if batch.iter().any(|r| r.partition == p) && self.flush(batch).is_err() {
            return;
        }
        let Some(expected) = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .get(&p)
            .map(|o| o.expected)
        else {
            return;
        };
        match ctx.apply_policy(p, expected, low, high, reason) {
            Ok(new) => {
                let mut own = self.ownership.lock().expect("ownership lock");
                own.epoch += 1;
                let epoch = own.epoch;
                if let Some(o) = own.partitions.get_mut(&p) {
                    o.epoch = epoch;
                    o.expected = new;
                    o.next_fetch = new;
                    o.gap = None;
                    o.log_start = low;
                    o.refused = None;
                    o.suspect = None;
                }
                drop(own);
                if let Err(e) = self.consumer.seek(
                    &self.config.kafka.raw_topic,
                    p,
                    Offset::Offset(new),
                    Duration::from_secs(5),
                ) {
                    tracing::error!(partition = p, error = %e, "seek after an offset reset failed");
                }
                if let Err(e) = self.consumer.resume(&self.partition_list(p)) {
                    tracing::error!(partition = p, error = %e, "resume failed");
                }
            }
            Err(()) => {
                if let Some(o) = self
                    .ownership
                    .lock()
                    .expect("ownership lock")
                    .partitions
                    .get_mut(&p)
                {
                    o.refused = Some(reason);
                }
            }
        }
    }

    /// Partitions that have been quiet for `idle_timeout_secs` move their event time to now: a
    /// write with no records that only advances their stored event time and closes their windows.
    fn advance_idle_partitions(&self) {
        let idle = Duration::from_secs(u64::from(self.config.windows.idle_timeout_secs));
        let now = Utc::now();
        let width = i64::from(self.config.alerts.error_rate_window_secs);
        let lateness = i64::from(self.config.windows.allowed_lateness_secs);
        let moves: Vec<i32> = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .iter()
            .filter(|(_, o)| {
                o.last_record.elapsed() >= idle
                    && !o.services.is_empty()
                    && closed_upto(o.max_ts, lateness, width)
                        < closed_upto(Some(now), lateness, width)
            })
            .map(|(p, _)| *p)
            .collect();
        if moves.is_empty() {
            return;
        }
        tracing::debug!(partitions = ?moves, "idle partitions: event time moves to now");
        let write = self.rt.block_on(self.write_idle(&moves, now));
        if let Err(e) = write {
            tracing::warn!(error = %e, "idle advance failed; will retry");
        }
    }

    async fn write_idle(&self, partitions: &[i32], now: DateTime<Utc>) -> Result<(), FlushError> {
        let width = i64::from(self.config.alerts.error_rate_window_secs);
        let lateness = i64::from(self.config.windows.allowed_lateness_secs);
        let mut write = BatchWrite::default();
        let mut closed: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        {
            let own = self.ownership.lock().expect("ownership lock");
            for p in partitions {
                let Some(o) = own.partitions.get(p) else {
                    continue;
                };
                write.moves.push(OffsetMove {
                    partition: *p,
                    expected: o.expected,
                    next: o.expected,
                    max_event_ts: Some(now),
                });
                if let Some(upto) = closed_window(Some(now), lateness, width) {
                    for s in &o.services {
                        let e = closed.entry(s.clone()).or_insert(upto);
                        *e = (*e).max(upto);
                    }
                }
            }
        }
        write.closed = closed.into_iter().collect();
        self.commit(&write).await
    }

    fn accept(&self, msg: &rdkafka::message::BorrowedMessage<'_>, now: Instant) -> Option<Pending> {
        let partition = msg.partition();
        let offset = msg.offset();
        let arrival = {
            let mut own = self.ownership.lock().expect("ownership lock");
            let o = own.partitions.get_mut(&partition)?;
            if o.refused.is_some() {
                // Fetched before the pause took effect; its offset is not trusted.
                return None;
            }
            o.last_record = now;
            if offset < o.next_fetch {
                Arrival::Skip
            } else if offset == o.next_fetch {
                o.next_fetch = offset + 1;
                o.gap = None;
                Arrival::Take(o.epoch)
            } else {
                let retries = self.config.consumer.gap_repair_retries;
                match o.gap {
                    // A repair is under way: records fetched before it are still arriving.
                    Some((at, _, since))
                        if at == o.next_fetch && since.elapsed() < GAP_REPAIR_WAIT =>
                    {
                        Arrival::Skip
                    }
                    Some((at, n, _)) if at == o.next_fetch && n >= retries => {
                        tracing::warn!(
                            partition,
                            from = o.next_fetch,
                            to = offset,
                            "offsets missing after {n} re-fetches; accepting the gap"
                        );
                        o.gap = None;
                        o.next_fetch = offset + 1;
                        Arrival::Take(o.epoch)
                    }
                    _ if retries == 0 => {
                        o.next_fetch = offset + 1;
                        Arrival::Take(o.epoch)
                    }
                    gap => {
                        let n = gap.filter(|g| g.0 == o.next_fetch).map_or(0, |g| g.1);
                        o.gap = Some((o.next_fetch, n + 1, Instant::now()));
                        Arrival::Repair(o.next_fetch, o.log_start)
                    }
                }
            }
        };
        let owned = match arrival {
            Arrival::Take(epoch) => epoch,
            Arrival::Skip => return None,
            Arrival::Repair(from, log_start) => {
                // Tansu can hand out a later record batch before an earlier one is readable;
                // taking it would move the stored offset past records never seen. Fetch again
                // from the missing offset (a lookback earlier, see `resume_lookback_records`).
                tracing::warn!(
                    partition,
                    expected = from,
                    got = offset,
                    "offset gap; re-fetching"
                );
                telemetry::offset_gap();
                if let Err(e) = self.consumer.seek(
                    &self.config.kafka.raw_topic,
                    partition,
                    fetch_start(
                        from,
                        self.config.consumer.resume_lookback_records,
                        log_start,
                    ),
                    Duration::from_secs(5),
                ) {
                    tracing::error!(partition, error = %e, "seek for a gap repair failed");
                }
                return None;
            }
        };
        telemetry::events_consumed(1);
        self.health.consumed.fetch_add(1, Ordering::Relaxed);
        let payload = msg.payload().unwrap_or_default();
        // A parser bug must not stop the partition: a record that panics it is dead-lettered.
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            if is_raw_line(msg, payload) {
                self.parse_raw(msg, payload)
            } else {
                LogEvent::from_json(payload)
            }
        }));
        let poison = |kind: &'static str, message: String| Item::Poison {
            key: msg.key().map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            kind,
            message,
        };
        let item = match parsed {
            Ok(Ok(event)) => Item::Event(Box::new(event)),
            Ok(Err(error)) => poison(error.kind(), error.to_string()),
            Err(_) => {
                tracing::error!(
                    partition,
                    offset,
                    "the parser panicked on a record; sent to the DLQ"
                );
                poison("parser_panic", "the record made the parser panic".into())
            }
        };
        let trace = traceparent(msg)
            .filter(|tp| logpipe_common::telemetry::is_sampled(tp))
            .map(|tp| {
                let span = tracing::info_span!(
                    parent: None,
                    "kafka.process",
                    otel.name = %format!("process {}", self.config.kafka.raw_topic),
                    otel.kind = "consumer",
                    messaging.system = "kafka",
                    messaging.operation.type = "process",
                    messaging.destination.name = %self.config.kafka.raw_topic,
                    messaging.destination.partition.id = partition,
                    messaging.kafka.offset = msg.offset(),
                    messaging.consumer.group.name = %self.config.consumer.group_id,
                );
                logpipe_common::telemetry::set_remote_parent(&span, Some(&tp));
                span
            });
        Some(Pending {
            partition,
            offset: msg.offset(),
            epoch: owned,
            item,
            dlq_done: false,
            trace,
        })
    }

    /// An Apache or syslog line. Its id derives from where it was read, so a replay after a crash
    /// stores the same row; its service is the record key when there is one.
    fn parse_raw(
        &self,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        payload: &[u8],
    ) -> Result<LogEvent, EventError> {
        let line = std::str::from_utf8(payload).map_err(|e| EventError::Unparseable {
            format: "text",
            reason: format!("not UTF-8: {e}"),
        })?;
        let key = msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.trim().is_empty())
            .unwrap_or("unknown");
        let received_at = msg
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let mut event = parse_line(
            line,
            &LineContext {
                // Replaced below: the id derives from the parsed timestamp.
                event_id: "pending".into(),
                default_service: key,
                received_at,
            },
        )?;
        event.event_id = derived_id(
            event.timestamp,
            format!(
                "{}/{}/{}",
                self.config.kafka.raw_topic,
                msg.partition(),
                msg.offset()
            )
            .as_bytes(),
        );
        Ok(event)
    }

    fn retain_owned(&self, batch: &mut Vec<Pending>) {
        let own = self.ownership.lock().expect("ownership lock");
        batch.retain(|p| {
            own.partitions
                .get(&p.partition)
                .is_some_and(|o| o.epoch == p.epoch)
        });
    }

    /// Write the batch. On success the batch is cleared; on a fence it is dropped and the
    /// partitions re-read their stored offsets (the records come again to whoever owns them); a
    /// transient error leaves the batch (less what committed) for a retry.
    fn flush(&self, batch: &mut Vec<Pending>) -> Result<(), FlushError> {
        match self.write_isolating(batch) {
            Ok(()) => {
                self.health.db_ok.store(true, Ordering::Relaxed);
                self.refused_in_a_row.set(0);
                batch.clear();
                Ok(())
            }
            Err(FlushError::Db(DbError::Fenced {
                partition,
                expected,
            })) => {
                tracing::error!(
                    partition,
                    expected,
                    "batch fenced; re-reading stored offsets"
                );
                batch.clear();
                self.reposition();
                Ok(())
            }
            Err(e) => {
                self.health.db_ok.store(false, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Write the batch; if the database refuses it for good, split it until each refused record
    /// stands alone, send those to the DLQ and commit everything else in order. On an error the
    /// records that committed are removed from the batch.
    fn write_isolating(&self, batch: &mut Vec<Pending>) -> Result<(), FlushError> {
        let err = match self.rt.block_on(self.write(batch)) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !refused_for_good(&err) {
            return Err(err);
        }
        let trigger = match &err {
            FlushError::Db(db) => db.sqlstate(),
            _ => None,
        };
        tracing::warn!(error = %err, records = batch.len(),
            "the database refused the batch; splitting it to isolate the refused records");
        let mut done = 0;
        let len = batch.len();
        let result = self.write_split(batch, 0, len, trigger.as_deref(), &mut done);
        batch.drain(..done);
        result
    }

    /// Write `batch[lo..hi]`, known to hold a refused record, as two halves in order.
    fn write_split(
        &self,
        batch: &mut [Pending],
        lo: usize,
        hi: usize,
        trigger: Option<&str>,
        done: &mut usize,
    ) -> Result<(), FlushError> {
        if hi - lo == 1 {
            return self.dead_letter(batch, lo, trigger, done);
        }
        let mid = lo + (hi - lo) / 2;
        for (a, b) in [(lo, mid), (mid, hi)] {
            match self.rt.block_on(self.write(&mut batch[a..b])) {
                Ok(()) => {
                    *done = b;
                    self.refused_in_a_row.set(0);
                }
                Err(e) if refused_for_good(&e) => {
                    self.write_split(batch, a, b, trigger, done)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One record the database refuses for good: to the DLQ with the reason, its offset committed.
    fn dead_letter(
        &self,
        batch: &mut [Pending],
        at: usize,
        trigger: Option<&str>,
        done: &mut usize,
    ) -> Result<(), FlushError> {
        // A database that refuses every record alone is not refusing records: a schema change or
        // a bug. Stall loudly (the batch is retried, `/ready` fails) rather than empty the topic
        // into the DLQ.
        let refused = self.refused_in_a_row.get() + 1;
        self.refused_in_a_row.set(refused);
        if refused > MAX_REFUSED_IN_A_ROW {
            tracing::error!(
                refused,
                "the database refuses every record on its own; not dead-lettering more"
            );
            return Err(FlushError::RefusesEverything(refused));
        }
        let p = &mut batch[at];
        if let Item::Event(e) = &p.item {
            tracing::error!(partition = p.partition, offset = p.offset, event_id = %e.event_id,
                sqlstate = trigger.unwrap_or("-"), "record refused by the database; sent to the DLQ");
            p.item = Item::Poison {
                key: Some(e.service.as_bytes().to_vec()),
                payload: e.to_json(),
                kind: "refused_by_database",
                message: format!(
                    "PostgreSQL refused the row (SQLSTATE {})",
                    trigger.unwrap_or("unknown")
                ),
            };
            telemetry::refused_by_database(1);
        }
        self.rt.block_on(self.write(&mut batch[at..=at]))?;
        *done = at + 1;
        Ok(())
    }

    async fn write(&self, batch: &mut [Pending]) -> Result<(), FlushError> {
        // Poison records first: their offsets may only move once the DLQ has them.
        let dlq_sends: Vec<_> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.item {
                Item::Poison {
                    key,
                    payload,
                    kind,
                    message,
                } if !p.dlq_done => Some(async move {
                    self.send_dlq(p, key.as_deref(), payload, kind, message)
                        .await
                        .map(|()| i)
                }),
                _ => None,
            })
            .collect();
        let dlq_count = dlq_sends.len() as u64;
        let mut first_err = None;
        let mut done = Vec::new();
        for r in join_all(dlq_sends).await {
            match r {
                Ok(i) => done.push(i),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        for i in done {
            batch[i].dlq_done = true;
        }
        telemetry::dlq(dlq_count);
        if let Some(e) = first_err {
            return Err(e);
        }
        let plan = self.plan(batch);
        // One store span per sampled trace in the batch, covering the transaction.
        let mut traced = BTreeSet::new();
        let store_spans: Vec<tracing::Span> = batch
            .iter()
            .filter_map(|p| p.trace.as_ref())
            .filter(|span| {
                logpipe_common::telemetry::trace_id_of(span).is_none_or(|t| traced.insert(t))
            })
            .map(|process| {
                tracing::info_span!(
                    parent: process,
                    "db.write",
                    otel.name = "COPY log_events",
                    otel.kind = "client",
                    db.system.name = "postgresql",
                    db.namespace = %self.config.database.schema,
                    db.collection.name = "log_events",
                    db.operation.name = "COPY",
                    db.operation.batch.size = plan.write.events.len(),
                )
            })
            .collect();
        self.commit(&plan.write).await?;
        drop(store_spans);
        telemetry::events_filtered(plan.filtered);
        telemetry::late_events(plan.late);
        // The new offsets and event times are what the next batch must find stored.
        let mut own = self.ownership.lock().expect("ownership lock");
        for (p, services) in plan.services {
            if let Some(o) = own.partitions.get_mut(&p) {
                o.services.extend(services);
            }
        }
        Ok(())
    }

    /// Commit one write and move the owned partitions' expected state on.
    async fn commit(&self, write: &BatchWrite<'_>) -> Result<(), FlushError> {
        let started = Instant::now();
        let outcome = self
            .db
            .write_batch(
                &self.config.consumer.group_id,
                &self.config.kafka.raw_topic,
                write,
                &self.config.alerts,
            )
            .await?;
        let mut own = self.ownership.lock().expect("ownership lock");
        for m in &write.moves {
            if let Some(o) = own.partitions.get_mut(&m.partition) {
                o.expected = m.next;
                o.max_ts = m.max_event_ts;
            }
        }
        drop(own);
        self.health
            .stored
            .fetch_add(outcome.stored, Ordering::Relaxed);
        telemetry::events_stored(outcome.stored);
        telemetry::batch_committed(started.elapsed());
        if let Some(newest) = write.events.iter().map(|e| e.event.timestamp).max() {
            let age = (Utc::now() - newest).to_std().unwrap_or_default();
            telemetry::event_age(age);
        }
        for kind in outcome.raised {
            telemetry::alert_raised(kind);
        }
        Ok(())
    }

    /// What a batch writes: rows kept by the filter, window deltas and detector findings from every
    /// on-time event, offset and event-time moves, and the error-rate windows that close.
    fn plan<'a>(&self, batch: &'a [Pending]) -> Plan<'a> {
        let filter = self.filter.current();
        let lateness =
            chrono::Duration::seconds(i64::from(self.config.windows.allowed_lateness_secs));
        let own = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .clone();
        let mut moves: BTreeMap<i32, OffsetMove> = BTreeMap::new();
        let mut services: BTreeMap<i32, BTreeSet<String>> = BTreeMap::new();
        let mut agg = Aggregator::default();
        let mut plan = Plan {
            write: BatchWrite::default(),
            services: BTreeMap::new(),
            filtered: 0,
            late: 0,
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
            });
            m.next = m.next.max(p.offset + 1);
            let Item::Event(e) = &p.item else {
                continue;
            };
            self.detector.inspect(e, &mut plan.write.findings);
            let late = m
                .max_event_ts
                .is_some_and(|max| e.timestamp < max - lateness);
            if late {
                plan.late += 1;
            } else {
                agg.add(e, self.config.windows.latency_ms(e));
                m.max_event_ts = Some(m.max_event_ts.map_or(e.timestamp, |t| t.max(e.timestamp)));
                let s = services.entry(p.partition).or_default();
                if !s.contains(&e.service) {
                    s.insert(e.service.clone());
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
        // Error-rate windows that close because a partition's event time moved past them.
        let width = i64::from(self.config.alerts.error_rate_window_secs);
        let lateness_secs = i64::from(self.config.windows.allowed_lateness_secs);
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
            for s in o.services.iter().chain(seen.into_iter().flatten()) {
                let e = closed.entry(s.clone()).or_insert(upto);
                *e = (*e).max(upto);
            }
        }
        plan.write.windows = agg.into_deltas(&self.specs);
        plan.write.moves = moves.into_values().collect();
        plan.write.closed = closed.into_iter().collect();
        plan.services = services;
        plan
    }

    async fn send_dlq(
        &self,
        p: &Pending,
        key: Option<&[u8]>,
        payload: &[u8],
        kind: &str,
        message: &str,
    ) -> Result<(), FlushError> {
        let partition = p.partition.to_string();
        let offset = p.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "source.topic",
                value: Some(self.config.kafka.raw_topic.as_str()),
            })
            .insert(Header {
                key: "source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "error.kind",
                value: Some(kind),
            })
            .insert(Header {
                key: "error.message",
                value: Some(message),
            });
        let mut record = FutureRecord::to(&self.config.kafka.dlq_topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.dlq
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| FlushError::Dlq(e))
    }

    /// After a fence: take the stored offsets as truth and seek every owned partition there.
    fn reposition(&self) {
        let partitions: Vec<i32> = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .keys()
            .copied()
            .collect();
        let stored = match self.rt.block_on(self.db.claim_offsets(
            &self.config.consumer.group_id,
            &self.config.kafka.raw_topic,
            &partitions,
        )) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read offsets");
                return;
            }
        };
        let mut own = self.ownership.lock().expect("ownership lock");
        own.epoch += 1;
        let epoch = own.epoch;
        for (p, st) in stored {
            let mut o = Owned::new(epoch, st);
            if let Some(old) = own.partitions.get(&p) {
                o.services.clone_from(&old.services);
                o.log_start = old.log_start;
                o.refused = old.refused;
            }
            let log_start = o.log_start;
            own.partitions.insert(p, o);
            if let Err(e) = self.consumer.seek(
                &self.config.kafka.raw_topic,
                p,
                fetch_start(
                    st.next_offset,
                    self.config.consumer.resume_lookback_records,
                    log_start,
                ),
                Duration::from_secs(5),
            ) {
                tracing::error!(partition = p, error = %e, "seek failed");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("DLQ produce failed: {0}")]
    Dlq(KafkaError),
    #[error("the database refused {0} records in a row, each on its own")]
    RefusesEverything(u32),
}

/// Whether a failed write is the rows' fault, so retrying the same rows cannot succeed: a data
/// exception, an integrity violation or a program limit (see `DbError::is_permanent`). "The same
/// error twice" is not enough: a database that refuses connections (SQLSTATE 55000 while it is
/// closed to them, 57P03 while starting) fails the same way every time with nothing wrong in the
/// rows, and splitting then would dead-letter good events (the outage test caught this).
fn refused_for_good(e: &FlushError) -> bool {
    match e {
        FlushError::Db(db) => db.is_permanent(),
        _ => false,
    }
}

/// A batch turned into its write, plus what the loop learns from it.
struct Plan<'a> {
    write: BatchWrite<'a>,
    services: BTreeMap<i32, BTreeSet<String>>,
    filtered: u64,
    late: u64,
}

/// The record's `traceparent` header, if any.
fn traceparent(msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    let v = header_value(msg.headers(), "traceparent")?;
    logpipe_common::telemetry::well_formed_traceparent(std::str::from_utf8(v).ok()?)
}

/// Records are JSON unless they say `text/plain` or do not start with `{`.
fn is_raw_line(msg: &rdkafka::message::BorrowedMessage<'_>, payload: &[u8]) -> bool {
    if let Some(content_type) = header_value(msg.headers(), "content-type") {
        return content_type.starts_with(b"text/plain");
    }
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b != b'{')
}

/// Index of the last closed error-rate window (window start / width) for an event-time progress:
/// windows end at or before `max_ts - lateness`.
fn closed_upto(max_ts: Option<DateTime<Utc>>, lateness_secs: i64, width: i64) -> i64 {
    match max_ts {
        None => i64::MIN,
        Some(t) => (t.timestamp() - lateness_secs).div_euclid(width) - 1,
    }
}

/// Start of the last closed error-rate window.
fn closed_window(
    max_ts: Option<DateTime<Utc>>,
    lateness_secs: i64,
    width: i64,
) -> Option<DateTime<Utc>> {
    let idx = closed_upto(max_ts, lateness_secs, width);
    if idx == i64::MIN {
        return None;
    }
    DateTime::from_timestamp(idx * width, 0)
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
        assert_eq!(fetch_start(100, 10, 0), Offset::Offset(90));
        assert_eq!(fetch_start(5, 10, 0), Offset::Offset(0));
        assert_eq!(fetch_start(100, 10, 95), Offset::Offset(95));
        assert_eq!(fetch_start(100, 0, 0), Offset::Offset(100));
        // A log start past the offset (a misfit being handled) never moves the fetch forward.
        assert_eq!(fetch_start(3, 10, 8), Offset::Offset(3));
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
}
