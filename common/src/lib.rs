//! Shared code for the logpipe services, and nothing else.
//!
//! - [`event`]: the log event on the wire (the design brief's JSON schema), its level and validation.
//! - [`formats`]: Apache combined and syslog (RFC 5424 / 3164) lines parsed into the event.
//! - [`kafka`]: broker settings, rdkafka client configs and idempotent topic creation (Tansu has no
//!   auto-create, so every service creates what it uses at start).
//! - [`telemetry`]: tracing subscriber, Zipkin export, trace-context helpers and the HTTP server-span
//!   middleware, and the process-wide Prometheus recorder.
//! - [`shutdown`]: SIGINT/SIGTERM turned into a `CancellationToken`.
//! - [`config`]: reading the optional TOML layer of each service's configuration.

pub mod config;
pub mod event;
pub mod formats;
pub mod kafka;
pub mod shutdown;
pub mod telemetry;

pub use event::{Level, LogEvent};
