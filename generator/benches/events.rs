//! Making one event's payload, the generator's hot path before the producer, with criterion.
//!
//!   cargo bench -p logpipe-generator --bench events
//!
//! Reference: `serde_json` writing an event that is already built (a pre-made `LogEvent`), the
//! least any generator of the same payloads must do per event. Generator: `EventFactory::draw` and
//! `Draft::write_json`, what the engine runs per event. Also the way the engine made payloads
//! before issue 32 (`next_event`, a `LogEvent` with its own strings and attribute map, then
//! serde), for the A/B in one run. Each is printed per event and as a ratio to the reference.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{black_box, Criterion};
use logpipe_generator::events::{EventFactory, Profile};

/// Runs `f` under criterion and keeps its own total, so the means can be compared at the end.
fn measure(c: &mut Criterion, name: &str, mut f: impl FnMut()) -> f64 {
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
    let now = Utc::now();
    let buf = RefCell::new(Vec::with_capacity(1024));

    let premade: Vec<_> = {
        let mut f = EventFactory::new(1, "bench", Profile::Steady);
        (0..1024)
            .map(|_| f.next_event(now, Duration::ZERO))
            .collect()
    };
    let mut i = 0;
    let reference = measure(
        &mut c,
        "reference: serde_json of a pre-made LogEvent",
        || {
            let mut b = buf.borrow_mut();
            b.clear();
            serde_json::to_writer(&mut *b, black_box(&premade[i % premade.len()])).unwrap();
            i += 1;
            black_box(b.len());
        },
    );

    let mut f = EventFactory::new(1, "bench", Profile::Steady);
    let before = measure(&mut c, "before: next_event, then serde_json", || {
        let e = f.next_event(now, Duration::ZERO);
        let mut b = buf.borrow_mut();
        b.clear();
        serde_json::to_writer(&mut *b, &e).unwrap();
        black_box((b.len(), e.event_id.len()));
    });

    let mut f = EventFactory::new(1, "bench", Profile::Steady);
    let generator = measure(&mut c, "generator: draw, then write_json", || {
        let d = f.draw(now, Duration::ZERO);
        let mut b = buf.borrow_mut();
        b.clear();
        d.write_json(&mut b, None);
        black_box((b.len(), d.id_text().as_str().len()));
    });

    c.final_summary();
    let ns = |s: f64| s * 1e9;
    println!(
        "per event: reference {:.0} ns, before {:.0} ns, generator {:.0} ns",
        ns(reference),
        ns(before),
        ns(generator)
    );
    println!(
        "ratio reference/generator: {:.2} (before: {:.2}); generator is {:.2}x faster than before",
        reference / generator,
        reference / before,
        before / generator
    );
}
