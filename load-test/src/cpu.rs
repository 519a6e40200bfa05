//! CPU per event: on a machine where the pipeline is CPU-bound, its throughput is the cores
//! divided by what one event costs in every process it crosses. This reads each process's CPU
//! seconds (`/proc`) over the run and over each ceiling phase, and divides by the events moved.
//!
//! - The run: every process of the stack (`--run-dir`) and PostgreSQL, from the first sample to the
//!   last (the drain included), per stored event.
//! - The bare stages, in the same run: the bare client (this process, doing nothing else then), the
//!   broker and PostgreSQL, during the bare produce, the bare consume and the one bulk COPY.
//! - The bare limit: cores ÷ the sum of the bare stages' CPU per event, the rate a pipeline that
//!   cost no more than its bare stages would reach on this machine.

use std::collections::BTreeMap;

use crate::sample::Sample;
use crate::stack::{pids_named, proc_usage, usage_of};

/// CPU seconds per process.
pub type CpuSecs = BTreeMap<String, f64>;

/// The process the bare stages run in.
pub const BARE_CLIENT: &str = "bare client";

/// What a span of work cost: the events it moved and each process's CPU seconds meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseCpu {
    pub phase: &'static str,
    pub events: u64,
    pub secs: CpuSecs,
}

impl PhaseCpu {
    /// Microseconds of CPU per event in `process` (none when it was not measured).
    pub fn us_per_event(&self, process: &str) -> Option<f64> {
        let s = self.secs.get(process)?;
        (self.events > 0).then(|| s / self.events as f64 * 1e6)
    }

    /// Microseconds of CPU per event over every process measured.
    pub fn total_us_per_event(&self) -> f64 {
        if self.events == 0 {
            return 0.0;
        }
        self.secs.values().sum::<f64>() / self.events as f64 * 1e6
    }
}

/// Reads the CPU seconds of a fixed set of processes (and PostgreSQL's, found anew each time).
#[derive(Debug, Clone)]
pub struct CpuMeter {
    named: Vec<(String, u32)>,
}

impl CpuMeter {
    /// The stack's processes worth metering during a ceiling phase (the broker; the services are
    /// idle then) and this process, as the bare client.
    pub fn for_ceilings(processes: &[(String, u32)]) -> Self {
        let mut named: Vec<(String, u32)> = processes
            .iter()
            .filter(|(n, _)| n == "broker")
            .cloned()
            .collect();
        named.push((BARE_CLIENT.to_owned(), std::process::id()));
        Self { named }
    }

    pub fn read(&self) -> CpuSecs {
        let mut out: CpuSecs = self
            .named
            .iter()
            .filter_map(|(n, pid)| proc_usage(*pid).map(|(cpu, _)| (n.clone(), cpu)))
            .collect();
        if let Some((cpu, _)) = usage_of(&pids_named("postgres")) {
            out.insert("postgres".into(), cpu);
        }
        out
    }

    /// The phase since `before` (a `read`), for `events` events.
    pub fn phase(&self, phase: &'static str, events: u64, before: &CpuSecs) -> PhaseCpu {
        PhaseCpu {
            phase,
            events,
            secs: spent(before, &self.read()),
        }
    }
}

/// CPU seconds spent between two readings, per process read both times (never below 0: a
/// PostgreSQL backend that exited takes its CPU time with it).
pub fn spent(before: &CpuSecs, after: &CpuSecs) -> CpuSecs {
    after
        .iter()
        .filter_map(|(n, a)| before.get(n).map(|b| (n.clone(), (a - b).max(0.0))))
        .collect()
}

/// The run's cost: each process's CPU from the first sample to the last, per event stored by then.
pub fn run_cpu(samples: &[Sample]) -> Option<PhaseCpu> {
    let (first, last) = (samples.first()?, samples.last()?);
    Some(PhaseCpu {
        phase: "run",
        events: last.stored,
        secs: spent(&first.cpu_secs, &last.cpu_secs),
    })
}

