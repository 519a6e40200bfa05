//! What the collector's HTTP handlers share: the query pool, the consume loop's health, the
//! filter, the query and stream settings. Its own module, so the handlers (`query.rs`,
//! `stream.rs`) and the router (`http.rs`) depend on it and not on each other.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::consumer::ConsumerHealth;
use crate::db::Db;
use crate::filter::FilterHandle;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub health: Arc<ConsumerHealth>,
    pub metrics: PrometheusHandle,
    pub filter: FilterHandle,
    /// Tumbling window widths, narrowest first: the stats endpoints sum the rows of the widest
    /// one the range holds many of (see `query::stats_width`).
    pub stats_windows_secs: Vec<i32>,
    /// The longest range a scanning query may ask for (`database.query_max_range_hours`).
    pub max_range_hours: u32,
    /// Largest events page in bytes (`database.query_max_response_bytes`).
    pub max_page_bytes: usize,
    /// Open event streams, in total and per client (`stream.max_streams[_per_client]`).
    pub streams: Arc<logpipe_common::permits::StreamPermits>,
    /// The event stream's caps.
    pub stream: crate::config::StreamSettings,
    /// Whose stored offsets the event stream follows.
    pub group_id: String,
    pub topic: String,
    /// Fires at shutdown: open event streams end, so the server can drain.
    pub shutdown: tokio_util::sync::CancellationToken,
}
