//! Whole-pipeline load test against a running stack (`./setup.sh --no-generate`, or any deployment).
//!
//! It asks the gateway for a bounded run (`count` events at `rate_per_second`), then measures three
//! rates in the same run: events generated, events acknowledged by Kafka, and events stored in
//! Postgres by the collector. The ceiling it prints against is the target rate it asked for, so the
//! ratio says how much of the requested load the pipeline carried end to end. Every loop here is
//! bounded by `--count` and `--timeout-secs`, and it only talks to the addresses it is given
//! (loopback by default).

// Library code states its invariants with `expect("why")`; a bare unwrap is a test's habit
// (clippy.toml allows it in tests; benches and integration tests are not linted for it).
#![warn(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(name = "logpipe-load-test", about)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    gateway: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/logpipe")]
    database_url: String,
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 20_000)]
    rate_per_second: u64,
    #[arg(long, default_value_t = 2)]
    threads: u64,
    #[arg(long, default_value_t = 500)]
    batch_size: u64,
    /// Give up (and fail) when the pipeline has not stored every event by then.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&args.database_url)
        .await
        .context("connect to Postgres")?;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM log_events")
            .fetch_one(&pool)
            .await
    };
    let status = || async {
        client
            .get(format!("{}/api/v1/generator/status", args.gateway))
            .send()
            .await?
            .json::<Value>()
            .await
    };

    let base_rows = rows().await?;
    let base = status().await.context("gateway status")?;
    let base_acked = base["events_acked"].as_u64().unwrap_or(0);
    if base["state"] == "running" {
        bail!("a generation run is in progress; stop it first (POST /api/v1/generator/stop)");
    }

    let started = Instant::now();
    let resp = client
        .post(format!("{}/api/v1/generator/start", args.gateway))
        .json(&json!({
            "rate_per_second": args.rate_per_second, "count": args.count,
            "threads": args.threads, "batch_size": args.batch_size
        }))
        .send()
        .await?;
    if resp.status().as_u16() != 202 {
        bail!("start refused: {} {}", resp.status(), resp.text().await?);
    }

    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut acked_at = None;
    let stored_at = loop {
        if Instant::now() > deadline {
            bail!("timed out after {} s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if acked_at.is_none() {
            let s = status().await?;
            let acked = s["events_acked"].as_u64().unwrap_or(0) - base_acked;
            if acked >= args.count {
                acked_at = Some(started.elapsed());
            }
        }
        let stored = (rows().await? - base_rows) as u64;
        if stored >= args.count {
            break started.elapsed();
        }
    };
    let acked_at = acked_at.unwrap_or(stored_at);
    let rate = |d: Duration| args.count as f64 / d.as_secs_f64();
    let ceiling = args.rate_per_second as f64;
    println!("events:                 {}", args.count);
    println!("target rate (ceiling):  {ceiling:.0} events/s");
    println!(
        "acked by Kafka:         {:.0} events/s  ratio {:.3}",
        rate(acked_at),
        rate(acked_at) / ceiling
    );
    println!(
        "stored in Postgres:     {:.0} events/s  ratio {:.3}  (end to end, {:.2} s)",
        rate(stored_at),
        rate(stored_at) / ceiling,
        stored_at.as_secs_f64()
    );
    Ok(())
}
