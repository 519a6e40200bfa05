//! The consume thread: poll, accept, batch and hand each batch to the writer. Its state between
//! polls is one struct (`LoopState`), its timers are `LoopTimers` (pure, in `timers.rs`), and each
//! step of an iteration is a method: after a rebalance, a polled record, the housekeeping the
//! timers and the broker's watermarks call for, and the hand-over.

use std::sync::mpsc::{SyncSender, TrySendError};

use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;

use super::decide::*;
use super::timers::LoopTimers;
use super::*;

/// How long a poll waits when nothing is in hand, or the writer's queue is full.
const POLL_IDLE: Duration = Duration::from_millis(50);
/// How long a poll waits when the writer was busy at the last hand-over.
const POLL_WRITER_BUSY: Duration = Duration::from_millis(2);
/// Between two tries to hand a full batch to a busy writer.
const WRITER_RETRY: Duration = Duration::from_micros(200);
/// Records taken from what librdkafka has queued already before the loop's bookkeeping runs
/// again: that bookkeeping (clock reads; the ownership, hold and watermark locks) ran after every
/// record and was about a tenth of this thread's time in a WARN+ drain. A burst of 64 records
/// lasts a few hundred microseconds; every timer it delays is counted in milliseconds or more.
const BURST: usize = 64;

/// What the consume loop keeps from one poll to the next.
struct LoopState {
    batch: Vec<Pending>,
    /// When the oldest record in `batch` arrived.
    oldest: Option<Instant>,
    /// The ownership epoch the batch was last checked against.
    seen_epoch: u64,
    /// The partitions are paused because the writer's queue is full.
    queue_full: bool,
    /// The last hand-over found the writer busy: poll briefly instead of spinning on it.
    writer_busy: bool,
    /// The broker watermarks' snapshot the offsets were last checked against.
    last_snapshot: u64,
    timers: LoopTimers,
    orphans: OrphanWatch,
    last_records: LastRecords,
    /// Records consumed so far that the metric already counts.
    consumed_counted: u64,
}

impl LoopState {
    /// With records in hand, only look at what is already queued: when nothing is, the consumer
    /// has caught up and the batch is handed over now (low latency when quiet, batches as large
    /// as the backlog when not).
    fn poll_timeout(&self) -> Duration {
        if self.batch.is_empty() || self.queue_full {
            POLL_IDLE
        } else if self.writer_busy {
            POLL_WRITER_BUSY
        } else {
            Duration::ZERO
        }
    }

    fn handed_over(&mut self, max_events: usize) {
        self.batch.reserve(max_events);
        self.oldest = None;
        self.writer_busy = false;
    }
}

/// Whether the loop goes on after a hand-over.
enum Flow {
    Continue,
    Stop,
}

