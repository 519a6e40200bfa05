//! Shared code for the logpipe services, and nothing else.
//!
//! - [`event`]: the log event on the wire (its JSON schema, see ARCHITECTURE.md), its level and validation.
//! - [`raw_event`]: the event as the collector holds it, the record's text with its fields located;
//!   [`attributes`] checks and reads the attributes' JSON text without building a tree.
//! - [`timestamp`]: event timestamps read fast in the common form, by chrono in every other.
//! - [`formats`]: Apache combined and syslog (RFC 5424 / 3164) lines parsed into the event.
//! - [`kafka`]: broker settings, rdkafka client configs and idempotent topic creation (Tansu has no
//!   auto-create, so every service creates what it uses at start).
//! - [`producer`]: producers polled without rdkafka's spinning thread, one of them answering each
//!   record with a future.
//! - [`telemetry`]: tracing subscriber, Zipkin export, trace-context helpers and the HTTP server-span
//!   middleware, and the process-wide Prometheus recorder.
//! - [`host`]: the machine and commit a benchmark report names.
//! - [`http`]: the `{"error", "detail"}` body, `/health` and `/metrics`, served alike by every service.
//! - [`internal`]: the token the gateway presents to the collector and the generator, and the
//!   middleware that asks for it.
//! - [`permits`]: event streams capped in total and per client (gateway and collector).
//! - [`startup`]: the one startup error of the three services, and binding their listener.
//! - [`shutdown`]: SIGINT/SIGTERM turned into a `CancellationToken`.
//! - [`config`]: reading the optional TOML layer of each service's configuration.
//! - [`control`]: the generator's start request and status body, typed once for the generator, the
//!   gateway and the OpenAPI document.
//! - [`query`]: the query API's parameters (each described once) and answers, typed once for the
//!   collector, the gateway and the OpenAPI document.

// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit
// (clippy.toml allows it in tests; benches and integration tests are not linted for it).
#![warn(clippy::unwrap_used)]
// A function a reader cannot hold in view at once is split (clippy.toml: 100 lines); the
// lint gate (`-D warnings`) holds every service to it.
#![warn(clippy::too_many_lines)]

pub mod attributes;
pub mod config;
pub mod control;
pub mod event;
pub mod formats;
pub mod host;
pub mod http;
pub mod internal;
pub mod kafka;
pub mod permits;
pub mod producer;
pub mod query;
pub mod raw_event;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod timestamp;

pub use event::{Level, LogEvent};
pub use raw_event::{RawEvent, Unchecked};
