//! librdkafka properties an operator passes through (`[kafka.librdkafka_options]`,
//! `--kafka-option key=value`), as Vector's `librdkafka_options` and Kafka Connect's
//! `producer.override.*` do: security (`security.protocol`, `sasl.*`), socket and metadata
//! tuning, the sticky partitioner's linger. They are laid over every client a service makes,
//! after logpipe's base settings.
//!
//! A property logpipe decides is refused at start, naming the reason or the setting to use:
//! the write-once guarantees (idempotence, acks, offsets kept in PostgreSQL), what a service
//! derives from its own settings (linger, compression, timeouts), and what its code relies on
//! (statistics, the classic group protocol). librdkafka matches names exactly (`strcmp`) and
//! every option must pass its own check first, so the table below, with every alias librdkafka
//! 2.12 knows for these names, is the whole of what can reach a decided property.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;
use serde::{Deserialize, Serialize};

/// Properties an option may not set, each with why.
const DECIDED: &[(&[&str], &str)] = &[
    (
        &["bootstrap.servers", "metadata.broker.list"],
        "set kafka.brokers (--brokers, LOGPIPE_KAFKA_BROKERS)",
    ),
    (
        &["client.id"],
        "logpipe names each of its clients, so logs and the broker's metrics tell them apart",
    ),
    (
        &[
            "enable.idempotence",
            "acks",
            "request.required.acks",
            "transactional.id",
            "max.in.flight",
            "max.in.flight.requests.per.connection",
            "retries",
            "message.send.max.retries",
            "enable.gapless.guarantee",
        ],
        "an acknowledged event is written once: logpipe's producers are idempotent and wait \
         for every in-sync replica (the generator's own setting is producer.acks)",
    ),
    (
        &["message.timeout.ms", "delivery.timeout.ms"],
        "set the service's delivery_timeout_ms, which its answers and breaker are timed by",
    ),
    (
        &["linger.ms", "queue.buffering.max.ms"],
        "set the service's linger_ms",
    ),
    (
        &["compression.type", "compression.codec"],
        "set the service's compression",
    ),
    (
        &["queue.buffering.max.messages", "batch.num.messages"],
        "the service bounds its producer queue and batches itself (queue_max_messages)",
    ),
    (
        &[
            "group.id",
            "group.instance.id",
            "partition.assignment.strategy",
        ],
        "set consumer.group_id, consumer.group_instance_id or consumer.assignment_strategy",
    ),
    (
        &["group.protocol", "group.remote.assignor"],
        "the collector's rebalance handling is built and tested on the classic group protocol",
    ),
    (
        &[
            "enable.auto.commit",
            "auto.commit.enable",
            "enable.auto.offset.store",
            "auto.offset.reset",
        ],
        "offsets live in PostgreSQL, committed with the rows; consumer.offset_out_of_range \
         decides what an offset outside the log does",
    ),
    (
        &["enable.partition.eof", "statistics.interval.ms"],
        "the consume loop relies on it (it reads each partition's log bounds from statistics \
         once a second, and takes no end-of-partition events)",
    ),
    (
        &[
            "session.timeout.ms",
            "max.poll.interval.ms",
            "queued.max.messages.kbytes",
            "reconnect.backoff.ms",
            "fetch.wait.max.ms",
            "max.partition.fetch.bytes",
            "fetch.queue.backoff.ms",
        ],
        "the collector sets it (its consumer.* settings, or the bounds its loop is timed by)",
    ),
    (
        &["debug"],
        "set LOGPIPE_KAFKA_DEBUG, which also raises librdkafka's log level",
    ),
    (
        &["log_level"],
        "the rdkafka crate sets each client's log level after creating it, replacing this; \
         set LOGPIPE_KAFKA_DEBUG for librdkafka's debug logs",
    ),
];

/// Why logpipe decides `name` itself, when it does.
pub(crate) fn decided(name: &str) -> Option<&'static str> {
    DECIDED
        .iter()
        .find(|(names, _)| names.contains(&name))
        .map(|(_, why)| *why)
}

