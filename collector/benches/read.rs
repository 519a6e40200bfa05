//! The collector's per-record work before PostgreSQL, with criterion: reading a record and
//! encoding its COPY row, against the least any JSON reader of the same records must do.
//!
//!   cargo bench -p logpipe-collector --bench read
//!
//! Records: 1,000 events of the generator's `steady` profile, as the generator produces them.
//! - ceiling: serde_json checking each record's syntax (`IgnoredAny`: nothing kept, nothing
//!   checked but the JSON);
//! - tree: `LogEvent::from_json`, a `String` per field and a map of the attributes, validated
//!   (how the collector read records before `RawEvent`);
//! - raw: `RawEvent::from_json`, the record kept, its fields located, the attributes scanned,
//!   validated (what the collector runs);
//! - raw + COPY: the same, and each event's binary COPY row encoded (attributes as they arrived,
//!   their top-level keys put in jsonb's order);
//! - tree + COPY: the tree, converted, and its row (the tree's attributes written out again).
//!
//! Each is printed at the end as µs per record and a ratio to the ceiling.

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion};
use logpipe_collector::copy::CopyEncoder;
use logpipe_collector::db::StoredEvent;
use logpipe_collector::windows::{Aggregator, WindowSettings};
use logpipe_common::{LogEvent, RawEvent};
use logpipe_generator::events::{EventFactory, Profile};

const RECORDS: usize = 1_000;

// The collector binary's allocator, so allocation costs what it costs in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs `f` under criterion and keeps its own total, so the means can be compared at the end.
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
    t.as_secs_f64() / n.max(1) as f64 / RECORDS as f64
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut factory = EventFactory::new(7, "bench-host", Profile::Steady);
    let now = chrono::Utc::now();
    let records: Vec<Vec<u8>> = (0..RECORDS)
        .map(|i| {
            factory
                .next_event(now, Duration::from_millis(i as u64))
                .to_json()
        })
        .collect();
    // What PostgreSQL is sent is the object the tree's encoder wrote for these records, its keys
    // in jsonb's order (the generator writes them in serde_json's, bytewise), so only the order
    // PostgreSQL finds them in moved.
    let same = records
        .iter()
        .filter(|r| {
            let raw = RawEvent::from_json(r).unwrap();
            let tree = LogEvent::from_json(r).unwrap();
            let mut sent = Vec::new();
            raw.write_attributes_for_jsonb(&mut sent);
            serde_json::from_slice::<serde_json::Map<_, _>>(&sent).unwrap() == tree.attributes
                && sent != serde_json::to_vec(&tree.attributes).unwrap()
        })
        .count();
    let ceiling = measure(&mut c, "ceiling: serde_json syntax only", || {
        for r in &records {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(r)).unwrap());
        }
    });
    let tree = measure(&mut c, "tree: LogEvent::from_json", || {
        for r in &records {
            black_box(LogEvent::from_json(black_box(r)).unwrap());
        }
    });
    let raw = measure(&mut c, "raw: RawEvent::from_json", || {
        for r in &records {
            black_box(RawEvent::from_json(black_box(r)).unwrap());
        }
    });
    let encode = |events: &[RawEvent]| {
        let mut enc = CopyEncoder::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            enc.row(&StoredEvent {
                event,
                partition: 0,
                offset: i as i64,
            });
        }
        black_box(enc.finish());
    };
    let raw_copy = measure(&mut c, "raw + COPY row", || {
        let events: Vec<RawEvent> = records
            .iter()
            .map(|r| RawEvent::from_json(black_box(r)).unwrap())
            .collect();
        encode(&events);
    });
    // The writer's per-event window work: each event added to the batch's aggregate (its latency
    // read from the attributes), the batch spread into window rows once.
    let settings = WindowSettings::default();
    let specs = settings.specs();
    let raw_windows = measure(&mut c, "raw + windows", || {
        let events: Vec<RawEvent> = records
            .iter()
            .map(|r| RawEvent::from_json(black_box(r)).unwrap())
            .collect();
        let mut agg = Aggregator::default();
        for e in &events {
            agg.add(e.service(), e, settings.latency_ms(e));
        }
        black_box(agg.into_deltas(&specs));
    });
    let tree_copy = measure(&mut c, "tree + COPY row (attributes written again)", || {
        let events: Vec<LogEvent> = records
            .iter()
            .map(|r| LogEvent::from_json(black_box(r)).unwrap())
            .collect();
        let mut out = Vec::with_capacity(events.len() * 512);
        for e in &events {
            // What the encoder did before: the fields copied, the attributes serialised.
            for f in [&e.event_id, &e.service, &e.component, &e.host, &e.message] {
                out.extend_from_slice(f.as_bytes());
            }
            serde_json::to_writer(&mut out, &e.attributes).unwrap();
        }
        black_box(out);
    });
    c.final_summary();
    let bytes: usize = records.iter().map(Vec::len).sum();
    println!(
        "{RECORDS} generator records, {} bytes each on average; µs per record and × the ceiling:",
        bytes / RECORDS
    );
    for (name, mean) in [
        ("ceiling (syntax only)", ceiling),
        ("tree: LogEvent::from_json", tree),
        ("raw: RawEvent::from_json", raw),
        ("tree + COPY row", tree_copy),
        ("raw + COPY row", raw_copy),
        ("raw + windows", raw_windows),
    ] {
        println!(
            "  {name:<28} {:>6.3} µs = {:.2} x",
            mean * 1e6,
            mean / ceiling
        );
    }
    println!(
        "raw reads at {:.2} x the tree's cost; with the COPY row {:.2} x",
        raw / tree,
        raw_copy / tree_copy
    );
    println!(
        "attributes sent as the tree's object, reordered for jsonb: {same} of {RECORDS} records"
    );
}
