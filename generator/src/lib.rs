//! The logpipe generator: realistic log events at a target rate, produced to Kafka.
//!
//! - [`config`]: settings (defaults → TOML → env → flags).
//! - [`params`]: a start request checked against the allowed ranges, with the defaults filled in.
//! - [`events`]: the event factory (services, components, templates, weighted levels, attributes).
//! - [`breaker`]: the circuit breaker around produce (failsafe plus a timeout and a half-open cap).
//! - [`budget`]: the global rate budget shared by all instances through Redis, with a local fallback.
//! - [`engine`]: the run loop (batching, the shared budget) and the idempotent producer with its
//!   delivery-report counters.
//! - [`pacing`]: a worker's local rate limit (governor), and the burst profile's faster one.
//! - [`http`]: `POST /api/v1/generator/start|stop`, `GET /api/v1/generator/status`, `/health`,
//!   `/ready`, `/metrics`, and the JSON error type.
//! - [`startup`]: `Application::build(config)` → `run_until_stopped(token)`, used by `main` and tests.
//! - [`telemetry`]: the generator's named metrics.

// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit
// (clippy.toml allows it in tests; benches and integration tests are not linted for it).
#![warn(clippy::unwrap_used)]
// A function a reader cannot hold in view at once is split (clippy.toml: 100 lines); the
// lint gate (`-D warnings`) holds every service to it.
#![warn(clippy::too_many_lines)]

pub mod breaker;
pub mod budget;
pub mod config;
pub mod engine;
pub mod events;
pub mod http;
pub mod pacing;
pub mod params;
pub mod startup;
pub mod telemetry;

pub use startup::Application;
