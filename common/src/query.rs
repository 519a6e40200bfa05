//! The query API's contract, typed once for the collector (which checks the parameters and builds
//! the answers), the gateway (which forwards both untouched) and the OpenAPI document (which shows
//! them).
//!
//! - Parameters: each is described once, by a function below (`from`, `to`, `service`, ...); each
//!   endpoint's parameter set (`StatsParams`, `TimelineParams`, `AlertsParams`, `EventsParams`,
//!   `StreamParams`) is
//!   a list of them, with `NAMES` for the collector's check that a query names no other.
//! - Answers: `Stats`, `Timeline`, `AlertsPage`, `EventsPage` and the rows inside them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{Required, Schema};
use utoipa::PartialSchema;

use crate::event::Level;

/// A page's size when the query names none, and the most a page may hold.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

/// An event stream's rate when the query names none, and the most it may ask for.
pub const DEFAULT_STREAM_RATE: u32 = 100;
pub const MAX_STREAM_RATE: u32 = 1000;

/// The alert kinds a query may filter on.
pub const ALERT_KINDS: [&str; 4] = [
    "error_rate_spike",
    "sql_injection",
    "brute_force",
    "fatal_event",
];

/// The shape of a cursor: empty (the first page) or `<micros>.<id>` as `next_cursor` gives it.
pub const CURSOR_PATTERN: &str = "^(-?[0-9]{1,16}\\..+)?$";

fn query_param(name: &str, description: &str, schema: impl Into<Schema>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema.into()))
        .build()
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// An integer from 1 to `max`.
fn integer_up_to(max: u32) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(max))
}

/// The parameters, each described once.
pub mod param {
    use super::*;

    /// `from`: the range's start. `capped` says the endpoint limits the range's length.
    pub fn from(capped: bool) -> Parameter {
        let cap = if capped {
            ", and at most the collector's `query_max_range_hours` (168) before it"
        } else {
            ""
        };
        query_param(
            "from",
            &format!("RFC 3339 start (default: an hour before `to`); before `to`{cap}"),
            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
    }

    pub fn to() -> Parameter {
        query_param(
            "to",
            "RFC 3339 end (default: now)",
            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
    }

    pub fn service() -> Parameter {
        query_param("service", "Only this service", string())
    }

    pub fn level(name: &str, description: &str) -> Parameter {
        query_param(name, description, Level::schema().into_schema())
    }

    pub fn kind() -> Parameter {
        query_param(
            "kind",
            "Only this kind of alert",
            string().pattern(Some(format!("^({})$", ALERT_KINDS.join("|")))),
        )
    }

    /// `q`; `capped` says a search caps the range's length (a page, not the stream).
    pub fn q(capped: bool) -> Parameter {
        let cap = if capped {
            "; with it, `from` may be at most the collector's `query_max_range_hours` (168) \
             before `to`"
        } else {
            ""
        };
        query_param(
            "q",
            &format!("Case-insensitive substring of the message{cap}"),
            string(),
        )
    }

    pub fn rate() -> Parameter {
        query_param(
            "rate",
            &format!("Events a second at most (default {DEFAULT_STREAM_RATE})"),
            integer_up_to(MAX_STREAM_RATE),
        )
    }

    pub fn limit() -> Parameter {
        query_param(
            "limit",
            &format!("Page size (default {DEFAULT_LIMIT})"),
            integer_up_to(MAX_LIMIT),
        )
    }

    pub fn cursor() -> Parameter {
        query_param(
            "cursor",
            "`next_cursor` of the previous page (opaque; empty means the first page)",
            string().pattern(Some(CURSOR_PATTERN)),
        )
    }
}

/// A `RefOr<Schema>` as the schema itself (the level's schema is inline).
trait IntoSchema {
    fn into_schema(self) -> Schema;
}

impl IntoSchema for utoipa::openapi::RefOr<Schema> {
    fn into_schema(self) -> Schema {
        match self {
            utoipa::openapi::RefOr::T(s) => s,
            utoipa::openapi::RefOr::Ref(_) => string().into(),
        }
    }
}

/// An endpoint's parameter set: the names the collector accepts and what the document shows.
macro_rules! param_set {
    ($(#[$doc:meta])* $name:ident [$($field:literal),*] => $params:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl $name {
            /// The parameters a query may name; any other is a 400 naming it.
            pub const NAMES: &'static [&'static str] = &[$($field),*];
        }

        impl utoipa::IntoParams for $name {
            fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
                $params
            }
        }
    };
}

