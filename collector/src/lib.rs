//! The logpipe collector: consumes `logs.raw` as a consumer group and stores events in Postgres
//! exactly once.
//!
//! - [`config`]: settings (defaults → TOML → env → flags).
//! - [`db`]: the pool, migrations, the batch write (rows and offsets in one transaction, fenced on the
//!   expected offset) and the offset claim used on assignment.
//! - [`consumer`]: the consume loop on its own thread: rebalance handling, parsing, batching by size
//!   and time, event time per partition, pause/resume when Postgres fails, DLQ for poison records.
//! - [`copy`]: binary COPY encoding of raw event rows.
//! - [`filter`]: which events are stored raw; reloadable rules.
//! - [`windows`]: event-time window assignment and additive window statistics, every value bounded
//!   before it is added.
//! - [`cardinality`]: the caps on distinct services per window and subjects per brute-force window.
//! - [`detect`]: per-event alert detectors and the alert settings.
//! - [`alerts`]: alert episodes and error-rate judgement inside the batch transaction; the outbox
//!   that publishes alerts to Kafka.
//! - [`query`]: the query API (stats, alerts, events) and filter administration.
//! - [`http`]: the router, `/health`, `/ready`, `/metrics`.
//! - [`state`]: what the HTTP handlers share ([`state::AppState`]).
//! - [`storage`]: time partitions made ahead, retention by dropping partitions, text indexes of
//!   sealed partitions, storage metrics (a task of its own, on its own connection).
//! - [`stream`]: `GET /api/v1/events/stream`, Server-Sent Events of stored events (the console's live
//!   tail), resumable by Kafka position, capped and sampled per client.
//! - [`startup`]: `Application::build(config)` → `run_until_stopped(token)`.
//! - [`telemetry`]: the collector's named metrics.

// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit
// (clippy.toml allows it in tests; benches and integration tests are not linted for it).
#![warn(clippy::unwrap_used)]
// A function a reader cannot hold in view at once is split (clippy.toml: 100 lines); the
// lint gate (`-D warnings`) holds every service to it.
#![warn(clippy::too_many_lines)]

pub mod alerts;
pub mod batch;
pub mod cardinality;
pub mod config;
pub mod consumer;
pub mod copy;
pub mod db;
pub mod detect;
pub mod filter;
pub mod http;
pub mod query;
pub mod startup;
pub mod state;
pub mod storage;
pub mod stream;
pub mod telemetry;
pub mod windows;

pub use startup::Application;