/// Properties whose values are never logged: librdkafka's own sensitive ones (2.12's
/// `_RK_SENSITIVE`), and any name that says what it holds.
fn is_secret(name: &str) -> bool {
    const SENSITIVE: &[&str] = &[
        "sasl.username",
        "sasl.oauthbearer.config",
        "ssl.ca.pem",
        "ssl.key.location",
        "ssl.key.pem",
        "ssl.certificate.pem",
    ];
    SENSITIVE.contains(&name)
        || [
            "password",
            "secret",
            "passphrase",
            "private.key",
            "credential",
        ]
        .iter()
        .any(|word| name.contains(word))
}

/// Operator-supplied librdkafka properties (see the module documentation).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LibrdkafkaOptions(BTreeMap<String, String>);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("{name} is decided by logpipe: {why}")]
    Decided { name: String, why: &'static str },
    #[error("{0}")]
    Librdkafka(String),
}

/// One `name=value` of a list, `None` for a blank one (an empty `LOGPIPE_KAFKA_OPTIONS`, a `;` at
/// the end): the services take a list as [`LibrdkafkaOptions::from_list`] does.
pub fn parse_listed_pair(pair: &str) -> Result<Option<(String, String)>, String> {
    if pair.trim().is_empty() {
        return Ok(None);
    }
    parse_pair(pair).map(Some)
}

/// `name=value`, split at the first `=` (a value may hold more), as a flag or the environment
/// gives one.
fn parse_pair(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{pair:?} is not name=value")),
    }
}

impl LibrdkafkaOptions {
    /// `LOGPIPE_KAFKA_OPTIONS`'s form: `name=value` pairs between `;`, checked (for a tool that
    /// makes its own clients beside the services, such as the load test's bare clients).
    pub fn from_list(list: &str) -> Result<LibrdkafkaOptions, String> {
        let o = Self::parse_list(list)?;
        o.check().map_err(|e| e.to_string())?;
        Ok(o)
    }

    /// The list read, not checked yet; blank entries are skipped, as the services skip them.
    pub fn parse_list(list: &str) -> Result<LibrdkafkaOptions, String> {
        let mut o = LibrdkafkaOptions::default();
        for pair in list.split(';') {
            if let Some((name, value)) = parse_listed_pair(pair)? {
                o.insert(name, value);
            }
        }
        Ok(o)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Add or replace one property (a later layer of the configuration over an earlier one).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// Refuse a property logpipe decides, then let librdkafka check each name and value (an
    /// unknown name, a value of the wrong type) and make a producer and a consumer with them
    /// (what only a client's creation checks: SASL credentials, a mechanism or TLS this build
    /// lacks). No broker is named, so nothing connects.
    pub fn check(&self) -> Result<(), OptionError> {
        if let Some((name, why)) = self
            .0
            .keys()
            .find_map(|name| decided(name).map(|why| (name, why)))
        {
            return Err(OptionError::Decided {
                name: name.clone(),
                why,
            });
        }
        let mut probe = ClientConfig::new();
        self.apply(&mut probe);
        // A producer warns of consumer properties and the other way round; the real clients
        // log what matters.
        probe.set_log_level(RDKafkaLogLevel::Emerg);
        let refused = |e: KafkaError| OptionError::Librdkafka(self.redact_message(&e.to_string()));
        probe.create_native_config().map_err(refused)?;
        // Every logpipe producer is idempotent (decided above), and librdkafka refuses some
        // properties only in that company (`queue.buffering.backpressure.threshold` other than 1,
        // for one): probing a plain producer let such an option pass the check, and the service
        // then failed at its first producer, after it had started listening.
        let _: BaseProducer = probe
            .clone()
            .set("enable.idempotence", "true")
            .create()
            .map_err(refused)?;
        let _: BaseConsumer = probe
            .clone()
            .set("group.id", "logpipe-options-check")
            .create()
            .map_err(refused)?;
        Ok(())
    }

    /// Lay the options over a client's config.
    pub fn apply(&self, client: &mut ClientConfig) {
        for (name, value) in &self.0 {
            client.set(name, value);
        }
    }

    /// librdkafka's message can quote the value it refused: never a secret's.
    fn redact_message(&self, message: &str) -> String {
        self.0
            .iter()
            .filter(|(name, value)| is_secret(name) && !value.is_empty())
            .fold(message.to_owned(), |m, (_, value)| m.replace(value, "***"))
    }
}

/// `name=value,...`, secrets as `***`: for the startup log.
impl fmt::Display for LibrdkafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let shown = if is_secret(name) { "***" } else { value };
            write!(f, "{name}={shown}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LibrdkafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> LibrdkafkaOptions {
        let mut o = LibrdkafkaOptions::default();
        for (k, v) in pairs {
            o.insert(*k, *v);
        }
        o
    }

