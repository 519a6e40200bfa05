//! The consume loop. It runs on its own blocking thread with an rdkafka `BaseConsumer`, so rebalance
//! callbacks (served inside `poll`) can wait for Postgres without stalling the async runtime.
//!
//! - On assignment, each partition starts at the offset stored in Postgres, never Kafka's.
//! - Records are parsed into events (JSON, or an Apache/syslog line); a record that cannot be parsed
//!   goes to the DLQ (acknowledged before its offset commits) and never stops the partition.
//! - A batch is written when it is full or its oldest record has waited `batch_max_ms`: the filter
//!   picks the rows stored raw, every on-time event feeds the windows and detectors, and rows,
//!   window deltas, alerts and offsets commit in one transaction. Three threads: this one
//!   consumes; a planner turns a batch into its write, a full one while the batch before it
//!   commits (`ahead.rs`: the writer keeps that plan only if the partitions stand as it foresaw);
//!   a writer commits.
//! - Event time per partition: its newest event time, stored with the offset. Events older than
//!   that minus the allowed lateness are late (stored raw, not windowed). An idle partition's event
//!   time moves to the wall clock so its last windows close.
//! - When Postgres fails, the assigned partitions are paused (nothing more is fetched, memory stays
//!   bounded) while the loop keeps polling for rebalances; the write is retried with backoff and the
//!   partitions resume by themselves once it succeeds.
//! - On revocation, buffered records of the revoked partitions are dropped before anything else is
//!   written: the next owner resumes from the stored offset, so nothing is lost or doubled.
//! - A batch the database refuses for good (a data or integrity error) is split until the refused
//!   records stand alone; each goes to the DLQ once a canary (`canary.rs`: the same write with a
//!   known-good event in its place, rolled back) commits, and the rest commit, so one bad record
//!   never stalls a partition; a failing canary means the database refuses everything, and the
//!   collector stalls loudly instead. A record whose parser panics is dead-lettered too.
//! - When the connection to the broker drops, fetching pauses until the broker answers metadata
//!   with the topic present (recreated if the broker came back empty); see `BrokerHold`.
//! - A stored offset outside the broker's log (past its end after the broker lost its data, before
//!   its start after retention) is found on assignment, on a fetch the broker refuses, and every
//!   5 s against the watermarks; so is one stored against another log (the record before it,
//!   re-read on resume, is not the one stored: `log_replaced`). Either is logged at ERROR,
//!   counted, and reset to the log start (and recorded in `offset_resets`) or refused, per
//!   `consumer.offset_out_of_range`. Never skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use logpipe_common::event::EventError;
use logpipe_common::formats::{derived_id, parse_line, LineContext};
use logpipe_common::kafka::header_value;
use logpipe_common::producer::AckProducer;
use logpipe_common::RawEvent;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::cardinality::Caps;
use crate::config::{CollectorConfig, OffsetPolicy};
use crate::db::{BatchWrite, Db, OffsetMove};
use crate::detect::Detector;
use crate::filter::FilterHandle;
use crate::telemetry;
use crate::windows::Spec;

mod accept;
mod ahead;
mod canary;
mod context;
mod decide;
mod offsets;
mod poll;
mod timers;
mod watch;
mod write;

use crate::windows::{closed_upto, closed_window};
use ahead::{Ahead, Effect, Planned};
use context::*;
use decide::*;
use write::*;

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
    /// Partitions nobody in the group stores (see `OrphanWatch`).
    pub unstored_partitions: AtomicU64,
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

