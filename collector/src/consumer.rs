//! The consume loop. It runs on its own blocking thread with an rdkafka `BaseConsumer`, so rebalance
//! callbacks (served inside `poll`) can wait for Postgres without stalling the async runtime.
//!
//! - On assignment, each partition starts at the offset stored in Postgres, never Kafka's.
//! - Records are parsed into events; a record that cannot be parsed goes to the DLQ (acknowledged
//!   before its offset commits) and never stops the partition.
//! - A batch is written when it is full or its oldest record has waited `batch_max_ms`.
//! - On revocation, buffered records of the revoked partitions are dropped before anything else is
//!   written: the next owner resumes from the stored offset, so nothing is lost or doubled.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use logpipe_common::event::EventError;
use logpipe_common::LogEvent;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorConfig;
use crate::db::{Db, DbError, OffsetMove, StoredEvent};
use crate::telemetry;

/// Liveness of the loop and of its last write, read by `/ready`.
#[derive(Debug, Default)]
pub struct ConsumerHealth {
    pub running: AtomicBool,
    pub db_ok: AtomicBool,
    /// Records read from owned partitions by this process (including ones later dropped on revoke).
    pub consumed: AtomicU64,
    /// Rows this process inserted.
    pub stored: AtomicU64,
}

/// Partitions this consumer owns: assignment epoch and the stored offset its next write must see.
#[derive(Debug, Default)]
struct Ownership {
    epoch: u64,
    partitions: HashMap<i32, Owned>,
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    epoch: u64,
    expected: i64,
}

struct CollectorContext {
    db: Db,
    rt: Handle,
    group: String,
    topic: String,
    ownership: Arc<Mutex<Ownership>>,
    cancel: CancellationToken,
}

