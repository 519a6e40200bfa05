//! Producers polled by a thread of their own that sleeps while nothing happens
//! ([`PolledProducer`]), and the one whose deliveries come back as futures ([`AckProducer`]): one
//! per record ([`Ack`]), or one for a group of records ([`Acks`]), which costs no allocation per
//! record and wakes its waiter once, when the last acknowledgement is in.
//!
//! Why not rdkafka's `ThreadedProducer` / `FutureProducer`: their thread calls
//! `BaseProducer::poll(100 ms)`, which polls against a deadline and hands librdkafka the time left
//! in whole milliseconds, rounded down. Its last partial millisecond becomes a 0 ms poll repeated
//! until the deadline passes: about 1 ms of spinning every 100 ms, 0.9 % of a core for a producer
//! that sends nothing (an idle gateway's polling thread: 87.7 ms of CPU in 10 s, measured). The
//! collector holds two such producers (DLQ, alerts) that are idle nearly always.
//!
//! Here the thread polls for [`POLL_CYCLE`], a whole number of milliseconds plus a little: the
//! first wait is the whole milliseconds, and it ends past the deadline, so no 0 ms poll follows
//! unless a delivery report came in between (then at most one partial millisecond, as before).

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::util::IntoOpaque;
use tokio::sync::{oneshot, Notify};

/// How long one poll waits for a delivery report. Its 50 µs above the whole milliseconds cover
/// the moment between the poll's deadline being set and librdkafka being asked; a wait ends later
/// than asked (the kernel's timer slack alone is 50 µs), so the deadline has passed by then.
pub const POLL_CYCLE: Duration = Duration::from_micros(100_050);

/// A `BaseProducer` and the thread that serves its delivery reports; clones share both. The
/// thread stops (within one [`POLL_CYCLE`]) when the last clone is dropped.
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    _poller: Arc<Poller>,
}

impl<C: ProducerContext + 'static> Clone for PolledProducer<C> {
    fn clone(&self) -> Self {
        PolledProducer {
            producer: self.producer.clone(),
            _poller: self._poller.clone(),
        }
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    pub fn new(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<C>> = Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("producer-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL_CYCLE);
                    }
                })
                .map_err(|e| KafkaError::ClientCreation(format!("producer thread: {e}")))?
        };
        Ok(PolledProducer {
            producer,
            _poller: Arc::new(Poller {
                stop,
                thread: Some(thread),
            }),
        })
    }
}

/// Stops and joins the polling thread when the last handle goes.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The thread holds the producer too; it is destroyed there, after its last poll.
            let _ = t.join();
        }
    }
}

/// Where a record went, once the broker acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// The outcome of one record: acknowledged, or the error it failed with.
pub type AckResult = Result<Delivered, KafkaError>;

/// Where a record's delivery report goes: the future of the one record, or its group's count.
pub enum Reply {
    One(oneshot::Sender<AckResult>),
    Group(GroupState),
}

