//! Collector configuration: defaults, then an optional TOML file (`--config`), then environment
//! variables, then command-line flags.

use std::path::PathBuf;

use logpipe_common::config::{load_toml, redact_url, ConfigError};
use logpipe_common::kafka::KafkaSettings;
use serde::{Deserialize, Serialize};

pub use crate::detect::AlertSettings;
pub use crate::filter::FilterRules;
pub use crate::windows::WindowSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Span export (Zipkin) and sampling.
    pub tracing: logpipe_common::telemetry::TracingSettings,
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// The gateway's internal token (a file of mode 0600, `./setup.sh` makes it): when set, every
    /// request but `GET /health` must send it; when unset, the service binds loopback only.
    pub internal_token_file: Option<PathBuf>,
    pub kafka: KafkaSettings,
    pub consumer: ConsumerSettings,
    pub database: DatabaseSettings,
    /// Which events are stored raw (every event feeds windows and alerts regardless).
    pub filter: FilterRules,
    /// When set, filter rules come from this TOML file instead of `[filter]`, and are re-read on
    /// SIGHUP or `POST /admin/filters/reload`.
    pub filter_file: Option<PathBuf>,
    pub windows: WindowSettings,
    pub alerts: AlertSettings,
    /// Time partitions, retention and text indexes.
    pub storage: StorageSettings,
    /// `GET /api/v1/events/stream`: poll interval and per-client caps.
    pub stream: StreamSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    pub group_id: String,
    /// Static group membership (Kafka's `group.instance.id`): a collector restarted with the same
    /// id takes its old place and partitions back at once, instead of waiting for the group to
    /// notice the old member is gone. Must be unique per running instance (a pod or host name);
    /// unset = dynamic. For Apache Kafka only: on Tansu 0.6 a static member restarted after a
    /// SIGKILL can wedge the group for good (the "dead leader kept" workaround, ARCHITECTURE.md).
    pub group_instance_id: Option<String>,
    /// A batch is written when it holds this many records, or when the consumer has caught up
    /// (nothing more is queued: an idle pipeline writes each event at once)...
    pub batch_max_events: usize,
    /// ...or when its oldest record has waited this long.
    pub batch_max_ms: u64,
    /// How long the broker may hold a fetch when it has nothing new (librdkafka
    /// `fetch.wait.max.ms`). Bounds the latency of an event on a quiet pipeline. Tansu 0.6 also
    /// spends about this long on every fetch, data or not, so it is kept short.
    pub fetch_wait_max_ms: u32,
    /// Most bytes fetched per partition per request (`max.partition.fetch.bytes`): large, so a
    /// backlog drains in few round trips.
    pub max_partition_fetch_bytes: u32,
    /// How long librdkafka waits before fetching a partition again once its prefetch queue was
    /// full (`fetch.queue.backoff.ms`, default 1,000). The collector's queue fills whenever the
    /// writer is a batch behind; with the default, fetching then stopped for up to a second while
    /// the consume loop ran dry (the WARN+ drain bench: 1.6 s of 5 s waiting in `poll`, 117,000
    /// events/s; 188,000 with 10 ms). Checked only while the queue is full: costs nothing idle.
    pub fetch_queue_backoff_ms: u32,
    /// First retry delay after a failed write; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Deadline to commit the last batch on shutdown.
    pub drain_timeout_ms: u64,
    /// On assignment, fetch from this many records before the stored offset and skip up to it.
    /// 0 (default) for a broker that answers a fetch starting inside a producer's record batch
    /// with that batch, as Apache Kafka and nisshi do (conformance case `fetch_inside_a_batch`;
    /// the fetch still starts one record back: the replaced-log check re-reads the record before
    /// the stored offset). Tansu 0.6's memory engine answers such a fetch with nothing, so
    /// resuming mid-batch skipped the rest of that batch: on such a broker set it to at least the
    /// producers' `batch.num.messages` (librdkafka default 10,000; it was the default until
    /// logpipe moved to nisshi).
    pub resume_lookback_records: i64,
    /// A record whose offset skips ahead of the next expected one makes the collector fetch the
    /// missing offsets again, up to this many times (2 s apart) before it accepts the gap. Tansu
    /// 0.6 can serve a later record batch before an earlier one; Kafka leaves gaps only for
    /// transaction markers and compaction. 0 accepts gaps at once.
    pub gap_repair_retries: u32,
    /// What to do when a partition's stored offset does not fit the broker's log: past its end
    /// (the broker lost its data, e.g. an in-memory broker restarted, or the topic was recreated)
    /// or before its start (retention deleted records never stored). Either way it is logged at
    /// ERROR; `reset-to-start` (default) then stores from the log start and records the reset in
    /// `offset_resets`; `refuse` pauses the partition and keeps `/ready` failing until an
    /// operator sets `consumer_offsets.next_offset` and restarts the collector.
    pub offset_out_of_range: OffsetPolicy,
    /// A partition this collector does not own, with records past its stored offset and that
    /// offset unmoved for this long, is one nobody stores: `/ready` fails on every collector of the
    /// group (`partitions_unstored`), `collector_partitions_unstored` counts it, an ERROR says which.
    pub orphan_after_secs: u64,
    /// How the group shares partitions. `cooperative-sticky` (default) moves only what must move:
    /// a member joining or leaving does not stop the others' partitions. `range` is Kafka's eager
    /// protocol: every rebalance revokes all and assigns again, at the cost of a re-read of the
    /// buffered records (never stored, so nothing doubles). `range` was the default until logpipe
    /// moved to nisshi: Tansu 0.6's coordinator stranded a cooperative group when a member left
    /// (`tests/orphans.rs` failed 3 of 4 runs; 7 of 7 passed on nisshi), so keep `range` for a
    /// broker that fails the conformance case `cooperative_sticky`.
    pub assignment_strategy: AssignmentStrategy,
    /// Batches that may wait for the writer while it commits the one before. The consume loop
    /// reads and parses the next batch meanwhile either way. 0 (default): a batch that is not
    /// full is handed over only to an idle writer, so the batch in hand grows while the writer
    /// commits (group commit): an event waits for at most the commit in progress and its own. A
    /// full batch goes to the planner at once, to be planned while the writer commits (see
    /// `consumer/ahead.rs`). Each queued batch adds a commit to that wait (the alert-latency
    /// bench's p99 went from 45 to 163 ms with 1).
    pub write_queue_batches: usize,
}

