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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use logpipe_common::event::EventError;
use logpipe_common::formats::{derived_id, parse_line, LineContext};
use logpipe_common::kafka::header_value;
use logpipe_common::LogEvent;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
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

mod canary;
mod context;
mod decide;
mod write;

use crate::windows::{closed_upto, closed_window};
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
    dlq: FutureProducer,
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
    /// The writer waits for a batch: nothing is being written or queued.
    writer_idle: AtomicBool,
    /// `(partition, offset)`: partitions whose record before the stored offset is not the one
    /// stored (see `Owned::arrive`), for the loop to handle after `accept`.
    replaced: Mutex<Vec<(i32, i64)>>,
}

/// See the "orphaned assignment" workaround in `ConsumerLoop::run`: a member that has owned
/// nothing this long joins its group again. The first time after it last owned a partition (or
/// started) it waits just past the session timeout (10 s), the time a SIGKILLed member it replaces
/// takes to expire; after that once a minute.
const UNASSIGNED_REJOIN_FIRST: Duration = Duration::from_secs(15);
const UNASSIGNED_REJOIN: Duration = Duration::from_secs(60);

/// How long the consume loop waits for a busy writer before it pauses the partitions.
const WRITER_WAIT: Duration = Duration::from_secs(2);

/// How often the partitions this consumer does not own are checked for one nobody stores.
const ORPHAN_CHECK_EVERY: Duration = Duration::from_secs(10);

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
        let dlq: FutureProducer = config
            .kafka
            .client_config("logpipe-collector-dlq")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
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
            writer_idle: AtomicBool::new(true),
            replaced: Mutex::default(),
        })
    }

    /// Consume until cancelled, then write the last batch and leave the group.
    /// Run until cancelled: this thread consumes and parses; a second thread writes (see
    /// `write_loop`), so the next batch is read while the previous one commits.
    pub fn run(self) {
        self.health.running.store(true, Ordering::Relaxed);
        let _running = RunningGuard(self.health.clone());
        self.health.db_ok.store(true, Ordering::Relaxed);
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<Vec<Pending>>(self.config.consumer.write_queue_batches);
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("collector-writer".into())
                .spawn_scoped(scope, || self.write_loop(rx))
                .expect("writer thread starts");
            self.consume_loop(tx);
            if writer.join().is_err() {
                // The writer panicked: `_running` marks the loop stopped as this thread unwinds.
                panic!("the collector's writer thread panicked");
            }
        });
        self.consumer.unsubscribe();
        self.health.running.store(false, Ordering::Relaxed);
        tracing::info!("consumer stopped");
    }

    /// Poll, parse and batch; hand each batch to the writer. While the writer's queue is full (a
    /// slow or failing database), the partitions are paused: memory stays bounded and the loop
    /// keeps polling, so the group does not count it dead.
    fn consume_loop(&self, tx: std::sync::mpsc::SyncSender<Vec<Pending>>) {
        let max_events = self.config.consumer.batch_max_events;
        let max_wait = Duration::from_millis(self.config.consumer.batch_max_ms);
        let mut batch: Vec<Pending> = Vec::with_capacity(max_events);
        let mut oldest: Option<Instant> = None;
        let mut seen_epoch = 0;
        // Paused because the writer's queue is full.
        let mut queue_full = false;
        // The last hand-over found the writer busy: poll briefly instead of spinning on it.
        let mut writer_busy = false;
        let mut last_snapshot = 0;
        let mut last_idle_check = Instant::now();
        // When this consumer last owned a partition (see `UNASSIGNED_REJOIN`), and how long it
        // waits with none before it joins again.
        let mut last_owned = Instant::now();
        let mut rejoin_after = UNASSIGNED_REJOIN_FIRST;
        let mut orphans = OrphanWatch::default();
        let mut last_orphan_check = Instant::now();
        let mut last_records = LastRecords::default();
        let mut consumed_counted = self.health.consumed.load(Ordering::Relaxed);
        while !self.cancel.is_cancelled() {
            // With records in hand, only look at what is already queued: when nothing is, the
            // consumer has caught up and the batch is handed over now (low latency when quiet,
            // batches as large as the backlog when not).
            let timeout = if batch.is_empty() || queue_full {
                Duration::from_millis(50)
            } else if writer_busy {
                Duration::from_millis(2)
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(timeout);
            let caught_up = polled.is_none();
            self.watch_broker(queue_full);
            // A rebalance inside poll may have revoked partitions: forget their buffered records.
            let epoch = self.ownership.lock().expect("ownership lock").epoch;
            if epoch != seen_epoch {
                seen_epoch = epoch;
                self.retain_owned(&mut batch);
                if queue_full || self.held() {
                    // Newly assigned partitions wait for the writer (or the broker) too.
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
                        last_records.note(
                            p.partition,
                            p.offset,
                            msg.key(),
                            msg.payload().unwrap_or_default(),
                            msg.timestamp().to_millis(),
                        );
                        batch.push(p);
                        oldest.get_or_insert(now);
                    }
                    let replaced = std::mem::take(&mut *self.replaced.lock().expect("replaced"));
                    for (p, at) in replaced {
                        self.handle_replaced(&mut batch, p, at);
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // The broker refused a fetch position (the partition is not named here).
                    tracing::warn!("the broker refused a fetch offset; checking every partition");
                    self.check_offsets_now.store(true, Ordering::Relaxed);
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
                rejoin_after = UNASSIGNED_REJOIN_FIRST;
            } else if last_owned.elapsed() >= rejoin_after {
                // The "orphaned assignment" safety net (see `OrphanWatch` and the cooperative
                // rebalance workaround in `config.rs`): a member that owns nothing joins its group
                // again. Tansu 0.6 does not rebalance when a SIGKILLed member's session expires,
                // so a collector restarted in its place (`./setup.sh` after a crash) got nothing
                // until this ran (28 s and more). With more collectors than partitions an idle
                // member rejoins at 15 s, then once a minute: a rebalance that moves nothing.
                tracing::warn!(
                    secs = rejoin_after.as_secs(),
                    "no partition assigned; joining the group again"
                );
                self.consumer.unsubscribe();
                if let Err(e) = self.consumer.subscribe(&[&self.config.kafka.raw_topic]) {
                    tracing::error!(error = %e, "subscribe failed");
                }
                last_owned = Instant::now();
                rejoin_after = UNASSIGNED_REJOIN;
            }
            if last_orphan_check.elapsed() >= ORPHAN_CHECK_EVERY && !self.held() {
                last_orphan_check = Instant::now();
                self.check_orphans(&mut orphans);
            }
            if self.check_offsets_now.swap(false, Ordering::Relaxed) {
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
                if !queue_full && !self.held() {
                    // Nothing should be paused now: make sure nothing is (a pause librdkafka kept
                    // across a rebalance would stall a partition without a word). Cheap: a no-op
                    // for a partition that fetches.
                    self.resume_all();
                }
            }
            if batch.is_empty()
                && !queue_full
                && last_idle_check.elapsed() >= Duration::from_secs(1)
                && self.writer_idle.load(Ordering::Acquire)
            {
                // Only while nothing is being written: an idle move and a batch of the same
                // partition would otherwise race for its stored offset (one would be fenced).
                last_idle_check = Instant::now();
                self.advance_idle_partitions();
            }
            let due = caught_up || oldest.is_some_and(|t| t.elapsed() >= max_wait);
            if batch.is_empty() || !(batch.len() >= max_events || due) {
                continue;
            }
            let consumed = self.health.consumed.load(Ordering::Relaxed);
            telemetry::events_consumed(consumed - consumed_counted);
            consumed_counted = consumed;
            last_records.stamp(&mut batch);
            match tx.try_send(std::mem::take(&mut batch)) {
                Ok(()) => {
                    batch.reserve(max_events);
                    oldest = None;
                    writer_busy = false;
                    if queue_full {
                        queue_full = false;
                        if !self.held() {
                            self.resume_all();
                            self.pause_refused();
                        }
                    }
                }
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    batch = back;
                    writer_busy = true;
                    if batch.len() < max_events || queue_full {
                        continue;
                    }
                    // Enough in hand. A writer that is busy, not failing, takes it within one
                    // commit: wait for it here (librdkafka keeps prefetching meanwhile, bounded by
                    // `queued.max.messages.kbytes`). Pausing instead would drop the prefetched
                    // records, fetched again on resume: the drain bench fell from 77,000 to
                    // 16,000 events/s when every full queue paused. A failing writer, or one
                    // slower than `WRITER_WAIT`, gets the pause: the loop keeps polling, so the
                    // group keeps this member.
                    let waited = self.health.db_ok.load(Ordering::Relaxed).then(|| {
                        let until = Instant::now() + WRITER_WAIT;
                        loop {
                            match tx.try_send(std::mem::take(&mut batch)) {
                                Ok(()) => return true,
                                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                                    batch = back;
                                }
                                Err(std::sync::mpsc::TrySendError::Disconnected(back)) => {
                                    batch = back;
                                    return false;
                                }
                            }
                            if Instant::now() >= until || self.cancel.is_cancelled() {
                                return false;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    });
                    if waited == Some(true) {
                        batch.reserve(max_events);
                        oldest = None;
                        writer_busy = false;
                    } else {
                        queue_full = true;
                        self.pause_all();
                    }
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    tracing::error!("the writer stopped; the consume loop stops");
                    return;
                }
            }
        }
        // Hand over what is left; the writer commits it within the drain deadline.
        telemetry::events_consumed(self.health.consumed.load(Ordering::Relaxed) - consumed_counted);
        self.retain_owned(&mut batch);
        last_records.stamp(&mut batch);
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
    }

    /// The writer: commits each batch in order (see `flush`), retrying a failed write with
    /// backoff (100 ms doubling to 5 s) while the consume loop, its queue full, keeps the
    /// partitions paused. After cancellation it drains what was handed over within
    /// `drain_timeout_ms`; what it cannot write by then is read again by the next owner.
    fn write_loop(&self, rx: std::sync::mpsc::Receiver<Vec<Pending>>) {
        let mut drain_deadline: Option<Instant> = None;
        let mut failing = false;
        loop {
            self.writer_idle.store(true, Ordering::Release);
            let Ok(mut batch) = rx.recv() else {
                return; // the consume loop ended and everything handed over is done
            };
            self.writer_idle.store(false, Ordering::Release);
            let mut delay = Duration::from_millis(self.config.consumer.retry_initial_ms);
            loop {
                // Records of partitions revoked meanwhile are not ours to write.
                self.retain_owned(&mut batch);
                if batch.is_empty() {
                    // A failure that was about these records says nothing any more: without
                    // this, `/ready` kept reporting a failing write on an idle collector (found
                    // by the zombie test). The database itself is still checked by `/ready`.
                    if std::mem::take(&mut failing) {
                        tracing::info!(
                            "the failing batch's partitions were revoked; nothing left to retry"
                        );
                        self.health.db_ok.store(true, Ordering::Relaxed);
                    }
                    break;
                }
                let error = match self.flush(&mut batch) {
                    Ok(()) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("database writes succeed again");
                        }
                        break;
                    }
                    Err(e) => e,
                };
                failing = true;
                if self.cancel.is_cancelled() {
                    let deadline = *drain_deadline.get_or_insert_with(|| {
                        Instant::now()
                            + Duration::from_millis(self.config.consumer.drain_timeout_ms)
                    });
                    if Instant::now() + delay >= deadline {
                        tracing::error!(error = %error, pending = batch.len(),
                            "drain deadline passed; batch not stored (it will be re-read)");
                        break;
                    }
                }
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64,
                    pending = batch.len(), "batch write failed; retrying (partitions pause while the queue is full)");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(self.config.consumer.retry_max_ms));
            }
        }
    }

    /// No silent stall across the group: partitions this consumer does not own are looked at
    /// (stored offset in Postgres, log end from the broker), and one with records waiting whose
    /// stored offset does not move is reported (ERROR, `/ready` 503, a gauge) until it moves.
    fn check_orphans(&self, watch: &mut OrphanWatch) {
        let topic = &self.config.kafka.raw_topic;
        let timeout = Duration::from_secs(5);
        let all: Vec<i32> = match self.consumer.fetch_metadata(Some(topic), timeout) {
            Ok(md) => md
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "orphan check: no metadata");
                return;
            }
        };
        let owned: BTreeSet<i32> = self.owned_partitions().into_iter().collect();
        let unowned: Vec<i32> = all.into_iter().filter(|p| !owned.contains(p)).collect();
        let mut observed = Vec::with_capacity(unowned.len());
        if !unowned.is_empty() {
            let stored = match self.rt.block_on(
                self.db
                    .stored_offsets(&self.config.consumer.group_id, topic),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "orphan check: stored offsets unreadable");
                    return;
                }
            };
            for p in unowned {
                // On Tansu's in-memory engine this log end can be short of the true one by the
                // rest of the newest batch (the "short ListOffsets"): it may find an orphan late,
                // never one that is not.
                if let Ok((_, end)) = self.consumer.fetch_watermarks(topic, p, timeout) {
                    observed.push((p, stored.get(&p).copied().unwrap_or(0), end));
                }
            }
        }
        let after = Duration::from_secs(self.config.consumer.orphan_after_secs);
        let unstored = watch.observe(Instant::now(), &observed, after);
        let before = self
            .health
            .unstored_partitions
            .swap(unstored.len() as u64, Ordering::Relaxed);
        telemetry::partitions_unstored(unstored.len());
        if !unstored.is_empty() {
            tracing::error!(
                partitions = ?unstored,
                owned = ?owned,
                secs = after.as_secs(),
                "partitions with records waiting that no collector of the group has stored for \
                 this long: not ready (a rebalance left them unassigned, or their owner cannot \
                 write)"
            );
        } else if before > 0 {
            tracing::info!("every partition is stored again");
        }
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
    fn watch_broker(&self, writer_behind: bool) {
        let ctx = self.consumer.context();
        if ctx.broker_lost.swap(false, Ordering::Relaxed) && !self.held() {
            tracing::warn!("a broker connection failed; fetching paused until the broker answers with the topic");
            self.pause_all();
            *self.hold.lock().expect("hold lock") = BrokerHold {
                held: true,
                next_probe: Some(Instant::now() + Duration::from_millis(500)),
            };
            return;
        }
        let due = {
            let h = self.hold.lock().expect("hold lock");
            h.held && h.next_probe.is_none_or(|t| Instant::now() >= t)
        };
        if !due {
            return;
        }
        self.hold.lock().expect("hold lock").next_probe =
            Some(Instant::now() + Duration::from_millis(500));
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
        *self.hold.lock().expect("hold lock") = BrokerHold::default();
        // Anything swallowed while held is looked at again now.
        ctx.broker_lost.store(false, Ordering::Relaxed);
        if !writer_behind {
            self.resume_all();
        }
        self.pause_refused();
        self.check_offsets_now.store(true, Ordering::Relaxed);
    }

    fn owned_partitions(&self) -> Vec<i32> {
        let own = self.ownership.lock().expect("ownership lock");
        own.partitions.keys().copied().collect()
    }

    fn held(&self) -> bool {
        self.hold.lock().expect("hold lock").held
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

    /// The record before partition `p`'s stored offset is not the one stored with it: the log
    /// was replaced (an in-memory broker restarted, the topic recreated) and already reaches past
    /// the stored offset, so its bounds alone look fine. Handled like an offset outside the log:
    /// the policy resets to the log start (or refuses), recorded as `log_replaced`.
    fn handle_replaced(&self, batch: &mut Vec<Pending>, p: i32, at: i64) {
        const REASON: &str = "log_replaced";
        let known = self.bounds().get(&p).copied().filter(|b| b.1 >= 0);
        let bounds = known.or_else(|| {
            self.consumer
                .fetch_watermarks(&self.config.kafka.raw_topic, p, Duration::from_secs(2))
                .ok()
        });
        tracing::error!(
            partition = p,
            offset = at,
            "the record before the stored offset is not the one stored: the broker's log was \
             replaced"
        );
        match bounds {
            Some((low, high)) => self.handle_misfit(batch, p, low.max(0), high, REASON),
            None => {
                // Not known yet: hold the partition; the next statistics snapshot applies the
                // policy (see `check_offsets`).
                self.mark_refused(p, REASON);
                self.pause_refused();
            }
        }
    }

    /// Hold partition `p` for `reason` (paused by `pause_refused`).
    fn mark_refused(&self, p: i32, reason: &'static str) {
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
                    o.verify = None;
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
            Err(()) => self.mark_refused(p, reason),
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

    fn accept(&self, msg: &rdkafka::message::BorrowedMessage<'_>, now: Instant) -> Option<Pending> {
        let partition = msg.partition();
        let offset = msg.offset();
        let payload = msg.payload().unwrap_or_default();
        let arrival = {
            let mut own = self.ownership.lock().expect("ownership lock");
            let o = own.partitions.get_mut(&partition)?;
            o.arrive(
                offset,
                || fingerprint(msg.key(), payload, msg.timestamp().to_millis()),
                now,
                self.config.consumer.gap_repair_retries,
            )
        };
        let owned = match arrival {
            Arrival::Take(epoch) => epoch,
            Arrival::TakeOverGap {
                epoch,
                missing_from,
                refetches,
            } => {
                tracing::warn!(
                    partition,
                    from = missing_from,
                    to = offset,
                    "offsets missing after {refetches} re-fetches; accepting the gap"
                );
                epoch
            }
            Arrival::Skip => return None,
            Arrival::Replaced { at } => {
                self.replaced
                    .lock()
                    .expect("replaced lock")
                    .push((partition, at));
                return None;
            }
            Arrival::Repair { from, log_start } => {
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
                    Offset::Offset(fetch_start(
                        from,
                        self.config.consumer.resume_lookback_records,
                        log_start,
                    )),
                    Duration::from_secs(5),
                ) {
                    tracing::error!(partition, error = %e, "seek for a gap repair failed");
                }
                return None;
            }
        };
        // The metric is counted per hand-over (`consume_loop`): a registry lookup per record
        // showed in the consume thread's profile.
        self.health.consumed.fetch_add(1, Ordering::Relaxed);
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
            headers: Vec::new(),
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
            record_ts: msg
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis),
            fingerprint: None,
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

    /// After a fence: take the stored offsets as truth and seek every owned partition there.
    fn reposition(&self) {
        let partitions = self.owned_partitions();
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
            let mut o = Owned::new(epoch, st, Instant::now());
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
                Offset::Offset(fetch_start(
                    st.next_offset,
                    self.config.consumer.resume_lookback_records,
                    log_start,
                )),
                Duration::from_secs(5),
            ) {
                tracing::error!(partition = p, error = %e, "seek failed");
            }
        }
    }
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
