//! Gateway configuration: defaults, then an optional TOML file (`--config`), then environment
//! variables, then command-line flags.

use std::path::PathBuf;

use logpipe_common::config::{load_toml, ConfigError};
use serde::{Deserialize, Serialize};

use logpipe_common::config::{is_loopback, redact_url};
use logpipe_common::kafka::KafkaSettings;

use crate::auth::AuthSettings;
use crate::ingest::produce::IngestSettings;
use crate::ratelimit::RateLimitSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Span export (Zipkin) and sampling.
    pub tracing: logpipe_common::telemetry::TracingSettings,
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// A second port serving the same routes, on the same host: 4318, OTLP/HTTP's own, so an
    /// exporter left at its default endpoint reaches `POST /v1/logs`. Unset: none.
    pub otlp_port: Option<u16>,
    /// Base URLs of the generator instances this gateway controls; `dns+http://name:port` means
    /// every address `name` resolves to (scaled compose services).
    pub generator_urls: Vec<String>,
    /// Base URL of the collector's query API.
    pub collector_url: String,
    /// Per-call deadline for requests to generators and the collector.
    pub upstream_timeout_ms: u64,
    /// Whole-request deadline; a slower request gets 504.
    pub request_timeout_ms: u64,
    /// Largest accepted request body; larger gets 413.
    pub body_limit_bytes: usize,
    /// API requests in flight at once; more are shed with 503 (health and metrics are exempt).
    pub max_concurrent_requests: usize,
    pub rate_limit: RateLimitSettings,
    pub auth: AuthSettings,
    pub kafka: KafkaSettings,
    pub ingest: IngestSettings,
    /// The web console: the Zipkin UI its trace ids link to, the live-tail streams allowed.
    pub console: ConsoleSettings,
    /// The `Host` names and page origins this gateway answers (see `browser.rs`).
    pub browser: crate::browser::BrowserSettings,
    /// The token sent to the collector and the generators (a file of mode 0600; `./setup.sh`
    /// makes it). Unset: they must run without one, on loopback.
    pub internal_token_file: Option<PathBuf>,
    /// Largest answer read from the collector; a larger one is 502 (the collector's own pages
    /// stop at `database.query_max_response_bytes`, far below).
    pub upstream_max_response_bytes: usize,
    /// Syslog over TCP and UDP (off unless an address is set).
    pub syslog: crate::syslog::settings::SyslogSettings,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            tracing: Default::default(),
            host: "127.0.0.1".into(),
            port: 8090,
            otlp_port: None,
            generator_urls: vec!["http://127.0.0.1:8080".into()],
            collector_url: "http://127.0.0.1:8082".into(),
            upstream_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            body_limit_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            rate_limit: RateLimitSettings::default(),
            auth: AuthSettings::default(),
            kafka: KafkaSettings::default(),
            ingest: IngestSettings::default(),
            console: Default::default(),
            browser: Default::default(),
            internal_token_file: None,
            upstream_max_response_bytes: 32 * 1024 * 1024,
            syslog: Default::default(),
        }
    }
}

