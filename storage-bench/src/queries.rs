//! Queries: each query the API serves, timed through the collector's own router with its
//! `EXPLAIN (ANALYZE)`, and the same under a paced writer (contention).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use logpipe_collector::config::DatabaseSettings;
use logpipe_collector::db::Db;
use logpipe_collector::query::{events_query, EventsFilter, STATS_SQL, TOP_MESSAGES_SQL};
use logpipe_collector::storage;
use logpipe_common::Level;
use tokio_util::sync::CancellationToken;

use crate::{timing, Bench, SERVICE, TERM_MATCH, TERM_NONE};

impl Bench {
    /// Each query the API serves, through the collector's router, `repeat` times.
    pub(crate) async fn queries(&mut self) -> anyhow::Result<()> {
        let (addr, stop) = serve_api(&self.db).await?;
        let client = reqwest::Client::new();
        let now = Utc::now();
        let day_end = storage::slot_start(now, TimeDelta::hours(24)) - TimeDelta::days(1);
        let day = (day_end - TimeDelta::days(1), day_end);
        let queries = query_set(now, day);
        let _ = writeln!(
            self.out,
            "## Queries (through the collector's API, {} runs each after a warm-up)\n\n\
             | query | p50 ms | p95 ms | max ms | rows |\n|---|---:|---:|---:|---:|",
            self.args.repeat
        );
        for (name, path, explain) in &queries {
            let url = format!("http://{addr}{path}");
            let mut ms = Vec::new();
            let mut rows = 0usize;
            let mut answer = None;
            for i in 0..=self.args.repeat {
                let started = Instant::now();
                let r = client.get(&url).send().await?;
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let took = started.elapsed().as_secs_f64() * 1e3;
                if status != 200 {
                    answer = Some(format!("{name}: {status} {body}"));
                    break;
                }
                rows = body["events"]
                    .as_array()
                    .map(Vec::len)
                    .or_else(|| body["total"].as_i64().map(|n| n as usize))
                    .unwrap_or(0);
                if i > 0 {
                    ms.push(took);
                }
            }
            self.check(answer.is_none(), || answer.unwrap_or_default());
            let t = timing(ms);
            let _ = writeln!(
                self.out,
                "| {name} | {:.1} | {:.1} | {:.1} | {rows} |",
                t.p50, t.p95, t.max
            );
            println!(
                "storage-bench: {name}: p50 {:.1} ms p95 {:.1} ms",
                t.p50, t.p95
            );
            let plan = match explain {
                Some(f) => self.explain_events(f).await?,
                None => {
                    self.explain_stats(now, path.contains(SERVICE).then_some(SERVICE))
                        .await?
                }
            };
            let _ = writeln!(self.explain, "### {name}\n\n```\n{plan}\n```\n");
        }
        stop.cancel();
        let _ = writeln!(
            self.out,
            "\n`rows` is the page's length (events) or the events counted (stats). The plans, \
             with the index each query uses, are in `explain.md`.\n"
        );
        Ok(())
    }

    pub(crate) async fn explain_events(&self, f: &EventsFilter) -> anyhow::Result<String> {
        let mut q = events_query("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ", f);
        let lines: Vec<String> = q
            .build_query_scalar()
            .fetch_all(self.db.query_pool())
            .await?;
        Ok(lines.join("\n"))
    }

