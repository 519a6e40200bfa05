//! The writer: a planned batch committed in one transaction (rows, window deltas, alerts and
//! offsets), a batch the database refuses for good split until the refused records stand alone,
//! and the DLQ producer they go to.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::db::{BatchWrite, DbError};
use crate::telemetry;

use super::decide::*;
use super::*;

impl ConsumerLoop {
    /// Write the batch. On success the batch is cleared; on a fence it is dropped and the
    /// partitions re-read their stored offsets (the records come again to whoever owns them); a
    /// transient error leaves the batch (less what committed) for a retry.
    pub(super) fn flush(&self, batch: &mut Vec<Pending>) -> Result<(), FlushError> {
        match self.write_isolating(batch) {
            Ok(()) => {
                self.health.db_ok.store(true, Ordering::Relaxed);
                self.refused_in_a_row.store(0, Ordering::Relaxed);
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
    pub(super) fn write_isolating(&self, batch: &mut Vec<Pending>) -> Result<(), FlushError> {
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
    pub(super) fn write_split(
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
                    self.refused_in_a_row.store(0, Ordering::Relaxed);
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
    pub(super) fn dead_letter(
        &self,
        batch: &mut [Pending],
        at: usize,
        trigger: Option<&str>,
        done: &mut usize,
    ) -> Result<(), FlushError> {
        // A database that refuses every record alone is not refusing records: a schema change or
        // a bug. Stall loudly (the batch is retried, `/ready` fails) rather than empty the topic
        // into the DLQ.
        let refused = self.refused_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
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

    pub(super) async fn write(&self, batch: &mut [Pending]) -> Result<(), FlushError> {
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
    pub(super) async fn commit(&self, write: &BatchWrite<'_>) -> Result<(), FlushError> {
        let started = Instant::now();
        let outcome = self
            .db
            .write_batch(
                &self.config.consumer.group_id,
                &self.config.kafka.raw_topic,
                write,
                &self.config.alerts,
                i64::from(self.config.windows.allowed_lateness_secs),
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

    /// The batch's write, planned by the pure core from the current filter and ownership.
    pub(super) fn plan<'a>(&self, batch: &'a [Pending]) -> Plan<'a> {
        let filter = self.filter.current();
        let own = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .clone();
        Planner {
            filter: &filter,
            detector: &self.detector,
            windows: &self.config.windows,
            specs: &self.specs,
            error_rate_window_secs: self.config.alerts.error_rate_window_secs,
        }
        .plan(batch, &own)
    }

    pub(super) async fn send_dlq(
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
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FlushError {
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
pub(super) fn refused_for_good(e: &FlushError) -> bool {
    match e {
        FlushError::Db(db) => db.is_permanent(),
        _ => false,
    }
}