impl GatewayConfig {
    pub fn summary(&self) -> String {
        format!(
            "listen={}:{} generators={:?} collector={} brokers={} topic={} kafka_options={} body_limit={}B max_events={} \
             concurrency={} redis={} api_keys={}",
            self.host,
            self.port,
            self.generator_urls,
            self.collector_url,
            redact_url(&self.kafka.brokers),
            self.kafka.raw_topic,
            self.kafka.librdkafka_options,
            self.body_limit_bytes,
            self.ingest.max_events,
            self.max_concurrent_requests,
            redact_url(&self.rate_limit.redis_url),
            self.auth.keys.len()
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        if self.generator_urls.is_empty() {
            return Err(ConfigError::Invalid {
                field: "generator_urls",
                reason: "at least one generator instance is required".into(),
            });
        }
        for url in self.generator_urls.iter().chain([&self.collector_url]) {
            let ok = ["http://", "https://", "dns+http://"]
                .iter()
                .any(|p| url.starts_with(p));
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "generator_urls/collector_url",
                    reason: format!("{url:?} is not an http(s) URL"),
                });
            }
        }
        // A zero would reach the limiter's script, which shares a call with other clients'
        // checks: one bad rule would fail them all. Refusing a class outright is a scope matter.
        for (field, l) in [
            ("rate_limit.control", self.rate_limit.control),
            ("rate_limit.ingest", self.rate_limit.ingest),
            ("rate_limit.query", self.rate_limit.query),
            ("rate_limit.auth_failures", self.rate_limit.auth_failures),
        ] {
            if l.limit == 0 || l.window_ms == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "limit and window_ms must be at least 1 (to refuse a route class, \
                             give no key its scope)"
                        .into(),
                });
            }
        }
        if self.ingest.max_events == 0 {
            return Err(ConfigError::Invalid {
                field: "ingest.max_events",
                reason: "must be at least 1".into(),
            });
        }
        crate::auth::Authenticator::new(&self.auth).map_err(|e| ConfigError::Invalid {
            field: "auth.keys",
            reason: e.to_string(),
        })?;
        self.syslog
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                field: "syslog",
                reason,
            })?;
        if self.auth.keys.is_empty() && !self.auth.allow_open && !is_loopback(&self.host) {
            return Err(ConfigError::Invalid {
                field: "auth.keys",
                reason: format!(
                    "no API keys are configured and {} is not a loopback address: every client \
                     that reaches it would be admin. Configure keys (`./setup.sh --with-keys` \
                     makes them) or set `auth.allow_open = true` \
                     (LOGPIPE_GATEWAY_ALLOW_OPEN=true) where something else guards the network",
                    self.host
                ),
            });
        }
        Ok(())
    }
}

/// The web console: the Zipkin UI its trace ids link to, the live-tail streams allowed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Zipkin's UI (`http://127.0.0.1:9411`): each event's trace id links to its trace there.
    pub zipkin_ui_url: Option<String>,
    /// Live-tail streams open at once through this gateway; more get 503.
    pub max_streams: usize,
    /// Live-tail streams one key (or, on an open gateway, one address) may hold; more get 429.
    pub max_streams_per_client: usize,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            zipkin_ui_url: None,
            max_streams: 64,
            max_streams_per_client: 4,
        }
    }
}

#[derive(Debug, clap::Parser)]
#[command(name = "logpipe-gateway", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub common: logpipe_common::config::CommonCli,
    /// Optional TOML file with any of the settings below.
    #[arg(long, env = "LOGPIPE_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "LOGPIPE_GATEWAY_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "LOGPIPE_GATEWAY_PORT")]
    pub port: Option<u16>,
    /// Serve the same routes on this port too (4318: OTLP/HTTP exporters' default).
    #[arg(long, env = "LOGPIPE_GATEWAY_OTLP_PORT")]
    pub otlp_port: Option<u16>,
    /// Comma-separated generator base URLs.
    #[arg(long, env = "LOGPIPE_GENERATOR_URLS", value_delimiter = ',')]
    pub generator_urls: Option<Vec<String>>,
    #[arg(long, env = "LOGPIPE_COLLECTOR_URL")]
    pub collector_url: Option<String>,
    #[arg(long, env = "LOGPIPE_GATEWAY_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    #[arg(long, env = "LOGPIPE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    #[arg(long, env = "LOGPIPE_GATEWAY_RATE_LIMIT_ENABLED")]
    pub rate_limit_enabled: Option<bool>,
    #[arg(long, env = "LOGPIPE_GATEWAY_MAX_EVENTS")]
    pub max_events: Option<usize>,
    #[arg(long, env = "LOGPIPE_GATEWAY_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<usize>,
    #[arg(long, env = "LOGPIPE_GATEWAY_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Serve every route without keys on a non-loopback address (see `auth.allow_open`).
    #[arg(long, env = "LOGPIPE_GATEWAY_ALLOW_OPEN")]
    pub allow_open: Option<bool>,
    /// Extra `Host` names this gateway answers (comma-separated; `*` = any).
    #[arg(long, env = "LOGPIPE_GATEWAY_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Option<Vec<String>>,
    /// Page origins that may send state-changing requests (comma-separated).
    #[arg(long, env = "LOGPIPE_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Zipkin's UI as the browser reaches it: the console links each event's trace id there.
    #[arg(long, env = "LOGPIPE_CONSOLE_ZIPKIN_UI_URL")]
    pub zipkin_ui_url: Option<String>,
    /// Syslog over TCP (RFC 6587 framing) on this `ip:port` (off when unset).
    #[arg(long, env = "LOGPIPE_SYSLOG_TCP_ADDR")]
    pub syslog_tcp_addr: Option<String>,
    /// Syslog over UDP on this `ip:port` (off when unset).
    #[arg(long, env = "LOGPIPE_SYSLOG_UDP_ADDR")]
    pub syslog_udp_addr: Option<String>,
    /// Let the syslog listeners bind an address other than loopback (syslog carries no key).
    #[arg(long, env = "LOGPIPE_SYSLOG_ALLOW_REMOTE")]
    pub syslog_allow_remote: Option<bool>,
}

