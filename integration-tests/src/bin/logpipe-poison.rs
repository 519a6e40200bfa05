//! `logpipe-poison`: the fault suite's raw producer of poison records (`poison-run-test.sh`).
//!
//!   logpipe-poison produce BROKERS ROUNDS   one round of the poison set a second into logs.raw,
//!                                           each record acknowledged; prints the count
//!   logpipe-poison dlq BROKERS ROUNDS       reads logs.dlq back: exactly ROUNDS of each kind,
//!                                           each with its source and error headers; exit 1 if not
//!
//! The set is `logpipe_integration_tests::poison::records()`, the one `tests/poison.rs` checks.

use std::collections::BTreeMap;
use std::time::Duration;

use logpipe_common::kafka::KafkaSettings;
use logpipe_integration_tests as it;
use rdkafka::message::{Headers, Message};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(brokers), Some(rounds)) = (
        args.first(),
        args.get(1),
        args.get(2).and_then(|r| r.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: logpipe-poison produce|dlq BROKERS ROUNDS");
        return std::process::ExitCode::from(2);
    };
    let kafka = KafkaSettings {
        brokers: brokers.clone(),
        ..KafkaSettings::default()
    };
    match mode.as_str() {
        "produce" => {
            let producer = it::producer(&kafka);
            let mut sent = 0;
            for round in 0..rounds {
                let records: Vec<(String, Vec<u8>, &'static str)> = it::poison::records()
                    .into_iter()
                    .enumerate()
                    .map(|(i, (payload, ct, _))| (format!("poison-{round}-{i}"), payload, ct))
                    .collect();
                sent += records.len();
                it::produce_all(&producer, &kafka.raw_topic, records).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            println!("produced {sent}");
            std::process::ExitCode::SUCCESS
        }
        "dlq" => {
            let dlq = it::read_topic(&kafka, &kafka.dlq_topic, Duration::from_secs(5)).await;
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            let mut without_headers = 0;
            for m in &dlq {
                let header = |k: &str| {
                    m.headers()?
                        .iter()
                        .find(|h| h.key == k)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let complete = header("source.topic").as_deref() == Some(kafka.raw_topic.as_str())
                    && header("source.partition").is_some_and(|p| p.parse::<i32>().is_ok())
                    && header("source.offset").is_some_and(|o| o.parse::<i64>().is_ok())
                    && header("error.message").is_some_and(|e| !e.is_empty());
                if !complete {
                    without_headers += 1;
                }
                *kinds
                    .entry(header("error.kind").unwrap_or_else(|| "-".into()))
                    .or_default() += 1;
            }
            let mut want: BTreeMap<String, usize> = BTreeMap::new();
            for (_, _, kind) in it::poison::records() {
                *want.entry(kind.to_owned()).or_default() += rounds;
            }
            println!(
                "dlq records {} (expected {}), without full headers {without_headers}, by kind {kinds:?}",
                dlq.len(),
                want.values().sum::<usize>()
            );
            if kinds == want && without_headers == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                println!("expected by kind {want:?}");
                std::process::ExitCode::from(1)
            }
        }
        _ => {
            eprintln!("usage: logpipe-poison produce|dlq BROKERS ROUNDS");
            std::process::ExitCode::from(2)
        }
    }
}