param_set!(
    /// `GET /api/v1/stats` and `GET /api/v1/stats/{service}`.
    StatsParams ["from", "to"] => vec![param::from(true), param::to()]
);
param_set!(
    /// `GET /api/v1/timeline`.
    TimelineParams ["from", "to", "service"] =>
        vec![param::from(true), param::to(), param::service()]
);
param_set!(
    /// `GET /api/v1/alerts`.
    AlertsParams ["from", "to", "kind", "service", "limit", "cursor"] => vec![
        param::from(false),
        param::to(),
        param::kind(),
        param::service(),
        param::limit(),
        param::cursor(),
    ]
);
param_set!(
    /// `GET /api/v1/events`.
    EventsParams ["from", "to", "service", "level", "min_level", "q", "limit", "cursor"] => vec![
        param::from(false),
        param::to(),
        param::service(),
        param::level("level", "Exactly this level"),
        param::level("min_level", "This level or more severe"),
        param::q(true),
        param::limit(),
        param::cursor(),
    ]
);

param_set!(
    /// `GET /api/v1/events/stream` (`Last-Event-ID`, a header, resumes it).
    StreamParams ["service", "min_level", "q", "rate"] => vec![
        param::service(),
        param::level("min_level", "This level or more severe"),
        param::q(false),
        param::rate(),
    ]
);

/// A message and how often it was seen in the range (from a sample of the range's rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopMessage {
    pub message: String,
    pub count: i64,
}

/// One service's counts in `Stats::services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceCount {
    pub service: String,
    pub total: i64,
    pub errors: i64,
    pub error_rate: f64,
}

/// A service's latencies in milliseconds (from the events that carry one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LatencySummary {
    pub count: i64,
    pub avg: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

/// `GET /api/v1/stats` (every service: `services`) and `GET /api/v1/stats/{service}` (one:
/// `service` and `latency_ms`). Counts come from tumbling windows `window_secs` wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub window_secs: i32,
    pub total: i64,
    /// Every level, counted (0 when none).
    pub by_level: BTreeMap<String, i64>,
    /// ERROR and FATAL.
    pub errors: i64,
    pub error_rate: f64,
    pub top_messages: Vec<TopMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencySummary>,
    /// Busiest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceCount>>,
}

/// One window's count of one service and level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineWindow {
    pub start: DateTime<Utc>,
    pub service: String,
    pub level: String,
    pub count: i64,
}

/// `GET /api/v1/timeline`: window counts, oldest first, `window_secs` wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timeline {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub window_secs: i32,
    pub windows: Vec<TimelineWindow>,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub alert_id: String,
    /// One of `ALERT_KINDS`.
    pub kind: String,
    pub subject: String,
    pub service: String,
    pub severity: String,
    pub summary: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub occurrences: i64,
    /// What the detector saw (per kind).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub raised_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/alerts`: newest first; `next_cursor` is null on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertsPage {
    pub alerts: Vec<Alert>,
    pub next_cursor: Option<String>,
}

/// Where a stored event was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KafkaPosition {
    pub partition: i32,
    pub offset: i64,
}

/// One stored event as the events query and the event stream return it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRow {
    pub event_id: String,
    pub timestamp: DateTime<Utc>,
    pub level: String,
    pub service: String,
    pub component: String,
    pub host: String,
    pub message: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    /// PostgreSQL's own text of the jsonb, passed through unparsed: jsonb keeps numbers exactly
    /// and prints them in full (`1e-252` comes back as a 0, a point and 251 zeros), which an f64
    /// parse may refuse. A row must never fail its query.
    #[schema(value_type = Object)]
    pub attributes: Box<RawValue>,
    pub kafka: KafkaPosition,
}

/// `GET /api/v1/events`: newest first; a page ends at `limit` rows or at the collector's byte cap,
/// and `next_cursor` is null on the last page.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsPage {
    pub events: Vec<EventRow>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::IntoParams;

    fn names<P: IntoParams>() -> Vec<String> {
        P::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect()
    }

    #[test]
    fn each_parameter_set_documents_exactly_the_names_it_accepts() {
        assert_eq!(names::<StatsParams>(), StatsParams::NAMES);
        assert_eq!(names::<TimelineParams>(), TimelineParams::NAMES);
        assert_eq!(names::<AlertsParams>(), AlertsParams::NAMES);
        assert_eq!(names::<EventsParams>(), EventsParams::NAMES);
        assert_eq!(names::<StreamParams>(), StreamParams::NAMES);
    }

    #[test]
    fn an_events_page_reads_back_with_its_attributes_untouched() {
        let text = r#"{"events":[{"event_id":"e1","timestamp":"2026-12-05T10:00:00Z","level":"ERROR","service":"api","component":"http","host":"h","message":"m","trace_id":null,"span_id":null,"attributes":{"n":1e-252},"kafka":{"partition":1,"offset":7}}],"next_cursor":null}"#;
        let page: EventsPage = serde_json::from_str(text).unwrap();
        assert_eq!(page.events[0].attributes.get(), r#"{"n":1e-252}"#);
        assert_eq!(serde_json::to_string(&page).unwrap(), text);
    }
}