pub struct ConsumerLoop {
    config: CollectorConfig,
    db: Db,
    consumer: BaseConsumer<CollectorContext>,
    dlq: AckProducer,
    ownership: Arc<Mutex<Ownership>>,
    health: Arc<ConsumerHealth>,
    filter: FilterHandle,
    detector: Detector,
    specs: Vec<Spec>,
    rt: Handle,
    cancel: CancellationToken,
    /// Set when the broker refused a fetch position: check every partition's offsets now.
    check_offsets_now: AtomicBool,
    hold: Mutex<BrokerHold>,
    /// The cardinality caps, kept across batches (see `cardinality`).
    caps: Mutex<Caps>,
    /// Batches handed over by the consume loop that the writer has not finished (queued, being
    /// planned or being written): 0 when the writer waits for a batch.
    in_flight: AtomicUsize,
    /// `(partition, offset)`: partitions whose record before the stored offset is not the one
    /// stored (see `Owned::arrive`), for the loop to handle after `accept`.
    replaced: Mutex<Vec<(i32, i64)>>,
}

/// How long the consume loop waits for a busy writer before it pauses the partitions.
const WRITER_WAIT: Duration = Duration::from_secs(2);

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
            health: health.clone(),
            broker_lost: AtomicBool::new(false),
            bounds: Mutex::default(),
        };
        let mut client = config.kafka.client_config("logpipe-collector");
        // Connection failures must reach `CollectorContext::log` (see `BrokerHold`) whatever the
        // log filter; the context forwards them to tracing, which filters.
        if logpipe_common::kafka::kafka_debug().is_none() {
            client.set_log_level(RDKafkaLogLevel::Info);
        }
        if let Some(id) = &config.consumer.group_instance_id {
            client.set("group.instance.id", id);
        }
        let consumer: BaseConsumer<CollectorContext> = client
            .set("group.id", &config.consumer.group_id)
            .set(
                "partition.assignment.strategy",
                config.consumer.assignment_strategy.as_str(),
            )
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
            .set(
                "fetch.queue.backoff.ms",
                config.consumer.fetch_queue_backoff_ms.to_string(),
            )
            .create_with_context(context)?;
        consumer.subscribe(&[&config.kafka.raw_topic])?;
        let dlq = AckProducer::new(
            config
                .kafka
                .client_config("logpipe-collector-dlq")
                .set("enable.idempotence", "true")
                .set("acks", "all"),
        )?;
        let specs = config.windows.specs();
        let caps = Caps::new(
            config.windows.max_services_per_window,
            specs.iter().map(|s| s.width).max().unwrap_or(1),
            config.alerts.max_login_subjects_per_window,
        );
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
            check_offsets_now: AtomicBool::new(false),
            hold: Default::default(),
            caps: Mutex::new(caps),
            in_flight: AtomicUsize::new(0),
            replaced: Mutex::default(),
        })
    }

    /// Run until cancelled, then write the last batch and leave the group. This thread consumes
    /// and parses; a second thread plans each batch (see `plan_loop`) while a third writes the
    /// one before (see `write_loop`), so the next batch is read and planned while the previous
    /// one commits.
    pub fn run(self) {
        self.health.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(self.health.clone());
        self.health.db_ok.store(true, Ordering::Relaxed);
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<Vec<Pending>>(self.config.consumer.write_queue_batches);
        // No queue between planner and writer: a plan is made against the commit in progress.
        let (planned_tx, planned_rx) = std::sync::mpsc::sync_channel::<Planned>(0);
        std::thread::scope(|scope| {
            let planner = std::thread::Builder::new()
                .name("collector-planner".into())
                .spawn_scoped(scope, || self.plan_loop(rx, planned_tx))
                .expect("planner thread starts");
            let writer = std::thread::Builder::new()
                .name("collector-writer".into())
                .spawn_scoped(scope, || self.write_loop(planned_rx))
                .expect("writer thread starts");
            self.consume_loop(tx);
            if planner.join().is_err() || writer.join().is_err() {
                // `_running` marks the loop stopped as this thread unwinds.
                panic!("the collector's planner or writer thread panicked");
            }
        });
        self.consumer.unsubscribe();
        self.health.running.store(false, Ordering::Relaxed);
        tracing::info!("consumer stopped");
    }

    /// The planner: plans each batch while the writer commits the one handed over before it,
    /// against the partitions' standing as that commit will leave it (see `ahead`). Ends when the
    /// consume loop does, or the writer.
    fn plan_loop(&self, rx: Receiver<Vec<Pending>>, tx: SyncSender<Planned>) {
        let width = i64::from(self.config.alerts.error_rate_window_secs);
        let lateness = i64::from(self.config.windows.allowed_lateness_secs);
        let mut before = Effect::default();
        while let Ok(mut batch) = rx.recv() {
            self.retain_owned(&mut batch);
            let mut own = self
                .ownership
                .lock()
                .expect("ownership lock")
                .partitions
                .clone();
            before.project(&mut own, lateness, width);
            let ahead = Ahead::new(self.plan_against(&batch, &own), &batch, &own);
            before = ahead.effect();
            let planned = Planned {
                batch,
                ahead: Some(ahead),
            };
            if tx.send(planned).is_err() {
                return; // the writer stopped
            }
        }
    }

    /// The writer: commits each batch in order (see `flush`), retrying a failed write with
    /// backoff (100 ms doubling to 5 s) while the consume loop, its queue full, keeps the
    /// partitions paused. After cancellation it drains what was handed over within
    /// `drain_timeout_ms`; what it cannot write by then is read again by the next owner.
    fn write_loop(&self, rx: Receiver<Planned>) {
        let mut drain_deadline: Option<Instant> = None;
        let mut failing = false;
        while let Ok(Planned { mut batch, ahead }) = rx.recv() {
            self.write_one(&mut batch, ahead, &mut failing, &mut drain_deadline);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        // The consume loop ended and everything handed over is done.
    }

    /// One batch, written or given up (revoked, fenced, or past the drain deadline).
    fn write_one(
        &self,
        batch: &mut Vec<Pending>,
        mut ahead: Option<Ahead>,
        failing: &mut bool,
        drain_deadline: &mut Option<Instant>,
    ) {
        let mut delay = Duration::from_millis(self.config.consumer.retry_initial_ms);
        loop {
            // Records of partitions revoked meanwhile are not ours to write.
            self.retain_owned(batch);
            if batch.is_empty() {
                // A failure that was about these records says nothing any more: without this,
                // `/ready` kept reporting a failing write on an idle collector (found by the
                // zombie test). The database itself is still checked by `/ready`.
                if std::mem::take(failing) {
                    tracing::info!(
                        "the failing batch's partitions were revoked; nothing left to retry"
                    );
                    self.health.db_ok.store(true, Ordering::Relaxed);
                }
                return;
            }
            let error = match self.flush(batch, ahead.take()) {
                Ok(()) => {
                    if std::mem::take(failing) {
                        tracing::info!("database writes succeed again");
                    }
                    return;
                }
                Err(e) => e,
            };
            *failing = true;
            if self.cancel.is_cancelled() {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    Instant::now() + Duration::from_millis(self.config.consumer.drain_timeout_ms)
                });
                if Instant::now() + delay >= deadline {
                    tracing::error!(error = %error, pending = batch.len(),
                        "drain deadline passed; batch not stored (it will be re-read)");
                    return;
                }
            }
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64,
                pending = batch.len(), "batch write failed; retrying (partitions pause while the queue is full)");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(self.config.consumer.retry_max_ms));
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
            // A partition that never had a record moves too: the group's watermark (see
            // `Db::write_batch`) is the oldest partition's event time.
            .filter(|(_, o)| {
                o.last_record.elapsed() >= idle
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
                    last_record_hash: None,
                });
                if let Some(upto) = closed_window(Some(now), lateness, width) {
                    for s in o.services.keys() {
                        let e = closed.entry(s.clone()).or_insert(upto);
                        *e = (*e).max(upto);
                    }
                }
            }
        }
        write.closed = closed.into_iter().collect();
        self.commit(&write).await
    }

    fn retain_owned(&self, batch: &mut Vec<Pending>) {
        let own = self.ownership.lock().expect("ownership lock");
        batch.retain(|p| {
            own.partitions
                .get(&p.partition)
                .is_some_and(|o| o.epoch == p.epoch)
        });
    }
}
