//! The `ingest` scenario: HTTP clients post batches through the gateway at a fixed request rate, in
//! an open loop — request i is due at start + i / rate whether or not earlier ones have answered —
//! and each latency is timed from when the request was due, not from when a client got to send it
//! (coordinated omission corrected, as wrk2 and the OpenMessaging Benchmark do). At most
//! `--clients` requests are in flight; a request that waits for a client waits on its own clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::args::Args;

#[derive(Debug, Clone)]
pub struct IngestResult {
    pub requests: u64,
    pub accepted_requests: u64,
    pub accepted_events: u64,
    pub throttled: u64,
    pub other: u64,
    pub errors: u64,
    /// From the due time to the answer, ms: p50, p90, p99, p99.9, max (every answered request).
    pub latency_ms: [f64; 5],
    pub secs: f64,
}

#[derive(Default)]
struct Tally {
    accepted_requests: u64,
    accepted_events: u64,
    throttled: u64,
    other: u64,
    errors: u64,
}

fn batch(run: &str, i: u64, n: usize) -> serde_json::Value {
    const LEVELS: [&str; 5] = ["DEBUG", "INFO", "INFO", "WARN", "ERROR"];
    let now = chrono::Utc::now().to_rfc3339();
    let events: Vec<_> = (0..n)
        .map(|j| {
            // Every 100th request carries one FATAL of a service of its own: each raises its own
            // `fatal_event` alert, whose latency the report gives.
            let fatal = i.is_multiple_of(100) && j == 0;
            let service = if fatal {
                format!("load-test-fatal-{i}")
            } else {
                "load-test".to_string()
            };
            json!({
                "timestamp": now,
                "level": if fatal { "FATAL" } else { LEVELS[(i as usize + j) % LEVELS.len()] },
                "service": service,
                "message": format!("load test request {i} event {j}"),
                "attributes": {"load_test_run": run, "seq": i * n as u64 + j as u64},
            })
        })
        .collect();
    serde_json::Value::Array(events)
}

pub async fn run(args: &Args) -> anyhow::Result<IngestResult> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}/api/v1/logs", args.gateway);
    let total = args.requests_per_second * args.duration_secs();
    let interval = Duration::from_secs_f64(1.0 / args.requests_per_second.max(1) as f64);
    let slots = Arc::new(Semaphore::new(args.clients.max(1)));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
    ));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let run_id = format!("{}", chrono::Utc::now().timestamp_millis());
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = began + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let body = batch(&run_id, i, args.events_per_request);
        let req = match &args.ingest_key {
            Some(k) => http.post(&url).bearer_auth(k),
            None => http.post(&url),
        }
        .json(&body);
        let hist = Arc::clone(&hist);
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await;
            let us = due.elapsed().as_micros().max(1) as u64;
            drop(permit);
            let status = match resp {
                Ok(r) => {
                    hist.lock().expect("histogram lock").saturating_record(us);
                    let code = r.status().as_u16();
                    let accepted = if code == 202 {
                        r.json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["accepted"].as_u64())
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    Some((code, accepted))
                }
                Err(_) => None,
            };
            let mut t = tally.lock().expect("tally lock");
            match status {
                Some((202, n)) => {
                    t.accepted_requests += 1;
                    t.accepted_events += n;
                }
                Some((429, _)) => t.throttled += 1,
                Some(_) => t.other += 1,
                None => t.errors += 1,
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = began.elapsed().as_secs_f64();
    let h = hist.lock().expect("histogram lock");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let t = tally.lock().expect("tally lock");
    Ok(IngestResult {
        requests: total,
        accepted_requests: t.accepted_requests,
        accepted_events: t.accepted_events,
        throttled: t.throttled,
        other: t.other,
        errors: t.errors,
        latency_ms: [
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
        ],
        secs,
    })
}
