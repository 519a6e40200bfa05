//! What the load test reads from, and asks of, a running stack: the generators through the
//! gateway's control API, the collector's metrics, the stored offsets in PostgreSQL, and each
//! process's CPU and RSS from `/proc`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;

use crate::args::Args;

/// The gateway's sum over the generators (`GET /api/v1/generator/status`); counters only grow
/// while a generator process lives.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenStatus {
    pub state: String,
    pub events_generated: u64,
    pub events_acked: u64,
    pub events_failed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct CollectorMetrics {
    pub consumed: u64,
    pub stored: u64,
    pub lag: BTreeMap<i32, i64>,
    pub writer: Writer,
}

/// The collector's writer, totals since it started: committed batches, the event rows they wrote,
/// and the seconds their transactions took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Writer {
    pub batches: u64,
    pub events: u64,
    pub commit_secs: f64,
}

pub struct Stack {
    pub args: Args,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub processes: Vec<(String, u32)>,
}

impl Stack {
    pub async fn connect(args: &Args) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .connect(&args.database_url)
            .await
            .with_context(|| "connect to PostgreSQL (--database-url)")?;
        let processes = args.run_dir.as_deref().map(read_pids).unwrap_or_default();
        Ok(Self {
            args: args.clone(),
            http,
            db,
            processes,
        })
    }

    fn admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.args.admin_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    pub async fn status(&self) -> anyhow::Result<GenStatus> {
        let url = format!("{}/api/v1/generator/status", self.args.gateway);
        let resp = self.admin(self.http.get(&url)).send().await?;
        if !resp.status().is_success() {
            bail!(
                "{url}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(resp.json().await?)
    }

    /// Starts a bounded run on every generator; it stops by itself after `secs`.
    pub async fn start(&self, rate: u64, secs: u64) -> anyhow::Result<()> {
        let body = json!({
            "rate_per_second": rate, "duration_secs": secs, "threads": self.args.threads.min(rate),
            "batch_size": self.args.batch_size.min(rate), "profile": self.args.profile,
        });
        self.control("start", Some(body)).await
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        self.control("stop", None).await
    }

    /// `POST /api/v1/generator/{action}` with the admin key; a refusal is an error naming it.
    async fn control(&self, action: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/generator/{action}", self.args.gateway);
        let mut req = self.admin(self.http.post(&url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!(
                "{action} refused: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    pub async fn collector_metrics(&self) -> anyhow::Result<CollectorMetrics> {
        let mut req = self.http.get(format!("{}/metrics", self.args.collector));
        // A stack setup.sh started answers only its internal token (run dir, mode 0600).
        if let Some(token) = self
            .args
            .run_dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("internal-token")).ok())
        {
            req = req.bearer_auth(token.trim());
        }
        let text = req.send().await?.text().await?;
        Ok(parse_metrics(&text))
    }

    /// Each partition's next offset to store, as the collector committed it with its rows.
    pub async fn stored_offsets(&self) -> anyhow::Result<BTreeMap<i32, i64>> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM consumer_offsets \
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(&self.args.group)
        .bind(&self.args.topic)
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().collect())
    }
}

fn read_pids(run_dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for name in ["broker", "collector", "generator", "gateway"] {
        let path = run_dir.join("pids").join(format!("{name}.pid"));
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.push((name.to_string(), pid));
        }
    }
    out
}

/// Reads the counters and the per-partition lag out of the collector's Prometheus text.
pub fn parse_metrics(text: &str) -> CollectorMetrics {
    let mut m = CollectorMetrics::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if name == "collector_events_consumed_total" {
            m.consumed = v as u64;
        } else if name == "collector_events_stored_total" {
            m.stored = v as u64;
        } else if name == "collector_batch_events_count" {
            m.writer.batches = v as u64;
        } else if name == "collector_batch_events_sum" {
            m.writer.events = v as u64;
        } else if name == "collector_batch_commit_seconds_sum" {
            m.writer.commit_secs = v;
        } else if let Some(rest) = name.strip_prefix("collector_consumer_lag{") {
            let partition = rest
                .split("partition=\"")
                .nth(1)
                .and_then(|p| p.split('"').next())
                .and_then(|p| p.parse().ok());
            if let Some(p) = partition {
                m.lag.insert(p, v as i64);
            }
        }
    }
    m
}

/// The pids of every process named `comm` (PostgreSQL runs one per connection plus its workers).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// CPU seconds and RSS summed over `pids` (shared pages of PostgreSQL's processes count once per
/// process, so its RSS sum overstates; its CPU sum is exact).
pub fn usage_of(pids: &[u32]) -> Option<(f64, u64)> {
    let all: Vec<(f64, u64)> = pids.iter().filter_map(|p| proc_usage(*p)).collect();
    (!all.is_empty()).then(|| {
        all.iter()
            .fold((0.0, 0), |(c, r), (c1, r1)| (c + c1, r + r1))
    })
}

/// CPU seconds used so far and resident memory in bytes of one process, from `/proc`.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // USER_HZ is 100 on every Linux this runs on (the kernel fixes it for user space).
    Some((ticks as f64 / 100.0, rss_kb * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_gives_counters_and_lag_per_partition() {
        let text = "# TYPE x counter\ncollector_events_consumed_total 120\n\
                    collector_events_stored_total 100\n\
                    collector_consumer_lag{partition=\"0\"} 5\ncollector_consumer_lag{partition=\"3\"} 0\n";
        let m = parse_metrics(text);
        assert_eq!((m.consumed, m.stored), (120, 100));
        assert_eq!(m.lag, BTreeMap::from([(0, 5), (3, 0)]));
    }

    #[test]
    fn metrics_text_gives_the_writers_batch_totals() {
        let text = "collector_batch_events_bucket{le=\"+Inf\"} 4\n\
                    collector_batch_events_sum 9000\ncollector_batch_events_count 4\n\
                    collector_batch_commit_seconds_sum 0.25\ncollector_batch_commit_seconds_count 4\n";
        let m = parse_metrics(text);
        let want = Writer {
            batches: 4,
            events: 9000,
            commit_secs: 0.25,
        };
        assert_eq!(m.writer, want);
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let (cpu, rss) = proc_usage(std::process::id()).expect("own /proc entry");
        assert!(cpu >= 0.0);
        assert!(rss > 1024 * 1024);
    }
}
