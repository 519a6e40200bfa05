//! The walking skeleton end to end, in process: gateway → generator → broker → collector → Postgres,
//! each test on its own topics, schema and consumer group.

use std::sync::atomic::Ordering;
use std::time::Duration;

use logpipe_integration_tests as it;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

async fn status(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_started_through_the_gateway_land_in_postgres_exactly_once() {
    let name = it::unique("e2e");
    let (collector, _) = it::start_collector(it::collector_config(&name, 3)).await;
    let generator = it::start_generator(it::generator_config(&name, 3)).await;
    let mut gateway_config = logpipe_gateway::config::GatewayConfig {
        port: 0,
        generator_urls: vec![generator.url("")],
        collector_url: collector.url(""),
        ..Default::default()
    };
    gateway_config.rate_limit.key_prefix = name.clone();
    let gateway = it::start_gateway(gateway_config).await;
    let client = reqwest::Client::new();

    let resp = it::send(
        client
            .post(gateway.url("/api/v1/generator/start"))
            .json(&json!({"rate_per_second": 2000, "count": 3000, "batch_size": 100})),
    )
    .await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());

    let st = it::wait_for("all 3000 events acknowledged by Kafka", WAIT, || {
        let client = client.clone();
        let url = gateway.url("/api/v1/generator/status");
        async move {
            let s = status(&client, &url).await;
            if s["events_acked"] == 3000 && s["state"] == "idle" {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        }
    })
    .await;
    assert_eq!(st["events_generated"], 3000);
    assert_eq!(st["events_failed"], 0);
    assert_eq!(st["instances"][0]["reachable"], true);

    let pool = it::schema_pool(&name).await;
    it::wait_rows(&pool, 3000).await;
    let (distinct, offsets): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT event_id) FROM log_events),
                (SELECT COALESCE(sum(next_offset), 0)::int8 FROM consumer_offsets)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(distinct, 3000);
    // Stored offsets cover exactly the 3000 records of the fresh topic.
    assert_eq!(offsets, 3000);
    let services: i64 = sqlx::query_scalar("SELECT count(DISTINCT service) FROM log_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        services >= 5,
        "events come from several services, got {services}"
    );

    gateway.stop().await;
    generator.stop().await;
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_collector_resumes_from_the_offsets_stored_in_postgres() {
    let name = it::unique("resume");
    let generator = it::start_generator(it::generator_config(&name, 2)).await;
    let client = reqwest::Client::new();
    let produce = |count: u64| {
        let client = client.clone();
        let generator_url = generator.url("/api/v1/generator");
        async move {
            let r = it::send(
                client
                    .post(format!("{generator_url}/start"))
                    .json(&json!({"rate_per_second": 5000, "count": count})),
            )
            .await;
            assert_eq!(r.status(), 202);
            it::wait_for("run finished", WAIT, || {
                let client = client.clone();
                let url = format!("{generator_url}/status");
                async move {
                    let s = status(&client, &url).await;
                    if s["state"] == "idle" {
                        Ok(())
                    } else {
                        Err(s.to_string())
                    }
                }
            })
            .await;
            client
                .post(format!("{generator_url}/stop"))
                .send()
                .await
                .unwrap();
        }
    };

    produce(500).await;
    let pool = it::schema_pool(&name).await;
    let wait_rows = |n: i64| {
        let pool = pool.clone();
        async move {
            it::wait_for(&format!("{n} rows"), WAIT, || {
                let pool = pool.clone();
                async move {
                    let c = it::count_events(&pool).await;
                    if c == n {
                        Ok(())
                    } else {
                        Err(format!("{c} rows"))
                    }
                }
            })
            .await
        }
    };
    let (first, _) = it::start_collector(it::collector_config(&name, 2)).await;
    wait_rows(500).await;
    first.stop().await;

    produce(500).await;
    let (second, health) = it::start_collector(it::collector_config(&name, 2)).await;
    wait_rows(1000).await;
    // Give a wrongly rewound consumer time to show itself, then check it read only the new records.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health.consumed.load(Ordering::Relaxed), 500);
    assert_eq!(it::count_events(&pool).await, 1000);
    second.stop().await;
    generator.stop().await;
    it::drop_schema(&pool, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_go_to_the_dlq_with_their_headers_and_do_not_stop_the_partition() {
    let s = it::TestStack::collector("dlq", 1).await;
    let (pool, kafka, name) = (s.pool.clone(), &s.kafka, &s.name);
    let producer: FutureProducer = kafka.client_config("test-producer").create().unwrap();
    let good = |i: u32| {
        json!({"event_id": format!("{name}-{i}"), "timestamp": "2026-11-23T08:00:00Z", "level": "INFO",
               "service": "svc", "message": format!("hello {i}")})
        .to_string()
    };
    let records = [
        good(1),
        "{not json".to_owned(),
        good(2),
        json!({"event_id": "x"}).to_string(),
        good(3),
    ];
    for r in &records {
        producer
            .send(
                FutureRecord::<(), _>::to(&kafka.raw_topic).payload(r),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    it::wait_rows(&pool, 3).await;

    let consumer: StreamConsumer = kafka
        .client_config("test-dlq-reader")
        .set("group.id", format!("{name}-dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.dlq_topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("DLQ record")
            .unwrap();
        let headers = m.headers().expect("DLQ record has headers");
        let get = |k: &str| {
            headers
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            get("source.topic").as_deref(),
            Some(kafka.raw_topic.as_str())
        );
        assert_eq!(get("source.partition").as_deref(), Some("0"));
        assert_eq!(get("error.kind").as_deref(), Some("invalid_json"));
        assert!(get("error.message").is_some());
        seen.push((
            get("source.offset").unwrap(),
            m.payload().map(<[u8]>::to_vec),
        ));
    }
    seen.sort();
    assert_eq!(seen[0], ("1".into(), Some(b"{not json".to_vec())));
    assert_eq!(seen[1].0, "3");
    let next: i64 = sqlx::query_scalar("SELECT next_offset FROM consumer_offsets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(next, 5, "the offset moves past poison records too");
    s.stop().await;
}

/// A collector resuming at a stored offset inside a producer's record batch stores the rest of that
/// batch: the broker answers with the whole batch (no lookback by default; Tansu 0.6 answered with
/// nothing, so the collector fetched `resume_lookback_records` earlier until the move to nisshi).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_resuming_inside_a_producer_batch_stores_the_rest_of_that_batch() {
    let name = it::unique("midbatch");
    let config = it::collector_config(&name, 1);
    let kafka = config.kafka.clone();
    logpipe_common::kafka::ensure_topics(&kafka, &kafka.topics())
        .await
        .unwrap();
    // One record batch of 1,000 events: a long linger lets the producer gather them all.
    let producer: rdkafka::producer::FutureProducer = kafka
        .client_config("test-batch-producer")
        .set("linger.ms", "500")
        .create()
        .unwrap();
    let start = chrono::Utc::now() - chrono::Duration::seconds(60);
    let events = it::profile_events(
        logpipe_generator::events::Profile::Steady,
        7,
        start,
        Duration::from_secs(50),
        1_000,
    );
    it::produce_events(&producer, &kafka.raw_topic, &events).await;

    // A previous run stored the first 400 records.
    logpipe_collector::db::Db::connect(&config.database)
        .await
        .unwrap();
    let pool = it::schema_pool(&name).await;
    sqlx::query(
        "INSERT INTO consumer_offsets (consumer_group, topic, kafka_partition, next_offset)
         VALUES ($1, $2, 0, 400)",
    )
    .bind(&config.consumer.group_id)
    .bind(&kafka.raw_topic)
    .execute(&pool)
    .await
    .unwrap();

    let (collector, health) = it::start_collector(config).await;
    it::wait_for("600 rows", WAIT, || {
        let pool = pool.clone();
        async move {
            let c = it::count_events(&pool).await;
            if c == 600 {
                Ok(())
            } else {
                Err(format!("{c} rows"))
            }
        }
    })
    .await;
    let (lo, hi): (i64, i64) =
        sqlx::query_as("SELECT min(kafka_offset), max(kafka_offset) FROM log_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((lo, hi), (400, 999));
    assert_eq!(health.consumed.load(Ordering::Relaxed), 600);
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}
