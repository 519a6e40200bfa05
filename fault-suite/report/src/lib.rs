//! The fault suite's report (`./fault-suite.sh`, binary `logpipe-fault-report`): the scenario
//! scripts leave in one folder a row each (`rows.tsv`), a once-a-second sample of acknowledged and
//! stored events (`NAME.csv`) and the moments they injected and healed their fault (`NAME.marks`);
//! this reads them, works out each scenario's worst backlog and its time to recover, draws the
//! "acknowledged, not yet stored" chart per scenario and writes `summary.md` with the table.
//! `fault-suite/lib.sh` writes the files; the charts are drawn with the load test's `report`.

// Functions stay under 100 lines, as in the services (clippy.toml).
#![warn(clippy::too_many_lines)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// One scenario's row as its script wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub acked: String,
    pub stored: String,
    pub lost: String,
    pub duplicated: String,
    pub verdict: String,
}

/// One sample: seconds since the scenario began, acknowledged, stored.
pub type Sample = (f64, u64, u64);

/// What the samples say about a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Healing {
    /// The most events acknowledged and not yet stored at once.
    pub max_pending: u64,
    /// Acknowledged and not stored at the last sample (0 once it healed).
    pub pending_at_end: Option<u64>,
    /// Seconds from the last "healed" mark until everything acknowledged by then was stored; None
    /// when the samples never show it (or there is no such mark).
    pub recovery_secs: Option<f64>,
    /// Whether the scenario marked a healing step at all.
    pub healed_mark: bool,
}

pub fn parse_rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 6).then(|| Row {
                name: f[0].to_owned(),
                acked: f[1].to_owned(),
                stored: f[2].to_owned(),
                lost: f[3].to_owned(),
                duplicated: f[4].to_owned(),
                verdict: f[5].to_owned(),
            })
        })
        .collect()
}

pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// "seconds label" lines.
pub fn parse_marks(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|l| {
            let (t, label) = l.split_once(' ')?;
            Some((t.parse().ok()?, label.to_owned()))
        })
        .collect()
}

