//! The whole-pipeline load test behind `./load-test.sh`: it drives a running stack, counts loss and
//! duplicates by event id against PostgreSQL, measures bare-client ceilings in the same run, and
//! writes a report a person can read.
//!
//! `args` is the command line (scenarios, addresses, thresholds); `stack` talks to the stack (the
//! gateway's generator control, the collector's metrics, the offsets in PostgreSQL, `/proc`);
//! `sample` records one row per second and shows progress; `scenario` turns a scenario into rate
//! segments run through the generators; `ingest` is the HTTP scenario (open loop, coordinated
//! omission corrected); `verify` reads the run back from Kafka and looks every id up in PostgreSQL;
//! `ceiling` measures the produce, consume and COPY ceilings, `paced` the same bare clients at the
//! rate the pipeline held (with the operator's librdkafka options, `options`); `summary` judges the run and writes
//! `summary.md`; `report` draws the charts and the CSV. `run` below ties them together; every loop is bounded by the scenario's plan and its timeouts.
//!
//! The storage benchmark (`./storage-bench.sh`) is its own crate, `storage-bench/`, and the fault
//! suite's report is in `fault-suite/report/`; the latter draws its charts with `report` here.

// Functions stay under 100 lines, as in the services (clippy.toml).
#![warn(clippy::too_many_lines)]
// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit.
#![warn(clippy::unwrap_used)]

pub mod args;
pub mod ceiling;
pub mod cpu;
pub mod ingest;
pub mod options;
pub mod paced;
pub mod report;
pub mod sample;
pub mod scenario;
pub mod stack;
mod summary;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use args::{Args, Scenario};
use ceiling::Ceilings;
use sample::{Base, Sample, Sampler};
use scenario::Outcome;
use stack::Stack;
use summary::Results;

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The seconds a scenario is planned to take (for the progress bar).
fn planned_secs(a: &Args) -> u64 {
    match a.scenario {
        Scenario::Steady | Scenario::Soak | Scenario::Ingest => a.duration_secs(),
        Scenario::Burst => 90,
        Scenario::Ramp => {
            let steps = (a.max_rate.saturating_sub(a.base_rate())) / a.step_rate.max(1) + 1;
            steps * a.step_secs + a.hold_secs
        }
    }
}

