//! The broker conformance cases: what logpipe's clients (librdkafka, through rdkafka) expect of a
//! Kafka-API broker, each named by the Apache Kafka behaviour it checks, run against whichever broker
//! `brokers` points at. `logpipe-broker-conformance` prints them as a table (the baseline for a
//! broker change, issue 33); `tests/conformance.rs` asserts the ones logpipe relies on with no
//! workaround.
//!
//! Every case makes its own topic and consumer group, so cases and runs never meet. A group case
//! that needs a member to die without leaving runs that member as a child process
//! (`logpipe-broker-conformance member ...`) and SIGKILLs it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logpipe_common::kafka::{ensure_topics, KafkaSettings};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// One case: its name, what Apache Kafka does, whether logpipe relies on it with no workaround
/// (those fail the test when they fail), and how logpipe uses it.
pub struct Case {
    pub name: &'static str,
    pub kafka: &'static str,
    pub relied_on: bool,
    pub logpipe: &'static str,
}

pub const CASES: [Case; 7] = [
    Case {
        name: "idempotent_produce",
        kafka: "1,000 idempotent produces are stored once each, at contiguous offsets",
        relied_on: true,
        logpipe: "relies on it: the generator's and the gateway's producers",
    },
    Case {
        name: "offset_commit_round_trip",
        kafka: "an offset committed by a member is fetched by the next member of the group, which starts there",
        relied_on: false,
        logpipe: "does not use it: offsets live in PostgreSQL, committed with the rows",
    },
    Case {
        name: "fetch_inside_a_batch",
        kafka: "a fetch from an offset inside a record batch returns that batch; the consumer starts at the offset",
        relied_on: true,
        logpipe: "relies on it: a collector resumes at its stored offset (`resume_lookback_records` 0; a lookback for a broker that fails this)",
    },
    Case {
        name: "list_offsets_by_timestamp",
        kafka: "ListOffsets by timestamp gives the first offset at or after it, and the log end past the last",
        relied_on: false,
        logpipe: "does not use it",
    },
    Case {
        name: "member_killed",
        kafka: "a SIGKILLed member's partitions go to the survivor within the session timeout (6 s) and a rebalance",
        relied_on: true,
        logpipe: "relies on it: a crashed collector's partitions must move (`OrphanWatch` reports them when not)",
    },
    Case {
        name: "cooperative_sticky",
        kafka: "two members with cooperative-sticky share four partitions, two each; when one leaves, the other gets all four",
        relied_on: true,
        logpipe: "relies on it: the collector's default protocol (`assignment_strategy`; `range` for a broker that fails this)",
    },
    Case {
        name: "static_membership",
        kafka: "a static member (group.instance.id) restarted within its session timeout gets its partitions back at once",
        relied_on: false,
        logpipe: "works around it: dynamic membership by default (`group_instance_id` unset)",
    },
];

/// What a case saw.
#[derive(Debug)]
pub struct Outcome {
    pub pass: bool,
    pub detail: String,
}

fn outcome(pass: bool, detail: String) -> Outcome {
    Outcome { pass, detail }
}

/// Run the case named `name` against `brokers`; `exe` is the conformance binary (for members run as
/// child processes).
pub async fn run(name: &str, brokers: &str, exe: &std::path::Path) -> Outcome {
    let result = match name {
        "idempotent_produce" => idempotent_produce(brokers).await,
        "offset_commit_round_trip" => offset_commit_round_trip(brokers).await,
        "fetch_inside_a_batch" => fetch_inside_a_batch(brokers).await,
        "list_offsets_by_timestamp" => list_offsets_by_timestamp(brokers).await,
        "member_killed" => member_killed(brokers, exe).await,
        "cooperative_sticky" => cooperative_sticky(brokers).await,
        "static_membership" => static_membership(brokers).await,
        other => Err(anyhow::anyhow!("no case named {other}")),
    };
    result.unwrap_or_else(|e| outcome(false, format!("error: {e:#}")))
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("conformance-{what}-{}-{nanos}", std::process::id())
}

async fn topic(brokers: &str, what: &str, partitions: i32) -> anyhow::Result<String> {
    let name = unique(what);
    let settings = KafkaSettings {
        brokers: brokers.to_owned(),
        ..KafkaSettings::default()
    };
    ensure_topics(&settings, &[(name.clone(), partitions)]).await?;
    Ok(name)
}

fn producer(brokers: &str, linger_ms: u32) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .create()?)
}

/// Produce `n` records to partition 0, all sent before any is awaited (so they share batches),
/// with `timestamp(i)` when given.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    n: usize,
    timestamp: impl Fn(usize) -> Option<i64>,
) -> anyhow::Result<()> {
    let payloads: Vec<String> = (0..n).map(|i| format!("record {i}")).collect();
    let sends: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut r = FutureRecord::<(), _>::to(topic)
                .partition(0)
                .payload(payload);
            if let Some(ts) = timestamp(i) {
                r = r.timestamp(ts);
            }
            p.send(r, Duration::from_secs(10))
        })
        .collect();
    for s in futures::future::join_all(sends).await {
        s.map_err(|(e, _)| e)?;
    }
    Ok(())
}