    #[test]
    fn a_tuning_property_passes_and_is_applied() {
        let o = options(&[
            ("sticky.partitioning.linger.ms", "20"),
            ("socket.nagle.disable", "false"),
        ]);
        assert_eq!(o.check(), Ok(()));
        let mut c = ClientConfig::new();
        c.set("socket.nagle.disable", "true");
        o.apply(&mut c);
        assert_eq!(c.get("socket.nagle.disable"), Some("false"));
        assert_eq!(c.get("sticky.partitioning.linger.ms"), Some("20"));
    }

    #[test]
    fn every_decided_name_is_refused_with_its_reason() {
        for (names, why) in DECIDED {
            for name in *names {
                let err = options(&[(name, "1")]).check().unwrap_err();
                assert_eq!(
                    err,
                    OptionError::Decided {
                        name: (*name).to_owned(),
                        why
                    }
                );
            }
        }
    }

    #[test]
    fn every_decided_name_is_one_librdkafka_knows() {
        // A name misspelt in the table would refuse nothing: librdkafka must know each one
        // (asked through a client config with only that name, with each value type tried).
        for (names, _) in DECIDED {
            for name in *names {
                let known = ["1", "true", "all", "x", "range"].iter().any(|value| {
                    let mut c = ClientConfig::new();
                    c.set(*name, *value);
                    match c.create_native_config() {
                        Ok(_) => true,
                        Err(e) => !e.to_string().contains("No such configuration property"),
                    }
                });
                assert!(known, "{name} is not a librdkafka property");
            }
        }
    }