/// See [`ConsumerSettings::assignment_strategy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentStrategy {
    Range,
    RoundRobin,
    #[default]
    CooperativeSticky,
}

impl AssignmentStrategy {
    /// librdkafka's `partition.assignment.strategy` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
        }
    }
}

/// See [`ConsumerSettings::offset_out_of_range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetPolicy {
    #[default]
    ResetToStart,
    Refuse,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Holds credentials: never logged as is (see `summary`).
    pub url: String,
    /// Postgres schema for every table; tests use one each.
    pub schema: String,
    /// The writer's connections (batches, offsets, alerts).
    pub max_connections: u32,
    /// The query API's own connections, apart from the writer's: reads can wait, never the writer.
    pub query_max_connections: u32,
    /// A query that runs longer is cancelled by PostgreSQL and answered 504.
    pub query_statement_timeout_ms: u64,
    /// The longest `from`..`to` a query that scans its range may ask for (events with a filter,
    /// stats); longer is a 400 naming this setting. Event pages with no filter read newest first
    /// and stop at `limit`, so they have no cap.
    pub query_max_range_hours: u32,
    /// Largest events page, in bytes of JSON: a page that would be larger ends early, with a
    /// `next_cursor` to the rest (at least one event per page, whatever its size).
    pub query_max_response_bytes: usize,
    /// A writer transaction left idle this long (its collector frozen, partitioned away or hung)
    /// is ended by PostgreSQL, which frees the offset and window rows it locked: without it, one
    /// stuck collector stalls every other one of the group until its TCP connection dies.
    pub idle_in_transaction_timeout_ms: u64,
    /// A writer statement that waits this long for a row lock fails (SQLSTATE 55P03) and its batch
    /// is retried. A collector frozen in the middle of a COPY keeps its locks until it resumes:
    /// that session is not idle, and PostgreSQL's timeouts do not end a COPY waiting for its
    /// client's data. With this the others say so (`last_write: failing`, not ready) instead of
    /// waiting without a word.
    pub lock_timeout_ms: u64,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("query_max_connections", &self.query_max_connections)
            .field(
                "query_statement_timeout_ms",
                &self.query_statement_timeout_ms,
            )
            .field("query_max_range_hours", &self.query_max_range_hours)
            .field("query_max_response_bytes", &self.query_max_response_bytes)
            .field(
                "idle_in_transaction_timeout_ms",
                &self.idle_in_transaction_timeout_ms,
            )
            .field("lock_timeout_ms", &self.lock_timeout_ms)
            .finish()
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            tracing: Default::default(),
            host: "127.0.0.1".into(),
            port: 8082,
            internal_token_file: None,
            kafka: KafkaSettings::default(),
            consumer: ConsumerSettings::default(),
            database: DatabaseSettings::default(),
            filter: FilterRules::default(),
            filter_file: None,
            windows: WindowSettings::default(),
            alerts: AlertSettings::default(),
            storage: StorageSettings::default(),
            stream: StreamSettings::default(),
        }
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            group_id: "logpipe-collector".into(),
            group_instance_id: None,
            batch_max_events: 5_000,
            batch_max_ms: 200,
            fetch_wait_max_ms: 20,
            max_partition_fetch_bytes: 10 * 1024 * 1024,
            fetch_queue_backoff_ms: 10,
            retry_initial_ms: 100,
            retry_max_ms: 5_000,
            drain_timeout_ms: 10_000,
            resume_lookback_records: 0,
            gap_repair_retries: 5,
            offset_out_of_range: OffsetPolicy::ResetToStart,
            orphan_after_secs: 60,
            assignment_strategy: AssignmentStrategy::CooperativeSticky,
            write_queue_batches: 0,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/logpipe".into(),
            schema: "public".into(),
            max_connections: 4,
            query_max_connections: 2,
            query_statement_timeout_ms: 5_000,
            query_max_range_hours: 24 * 7,
            query_max_response_bytes: 4 * 1024 * 1024,
            idle_in_transaction_timeout_ms: 10_000,
            lock_timeout_ms: 5_000,
        }
    }
}