fn consumer(brokers: &str, group: &str, extra: &[(&str, &str)]) -> anyhow::Result<StreamConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    Ok(c.create()?)
}

/// The next record within `wait`, or none.
async fn next(c: &StreamConsumer, wait: Duration) -> anyhow::Result<Option<(i32, i64)>> {
    match tokio::time::timeout(wait, c.recv()).await {
        Ok(m) => {
            let m = m?;
            Ok(Some((m.partition(), m.offset())))
        }
        Err(_) => Ok(None),
    }
}

async fn idempotent_produce(brokers: &str) -> anyhow::Result<Outcome> {
    let topic = topic(brokers, "idem", 1).await?;
    produce(&producer(brokers, 5)?, &topic, 1_000, |_| None).await?;
    let c = consumer(brokers, &unique("idem"), &[])?;
    c.subscribe(&[&topic])?;
    let mut offsets = Vec::new();
    while let Some((_, o)) = next(&c, Duration::from_secs(10)).await? {
        offsets.push(o);
        if offsets.len() == 1_000 {
            break;
        }
    }
    let contiguous = offsets.iter().copied().eq(0..1_000);
    Ok(outcome(
        contiguous,
        format!(
            "read {} records back, offsets 0..999 in order: {contiguous}",
            offsets.len()
        ),
    ))
}

async fn offset_commit_round_trip(brokers: &str) -> anyhow::Result<Outcome> {
    let topic = topic(brokers, "commit", 1).await?;
    // One record per batch, so the next member's fetch never starts inside one (its own case).
    let p = producer(brokers, 0)?;
    for _ in 0..10 {
        produce(&p, &topic, 1, |_| None).await?;
    }
    let group = unique("commit");
    {
        let c = consumer(brokers, &group, &[])?;
        c.subscribe(&[&topic])?;
        for _ in 0..5 {
            let m = tokio::time::timeout(Duration::from_secs(20), c.recv()).await??;
            if m.offset() == 4 {
                c.commit_message(&m, CommitMode::Sync)?;
            }
        }
    }
    let c = consumer(brokers, &group, &[])?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))?
        .elements()
        .first()
        .map(|e| e.offset());
    c.subscribe(&[&topic])?;
    let first = next(&c, Duration::from_secs(20)).await?.map(|(_, o)| o);
    let pass = committed == Some(Offset::Offset(5)) && first == Some(5);
    Ok(outcome(
        pass,
        format!("committed {committed:?}, the next member started at {first:?} (expected 5, 5)"),
    ))
}

async fn fetch_inside_a_batch(brokers: &str) -> anyhow::Result<Outcome> {
    let topic = topic(brokers, "batch", 1).await?;
    // A long linger puts the ten records in one batch.
    produce(&producer(brokers, 200)?, &topic, 10, |_| None).await?;
    let from = |start: i64| {
        let (brokers, topic) = (brokers.to_owned(), topic.clone());
        async move {
            let c = consumer(&brokers, &unique("batch"), &[])?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(start))?;
            c.assign(&tpl)?;
            let mut offsets = Vec::new();
            while let Some((_, o)) = next(&c, Duration::from_secs(10)).await? {
                offsets.push(o);
                if o == 9 {
                    break;
                }
            }
            anyhow::Ok(offsets)
        }
    };
    let inside = from(5).await?;
    let pass = inside == [5, 6, 7, 8, 9];
    let mut detail = format!("from 5: read {inside:?}");
    if !pass {
        detail += &format!("; from 0: read {:?}", from(0).await?);
    }
    Ok(outcome(pass, detail))
}

async fn list_offsets_by_timestamp(brokers: &str) -> anyhow::Result<Outcome> {
    let topic = topic(brokers, "times", 1).await?;
    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    produce(&producer(brokers, 5)?, &topic, 3, |i| {
        Some(base + 1_000 * i as i64)
    })
    .await?;
    let c = consumer(brokers, &unique("times"), &[])?;
    let at = |ts: i64| -> anyhow::Result<Offset> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(ts))?;
        let found = c.offsets_for_times(tpl, Duration::from_secs(10))?;
        Ok(found
            .elements()
            .first()
            .map_or(Offset::Invalid, |e| e.offset()))
    };
    let middle = at(base + 500)?;
    let past = at(base + 10_000)?;
    let pass = middle == Offset::Offset(1) && matches!(past, Offset::End | Offset::Offset(3));
    Ok(outcome(
        pass,
        format!("0.5 s after the first record: {middle:?} (expected 1); after the last: {past:?} (expected the end)"),
    ))
}

