//! Parsing and acceptance: a polled record checked against its partition's expected offset
//! (`Owned::arrive`), parsed (JSON, or an Apache or syslog line; a parser panic is caught), and
//! turned into a `Pending` with its trace span.

use super::decide::*;
use super::*;

impl ConsumerLoop {
    /// A polled record as a `Pending` for the batch, or `None` when it is not taken (see `arrive`).
    pub(super) fn accept(
        &self,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        now: Instant,
    ) -> Option<Pending> {
        let partition = msg.partition();
        let offset = msg.offset();
        let payload = msg.payload().unwrap_or_default();
        let owned = self.arrive(msg, payload, now)?;
        // The metric is counted per hand-over (`hand_over`): a registry lookup per record
        // showed in the consume thread's profile.
        self.health.consumed.fetch_add(1, Ordering::Relaxed);
        // A parser bug must not stop the partition: a record that panics it is dead-lettered.
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            if is_raw_line(msg, payload) {
                self.parse_raw(msg, payload)
            } else {
                RawEvent::from_json(payload)
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
        let trace = self.process_span(msg);
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

    /// The record checked against its partition's expected offset (`Owned::arrive`): the
    /// ownership epoch it is taken under, or `None` when it is skipped, re-fetched or reveals a
    /// replaced log.
    fn arrive(
        &self,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        payload: &[u8],
        now: Instant,
    ) -> Option<u64> {
        let partition = msg.partition();
        let offset = msg.offset();
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
        match arrival {
            Arrival::Take(epoch) => Some(epoch),
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
                Some(epoch)
            }
            Arrival::Skip => None,
            Arrival::Replaced { at } => {
                self.replaced
                    .lock()
                    .expect("replaced lock")
                    .push((partition, at));
                None
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
                None
            }
        }
    }

    /// The `kafka.process` span of a sampled record, a child of the producer's trace.
    fn process_span(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> Option<tracing::Span> {
        let partition = msg.partition();
        header_value(msg.headers(), "traceparent")
            .and_then(logpipe_common::telemetry::sampled_traceparent)
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
            })
    }

    /// An Apache or syslog line. Its id derives from where it was read, so a replay after a crash
    /// stores the same row; its service is the record key when there is one.
    pub(super) fn parse_raw(
        &self,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        payload: &[u8],
    ) -> Result<RawEvent, EventError> {
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
        RawEvent::from_event(&event)
    }
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