impl CollectorConfig {
    pub fn summary(&self) -> String {
        format!(
            "listen={}:{} brokers={} topic={} kafka_options={} group={} db={} schema={} batch={}/{}ms",
            self.host,
            self.port,
            redact_url(&self.kafka.brokers),
            self.kafka.raw_topic,
            self.kafka.librdkafka_options,
            self.consumer.group_id,
            redact_url(&self.database.url),
            self.database.schema,
            self.consumer.batch_max_events,
            self.consumer.batch_max_ms
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        let schema_ok = !self.database.schema.is_empty()
            && self
                .database
                .schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !schema_ok {
            return Err(ConfigError::Invalid {
                field: "database.schema",
                reason: "must be letters, digits and underscores".into(),
            });
        }
        self.windows
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                field: "windows",
                reason,
            })?;
        if !self
            .windows
            .tumbling_secs
            .contains(&self.alerts.error_rate_window_secs)
        {
            return Err(ConfigError::Invalid {
                field: "alerts.error_rate_window_secs",
                reason: "must be one of windows.tumbling_secs".into(),
            });
        }
        if self.alerts.brute_force_window_secs == 0 || self.alerts.episode_gap_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "alerts",
                reason: "brute_force_window_secs and episode_gap_secs must be at least 1".into(),
            });
        }
        self.storage
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                field: "storage",
                reason,
            })?;
        if self.database.query_max_range_hours == 0 {
            return Err(ConfigError::Invalid {
                field: "database.query_max_range_hours",
                reason: "must be at least 1".into(),
            });
        }
        if self.consumer.batch_max_events == 0 {
            return Err(ConfigError::Invalid {
                field: "consumer.batch_max_events",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, clap::Parser)]
#[command(name = "logpipe-collector", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub common: logpipe_common::config::CommonCli,
    /// Apply the database migrations and exit.
    #[arg(long)]
    pub migrate_only: bool,
    /// Optional TOML file with any of the settings below.
    #[arg(long, env = "LOGPIPE_COLLECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "LOGPIPE_COLLECTOR_HOST")]
    pub host: Option<String>,
    #[arg(long, env = "LOGPIPE_COLLECTOR_PORT")]
    pub port: Option<u16>,
    #[arg(long, env = "LOGPIPE_COLLECTOR_GROUP_ID")]
    pub group_id: Option<String>,
    /// Static group membership id, unique per instance (see `consumer.group_instance_id`).
    #[arg(long, env = "LOGPIPE_COLLECTOR_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    #[arg(long, env = "LOGPIPE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "LOGPIPE_DATABASE_SCHEMA")]
    pub database_schema: Option<String>,
    #[arg(long, env = "LOGPIPE_COLLECTOR_BATCH_MAX_EVENTS")]
    pub batch_max_events: Option<usize>,
    #[arg(long, env = "LOGPIPE_COLLECTOR_BATCH_MAX_MS")]
    pub batch_max_ms: Option<u64>,
    /// A stored offset outside the broker's log: `reset-to-start` or `refuse`.
    #[arg(long, env = "LOGPIPE_COLLECTOR_OFFSET_OUT_OF_RANGE", value_enum)]
    pub offset_out_of_range: Option<OffsetPolicy>,
    /// TOML file with the filter rules, re-read on SIGHUP.
    #[arg(long, env = "LOGPIPE_COLLECTOR_FILTER_FILE")]
    pub filter_file: Option<PathBuf>,
    /// Store raw only events at or above this level (windows and alerts still see every event).
    #[arg(long, env = "LOGPIPE_COLLECTOR_MIN_LEVEL")]
    pub min_level: Option<logpipe_common::Level>,
    /// Days of raw events kept (whole partitions are dropped past it).
    #[arg(long, env = "LOGPIPE_COLLECTOR_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
}

