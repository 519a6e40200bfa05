//! Scenarios as rate segments driven through the generators: each segment is one bounded run
//! (`duration_secs`), so a load test that dies leaves nothing generating for long. The ramp is
//! decided step by step from the samples; the others are fixed plans.

use std::time::Duration;

use anyhow::Context;

use crate::args::{Args, Scenario};
use crate::sample::Sampler;
use crate::stack::Stack;

/// One stretch of load at one rate, in seconds since the run began.
#[derive(Debug, Clone)]
pub struct Segment {
    pub label: String,
    pub rate: u64,
    pub start: f64,
    pub end: f64,
}

/// What a scenario found beyond the common figures.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub segments: Vec<Segment>,
    /// The segment whose stored rate is the run's headline (the ramp's hold, else the whole load).
    pub measured: Option<Segment>,
    pub notes: Vec<String>,
    /// Ramp: the highest rate kept up with, and the first that was not.
    pub held_rate: Option<u64>,
    pub knee_rate: Option<u64>,
    /// Burst: seconds from the end of the burst until the backlog was stored.
    pub recovery_secs: Option<f64>,
}

/// Stored and acknowledged rates over a stretch, and whether the lag grew across it.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub acked_rate: f64,
    pub stored_rate: f64,
    pub lag_start: i64,
    pub lag_end: i64,
}

impl Kept {
    /// Kept up: at least 95 % of the asked rate stored, and the lag at the end under a second of
    /// load or no larger than at the start.
    pub fn kept_up(&self, rate: u64) -> bool {
        self.stored_rate >= 0.95 * rate as f64
            && (self.lag_end <= self.lag_start || (self.lag_end as f64) < rate as f64)
    }
}

pub fn kept(sampler: &Sampler, from: f64, to: f64) -> Kept {
    let a = sampler.at(from);
    let b = sampler.at(to);
    let dt = (b.t - a.t).max(0.001);
    Kept {
        acked_rate: b.acked.saturating_sub(a.acked) as f64 / dt,
        stored_rate: b.stored.saturating_sub(a.stored) as f64 / dt,
        lag_start: a.lag_total(),
        lag_end: b.lag_total(),
    }
}

/// Runs one segment: starts the generators for `secs` at `rate`, waits it out, stops them.
async fn segment(
    stack: &Stack,
    sampler: &Sampler,
    label: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Segment> {
    // A run still winding down from the previous segment would refuse the start.
    let _ = stack.stop().await;
    let start = sampler.elapsed();
    stack
        .start(rate, secs)
        .await
        .with_context(|| format!("segment {label}"))?;
    sampler.set_rate(rate);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    sampler.set_rate(0);
    let end = sampler.elapsed();
    Ok(Segment {
        label: label.into(),
        rate,
        start,
        end,
    })
}

/// Waits until the collector's lag is 0 and everything acknowledged is stored (two samples in a
/// row), or `timeout`; returns the seconds it took, or None when it timed out.
pub async fn drain(sampler: &Sampler, timeout: Duration) -> Option<f64> {
    let from = sampler.elapsed();
    let mut good = 0;
    while sampler.elapsed() - from < timeout.as_secs_f64() {
        let s = sampler.next().await;
        if s.lag_total() == 0 && s.stored >= s.acked {
            good += 1;
            if good >= 2 {
                return Some(s.t - from);
            }
        } else {
            good = 0;
        }
    }
    None
}

pub async fn run(stack: &Stack, sampler: &Sampler, args: &Args) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let base = args.base_rate();
    match args.scenario {
        Scenario::Steady | Scenario::Soak => {
            let s = segment(stack, sampler, "steady", base, args.duration_secs()).await?;
            out.measured = Some(s.clone());
            out.segments.push(s);
        }
        Scenario::Burst => {
            let burst = base * args.burst_factor;
            for (label, rate) in [("before", base), ("burst", burst), ("after", base)] {
                let s = segment(stack, sampler, label, rate, 30).await?;
                if label == "burst" {
                    out.notes.push(format!(
                        "burst of {burst}/s: acknowledged {:.0}/s, stored {:.0}/s during it",
                        kept(sampler, s.start, s.end).acked_rate,
                        kept(sampler, s.start, s.end).stored_rate
                    ));
                }
                out.segments.push(s);
            }
            let burst_end = out.segments[1].end;
            // The backlog is stored when the lag is 0 again; measured from the burst's end.
            let samples = sampler.samples.lock().expect("samples lock").clone();
            out.recovery_secs = samples
                .iter()
                .filter(|s| s.t > burst_end + 1.0)
                .find(|s| s.lag_total() == 0)
                .map(|s| s.t - burst_end);
            out.measured = Some(Segment {
                label: "whole run".into(),
                rate: (base * 60 + burst * 30) / 90,
                start: out.segments[0].start,
                end: out.segments[2].end,
            });
        }
        Scenario::Ramp => ramp(stack, sampler, args, &mut out).await?,
        Scenario::Ingest => unreachable!("the ingest scenario does not drive the generators"),
    }
    let _ = stack.stop().await;
    Ok(out)
}

async fn ramp(
    stack: &Stack,
    sampler: &Sampler,
    args: &Args,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let mut rate = args.base_rate();
    let mut held = None;
    while rate <= args.max_rate {
        let s = segment(
            stack,
            sampler,
            &format!("step {rate}"),
            rate,
            args.step_secs,
        )
        .await?;
        // Judge the second half of the step: the first half includes the climb from the last rate.
        let k = kept(sampler, (s.start + s.end) / 2.0, s.end);
        out.notes.push(format!(
            "step {rate}/s: acknowledged {:.0}/s, stored {:.0}/s, lag {} -> {}: {}",
            k.acked_rate,
            k.stored_rate,
            k.lag_start,
            k.lag_end,
            if k.kept_up(rate) {
                "kept up"
            } else {
                "fell behind"
            }
        ));
        out.segments.push(s);
        if !k.kept_up(rate) {
            out.knee_rate = Some(rate);
            if k.acked_rate < 0.95 * rate as f64 {
                out.notes.push(format!(
                    "the knee is at the producer side: Kafka acknowledged {:.0}/s of {rate}/s",
                    k.acked_rate
                ));
            } else {
                out.notes
                    .push("the knee is at the collector: Kafka kept up, storage did not".into());
            }
            break;
        }
        held = Some(rate);
        rate += args.step_rate;
    }
    let Some(hold) = held else {
        out.notes
            .push("no step kept up; nothing to hold (lower --rate)".into());
        return Ok(());
    };
    // Let the backlog of the failed step drain before holding, so the hold starts clean.
    let _ = stack.stop().await;
    if drain(sampler, Duration::from_secs(args.drain_timeout_secs))
        .await
        .is_none()
    {
        out.notes
            .push("the backlog before the hold did not drain in time".into());
    }
    let s = segment(
        stack,
        sampler,
        &format!("hold {hold}"),
        hold,
        args.hold_secs,
    )
    .await?;
    let k = kept(
        sampler,
        s.start + 5.0_f64.min((s.end - s.start) / 4.0),
        s.end,
    );
    out.notes.push(format!(
        "hold {hold}/s for {} s: acknowledged {:.0}/s, stored {:.0}/s, lag {} -> {}: {}",
        args.hold_secs,
        k.acked_rate,
        k.stored_rate,
        k.lag_start,
        k.lag_end,
        if k.kept_up(hold) { "held" } else { "not held" }
    ));
    if k.kept_up(hold) {
        out.held_rate = Some(hold);
    }
    out.measured = Some(s.clone());
    out.segments.push(s);
    Ok(())
}
