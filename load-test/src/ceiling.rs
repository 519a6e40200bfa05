//! Ceilings measured in the same run, on the same machine and broker, with the run's own payloads
//! and rows: a bare rdkafka produce loop (the generator's guarantees — idempotent, acks=all, lz4 —
//! with the best batching), a tuned bare consume loop reading those records back, and one bulk
//! COPY of the run's rows into a table of `log_events`' shape (columns, defaults, constraints,
//! indexes). Each rate of the report is also a ratio to its ceiling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::TryStreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use crate::cpu::{CpuMeter, PhaseCpu};
use crate::verify::read_back;

/// Events moved and the seconds it took.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub events: u64,
    pub secs: f64,
}

impl Rate {
    pub fn per_sec(&self) -> f64 {
        self.events as f64 / self.secs.max(1e-9)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Ceilings {
    pub produce: Option<Rate>,
    pub consume: Option<Rate>,
    pub copy: Option<Rate>,
    /// What each bare stage cost in CPU (see `cpu`), in the order measured.
    pub cpu: Vec<PhaseCpu>,
    /// The pace the paced stages ran at, and what they cost (see `paced`).
    pub pace: Option<Pace>,
    pub paced: Vec<PhaseCpu>,
    pub notes: Vec<String>,
}

/// The pace the pipeline held, for the paced stages (`paced`): its stored rate over the measured
/// stretch and its writer's mean batch. Here, beside the ceilings it extends, so `paced` depends on
/// this module and not the other way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub rate: f64,
    pub batch_rows: usize,
    pub secs: f64,
}

#[derive(Default)]
pub(crate) struct Delivered {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
}

pub(crate) struct Counting(Arc<Delivered>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Produces `n` records (the payloads, cycled) into a new topic of `partitions` partitions and
/// reads them back; returns both rates and what each cost in CPU (`meter`). The topic is deleted
/// afterwards.
pub async fn kafka(
    brokers: &str,
    partitions: i32,
    payloads: Vec<Vec<u8>>,
    n: usize,
    meter: &CpuMeter,
) -> anyhow::Result<(Rate, Rate, [PhaseCpu; 2])> {
    if payloads.is_empty() {
        bail!("no payloads to measure with");
    }
    let (admin, topic) = new_topic(brokers, partitions, "ceiling").await?;
    let t = topic.clone();
    let b = brokers.to_string();
    let before = meter.read();
    let produced = tokio::task::spawn_blocking(move || produce_loop(&b, &t, &payloads, n))
        .await
        .context("produce ceiling")??;
    let produce_cpu = meter.phase("produce", produced.events, &before);
    let t = topic.clone();
    let b = brokers.to_string();
    let before = meter.read();
    let consumed = tokio::task::spawn_blocking(move || {
        let start: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
        read_back(&b, &t, &start, &BTreeMap::new(), 0, false)
    })
    .await
    .context("consume ceiling")??;
    let consume_cpu = meter.phase("consume", consumed.records, &before);
    delete_topic(&admin, &topic).await;
    Ok((
        produced,
        Rate {
            events: consumed.records,
            secs: consumed.secs,
        },
        [produce_cpu, consume_cpu],
    ))
}

/// A new topic of `partitions` partitions for a bare stage, and the admin client that deletes it.
pub(crate) async fn new_topic(
    brokers: &str,
    partitions: i32,
    what: &str,
) -> anyhow::Result<(AdminClient<DefaultClientContext>, String)> {
    let topic = format!(
        "logpipe-load-test-{what}-{}",
        chrono::Utc::now().timestamp_millis()
    );
    let mut base = ClientConfig::new();
    base.set("bootstrap.servers", brokers);
    let admin: AdminClient<DefaultClientContext> =
        crate::options::with_operator_options(&mut base).create()?;
    let res = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &admin_options(),
        )
        .await?;
    for r in res {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating {t}: {code}");
            }
        }
    }
    Ok((admin, topic))
}

fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

pub(crate) async fn delete_topic(admin: &AdminClient<DefaultClientContext>, topic: &str) {
    let _ = admin.delete_topics(&[topic], &admin_options()).await;
}

/// The bare producer: the generator's guarantees (idempotent, acks=all, lz4, linger 5 ms) with
/// room for the largest batches; `delivered` counts its acknowledgements.
pub(crate) fn bare_producer(
    brokers: &str,
    delivered: &Arc<Delivered>,
) -> anyhow::Result<BaseProducer<Counting>> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "4000000")
        .set("batch.num.messages", "20000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("socket.nagle.disable", "true");
    Ok(crate::options::with_operator_options(&mut c)
        .create_with_context(Counting(Arc::clone(delivered)))?)
}

fn produce_loop(
    brokers: &str,
    topic: &str,
    payloads: &[Vec<u8>],
    n: usize,
) -> anyhow::Result<Rate> {
    let delivered = Arc::new(Delivered::default());
    let producer = bare_producer(brokers, &delivered)?;
    let began = Instant::now();
    for i in 0..n {
        let payload = &payloads[i % payloads.len()];
        loop {
            // No key: the sticky partitioner fills one batch at a time, the fastest way to produce.
            match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(payload)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("produce ceiling send"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let secs = began.elapsed().as_secs_f64();
    let failed = delivered.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("the produce ceiling lost {failed} deliveries");
    }
    Ok(Rate {
        events: delivered.ok.load(Ordering::Relaxed),
        secs,
    })
}

/// One bulk binary COPY of up to `n` of the run's rows (from `lt_ids`, see `verify::compare`) into
/// a new table shaped like `log_events`, timed alone; the table is dropped afterwards.
pub async fn copy(
    conn: &mut PoolConnection<Postgres>,
    n: usize,
    meter: &CpuMeter,
) -> anyhow::Result<(Rate, PhaseCpu)> {
    let buf = run_rows(conn, n).await?;
    let table = copy_table(conn, "ceiling").await?;
    let began = Instant::now();
    let before = meter.read();
    let result = async {
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} FROM STDIN WITH (FORMAT binary)"))
            .await?;
        copy.send(buf).await?;
        copy.finish().await
    }
    .await;
    let secs = began.elapsed().as_secs_f64();
    let after = meter.read();
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&mut **conn)
        .await?;
    let rows = result.context("COPY ceiling")?;
    let cpu = PhaseCpu {
        phase: "copy",
        events: rows,
        secs: crate::cpu::spent(&before, &after),
    };
    Ok((Rate { events: rows, secs }, cpu))
}

/// Up to `n` of the run's stored rows (from `lt_ids`, see `verify::compare`) as one binary COPY
/// payload.
pub(crate) async fn run_rows(
    conn: &mut PoolConnection<Postgres>,
    n: usize,
) -> anyhow::Result<Vec<u8>> {
    let mut out = conn
        .copy_out_raw(&format!(
            "COPY (SELECT e.* FROM log_events e JOIN lt_ids i USING (event_id) LIMIT {n}) \
             TO STDOUT WITH (FORMAT binary)"
        ))
        .await?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = out.try_next().await? {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// A new table shaped like `log_events` (columns, defaults, constraints, indexes); the caller
/// drops it.
pub(crate) async fn copy_table(
    conn: &mut PoolConnection<Postgres>,
    what: &str,
) -> anyhow::Result<String> {
    let table = format!("lt_copy_{what}_{}", chrono::Utc::now().timestamp_millis());
    sqlx::query(&format!(
        "CREATE TABLE {table} (LIKE log_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
    ))
    .execute(&mut **conn)
    .await?;
    Ok(table)
}
