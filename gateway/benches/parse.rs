//! The ingest parser against the least any parser of the same body must do, with criterion.
//!
//!   cargo bench -p logpipe-gateway --bench parse
//!
//! Body: a JSON array of 1,000 events without ids, as clients send them (about 200 KB).
//! Ceiling: serde_json reading it straight into `Vec<LogEvent>` (one typed pass, nothing checked).
//! Gateway: `ParseContext::parse`, what `POST /api/v1/logs` runs: split the array, read each event on
//! its own (so one bad event refuses only itself), give it an id, the request's trace and validate
//! it. The ratio of the two means is printed at the end.

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use logpipe_common::event::LogEvent;
use logpipe_gateway::ingest::{BodyFormat, ParseContext};
use serde_json::{json, Value};

const EVENTS: usize = 1_000;

fn body() -> Vec<u8> {
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            json!({"timestamp": now.to_rfc3339(),
                   "level": if i % 10 == 0 { "ERROR" } else { "INFO" },
                   "service": format!("svc-{}", i % 8), "component": "api", "host": "bench-1",
                   "message": format!("request {i} served in {} ms", i % 97),
                   "attributes": {"http.status": 200, "latency_ms": i % 97}})
        })
        .collect();
    serde_json::to_vec(&events).unwrap()
}

/// Runs `f` under criterion and keeps its own total, so the two means can be compared at the end.
fn measure(c: &mut Criterion, name: &str, f: impl Fn()) -> f64 {
    let total = Cell::new((Duration::ZERO, 0u64));
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                f();
            }
            let took = started.elapsed();
            let (t, n) = total.get();
            total.set((t + took, n + iters));
            took
        })
    });
    let (t, n) = total.get();
    t.as_secs_f64() / n.max(1) as f64
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let body = body();
    let ctx = ParseContext {
        received_at: chrono::Utc::now(),
        max_events: 10_000,
        max_future_secs: 10,
        max_event_bytes: 256 * 1024,
        default_service: "edge",
        id_seed: None,
        tenant: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    };
    let ceiling = measure(&mut c, "ceiling: serde_json into Vec<LogEvent>", || {
        let events: Vec<LogEvent> = serde_json::from_slice(black_box(&body)).unwrap();
        black_box(events);
    });
    let gateway = measure(&mut c, "gateway: ParseContext::parse", || {
        let parsed = ctx.parse(BodyFormat::Json, black_box(&body)).unwrap();
        assert_eq!(parsed.events.len(), EVENTS);
        black_box(parsed);
    });
    c.final_summary();
    println!(
        "1,000-event batch: ceiling {:.0} µs, gateway {:.0} µs = {:.2} x the ceiling ({:.0} events/s on one core)",
        ceiling * 1e6,
        gateway * 1e6,
        gateway / ceiling,
        EVENTS as f64 / gateway
    );
}
