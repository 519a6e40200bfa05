//! The generator's metrics, by the names ARCHITECTURE.md fixes. Handlers call these functions, never the
//! `metrics` macros directly, so names and label sets live in one place.

use metrics::{counter, gauge};

pub fn events_generated(n: u64) {
    counter!("log_events_generated_total").increment(n);
}

pub fn generation_rate(per_second: f64) {
    gauge!("log_generation_rate_current").set(per_second);
}

pub fn messages_sent(n: u64) {
    counter!("kafka_messages_sent_total").increment(n);
}

pub fn send_errors(n: u64) {
    counter!("kafka_send_errors_total").increment(n);
}

/// Events that had to wait for a later second of the global budget.
pub fn events_rate_limited(n: u64) {
    counter!("log_events_rate_limited_total").increment(n);
}

/// Which backend holds the budget: Redis (global) or this process (local fallback).
pub fn budget_backend(local: bool) {
    gauge!("generator_budget_backend", "backend" => "redis").set(if local { 0.0 } else { 1.0 });
    gauge!("generator_budget_backend", "backend" => "local").set(if local { 1.0 } else { 0.0 });
}

/// Events not generated because the circuit breaker was open.
pub fn events_skipped(n: u64) {
    counter!("log_events_skipped_total", "reason" => "breaker_open").increment(n);
}

/// 0 closed, 1 open, 2 half-open.
pub fn circuit_breaker_state(state: u8) {
    gauge!("circuit_breaker_state").set(f64::from(state));
}

/// Register every series at zero so dashboards and alerts see them before the first event.
/// The producer failed fatally and was replaced by a new one.
pub fn producer_replaced() {
    counter!("kafka_producer_replaced_total").increment(1);
}

pub fn describe() {
    events_generated(0);
    messages_sent(0);
    send_errors(0);
    generation_rate(0.0);
    events_skipped(0);
    events_rate_limited(0);
    circuit_breaker_state(0);
    counter!("kafka_producer_replaced_total").increment(0);
    // Both 0 while no global budget is configured; `budget_backend` sets one to 1 when it is.
    gauge!("generator_budget_backend", "backend" => "redis").set(0.0);
    gauge!("generator_budget_backend", "backend" => "local").set(0.0);
}
