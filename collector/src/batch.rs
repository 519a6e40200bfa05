//! What one batch writes, and where a partition stands: the types the pure core
//! (`consumer/decide.rs`) builds and the database layer (`db.rs`, `copy.rs`) writes. Their own
//! module, so neither side depends on the other for them.

use chrono::{DateTime, Utc};
use logpipe_common::RawEvent;

use crate::detect::{AlertKind, Findings};
use crate::windows::{Stats, WindowKey};

/// One event with the Kafka coordinates it came from.

#[derive(Debug, Clone, Copy)]
pub struct StoredEvent<'a> {
    pub event: &'a RawEvent,
    pub partition: i32,
    pub offset: i64,
}

/// The offset move for one partition inside a batch: from the stored value this consumer expects to
/// the offset after the batch's last record, and the partition's event-time progress.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetMove {
    pub partition: i32,
    pub expected: i64,
    pub next: i64,
    pub max_event_ts: Option<DateTime<Utc>>,
    /// Fingerprint of the record at `next - 1`. A move that keeps the offset (an idle move) keeps
    /// the stored one; a move past records stores this, `None` when it is not known (no check at
    /// the next resume: never a stale fingerprint for a new offset).
    pub last_record_hash: Option<i64>,
}

/// Where a partition stands in Postgres.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub next_offset: i64,
    pub max_event_ts: Option<DateTime<Utc>>,
    /// Fingerprint of the record at `next_offset - 1` (see the migration `offset_record_hash`).
    pub last_record_hash: Option<i64>,
}

/// A stored offset moved because it did not fit the broker's log `[log_start, log_end]`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetReset {
    pub partition: i32,
    pub old_offset: i64,
    pub new_offset: i64,
    pub log_start: i64,
    pub log_end: i64,
    pub reason: &'static str,
}

/// Everything one batch writes.

#[derive(Debug, Default)]
pub struct BatchWrite<'a> {
    pub events: Vec<StoredEvent<'a>>,
    pub windows: Vec<(WindowKey, Stats)>,
    pub findings: Findings,
    pub moves: Vec<OffsetMove>,
    /// Services whose error-rate windows closed up to (and including) this window start.
    pub closed: Vec<(String, DateTime<Utc>)>,
}

/// What a committed batch did.

#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub stored: u64,
    pub raised: Vec<AlertKind>,
}
