//! The generator's circuit breaker against a broker that dies and comes back. Each test runs its own
//! Tansu broker on a free port, kills it with SIGKILL mid-run, and starts it again on the same port:
//! on its SQLite data (the topic and the producer ids survive), or empty (in memory: the broker
//! forgot the producer, which must be replaced, once).

use std::collections::HashSet;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use logpipe_generator::config::GeneratorConfig;
use logpipe_generator::engine::{Engine, RunParams, StartRequest, Status};
use logpipe_integration_tests as it;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

fn start_broker(port: u16, dir: &std::path::Path) -> Child {
    it::start_broker(port, dir, it::BrokerLog::Durable)
}

/// Wait until the generator's status satisfies `ok`.
async fn wait_status(engine: &Engine, what: &str, timeout: Duration, ok: impl Fn(&Status) -> bool) {
    it::wait_for(what, timeout, || {
        let s = engine.status();
        let done = ok(&s);
        async move {
            if done {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
}

/// Start the generator and generate at 300 events/s, wait for the first acknowledgements, SIGKILL
/// the broker and wait for the breaker to open.
async fn generate_then_kill_the_broker(
    config: &GeneratorConfig,
    broker: &mut Child,
) -> (Arc<Engine>, it::Running) {
    let app = logpipe_generator::Application::build(config.clone())
        .await
        .unwrap();
    let engine = app.engine();
    let running = it::spawn(app.local_addr(), |t| app.run_until_stopped(t));
    let req = StartRequest {
        rate_per_second: Some(300),
        batch_size: Some(10),
        ..Default::default()
    };
    engine
        .start(RunParams::from_request(&req, &config.defaults).unwrap())
        .unwrap();
    wait_status(&engine, "first events acknowledged", WAIT, |s| {
        s.events_acked > 300
    })
    .await;
    broker.kill().unwrap();
    broker.wait().unwrap();
    wait_status(
        &engine,
        "breaker open after the broker died",
        Duration::from_secs(20),
        |s| s.breaker_state == "open",
    )
    .await;
    (engine, running)
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_when_the_broker_dies_and_generation_resumes_by_itself_without_duplicates() {
    let name = it::unique("breaker");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = it::free_port();
    let mut broker = start_broker(port, &dir);

    let mut config = it::generator_config(&name, 2);
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.breaker.failure_threshold = 3;
    config.breaker.call_timeout_ms = 1_000;
    config.breaker.open_ms = 1_000;
    config.breaker.max_open_ms = 2_000;
    // Records queued before the outage must survive it, not expire during it.
    config.producer.delivery_timeout_ms = 120_000;
    let (engine, running) = generate_then_kill_the_broker(&config, &mut broker).await;

    // While open: (almost) nothing generated, skipped events counted.
    let before = engine.status();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = engine.status();
    assert!(
        after.events_generated - before.events_generated <= 5,
        "only probes while open: {} -> {}",
        before.events_generated,
        after.events_generated
    );
    assert!(
        after.events_skipped > before.events_skipped,
        "skipped events are counted"
    );

    let mut broker = start_broker(port, &dir);
    let acked_during_outage = engine.status().events_acked;
    wait_status(
        &engine,
        "breaker closed and generation resumed",
        WAIT,
        |s| s.breaker_state == "closed" && s.events_acked > acked_during_outage + 300,
    )
    .await;
    let end = engine.stop().await;
    assert_eq!(end.events_failed, 0, "{end:?}");
    assert_eq!(end.events_acked, end.events_generated, "{end:?}");

    // Every acknowledged event is in the topic exactly once.
    let consumer: StreamConsumer = config
        .kafka
        .client_config("breaker-check")
        .set("group.id", format!("{name}-check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.kafka.raw_topic]).unwrap();
    let mut ids = HashSet::new();
    let mut records = 0u64;
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        ids.insert(v["event_id"].as_str().unwrap().to_owned());
        records += 1;
    }
    assert_eq!(records, ids.len() as u64, "no event twice in the topic");
    assert_eq!(
        records, end.events_acked,
        "every acknowledged event is in the topic"
    );

    running.stop().await;
    broker.kill().unwrap();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_in_memory_broker_restarts_empty_the_producer_is_replaced_once_and_generation_resumes(
) {
    let name = it::unique("breakermem");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = it::free_port();
    let mut broker = it::start_broker(port, &dir, it::BrokerLog::Memory);

    // The default backoff (2 s doubling to 30 s): by the time the stuck producer is replaced
    // (15 s without an acknowledgement), the old producer's breaker probed only every 16 s.
    let mut config = it::generator_config(&name, 2);
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.breaker.call_timeout_ms = 1_000;
    let (engine, running) = generate_then_kill_the_broker(&config, &mut broker).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Back, empty: the topic made again (as the collector and the gateway do at start).
    let mut broker = it::start_broker(port, &dir, it::BrokerLog::Memory);
    let kafka = config.kafka.clone();
    it::wait_for("topics made on the new broker", WAIT, || {
        let kafka = kafka.clone();
        async move {
            logpipe_common::kafka::ensure_topics(&kafka, &kafka.topics())
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let acked_before = engine.status().events_acked;
    wait_status(&engine, "generation resumed on the new broker", WAIT, |s| {
        s.breaker_state == "closed" && s.events_acked > acked_before + 300
    })
    .await;
    // Judged on its own, the fresh producer is not replaced again for the old one's backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        engine
            .counters()
            .producers_replaced
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "{:?}",
        engine.status()
    );
    let end = engine.stop().await;
    assert!(end.events_acked > acked_before + 300, "{end:?}");

    running.stop().await;
    broker.kill().unwrap();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
