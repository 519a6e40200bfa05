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
//! - [`routes`]: the route table (each route with its access; the OpenAPI document and the guard's
//!   table come from the same list) and the router with its layers.
//! - [`middleware`]: the server span and metrics of every request, whose `traceparent` is followed,
//!   and the guard: declared access, deadline, authentication, refused bodies, rate limit.
//! - [`browser`]: `Host` and `Origin` checks and the console's security headers.
//! - [`state`]: what every handler shares, and what the middleware passes to handlers.
//! - [`ops`]: `/health`, `/ready`, `/metrics`, the OpenAPI document, the JSON 404.
//! - [`ingest`]: `POST /api/v1/logs`: body formats, per-event validation, the idempotent producer.
//! - [`protocols`]: the shippers' protocols on the same intake: OTLP/HTTP logs (`POST /v1/logs`) and
//!   the Elasticsearch bulk API (`POST /_bulk`, with the probes shippers send first), Loki push
//!   (`POST /loki/api/v1/push`).
//! - [`syslog`]: syslog over TCP (RFC 6587 framing) and UDP, off by default, into the same intake:
//!   limits by peer address, backpressure on TCP, counted drops on UDP.
//! - [`query`]: stats, alerts and events, forwarded to the collector.
//! - [`ratelimit`]: per-client limits per route class: exact sliding window in Redis, local fallback.
//! - [`startup`]: `Application::build(config)` → `run_until_stopped(token)`.
//! - [`telemetry`]: the gateway's named metrics.

// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit
// (clippy.toml allows it in tests; benches and integration tests are not linted for it).
#![warn(clippy::unwrap_used)]
// A function a reader cannot hold in view at once is split (clippy.toml: 100 lines); the
// lint gate (`-D warnings`) holds every service to it.
#![warn(clippy::too_many_lines)]

pub mod auth;
pub mod browser;
pub mod config;
pub mod console;
pub mod control;
pub mod error;
pub mod ingest;
pub mod middleware;
pub mod ops;
pub mod protocols;
pub mod query;
pub mod ratelimit;
pub mod routes;
pub mod startup;
pub mod state;
pub mod syslog;
pub mod telemetry;

pub use startup::Application;
