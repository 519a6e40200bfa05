//! The TOML layer of every service's configuration: defaults, then this file, then env, then flags.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl From<crate::kafka::OptionError> for ConfigError {
    fn from(e: crate::kafka::OptionError) -> Self {
        ConfigError::Invalid {
            field: "kafka.librdkafka_options",
            reason: e.to_string(),
        }
    }
}

/// Defaults when `path` is `None`, else the file's values over the defaults (`#[serde(default)]`).
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Overlay optional values (env or flags, as clap parsed them) onto a config that already holds
/// defaults and the TOML file: `overlay!(cli.port => config.port, ...)`.
#[macro_export]
macro_rules! overlay {
    ($($src:expr => $dst:expr),* $(,)?) => {
        $(if let Some(v) = $src {
            $dst = v;
        })*
    };
}

/// The flags every service takes alike (`#[command(flatten)]` in each service's `Cli`): span
/// export and sampling, the broker and the raw topic, the internal token's file.
#[derive(Debug, Default, clap::Args)]
pub struct CommonCli {
    /// Zipkin span endpoint (`http://host:9411/api/v2/spans`); unset = no span export.
    #[arg(long, env = "LOGPIPE_ZIPKIN_ENDPOINT")]
    pub zipkin_endpoint: Option<String>,
    /// Share of new traces sampled, 0.0-1.0 (requests that arrive traced keep their decision).
    #[arg(long, env = "LOGPIPE_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "LOGPIPE_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// The raw topic's name.
    #[arg(long, env = "LOGPIPE_RAW_TOPIC")]
    pub topic: Option<String>,
    /// The raw topic's partition count (when this service creates it).
    #[arg(long, env = "LOGPIPE_RAW_PARTITIONS")]
    pub partitions: Option<i32>,
    /// File holding the internal token (mode 0600; `./setup.sh` makes it): the gateway sends it,
    /// the collector and the generator ask for it.
    #[arg(long, env = "LOGPIPE_INTERNAL_TOKEN_FILE")]
    pub internal_token_file: Option<std::path::PathBuf>,
    /// A librdkafka property for every Kafka client, `name=value` (repeatable; in the
    /// environment, `;` between pairs). Over the file's `[kafka.librdkafka_options]`.
    #[arg(long = "kafka-option", env = "LOGPIPE_KAFKA_OPTIONS", value_delimiter = ';',
          value_parser = crate::kafka::parse_listed_pair, hide_env_values = true)]
    pub kafka_options: Vec<Option<(String, String)>>,
}

impl CommonCli {
    /// Lay these flags over a config's tracing, Kafka and token settings.
    pub fn overlay(
        self,
        tracing: &mut crate::telemetry::TracingSettings,
        kafka: &mut crate::kafka::KafkaSettings,
        internal_token_file: &mut Option<std::path::PathBuf>,
    ) {
        crate::overlay!(
            self.zipkin_endpoint.map(Some) => tracing.zipkin_endpoint,
            self.trace_sample_ratio => tracing.sample_ratio,
            self.brokers => kafka.brokers,
            self.topic => kafka.raw_topic,
            self.partitions => kafka.raw_partitions,
            self.internal_token_file.map(Some) => *internal_token_file,
        );
        for (name, value) in self.kafka_options.into_iter().flatten() {
            kafka.librdkafka_options.insert(name, value);
        }
    }
}

/// `localhost` or a loopback IP: only this machine can connect.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, and the value of a
/// `password`/`sslpassword`/`token`/`secret` query parameter (libpq and sqlx read
/// `?password=`) → `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &base[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &base[..scheme_end + 3],
                    &creds[..colon],
                    &base[at..]
                ),
                None => base.to_owned(),
            }
        }
        _ => base.to_owned(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn is_secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "pass", "sslpassword", "token", "secret", "auth"].contains(&k.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=disable&password=pw&PassWord=x"),
            "postgres://u@h/db?sslmode=disable&password=***&PassWord=***"
        );
        assert_eq!(
            redact_url("postgres://u:a@b@h/db?password=pw"),
            "postgres://u:***@h/db?password=***"
        );
    }

    /// The flags' and the environment's form of the options (clap splits at `;`), read as the
    /// load test reads `LOGPIPE_KAFKA_OPTIONS` (`LibrdkafkaOptions::parse_list`).
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        common: CommonCli,
    }

    fn from_flags(list: &str) -> Result<String, ()> {
        let flags = <Flags as clap::Parser>::try_parse_from(["t", "--kafka-option", list])
            .map_err(|_| ())?;
        let mut kafka = crate::kafka::KafkaSettings::default();
        flags.common.overlay(
            &mut crate::telemetry::TracingSettings::default(),
            &mut kafka,
            &mut None,
        );
        Ok(kafka.librdkafka_options.to_string())
    }

    #[test]
    fn an_empty_option_list_or_a_trailing_semicolon_adds_nothing() {
        // `LOGPIPE_KAFKA_OPTIONS= ./setup.sh` refused to start the collector ("" is not
        // name=value) while the load test took the same value.
        assert_eq!(from_flags(""), Ok(String::new()));
        assert_eq!(
            from_flags("socket.timeout.ms=30000;"),
            Ok("socket.timeout.ms=30000".into())
        );
        assert_eq!(from_flags(" ; ;"), Ok(String::new()));
        assert!(from_flags("socket.timeout.ms").is_err());
    }

    proptest::proptest! {
        /// Any list (pairs, blanks, stray `;`, names with spaces around them): the services and
        /// the load test read the same options from it, or both refuse it.
        #[test]
        fn the_services_and_the_load_test_read_an_option_list_alike(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    "[ ]{0,2}[a-z]{1,6}(\\.[a-z]{1,6}){0,2}[ ]{0,2}=[ -:<-~]{0,8}",
                    "[ ]{0,3}",
                    "[a-z=]{1,6}",
                ],
                0..6,
            )
        ) {
            let list = parts.join(";");
            let services = from_flags(&list);
            let load_test = crate::kafka::LibrdkafkaOptions::parse_list(&list)
                .map(|o| o.to_string())
                .map_err(|_| ());
            proptest::prop_assert_eq!(services, load_test, "{:?}", list);
        }
    }
}