impl Cli {
    pub fn into_config(self) -> Result<CollectorConfig, ConfigError> {
        let mut c: CollectorConfig = load_toml(self.config.as_deref())?;
        self.common
            .overlay(&mut c.tracing, &mut c.kafka, &mut c.internal_token_file);
        logpipe_common::overlay!(
            self.host => c.host,
            self.port => c.port,
            self.group_id => c.consumer.group_id,
            self.group_instance_id.map(Some) => c.consumer.group_instance_id,
            self.database_url => c.database.url,
            self.database_schema => c.database.schema,
            self.batch_max_events => c.consumer.batch_max_events,
            self.batch_max_ms => c.consumer.batch_max_ms,
            self.min_level => c.filter.min_level,
            self.offset_out_of_range => c.consumer.offset_out_of_range,
            self.retention_days => c.storage.retention_days,
        );
        if self.filter_file.is_some() {
            c.filter_file = self.filter_file;
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    pub poll_ms: u64,
    /// The `rate` a client gets when it asks for none, and the most it may ask for.
    pub default_events_per_sec: u32,
    pub max_events_per_sec: u32,
    /// A resume point further behind than this many records is moved up (and told as dropped).
    pub max_scan_records: i64,
    /// A client that has read nothing this long while messages wait for it is cut off.
    pub slow_client_secs: u64,
    /// Batches (one per poll) waiting for a client at most.
    pub buffer_batches: usize,
    /// Bytes of events one poll sends at most (past the first event): what waits for a client is
    /// at most `buffer_batches` × this. Events past it are told as dropped.
    pub max_batch_bytes: usize,
    /// Streams open at once; more get 503.
    pub max_streams: usize,
    /// Streams one client (as the gateway names it: a key or an address) may hold; more get 429.
    pub max_streams_per_client: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            poll_ms: 500,
            default_events_per_sec: 100,
            max_events_per_sec: 1_000,
            max_scan_records: 200_000,
            slow_client_secs: 10,
            buffer_batches: 8,
            max_batch_bytes: 512 * 1024,
            max_streams: 64,
            max_streams_per_client: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Width of a time partition (24: one partition per UTC day). Partitions are aligned to
    /// multiples of it from the Unix epoch.
    pub partition_hours: u32,
    /// Partitions made ahead of the current one, so a clock skew or the turn of a day never
    /// sends rows to the default partition.
    pub premake_partitions: u32,
    /// Raw events older than this are dropped, a whole partition at a time.
    pub retention_days: u32,
    /// The same for window results (`window_stats`): the stats API reads them.
    pub window_retention_days: u32,
    /// The same for the brute-force counters (`failed_logins`).
    pub failed_login_retention_days: u32,
    /// Alert episodes whose last detection is older than this are deleted (rows, not partitions:
    /// see ARCHITECTURE.md).
    pub alert_retention_days: u32,
    pub maintenance_interval_secs: u64,
    /// A partition's trigram index (for the events query's `q`) is built once the partition is
    /// this long past its end and receives no more rows; the partition being written has none,
    /// since keeping one up to date cuts the ingest rate to a third (BENCHMARKS.md).
    pub text_index_delay_secs: u64,
    /// Build those indexes at all (they need the `pg_trgm` extension).
    pub text_index: bool,
    /// How long partition DDL may wait for its lock before it gives up until the next pass: the
    /// writer's next batch queues behind a waiting `DROP`, so this bounds its stall.
    pub ddl_lock_timeout_ms: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            partition_hours: 24,
            premake_partitions: 2,
            retention_days: 7,
            window_retention_days: 30,
            failed_login_retention_days: 7,
            alert_retention_days: 90,
            maintenance_interval_secs: 300,
            text_index_delay_secs: 600,
            text_index: true,
            ddl_lock_timeout_ms: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn database_password_never_appears_in_summary_or_debug() {
        let cli = Cli::try_parse_from([
            "c",
            "--database-url",
            "postgres://app:s3cret@db:5432/logpipe",
        ])
        .unwrap();
        let c = cli.into_config().unwrap();
        assert!(!c.summary().contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn schema_with_sql_characters_is_refused() {
        let cli = Cli::try_parse_from(["c", "--database-schema", "x; drop table y"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(err.contains("database.schema"), "{err}");
    }

    #[test]
    fn librdkafka_options_come_from_the_file_then_the_flags_and_secrets_stay_hidden() {
        let dir = std::env::temp_dir().join(format!("logpipe-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("collector.toml");
        std::fs::write(
            &file,
            "[kafka.librdkafka_options]\n\"socket.timeout.ms\" = \"30000\"\n\
             \"sasl.password\" = \"file-secret\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "c",
            "--config",
            file.to_str().unwrap(),
            "--kafka-option",
            "socket.timeout.ms=20000",
            "--kafka-option",
            "sasl.username=app",
        ])
        .unwrap();
        let c = cli.into_config().unwrap();
        let client = c.kafka.client_config("x");
        assert_eq!(
            client.get("socket.timeout.ms"),
            Some("20000"),
            "the flag wins"
        );
        assert_eq!(client.get("sasl.password"), Some("file-secret"));
        for shown in [c.summary(), format!("{c:?}")] {
            assert!(!shown.contains("file-secret"), "{shown}");
            assert!(shown.contains("socket.timeout.ms=20000"), "{shown}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_librdkafka_option_logpipe_decides_is_refused_at_start_with_its_reason() {
        let cli = Cli::try_parse_from(["c", "--kafka-option", "enable.auto.commit=true"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(
            err.contains("kafka.librdkafka_options")
                && err.contains("enable.auto.commit")
                && err.contains("offsets live in PostgreSQL"),
            "{err}"
        );
        let cli = Cli::try_parse_from(["c", "--kafka-option", "fetch.wait.max.mss=5"]).unwrap();
        let err = cli.into_config().unwrap_err().to_string();
        assert!(err.contains("fetch.wait.max.mss"), "{err}");
        assert!(Cli::try_parse_from(["c", "--kafka-option", "no-value"]).is_err());
    }
}
