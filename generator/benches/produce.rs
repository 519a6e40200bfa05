//! Generator throughput against its ceiling, in one run, on a real broker.
//!
//!   LOGPIPE_BENCH_BROKERS=127.0.0.1:9092 cargo bench -p logpipe-generator --bench produce [-- N]
//!
//! Ceiling: N pre-serialized records of the standard profile (key, payload and the same two headers
//! the generator attaches) sent by a bare rdkafka loop (same producer settings, no generation, no
//! pacing). Generator: the real engine producing N events with
//! the rate set to the maximum. Both count only delivery-acknowledged records. Each phase uses its own
//! fresh topic so neither pays for the other's data.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use logpipe_common::kafka::{ensure_topics, KafkaSettings};
use logpipe_generator::config::GeneratorConfig;
use logpipe_generator::engine::{Engine, RunParams, StartRequest};
use logpipe_generator::events::{EventFactory, Profile};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500_000);
    let brokers =
        std::env::var("LOGPIPE_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
        let settings = |topic: &str| KafkaSettings {
            brokers: brokers.clone(),
            raw_topic: topic.into(),
            dlq_topic: format!("{topic}.dlq"),
            alerts_topic: format!("{topic}.alerts"),
            ..KafkaSettings::default()
        };
        let config = GeneratorConfig::default();

        // Ceiling: the bare loop.
        let ceiling_kafka = settings(&format!("bench.ceiling.{tag}"));
        ensure_topics(&ceiling_kafka, &ceiling_kafka.topics())
            .await
            .expect("topics");
        let mut factory = EventFactory::new(1, "bench", Profile::Steady);
        let payloads: Vec<(String, Vec<u8>, String)> = (0..n)
            .map(|_| {
                let e = factory.next_event(Utc::now(), Duration::ZERO);
                let traceparent = format!(
                    "00-{}-{}-01",
                    e.trace_id.as_deref().unwrap_or_default(),
                    e.span_id.as_deref().unwrap_or_default()
                );
                (e.service.clone(), e.to_json(), traceparent)
            })
            .collect();
        let avg = payloads.iter().map(|(_, p, _)| p.len()).sum::<usize>() / payloads.len();
        let p = &config.producer;
        let producer: ThreadedProducer<DefaultProducerContext> = ceiling_kafka
            .client_config("bench-ceiling")
            .set("enable.idempotence", "true")
            .set("acks", &p.acks)
            .set("linger.ms", p.linger_ms.to_string())
            .set("compression.type", &p.compression)
            .set(
                "queue.buffering.max.messages",
                p.queue_max_messages.to_string(),
            )
            .set("batch.num.messages", "10000")
            .create()
            .expect("producer");
        let topic = ceiling_kafka.raw_topic.clone();
        let ceiling_secs = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            for (key, payload, traceparent) in &payloads {
                loop {
                    let headers = OwnedHeaders::new_with_capacity(2)
                        .insert(Header {
                            key: "content-type",
                            value: Some("application/json"),
                        })
                        .insert(Header {
                            key: "traceparent",
                            value: Some(traceparent.as_str()),
                        });
                    let record = BaseRecord::to(&topic)
                        .key(key)
                        .payload(payload)
                        .headers(headers);
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err((e, _)) => panic!("send failed: {e}"),
                    }
                }
            }
            producer.flush(Duration::from_secs(60)).expect("flush");
            started.elapsed().as_secs_f64()
        })
        .await
        .expect("ceiling loop");

        // The generator engine, unthrottled.
        let gen_kafka = settings(&format!("bench.generator.{tag}"));
        let engine = Engine::new(GeneratorConfig {
            kafka: gen_kafka.clone(),
            instance_id: "bench".into(),
            ..config.clone()
        })
        .expect("engine");
        ensure_topics(&gen_kafka, &gen_kafka.topics())
            .await
            .expect("topics");
        let req = StartRequest {
            rate_per_second: Some(1_000_000),
            threads: Some(2),
            batch_size: Some(1_000),
            count: Some(n),
            seed: Some(1),
            ..Default::default()
        };
        let params = RunParams::from_request(&req, &config.defaults).expect("params");
        let started = Instant::now();
        engine.start(params).expect("start");
        while engine.counters().acked.load(Ordering::Relaxed)
            + engine.counters().failed.load(Ordering::Relaxed)
            < n
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let gen_secs = started.elapsed().as_secs_f64();
        let failed = engine.counters().failed.load(Ordering::Relaxed);
        engine.stop().await;

        let ceiling = n as f64 / ceiling_secs;
        let generator = n as f64 / gen_secs;
        println!("events per phase:        {n} (avg payload {avg} bytes)");
        println!("ceiling (bare rdkafka):  {ceiling:>10.0} events/s");
        println!(
            "generator engine:        {generator:>10.0} events/s  (failed deliveries: {failed})"
        );
        println!("ratio generator/ceiling: {:>10.3}", generator / ceiling);
    });
}
