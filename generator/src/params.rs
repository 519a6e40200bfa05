//! A generation run's parameters: a start request checked against the allowed ranges, with the
//! configured defaults filled in. Its own module, so the configuration (which checks its defaults
//! here at start) and the engine (which runs them) both depend on it and not on each other.

use serde::{Deserialize, Serialize};

use crate::events::Profile;
use logpipe_common::control::RunInfo;
pub use logpipe_common::control::{
    StartRequest, MAX_BATCH, MAX_DURATION_SECS, MAX_RATE, MAX_THREADS,
};

/// Run parameters used when a start request leaves them out (`[defaults]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunDefaults {
    pub rate_per_second: u32,
    pub threads: u32,
    pub batch_size: u32,
}

impl Default for RunDefaults {
    fn default() -> Self {
        Self {
            rate_per_second: 1_000,
            threads: 1,
            batch_size: 100,
        }
    }
}

/// A start request checked against the allowed ranges, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunParams {
    pub rate_per_second: u32,
    pub threads: u32,
    pub batch_size: u32,
    pub duration_secs: Option<u64>,
    pub count: Option<u64>,
    pub profile: Profile,
    pub seed: u64,
}

/// A field outside its allowed range; the HTTP layer turns it into a 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` must be {allowed}; got {got}")]
pub struct InvalidParam {
    pub field: &'static str,
    pub allowed: String,
    pub got: String,
}

fn in_range(field: &'static str, v: u64, lo: u64, hi: u64) -> Result<u64, InvalidParam> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(InvalidParam {
            field,
            allowed: format!("between {lo} and {hi}"),
            got: v.to_string(),
        })
    }
}

impl RunParams {
    /// As the status body shows them.
    pub fn info(&self) -> RunInfo {
        RunInfo {
            rate_per_second: self.rate_per_second,
            threads: self.threads,
            batch_size: self.batch_size,
            duration_secs: self.duration_secs,
            count: self.count,
            profile: self.profile.name().into(),
            seed: self.seed,
        }
    }

    pub fn from_request(req: &StartRequest, d: &RunDefaults) -> Result<RunParams, InvalidParam> {
        let rate = in_range(
            "rate_per_second",
            req.rate_per_second.unwrap_or(d.rate_per_second.into()),
            1,
            MAX_RATE.into(),
        )?;
        let threads = in_range(
            "threads",
            req.threads.unwrap_or(d.threads.into()),
            1,
            MAX_THREADS.into(),
        )?;
        let batch = in_range(
            "batch_size",
            req.batch_size.unwrap_or(d.batch_size.into()),
            1,
            MAX_BATCH.into(),
        )?;
        if threads > rate {
            return Err(InvalidParam {
                field: "threads",
                allowed: format!("at most rate_per_second ({rate})"),
                got: threads.to_string(),
            });
        }
        let duration_secs = req
            .duration_secs
            .map(|v| in_range("duration_secs", v, 1, MAX_DURATION_SECS))
            .transpose()?;
        let count = req
            .count
            .map(|v| in_range("count", v, 1, u64::MAX / 2))
            .transpose()?;
        let name = req.profile.as_deref().unwrap_or("steady");
        let profile = Profile::parse(name).ok_or_else(|| InvalidParam {
            field: "profile",
            allowed: format!("one of {:?}", Profile::NAMES),
            got: format!("{name:?}"),
        })?;
        Ok(RunParams {
            rate_per_second: rate as u32,
            threads: threads as u32,
            batch_size: batch as u32,
            duration_secs,
            count,
            profile,
            seed: req.seed.unwrap_or_else(rand::random),
        })
    }
}