/// The state of an [`Acks`] group, shared with each of its records' opaques.
pub struct GroupState {
    /// Records sent and not yet reported, plus one until the sender waits (so the last report
    /// cannot come before the group is complete).
    pending: AtomicUsize,
    acked: AtomicUsize,
    error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl GroupState {
    /// One fewer pending; the last wakes the waiter (a permit, if it is not waiting yet).
    fn settle(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// Reports each record's delivery to the future its sender holds, or to its group.
pub struct AckContext;

// rdkafka's defaults: its log lines and errors go where `DefaultClientContext` sends them.
impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Reply>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        match &*reply {
            Reply::Group(group) => {
                match result {
                    Ok(_) => {
                        group.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((e, _)) => {
                        *group.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                    }
                }
                group.settle();
            }
            Reply::One(_) => {
                let outcome = match result {
                    Ok(m) => Ok(Delivered {
                        partition: m.partition(),
                        offset: m.offset(),
                    }),
                    Err((e, _)) => Err(e.clone()),
                };
                // The record's opaque is the only handle on its reply.
                if let Ok(Reply::One(tx)) = Arc::try_unwrap(reply) {
                    // A sender that stopped waiting (a request that timed out) needs no answer.
                    let _ = tx.send(outcome);
                }
            }
        }
    }
}

/// A producer whose records are answered by futures ([`Ack`]), as rdkafka's `FutureProducer`,
/// polled without its spinning.
#[derive(Clone)]
pub struct AckProducer {
    inner: PolledProducer<AckContext>,
}

impl Deref for AckProducer {
    type Target = BaseProducer<AckContext>;

    fn deref(&self) -> &BaseProducer<AckContext> {
        &self.inner
    }
}

impl AckProducer {
    pub fn new(config: &ClientConfig) -> KafkaResult<Self> {
        Ok(AckProducer {
            inner: PolledProducer::new(config, AckContext)?,
        })
    }

    /// Queue a record; the [`Ack`] completes when the broker acknowledged it or it failed. A
    /// record the producer refuses at once (queue full, too large) comes back with the error.
    #[allow(clippy::result_large_err)] // the record comes back whole, as rdkafka's `send` does
    pub fn send<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P>,
    ) -> Result<Ack, (KafkaError, BaseRecord<'a, K, P>)>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let (tx, rx) = oneshot::channel();
        match self
            .inner
            .send(with_opaque(record, Arc::new(Reply::One(tx))))
        {
            Ok(()) => Ok(Ack { rx }),
            Err((e, record)) => Err((e, with_opaque(record, ()))),
        }
    }

    /// A group of records whose acknowledgements are awaited together ([`Acks::wait`]).
    pub fn group(&self) -> Acks {
        Acks {
            producer: self.clone(),
            state: Arc::new(Reply::Group(GroupState {
                pending: AtomicUsize::new(1),
                acked: AtomicUsize::new(0),
                error: Mutex::new(None),
                done: Notify::new(),
            })),
        }
    }

    /// [`send`](Self::send), waiting while the local queue is full (up to `queue_timeout`), then
    /// for the acknowledgement.
    pub async fn send_and_wait<K, P>(
        &self,
        mut record: BaseRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> AckResult
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let started = std::time::Instant::now();
        loop {
            match self.send(record) {
                Ok(ack) => return ack.await,
                Err((KafkaError::MessageProduction(code), back))
                    if code == rdkafka::types::RDKafkaErrorCode::QueueFull
                        && started.elapsed() < queue_timeout =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
}

/// The same record with another delivery opaque (the fields are rdkafka's, all public).
fn with_opaque<'a, K, P, A, B>(r: BaseRecord<'a, K, P, A>, opaque: B) -> BaseRecord<'a, K, P, B>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
    A: IntoOpaque,
    B: IntoOpaque,
{
    BaseRecord {
        topic: r.topic,
        partition: r.partition,
        payload: r.payload,
        key: r.key,
        timestamp: r.timestamp,
        headers: r.headers,
        delivery_opaque: opaque,
    }
}

/// One record's acknowledgement (see [`AckProducer::send`]).
pub struct Ack {
    rx: oneshot::Receiver<AckResult>,
}

impl Future for Ack {
    type Output = AckResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AckResult> {
        // A dropped sender means the producer was destroyed with the record in it.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(KafkaError::Canceled)))
    }
}

/// Records sent as a group ([`AckProducer::group`]): each costs its group one count, not an
/// allocation and a future, and the waiter is woken once, by the last acknowledgement.
pub struct Acks {
    producer: AckProducer,
    state: Arc<Reply>,
}

/// How a group's records ended: how many were acknowledged, and an error one of the others
/// failed with.
#[derive(Debug)]
pub struct GroupOutcome {
    pub acked: usize,
    pub error: Option<KafkaError>,
}

impl Acks {
    fn group(&self) -> &GroupState {
        match &*self.state {
            Reply::Group(g) => g,
            Reply::One(_) => unreachable!("a group's state is a group"),
        }
    }

    /// Queue a record of the group; one the producer refuses at once comes back with the error
    /// and does not count.
    #[allow(clippy::result_large_err)] // the record comes back whole, as rdkafka's `send` does
    pub fn send<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P>,
    ) -> Result<(), (KafkaError, BaseRecord<'a, K, P>)>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        self.group().pending.fetch_add(1, Ordering::AcqRel);
        match self
            .producer
            .inner
            .send(with_opaque(record, self.state.clone()))
        {
            Ok(()) => Ok(()),
            Err((e, record)) => {
                self.group().settle();
                Err((e, with_opaque(record, ())))
            }
        }
    }

    /// Wait until every record sent in the group was acknowledged or failed.
    pub async fn wait(self) -> GroupOutcome {
        let group = self.group();
        group.settle();
        while group.pending.load(Ordering::Acquire) != 0 {
            group.done.notified().await;
        }
        GroupOutcome {
            acked: group.acked.load(Ordering::Relaxed),
            error: group.error.lock().unwrap_or_else(|p| p.into_inner()).take(),
        }
    }
}
