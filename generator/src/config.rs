//! Generator configuration: defaults, then an optional TOML file (`--config`), then environment
//! variables, then command-line flags (clap reads both; a flag beats its env var).

use std::path::PathBuf;

use logpipe_common::config::{load_toml, redact_url, ConfigError};
use logpipe_common::kafka::KafkaSettings;
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerSettings;
use crate::budget::BudgetSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Span export (Zipkin) and sampling.
    pub tracing: logpipe_common::telemetry::TracingSettings,
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// The gateway's internal token (a file of mode 0600, `./setup.sh` makes it): when set, every
    /// request but `GET /health` must send it; when unset, the service binds loopback only.
    pub internal_token_file: Option<PathBuf>,
    /// Names this instance in events (`host`) and in status; defaults to `gen-<hostname>`.
    pub instance_id: String,
    pub kafka: KafkaSettings,
    pub producer: ProducerSettings,
    pub breaker: BreakerSettings,
    pub budget: BudgetSettings,
    /// Run parameters used when a start request leaves them out.
    pub defaults: RunDefaults,
    /// Start generating with `defaults` as soon as the service is up.
    pub autostart: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    pub linger_ms: u64,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// all (required for idempotence), or 1 / 0 where the operator accepts the risk.
    pub acks: String,
    /// Upper bound on a record's time in the producer before it is reported failed.
    pub delivery_timeout_ms: u64,
    /// librdkafka's local queue; a full queue makes the run loop wait instead of growing memory.
    pub queue_max_messages: u32,
    /// Deadline to flush in-flight records on stop and shutdown.
    pub flush_timeout_ms: u64,
}

pub use crate::params::RunDefaults;

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            tracing: Default::default(),
            host: "127.0.0.1".into(),
            port: 8080,
            internal_token_file: None,
            instance_id: default_instance_id(),
            kafka: KafkaSettings::default(),
            producer: ProducerSettings::default(),
            breaker: BreakerSettings::default(),
            budget: BudgetSettings::default(),
            defaults: RunDefaults::default(),
            autostart: false,
        }
    }
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            linger_ms: 5,
            compression: "lz4".into(),
            acks: "all".into(),
            delivery_timeout_ms: 30_000,
            queue_max_messages: 200_000,
            flush_timeout_ms: 10_000,
        }
    }
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("gen-{host}")
}

impl GeneratorConfig {
    /// One line for the startup log, with credentials redacted.
    pub fn summary(&self) -> String {
        format!(
            "listen={}:{} instance={} brokers={} topic={} kafka_options={} rate={}/s threads={} batch={} compression={} acks={} global_budget={}/s redis={}",
            self.host,
            self.port,
            self.instance_id,
            redact_url(&self.kafka.brokers),
            self.kafka.raw_topic,
            self.kafka.librdkafka_options,
            self.defaults.rate_per_second,
            self.defaults.threads,
            self.defaults.batch_size,
            self.producer.compression,
            self.producer.acks,
            self.budget.global_rate_per_second,
            redact_url(&self.budget.redis_url)
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        const COMPRESSIONS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
        if !COMPRESSIONS.contains(&self.producer.compression.as_str()) {
            return Err(ConfigError::Invalid {
                field: "producer.compression",
                reason: format!(
                    "{:?} is not one of {COMPRESSIONS:?}",
                    self.producer.compression
                ),
            });
        }
        if !["all", "-1", "1", "0"].contains(&self.producer.acks.as_str()) {
            return Err(ConfigError::Invalid {
                field: "producer.acks",
                reason: format!("{:?} is not one of all, 1, 0", self.producer.acks),
            });
        }
        if self.breaker.open_ms < 1_000 {
            return Err(ConfigError::Invalid {
                field: "breaker.open_ms",
                reason: format!(
                    "{} ms; at least 1000 (failsafe backs off in whole seconds)",
                    self.breaker.open_ms
                ),
            });
        }
        if self.breaker.failure_threshold == 0 || self.breaker.half_open_max_probes == 0 {
            return Err(ConfigError::Invalid {
                field: "breaker",
                reason: "failure_threshold and half_open_max_probes must be at least 1".into(),
            });
        }
        crate::params::RunParams::from_request(&Default::default(), &self.defaults)
            .map(|_| ())
            .map_err(|e| ConfigError::Invalid {
                field: "defaults",
                reason: e.to_string(),
            })
    }
}

/// Command line and environment. Every flag is optional and overrides the TOML file.
#[derive(Debug, clap::Parser)]
#[command(name = "logpipe-generator", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub common: logpipe_common::config::CommonCli,
    /// Optional TOML file with any of the settings below.
    #[arg(long, env = "LOGPIPE_GENERATOR_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "LOGPIPE_GENERATOR_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "LOGPIPE_GENERATOR_PORT")]
    pub port: Option<u16>,
    #[arg(long, env = "LOGPIPE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[arg(long, env = "LOGPIPE_GENERATOR_LINGER_MS")]
    pub linger_ms: Option<u64>,
    #[arg(long, env = "LOGPIPE_GENERATOR_COMPRESSION")]
    pub compression: Option<String>,
    #[arg(long, env = "LOGPIPE_GENERATOR_ACKS")]
    pub acks: Option<String>,
    #[arg(long, env = "LOGPIPE_GENERATOR_RATE_PER_SECOND")]
    pub rate_per_second: Option<u32>,
    #[arg(long, env = "LOGPIPE_GENERATOR_THREADS")]
    pub threads: Option<u32>,
    #[arg(long, env = "LOGPIPE_GENERATOR_BATCH_SIZE")]
    pub batch_size: Option<u32>,
    #[arg(long, env = "LOGPIPE_GENERATOR_AUTOSTART")]
    pub autostart: Option<bool>,
    #[arg(long, env = "LOGPIPE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Cap on the sum of all instances' rates, shared through Redis; 0 = off.
    #[arg(long, env = "LOGPIPE_GLOBAL_RATE_PER_SECOND")]
    pub global_rate_per_second: Option<u32>,
    #[arg(long, env = "LOGPIPE_BUDGET_KEY_PREFIX")]
    pub budget_key_prefix: Option<String>,
    #[arg(long, env = "LOGPIPE_BREAKER_FAILURE_THRESHOLD")]
    pub breaker_failure_threshold: Option<u32>,
    #[arg(long, env = "LOGPIPE_BREAKER_OPEN_MS")]
    pub breaker_open_ms: Option<u64>,
    #[arg(long, env = "LOGPIPE_BREAKER_MAX_OPEN_MS")]
    pub breaker_max_open_ms: Option<u64>,
    #[arg(long, env = "LOGPIPE_BREAKER_CALL_TIMEOUT_MS")]
    pub breaker_call_timeout_ms: Option<u64>,
    #[arg(long, env = "LOGPIPE_BREAKER_HALF_OPEN_MAX_PROBES")]
    pub breaker_half_open_max_probes: Option<u32>,
}

