//! The ingest producer: validated events into `logs.raw` through an idempotent producer, answered
//! only when Kafka acknowledged every one ([`IngestProducer`], [`ProduceError`]), each event
//! written as its record's payload ([`Payload`]).

use serde::{Deserialize, Serialize};
use std::time::Duration;

use logpipe_common::event::LogEvent;
use logpipe_common::kafka::KafkaSettings;
use logpipe_common::producer::AckProducer;
use logpipe_common::RawEvent;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Kafka refuses the record for its size: resending it cannot help.
    #[error("event {index} is larger than Kafka accepts for one record: {reason}")]
    TooLarge { index: usize, reason: String },
    #[error("Kafka did not acknowledge {failed} of {total} events: {reason}")]
    NotAcknowledged {
        failed: usize,
        total: usize,
        reason: String,
    },
}

/// An event as one record's payload: its wire JSON.
pub trait Payload {
    fn write_payload(&self, out: &mut Vec<u8>);
}

impl Payload for LogEvent {
    fn write_payload(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("LogEvent serializes");
    }
}

/// An event read from the own route's JSON: its attributes go on as their text.
impl Payload for RawEvent {
    fn write_payload(&self, out: &mut Vec<u8>) {
        self.write_json(out);
    }
}

/// The idempotent producer behind ingest.
pub struct IngestProducer {
    producer: AckProducer,
    topic: String,
    delivery_timeout: Duration,
}

impl IngestProducer {
    pub fn new(
        kafka: &KafkaSettings,
        settings: &IngestSettings,
    ) -> Result<IngestProducer, rdkafka::error::KafkaError> {
        let mut config: ClientConfig = kafka.client_config("logpipe-gateway");
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger_ms.to_string())
            .set("compression.type", &settings.compression)
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                settings.queue_max_messages.to_string(),
            );
        let producer = AckProducer::new(&config)?;
        Ok(IngestProducer {
            producer,
            topic: kafka.raw_topic.clone(),
            delivery_timeout: Duration::from_millis(settings.delivery_timeout_ms),
        })
    }

    /// Produce every event and wait for every acknowledgement; `Ok` only when all were acknowledged.
    pub async fn produce_all(
        &self,
        events: &[impl Payload],
        traceparent: Option<&str>,
    ) -> Result<(), ProduceError> {
        let total = events.len();
        // One count per record and one wake when the last is acknowledged, not a future each.
        let acks = self.producer.group();
        let mut queued = 0;
        let mut refused: Option<String> = None;
        // librdkafka copies each payload when it takes the record, so one buffer serves them all.
        let mut payload = Vec::new();
        for (index, event) in events.iter().enumerate() {
            payload.clear();
            event.write_payload(&mut payload);
            let headers = logpipe_common::kafka::event_headers("application/json", traceparent);
            // No key: librdkafka's sticky partitioner fills one partition's batch at a time and
            // moves on, so load still spreads over every partition, in a few large batches where
            // a key per event made one small batch per partition each linger. Nothing downstream
            // depends on the key (ARCHITECTURE.md, "Decisions and why").
            let record = BaseRecord::<(), [u8]>::to(&self.topic)
                .payload(&payload)
                .headers(headers);
            match acks.send(record) {
                Ok(()) => queued += 1,
                Err((e, _))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
                {
                    // What was queued before still completes; a resend is stable (same ids).
                    return Err(ProduceError::TooLarge {
                        index,
                        reason: e.to_string(),
                    });
                }
                Err((e, _)) => {
                    // Queue full or producer failed: the request fails; what was queued still
                    // completes (or times out) on its own and is harmless to resend.
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        let wait = self.delivery_timeout + Duration::from_secs(1);
        let (acked, reason) = match tokio::time::timeout(wait, acks.wait()).await {
            Ok(outcome) => (
                outcome.acked,
                outcome.error.map(|e| e.to_string()).or(refused),
            ),
            Err(_) => (0, Some("delivery timed out".into())),
        };
        if acked == total {
            return Ok(());
        }
        Err(ProduceError::NotAcknowledged {
            failed: total - acked.min(queued),
            total,
            reason: reason.unwrap_or_else(|| "unknown".into()),
        })
    }

    /// True when the broker answers a metadata request for the topic.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Wait for queued records on shutdown.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Most events one request may carry; more is a 413.
    pub max_events: usize,
    /// A client slower than this to send its body gets 408.
    pub body_read_timeout_ms: u64,
    /// Event timestamps further ahead of the gateway's clock than this are refused (422). Keep it
    /// no larger than the collector's `allowed_lateness_secs`: an event may then be early by at most
    /// what windows already wait for, and can never make on-time events late.
    pub max_future_secs: i64,
    /// Largest event (its JSON or its line) accepted; a larger one is refused by index, 413 when it
    /// is the only one. 256 KiB, Loki's line limit: far below what Kafka takes per record (1 MB).
    pub max_event_bytes: usize,
    pub linger_ms: u64,
    /// How long Kafka may take to acknowledge a record before the request fails with 503.
    pub delivery_timeout_ms: u64,
    pub queue_max_messages: u32,
    pub compression: String,
    /// On a gateway without keys, `text/plain` ingest (the one body a web page can send anywhere
    /// without asking first) from a non-browser client. A browser's is refused either way; false
    /// refuses it from everyone until keys are configured.
    pub open_text_plain: bool,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            body_read_timeout_ms: 10_000,
            max_future_secs: 10,
            max_event_bytes: 256 * 1024,
            linger_ms: 2,
            delivery_timeout_ms: 5_000,
            queue_max_messages: 200_000,
            compression: "lz4".into(),
            open_text_plain: true,
        }
    }
}
