//! The collector's metrics, by name from the design brief, in one place.

use std::time::Duration;

use metrics::{counter, histogram};

pub fn events_consumed(n: u64) {
    counter!("collector_events_consumed_total").increment(n);
}

pub fn events_stored(n: u64) {
    counter!("collector_events_stored_total").increment(n);
}

pub fn dlq(n: u64) {
    counter!("collector_dlq_total").increment(n);
}

pub fn batch_committed(took: Duration) {
    histogram!("collector_batch_commit_seconds").record(took.as_secs_f64());
}

/// Register the counters at zero so they are scraped before the first event.
pub fn describe() {
    events_consumed(0);
    events_stored(0);
    dlq(0);
}
