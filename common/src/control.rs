//! The generator's control contract: the start request and the status body, used by the generator
//! (which serves them), the gateway (which validates, fans out and sums them) and the OpenAPI
//! document (which shows them). One type each, so a renamed field fails to compile instead of
//! silently zeroing a total.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most events per second one run may ask for.
pub const MAX_RATE: u32 = 1_000_000;
pub const MAX_THREADS: u32 = 64;
pub const MAX_BATCH: u32 = 10_000;
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;
/// The traffic shapes a run may use.
pub const PROFILES: [&str; 5] = [
    "steady",
    "error-spike",
    "security-attack",
    "burst",
    "mixed-formats",
];

/// The body of `POST /api/v1/generator/start`. Every field is optional (an empty body runs the
/// configured defaults); a field outside its range is a 422 naming it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Events per second across all threads.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_per_second: Option<u64>,
    /// Producer threads; at most `rate_per_second`.
    #[schema(minimum = 1, maximum = 64)]
    pub threads: Option<u64>,
    /// Events per paced batch.
    #[schema(minimum = 1, maximum = 10_000)]
    pub batch_size: Option<u64>,
    /// Stop after this many seconds.
    #[schema(minimum = 1, maximum = 604_800)]
    pub duration_secs: Option<u64>,
    /// Stop after this many events.
    #[schema(minimum = 1)]
    pub count: Option<u64>,
    /// Traffic shape: `steady` (default), `error-spike`, `security-attack`, `burst`, `mixed-formats`.
    #[schema(pattern = "^(steady|error-spike|security-attack|burst|mixed-formats)$")]
    pub profile: Option<String>,
    /// Seed of the event generator: the same seed gives the same events.
    pub seed: Option<u64>,
}

/// The start request's fields, as a refusal names them.
pub const START_FIELDS: [&str; 7] = [
    "rate_per_second",
    "threads",
    "batch_size",
    "duration_secs",
    "count",
    "profile",
    "seed",
];

/// Why a start body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartBodyError {
    /// Not JSON at all (a 400).
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    /// JSON that does not fit the request (a 422 naming the field: `rate_per_second`, or `body`
    /// for the body as a whole, e.g. an unknown field or not an object).
    #[error("{field}: {detail}")]
    Field { field: String, detail: String },
}

impl StartBodyError {
    /// The field the refusal names (`body` when it is not JSON or not about one field).
    pub fn field(&self) -> &str {
        match self {
            Self::NotJson(_) => "body",
            Self::Field { field, .. } => field,
        }
    }
}

/// Parse a start body: blank or `null` is "no body" (the configured defaults); anything else must
/// be a `StartRequest`, and a value that does not fit is reported with the path of its field.
pub fn parse_start_request(body: &[u8]) -> Result<Option<StartRequest>, StartBodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let req: Option<StartRequest> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => StartBodyError::Field {
                field: if path == "." { "body".into() } else { path },
                detail: inner.to_string(),
            },
            _ => StartBodyError::NotJson(inner.to_string()),
        }
    })?;
    // Bytes after the value are not JSON either.
    de.end()
        .map_err(|e| StartBodyError::NotJson(e.to_string()))?;
    Ok(req)
}

/// The global budget shared in Redis by several generators.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BudgetStatus {
    /// `redis`, or `local` while Redis does not answer.
    pub backend: String,
    pub global_rate_per_second: u32,
    /// Generators seen sharing the budget.
    pub instances: u32,
}

/// The parameters of the current or last run, defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RunInfo {
    pub rate_per_second: u32,
    pub threads: u32,
    pub batch_size: u32,
    pub duration_secs: Option<u64>,
    pub count: Option<u64>,
    pub profile: String,
    pub seed: u64,
}

/// What one generator reports (`GET /api/v1/generator/status` on the generator; also the body of
/// its start and stop answers).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct GeneratorStatus {
    pub instance_id: String,
    /// `running` or `idle`.
    pub state: String,
    pub topic: String,
    /// The rate asked for, while a run exists.
    pub rate_per_second: Option<u32>,
    pub measured_rate_per_second: f64,
    pub events_generated: u64,
    pub events_acked: u64,
    pub events_failed: u64,
    pub events_skipped: u64,
    pub events_rate_limited: u64,
    /// Absent when the global budget is off.
    pub budget: Option<BudgetStatus>,
    /// `closed`, `open` or `half-open`.
    pub breaker_state: String,
    pub started_at: Option<DateTime<Utc>>,
    pub run: Option<RunInfo>,
}

