//! Kafka settings shared by the services, rdkafka client configs built from them, and idempotent
//! topic creation through the Admin API.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

mod options;
pub use options::{parse_listed_pair, LibrdkafkaOptions, OptionError};

pub const TOPIC_RAW: &str = "logs.raw";
pub const TOPIC_DLQ: &str = "logs.dlq";
pub const TOPIC_ALERTS: &str = "alerts";

/// The headers of an event record: how its payload is encoded, and the trace it belongs to.
pub fn event_headers(content_type: &str, traceparent: Option<&str>) -> OwnedHeaders {
    let headers = OwnedHeaders::new_with_capacity(2).insert(Header {
        key: "content-type",
        value: Some(content_type),
    });
    match traceparent {
        Some(tp) => headers.insert(Header {
            key: "traceparent",
            value: Some(tp),
        }),
        None => headers,
    }
}

/// The raw value of a record's first header named `key` (case-insensitive, as HTTP header names).
pub fn header_value<'a>(headers: Option<&'a BorrowedHeaders>, key: &str) -> Option<&'a [u8]> {
    headers?
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(key))
        .and_then(|h| h.value)
}

/// Broker connection and the topic names a service uses. Topic names are configurable so each
/// integration test runs on its own topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    pub raw_topic: String,
    pub dlq_topic: String,
    pub alerts_topic: String,
    /// Partitions given to `raw_topic` when this service creates it.
    pub raw_partitions: i32,
    /// How long admin and metadata calls may take before they count as failed.
    pub request_timeout_ms: u64,
    /// librdkafka properties laid over every client this service makes (`options.rs`).
    pub librdkafka_options: LibrdkafkaOptions,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            raw_topic: TOPIC_RAW.into(),
            dlq_topic: TOPIC_DLQ.into(),
            alerts_topic: TOPIC_ALERTS.into(),
            raw_partitions: 6,
            request_timeout_ms: 10_000,
            librdkafka_options: LibrdkafkaOptions::default(),
        }
    }
}

impl KafkaSettings {
    /// The base config every client starts from: logpipe's defaults, then the operator's
    /// `librdkafka_options`. What a client sets after this is a property the options may not
    /// hold (`options::decided`), so nothing the operator set is replaced without a word.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Tansu advertises one broker; keep metadata fresh so a restarted broker is found fast.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("socket.keepalive.enable", "true")
            // librdkafka batches records itself (linger.ms); Nagle on top only delays a small
            // request, such as the last records of a batch, until the previous one is acked.
            .set("socket.nagle.disable", "true");
        // librdkafka's own debug contexts (for example `cgrp` for group membership), for
        // diagnosing a broker; off unless asked for.
        if let Some(contexts) = kafka_debug() {
            c.set("debug", contexts)
                .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        self.librdkafka_options.apply(&mut c);
        c
    }

    /// The options' check (`LibrdkafkaOptions::check`); a service's config reports it as
    /// `kafka.librdkafka_options` (`config::ConfigError`'s `From`).
    pub fn validate(&self) -> Result<(), OptionError> {
        self.librdkafka_options.check()
    }

    /// The topics this deployment uses, with their partition counts.
    pub fn topics(&self) -> Vec<(String, i32)> {
        vec![
            (self.raw_topic.clone(), self.raw_partitions),
            (self.dlq_topic.clone(), 1),
            (self.alerts_topic.clone(), 1),
        ]
    }
}

/// `LOGPIPE_KAFKA_DEBUG`: librdkafka debug contexts (`cgrp`, `fetch`, `all`, ...) for every client.
pub fn kafka_debug() -> Option<String> {
    std::env::var("LOGPIPE_KAFKA_DEBUG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("could not create the Kafka admin client: {0}")]
    Client(#[source] KafkaError),
    #[error("creating topic {topic} failed: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("creating topics failed: {0}")]
    Request(#[source] KafkaError),
}

/// Create `topics` if they do not exist. An existing topic is success, so every service can call this
/// at start, in any order, as often as it likes.
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[(String, i32)],
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config("logpipe-admin")
        .create()
        .map_err(TopicError::Client)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &opts)
        .await
        .map_err(TopicError::Request)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    Ok(())
}
