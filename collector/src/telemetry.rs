//! The collector's metrics, by the names ARCHITECTURE.md fixes, in one place.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::detect::AlertKind;

pub fn events_consumed(n: u64) {
    counter!("collector_events_consumed_total").increment(n);
}

pub fn events_stored(n: u64) {
    counter!("collector_events_stored_total").increment(n);
}

pub fn dlq(n: u64) {
    counter!("collector_dlq_total").increment(n);
}

/// One batch committed: how long its transaction took, and how many event rows it wrote. The
/// batch size is what group commit chose under the load of the moment: small batches pay each
/// batch's statements (window upserts, offsets, the commit) for few rows.
pub fn batch_committed(took: Duration, events: usize) {
    histogram!("collector_batch_commit_seconds").record(took.as_secs_f64());
    histogram!("collector_batch_events").record(events as f64);
}

/// End-to-end lag, sampled once per committed batch: how old (by its own timestamp) the batch's
/// newest stored event was when its row committed.
pub fn event_age(age: Duration) {
    histogram!("collector_event_age_seconds").record(age.as_secs_f64());
}

/// A batch's plan, made while the batch before it committed, was written as made (`adopted`) or
/// made again because that commit left the partitions otherwise than foreseen (`redone`: after a
/// failed, split or fenced write, a rebalance, an idle move).
pub fn plan_ahead(adopted: bool) {
    let outcome = if adopted { "adopted" } else { "redone" };
    counter!("collector_plans_ahead_total", "outcome" => outcome).increment(1);
}

pub fn events_filtered(n: u64) {
    counter!("collector_events_filtered_total").increment(n);
}

pub fn late_events(n: u64) {
    counter!("collector_late_events_total").increment(n);
}

/// Events dated past the collector's clock plus the allowed lateness: stored, but they open no
/// window rows and do not move their partition's event time.
pub fn future_events(n: u64) {
    counter!("collector_future_events_total").increment(n);
}

/// Values taken from events that were cut to their bound before they were aggregated (`field`:
/// `latency_ms`).
pub fn values_clamped(field: &'static str, n: u64) {
    counter!("collector_values_clamped_total", "field" => field).increment(n);
}

/// Events (or findings) counted under the overflow key because their window already holds the
/// most distinct keys of that `kind` (`service`, `login_subject`).
pub fn cardinality_overflow(kind: &'static str, n: u64) {
    counter!("collector_cardinality_overflow_total", "kind" => kind).increment(n);
}

/// 1 while the database refuses a known-good write too (the canary): the collector stalls, loudly,
/// instead of sending good records to the DLQ.
pub fn database_refuses_everything(yes: bool) {
    gauge!("collector_database_refuses_everything").set(if yes { 1.0 } else { 0.0 });
}

/// Records between the broker's high watermark and the next offset stored in Postgres. Negative
/// when the stored offset is past the log's end: an alarm (the offset is then reset or refused),
/// never shown as 0.
pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!("collector_consumer_lag", "partition" => partition.to_string()).set(lag as f64);
}

pub fn alert_raised(kind: AlertKind) {
    counter!("alerts_raised_total", "kind" => kind.as_str()).increment(1);
}

/// Register the counters at zero so they are scraped before the first event.
pub fn describe(partitioned_tables: &[&'static str]) {
    events_consumed(0);
    events_stored(0);
    events_filtered(0);
    for outcome in ["adopted", "redone"] {
        counter!("collector_plans_ahead_total", "outcome" => outcome).increment(0);
    }
    late_events(0);
    future_events(0);
    values_clamped("latency_ms", 0);
    cardinality_overflow("service", 0);
    cardinality_overflow("login_subject", 0);
    database_refuses_everything(false);
    dlq(0);
    refused_by_database(0);
    partitions_refused(0);
    partitions_unstored(0);
    counter!("collector_offset_gaps_total").increment(0);
    counter!("collector_storage_maintenance_errors_total").increment(0);
    gauge!("collector_streams_open").set(0.0);
    counter!("collector_stream_events_dropped_total").increment(0);
    counter!("collector_streams_cut_off_total").increment(0);
    for table in partitioned_tables {
        counter!("collector_partitions_dropped_total", "table" => *table).increment(0);
    }
    for kind in AlertKind::ALL {
        counter!("alerts_raised_total", "kind" => kind.as_str()).increment(0);
    }
}

/// A partition's records arrived with offsets missing and were fetched again.
pub fn offset_gap() {
    counter!("collector_offset_gaps_total").increment(1);
}

/// A partition's stored offset did not fit the broker's log and was moved to the log start
/// (`reason`: `past_log_end` or `before_log_start`).
pub fn offset_reset(partition: i32, reason: &'static str) {
    counter!("collector_offset_resets_total", "partition" => partition.to_string(), "reason" => reason)
        .increment(1);
}

/// Partitions held paused because their stored offset does not fit the log and the policy is
/// `refuse`.
pub fn partitions_refused(n: usize) {
    gauge!("collector_partitions_refused").set(n as f64);
}

/// Partitions of the topic that no member of the group stores: records past their stored
/// offset, and the stored offset unmoved for `orphan_after_secs` (see `OrphanWatch`).
pub fn partitions_unstored(n: usize) {
    gauge!("collector_partitions_unstored").set(n as f64);
}

/// Records the database refused for good, isolated from their batch and sent to the DLQ.
pub fn refused_by_database(n: u64) {
    counter!("collector_refused_by_database_total").increment(n);
}

/// Per partitioned table: bytes on disk (every partition with its indexes), the start of the
/// oldest partition kept, and rows in the default partition (which only rows outside every
/// partition reach: events older than retention or dated past the partitions made ahead).
pub fn storage(
    table: &'static str,
    bytes: i64,
    oldest: Option<chrono::DateTime<chrono::Utc>>,
    default_rows: i64,
) {
    gauge!("collector_storage_bytes", "table" => table).set(bytes as f64);
    if let Some(t) = oldest {
        gauge!("collector_storage_oldest_timestamp_seconds", "table" => table)
            .set(t.timestamp() as f64);
    }
    gauge!("collector_storage_default_partition_rows", "table" => table).set(default_rows as f64);
}

pub fn partition_dropped(table: &'static str) {
    counter!("collector_partitions_dropped_total", "table" => table).increment(1);
}

pub fn storage_maintenance(took: Duration) {
    histogram!("collector_storage_maintenance_seconds").record(took.as_secs_f64());
}

/// A maintenance step that failed (a lock not granted in time, a lost connection); retried.
pub fn storage_maintenance_failed() {
    counter!("collector_storage_maintenance_errors_total").increment(1);
}

/// Event streams (`GET /api/v1/events/stream`) open now.
pub fn stream_opened() {
    gauge!("collector_streams_open").increment(1.0);
}

pub fn stream_closed() {
    gauge!("collector_streams_open").decrement(1.0);
}

/// Events a stream left out (its client's rate cap, or a resume point too far behind); each
/// client is told its own count.
pub fn stream_dropped(n: u64) {
    counter!("collector_stream_events_dropped_total").increment(n);
}

/// Streams ended because their client read too slowly.
pub fn stream_cut_off() {
    counter!("collector_streams_cut_off_total").increment(1);
}