/// Start from a drained pipeline, so the run's records begin at the stored offsets: wait until the
/// collector's lag is 0 on every partition, for at most `timeout_secs`.
async fn wait_drained_before(stack: &Stack, timeout_secs: u64) -> anyhow::Result<()> {
    let mut waited = 0;
    loop {
        let m = stack
            .collector_metrics()
            .await
            .context("the collector's metrics (--collector)")?;
        if m.lag.values().all(|l| *l == 0) {
            return Ok(());
        }
        waited += 1;
        if waited > timeout_secs {
            bail!(
                "the collector still has a backlog from before the run (lag {:?})",
                m.lag
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The bare produce and consume of the run's own records, and a COPY of its rows, in the same run.
async fn measure_ceilings(
    args: &Args,
    stack: &Stack,
    partitions: i32,
    rb: &verify::ReadBack,
    pace: Option<ceiling::Pace>,
    conn: &mut sqlx::pool::PoolConnection<sqlx::Postgres>,
) -> Ceilings {
    let mut ceilings = Ceilings::default();
    let meter = cpu::CpuMeter::for_ceilings(&stack.processes);
    let n = args.ceiling_events.min(rb.records as usize).max(1);
    println!("ceilings: bare produce and consume of {n} of the run's records, COPY of its rows");
    match ceiling::kafka(&args.brokers, partitions, rb.payloads.clone(), n, &meter).await {
        Ok((p, c, cpu)) => {
            ceilings.produce = Some(p);
            ceilings.consume = Some(c);
            ceilings.cpu.extend(cpu);
        }
        Err(e) => ceilings.notes.push(format!("Kafka ceilings failed: {e:#}")),
    }
    match ceiling::copy(conn, n, &meter).await {
        Ok((c, cpu)) => {
            ceilings.copy = Some(c);
            ceilings.cpu.push(cpu);
        }
        Err(e) => ceilings.notes.push(format!("COPY ceiling failed: {e:#}")),
    }
    let Some(pace) = pace else {
        return ceilings;
    };
    println!(
        "ceilings: the bare stages paced at {:.0} events/s for {:.0} s, COPY in batches of {}",
        pace.rate, pace.secs, pace.batch_rows
    );
    ceilings.pace = Some(pace);
    let payloads = rb.payloads.clone();
    match paced::produce_consume(&args.brokers, partitions, payloads, pace, &meter).await {
        Ok(cpu) => ceilings.paced.push(cpu),
        Err(e) => ceilings
            .notes
            .push(format!("paced produce + consume failed: {e:#}")),
    }
    match paced::copy_batches(conn, n, pace.batch_rows, &meter).await {
        Ok(cpu) => ceilings.paced.push(cpu),
        Err(e) => ceilings.notes.push(format!("paced COPY failed: {e:#}")),
    }
    ceilings
}

/// The pace the pipeline held, for the paced stages: its stored rate over the measured stretch
/// and its writer's mean batch.
fn held_pace(
    args: &Args,
    measured: Option<&scenario::Kept>,
    samples: &[Sample],
) -> Option<ceiling::Pace> {
    let k = measured.filter(|k| k.stored_rate >= 1.0)?;
    let (_, mean, _) = cpu::run_writer(samples)?;
    (args.paced_ceiling_secs > 0).then(|| ceiling::Pace {
        rate: k.stored_rate,
        batch_rows: mean.round().max(1.0) as usize,
        secs: args.paced_ceiling_secs as f64,
    })
}

/// The scenario's load, until it ends or the tool is interrupted (Ctrl-C or SIGTERM stop the
/// generators first).
async fn drive(
    stack: &Stack,
    sampler: &Sampler,
    args: &Args,
) -> anyhow::Result<(Outcome, Option<ingest::IngestResult>)> {
    let load = async {
        if args.scenario == Scenario::Ingest {
            let r = ingest::run(args).await?;
            let seg = scenario::Segment {
                label: "ingest".into(),
                rate: args.requests_per_second * args.events_per_request as u64,
                start: 0.0,
                end: sampler.elapsed(),
            };
            let outcome = Outcome {
                segments: vec![seg.clone()],
                measured: Some(seg),
                ..Outcome::default()
            };
            anyhow::Ok((outcome, Some(r)))
        } else {
            Ok((scenario::run(stack, sampler, args).await?, None))
        }
    };
    // Ctrl-C or SIGTERM stops the generators before the load test exits: a run must not go on
    // generating after the tool that asked for it is gone.
    let loaded = tokio::select! {
        r = load => r,
        s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}; the generators were stopped")),
    };
    loaded
}

/// Runs the scenario, writes the report; Ok(true) when every threshold was met.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    options::check_operator_options()?;
    let report_dir = args.report_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "load-test-reports/{}",
            chrono::Local::now().format("%Y-%m-%d-%H%M%S")
        ))
    });
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("create {}", report_dir.display()))?;
    let stack = Arc::new(Stack::connect(&args).await?);
    let status = stack
        .status()
        .await
        .context("the gateway's generator status (is a stack up? ./load-test.sh starts one)")?;
    if status.state == "running" {
        bail!("a generation run is in progress; stop it first (POST /api/v1/generator/stop)");
    }
    let partitions = verify::partitions(&args.brokers, &args.topic)?;

    wait_drained_before(&stack, args.drain_timeout_secs).await?;
    let mut start_offsets = stack.stored_offsets().await?;
    for p in 0..partitions {
        start_offsets.entry(p).or_insert(0);
    }
    let m0 = stack.collector_metrics().await?;
    let base = Base {
        generated: status.events_generated,
        acked: status.events_acked,
        failed: status.events_failed,
        consumed: m0.consumed,
        offsets: start_offsets.clone(),
    };
    let run_began = chrono::Utc::now();
    println!(
        "load test {:?}: gateway {}, collector {}, broker {} ({partitions} partitions), report {}",
        args.scenario,
        args.gateway,
        args.collector,
        args.brokers,
        report_dir.display()
    );
    let sampler = Sampler::start(Arc::clone(&stack), base, planned_secs(&args));

    let (outcome, ingest) = match drive(&stack, &sampler, &args).await {
        Ok(x) => x,
        Err(e) => {
            let _ = stack.stop().await;
            sampler.finish().await;
            return Err(e);
        }
    };
    let load_end = sampler.elapsed();
    println!("load done after {load_end:.0} s; waiting for the pipeline to store everything");
    let drain_secs = scenario::drain(&sampler, Duration::from_secs(args.drain_timeout_secs)).await;
    let measured = outcome
        .measured
        .clone()
        .map(|m| scenario::kept(&sampler, m.start, m.end));
    let samples = sampler.finish().await;

    println!("reading the run back from Kafka and looking every id up in PostgreSQL");
    let end_offsets = stack.stored_offsets().await?;
    let (b, t, s, n) = (
        args.brokers.clone(),
        args.topic.clone(),
        start_offsets.clone(),
        args.ceiling_events,
    );
    let rb =
        tokio::task::spawn_blocking(move || verify::read_back(&b, &t, &s, &end_offsets, n, true))
            .await??;
    let mut conn = stack.db.acquire().await?;
    let verdict = verify::compare(&mut conn, &rb, run_began).await?;

    let pace = held_pace(&args, measured.as_ref(), &samples);
    let ceilings = if args.no_ceilings || rb.payloads.is_empty() {
        Ceilings::default()
    } else {
        measure_ceilings(&args, &stack, partitions, &rb, pace, &mut conn).await
    };
    drop(conn);

    let acked_total = samples.last().map(|s| s.acked).unwrap_or(0);
    let r = Results {
        args: &args,
        samples: &samples,
        outcome: &outcome,
        ingest: ingest.as_ref(),
        verdict: &verdict,
        ceilings: &ceilings,
        measured,
        drain_secs,
        load_end,
        run_began,
        acked_total,
    };
    write_report(&r, &samples, &report_dir)
}

/// The report folder (`summary.md`, `samples.csv`, charts) and the summary printed, with one
/// result line in the form the test command sums up; true when every threshold was met.
fn write_report(
    r: &Results<'_>,
    samples: &[Sample],
    report_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    let (summary, ok) = r.summary();
    std::fs::write(report_dir.join("summary.md"), &summary)?;
    std::fs::write(report_dir.join("samples.csv"), report::csv(samples))?;
    r.charts(report_dir);
    println!("\n{summary}");
    println!("report: {}", report_dir.display());
    // One result line in the form the test command sums up.
    let met = summary.lines().filter(|l| l.starts_with("- met:")).count();
    let not_met = summary
        .lines()
        .filter(|l| l.starts_with("- NOT MET:"))
        .count();
    println!("load-test: {met} passed, {not_met} failed");
    Ok(ok)
}
