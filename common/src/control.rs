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
