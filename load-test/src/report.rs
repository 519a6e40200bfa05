//! The report folder: `summary.md` (configuration, commit, machine, ceilings and ratios, loss,
//! latency, processes, thresholds), `samples.csv` (one row per second) and PNG charts drawn with
//! plotters (rates per stage, lag, latency percentiles, RSS per process, CPU per event by process).

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::sample::Sample;

/// One line series: name and (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Every key any sample has, sorted (partitions, process names).
fn keys<T: Ord>(samples: &[Sample], f: impl Fn(&Sample) -> Vec<T>) -> Vec<T> {
    let set: std::collections::BTreeSet<T> = samples.iter().flat_map(f).collect();
    set.into_iter().collect()
}

pub fn csv(samples: &[Sample]) -> String {
    let partitions = keys(samples, |s| s.lag.keys().copied().collect());
    let procs = keys(samples, |s| s.procs.keys().cloned().collect());
    let mut out =
        String::from("t_secs,requested_per_sec,generated,acked,failed,consumed,stored,lag_total");
    for p in &partitions {
        let _ = write!(out, ",lag_p{p}");
    }
    for p in &procs {
        let _ = write!(out, ",{p}_cpu_pct,{p}_rss_bytes");
    }
    out.push('\n');
    for s in samples {
        let _ = write!(
            out,
            "{:.2},{},{},{},{},{},{},{}",
            s.t,
            s.requested,
            s.generated,
            s.acked,
            s.failed,
            s.consumed,
            s.stored,
            s.lag_total()
        );
        for p in &partitions {
            let _ = write!(out, ",{}", s.lag.get(p).copied().unwrap_or(0));
        }
        for p in &procs {
            let (cpu, rss) = s.procs.get(p).copied().unwrap_or_default();
            let _ = write!(out, ",{cpu:.1},{rss}");
        }
        out.push('\n');
    }
    out
}

/// Per-second rate of a counter, smoothed over `window` samples.
pub fn rate_series(
    samples: &[Sample],
    window: usize,
    f: impl Fn(&Sample) -> u64,
) -> Vec<(f64, f64)> {
    let w = window.max(1);
    (w..samples.len())
        .map(|i| {
            let (a, b) = (&samples[i - w], &samples[i]);
            let dt = (b.t - a.t).max(0.001);
            (b.t, f(b).saturating_sub(f(a)) as f64 / dt)
        })
        .collect()
}

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system TrueType font for the charts' text (plotters draws text with ab_glyph from
/// the font's bytes; nothing is fetched). False when no font was found: charts are skipped.
pub fn load_font() -> bool {
    for p in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(p) {
            // plotters keeps the font for the process's life.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

pub fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (1.0_f64, 1.0_f64);
    for (x, y) in pts {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
    }
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max * 1.1)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run began")
        .y_desc(y_label)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    legend_and_save(&mut chart, &root)
}

/// The series' legend in the upper right, then the picture written: how every chart ends.
fn legend_and_save<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    root: &DrawingArea<BitMapBackend<'a>, Shift>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Stacked bars: one bar per column (a phase), one stack per series (a process), each value in
/// `unit`. A series missing from a column adds nothing to it.
pub fn stacked_bars(
    path: &Path,
    title: &str,
    unit: &str,
    columns: &[String],
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let tops: Vec<f64> = (0..columns.len())
        .map(|c| {
            series
                .iter()
                .map(|(_, v)| v.get(c).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let y_max = tops.iter().copied().fold(1.0_f64, f64::max);
    if columns.is_empty() {
        return Ok(());
    }
    // An integer range holds both ends: `0..last` is one segment per column.
    let last = columns.len() as u32 - 1;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d((0..last).into_segmented(), 0.0..y_max * 1.15)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => columns.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(unit)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut bottoms = vec![0.0_f64; columns.len()];
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let bars: Vec<_> = (0..columns.len())
            .map(|c| {
                let v = values.get(c).copied().unwrap_or(0.0);
                let (lo, hi) = (bottoms[c], bottoms[c] + v);
                bottoms[c] = hi;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(c as u32), lo),
                        (SegmentValue::Exact(c as u32 + 1), hi),
                    ],
                    colour.filled(),
                );
                bar.set_margin(0, 0, 30, 30);
                bar
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled()));
    }
    legend_and_save(&mut chart, &root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, acked: u64) -> Sample {
        Sample {
            t,
            acked,
            ..Sample::default()
        }
    }

    #[test]
    fn stacked_bars_draw_a_png_and_nothing_for_no_columns() {
        if !load_font() {
            return; // no font on this machine: charts are skipped, as in a run
        }
        let dir = std::env::temp_dir().join(format!("lt-bars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bars.png");
        let columns = vec!["pipeline (run)".to_owned(), "bare copy".to_owned()];
        let series = vec![
            ("collector".to_owned(), vec![5.5, 0.0]),
            ("postgres".to_owned(), vec![8.1, 6.0]),
        ];
        stacked_bars(
            &path,
            "CPU per event by process",
            "µs per event",
            &columns,
            &series,
        )
        .unwrap();
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let none = dir.join("none.png");
        stacked_bars(&none, "t", "u", &[], &[]).unwrap();
        assert!(!none.exists());
        if std::env::var_os("LOGPIPE_KEEP_CHART").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn rates_are_differences_over_the_window() {
        let s = [sample(0.0, 0), sample(1.0, 100), sample(2.0, 300)];
        let r = rate_series(&s, 1, |s| s.acked);
        assert_eq!(r, vec![(1.0, 100.0), (2.0, 200.0)]);
        assert_eq!(rate_series(&s, 2, |s| s.acked), vec![(2.0, 150.0)]);
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_sample() {
        let csv = csv(&[sample(0.0, 0), sample(1.0, 5)]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("t_secs,requested_per_sec"));
        assert!(lines[2].starts_with("1.00,0,0,5,"));
    }
}
