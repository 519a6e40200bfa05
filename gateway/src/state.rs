//! What every handler shares ([`AppState`]) and what the middleware hands to handlers through
//! request extensions ([`ClientIdentity`], [`Charged`]).

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::ingest::produce::IngestProducer;
use crate::ratelimit::{Decision, RateLimiterService};

/// What every handler shares. Extractors and middleware clone the state on every request, so it is
/// one `Arc`: one reference count to bump, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: GatewayConfig,
    pub limiter: RateLimiterService,
    pub auth: Authenticator,
    pub producer: Arc<IngestProducer>,
    pub client: reqwest::Client,
    pub metrics: PrometheusHandle,
    pub status_flight: StatusFlight,
    /// The console's stage counters, sampled from the first request on.
    pub pipeline: Pipeline,
    /// Open event streams, capped in total and per key (`console.max_streams[_per_client]`).
    pub streams: Arc<logpipe_common::permits::StreamPermits>,
    /// `Host` and `Origin` checks (`browser.rs`).
    pub browser: Arc<crate::browser::BrowserPolicy>,
    /// A `/ready` fan-out in progress or just finished, shared by every caller (see `ready`).
    pub ready_flight: ReadyFlight,
    /// Fires when the gateway stops: open event streams end, so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Who the request is for limits and caps: `key:<name>` or `ip:<address>`.
#[derive(Debug, Clone)]
pub struct ClientIdentity(pub String);

/// The first unit an ingest request spends, before its body is read; the handler charges the
/// rest of its events once they are parsed.
#[derive(Debug, Clone, Copy)]
pub struct Charged(pub Decision);

/// See `ops::ready`.
pub type ReadyFlight = std::sync::Mutex<
    Option<(
        Instant,
        futures::future::Shared<
            futures::future::BoxFuture<'static, (StatusCode, axum::body::Bytes)>,
        >,
    )>,
>;

/// Status requests that arrive while a status fan-out is in flight wait for that one instead of
/// starting their own (request coalescing): the answer is at most one upstream round trip old,
/// and a burst of pollers costs the generators one call per round trip, not one per poller.
pub type StatusFlight = std::sync::Mutex<
    Option<futures::future::Shared<futures::future::BoxFuture<'static, axum::body::Bytes>>>,
>;

/// One sample of the pipeline's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Unix milliseconds.
    pub t: i64,
    /// Generators' totals (None when none answered).
    pub generated: Option<u64>,
    pub acked: Option<u64>,
    /// The collector's totals (None when it did not answer).
    pub consumed: Option<u64>,
    pub stored: Option<u64>,
    pub dlq: Option<u64>,
    /// Consumer lag per Kafka partition.
    pub lag: std::collections::BTreeMap<String, i64>,
}

/// The last 15 minutes of samples, taken by a task that starts with the first request for them.
#[derive(Default)]
pub struct Pipeline {
    pub(crate) samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
    pub(crate) started: std::sync::OnceLock<()>,
}
