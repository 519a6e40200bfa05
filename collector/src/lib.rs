//! The logpipe collector: consumes `logs.raw` as a consumer group and stores events in Postgres
//! exactly once.
//!
//! - [`config`]: settings (defaults → TOML → env → flags).
//! - [`db`]: the pool, migrations, the batch write (rows and offsets in one transaction, fenced on the
//!   expected offset) and the offset claim used on assignment.
//! - [`consumer`]: the consume loop on its own thread: rebalance handling, parsing, batching by size
//!   and time, DLQ for poison records.
//! - [`http`]: `/health`, `/ready`, `/metrics`.
//! - [`startup`]: `Application::build(config)` → `run_until_stopped(token)`.
//! - [`telemetry`]: the collector's named metrics.

pub mod config;
pub mod consumer;
pub mod db;
pub mod http;
pub mod startup;
pub mod telemetry;

pub use startup::Application;