/// What the collector's writer did over the run: batches committed, their mean size in events
/// and their mean commit in milliseconds. None when no batch committed (or the collector restarted,
/// its totals starting again from zero).
pub fn run_writer(samples: &[Sample]) -> Option<(u64, f64, f64)> {
    let (first, last) = (samples.first()?.writer, samples.last()?.writer);
    let batches = last.batches.checked_sub(first.batches).filter(|b| *b > 0)?;
    let events = last.events.checked_sub(first.events)?;
    let secs = last.commit_secs - first.commit_secs;
    Some((
        batches,
        events as f64 / batches as f64,
        secs / batches as f64 * 1e3,
    ))
}

/// Cores ÷ the bare stages' CPU per event summed: events a second a pipeline costing no more than
/// its bare stages would reach here. None until every stage was measured.
pub fn bare_limit(cores: f64, stages: &[PhaseCpu]) -> Option<f64> {
    let us: f64 = stages.iter().map(PhaseCpu::total_us_per_event).sum();
    (stages.len() >= 3 && us > 0.0).then(|| cores / (us * 1e-6))
}

/// The cores this machine has.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(phase: &'static str, events: u64, secs: &[(&str, f64)]) -> PhaseCpu {
        PhaseCpu {
            phase,
            events,
            secs: secs.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        }
    }

    #[test]
    fn the_writers_batches_are_the_difference_over_the_run() {
        use crate::stack::Writer;
        let at = |batches, events, commit_secs| Sample {
            writer: Writer {
                batches,
                events,
                commit_secs,
            },
            ..Sample::default()
        };
        let run = [at(10, 1_000, 1.0), at(30, 9_000, 2.0), at(50, 41_000, 3.0)];
        assert_eq!(run_writer(&run), Some((40, 1_000.0, 50.0)));
        assert_eq!(run_writer(&run[..1]), None, "no batch in the run");
        assert_eq!(
            run_writer(&[at(50, 41_000, 3.0), at(5, 100, 0.1)]),
            None,
            "a restarted collector's totals start again"
        );
    }

    #[test]
    fn cpu_per_event_is_seconds_over_events_in_microseconds() {
        let p = phase("run", 100_000, &[("collector", 2.0), ("postgres", 3.0)]);
        assert_eq!(p.us_per_event("collector"), Some(20.0));
        assert_eq!(p.us_per_event("gateway"), None);
        assert!((p.total_us_per_event() - 50.0).abs() < 1e-9);
        assert_eq!(phase("run", 0, &[("x", 1.0)]).us_per_event("x"), None);
    }

    #[test]
    fn spent_leaves_out_what_was_read_once_and_never_goes_below_zero() {
        let before = CpuSecs::from([("a".into(), 1.0), ("b".into(), 5.0)]);
        let after = CpuSecs::from([("a".into(), 3.5), ("b".into(), 4.0), ("c".into(), 9.0)]);
        assert_eq!(
            spent(&before, &after),
            CpuSecs::from([("a".into(), 2.5), ("b".into(), 0.0)])
        );
    }

    #[test]
    fn the_bare_limit_is_cores_over_the_summed_stage_costs() {
        // 5 + 2 + 3 µs per event on two cores: 200,000 events a second.
        let stages = [
            phase("produce", 1_000, &[(BARE_CLIENT, 0.005)]),
            phase("consume", 1_000, &[(BARE_CLIENT, 0.002)]),
            phase("copy", 1_000, &[("postgres", 0.003)]),
        ];
        let limit = bare_limit(2.0, &stages).unwrap();
        assert!((limit - 200_000.0).abs() < 1e-3, "{limit}");
        assert_eq!(bare_limit(2.0, &stages[..2]), None);
    }

    #[test]
    fn the_meter_reads_this_process_as_the_bare_client() {
        let m = CpuMeter::for_ceilings(&[("collector".into(), 1), ("broker".into(), u32::MAX)]);
        let r = m.read();
        assert!(r.contains_key(BARE_CLIENT), "{r:?}");
        assert!(
            !r.contains_key("collector"),
            "only the broker and the client are metered"
        );
    }
}
