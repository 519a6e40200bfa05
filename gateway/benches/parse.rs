//! The ingest route's work before the producer, against the least any reader of the same body must
//! do, with criterion.
//!
//!   cargo bench -p logpipe-gateway --bench parse
//!
//! Body: a JSON array of 1,000 events without ids, as clients send them (about 200 KB).
//! - Ceiling: split the array with serde_json (which checks its syntax) and copy each event's bytes
//!   into a payload buffer: what any route that checks JSON and sends each event must do.
//! - Event type: each event read into a `LogEvent` (a `String` per field, a tree of its attributes),
//!   given an id and the request's trace, validated, and written by serde_json: the route before
//!   2026-12-07, and what the protocols' events still go through.
//! - Gateway: `ParseContext::parse` (each event kept as its text, its fields located, its
//!   attributes scanned) and each event's payload written, as `POST /api/v1/logs` runs them.
//! - Reference: serde_json reading the body straight into `Vec<LogEvent>` (one typed pass, nothing
//!   checked or written): the ceiling of the parse alone until 2026-12-07.
//!
//! The means are printed at the end as ratios. Then each shipper protocol's decode of the same
//! 1,000 events (with ids as clients send them) and its payloads written, what its route runs before
//! the producer: the body's digest for stable ids, the decode, the mapping, each event's id and
//! checks, each payload. Each is printed as a ratio to the gateway's own route.

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use logpipe_common::event::LogEvent;
use logpipe_gateway::ingest::{BodyFormat, ParseContext, Payload};
use logpipe_gateway::protocols::{elastic, loki, otlp};
use serde_json::value::RawValue;

#[path = "common/bodies.rs"]
mod bodies;
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
    let ceiling = measure(&mut c, "ceiling: split the array, copy each event", || {
        black_box(each_event_written(black_box(&body), |raw, payload| {
            payload.extend_from_slice(raw.as_bytes())
        }));
    });
    let event_type = measure(
        &mut c,
        "event type: LogEvent read, checked, written",
        || {
            black_box(each_event_written(black_box(&body), |raw, payload| {
                let mut e: LogEvent = serde_json::from_str(raw).unwrap();
                e.event_id = LogEvent::new_id();
                e.trace_id.clone_from(&ctx.trace_id);
                e.validate().unwrap();
                e.write_payload(payload);
            }));
        },
    );
    let gateway = measure(
        &mut c,
        "gateway: ParseContext::parse, each payload written",
        || {
            let parsed = ctx.parse(BodyFormat::Json, black_box(&body)).unwrap();
            assert_eq!(parsed.events.len(), EVENTS);
            black_box(write_all(&parsed.events));
        },
    );
    let reference = measure(&mut c, "reference: serde_json into Vec<LogEvent>", || {
        let events: Vec<LogEvent> = serde_json::from_slice(black_box(&body)).unwrap();
        black_box(events);
    });
    let protocols = protocols(&mut c, &body, &ctx);
    c.final_summary();
    let us = |m: f64| m * 1e6;
    println!(
        "1,000-event batch, read and written: ceiling {:.0} µs, gateway {:.0} µs = {:.2} x the \
         ceiling ({:.0} events/s on one core); the event type's path {:.0} µs = {:.2} x the \
         ceiling, {:.2} x the gateway's; serde_json into Vec<LogEvent> alone {:.0} µs",
        us(ceiling),
        us(gateway),
        gateway / ceiling,
        EVENTS as f64 / gateway,
        us(event_type),
        event_type / ceiling,
        event_type / gateway,
        us(reference),
    );
    for (name, mean) in protocols {
        println!(
            "  {name}: {:.0} µs = {:.2} x the gateway's own route ({:.0} events/s on one core)",
            mean * 1e6,
            mean / gateway,
            EVENTS as f64 / mean
        );
    }
}

/// The array split with serde_json, each event's payload written by `write` into one reused
/// buffer; the bytes written.
fn each_event_written(body: &[u8], mut write: impl FnMut(&str, &mut Vec<u8>)) -> usize {
    let items: Vec<&RawValue> = serde_json::from_slice(body).unwrap();
    let mut payload = Vec::new();
    let mut bytes = 0;
    for raw in items {
        payload.clear();
        write(raw.get(), &mut payload);
        bytes += payload.len();
    }
    bytes
}

/// Each event's payload written into one reused buffer, as the producer loop does; the bytes.
fn write_all(events: &[impl Payload]) -> usize {
    let mut payload = Vec::new();
    let mut bytes = 0;
    for e in events {
        payload.clear();
        e.write_payload(&mut payload);
        bytes += payload.len();
    }
    bytes
}

/// Each protocol's decode of the same events: what its route does before the producer.
fn protocols(
    c: &mut Criterion,
    json_body: &[u8],
    ctx: &ParseContext<'_>,
) -> Vec<(&'static str, f64)> {
    let events: Vec<LogEvent> = serde_json::from_slice(json_body).unwrap();
    let otlp_pb = bodies::otlp_body(&events);
    let otlp_gz = bodies::gzip(&otlp_pb);
    let otlp_json = bodies::otlp_json(&events);
    let bulk = bodies::bulk_body(&events);
    let loki_pb = bodies::loki_body(&events);
    let digest = |body: &[u8]| {
        use sha2::Digest;
        let mut ctx = ctx.clone();
        ctx.id_seed = Some(sha2::Sha256::digest(body).to_vec());
        ctx
    };
    let mut out = Vec::new();
    out.push((
        "OTLP protobuf",
        measure(c, "OTLP protobuf", || {
            let ctx = digest(black_box(&otlp_pb));
            let req = otlp::decode(otlp::Encoding::Protobuf, &otlp_pb).unwrap();
            let events = otlp::to_events(&ctx, &req).events;
            assert_eq!(events.len(), EVENTS);
            black_box(write_all(&events));
        }),
    ));
    out.push((
        "OTLP protobuf gzip",
        measure(c, "OTLP protobuf gzip", || {
            let raw =
                logpipe_gateway::ingest::intake::gunzip(black_box(&otlp_gz), 4 << 20).unwrap();
            let ctx = digest(&raw);
            let req = otlp::decode(otlp::Encoding::Protobuf, &raw).unwrap();
            let events = otlp::to_events(&ctx, &req).events;
            assert_eq!(events.len(), EVENTS);
            black_box(write_all(&events));
        }),
    ));
    out.push((
        "OTLP JSON",
        measure(c, "OTLP JSON", || {
            let ctx = digest(black_box(&otlp_json));
            let req = otlp::decode(otlp::Encoding::Json, &otlp_json).unwrap();
            let events = otlp::to_events(&ctx, &req).events;
            assert_eq!(events.len(), EVENTS);
            black_box(write_all(&events));
        }),
    ));
    out.push((
        "Elasticsearch bulk",
        measure(c, "Elasticsearch bulk", || {
            let ctx = digest(black_box(&bulk));
            let items = elastic::bulk::read_bulk(&bulk).unwrap();
            let (events, _) = elastic::items_to_events(&ctx, &items, None);
            assert_eq!(events.len(), EVENTS);
            black_box(write_all(&events));
        }),
    ));
    out.push((
        "Loki snappy protobuf",
        measure(c, "Loki snappy protobuf", || {
            let ctx = digest(black_box(&loki_pb));
            let streams = loki::decode(true, &loki_pb, 4 << 20).unwrap();
            let events = loki::to_events(&ctx, streams).events;
            assert_eq!(events.len(), EVENTS);
            black_box(write_all(&events));
        }),
    ));
    out
}
