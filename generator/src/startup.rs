//! `Application::build(config)` → `run_until_stopped(token)`: what `main` runs and what tests start.

use std::net::SocketAddr;
use std::sync::Arc;

use logpipe_common::kafka::ensure_topics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::GeneratorConfig;
use crate::engine::{Engine, EngineError, RunParams, StartRequest};
use crate::http::{router, AppState};
use logpipe_common::internal::InternalToken;

pub use logpipe_common::startup::StartupError;

impl From<EngineError> for StartupError {
    fn from(e: EngineError) -> Self {
        StartupError::service("the generator engine", e)
    }
}

pub struct Application {
    listener: TcpListener,
    engine: Arc<Engine>,
    state: AppState,
}

impl Application {
    pub async fn build(config: GeneratorConfig) -> Result<Application, StartupError> {
        // The recorder first: series registered before it exists are lost.
        let metrics = logpipe_common::telemetry::metrics_handle();
        crate::telemetry::describe();
        let internal = InternalToken::load(config.internal_token_file.as_deref())?;
        logpipe_common::internal::check_bind(&internal, &config.host)?;
        if !internal.is_set() {
            tracing::warn!(host = %config.host, "no internal token: every local user can start and stop this generator");
        }
        ensure_topics(&config.kafka, &config.kafka.topics()).await?;
        let listener = logpipe_common::startup::bind(&config.host, config.port).await?;
        let autostart = config.autostart;
        let engine = Engine::new(config)?;
        if autostart {
            let params =
                RunParams::from_request(&StartRequest::default(), &engine.config().defaults)
                    .map_err(|e| {
                        StartupError::service("invalid default run parameters", e.to_string())
                    })?;
            engine.start(params)?;
        }
        let state = AppState {
            engine: engine.clone(),
            metrics,
            internal,
        };
        Ok(Application {
            listener,
            engine,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// Serve until `shutdown` fires, then stop the run and flush the producer.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        tracing::info!(addr = %self.local_addr(), "generator listening");
        let token = shutdown.clone();
        let served = axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        let status = self.engine.stop().await;
        tracing::info!(
            generated = status.events_generated,
            acked = status.events_acked,
            failed = status.events_failed,
            "generator stopped"
        );
        served.map_err(StartupError::Serve)
    }
}