    /// The stats endpoints' two queries over the last day: counts, then top messages.
    pub(crate) async fn explain_stats(
        &self,
        now: DateTime<Utc>,
        service: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut lines: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {STATS_SQL}"
        ))
        .bind(logpipe_collector::query::stats_width(
            &[10, 60],
            TimeDelta::days(1),
        ))
        .bind(now - TimeDelta::days(1))
        .bind(now)
        .bind(service)
        .fetch_all(self.db.query_pool())
        .await?;
        lines.push(String::new());
        lines.extend(
            sqlx::query_scalar::<_, String>(&format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {TOP_MESSAGES_SQL}"
            ))
            .bind(now - TimeDelta::days(1))
            .bind(now)
            .bind(service)
            .bind(logpipe_collector::query::TOP_MESSAGES_SAMPLE)
            .fetch_all(self.db.query_pool())
            .await?,
        );
        Ok(lines.join("\n"))
    }

    /// A writer paced at `ingest_rate` (batches every 100 ms, as the collector commits), alone
    /// and then with `query_clients` clients running worst-case queries without pause.
    pub(crate) async fn contention(&mut self) -> anyhow::Result<()> {
        let (addr, stop_api) = serve_api(&self.db).await?;
        let alone = self.paced_writer().await?;
        let stop = CancellationToken::new();
        let client = reqwest::Client::new();
        let now = Utc::now();
        let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        // The widest range the API allows a scanning query, ending a little after now (the
        // writer's rows are dated now).
        let to = now + TimeDelta::minutes(5);
        let from = to - TimeDelta::hours(i64::from(self.max_range_hours()));
        let range = format!("from={}&to={}", rfc(from), rfc(to));
        let worst = [
            format!("/api/v1/events?q={TERM_NONE}&{range}"),
            format!("/api/v1/stats?{range}"),
            format!("/api/v1/events?level=FATAL&{range}"),
        ];
        let mut clients = Vec::new();
        for i in 0..self.args.query_clients {
            let url = format!("http://{addr}{}", worst[i % worst.len()]);
            let (client, stop) = (client.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut statuses: HashMap<u16, u64> = HashMap::new();
                while !stop.is_cancelled() {
                    let status = match client.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_default() += 1;
                }
                statuses
            }));
        }
        let loaded = self.paced_writer().await?;
        stop.cancel();
        let mut statuses: HashMap<u16, u64> = HashMap::new();
        for c in clients {
            for (s, n) in c.await? {
                *statuses.entry(s).or_default() += n;
            }
        }
        stop_api.cancel();
        let mut seen: Vec<_> = statuses.into_iter().collect();
        seen.sort();
        let wrong = seen
            .iter()
            .find(|(s, _)| ![200, 503, 504].contains(s))
            .map(|(s, _)| *s);
        self.check(wrong.is_none(), || {
            format!("a worst-case query answered {wrong:?} during ingest")
        });
        let cut = 1.0 - loaded / alone;
        let _ = writeln!(
            self.out,
            "## Reads against writes\n\nA writer paced at {} rows/s (a COPY every 100 ms), {} s \
             alone, then {} s while {} clients run worst-case queries without pause (`q` with no \
             match over {} days, stats over {} days, FATAL over {} days), through the API (the \
             query pool: 2 connections, 5 s statement timeout). The ranges are the longest the API \
             allows a scanning query ({} h).\n\n| | stored rows/s |\n|---|---:|\n\
             | writer alone | {alone:.0} |\n| with the queries | {loaded:.0} |\n\n**Stored rate cut \
             by {:.1} %** (goal < 10 %). Query answers: {}.\n",
            self.args.ingest_rate,
            self.args.ingest_secs,
            self.args.ingest_secs,
            self.args.query_clients,
            self.args.days,
            self.args.days,
            self.args.days,
            self.max_range_hours(),
            cut * 100.0,
            seen.iter()
                .map(|(s, n)| format!("{n} × {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("storage-bench: writer {alone:.0}/s alone, {loaded:.0}/s under queries");
        Ok(())
    }

    pub(crate) fn max_range_hours(&self) -> u32 {
        DatabaseSettings::default().query_max_range_hours
    }
}

pub(crate) fn filter(from: DateTime<Utc>, to: DateTime<Utc>) -> EventsFilter {
    EventsFilter {
        from,
        to,
        service: None,
        level: None,
        min_level: None,
        text: None,
        cursor: None,
        limit: logpipe_collector::query::DEFAULT_LIMIT,
    }
}

/// The collector's query router on a free port, on this benchmark's database (no consumer).
pub(crate) async fn serve_api(
    db: &Db,
) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    use logpipe_collector::http::{router, AppState};
    let state = AppState {
        db: db.clone(),
        health: Arc::new(Default::default()),
        metrics: logpipe_common::telemetry::metrics_handle(),
        filter: logpipe_collector::filter::FilterHandle::new(Default::default(), None)?,
        stats_windows_secs: vec![10, 60],
        max_range_hours: DatabaseSettings::default().query_max_range_hours,
        max_page_bytes: DatabaseSettings::default().query_max_response_bytes,
        streams: Arc::new(logpipe_common::permits::StreamPermits::new(64, 64)),
        stream: Default::default(),
        group_id: "storage-bench".into(),
        topic: "storage-bench".into(),
        shutdown: CancellationToken::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state, Default::default()))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    });
    Ok((addr, stop))
}

/// The queries timed: a name, the API path, and the filter whose plan is explained (none: the
/// stats plan). `day` is a sealed day.
fn query_set(
    now: DateTime<Utc>,
    day: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<(&'static str, String, Option<EventsFilter>)> {
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let last_day = format!("from={}&to={}", rfc(now - TimeDelta::days(1)), rfc(now));
    let sealed = format!("from={}&to={}", rfc(day.0), rfc(day.1));
    vec![
        (
            "events, last hour",
            "/api/v1/events".into(),
            Some(filter(now - TimeDelta::hours(1), now)),
        ),
        (
            "events, one service, last hour",
            format!("/api/v1/events?service={SERVICE}"),
            Some(EventsFilter {
                service: Some(SERVICE.into()),
                ..filter(now - TimeDelta::hours(1), now)
            }),
        ),
        (
            "events, WARN and above, last hour",
            "/api/v1/events?min_level=WARN".into(),
            Some(EventsFilter {
                min_level: Some(Level::Warn),
                ..filter(now - TimeDelta::hours(1), now)
            }),
        ),
        (
            "events, FATAL, last 24 h",
            format!("/api/v1/events?level=FATAL&{last_day}"),
            Some(EventsFilter {
                level: Some(Level::Fatal),
                ..filter(now - TimeDelta::days(1), now)
            }),
        ),
        (
            "q (a match), one sealed day",
            format!("/api/v1/events?q=charge%20declined&{sealed}"),
            Some(EventsFilter {
                text: Some(TERM_MATCH.into()),
                ..filter(day.0, day.1)
            }),
        ),
        (
            "q (no match), one sealed day",
            format!("/api/v1/events?q={TERM_NONE}&{sealed}"),
            Some(EventsFilter {
                text: Some(TERM_NONE.into()),
                ..filter(day.0, day.1)
            }),
        ),
        (
            "q (no match), last 24 h (includes the day being written)",
            format!("/api/v1/events?q={TERM_NONE}&{last_day}"),
            Some(EventsFilter {
                text: Some(TERM_NONE.into()),
                ..filter(now - TimeDelta::days(1), now)
            }),
        ),
        ("stats, one day", format!("/api/v1/stats?{last_day}"), None),
        (
            "stats, one service, one day",
            format!("/api/v1/stats/{SERVICE}?{last_day}"),
            None,
        ),
    ]
}