impl ClientContext for CollectorContext {}

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
                for (&p, &offset) in &stored {
                    if let Err(e) = tpl.set_partition_offset(&self.topic, p, Offset::Offset(offset))
                    {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                    own.partitions.insert(
                        p,
                        Owned {
                            epoch,
                            expected: offset,
                        },
                    );
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
    /// Postgres must answer before we can start a partition at the right place; keep asking (the
    /// partition is not consumed meanwhile) until it does or we are shutting down.
    fn claim_with_retry(&self, partitions: &[i32]) -> BTreeMap<i32, i64> {
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
}

enum Item {
    Event(Box<LogEvent>),
    Poison {
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        error: EventError,
    },
}

pub struct ConsumerLoop {
    config: CollectorConfig,
    db: Db,
    consumer: BaseConsumer<CollectorContext>,
    dlq: FutureProducer,
    ownership: Arc<Mutex<Ownership>>,
    health: Arc<ConsumerHealth>,
    rt: Handle,
    cancel: CancellationToken,
}

impl ConsumerLoop {
    pub fn new(
        config: CollectorConfig,
        db: Db,
        health: Arc<ConsumerHealth>,
        cancel: CancellationToken,
    ) -> Result<ConsumerLoop, KafkaError> {
        let rt = Handle::current();
        let ownership = Arc::new(Mutex::new(Ownership::default()));
        let context = CollectorContext {
            db: db.clone(),
            rt: rt.clone(),
            group: config.consumer.group_id.clone(),
            topic: config.kafka.raw_topic.clone(),
            ownership: ownership.clone(),
            cancel: cancel.clone(),
        };
        let consumer: BaseConsumer<CollectorContext> = config
            .kafka
            .client_config("logpipe-collector")
            .set("group.id", &config.consumer.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Offsets live in Postgres; Kafka's committed offsets are never read or written.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "300000")
            // Bounds what librdkafka prefetches, so a stalled database means bounded memory.
            .set("queued.max.messages.kbytes", "65536")
            .create_with_context(context)?;
        consumer.subscribe(&[&config.kafka.raw_topic])?;
        let dlq: FutureProducer = config
            .kafka
            .client_config("logpipe-collector-dlq")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(ConsumerLoop {
            config,
            db,
            consumer,
            dlq,
            ownership,
            health,
            rt,
            cancel,
        })
    }

    /// Consume until cancelled, then write the last batch and leave the group.
    pub fn run(self) {
        self.health.running.store(true, Ordering::Relaxed);
        self.health.db_ok.store(true, Ordering::Relaxed);
        let max_events = self.config.consumer.batch_max_events;
        let max_wait = Duration::from_millis(self.config.consumer.batch_max_ms);
        let mut batch: Vec<Pending> = Vec::with_capacity(max_events);
        let mut oldest: Option<Instant> = None;
        let mut seen_epoch = 0;
        while !self.cancel.is_cancelled() {
            let polled = self.consumer.poll(Duration::from_millis(50));
            // A rebalance inside poll may have revoked partitions: forget their buffered records.
            let epoch = self.ownership.lock().expect("ownership lock").epoch;
            if epoch != seen_epoch {
                seen_epoch = epoch;
                self.retain_owned(&mut batch);
            }
            match polled {
                Some(Ok(msg)) => {
                    if let Some(p) = self.accept(&msg) {
                        batch.push(p);
                        oldest.get_or_insert_with(Instant::now);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
                None => {}
            }
            let due = oldest.is_some_and(|t| t.elapsed() >= max_wait);
            if batch.len() >= max_events || (due && !batch.is_empty()) {
                self.flush(&mut batch);
                oldest = None;
            }
        }
        // Commit the last batch within the drain deadline, then leave the group cleanly.
        let deadline =
            Instant::now() + Duration::from_millis(self.config.consumer.drain_timeout_ms);
        self.retain_owned(&mut batch);
        if !batch.is_empty() {
            self.flush_until(&mut batch, Some(deadline));
        }
        self.consumer.unsubscribe();
        self.health.running.store(false, Ordering::Relaxed);
        tracing::info!("consumer stopped");
    }

    fn accept(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<Pending> {
        let partition = msg.partition();
        let owned = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .get(&partition)
            .copied()?;
        telemetry::events_consumed(1);
        self.health.consumed.fetch_add(1, Ordering::Relaxed);
        let payload = msg.payload().unwrap_or_default();
        let item = match LogEvent::from_json(payload) {
            Ok(event) => Item::Event(Box::new(event)),
            Err(error) => Item::Poison {
                key: msg.key().map(<[u8]>::to_vec),
                payload: payload.to_vec(),
                error,
            },
        };
        Some(Pending {
            partition,
            offset: msg.offset(),
            epoch: owned.epoch,
            item,
        })
    }

    fn retain_owned(&self, batch: &mut Vec<Pending>) {
        let own = self.ownership.lock().expect("ownership lock");
        batch.retain(|p| {
            own.partitions
                .get(&p.partition)
                .is_some_and(|o| o.epoch == p.epoch)
        });
    }

    fn flush(&self, batch: &mut Vec<Pending>) {
        self.flush_until(batch, None);
    }

    /// Write the batch, retrying with backoff while Postgres or the DLQ is unavailable. Gives up only
    /// at `deadline` (shutdown) or when the batch is fenced: both leave the stored offsets untouched,
    /// so the records are read again by whoever owns the partition next.
    fn flush_until(&self, batch: &mut Vec<Pending>, deadline: Option<Instant>) {
        let mut delay = Duration::from_millis(self.config.consumer.retry_initial_ms);
        let max_delay = Duration::from_millis(self.config.consumer.retry_max_ms);
        loop {
            match self.rt.block_on(self.write(batch)) {
                Ok(stored) => {
                    self.health.db_ok.store(true, Ordering::Relaxed);
                    self.health.stored.fetch_add(stored, Ordering::Relaxed);
                    batch.clear();
                    return;
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
                    return;
                }
                Err(e) => {
                    self.health.db_ok.store(false, Ordering::Relaxed);
                    if self.cancel.is_cancelled() && deadline.is_some_and(|d| Instant::now() >= d) {
                        tracing::error!(error = %e, pending = batch.len(),
                            "drain deadline passed; last batch not stored (it will be re-read)");
                        return;
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "batch write failed");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(max_delay);
                }
            }
        }
    }

    async fn write(&self, batch: &[Pending]) -> Result<u64, FlushError> {
        let started = Instant::now();
        // Poison records first: their offsets may only move once the DLQ has them.
        let dlq_sends: Vec<_> = batch
            .iter()
            .filter_map(|p| match &p.item {
                Item::Poison {
                    key,
                    payload,
                    error,
                } => Some(self.send_dlq(p, key, payload, error)),
                Item::Event(_) => None,
            })
            .collect();
        let dlq_count = dlq_sends.len() as u64;
        for r in join_all(dlq_sends).await {
            r?;
        }
        let own = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .clone();
        let mut moves: BTreeMap<i32, OffsetMove> = BTreeMap::new();
        let mut events = Vec::with_capacity(batch.len());
        for p in batch {
            let Some(o) = own.get(&p.partition) else {
                continue;
            };
            let m = moves.entry(p.partition).or_insert(OffsetMove {
                partition: p.partition,
                expected: o.expected,
                next: p.offset + 1,
            });
            m.next = m.next.max(p.offset + 1);
            if let Item::Event(e) = &p.item {
                events.push(StoredEvent {
                    event: (**e).clone(),
                    partition: p.partition,
                    offset: p.offset,
                });
            }
        }
        let moves: Vec<OffsetMove> = moves.into_values().collect();
        let stored = self
            .db
            .write_batch(
                &self.config.consumer.group_id,
                &self.config.kafka.raw_topic,
                &events,
                &moves,
            )
            .await?;
        // The new offsets are what the next batch must find stored.
        let mut own = self.ownership.lock().expect("ownership lock");
        for m in &moves {
            if let Some(o) = own.partitions.get_mut(&m.partition) {
                o.expected = m.next;
            }
        }
        drop(own);
        telemetry::events_stored(stored);
        telemetry::dlq(dlq_count);
        telemetry::batch_committed(started.elapsed());
        Ok(stored)
    }

    async fn send_dlq(
        &self,
        p: &Pending,
        key: &Option<Vec<u8>>,
        payload: &[u8],
        error: &EventError,
    ) -> Result<(), FlushError> {
        let partition = p.partition.to_string();
        let offset = p.offset.to_string();
        let message = error.to_string();
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
                value: Some(error.kind()),
            })
            .insert(Header {
                key: "error.message",
                value: Some(message.as_str()),
            });
        let mut record = FutureRecord::to(&self.config.kafka.dlq_topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k.as_slice());
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
        for (p, offset) in stored {
            own.partitions.insert(
                p,
                Owned {
                    epoch,
                    expected: offset,
                },
            );
            if let Err(e) = self.consumer.seek(
                &self.config.kafka.raw_topic,
                p,
                Offset::Offset(offset),
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
}
