//! `TestStack`: what most integration tests start and stop alike. A collector on the test's own
//! topics, schema and consumer group, a pool on that schema and a producer to its raw topic; with
//! `with_gateway`, a gateway in front of it on the same topics. `stop` stops what it started and
//! drops the schema (a failing test keeps its schema for inspection: it panics before `stop`).

use std::sync::Arc;
use std::time::Duration;

use logpipe_collector::config::CollectorConfig;
use logpipe_collector::consumer::ConsumerHealth;
use logpipe_common::kafka::KafkaSettings;
use logpipe_gateway::config::GatewayConfig;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::{
    collector_config, count_events, drop_schema, gateway_config, producer, schema_pool,
    start_collector, start_gateway, wait_for, Running,
};

/// How long a test waits for what the pipeline will do (debug builds on 2 cores are slow).
pub const WAIT: Duration = Duration::from_secs(90);

pub struct TestStack {
    /// The test's unique name: its topics' prefix, its schema and its group.
    pub name: String,
    pub kafka: KafkaSettings,
    pub collector: Running,
    pub health: Arc<ConsumerHealth>,
    /// A gateway in front of the collector, when the test asked for one.
    pub gateway: Option<Running>,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub client: reqwest::Client,
}

impl TestStack {
    /// A collector for `test` with `partitions` partitions and the tests' defaults.
    pub async fn collector(test: &str, partitions: i32) -> Self {
        Self::collector_with(test, partitions, |_| {}).await
    }

    /// A collector whose configuration `tune` changes first.
    pub async fn collector_with(
        test: &str,
        partitions: i32,
        tune: impl FnOnce(&mut CollectorConfig),
    ) -> Self {
        let name = crate::unique(test);
        let mut config = collector_config(&name, partitions);
        tune(&mut config);
        let kafka = config.kafka.clone();
        let (collector, health) = start_collector(config).await;
        let pool = schema_pool(&name).await;
        Self {
            producer: producer(&kafka),
            name,
            kafka,
            collector,
            health,
            gateway: None,
            pool,
            client: reqwest::Client::new(),
        }
    }

    /// The same stack with a gateway in front of the collector, its configuration changed by `tune`.
    pub async fn with_gateway(mut self, tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        let mut config = gateway_config(&self.name);
        config.kafka = self.kafka.clone();
        config.collector_url = self.collector.url("");
        tune(&mut config);
        self.gateway = Some(start_gateway(config).await);
        self
    }

    /// The gateway's URL for `path` (panics when the stack has no gateway: a test's mistake).
    pub fn gw(&self, path: &str) -> String {
        self.gateway
            .as_ref()
            .expect("this stack was started with_gateway")
            .url(path)
    }

    /// Produce events to the raw topic as JSON records keyed by event id (see `produce_events`).
    pub async fn produce(&self, events: &[logpipe_common::LogEvent]) {
        crate::produce_events(&self.producer, &self.kafka.raw_topic, events).await;
    }

    /// Wait until `log_events` holds exactly `n` rows.
    pub async fn wait_rows(&self, n: i64) {
        wait_rows(&self.pool, n).await;
    }

    /// Stop the gateway and the collector, then drop the schema.
    pub async fn stop(self) {
        if let Some(gateway) = self.gateway {
            gateway.stop().await;
        }
        self.collector.stop().await;
        drop_schema(&self.pool, &self.name).await;
    }
}

/// Wait until `log_events` in `pool`'s schema holds exactly `n` rows.
pub async fn wait_rows(pool: &PgPool, n: i64) {
    wait_for(&format!("{n} rows in log_events"), WAIT, || async {
        let have = count_events(pool).await;
        if have == n {
            Ok(())
        } else {
            Err(format!("{have} rows"))
        }
    })
    .await;
}
