//! The generator's circuit breaker against a broker that dies and comes back. This test runs its own
//! Tansu broker (SQLite storage, so the topic survives the restart) on a free port, kills it with
//! SIGKILL mid-run, and starts it again on the same port and data directory.

use std::collections::HashSet;
use std::process::Child;
use std::time::Duration;

use logpipe_generator::engine::{RunParams, StartRequest};
use logpipe_integration_tests as it;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

fn start_broker(port: u16, dir: &std::path::Path) -> Child {
    it::start_tansu(port, dir, "sqlite://tansu.db")
}

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

    let wait = Duration::from_secs(60);
    it::wait_for("first events acknowledged", wait, || {
        let s = engine.status();
        async move {
            if s.events_acked > 300 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;

    broker.kill().unwrap();
    broker.wait().unwrap();
    it::wait_for(
        "breaker open after the broker died",
        Duration::from_secs(20),
        || {
            let s = engine.status();
            async move {
                if s.breaker_state == "open" {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            }
        },
    )
    .await;

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
    it::wait_for("breaker closed and generation resumed", wait, || {
        let s = engine.status();
        async move {
            if s.breaker_state == "closed" && s.events_acked > acked_during_outage + 300 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
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
