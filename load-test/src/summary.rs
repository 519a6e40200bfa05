//! The load test's summary: what the run did and whether it met its thresholds (`summary.md`),
//! the rates against the ceilings measured in the same run, loss by event id, latency, each
//! process's memory, and the charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::args::{Args, Scenario};
use crate::ceiling::{Ceilings, Rate};
use crate::sample::Sample;
use crate::scenario::Outcome;
use crate::{cpu, ingest, report, scenario, verify};

/// The processes whose memory must stay flat in a soak.
const OWN_SERVICES: [&str; 3] = ["collector", "generator", "gateway"];

pub(crate) struct Results<'a> {
    pub(crate) args: &'a Args,
    pub(crate) samples: &'a [Sample],
    pub(crate) outcome: &'a Outcome,
    pub(crate) ingest: Option<&'a ingest::IngestResult>,
    pub(crate) verdict: &'a verify::Verdict,
    pub(crate) ceilings: &'a Ceilings,
    pub(crate) measured: Option<scenario::Kept>,
    pub(crate) drain_secs: Option<f64>,
    pub(crate) load_end: f64,
    pub(crate) run_began: chrono::DateTime<chrono::Utc>,
    pub(crate) acked_total: u64,
}

fn ratio(x: f64, c: Option<Rate>) -> String {
    match c {
        Some(c) => format!("{:.0}/s | {:.2}", c.per_sec(), x / c.per_sec()),
        None => "not measured | -".into(),
    }
}