/// How many partitions `c` owns, polled while it waits so its rebalances are served.
async fn owned(c: &StreamConsumer) -> anyhow::Result<usize> {
    let _ = next(c, Duration::from_millis(200)).await?;
    Ok(c.assignment()?.count())
}

/// Poll `c` until `done(owned)` or `wait` passes; the time it took, or none.
async fn until(
    c: &StreamConsumer,
    wait: Duration,
    done: impl Fn(usize) -> bool,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    while start.elapsed() < wait {
        if done(owned(c).await?) {
            return Ok(Some(start.elapsed()));
        }
    }
    Ok(None)
}

/// A group member in a child process: it prints how many partitions it owns whenever that changes.
pub async fn member(brokers: &str, topic: &str, group: &str) -> anyhow::Result<()> {
    let c = consumer(brokers, group, &[])?;
    c.subscribe(&[topic])?;
    let mut last = usize::MAX;
    loop {
        let n = owned(&c).await?;
        if n != last {
            println!("owns {n}");
            last = n;
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn member_killed(brokers: &str, exe: &std::path::Path) -> anyhow::Result<Outcome> {
    use std::io::BufRead;
    let topic = topic(brokers, "kill", 4).await?;
    let group = unique("kill");
    let mut child = Killed(
        Command::new(exe)
            .args(["member", brokers, &topic, &group])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().expect("piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(line)) if line == "owns 4" => break,
            Ok(None) => anyhow::bail!("the child member exited"),
            _ => {}
        }
    }
    let c = consumer(brokers, &group, &[])?;
    c.subscribe(&[&topic])?;
    let Some(split) = until(&c, Duration::from_secs(30), |n| n > 0).await? else {
        return Ok(outcome(
            false,
            "the second member got no partition in 30 s".into(),
        ));
    };
    child.0.kill()?; // SIGKILL: no LeaveGroup
    let took = until(&c, Duration::from_secs(30), |n| n == 4).await?;
    let pass = took.is_some_and(|t| t <= Duration::from_secs(6 + 6));
    Ok(outcome(
        pass,
        format!(
            "the survivor got a share {:.1} s after joining; after the SIGKILL it owned all 4 in {} (bound: 6 s session + 6 s)",
            split.as_secs_f64(),
            took.map_or("more than 30 s".into(), |t| format!("{:.1} s", t.as_secs_f64()))
        ),
    ))
}

async fn cooperative_sticky(brokers: &str) -> anyhow::Result<Outcome> {
    let topic = topic(brokers, "coop", 4).await?;
    let group = unique("coop");
    let strategy = [("partition.assignment.strategy", "cooperative-sticky")];
    let a = consumer(brokers, &group, &strategy)?;
    let b = consumer(brokers, &group, &strategy)?;
    a.subscribe(&[&topic])?;
    b.subscribe(&[&topic])?;
    let start = Instant::now();
    let (mut na, mut nb) = (0, 0);
    while start.elapsed() < Duration::from_secs(30) {
        let (x, y) = tokio::join!(owned(&a), owned(&b));
        (na, nb) = (x?, y?);
        if na == 2 && nb == 2 {
            break;
        }
    }
    let shared = format!(
        "owned {na} and {nb} after {:.1} s (expected 2 and 2)",
        start.elapsed().as_secs_f64()
    );
    if (na, nb) != (2, 2) {
        return Ok(outcome(false, shared));
    }
    drop(b); // a clean close: LeaveGroup, then the survivor is given the leaver's partitions
    let took = until(&a, Duration::from_secs(30), |n| n == 4).await?;
    Ok(outcome(
        took.is_some(),
        format!(
            "{shared}; when one left, the other owned all 4 in {}",
            took.map_or("more than 30 s".into(), |t| format!(
                "{:.1} s",
                t.as_secs_f64()
            ))
        ),
    ))
}

async fn static_membership(brokers: &str) -> anyhow::Result<Outcome> {
    let topic = topic(brokers, "static", 4).await?;
    let group = unique("static");
    let id = [
        ("group.instance.id", "conformance-a"),
        ("session.timeout.ms", "20000"),
    ];
    {
        let a = consumer(brokers, &group, &id)?;
        a.subscribe(&[&topic])?;
        if until(&a, Duration::from_secs(30), |n| n == 4)
            .await?
            .is_none()
        {
            return Ok(outcome(
                false,
                "the static member got no partitions in 30 s".into(),
            ));
        }
    } // closed: a static member leaves no LeaveGroup behind
    let a = consumer(brokers, &group, &id)?;
    a.subscribe(&[&topic])?;
    let took = until(&a, Duration::from_secs(40), |n| n == 4).await?;
    let pass = took.is_some_and(|t| t < Duration::from_secs(5));
    Ok(outcome(
        pass,
        format!(
            "restarted with the same group.instance.id, it owned its 4 partitions again in {} (expected well within the 20 s session timeout)",
            took.map_or("more than 40 s".into(), |t| format!("{:.1} s", t.as_secs_f64()))
        ),
    ))
}
