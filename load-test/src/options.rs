//! The librdkafka options the operator gives the services (`LOGPIPE_KAFKA_OPTIONS`), laid over
//! the load test's own bare clients (`ceiling`, `paced`, `verify`) as well.

use std::sync::OnceLock;

use anyhow::bail;
use logpipe_common::kafka::LibrdkafkaOptions;
use rdkafka::config::ClientConfig;

/// The librdkafka options the operator gives the services (`LOGPIPE_KAFKA_OPTIONS`; docs/configuration.md),
/// read once and checked as the services check them.
fn loaded_options() -> &'static Result<LibrdkafkaOptions, String> {
    static OPTIONS: OnceLock<Result<LibrdkafkaOptions, String>> = OnceLock::new();
    OPTIONS.get_or_init(|| match std::env::var("LOGPIPE_KAFKA_OPTIONS") {
        Ok(list) => LibrdkafkaOptions::from_list(&list),
        Err(_) => Ok(LibrdkafkaOptions::default()),
    })
}

/// Refuse a run whose `LOGPIPE_KAFKA_OPTIONS` the services would refuse.
pub fn check_operator_options() -> anyhow::Result<()> {
    match loaded_options() {
        Ok(_) => Ok(()),
        Err(e) => bail!("LOGPIPE_KAFKA_OPTIONS: {e}"),
    }
}

/// Lay the operator's options over a bare client too: a ceiling measured with other socket or
/// partitioner settings than the pipeline's (or unable to reach a broker that asks for SASL)
/// would not be its ceiling.
pub(crate) fn with_operator_options(c: &mut ClientConfig) -> &mut ClientConfig {
    if let Ok(options) = loaded_options() {
        options.apply(c);
    }
    c
}
