//! The writer: a planned batch committed in one transaction (rows, window deltas, alerts and
//! offsets), a batch the database refuses for good split until the refused records stand alone,
//! and the DLQ producer they go to.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use crate::db::{BatchWrite, DbError};
use crate::telemetry;

use super::ahead::{move_on, note_services, Ahead};
use super::canary::{canary_event, canary_write, describe_rows};
use super::decide::*;
use super::*;

impl ConsumerLoop {
    /// Write the batch, with the plan made `ahead` of it if that still stands. On success the
    /// batch is cleared; on a fence it is dropped and the partitions re-read their stored offsets
    /// (the records come again to whoever owns them); a transient error leaves the batch (less
    /// what committed) for a retry.
    pub(super) fn flush(
        &self,
        batch: &mut Vec<Pending>,
        ahead: Option<Ahead>,
    ) -> Result<(), FlushError> {
        match self.write_isolating(batch, ahead) {
            Ok(()) => {
                self.health.db_ok.store(true, Ordering::Relaxed);
                telemetry::database_refuses_everything(false);
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
    pub(super) fn write_isolating(
        &self,
        batch: &mut Vec<Pending>,
        ahead: Option<Ahead>,
    ) -> Result<(), FlushError> {
        let err = match self.rt.block_on(self.write(batch, ahead)) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !refused_for_good(&err) {
            return Err(err);
        }
        tracing::warn!(error = %err, records = batch.len(),
            "the database refused the batch; splitting it to isolate the refused records");
        let mut done = 0;
        let len = batch.len();
        let result = self.write_split(batch, 0, len, &err, &mut done);
        batch.drain(..done);
        result
    }

    /// Write `batch[lo..hi]`, known to hold a refused record (`refusal` is its write's error), as
    /// two halves in order.
    pub(super) fn write_split(
        &self,
        batch: &mut [Pending],
        lo: usize,
        hi: usize,
        refusal: &FlushError,
        done: &mut usize,
    ) -> Result<(), FlushError> {
        if hi - lo == 1 {
            return self.dead_letter(batch, lo, refusal, done);
        }
        let mid = lo + (hi - lo) / 2;
        for (a, b) in [(lo, mid), (mid, hi)] {
            match self.rt.block_on(self.write(&mut batch[a..b], None)) {
                Ok(()) => *done = b,
                Err(e) if refused_for_good(&e) => {
                    self.write_split(batch, a, b, &e, done)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One record the database refuses on its own (`refusal`). Whether the record is at fault or
    /// the database refuses everything is told by a canary, never by counting refusals (a count is
    /// reachable by data: two requests of valid events once stalled every partition): the same
    /// batch with a known-good synthetic event in place of the record, written and rolled back.
    /// If the canary commits, the record goes to the DLQ with the SQLSTATE and the derived row
    /// that failed, and its offset moves; if the canary fails too, the collector stalls loudly
    /// (ERROR, `/ready` 503, `collector_database_refuses_everything` 1) and dead-letters nothing.
    pub(super) fn dead_letter(
        &self,
        batch: &mut [Pending],
        at: usize,
        refusal: &FlushError,
        done: &mut usize,
    ) -> Result<(), FlushError> {
        let (sqlstate, stage) = match refusal {
            FlushError::Db(db) => (db.sqlstate(), db.stage()),
            _ => (None, None),
        };
        let lone = self.plan(&batch[at..=at]);
        let row = describe_rows(&lone.write, stage);
        let canary_event = canary_event(Utc::now());
        let canary = canary_write(&canary_event, &lone.write.moves, &self.specs);
        let probe = self.rt.block_on(self.db.probe_batch(
            &self.config.consumer.group_id,
            &self.config.kafka.raw_topic,
            &canary,
            &self.config.alerts,
            i64::from(self.config.windows.allowed_lateness_secs),
        ));
        drop(lone);
        match probe {
            Ok(()) => telemetry::database_refuses_everything(false),
            Err(fenced @ DbError::Fenced { .. }) => return Err(fenced.into()),
            Err(canary) => {
                telemetry::database_refuses_everything(true);
                tracing::error!(error = %refusal, canary = %canary,
                    "the database refuses a known-good write too: stalling (nothing is dead-lettered) until it takes writes again");
                return Err(FlushError::RefusesEverything {
                    record: refusal.to_string(),
                    canary,
                });
            }
        }
        let p = &mut batch[at];
        if let Item::Event(e) = &p.item {
            tracing::error!(partition = p.partition, offset = p.offset, event_id = %e.event_id(),
                sqlstate = sqlstate.as_deref().unwrap_or("-"), stage = stage.unwrap_or("-"),
                "record refused by the database (a known-good write commits); sent to the DLQ");
            p.item = Item::Poison {
                key: Some(e.service().as_bytes().to_vec()),
                payload: e.record().as_bytes().to_vec(),
                kind: "refused_by_database",
                message: format!("PostgreSQL refused the record's rows: {refusal}"),
                headers: vec![
                    (
                        "error.sqlstate",
                        sqlstate.unwrap_or_else(|| "unknown".into()),
                    ),
                    ("error.stage", stage.unwrap_or("unknown").to_owned()),
                    ("error.row", row),
                ],
            };
            telemetry::refused_by_database(1);
        }
        self.rt.block_on(self.write(&mut batch[at..=at], None))?;
        *done = at + 1;
        Ok(())
    }

    /// Send the batch's poison records to the DLQ, then commit its plan (`ahead` if it stands).
    pub(super) async fn write(
        &self,
        batch: &mut [Pending],
        ahead: Option<Ahead>,
    ) -> Result<(), FlushError> {
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
                    headers,
                } if !p.dlq_done => Some(async move {
                    self.send_dlq(p, key.as_deref(), payload, (kind, message), headers)
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
        let plan = match ahead {
            Some(a) => self.adopt(a, batch),
            None => self.plan(batch),
        };
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
        telemetry::future_events(plan.future);
        telemetry::values_clamped("latency_ms", plan.clamped_latencies);
        for (kind, n, first_epochs) in &plan.overflow {
            telemetry::cardinality_overflow(kind, *n);
            for start in first_epochs {
                tracing::warn!(kind, window_start = %DateTime::from_timestamp(*start, 0).unwrap_or_default(),
                    "a window holds the most distinct {kind}s it counts on their own; further ones count under \"{}\" (collector_cardinality_overflow_total)",
                    crate::cardinality::OVERFLOW_KEY);
            }
        }
        // The new offsets and event times are what the next batch must find stored.
        let width = i64::from(self.config.alerts.error_rate_window_secs);
        let lateness = i64::from(self.config.windows.allowed_lateness_secs);
        let mut own = self.ownership.lock().expect("ownership lock");
        note_services(&mut own.partitions, &plan.services, lateness, width);
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
        move_on(
            &mut self.ownership.lock().expect("ownership lock").partitions,
            &write.moves,
        );
        self.health
            .stored
            .fetch_add(outcome.stored, Ordering::Relaxed);
        telemetry::events_stored(outcome.stored);
        telemetry::batch_committed(started.elapsed(), write.events.len());
        if let Some(newest) = write.events.iter().map(|e| e.event.timestamp()).max() {
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
        let own = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .clone();
        self.plan_against(batch, &own)
    }

    /// The plan made ahead of `batch`, if it still stands; else a new one.
    fn adopt<'a>(&self, ahead: Ahead, batch: &'a [Pending]) -> Plan<'a> {
        let adopted = {
            let own = self.ownership.lock().expect("ownership lock");
            ahead.adopt(batch, &own.partitions)
        };
        telemetry::plan_ahead(adopted.is_some());
        adopted.unwrap_or_else(|| self.plan(batch))
    }

    /// The batch's write against `own`: the live ownership, or as it will be (see `ahead`).
    pub(super) fn plan_against<'a>(
        &self,
        batch: &'a [Pending],
        own: &HashMap<i32, Owned>,
    ) -> Plan<'a> {
        let filter = self.filter.current();
        let mut caps = self.caps.lock().expect("caps lock");
        Planner {
            filter: &filter,
            detector: &self.detector,
            windows: &self.config.windows,
            specs: &self.specs,
            error_rate_window_secs: self.config.alerts.error_rate_window_secs,
            now: Utc::now(),
            caps: &mut caps,
        }
        .plan(batch, own)
    }

    pub(super) async fn send_dlq(
        &self,
        p: &Pending,
        key: Option<&[u8]>,
        payload: &[u8],
        (kind, message): (&str, &str),
        extra: &[(&'static str, String)],
    ) -> Result<(), FlushError> {
        let partition = p.partition.to_string();
        let offset = p.offset.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(5 + extra.len())
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
        for (key, value) in extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        let mut record = BaseRecord::to(&self.config.kafka.dlq_topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        self.dlq
            .send_and_wait(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(FlushError::Dlq)
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FlushError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("DLQ produce failed: {0}")]
    Dlq(KafkaError),
    #[error("the database refuses a known-good write too (canary: {canary}); the record's own write: {record}")]
    RefusesEverything { record: String, canary: DbError },
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
