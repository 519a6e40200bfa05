//! The logpipe gateway: the one public HTTP entry (port 8090).
//!
//! - [`auth`]: API keys (stored hashed, compared in constant time) and their scopes.
//! - [`config`]: settings (defaults → TOML → env → flags): listen address, generator instances,
//!   collector address, Kafka, timeouts, limits, keys.
//! - [`console`]: the web console at `/` (files embedded in the binary), the stage counters it
//!   charts (`/api/v1/pipeline`) and the live tail's stream, passed through from the collector.
//! - [`control`]: `POST /api/v1/generator/start|stop` fanned out to every generator instance and
//!   `GET /api/v1/generator/status` aggregated over them.
//! - [`error`]: the one API error type, rendered as `{"error": "...", "detail": "..."}`.
//! - [`http`]: the router (its OpenAPI document is generated from the same route list), middleware
//!   (request id, metrics, load shedding, deadline, auth and rate limit), `/health`, `/ready`, `/metrics`.
//! - [`ingest`]: `POST /api/v1/logs`: body formats, per-event validation, the idempotent producer.
//! - [`query`]: stats, alerts and events, forwarded to the collector.
//! - [`ratelimit`]: per-client limits per route class: exact sliding window in Redis, local fallback.
//! - [`startup`]: `Application::build(config)` → `run_until_stopped(token)`.
//! - [`telemetry`]: the gateway's named metrics.

// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit
// (clippy.toml allows it in tests; benches and integration tests are not linted for it).
#![warn(clippy::unwrap_used)]

pub mod auth;
pub mod browser;
pub mod config;
pub mod console;
pub mod control;
pub mod error;
pub mod http;
pub mod ingest;
pub mod query;
pub mod ratelimit;
pub mod startup;
pub mod telemetry;

pub use startup::Application;
