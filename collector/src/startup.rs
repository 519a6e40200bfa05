//! `Application::build(config)` → `run_until_stopped(token)`: what `main` runs and what tests start.

use std::net::SocketAddr;
use std::sync::Arc;

use logpipe_common::kafka::{ensure_topics, TopicError};
use rdkafka::error::KafkaError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorConfig;
use crate::consumer::{ConsumerHealth, ConsumerLoop};
use crate::db::{Db, DbError};
use crate::http::{router, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error("cannot create the Kafka consumer: {0}")]
    Consumer(#[from] KafkaError),
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

pub struct Application {
    listener: TcpListener,
    config: CollectorConfig,
    db: Db,
    health: Arc<ConsumerHealth>,
}

impl Application {
    pub async fn build(config: CollectorConfig) -> Result<Application, StartupError> {
        crate::telemetry::describe();
        let db = Db::connect(&config.database).await?;
        ensure_topics(&config.kafka, &config.kafka.topics()).await?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        Ok(Application {
            listener,
            config,
            db,
            health: Arc::new(ConsumerHealth::default()),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn health(&self) -> Arc<ConsumerHealth> {
        self.health.clone()
    }

    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// Consume and serve until `shutdown` fires; the consumer then commits its last batch.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        tracing::info!(addr = %self.local_addr(), "collector listening");
        let consumer = ConsumerLoop::new(
            self.config.clone(),
            self.db.clone(),
            self.health.clone(),
            shutdown.clone(),
        )?;
        // The loop blocks (poll, and rebalance callbacks that wait for Postgres): give it a thread.
        let consumer_task = tokio::task::spawn_blocking(move || consumer.run());
        let state = AppState {
            db: self.db.clone(),
            health: self.health.clone(),
            metrics: logpipe_common::telemetry::metrics_handle(),
        };
        let token = shutdown.clone();
        let served = axum::serve(self.listener, router(state))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        // If the server failed on its own, stop the consumer too.
        shutdown.cancel();
        if let Err(e) = consumer_task.await {
            tracing::error!(error = %e, "consumer thread panicked");
        }
        served.map_err(StartupError::Serve)
    }
}