impl Cli {
    pub fn into_config(self) -> Result<GeneratorConfig, ConfigError> {
        let mut c: GeneratorConfig = load_toml(self.config.as_deref())?;
        self.common
            .overlay(&mut c.tracing, &mut c.kafka, &mut c.internal_token_file);
        logpipe_common::overlay!(
            self.host => c.host,
            self.port => c.port,
            self.instance_id => c.instance_id,
            self.linger_ms => c.producer.linger_ms,
            self.compression => c.producer.compression,
            self.acks => c.producer.acks,
            self.rate_per_second => c.defaults.rate_per_second,
            self.threads => c.defaults.threads,
            self.batch_size => c.defaults.batch_size,
            self.autostart => c.autostart,
            self.redis_url => c.budget.redis_url,
            self.global_rate_per_second => c.budget.global_rate_per_second,
            self.budget_key_prefix => c.budget.key_prefix,
            self.breaker_failure_threshold => c.breaker.failure_threshold,
            self.breaker_open_ms => c.breaker.open_ms,
            self.breaker_max_open_ms => c.breaker.max_open_ms,
            self.breaker_call_timeout_ms => c.breaker.call_timeout_ms,
            self.breaker_half_open_max_probes => c.breaker.half_open_max_probes,
        );
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_the_toml_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("lp-gen-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.toml");
        std::fs::write(
            &file,
            "port = 9999\n[defaults]\nrate_per_second = 50\nbatch_size = 7\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "g",
            "--config",
            file.to_str().unwrap(),
            "--rate-per-second",
            "123",
        ])
        .unwrap();
        let c = cli.into_config().unwrap();
        assert_eq!(c.port, 9999);
        assert_eq!(c.defaults.rate_per_second, 123);
        assert_eq!(c.defaults.batch_size, 7);
        assert_eq!(c.defaults.threads, 1);
    }

    #[test]
    fn breaker_flags_override_defaults_and_a_sub_second_open_period_is_refused() {
        let cli = Cli::try_parse_from(["g", "--breaker-failure-threshold", "9"]).unwrap();
        assert_eq!(cli.into_config().unwrap().breaker.failure_threshold, 9);
        let cli = Cli::try_parse_from(["g", "--breaker-open-ms", "500"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(err.contains("breaker.open_ms"), "{err}");
    }

    #[test]
    fn unknown_compression_is_refused_naming_the_setting() {
        let cli = Cli::try_parse_from(["g", "--compression", "brotli"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(err.contains("producer.compression"), "{err}");
    }
}
