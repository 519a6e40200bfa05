//! CPU per event in the drain bench: each phase reads the CPU seconds of this process (the bare
//! client, or the collector run in process), the broker (when it runs on this machine) and
//! PostgreSQL, with the load test's meter. On a machine where the drain is CPU-bound its ceiling is
//! the cores divided by what its bare stages cost per event, all of them measured in the same run:
//! a ceiling that counts what the broker and PostgreSQL take from the same cores, which a rate
//! measured on one thread does not.

use logpipe_load_test::cpu::{CpuMeter, PhaseCpu, BARE_CLIENT};
use logpipe_load_test::stack::pids_named;

/// The meter of every phase: the broker is `LOGPIPE_BENCH_BROKER_PID`, else the first process named
/// `nisshi` or `tansu` (the brokers this project builds); none when neither is found, and the
/// figures then say so.
pub(crate) fn meter() -> CpuMeter {
    let broker = std::env::var("LOGPIPE_BENCH_BROKER_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .or_else(|| {
            ["nisshi", "tansu"]
                .iter()
                .find_map(|n| pids_named(n).first().copied())
        });
    let named: Vec<(String, u32)> = broker
        .map(|p| ("broker".to_owned(), p))
        .into_iter()
        .collect();
    CpuMeter::for_ceilings(&named)
}

/// One phase's µs of CPU per event: this process, the broker, PostgreSQL, and their sum.
pub(crate) fn line(p: &PhaseCpu) -> String {
    let part = |process: &str| {
        p.us_per_event(process)
            .map_or_else(|| "  n/a".to_owned(), |us| format!("{us:>5.2}"))
    };
    format!(
        "{} / {} / {} = {:>5.2} µs",
        part(BARE_CLIENT),
        part("broker"),
        part("postgres"),
        p.total_us_per_event()
    )
}

/// What a drain that stores `stored_share` of its events costs at least, in µs of CPU per event: every
/// event read and parsed (`consume_parse`), and the stored share copied as one bulk COPY costs per row
/// (`copy`).
pub(crate) fn bare_us(consume_parse: &PhaseCpu, copy: &PhaseCpu, stored_share: f64) -> f64 {
    consume_parse.total_us_per_event() + stored_share * copy.total_us_per_event()
}

/// The ceiling and the collector against it, on one line: the bare stages' µs per event, the rate
/// the cores allow at that cost, the collector's rate over it, and its CPU per event over the bare
/// stages' (the ratio issue 32's pipeline goal takes).
pub(crate) fn judged(bare_us: f64, cores: f64, rate: f64, collector: &PhaseCpu) -> String {
    let ceiling = cores / (bare_us * 1e-6);
    format!(
        "bare stages {bare_us:.2} µs/event -> {cores:.0} cores allow {ceiling:>9.0} events/s; \
         collector {:.2} x that rate, {:.2} x its CPU per event",
        rate / ceiling,
        collector.total_us_per_event() / bare_us
    )
}
