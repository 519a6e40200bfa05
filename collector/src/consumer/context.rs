//! The consumer's rdkafka context: the rebalance callback (claims stored offsets on assignment,
//! applies the offset policy, drops revoked partitions), the statistics callback (the log's bounds
//! per partition, see `Bounds`), and the log/error callbacks that notice a lost broker (see
//! `BrokerHold`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::OffsetPolicy;
use crate::db::{Db, OffsetReset, Stored};
use crate::telemetry;

use super::decide::*;
use super::ConsumerHealth;

pub(super) struct CollectorContext {
    pub(super) db: Db,
    pub(super) rt: Handle,
    pub(super) group: String,
    pub(super) topic: String,
    pub(super) lookback: i64,
    pub(super) policy: OffsetPolicy,
    pub(super) ownership: Arc<Mutex<Ownership>>,
    pub(super) cancel: CancellationToken,
    /// `db_ok` goes false while stored offsets cannot be claimed (e.g. a frozen collector's locks):
    /// the claim blocks the loop, so `/ready` must say so.
    pub(super) health: Arc<ConsumerHealth>,
    /// Set from librdkafka's threads when a broker connection fails (see `BrokerHold`).
    pub(super) broker_lost: AtomicBool,
    /// The log's bounds per partition as the latest fetch responses told them (see `Bounds`).
    pub(super) bounds: Mutex<Bounds>,
}

/// Each partition's log start and end as carried by fetch responses, from librdkafka's statistics
/// (once a second). The offset-fit check and the lag use these, not a ListOffsets query: Tansu
/// 0.6's in-memory engine answers ListOffsets(latest) with the base offset of the newest record
/// batch plus one, short of the log's end by the rest of that batch (the "short ListOffsets"
/// workaround); its fetch responses carry the true high watermark, as Kafka's do.
#[derive(Debug, Default)]
pub(super) struct Bounds {
    /// Counts statistics snapshots, so the loop knows a new one arrived.
    pub(super) snapshot: u64,
    /// partition -> (log start, log end); -1 when not known (no fetch response yet, or an error).
    pub(super) partitions: HashMap<i32, (i64, i64)>,
}

/// Tansu workaround, the "unknown-topic fetch crash": Tansu 0.6 answers a fetch for a topic it
/// does not have (an in-memory broker restarted, before anyone recreated the topic) with a zero
/// topic id and a `CurrentLeader` tag; librdkafka 2.12 turns that tag into a metadata update for a
/// topic with no name and crashes (SIGSEGV in `rd_kafka_metadata_cache_find`). So when a broker
/// connection fails, the loop pauses every partition before librdkafka reconnects (reconnect
/// backoff 1 s), and resumes only once the broker answers metadata with the topic present,
/// creating it again if it is missing. On Apache Kafka the pause lasts one metadata round trip.
#[derive(Debug, Default)]
pub(super) struct BrokerHold {
    pub(super) held: bool,
    pub(super) next_probe: Option<Instant>,
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
                        Offset::Offset(fetch_start(st.next_offset, self.lookback, 0)),
                    ) {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                    own.partitions
                        .insert(p, Owned::new(epoch, st, Instant::now()));
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
    /// A stored offset outside `[low, high]`, or stored against another log (`log_replaced`):
    /// log it at ERROR, then reset it to the log start
    /// (recorded in Postgres, counted) and return the new offset, or, with the `refuse` policy or
    /// when the reset cannot be recorded, return `Err` (the partition stays paused).
    pub(super) fn apply_policy(
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
                "stored offset does not fit the broker's log; partition paused \
                 (offset_out_of_range = refuse): set consumer_offsets.next_offset and restart \
                 the collector"
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
                    "stored offset does not fit the broker's log (did the broker lose its \
                     data?); reset to the log start and recorded in offset_resets"
                );
                telemetry::offset_reset(partition, reason);
                Ok(low)
            }
            Err(e) => {
                tracing::error!(partition, stored, reason, error = %e,
                    "stored offset does not fit the broker's log and the reset cannot be \
                     recorded; partition paused until it can");
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
                Ok(map) => {
                    self.health.db_ok.store(true, Ordering::Relaxed);
                    return map;
                }
                Err(e) if self.cancel.is_cancelled() => {
                    tracing::warn!(error = %e, "cannot load offsets during shutdown");
                    return BTreeMap::new();
                }
                Err(e) => {
                    self.health.db_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot load stored offsets; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