    #[test]
    fn an_unknown_name_or_a_bad_value_is_refused_by_librdkafka() {
        let err = options(&[("sticky.partitioning.linger.mss", "5")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("sticky.partitioning.linger.mss"), "{err}");
        let err = options(&[("socket.timeout.ms", "soon")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("socket.timeout.ms"), "{err}");
    }

    #[test]
    fn what_only_a_clients_creation_checks_is_refused_too() {
        // This build has SASL PLAIN and no OpenSSL or libsasl2 (`builtin.features`).
        let plain = [
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanisms", "PLAIN"),
        ];
        let err = options(&plain).check().unwrap_err().to_string();
        assert!(err.contains("sasl.username and sasl.password"), "{err}");
        let with_credentials = [
            &plain[..],
            &[("sasl.username", "u"), ("sasl.password", "p")],
        ];
        assert_eq!(options(&with_credentials.concat()).check(), Ok(()));
        let scram = [&plain[..1], &[("sasl.mechanisms", "SCRAM-SHA-256")]].concat();
        let err = options(&scram).check().unwrap_err().to_string();
        assert!(err.contains("SCRAM-SHA-256"), "{err}");
        let err = options(&[("security.protocol", "ssl")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("OpenSSL not available"), "{err}");
    }

    #[test]
    fn a_property_only_an_idempotent_producer_refuses_is_refused_by_the_check() {
        // Found by trying it: librdkafka took this on the plain producer the check made, and
        // the collector then failed at its DLQ producer, after it had started listening.
        let err = options(&[("queue.buffering.backpressure.threshold", "10")])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable.idempotence"), "{err}");
        assert_eq!(
            options(&[("queue.buffering.backpressure.threshold", "1")]).check(),
            Ok(())
        );
    }

    #[test]
    fn a_list_is_pairs_between_semicolons_split_at_the_first_equals_sign() {
        let o = LibrdkafkaOptions::from_list(
            "socket.timeout.ms=30000;;client.rack=eu=1;sasl.password=p=w",
        )
        .unwrap();
        assert_eq!(
            o.to_string(),
            "client.rack=eu=1,sasl.password=***,socket.timeout.ms=30000"
        );
        assert!(LibrdkafkaOptions::from_list("socket.timeout.ms").is_err());
        assert!(LibrdkafkaOptions::from_list("=5").is_err());
        let err = LibrdkafkaOptions::from_list("acks=1").unwrap_err();
        assert!(err.contains("acks is decided by logpipe"), "{err}");
    }

    #[test]
    fn a_secret_never_appears_in_display_debug_or_an_error() {
        let o = options(&[
            ("sasl.password", "hunter2"),
            ("sasl.username", "app"),
            ("sasl.mechanisms", "PLAIN"),
        ]);
        for shown in [o.to_string(), format!("{o:?}")] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("=app"),
                "{shown}"
            );
            assert!(shown.contains("sasl.mechanisms=PLAIN"), "{shown}");
        }
        let bad = options(&[("ssl.key.password", "hunter2"), ("socket.timeout.ms", "x")]);
        let err = bad.check().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    mod generated {
        use proptest::prelude::*;

        use super::*;

        fn name() -> impl Strategy<Value = String> {
            let decided: Vec<String> = DECIDED
                .iter()
                .flat_map(|(names, _)| names.iter().map(|n| (*n).to_owned()))
                .collect();
            prop_oneof![
                proptest::sample::select(decided),
                proptest::sample::select(vec![
                    "sasl.password".to_owned(),
                    "sasl.username".to_owned(),
                    "ssl.key.password".to_owned(),
                    "sasl.oauthbearer.client.secret".to_owned(),
                    "sasl.oauthbearer.config".to_owned(),
                ]),
                proptest::sample::select(vec![
                    "sticky.partitioning.linger.ms".to_owned(),
                    "socket.timeout.ms".to_owned(),
                    "client.rack".to_owned(),
                    "sasl.mechanisms".to_owned(),
                    "security.protocol".to_owned(),
                ]),
                "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any options: refused exactly when one names a decided property; a secret's value
            /// (a distinctive one, so it cannot occur in the text by chance) never shown; what
            /// is applied is what was given, over logpipe's base.
            #[test]
            fn options_are_refused_shown_and_applied_as_documented(
                pairs in proptest::collection::vec((name(), "[ -~]{0,12}", "Qz[A-Za-z0-9]{8}"), 0..6)
            ) {
                let mut o = LibrdkafkaOptions::default();
                for (name, value, secret) in &pairs {
                    o.insert(name.clone(), if is_secret(name) { secret } else { value });
                }
                let result = o.check();
                let first_decided = o.0.keys().find(|n| decided(n).is_some());
                match (&result, first_decided) {
                    (Err(OptionError::Decided { name, .. }), Some(d)) => prop_assert_eq!(name, d),
                    (_, Some(d)) => prop_assert!(false, "{d} passed: {result:?}"),
                    (Err(OptionError::Decided { .. }), None) => prop_assert!(false, "{result:?}"),
                    _ => {}
                }
                let shown = format!("{o} {o:?} {}", result.err().map(|e| e.to_string()).unwrap_or_default());
                for (name, value) in &o.0 {
                    if is_secret(name) {
                        prop_assert!(!shown.contains(value.as_str()), "{name}: {shown}");
                    }
                }
                let mut client = ClientConfig::new();
                client.set("socket.nagle.disable", "true");
                o.apply(&mut client);
                for (name, value) in &o.0 {
                    prop_assert_eq!(client.get(name), Some(value.as_str()));
                }
            }
        }
    }
}
