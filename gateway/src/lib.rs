//! The logpipe gateway: the one public HTTP entry (port 8090).
//!
//! - [`config`]: settings (defaults → TOML → env → flags): listen address, generator instances,
//!   collector address, timeouts and body limit.
//! - [`control`]: `POST /api/v1/generator/start|stop` fanned out to every generator instance and
//!   `GET /api/v1/generator/status` aggregated over them.
//! - [`error`]: the one API error type, rendered as `{"error": "...", "detail": "..."}`.
//! - [`http`]: the router, middleware (body limit, timeout, request id, metrics), `/health`, `/ready`,
//!   `/metrics`.
//! - [`ratelimit`]: per-client limits per route class: exact sliding window in Redis, local fallback.
//! - [`startup`]: `Application::build(config)` → `run_until_stopped(token)`.
//! - [`telemetry`]: the gateway's named metrics.

pub mod config;
pub mod control;
pub mod error;
pub mod http;
pub mod ratelimit;
pub mod startup;
pub mod telemetry;

pub use startup::Application;