impl ConsumerLoop {
    /// Poll, parse and batch; hand each batch to the writer. While the writer's queue is full (a
    /// slow or failing database), the partitions are paused: memory stays bounded and the loop
    /// keeps polling, so the group does not count it dead.
    pub(super) fn consume_loop(&self, tx: SyncSender<Vec<Pending>>) {
        let max_events = self.config.consumer.batch_max_events;
        let max_wait = Duration::from_millis(self.config.consumer.batch_max_ms);
        let mut st = LoopState {
            batch: Vec::with_capacity(max_events),
            oldest: None,
            seen_epoch: 0,
            queue_full: false,
            writer_busy: false,
            last_snapshot: 0,
            timers: LoopTimers::new(Instant::now()),
            orphans: OrphanWatch::default(),
            last_records: LastRecords::default(),
            consumed_counted: self.health.consumed.load(Ordering::Relaxed),
        };
        while !self.cancel.is_cancelled() {
            let polled = self.consumer.poll(st.poll_timeout());
            let caught_up = polled.is_none();
            self.watch_broker(st.queue_full);
            self.after_rebalance(&mut st);
            if let Some(polled) = polled {
                // One clock reading for the burst: it stamps when records arrived, and the
                // burst is short against any wait it feeds (`batch_max_ms`, the timers).
                let now = Instant::now();
                self.take_polled(&mut st, polled, now);
                for _ in 1..BURST {
                    if st.batch.len() >= max_events {
                        break;
                    }
                    let Some(polled) = self.consumer.poll(Duration::ZERO) else {
                        break;
                    };
                    self.take_polled(&mut st, polled, now);
                }
                // A rebalance inside the burst's polls: each record was taken under the epoch
                // of its moment (`arrive`); records of a revoked epoch leave the batch here,
                // before any hand-over.
                self.after_rebalance(&mut st);
            }
            self.housekeeping(&mut st);
            let due = caught_up || st.oldest.is_some_and(|t| t.elapsed() >= max_wait);
            if st.batch.is_empty() || !(st.batch.len() >= max_events || due) {
                continue;
            }
            if let Flow::Stop = self.hand_over(&mut st, &tx) {
                return;
            }
        }
        // Hand over what is left; the writer commits it within the drain deadline.
        telemetry::events_consumed(
            self.health.consumed.load(Ordering::Relaxed) - st.consumed_counted,
        );
        self.retain_owned(&mut st.batch);
        st.last_records.stamp(&mut st.batch);
        if !st.batch.is_empty() {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            if tx.send(st.batch).is_err() {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// A rebalance inside poll may have revoked partitions: forget their buffered records, and
    /// pause or resume what this member owns now.
    fn after_rebalance(&self, st: &mut LoopState) {
        let epoch = self.ownership.lock().expect("ownership lock").epoch;
        if epoch == st.seen_epoch {
            return;
        }
        st.seen_epoch = epoch;
        self.retain_owned(&mut st.batch);
        if st.queue_full || self.held() {
            // Newly assigned partitions wait for the writer (or the broker) too.
            self.pause_all();
        } else {
            // librdkafka keeps a partition's pause across a rebalance: one paused during a
            // broker or database outage and assigned again after it would never fetch.
            self.resume_all();
        }
        self.pause_refused();
    }

    fn take_polled(
        &self,
        st: &mut LoopState,
        polled: KafkaResult<BorrowedMessage<'_>>,
        now: Instant,
    ) {
        match polled {
            Ok(msg) => {
                if let Some(p) = self.accept(&msg, now) {
                    st.last_records.note(
                        p.partition,
                        p.offset,
                        msg.key(),
                        msg.payload().unwrap_or_default(),
                        msg.timestamp().to_millis(),
                    );
                    st.batch.push(p);
                    st.oldest.get_or_insert(now);
                }
                let replaced = std::mem::take(&mut *self.replaced.lock().expect("replaced"));
                for (p, at) in replaced {
                    self.handle_replaced(&mut st.batch, p, at);
                }
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                // The broker refused a fetch position (the partition is not named here).
                tracing::warn!("the broker refused a fetch offset; checking every partition");
                self.check_offsets_now.store(true, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "consume error"),
        }
    }

    /// What the timers and the broker's watermarks call for between polls: joining the group
    /// again, looking for orphaned partitions, checking stored offsets against the log, and
    /// moving idle partitions' event time.
    fn housekeeping(&self, st: &mut LoopState) {
        let now = Instant::now();
        let owns_any = !self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .is_empty();
        let due = st.timers.due(now, owns_any);
        if owns_any {
            st.timers.owned(now);
        } else if due.rejoin {
            self.rejoin(st.timers.rejoin_after());
            st.timers.rejoined(now);
        }
        if due.orphan_check && !self.held() {
            st.timers.orphans_checked(now);
            self.check_orphans(&mut st.orphans);
        }
        if self.check_offsets_now.swap(false, Ordering::Relaxed) {
            self.check_offsets_by_query(&mut st.batch);
        }
        let snapshot = self
            .consumer
            .context()
            .bounds
            .lock()
            .expect("bounds lock")
            .snapshot;
        if snapshot != st.last_snapshot {
            st.last_snapshot = snapshot;
            self.check_offsets(&mut st.batch);
            if !st.queue_full && !self.held() {
                // Nothing should be paused now: make sure nothing is (a pause librdkafka kept
                // across a rebalance would stall a partition without a word). Cheap: a no-op
                // for a partition that fetches.
                self.resume_all();
            }
        }
        if due.idle_check
            && st.batch.is_empty()
            && !st.queue_full
            && self.in_flight.load(Ordering::Acquire) == 0
        {
            // Only while nothing is being written: an idle move and a batch of the same
            // partition would otherwise race for its stored offset (one would be fenced).
            st.timers.idle_checked(now);
            self.advance_idle_partitions();
        }
    }

    /// The "orphaned assignment" safety net (see `OrphanWatch` and the cooperative rebalance
    /// workaround in `config.rs`): a member that owns nothing joins its group again. Tansu 0.6
    /// does not rebalance when a SIGKILLed member's session expires, so a collector restarted in
    /// its place (`./setup.sh` after a crash) got nothing until this ran (28 s and more). With more
    /// collectors than partitions an idle member rejoins at 15 s, then once a minute: a rebalance
    /// that moves nothing.
    fn rejoin(&self, waited: Duration) {
        tracing::warn!(
            secs = waited.as_secs(),
            "no partition assigned; joining the group again"
        );
        self.consumer.unsubscribe();
        if let Err(e) = self.consumer.subscribe(&[&self.config.kafka.raw_topic]) {
            tracing::error!(error = %e, "subscribe failed");
        }
    }

    /// Hand the batch to the writer. A batch that is not full goes only to a writer with room
    /// (idle, by default): it grows while the writer commits (group commit). A full one goes to
    /// the planner as soon as it takes it, to be planned while the writer commits; a full queue
    /// with a full batch in hand waits for a busy writer a little (`WRITER_WAIT`), then pauses
    /// the partitions.
    fn hand_over(&self, st: &mut LoopState, tx: &SyncSender<Vec<Pending>>) -> Flow {
        let max_events = self.config.consumer.batch_max_events;
        if st.batch.len() < max_events
            && self.in_flight.load(Ordering::Acquire) > self.config.consumer.write_queue_batches
        {
            st.writer_busy = true;
            return Flow::Continue;
        }
        let consumed = self.health.consumed.load(Ordering::Relaxed);
        telemetry::events_consumed(consumed - st.consumed_counted);
        st.consumed_counted = consumed;
        st.last_records.stamp(&mut st.batch);
        match self.try_hand(tx, std::mem::take(&mut st.batch)) {
            Ok(()) => {
                st.handed_over(max_events);
                if st.queue_full {
                    st.queue_full = false;
                    if !self.held() {
                        self.resume_all();
                        self.pause_refused();
                    }
                }
            }
            Err(TrySendError::Full(back)) => {
                st.batch = back;
                st.writer_busy = true;
                if st.batch.len() < max_events || st.queue_full {
                    return Flow::Continue;
                }
                // Enough in hand. A writer that is busy, not failing, takes it within one commit:
                // wait for it here (librdkafka keeps prefetching meanwhile, bounded by
                // `queued.max.messages.kbytes`). Pausing instead would drop the prefetched
                // records, fetched again on resume: the drain bench fell from 77,000 to 16,000
                // events/s when every full queue paused. A failing writer, or one slower than
                // `WRITER_WAIT`, gets the pause: the loop keeps polling, so the group keeps this
                // member.
                if self.health.db_ok.load(Ordering::Relaxed)
                    && self.wait_for_writer(&mut st.batch, tx)
                {
                    st.handed_over(max_events);
                } else {
                    st.queue_full = true;
                    self.pause_all();
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("the writer stopped; the consume loop stops");
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Try to hand `batch` over until `WRITER_WAIT` has passed; true when the writer took it.
    fn wait_for_writer(&self, batch: &mut Vec<Pending>, tx: &SyncSender<Vec<Pending>>) -> bool {
        let until = Instant::now() + WRITER_WAIT;
        loop {
            match self.try_hand(tx, std::mem::take(batch)) {
                Ok(()) => return true,
                Err(TrySendError::Full(back)) => *batch = back,
                Err(TrySendError::Disconnected(back)) => {
                    *batch = back;
                    return false;
                }
            }
            if Instant::now() >= until || self.cancel.is_cancelled() {
                return false;
            }
            std::thread::sleep(WRITER_RETRY);
        }
    }

    /// Hand `batch` over if the queue takes it now, counting it in flight until the writer is
    /// done with it.
    fn try_hand(
        &self,
        tx: &SyncSender<Vec<Pending>>,
        batch: Vec<Pending>,
    ) -> Result<(), TrySendError<Vec<Pending>>> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        tx.try_send(batch)
            .inspect_err(|_| _ = self.in_flight.fetch_sub(1, Ordering::AcqRel))
    }
}