impl Results<'_> {
    /// RSS growth per process after warm-up (the first minute, or the first quarter of a shorter
    /// run): (name, RSS at the end of warm-up, peak after it, growth percent).
    fn rss_growth(&self) -> Vec<(String, u64, u64, f64)> {
        let warm = if self.load_end > 120.0 {
            60.0
        } else {
            self.load_end / 4.0
        };
        let mut out = Vec::new();
        let names: std::collections::BTreeSet<String> = self
            .samples
            .iter()
            .flat_map(|s| s.procs.keys().cloned())
            .collect();
        for name in names {
            let after: Vec<u64> = self
                .samples
                .iter()
                .filter(|s| s.t >= warm && s.t <= self.load_end)
                .filter_map(|s| s.procs.get(&name).map(|x| x.1))
                .collect();
            if let (Some(first), Some(peak)) = (after.first(), after.iter().max()) {
                let growth = (*peak as f64 / (*first).max(1) as f64 - 1.0) * 100.0;
                out.push((name, *first, *peak, growth));
            }
        }
        out
    }

    pub(crate) fn summary(&self) -> (String, bool) {
        let mut s = String::new();
        self.header(&mut s);
        self.rates(&mut s);
        self.cpu(&mut s);
        let lost_in_kafka = self.loss(&mut s);
        self.latency(&mut s);
        self.processes(&mut s);
        let ok = self.thresholds(&mut s, lost_in_kafka);
        (s, ok)
    }

    /// CPU per event by process, for the run and for each bare stage, and the bare limit.
    fn cpu(&self, s: &mut String) {
        let _ = writeln!(s, "\n## CPU per event\n");
        let Some(run) = cpu::run_cpu(self.samples).filter(|r| r.events > 0) else {
            let _ = writeln!(s, "Not measured (no stored events, or no process sampled).");
            return;
        };
        let stages = &self.ceilings.cpu;
        // The table's columns: the flat-out stages, then the same clients at the held rate.
        let columns: Vec<&cpu::PhaseCpu> = stages.iter().chain(&self.ceilings.paced).collect();
        let mut names: Vec<&String> = run.secs.keys().collect();
        for st in &columns {
            names.extend(st.secs.keys());
        }
        names.sort();
        names.dedup();
        let cell = |p: &cpu::PhaseCpu, n: &str| {
            p.us_per_event(n)
                .map_or_else(|| "".to_owned(), |us| format!("{us:.1}"))
        };
        let _ = writeln!(
            s,
            "Microseconds of CPU per event in each process: over the run (per stored event, the \
             drain included) and in each bare stage of the same run. {} cores.\n",
            cpu::cores()
        );
        let mut head = String::from("| process | run |");
        let mut rule = String::from("|---|---:|");
        for st in &columns {
            let _ = write!(head, " bare {} |", st.phase);
            rule.push_str("---:|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        for n in names {
            let mut row = format!("| {n} | {} |", cell(&run, n));
            for st in &columns {
                let _ = write!(row, " {} |", cell(st, n));
            }
            let _ = writeln!(s, "{row}");
        }
        let mut total = format!("| **all** | **{:.1}** |", run.total_us_per_event());
        for st in &columns {
            let _ = write!(total, " **{:.1}** |", st.total_us_per_event());
        }
        let _ = writeln!(s, "{total}");
        let bare_us: f64 = stages.iter().map(cpu::PhaseCpu::total_us_per_event).sum();
        let pipeline_us = run.total_us_per_event();
        if let Some(limit) = cpu::bare_limit(cpu::cores(), stages) {
            let _ = writeln!(
                s,
                "\n- pipeline: {pipeline_us:.1} µs per stored event; the bare stages together: \
                 {bare_us:.1} µs; the pipeline costs {:.2}× its bare stages (goal: at most 1.25).",
                pipeline_us / bare_us
            );
            let _ = writeln!(
                s,
                "- bare limit: {} cores ÷ {bare_us:.1} µs = {limit:.0} events/s.",
                cpu::cores()
            );
            if let Some(k) = self.measured {
                let _ = writeln!(
                    s,
                    "- stored in the measured stretch: {:.0}/s = {:.2} of the bare limit.",
                    k.stored_rate,
                    k.stored_rate / limit
                );
            }
        } else {
            let _ = writeln!(s, "\n- pipeline: {pipeline_us:.1} µs per stored event; the bare stages were not all measured.");
        }
        if let (Some(pace), [a, b]) = (self.ceilings.pace, self.ceilings.paced.as_slice()) {
            let paced_us = a.total_us_per_event() + b.total_us_per_event();
            let _ = writeln!(
                s,
                "- at the held rate: the same bare clients paced at {:.0} events/s (produce and \
                 consume in the same {:.0} s; COPY in transactions of {} rows, the writer's mean \
                 batch) cost {paced_us:.1} µs together; the pipeline costs {:.2}× them.",
                pace.rate,
                pace.secs,
                pace.batch_rows,
                pipeline_us / paced_us
            );
        }
        // PostgreSQL's share rests on the batch size group commit chose: each batch pays its
        // window upserts, offsets and commit once, whatever its size.
        if let Some((batches, mean, commit_ms)) = cpu::run_writer(self.samples) {
            let _ = writeln!(
                s,
                "- the collector's writer: {batches} batches, {mean:.0} events each on average, \
                 {commit_ms:.1} ms a commit on average."
            );
        }
    }

    /// `cpu-per-event.png`: µs of CPU per event, stacked by process, for the run and each bare
    /// stage.
    fn cpu_chart(&self, dir: &std::path::Path) {
        let Some(run) = cpu::run_cpu(self.samples).filter(|r| r.events > 0) else {
            return;
        };
        let phases: Vec<&cpu::PhaseCpu> = std::iter::once(&run)
            .chain(self.ceilings.cpu.iter())
            .chain(self.ceilings.paced.iter())
            .collect();
        let columns: Vec<String> = phases
            .iter()
            .map(|p| match p.phase {
                "run" => "pipeline (run)".to_owned(),
                other => format!("bare {other}"),
            })
            .collect();
        let mut names: Vec<&String> = phases.iter().flat_map(|p| p.secs.keys()).collect();
        names.sort();
        names.dedup();
        let series: Vec<(String, Vec<f64>)> = names
            .into_iter()
            .map(|n| {
                let v = phases
                    .iter()
                    .map(|p| p.us_per_event(n).unwrap_or(0.0))
                    .collect();
                (n.clone(), v)
            })
            .collect();
        let path = dir.join("cpu-per-event.png");
        if let Err(e) = report::stacked_bars(
            &path,
            "CPU per event by process",
            "µs per event",
            &columns,
            &series,
        ) {
            println!("chart {}: {e:#}", path.display());
        }
    }

    /// The title and what the run was.
    fn header(&self, s: &mut String) {
        let a = self.args;
        let _ = writeln!(s, "# logpipe load test: `{:?}`\n", a.scenario);
        let _ = writeln!(
            s,
            "- date: {}",
            self.run_began.format("%Y-%m-%d %H:%M:%S UTC")
        );
        let _ = writeln!(s, "- commit: {}", logpipe_common::host::git_commit());
        let _ = writeln!(s, "- machine: {}", logpipe_common::host::machine());
        let _ = writeln!(
            s,
            "- configuration: base rate {}/s, threads {}, batch {}, profile {}, duration {} s, ramp step {}/s every {} s up to {}/s, hold {} s, burst x{}; ingest {} req/s x {} events, {} clients",
            a.base_rate(), a.threads, a.batch_size, a.profile, a.duration_secs(), a.step_rate,
            a.step_secs, a.max_rate, a.hold_secs, a.burst_factor, a.requests_per_second,
            a.events_per_request, a.clients
        );
        let _ = writeln!(
            s,
            "- stack: gateway {}, collector {}, broker {}\n",
            a.gateway, a.collector, a.brokers
        );
    }

    /// Rates against the ceilings measured in the same run.
    fn rates(&self, s: &mut String) {
        let _ = writeln!(s, "## Rates and ceilings\n");
        let _ = writeln!(
            s,
            "Measured over: {}.\n",
            match &self.outcome.measured {
                Some(m) => format!(
                    "{} ({:.0} s to {:.0} s, {}/s asked)",
                    m.label, m.start, m.end, m.rate
                ),
                None => "nothing (the scenario measured no segment)".into(),
            }
        );
        let _ = writeln!(
            s,
            "| stage | events/s | ceiling (bare client, same run) | ratio |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        if let Some(k) = self.measured {
            // The ingest scenario's events are acknowledged to the gateway, which answers 202
            // only then; the generators' counter stays at 0.
            let (label, acked_rate) = match self.ingest {
                Some(r) => (
                    "accepted by the gateway (202, after Kafka's acks)",
                    r.accepted_events as f64 / r.secs.max(f64::EPSILON),
                ),
                None => ("acknowledged by Kafka", k.acked_rate),
            };
            let _ = writeln!(
                s,
                "| {label} | {acked_rate:.0} | {} |",
                ratio(acked_rate, self.ceilings.produce)
            );
            let _ = writeln!(
                s,
                "| stored in PostgreSQL (consumed and written) | {:.0} | consume {} |",
                k.stored_rate,
                ratio(k.stored_rate, self.ceilings.consume)
            );
            let _ = writeln!(
                s,
                "| stored in PostgreSQL | {:.0} | COPY {} |",
                k.stored_rate,
                ratio(k.stored_rate, self.ceilings.copy)
            );
            let slowest = [
                self.ceilings.produce,
                self.ceilings.consume,
                self.ceilings.copy,
            ]
            .into_iter()
            .flatten()
            .min_by(|x, y| x.per_sec().total_cmp(&y.per_sec()));
            let _ = writeln!(
                s,
                "| end to end | {:.0} | slowest {} |",
                k.stored_rate,
                ratio(k.stored_rate, slowest)
            );
        }
        for n in &self.ceilings.notes {
            let _ = writeln!(s, "\n{n}");
        }
        let _ = writeln!(
            s,
            "\nCeilings: produce = a bare idempotent rdkafka loop (acks=all, lz4, linger 5 ms, large batches) of the run's own payloads into a new topic with as many partitions; consume = a tuned bare consumer (64 MiB fetches, 16 MiB per partition, deep queue) reading those back; COPY = one binary COPY of the run's stored rows into a new table with `log_events`' columns, defaults, constraints and indexes. Paced (CPU only): the same producer sending at the rate the pipeline held, round the partitions, while the same consumer reads them as they arrive; and the COPY cut into transactions of the writer's mean batch."
        );
        if let Some(d) = self.drain_secs {
            let _ = writeln!(
                s,
                "\nEverything acknowledged was stored {d:.1} s after the load stopped."
            );
        }
    }

    /// Loss and duplicates by event id; returns what was acknowledged but never reached Kafka.
    fn loss(&self, s: &mut String) -> u64 {
        let v = self.verdict;
        let _ = writeln!(
            s,
            "\n## Loss and duplicates (by event id, against PostgreSQL)\n"
        );
        let lost_in_kafka = if self.ingest.is_some() {
            self.ingest
                .map(|i| i.accepted_events.saturating_sub(v.records))
                .unwrap_or(0)
        } else {
            self.acked_total.saturating_sub(v.records)
        };
        let acked_label = if self.ingest.is_some() {
            "accepted by the gateway (202)"
        } else {
            "acknowledged to the generators"
        };
        let acked = self
            .ingest
            .map(|i| i.accepted_events)
            .unwrap_or(self.acked_total);
        let _ = writeln!(s, "| | events |\n|---|---|");
        let _ = writeln!(s, "| {acked_label} | {acked} |");
        let _ = writeln!(
            s,
            "| records of the run in Kafka (read back) | {} |",
            v.records
        );
        let _ = writeln!(s, "| acknowledged but not in Kafka | {lost_in_kafka} |");
        let _ = writeln!(s, "| in Kafka, never stored (lost) | {} |", v.lost);
        let _ = writeln!(s, "| stored twice | {} |", v.stored_twice);
        let _ = writeln!(
            s,
            "| the same id acknowledged twice (producer duplicates) | {} |",
            v.kafka_duplicates
        );
        if !v.lost_sample.is_empty() {
            let _ = writeln!(s, "\nSome lost ids: {}", v.lost_sample.join(", "));
        }

        lost_in_kafka
    }

    /// End-to-end latency, alerts, and the ingest scenario's client side.
    fn latency(&self, s: &mut String) {
        let v = self.verdict;
        let _ = writeln!(s, "\n## Latency\n");
        match v.latency_ms {
            Some([p50, p95, p99, p999, max]) => {
                let _ = writeln!(s, "From each event's timestamp to its row (`stored_at`, the write transaction's start; the commit follows within the batch's write time).\n");
                let _ = writeln!(
                    s,
                    "| p50 | p95 | p99 | p99.9 | max |\n|---|---|---|---|---|"
                );
                let _ = writeln!(
                    s,
                    "| {p50:.1} ms | {p95:.1} ms | {p99:.1} ms | {p999:.1} ms | {max:.1} ms |"
                );
            }
            None => {
                let _ = writeln!(s, "No stored rows to measure.");
            }
        }
        if v.alerts.is_empty() {
            let _ = writeln!(s, "\nNo alerts were raised during the run.");
        } else {
            let _ = writeln!(
                s,
                "\nAlert latency, from the first triggering event to the alert row:\n"
            );
            let _ = writeln!(
                s,
                "| kind | severity | alerts | p50 | p99 | max |\n|---|---|---|---|---|---|"
            );
            for (kind, sev, n, p50, p99, max) in &v.alerts {
                let _ = writeln!(
                    s,
                    "| {kind} | {sev} | {n} | {p50:.0} ms | {p99:.0} ms | {max:.0} ms |"
                );
            }
            let _ = writeln!(
                s,
                "\nA window's alert (error rate, spikes) is raised when its window closes: its latency includes the window."
            );
        }
        if let Some(i) = self.ingest {
            let _ = writeln!(s, "\n## HTTP ingest\n");
            let _ = writeln!(s, "{} requests in {:.1} s: {} accepted ({} events), {} throttled (429), {} other statuses, {} transport errors.\n",
                i.requests, i.secs, i.accepted_requests, i.accepted_events, i.throttled, i.other, i.errors);
            let [p50, p90, p99, p999, max] = i.latency_ms;
            let _ = writeln!(s, "Latency from when each request was due (coordinated omission corrected):\n\n| p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|");
            let _ = writeln!(
                s,
                "| {p50:.1} ms | {p90:.1} ms | {p99:.1} ms | {p999:.1} ms | {max:.1} ms |"
            );
        }
    }

    /// Memory of each process, and what the scenario noted.
    fn processes(&self, s: &mut String) {
        let _ = writeln!(s, "\n## Processes\n");
        let growth = self.rss_growth();
        if growth.is_empty() {
            let _ = writeln!(s, "Not sampled (give `--run-dir` of the stack).");
        } else {
            let _ = writeln!(s, "| process | CPU avg | CPU max | RSS after warm-up | RSS peak | growth |\n|---|---|---|---|---|---|");
            for (name, first, peak, g) in &growth {
                let cpus: Vec<f64> = self
                    .samples
                    .iter()
                    .filter(|x| x.t <= self.load_end)
                    .filter_map(|x| x.procs.get(name).map(|p| p.0))
                    .collect();
                let avg = cpus.iter().sum::<f64>() / cpus.len().max(1) as f64;
                let max = cpus.iter().copied().fold(0.0, f64::max);
                let _ = writeln!(
                    s,
                    "| {name} | {avg:.0} % | {max:.0} % | {:.0} MiB | {:.0} MiB | {g:+.1} % |",
                    *first as f64 / 1048576.0,
                    *peak as f64 / 1048576.0
                );
            }
        }
        if !self.outcome.notes.is_empty() {
            let _ = writeln!(s, "\n## Scenario\n");
            for n in &self.outcome.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if let Some(r) = self.outcome.recovery_secs {
            let _ = writeln!(
                s,
                "- the burst's backlog was stored {r:.0} s after the burst ended"
            );
        }
        if let Some(h) = self.outcome.held_rate {
            let _ = writeln!(
                s,
                "- held: {h}/s; knee: {}",
                self.outcome
                    .knee_rate
                    .map(|k| format!("{k}/s"))
                    .unwrap_or_else(|| "not reached".into())
            );
        }
    }

    /// The thresholds checked, listed; true when all were met.
    fn thresholds(&self, s: &mut String, lost_in_kafka: u64) -> bool {
        let a = self.args;
        let v = self.verdict;
        let growth = self.rss_growth();
        let mut checks: Vec<(String, bool)> = Vec::new();
        let loss = v.lost + lost_in_kafka;
        checks.push((
            format!("loss {loss} <= --max-loss {}", a.max_loss),
            loss <= a.max_loss,
        ));
        checks.push((
            format!("stored twice {} = 0", v.stored_twice),
            v.stored_twice == 0,
        ));
        checks.push((
            "everything acknowledged stored within --drain-timeout-secs".into(),
            self.drain_secs.is_some(),
        ));
        if let Some(min) = a.min_rate {
            let got = self.measured.map(|k| k.stored_rate).unwrap_or(0.0);
            checks.push((
                format!("stored {got:.0}/s >= --min-rate {min:.0}"),
                got >= min,
            ));
        }
        if let Some(max) = a.max_p99_ms {
            let got = v.latency_ms.map(|l| l[2]).unwrap_or(f64::INFINITY);
            checks.push((
                format!("end-to-end p99 {got:.1} ms <= --max-p99-ms {max}"),
                got <= max,
            ));
        }
        let rss_limit = a
            .max_rss_growth_pct
            .or((a.scenario == Scenario::Soak).then_some(10.0));
        if let Some(max) = rss_limit {
            // logpipe's own services: the in-memory broker holds every record by design (it has
            // no retention) and PostgreSQL's RSS is its shared buffers filling; both are reported.
            let worst = growth
                .iter()
                .filter(|g| OWN_SERVICES.contains(&g.0.as_str()))
                .map(|g| g.3)
                .fold(0.0, f64::max);
            checks.push((
                format!("RSS growth of collector, generator and gateway {worst:.1} % <= {max} %"),
                worst <= max,
            ));
        }
        if a.scenario == Scenario::Ramp {
            checks.push((
                "a rate was held with zero loss".into(),
                self.outcome.held_rate.is_some(),
            ));
        }
        let _ = writeln!(s, "\n## Thresholds\n");
        for (c, ok) in &checks {
            let _ = writeln!(s, "- {} {c}", if *ok { "met:" } else { "NOT MET:" });
        }
        let ok = checks.iter().all(|c| c.1);
        let _ = writeln!(s, "\n**{}**", if ok { "PASS" } else { "FAIL" });
        ok
    }

    pub(crate) fn charts(&self, dir: &std::path::Path) {
        if !report::load_font() {
            println!("no DejaVu font found (Debian: fonts-dejavu-core): charts skipped");
            return;
        }
        self.cpu_chart(dir);
        let s = self.samples;
        let rates = vec![
            (
                "asked".to_string(),
                s.iter().map(|x| (x.t, x.requested as f64)).collect(),
            ),
            (
                "generated".to_string(),
                report::rate_series(s, 1, |x| x.generated),
            ),
            (
                "acknowledged".to_string(),
                report::rate_series(s, 1, |x| x.acked),
            ),
            (
                "consumed".to_string(),
                report::rate_series(s, 1, |x| x.consumed),
            ),
            (
                "stored".to_string(),
                report::rate_series(s, 1, |x| x.stored),
            ),
        ];
        let mut lag: Vec<report::Series> = vec![(
            "total".into(),
            s.iter().map(|x| (x.t, x.lag_total() as f64)).collect(),
        )];
        let parts: std::collections::BTreeSet<i32> =
            s.iter().flat_map(|x| x.lag.keys().copied()).collect();
        for p in parts {
            lag.push((
                format!("partition {p}"),
                s.iter()
                    .map(|x| (x.t, x.lag.get(&p).copied().unwrap_or(0) as f64))
                    .collect(),
            ));
        }
        let began = self.run_began.timestamp() as f64;
        let lat = &self.verdict.latency_by_second;
        let latency = vec![
            (
                "p50".to_string(),
                lat.iter()
                    .map(|(t, p50, _)| (*t as f64 - began, *p50))
                    .collect(),
            ),
            (
                "p99".to_string(),
                lat.iter()
                    .map(|(t, _, p99)| (*t as f64 - began, *p99))
                    .collect(),
            ),
        ];
        let mut rss: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for x in s {
            for (name, (_, r)) in &x.procs {
                rss.entry(name.clone())
                    .or_default()
                    .push((x.t, *r as f64 / 1048576.0));
            }
        }
        let rss: Vec<report::Series> = rss.into_iter().collect();
        for (file, title, y, series) in [
            ("rates.png", "Events per second by stage", "events/s", rates),
            (
                "lag.png",
                "Consumer lag (records not yet stored)",
                "records",
                lag,
            ),
            (
                "latency.png",
                "End-to-end latency of the rows stored each second",
                "ms",
                latency,
            ),
            ("rss.png", "Resident memory per process", "MiB", rss),
        ] {
            if series.iter().all(|x| x.1.is_empty()) {
                continue;
            }
            if let Err(e) = report::line_chart(&dir.join(file), title, y, &series) {
                println!("chart {file} failed: {e:#}");
            }
        }
    }
}
