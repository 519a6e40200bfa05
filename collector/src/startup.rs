//! `Application::build(config)` → `run_until_stopped(token)`: what `main` runs and what tests start.

use std::net::SocketAddr;
use std::sync::Arc;

use logpipe_common::kafka::ensure_topics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorConfig;
use crate::consumer::{ConsumerHealth, ConsumerLoop};
use crate::db::{Db, DbError};
use crate::detect::{Detector, PatternError};
use crate::filter::{FilterError, FilterHandle};
use crate::http::router;
use crate::state::AppState;
use logpipe_common::internal::InternalToken;

pub use logpipe_common::startup::StartupError;

// What only the collector can fail at starting, named for the error it becomes.
macro_rules! service_errors {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl From<$t> for StartupError {
            fn from(e: $t) -> Self {
                StartupError::service($what, e)
            }
        }
    )*};
}
service_errors!(
    DbError => "the database",
    crate::storage::StorageError => "storage maintenance",
    FilterError => "filter rules",
    PatternError => "alert patterns",
);

pub struct Application {
    listener: TcpListener,
    internal: InternalToken,
    config: CollectorConfig,
    db: Db,
    health: Arc<ConsumerHealth>,
    filter: FilterHandle,
}

impl Application {
    pub async fn build(config: CollectorConfig) -> Result<Application, StartupError> {
        // The recorder first: series registered before it exists are lost.
        logpipe_common::telemetry::metrics_handle();
        crate::telemetry::describe(&crate::storage::PARTITIONED.map(|t| t.parent));
        let internal = InternalToken::load(config.internal_token_file.as_deref())?;
        logpipe_common::internal::check_bind(&internal, &config.host)?;
        if !internal.is_set() {
            tracing::warn!(host = %config.host, "no internal token: every local user can call this collector's API");
        }
        let filter = FilterHandle::new(config.filter.clone(), config.filter_file.clone())?;
        // Compile the detector patterns now so a bad pattern fails the start, not the first batch.
        Detector::new(&config.alerts)?;
        let db = Db::connect(&config.database).await?;
        // Partitions for every day a batch may write before the first batch: no row meets a
        // missing partition (or lands in the default one) because maintenance had not run yet.
        crate::storage::first_pass(&db, &config.storage).await?;
        ensure_topics(&config.kafka, &config.kafka.topics()).await?;
        let listener = logpipe_common::startup::bind(&config.host, config.port).await?;
        Ok(Application {
            listener,
            internal,
            config,
            db,
            health: Arc::new(ConsumerHealth::default()),
            filter,
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
            self.filter.clone(),
            Detector::new(&self.config.alerts)?,
            shutdown.clone(),
        )?;
        // The loop blocks (poll, and rebalance callbacks that wait for Postgres): give it a thread.
        let consumer_task = tokio::task::spawn_blocking(move || consumer.run());
        // If the loop ends before shutdown was asked for (it panicked), stop everything now: the
        // guard in the loop has already turned `/ready` off.
        let watch = shutdown.clone();
        let consumer_task = tokio::spawn(async move {
            let result = consumer_task.await;
            let died = !watch.is_cancelled();
            watch.cancel();
            match result {
                Err(e) => Err(e.to_string()),
                Ok(()) if died => Err("the loop returned before shutdown".into()),
                Ok(()) => Ok(()),
            }
        });
        let outbox_stop = CancellationToken::new();
        let outbox = tokio::spawn(crate::alerts::run_outbox(
            self.db.pool().clone(),
            logpipe_common::producer::AckProducer::new(
                self.config
                    .kafka
                    .client_config("logpipe-collector-alerts")
                    .set("enable.idempotence", "true")
                    .set("acks", "all"),
            )?,
            self.config.kafka.alerts_topic.clone(),
            outbox_stop.clone(),
        ));
        tokio::spawn(reload_on_sighup(self.filter.clone(), shutdown.clone()));
        tokio::spawn(crate::storage::run_maintenance(
            self.db.clone(),
            self.config.storage.clone(),
            shutdown.clone(),
        ));
        let state = AppState {
            db: self.db.clone(),
            health: self.health.clone(),
            metrics: logpipe_common::telemetry::metrics_handle(),
            filter: self.filter.clone(),
            stats_windows_secs: {
                let mut w: Vec<i32> = self
                    .config
                    .windows
                    .tumbling_secs
                    .iter()
                    .map(|w| *w as i32)
                    .collect();
                w.sort_unstable();
                w
            },
            max_range_hours: self.config.database.query_max_range_hours,
            max_page_bytes: self.config.database.query_max_response_bytes,
            streams: Arc::new(logpipe_common::permits::StreamPermits::new(
                self.config.stream.max_streams.max(1),
                self.config.stream.max_streams_per_client.max(1),
            )),
            stream: self.config.stream.clone(),
            group_id: self.config.consumer.group_id.clone(),
            topic: self.config.kafka.raw_topic.clone(),
            shutdown: shutdown.clone(),
        };
        let token = shutdown.clone();
        let served = axum::serve(self.listener, router(state, self.internal.clone()))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        // If the server failed on its own, stop the consumer too.
        shutdown.cancel();
        let consumer_result = consumer_task.await.unwrap_or_else(|e| Err(e.to_string()));
        // After the last batch committed: publish its alerts, then stop.
        outbox_stop.cancel();
        let _ = outbox.await;
        if let Err(e) = consumer_result {
            tracing::error!(error = %e, "consume loop died; exiting");
            // The consume loop died (a bug): the process exits non-zero so a supervisor restarts
            // it, rather than serving a collector that stores nothing.
            return Err(StartupError::service(
                "the consume loop stopped unexpectedly",
                e,
            ));
        }
        served.map_err(StartupError::Serve)
    }
}

/// SIGHUP re-reads the filter file (as nginx or Vector do with their configs).
async fn reload_on_sighup(filter: FilterHandle, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup.recv() => {
                    if let Err(e) = filter.reload() {
                        tracing::error!(error = %e, "SIGHUP: filter reload failed; old rules stay");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (filter, shutdown);
    }
}
