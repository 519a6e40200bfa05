//! The producers every service sends through (`logpipe_common::producer`), against the real
//! broker: each record's acknowledgement names where it went, a record refused at once comes back
//! whole, and the polling thread sleeps while nothing happens. One test, so that no other
//! producer's thread runs in this process while threads' CPU is read.

use std::time::Duration;

use logpipe_common::kafka::ensure_topics;
use logpipe_common::producer::AckProducer;
use logpipe_integration_tests as it;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

/// CPU time (ns) of this process's threads named `name` (as `/proc` shows it: 15 bytes at most).
fn thread_cpu_ns(name: &str) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            (comm.trim_end() == name).then_some(())?;
            let stat = std::fs::read_to_string(t.join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_name_each_record_refusals_come_back_whole_and_an_idle_producer_sleeps() {
    let name = it::unique("producer");
    let kafka = it::kafka(&name, 1);
    ensure_topics(&kafka, &[(kafka.raw_topic.clone(), 1)])
        .await
        .expect("topic");
    let mut config = kafka.client_config("logpipe-test");
    config
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "10000");
    let producer = AckProducer::new(&config).expect("producer");

    // Each acknowledgement names its partition and offset, in the order sent.
    let acks: Vec<_> = (0..10)
        .map(|i| {
            let payload = format!("record {i}");
            producer
                .send(BaseRecord::<(), _>::to(&kafka.raw_topic).payload(&payload))
                .map_err(|(e, _)| e)
                .expect("queued")
        })
        .collect();
    let mut offsets = Vec::new();
    for ack in acks {
        let d = ack.await.expect("acknowledged");
        assert_eq!(d.partition, 0);
        offsets.push(d.offset);
    }
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>());
    let read = it::read_topic(&kafka, &kafka.raw_topic, Duration::from_secs(2)).await;
    assert_eq!(read.len(), 10);

    // A group's records are counted together, and its waiter is told once they all came back:
    // an empty group at once; a record refused at once does not count; a record the broker
    // cannot take (a partition the topic lacks) is reported as the group's error.
    let empty = producer.group().wait().await;
    assert_eq!((empty.acked, empty.error.is_none()), (0, true));
    let group = producer.group();
    for i in 0..20 {
        let payload = format!("grouped {i}");
        group
            .send(BaseRecord::<(), _>::to(&kafka.raw_topic).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    let too_big = vec![b'x'; 20_000];
    assert!(group
        .send(BaseRecord::<(), _>::to(&kafka.raw_topic).payload(&too_big))
        .is_err());
    let outcome = tokio::time::timeout(Duration::from_secs(10), group.wait())
        .await
        .expect("the group is told");
    assert_eq!((outcome.acked, outcome.error.is_none()), (20, true));
    let group = producer.group();
    let refused_at_once = group
        .send(
            BaseRecord::<(), _>::to(&kafka.raw_topic)
                .partition(7)
                .payload("nowhere"),
        )
        .is_err();
    group
        .send(BaseRecord::<(), _>::to(&kafka.raw_topic).payload("somewhere"))
        .map_err(|(e, _)| e)
        .expect("queued");
    let outcome = tokio::time::timeout(Duration::from_secs(30), group.wait())
        .await
        .expect("the group is told");
    assert_eq!(outcome.acked, 1);
    assert!(
        refused_at_once || outcome.error.is_some(),
        "the record for a partition the topic lacks failed somewhere"
    );
    let read = it::read_topic(&kafka, &kafka.raw_topic, Duration::from_secs(2)).await;
    assert_eq!(read.len(), 31);

    // A record larger than the producer takes is refused at once, and comes back whole.
    let big = vec![b'x'; 20_000];
    match producer.send(BaseRecord::<(), _>::to(&kafka.raw_topic).payload(&big)) {
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), back)) => {
            assert_eq!(back.payload.map(|p| p.len()), Some(20_000));
            assert_eq!(back.topic, kafka.raw_topic);
        }
        other => panic!("expected MessageSizeTooLarge, got {:?}", other.map(|_| ())),
    }
    // `send_and_wait` reports the same refusal as an error, without waiting.
    let refused = producer
        .send_and_wait(
            BaseRecord::<(), _>::to(&kafka.raw_topic).payload(&big),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            ))
        ),
        "{refused:?}"
    );
    producer.flush(Duration::from_secs(5)).expect("flush");

    // Idle, ours against rdkafka's FutureProducer in the same seconds: rdkafka's thread spins
    // through the last partial millisecond of every 100 ms poll (about 1 % of a core); ours
    // sleeps. Thread CPU time, not wall time, so a busy machine does not move it much.
    let reference: FutureProducer = config.create().expect("reference producer");
    reference
        .client()
        .fetch_metadata(Some(&kafka.raw_topic), Duration::from_secs(5))
        .expect("metadata");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ours0, theirs0) = (
        thread_cpu_ns("producer-poll"),
        thread_cpu_ns("producer pollin"),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ours = thread_cpu_ns("producer-poll") - ours0;
    let theirs = thread_cpu_ns("producer pollin") - theirs0;
    eprintln!(
        "idle polling thread CPU in 3 s: ours {:.2} ms, rdkafka's FutureProducer {:.2} ms",
        ours as f64 / 1e6,
        theirs as f64 / 1e6
    );
    assert!(
        ours * 4 < theirs,
        "an idle producer's thread used {ours} ns of CPU in 3 s against rdkafka's {theirs} ns \
         (if rdkafka no longer spins, PolledProducer may go)"
    );

    // Dropping the last handle stops and joins its thread.
    drop(producer);
    assert_eq!(
        threads_named("producer-poll"),
        0,
        "no polling thread is left"
    );
}

fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter(|t| {
            t.as_ref()
                .ok()
                .and_then(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .is_some_and(|c| c.trim_end() == name)
        })
        .count()
}
