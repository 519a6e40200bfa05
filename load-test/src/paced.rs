//! The bare stages at the pipeline's own pace. The ceilings in `ceiling` run flat out: the bare
//! producer fills batches as large as its settings allow, the bare consumer reads a backlog, and
//! one COPY takes every row in one transaction. A pipeline held at a rate cannot batch like that:
//! at 40,000 events/s a 5 ms linger fills batches of 200 records, the collector reads records as
//! they arrive, and group commit writes batches of what came in during the last commit. So the
//! run's CPU per event is also compared with the same bare clients run at the rate the pipeline
//! held, with the batches that rate gives:
//!
//! - produce + consume: the bare producer paced at the held rate (the generator's linger and
//!   guarantees, unkeyed as in the flat-out ceiling), and the bare consumer reading them in the
//!   same seconds, as they arrive;
//! - COPY: the run's rows in transactions of the writer's mean batch (one COPY each, no other
//!   statement).
//!
//! Both are counted in the same processes as the flat-out stages (`cpu::CpuMeter`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use crate::ceiling::{
    bare_producer, copy_table, delete_topic, new_topic, run_rows, Delivered, Pace,
};
use crate::cpu::{CpuMeter, PhaseCpu};
use crate::verify::tuned_consumer;

/// Produce `pace.rate × pace.secs` of the run's payloads at that rate while a bare consumer reads
/// them back as they arrive; the CPU both cost, with the broker's, per record.
pub async fn produce_consume(
    brokers: &str,
    partitions: i32,
    payloads: Vec<Vec<u8>>,
    pace: Pace,
    meter: &CpuMeter,
) -> anyhow::Result<PhaseCpu> {
    if payloads.is_empty() || partitions < 1 {
        bail!("no payloads or partitions to measure with");
    }
    let n = ((pace.rate * pace.secs) as usize).max(1);
    let (admin, topic) = new_topic(brokers, partitions, "paced").await?;
    let before = meter.read();
    let (b, t) = (brokers.to_owned(), topic.clone());
    let reader = tokio::task::spawn_blocking(move || consume_n(&b, &t, partitions, n as u64));
    let (b, t) = (brokers.to_owned(), topic.clone());
    let rate = pace.rate;
    let produced = tokio::task::spawn_blocking(move || produce_paced(&b, &t, &payloads, n, rate))
        .await
        .context("paced produce")?;
    let read = reader.await.context("paced consume")?;
    let cpu = meter.phase("produce + consume, paced", n as u64, &before);
    delete_topic(&admin, &topic).await;
    produced?;
    read?;
    Ok(cpu)
}

/// Reads `topic` from its start until `n` records came, as they arrive.
fn consume_n(brokers: &str, topic: &str, partitions: i32, n: u64) -> anyhow::Result<()> {
    // The collector's fetch wait (`consumer.fetch_wait_max_ms`, 20 ms), not the backlog
    // reader's 5 ms: on a stream that arrives as it is read, the shorter wait cost the broker
    // more (6.3 against 5.4 µs an event, one run each; BENCHMARKS.md).
    let consumer: BaseConsumer = tuned_consumer(brokers)
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut read = 0u64;
    let mut last = Instant::now();
    while read < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                read += 1;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(e).context("paced consume"),
        }
        if last.elapsed() > Duration::from_secs(30) {
            bail!("the paced consumer read {read} of {n} records, then nothing for 30 s");
        }
    }
    Ok(())
}

/// `n` records at `rate` a second: each millisecond or so, what is due by then.
fn produce_paced(
    brokers: &str,
    topic: &str,
    payloads: &[Vec<u8>],
    n: usize,
    rate: f64,
) -> anyhow::Result<()> {
    let delivered = Arc::new(Delivered::default());
    let producer = bare_producer(brokers, &delivered)?;
    let began = Instant::now();
    let mut sent = 0usize;
    while sent < n {
        let due = ((began.elapsed().as_secs_f64() * rate) as usize).min(n);
        while sent < due {
            // No key: the sticky partitioner, as in the flat-out ceiling (records sent round
            // the partitions one by one cost nisshi 2.9 times the CPU in one run, BENCHMARKS.md).
            let record =
                BaseRecord::<(), [u8]>::to(topic).payload(&payloads[sent % payloads.len()]);
            match producer.send(record) {
                Ok(()) => sent += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e).context("paced produce send"),
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(120))?;
    let failed = delivered.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("the paced producer lost {failed} deliveries");
    }
    Ok(())
}