impl GeneratorStatus {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_negative_rate_is_refused_naming_the_field() {
        let e = parse_start_request(br#"{"rate_per_second": -5}"#).unwrap_err();
        assert_eq!(e.field(), "rate_per_second");
        assert!(
            e.to_string()
                .starts_with("rate_per_second: invalid value: integer `-5`"),
            "{e}"
        );
    }

    #[test]
    fn blank_and_null_bodies_mean_the_defaults() {
        assert_eq!(parse_start_request(b"").unwrap(), None);
        assert_eq!(parse_start_request(b" \n").unwrap(), None);
        assert_eq!(parse_start_request(b"null").unwrap(), None);
        assert_eq!(
            parse_start_request(br#"{"seed": 7}"#).unwrap(),
            Some(StartRequest {
                seed: Some(7),
                ..StartRequest::default()
            })
        );
    }

    #[test]
    fn what_is_not_json_is_not_a_field_error() {
        for body in [&b"{oops"[..], b"{} trailing", b"\xff"] {
            let e = parse_start_request(body).unwrap_err();
            assert!(matches!(e, StartBodyError::NotJson(_)), "{e:?}");
            assert_eq!(e.field(), "body");
        }
    }

    #[test]
    fn an_unknown_field_or_a_body_that_is_not_an_object_names_what_is_wrong() {
        let e = parse_start_request(br#"{"rate": 5}"#).unwrap_err();
        assert!(matches!(e, StartBodyError::Field { .. }), "{e:?}");
        assert!(e.to_string().contains("`rate`"), "{e}");
        let e = parse_start_request(b"[1, 2]").unwrap_err();
        assert_eq!(e.field(), "body");
    }

    #[test]
    fn every_field_of_the_request_is_named_in_start_fields() {
        let all = serde_json::to_value(StartRequest {
            rate_per_second: Some(1),
            threads: Some(1),
            batch_size: Some(1),
            duration_secs: Some(1),
            count: Some(1),
            profile: Some("steady".into()),
            seed: Some(1),
        })
        .unwrap();
        let names: Vec<&str> = all
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = START_FIELDS.to_vec();
        want.sort_unstable();
        let mut names = names;
        names.sort_unstable();
        assert_eq!(names, want);
    }

    const NUMERIC: [&str; 6] = [
        "rate_per_second",
        "threads",
        "batch_size",
        "duration_secs",
        "count",
        "seed",
    ];

    proptest! {
        /// Whatever wrong value a numeric field gets (a negative number, a fraction, a string, a
        /// list, an object, a boolean), the refusal names that field; valid fields around it do
        /// not change that.
        #[test]
        fn a_wrong_value_is_refused_naming_its_field(
            field in proptest::sample::select(NUMERIC.to_vec()),
            wrong in prop_oneof![
                (i64::MIN..0i64).prop_map(|n| n.to_string()),
                (0.5f64..1e12).prop_map(|f| format!("{f:.3}")),
                "[a-z ]{0,8}".prop_map(|s| format!("{s:?}")),
                Just("[1]".to_owned()),
                Just("{}".to_owned()),
                Just("true".to_owned()),
            ],
            seed in any::<u64>(),
        ) {
            let body = if field == "seed" {
                format!(r#"{{"{field}": {wrong}}}"#)
            } else {
                format!(r#"{{"seed": {seed}, "{field}": {wrong}}}"#)
            };
            let e = parse_start_request(body.as_bytes()).unwrap_err();
            prop_assert_eq!(e.field(), field, "{}", body);
        }

        /// A profile that is not a string names `profile`.
        #[test]
        fn a_profile_that_is_not_a_string_names_profile(n in any::<i64>()) {
            let body = format!(r#"{{"profile": {n}}}"#);
            let e = parse_start_request(body.as_bytes()).unwrap_err();
            prop_assert_eq!(e.field(), "profile");
        }
    }
}
