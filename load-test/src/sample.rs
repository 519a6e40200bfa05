//! One row per second while a scenario runs: what the generators made and Kafka acknowledged (the
//! gateway's totals), what the collector consumed (its counter) and stored (the offsets committed
//! with the rows in PostgreSQL), the lag per partition, and each process's CPU and RSS. Values are
//! totals since the run began; rates are their differences. A status line per second and a
//! progress bar show the run as it goes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::stack::{pids_named, usage_of, Stack, Writer};

#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the run began.
    pub t: f64,
    /// The rate asked of the generators at this moment (0 when idle).
    pub requested: u64,
    pub generated: u64,
    pub acked: u64,
    pub failed: u64,
    pub consumed: u64,
    pub stored: u64,
    pub lag: BTreeMap<i32, i64>,
    /// Per process: CPU percent of one core over the last second, RSS bytes.
    pub procs: BTreeMap<String, (f64, u64)>,
    /// Per process: CPU seconds used so far (the process's own total, not since the run began).
    pub cpu_secs: BTreeMap<String, f64>,
    /// The collector's writer, its own totals (not since the run began).
    pub writer: Writer,
}

impl Sample {
    pub fn lag_total(&self) -> i64 {
        self.lag.values().sum()
    }
}

/// Totals at the moment the run began; samples are relative to them.
#[derive(Debug, Clone, Default)]
pub struct Base {
    pub generated: u64,
    pub acked: u64,
    pub failed: u64,
    pub consumed: u64,
    pub offsets: BTreeMap<i32, i64>,
}

pub struct Sampler {
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub requested: Arc<AtomicU64>,
    pub started: Instant,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(stack: Arc<Stack>, base: Base, planned_secs: u64) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let requested = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let task = tokio::spawn(sample_loop(
            stack,
            base,
            planned_secs,
            Arc::clone(&samples),
            Arc::clone(&requested),
            Arc::clone(&stop),
            started,
        ));
        Self {
            samples,
            requested,
            started,
            stop,
            task,
        }
    }

    pub fn set_rate(&self, rate: u64) {
        self.requested.store(rate, Ordering::Relaxed);
    }

    pub fn last(&self) -> Sample {
        self.samples
            .lock()
            .expect("samples lock")
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// The newest sample taken at or before `t` seconds.
    pub fn at(&self, t: f64) -> Sample {
        let s = self.samples.lock().expect("samples lock");
        s.iter()
            .rev()
            .find(|x| x.t <= t)
            .or_else(|| s.first())
            .cloned()
            .unwrap_or_default()
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits for the next sample after now.
    pub async fn next(&self) -> Sample {
        let n = self.samples.lock().expect("samples lock").len();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let s = self.samples.lock().expect("samples lock");
            if s.len() > n {
                return s.last().cloned().unwrap_or_default();
            }
        }
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner().expect("samples lock"))
            .unwrap_or_else(|a| a.lock().expect("samples lock").clone())
    }
}

async fn sample_loop(
    stack: Arc<Stack>,
    base: Base,
    planned_secs: u64,
    samples: Arc<Mutex<Vec<Sample>>>,
    requested: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
) {
    let bar = ProgressBar::new(planned_secs);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cpu: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut prev = Sample::default();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let mut s = Sample {
            t,
            requested: requested.load(Ordering::Relaxed),
            ..prev.clone()
        };
        if let Ok(g) = stack.status().await {
            s.generated = g.events_generated.saturating_sub(base.generated);
            s.acked = g.events_acked.saturating_sub(base.acked);
            s.failed = g.events_failed.saturating_sub(base.failed);
        }
        if let Ok(m) = stack.collector_metrics().await {
            s.consumed = m.consumed.saturating_sub(base.consumed);
            s.lag = m.lag;
            s.writer = m.writer;
        }
        if let Ok(offsets) = stack.stored_offsets().await {
            s.stored = offsets
                .iter()
                .map(|(p, o)| (o - base.offsets.get(p).copied().unwrap_or(0)).max(0) as u64)
                .sum();
        }
        s.procs.clear();
        s.cpu_secs.clear();
        // PostgreSQL does the storing's other half: its processes are summed as one row (local
        // servers only; a remote database is not sampled).
        let postgres = ("postgres".to_string(), pids_named("postgres"));
        let named = stack.processes.iter().map(|(n, p)| (n.clone(), vec![*p]));
        for (name, pids) in named.chain(std::iter::once(postgres)) {
            let name = &name;
            if let Some((cpu, rss)) = usage_of(&pids) {
                let pct = match last_cpu.get(name) {
                    // A summed process that exited takes its CPU time with it: never below 0.
                    Some((c0, t0)) if t > *t0 => ((cpu - c0) / (t - t0) * 100.0).max(0.0),
                    _ => 0.0,
                };
                last_cpu.insert(name.clone(), (cpu, t));
                s.procs.insert(name.clone(), (pct, rss));
                s.cpu_secs.insert(name.clone(), cpu);
            }
        }
        let dt = (s.t - prev.t).max(0.001);
        let line = format!(
            "t={:>5.0}s asked {:>7}/s acked {:>7.0}/s stored {:>7.0}/s lag {:>8} | acked {} stored {} failed {}",
            s.t,
            s.requested,
            (s.acked.saturating_sub(prev.acked)) as f64 / dt,
            (s.stored.saturating_sub(prev.stored)) as f64 / dt,
            s.lag_total(),
            s.acked,
            s.stored,
            s.failed,
        );
        if bar.is_hidden() {
            println!("{line}");
        } else {
            bar.println(&line);
        }
        bar.set_position((s.t as u64).min(planned_secs));
        bar.set_message(format!("stored {}", s.stored));
        samples.lock().expect("samples lock").push(s.clone());
        prev = s;
    }
    bar.finish_and_clear();
}