/// Up to `n` of the run's rows into a table shaped like `log_events`, one COPY transaction per
/// `batch_rows`; the table is dropped afterwards.
pub async fn copy_batches(
    conn: &mut PoolConnection<Postgres>,
    n: usize,
    batch_rows: usize,
    meter: &CpuMeter,
) -> anyhow::Result<PhaseCpu> {
    let batches = split_copy(&run_rows(conn, n).await?, batch_rows.max(1))?;
    let table = copy_table(conn, "batches").await?;
    let before = meter.read();
    let result = async {
        let mut rows = 0;
        for batch in batches {
            let mut copy = conn
                .copy_in_raw(&format!("COPY {table} FROM STDIN WITH (FORMAT binary)"))
                .await?;
            copy.send(batch).await?;
            rows += copy.finish().await?;
        }
        Ok::<u64, sqlx::Error>(rows)
    }
    .await;
    let after = meter.read();
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&mut **conn)
        .await?;
    let rows = result.context("COPY in the writer's batches")?;
    Ok(PhaseCpu {
        phase: "copy, the writer's batches",
        events: rows,
        secs: crate::cpu::spent(&before, &after),
    })
}

/// PostgreSQL's binary COPY payload cut into payloads of at most `rows` tuples each: the header
/// (signature, flags, extension) repeated, then the tuples, then the trailer.
pub fn split_copy(buf: &[u8], rows: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let int = |at: usize, len: usize| -> anyhow::Result<i64> {
        let b = buf.get(at..at + len).context("binary COPY cut short")?;
        Ok(b.iter().fold(0i64, |v, x| (v << 8) | i64::from(*x)))
    };
    if !buf.starts_with(SIGNATURE) {
        bail!("not a binary COPY payload");
    }
    let header_len = SIGNATURE.len() + 8 + int(SIGNATURE.len() + 4, 4)? as usize;
    let header = buf
        .get(..header_len)
        .context("binary COPY header cut short")?;
    let mut out = Vec::new();
    let mut at = header_len;
    let mut chunk = header.to_vec();
    let mut in_chunk = 0;
    loop {
        let fields = int(at, 2)? as i16;
        if fields == -1 {
            break;
        }
        let tuple_start = at;
        at += 2;
        for _ in 0..fields {
            let len = int(at, 4)? as i32;
            at += 4 + usize::try_from(len).unwrap_or(0);
        }
        chunk.extend_from_slice(buf.get(tuple_start..at).context("tuple cut short")?);
        in_chunk += 1;
        if in_chunk == rows {
            chunk.extend_from_slice(&[0xff, 0xff]);
            out.push(std::mem::replace(&mut chunk, header.to_vec()));
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        chunk.extend_from_slice(&[0xff, 0xff]);
        out.push(chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(tuples: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut b = b"PGCOPY\n\xff\r\n\0".to_vec();
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, 9, 9]); // flags, a 2-byte extension
        for t in tuples {
            b.extend_from_slice(&(t.len() as i16).to_be_bytes());
            for f in *t {
                match f {
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v);
                    }
                }
            }
        }
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b
    }

    #[test]
    fn a_binary_copy_splits_into_payloads_of_whole_tuples_each_with_header_and_trailer() {
        let t: Vec<&[Option<&[u8]>]> = vec![
            &[Some(b"a"), None],
            &[Some(b""), Some(b"\xff\xff")],
            &[None, Some(b"ccc")],
        ];
        let whole = payload(&t);
        let parts = split_copy(&whole, 2).unwrap();
        assert_eq!(parts, vec![payload(&t[..2]), payload(&t[2..])]);
        assert_eq!(split_copy(&whole, 3).unwrap(), vec![whole.clone()]);
        assert_eq!(split_copy(&payload(&[]), 2).unwrap(), Vec::<Vec<u8>>::new());
        assert!(split_copy(&whole[..whole.len() - 3], 2).is_err());
        assert!(split_copy(b"not copy", 2).is_err());
    }

    fn owned(t: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let t: Vec<Vec<Option<&[u8]>>> = t
            .iter()
            .map(|f| f.iter().map(|v| v.as_deref()).collect())
            .collect();
        let refs: Vec<&[Option<&[u8]>]> = t.iter().map(Vec::as_slice).collect();
        payload(&refs)
    }

    proptest::proptest! {
        /// Any tuples, cut at any size: the parts are the payloads of consecutive runs of the
        /// tuples, in order, none lost.
        #[test]
        fn any_copy_payload_splits_into_the_payloads_of_its_tuples_in_order(
            tuples in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6)),
                    0..4,
                ),
                0..12,
            ),
            rows in 1usize..6,
        ) {
            let parts = split_copy(&owned(&tuples), rows).unwrap();
            let want: Vec<Vec<u8>> = tuples.chunks(rows).map(owned).collect();
            proptest::prop_assert_eq!(parts, want);
        }

        /// Any bytes after a valid signature: an answer or an error, never a panic.
        #[test]
        fn any_bytes_after_the_signature_are_split_or_refused(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            rows in 1usize..4,
        ) {
            let mut b = b"PGCOPY\n\xff\r\n\0".to_vec();
            b.extend_from_slice(&tail);
            let _ = split_copy(&b, rows);
        }
    }
}
