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

/// Stored and acknowledged rates over a stretch, and how the lag moved across it.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub acked_rate: f64,
    pub stored_rate: f64,
    pub lag_start: i64,
    pub lag_end: i64,
    /// Least-squares slope of the total lag over the stretch, records per second.
    pub lag_slope: f64,
}

impl Kept {
    /// Kept up: at least 95 % of the asked rate stored, and the lag not growing — its fitted slope
    /// under 1 % of the asked rate per second (at 70,000/s: under 700 records/s, 42,000 a minute).
    /// The slope, not the two ends, because the lag swings by a batch or two from one second to
    /// the next.
    pub fn kept_up(&self, rate: u64) -> bool {
        self.stored_rate >= 0.95 * rate as f64 && self.lag_slope < 0.01 * rate as f64
    }
}

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub fn kept(sampler: &Sampler, from: f64, to: f64) -> Kept {
    let a = sampler.at(from);
    let b = sampler.at(to);
    let dt = (b.t - a.t).max(0.001);
    let lag: Vec<(f64, f64)> = sampler
        .samples
        .lock()
        .expect("samples lock")
        .iter()
        .filter(|s| s.t >= a.t && s.t <= b.t)
        .map(|s| (s.t, s.lag_total() as f64))
        .collect();
    Kept {
        acked_rate: b.acked.saturating_sub(a.acked) as f64 / dt,
        stored_rate: b.stored.saturating_sub(a.stored) as f64 / dt,
        lag_start: a.lag_total(),
        lag_end: b.lag_total(),
        lag_slope: slope(&lag),
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
            "step {rate}/s: acknowledged {:.0}/s, stored {:.0}/s, lag {} -> {} ({:+.0}/s): {}",
            k.acked_rate,
            k.stored_rate,
            k.lag_start,
            k.lag_end,
            k.lag_slope,
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
        "hold {hold}/s for {} s: acknowledged {:.0}/s, stored {:.0}/s, lag {} -> {} ({:+.0}/s): {}",
        args.hold_secs,
        k.acked_rate,
        k.stored_rate,
        k.lag_start,
        k.lag_end,
        k.lag_slope,
        if k.kept_up(hold) { "held" } else { "not held" }
    ));
    if k.kept_up(hold) {
        out.held_rate = Some(hold);
    }
    out.measured = Some(s.clone());
    out.segments.push(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_is_its_gradient_and_of_noise_about_flat_is_small() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10)
            .map(|x| (x as f64, if x % 2 == 0 { 100.0 } else { 0.0 }))
            .collect();
        assert!(slope(&flat).abs() < 10.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }

    #[test]
    fn a_step_keeps_up_when_nearly_all_is_stored_and_the_lag_is_flat() {
        let k = |stored_rate, lag_slope| Kept {
            acked_rate: 70_000.0,
            stored_rate,
            lag_start: 0,
            lag_end: 0,
            lag_slope,
        };
        assert!(k(69_000.0, 200.0).kept_up(70_000));
        assert!(!k(60_000.0, 0.0).kept_up(70_000));
        assert!(!k(69_000.0, 2_000.0).kept_up(70_000));
    }
}
