//! `Application::build(config)` → `run_until_stopped(token)`: what `main` runs and what tests start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::ingest::IngestProducer;
use crate::ratelimit::RateLimiterService;
use crate::routes::router;
use crate::state::{AppState, Shared};

pub use logpipe_common::startup::StartupError;

pub struct Application {
    listener: TcpListener,
    /// The same routes on OTLP/HTTP's port, when configured.
    otlp_listener: Option<TcpListener>,
    syslog: crate::syslog::Listeners,
    state: AppState,
}

impl Application {
    pub async fn build(config: GatewayConfig) -> Result<Application, StartupError> {
        // Whoever built the config (CLI or a test), an unsafe one does not start.
        config.validate()?;
        // The recorder first: series registered before it exists are lost.
        let metrics = logpipe_common::telemetry::metrics_handle();
        crate::telemetry::describe();
        let listener = logpipe_common::startup::bind(&config.host, config.port).await?;
        let otlp_listener = match config.otlp_port {
            Some(port) => Some(logpipe_common::startup::bind(&config.host, port).await?),
            None => None,
        };
        let syslog = crate::syslog::Listeners::bind(&config.syslog)
            .await
            .map_err(|source| StartupError::Bind {
                addr: format!(
                    "syslog {:?} {:?}",
                    config.syslog.tcp_addr, config.syslog.udp_addr
                ),
                source,
            })?;
        crate::telemetry::describe_syslog(&syslog.transports());
        let internal =
            logpipe_common::internal::InternalToken::load(config.internal_token_file.as_deref())?;
        let mut upstream_headers = reqwest::header::HeaderMap::new();
        if let Some(bearer) = internal.bearer() {
            let mut v = reqwest::header::HeaderValue::from_str(&bearer)
                .expect("a checked token is a valid header value");
            v.set_sensitive(true);
            upstream_headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let client = reqwest::Client::builder()
            .default_headers(upstream_headers)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StartupError::service("cannot build the HTTP client", e))?;
        let limiter = RateLimiterService::new(config.rate_limit.clone());
        limiter.connect().await;
        let auth = Authenticator::new(&config.auth)
            .map_err(|e| StartupError::service("invalid API key settings", e))?;
        if auth.is_open() {
            tracing::warn!(
                host = %config.host,
                "no API keys configured: every client that reaches this address may use every \
                 route, generator control included (`./setup.sh --with-keys` makes keys)"
            );
        }
        let producer = IngestProducer::new(&config.kafka, &config.ingest)?;
        // Ingest needs the raw topic. Create it in the background: a broker that is down now must
        // not hold up the start (ingest answers 503 until Kafka takes the events).
        let (kafka, topic) = (
            config.kafka.clone(),
            (config.kafka.raw_topic.clone(), config.kafka.raw_partitions),
        );
        tokio::spawn(async move {
            if let Err(e) = logpipe_common::kafka::ensure_topics(&kafka, &[topic]).await {
                tracing::warn!(error = %e, "could not create the raw topic at start");
            }
        });
        let streams = Arc::new(logpipe_common::permits::StreamPermits::new(
            config.console.max_streams.max(1),
            config.console.max_streams_per_client.max(1),
        ));
        let browser = Arc::new(crate::browser::BrowserPolicy::new(
            &config.browser,
            &config.host,
        ));
        let state = AppState::new(Shared {
            limiter,
            auth,
            producer: Arc::new(producer),
            config,
            client,
            metrics,
            status_flight: Default::default(),
            pipeline: Default::default(),
            streams,
            browser,
            ready_flight: Default::default(),
            shutdown: CancellationToken::new(),
        });
        Ok(Application {
            listener,
            otlp_listener,
            syslog,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The second port's address, when configured.
    pub fn otlp_addr(&self) -> Option<SocketAddr> {
        self.otlp_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The syslog listeners' addresses, when on (a test binds port 0 and asks).
    pub fn syslog_tcp_addr(&self) -> Option<SocketAddr> {
        self.syslog.tcp_addr()
    }

    pub fn syslog_udp_addr(&self) -> Option<SocketAddr> {
        self.syslog.udp_addr()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        tracing::info!(addr = %self.local_addr(), "gateway listening");
        let producer = self.state.producer.clone();
        // Open event streams end when the gateway stops; otherwise the drain would wait for them.
        let streams_stop = self.state.shutdown.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            streams_stop.cancel();
        });
        // The syslog listeners stop reading at shutdown and deliver what they read before the
        // producer is flushed below.
        let syslog = tokio::spawn(self.syslog.run(self.state.clone(), shutdown.clone()));
        let routes = router(self.state);
        let second = self.otlp_listener.map(|l| {
            tracing::info!(addr = ?l.local_addr().ok(), "gateway also listening (OTLP/HTTP port)");
            let app = routes
                .clone()
                .into_make_service_with_connect_info::<SocketAddr>();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        });
        let app = routes.into_make_service_with_connect_info::<SocketAddr>();
        let mut served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(StartupError::Serve);
        if let Some(second) = second {
            let r = second.await.unwrap_or(Ok(()));
            if served.is_ok() {
                served = r.map_err(StartupError::Serve);
            }
        }
        let _ = syslog.await;
        // In-flight ingest requests have had their answers; flush whatever is still queued.
        producer.flush(Duration::from_secs(5)).await;
        served
    }
}