impl Cli {
    pub fn into_config(self) -> Result<GatewayConfig, ConfigError> {
        let mut c: GatewayConfig = load_toml(self.config.as_deref())?;
        self.common
            .overlay(&mut c.tracing, &mut c.kafka, &mut c.internal_token_file);
        logpipe_common::overlay!(
            self.host => c.host,
            self.port => c.port,
            self.otlp_port.map(Some) => c.otlp_port,
            self.generator_urls => c.generator_urls,
            self.collector_url => c.collector_url,
            self.body_limit_bytes => c.body_limit_bytes,
            self.redis_url => c.rate_limit.redis_url,
            self.rate_limit_enabled => c.rate_limit.enabled,
            self.max_events => c.ingest.max_events,
            self.max_concurrent_requests => c.max_concurrent_requests,
            self.request_timeout_ms => c.request_timeout_ms,
            self.zipkin_ui_url.map(Some) => c.console.zipkin_ui_url,
            self.allow_open => c.auth.allow_open,
            self.allowed_hosts => c.browser.allowed_hosts,
            self.allowed_origins => c.browser.allowed_origins,
            self.syslog_tcp_addr.map(Some) => c.syslog.tcp_addr,
            self.syslog_udp_addr.map(Some) => c.syslog.udp_addr,
            self.syslog_allow_remote => c.syslog.allow_remote,
        );
        c.generator_urls = c
            .generator_urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        c.collector_url = c.collector_url.trim_end_matches('/').to_owned();
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn generator_urls_are_split_on_commas_and_trimmed() {
        let cli =
            Cli::try_parse_from(["gw", "--generator-urls", "http://a:1/, http://b:2"]).unwrap();
        let c = cli.into_config().unwrap();
        assert_eq!(c.generator_urls, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn an_open_gateway_starts_only_on_loopback_unless_allowed() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost"] {
            let cli = Cli::try_parse_from(["gw", "--host", host]).unwrap();
            assert!(cli.into_config().is_ok(), "{host}");
        }
        let cli = Cli::try_parse_from(["gw", "--host", "0.0.0.0"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(
            err.contains("--with-keys") && err.contains("allow_open"),
            "{err}"
        );
        let cli = Cli::try_parse_from(["gw", "--host", "0.0.0.0", "--allow-open", "true"]).unwrap();
        assert!(cli.into_config().is_ok());
    }

    #[test]
    fn a_rate_limit_rule_of_zero_is_refused_at_start_naming_its_field() {
        let mut c = GatewayConfig::default();
        c.rate_limit.query.limit = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limit.query"), "{err}");
        let mut c = GatewayConfig::default();
        c.rate_limit.ingest.window_ms = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn syslog_listens_only_on_loopback_unless_allowed() {
        let cli = Cli::try_parse_from(["gw", "--syslog-tcp-addr", "127.0.0.1:5514"]).unwrap();
        assert_eq!(
            cli.into_config().unwrap().syslog.tcp_addr.as_deref(),
            Some("127.0.0.1:5514")
        );
        let cli = Cli::try_parse_from(["gw", "--syslog-udp-addr", "0.0.0.0:514"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(err.contains("allow_remote"), "{err}");
        let cli = Cli::try_parse_from([
            "gw",
            "--syslog-udp-addr",
            "0.0.0.0:514",
            "--syslog-allow-remote",
            "true",
        ])
        .unwrap();
        assert!(cli.into_config().is_ok());
        let cli = Cli::try_parse_from(["gw", "--syslog-tcp-addr", "localhost"]).unwrap();
        assert!(cli.into_config().is_err(), "an address without a port");
    }

    #[test]
    fn a_generator_url_without_scheme_is_refused() {
        let cli = Cli::try_parse_from(["gw", "--generator-urls", "a:1"]).unwrap();
        assert!(cli.into_config().is_err());
    }
}