/// The backlog and the recovery, from the samples and marks.
pub fn healing(samples: &[Sample], marks: &[(f64, String)]) -> Healing {
    let pending = |(_, a, s): &Sample| a.saturating_sub(*s);
    let max_pending = samples.iter().map(pending).max().unwrap_or(0);
    let pending_at_end = samples.last().map(pending);
    let healed_at = marks
        .iter()
        .filter(|(_, l)| l.starts_with("healed"))
        .map(|(t, _)| *t)
        .next_back();
    let recovery_secs = healed_at.and_then(|h| {
        // What had been acknowledged when the fault was undone: the first sample at or after it,
        // or the last one when the scenario ended with the heal.
        let (_, acked_then, _) = samples
            .iter()
            .find(|(t, _, _)| *t >= h)
            .or(samples.last())?;
        match samples.iter().find(|(t, _, s)| *t >= h && s >= acked_then) {
            Some((t, _, _)) => Some((t - h).max(0.0)),
            // Healed after the backlog was already gone (the pipeline had routed around the fault).
            None => samples
                .last()
                .filter(|(t, a, s)| *t < h && s >= a)
                .map(|_| 0.0),
        }
    });
    Healing {
        max_pending,
        pending_at_end,
        recovery_secs,
        healed_mark: healed_at.is_some(),
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Writes `summary.md` and one chart per scenario into `dir`; returns the summary's table and
/// whether every row passed.
pub fn write(dir: &Path) -> anyhow::Result<(String, bool)> {
    let rows = parse_rows(
        &std::fs::read_to_string(dir.join("rows.tsv"))
            .with_context(|| format!("{}/rows.tsv (did any scenario run?)", dir.display()))?,
    );
    let fonts = logpipe_load_test::report::load_font();
    let mut table = String::from(
        "| scenario | acknowledged | stored | lost | duplicated | max not yet stored | recovery | not yet stored at end | result |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut charts = String::new();
    let mut all_passed = !rows.is_empty();
    for row in &rows {
        let samples = parse_samples(&read(dir, &format!("{}.csv", row.name)));
        let marks = parse_marks(&read(dir, &format!("{}.marks", row.name)));
        let h = healing(&samples, &marks);
        let recovery = match (h.healed_mark, h.recovery_secs) {
            (false, _) => "-".to_owned(),
            (true, Some(s)) => format!("{s:.0} s"),
            (true, None) => "not seen".to_owned(),
        };
        let end = h
            .pending_at_end
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        all_passed &= row.verdict == "pass";
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.name,
            row.acked,
            row.stored,
            row.lost,
            row.duplicated,
            h.max_pending,
            recovery,
            end,
            row.verdict
        );
        if fonts && !samples.is_empty() {
            let png = PathBuf::from(format!("{}.png", row.name));
            chart(&dir.join(&png), &row.name, &samples, &marks)?;
            let _ = writeln!(
                charts,
                "\n### {}\n\n![{}]({})",
                row.name,
                row.name,
                png.display()
            );
        }
    }
    let summary = format!(
        "# Fault suite\n\ncommit {}\n\n{}\n\n{}\n\n\
         Lost and duplicated are counted in PostgreSQL against what the generator had acknowledged \
         (each event carries a unique id). Recovery: from the moment the fault was undone until \
         everything acknowledged by then was stored. Each chart shows events acknowledged and not \
         yet stored, once a second; the vertical lines are the fault steps.\n{}",
        logpipe_common::host::git_commit(),
        logpipe_common::host::machine(),
        table,
        charts
    );
    std::fs::write(dir.join("summary.md"), summary)?;
    Ok((table, all_passed))
}

/// "Acknowledged, not yet stored" over time, with the fault steps as vertical lines.
fn chart(
    path: &Path,
    name: &str,
    samples: &[Sample],
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    let pending: Vec<(f64, f64)> = samples
        .iter()
        .map(|(t, a, s)| (*t, a.saturating_sub(*s) as f64))
        .collect();
    let top = pending.iter().map(|(_, p)| *p).fold(1.0, f64::max);
    let mut series = vec![("acknowledged, not yet stored".to_owned(), pending)];
    for (t, label) in marks {
        series.push((label.clone(), vec![(*t, 0.0), (*t, top)]));
    }
    logpipe_load_test::report::line_chart(path, name, "events", &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_counts_from_the_heal_until_what_was_acknowledged_then_is_stored() {
        let samples = vec![
            (0.0, 100, 100),
            (1.0, 200, 100),
            (2.0, 300, 100),
            (3.0, 400, 250),
            (4.0, 500, 320),
            (5.0, 500, 500),
        ];
        let marks = vec![(1.0, "fault x".to_owned()), (2.0, "healed x".to_owned())];
        let h = healing(&samples, &marks);
        assert_eq!(h.max_pending, 200);
        assert_eq!(h.pending_at_end, Some(0));
        // 300 acknowledged at the heal (2.0 s); stored passes 300 at 4.0 s.
        assert_eq!(h.recovery_secs, Some(2.0));
    }

    #[test]
    fn a_heal_after_everything_was_stored_recovers_in_zero_seconds() {
        let samples = vec![(0.0, 10, 0), (1.0, 20, 20), (2.0, 20, 20)];
        let marks = vec![(0.5, "fault z".to_owned()), (2.5, "healed z".to_owned())];
        assert_eq!(healing(&samples, &marks).recovery_secs, Some(0.0));
    }

    #[test]
    fn a_backlog_that_never_drains_has_no_recovery() {
        let samples = vec![(0.0, 10, 0), (1.0, 20, 5), (2.0, 30, 5)];
        let marks = vec![(0.5, "healed y".to_owned())];
        let h = healing(&samples, &marks);
        assert_eq!(h.recovery_secs, None);
        assert_eq!(h.pending_at_end, Some(25));
        assert!(h.healed_mark);
    }

    #[test]
    fn rows_samples_and_marks_parse_and_bad_lines_are_skipped() {
        let rows = parse_rows("crash\t10\t10\t0\t0\tpass\nshort\tline\n");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].verdict, "pass");
        assert_eq!(
            parse_samples("secs,acked,stored\n0.5,1,0\nbad\n1.5,2,2\n"),
            vec![(0.5, 1, 0), (1.5, 2, 2)]
        );
        assert_eq!(
            parse_marks("3.2 fault SIGKILL collector\n"),
            vec![(3.2, "fault SIGKILL collector".to_owned())]
        );
    }
}
