//! The run loop and the producer.
//!
//! A run is `threads` tokio tasks, each paced by its own `governor` limiter at `rate / threads`,
//! taking permits a batch at a time, making events and handing them to one idempotent rdkafka
//! producer. Delivery reports, not sends, decide what counts as acknowledged.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use logpipe_common::producer::PolledProducer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::breaker::{self, Permit, ProbeSlot, ProduceBreaker};
use crate::budget::GlobalBudget;
use crate::config::GeneratorConfig;
use crate::events::{Draft, EventFactory};
use crate::telemetry;

use logpipe_common::control::BudgetStatus;
pub use logpipe_common::control::{
    GeneratorStatus as Status, StartRequest, MAX_BATCH, MAX_DURATION_SECS, MAX_RATE, MAX_THREADS,
};

pub use crate::params::{InvalidParam, RunParams};

/// Totals since the process started; delivery reports move `acked` and `failed`.
#[derive(Debug, Default)]
pub struct Counters {
    pub generated: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    /// Events not generated because the circuit breaker was open.
    pub skipped: AtomicU64,
    /// Events that waited for a later second of the global budget.
    pub rate_limited: AtomicU64,
    /// Producers replaced (failed fatally, or stuck with the breaker open).
    pub producers_replaced: AtomicU64,
    /// Measured generation rate over the last second, as f64 bits.
    rate_bits: AtomicU64,
}

impl Counters {
    pub fn measured_rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }
}

/// Counts every delivery report: the only honest source of "sent".
pub struct DeliveryCounter {
    counters: Arc<Counters>,
    breaker: Arc<ProduceBreaker>,
    /// The breaker's generation this producer was made for (see `ProduceBreaker::renew`).
    generation: u64,
}

/// Delivery opaque marking a half-open probe record.
const PROBE: usize = 1;

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        self.breaker
            .report_from(self.generation, result.is_ok(), opaque == PROBE);
        match result {
            Ok(_) => {
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                telemetry::messages_sent(1);
            }
            Err((e, _)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                telemetry::send_errors(1);
                tracing::debug!(error = %e, "delivery failed");
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("a run is already in progress; stop it first")]
    AlreadyRunning,
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
}

struct ActiveRun {
    params: RunParams,
    started_at: DateTime<Utc>,
    cancel: CancellationToken,
    /// `None` once stopped; the run stays visible in status until the next start.
    handle: Option<JoinHandle<()>>,
}

impl ActiveRun {
    fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

pub struct Engine {
    config: GeneratorConfig,
    /// Replaced when librdkafka declares it fatally failed (see `replace_failed_producer`).
    producer: std::sync::RwLock<PolledProducer<DeliveryCounter>>,
    counters: Arc<Counters>,
    breaker: Arc<ProduceBreaker>,
    budget: Option<GlobalBudget>,
    run: Mutex<Option<ActiveRun>>,
    /// Stops the rate sampler when the engine is dropped.
    sampler: CancellationToken,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.sampler.cancel();
    }
}

impl Engine {
    pub fn new(config: GeneratorConfig) -> Result<Arc<Engine>, EngineError> {
        let counters = Arc::new(Counters::default());
        let breaker = ProduceBreaker::new(config.breaker.clone());
        let producer = new_producer(&config, &counters, &breaker, breaker.generation())?;
        let budget = GlobalBudget::new(config.budget.clone(), config.instance_id.clone());
        let engine = Arc::new(Engine {
            config,
            producer: std::sync::RwLock::new(producer),
            counters,
            breaker,
            budget,
            run: Mutex::new(None),
            sampler: CancellationToken::new(),
        });
        spawn_rate_sampler(Arc::downgrade(&engine), engine.sampler.clone());
        Ok(engine)
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn breaker(&self) -> &ProduceBreaker {
        &self.breaker
    }

    /// The current producer (a cheap handle; the producer may be replaced after a fatal error).
    pub fn producer(&self) -> PolledProducer<DeliveryCounter> {
        self.producer.read().expect("producer lock").clone()
    }

    /// An idempotent producer that librdkafka declares fatally failed (for instance the broker
    /// answered UNKNOWN_PRODUCER_ID: an in-memory broker restarted and forgot the producer) never
    /// sends again. Replace it with a fresh one (a new producer id); its queued records fail with
    /// delivery reports, so they count as failed, never as acknowledged.
    ///
    /// `stuck` replaces it also when it has not failed fatally but nothing was acknowledged for
    /// `STUCK_PRODUCER` while the breaker stayed open: Tansu 0.6 restarted in memory answers the
    /// old producer id with UNKNOWN_PRODUCER_ID for ever, and librdkafka keeps retrying it.
    fn replace_producer(&self, stuck: bool) {
        let mut guard = self.producer.write().expect("producer lock");
        let why = match guard.client().fatal_error() {
            Some((code, reason)) => format!("failed fatally ({code:?}: {reason})"),
            None if stuck => format!(
                "acknowledged nothing for {} s with the breaker open",
                STUCK_PRODUCER.as_secs()
            ),
            None => return, // another worker replaced it already
        };
        let next = self.breaker.generation() + 1;
        match new_producer(&self.config, &self.counters, &self.breaker, next) {
            Ok(fresh) => {
                // The fresh producer is judged on its own: not held back by the old one's backoff
                // (a probe every 16 s by then), nor judged stuck before it could send.
                self.breaker.renew();
                tracing::error!(
                    "the producer {why}; replaced by a new one (its queued records are not acknowledged)"
                );
                telemetry::producer_replaced();
                self.counters
                    .producers_replaced
                    .fetch_add(1, Ordering::Relaxed);
                *guard = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new producer; retrying"),
        }
    }

    pub fn start(self: &Arc<Self>, params: RunParams) -> Result<Status, EngineError> {
        {
            let mut guard = self.run.lock().expect("run lock");
            if guard.as_ref().is_some_and(ActiveRun::is_running) {
                return Err(EngineError::AlreadyRunning);
            }
            let cancel = CancellationToken::new();
            // The run continues the trace of the request that started it (first batches only).
            let parent = logpipe_common::telemetry::current_context();
            let handle = tokio::spawn(run(self.clone(), params.clone(), cancel.clone(), parent));
            *guard = Some(ActiveRun {
                params,
                started_at: Utc::now(),
                cancel,
                handle: Some(handle),
            });
        }
        Ok(self.status())
    }

    /// End the current run (if any), wait for its workers, then flush what they produced.
    pub async fn stop(&self) -> Status {
        let handle = {
            let mut guard = self.run.lock().expect("run lock");
            guard.as_mut().and_then(|r| {
                r.cancel.cancel();
                r.handle.take()
            })
        };
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.flush().await;
        self.status()
    }

    pub async fn flush(&self) {
        let producer = self.producer();
        let timeout = Duration::from_millis(self.config.producer.flush_timeout_ms);
        let res = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }

    pub fn status(&self) -> Status {
        let guard = self.run.lock().expect("run lock");
        let running = guard.as_ref().is_some_and(ActiveRun::is_running);
        Status {
            instance_id: self.config.instance_id.clone(),
            state: if running { "running" } else { "idle" }.into(),
            topic: self.config.kafka.raw_topic.clone(),
            rate_per_second: guard.as_ref().map(|r| r.params.rate_per_second),
            measured_rate_per_second: if running {
                self.counters.measured_rate()
            } else {
                0.0
            },
            events_generated: self.counters.generated.load(Ordering::Relaxed),
            events_acked: self.counters.acked.load(Ordering::Relaxed),
            events_failed: self.counters.failed.load(Ordering::Relaxed),
            events_skipped: self.counters.skipped.load(Ordering::Relaxed),
            events_rate_limited: self.counters.rate_limited.load(Ordering::Relaxed),
            budget: self.budget.as_ref().map(|b| BudgetStatus {
                backend: b.backend().into(),
                global_rate_per_second: b.global_rate(),
                instances: b.instances(),
            }),
            breaker_state: breaker::state_name(self.breaker.state()).into(),
            started_at: guard.as_ref().map(|r| r.started_at),
            run: guard.as_ref().map(|r| r.params.info()),
        }
    }
}

/// Every 250 ms, run the breaker's timeout watchdog; every second, turn the generated total into a
/// rate for status and the gauge.
fn spawn_rate_sampler(engine: std::sync::Weak<Engine>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last: Option<(Instant, u64)> = None;
        let mut ticks: u64 = 0;
        // Acknowledged count and when it last moved, for the stuck-producer check below.
        let mut acked_moved: (u64, Instant) = (0, Instant::now());
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(engine) = engine.upgrade() else {
                break;
            };
            engine.breaker.check_timeout();
            let acked = engine.counters.acked.load(Ordering::Relaxed);
            if acked != acked_moved.0 || engine.breaker.state() == breaker::CLOSED {
                acked_moved = (acked, Instant::now());
            } else if acked_moved.1.elapsed() >= STUCK_PRODUCER {
                // The breaker has stayed open or half-open with no acknowledgement at all.
                engine.replace_producer(true);
                acked_moved = (acked, Instant::now());
            }
            ticks += 1;
            if !ticks.is_multiple_of(4) {
                continue;
            }
            let now = Instant::now();
            let total = engine.counters.generated.load(Ordering::Relaxed);
            if let Some((t, n)) = last {
                let rate = (total - n) as f64 / now.duration_since(t).as_secs_f64();
                engine
                    .counters
                    .rate_bits
                    .store(rate.to_bits(), Ordering::Relaxed);
                telemetry::generation_rate(rate);
            }
            last = Some((now, total));
        }
    });
}

fn worker_seed(seed: u64, instance: &str, worker: u32) -> u64 {
    let mut h = DefaultHasher::new();
    (seed, instance, worker).hash(&mut h);
    h.finish()
}

async fn run(
    engine: Arc<Engine>,
    params: RunParams,
    cancel: CancellationToken,
    parent: logpipe_common::telemetry::TraceContext,
) {
    tracing::info!(?params, "generation started");
    let deadline = params
        .duration_secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // Shared countdown so `count` holds across worker threads.
    let remaining = Arc::new(AtomicU64::new(params.count.unwrap_or(u64::MAX)));
    let mut workers = Vec::new();
    for w in 0..params.threads {
        // Spread the rate so the shares add up exactly to the target.
        let share = worker_share(params.rate_per_second, params.threads, w);
        workers.push(tokio::spawn(worker(
            engine.clone(),
            params.clone(),
            w,
            share,
            Shared {
                remaining: remaining.clone(),
                cancel: cancel.clone(),
                deadline,
                parent: parent.clone(),
            },
        )));
    }
    for w in workers {
        let _ = w.await;
    }
    tracing::info!(
        generated = engine.counters.generated.load(Ordering::Relaxed),
        "generation finished"
    );
}

/// Take up to `want` from the shared countdown; 0 means the count is exhausted.
fn take(remaining: &AtomicU64, want: u64) -> u64 {
    let mut cur = remaining.load(Ordering::Relaxed);
    loop {
        let n = cur.min(want);
        if n == 0 {
            return 0;
        }
        match remaining.compare_exchange_weak(cur, cur - n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return n,
            Err(actual) => cur = actual,
        }
    }
}

/// What one turn of a worker does, from the breaker's permit and the run's countdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Generate and send this many events (taken from the countdown).
    Generate(u64),
    /// Breaker open: keep the pace, generate nothing, count this many as skipped (the countdown
    /// is untouched, so a `count` run still delivers its count once the broker is back).
    Skip(u64),
    /// The count is exhausted.
    Done,
}

/// A half-open probe is a single record; otherwise a whole batch.
fn plan_turn(permit: Permit, batch: u32, remaining: &AtomicU64) -> Turn {
    let want = match permit {
        Permit::Rejected => return Turn::Skip(u64::from(batch)),
        Permit::Probe => 1,
        Permit::Allowed => u64::from(batch),
    };
    match take(remaining, want) {
        0 => Turn::Done,
        n => Turn::Generate(n),
    }
}

/// Worker `w`'s share of `rate`: the shares of all `threads` workers add up exactly to `rate`.
fn worker_share(rate: u32, threads: u32, w: u32) -> u32 {
    rate / threads + u32::from(w < rate % threads)
}

/// What every worker of one run shares.
struct Shared {
    /// Countdown so `count` holds across workers.
    remaining: Arc<AtomicU64>,
    cancel: CancellationToken,
    deadline: Option<tokio::time::Instant>,
    /// The trace of the request that started the run.
    parent: logpipe_common::telemetry::TraceContext,
}

async fn worker(engine: Arc<Engine>, params: RunParams, index: u32, rate: u32, shared: Shared) {
    let Shared {
        remaining,
        cancel,
        deadline,
        parent,
    } = shared;
    // Each worker's first batch is a child of the start request; later batches start traces of
    // their own (sampled by ratio), so a long run is not one trace of millions of spans.
    let mut parent = Some(parent);
    let Some(rate) = NonZeroU32::new(rate) else {
        return;
    };
    let batch = params.batch_size.min(rate.get());
    let pacer = crate::pacing::Pacer::new(rate, batch);
    let mut factory = EventFactory::new(
        worker_seed(params.seed, &engine.config.instance_id, index),
        engine.config.instance_id.clone(),
        params.profile,
    );
    let started = Instant::now();
    let topic = engine.config.kafka.raw_topic.clone();
    let mut buf = Vec::with_capacity(512);
    let mut simulated_tp = String::with_capacity(64);
    loop {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let permit = engine.breaker.permit();
        // Freed on every exit of this turn unless its record is queued.
        let mut probe = (permit == Permit::Probe).then(|| engine.breaker.probe_slot());
        let turn = plan_turn(permit, batch, &remaining);
        let n = match turn {
            Turn::Generate(n) | Turn::Skip(n) => n,
            Turn::Done => break,
        };
        let elapsed = started.elapsed();
        let burst = params.profile.rate_multiplier(elapsed) > 1;
        if !pacer.ready(n, burst, deadline, &cancel).await {
            if let Turn::Generate(n) = turn {
                remaining.fetch_add(n, Ordering::Relaxed);
            }
            break;
        }
        if let Turn::Skip(_) = turn {
            engine.counters.skipped.fetch_add(n, Ordering::Relaxed);
            telemetry::events_skipped(n);
            continue;
        }
        if !take_budget(&engine, n, &cancel).await {
            remaining.fetch_add(n, Ordering::Relaxed);
            break;
        }
        let now = Utc::now();
        let batch_span = publish_span(&topic, n, parent.take());
        let batch_tp = logpipe_common::telemetry::traceparent_of(&batch_span);
        let mut sender = Sender::new(&engine, &topic, &cancel);
        for i in 0..n {
            let draft = factory.draw(now, elapsed);
            let traceparent = encode(&draft, batch_tp.as_deref(), &mut buf, &mut simulated_tp);
            let outcome = sender.send(&buf, Some(traceparent), &mut probe).await;
            match outcome {
                SendOutcome::Handled => {}
                SendOutcome::Skipped => {
                    // The breaker opened while the local queue was full: drop the rest of the batch
                    // (never generated, so nothing acknowledged is lost) and give the count back.
                    count_generated(&engine, i);
                    engine.counters.skipped.fetch_add(n - i, Ordering::Relaxed);
                    telemetry::events_skipped(n - i);
                    remaining.fetch_add(n - i, Ordering::Relaxed);
                    break;
                }
                SendOutcome::Cancelled => {
                    count_generated(&engine, i);
                    return;
                }
            }
            if i + 1 == n {
                count_generated(&engine, n);
            }
        }
    }
}

/// Writes `draft`'s payload into `buf` and returns the traceparent its record carries: the batch's
/// own (`batch_tp`), whose ids the event then carries so its row leads to the trace, or, with
/// tracing off, the simulated ids as a trace nobody samples (written into `scratch`).
fn encode<'a>(
    draft: &Draft<'_>,
    batch_tp: Option<&'a str>,
    buf: &mut Vec<u8>,
    scratch: &'a mut String,
) -> &'a str {
    buf.clear();
    match batch_tp {
        Some(tp) => {
            draft.write_json(buf, Some((&tp[3..35], &tp[36..52])));
            tp
        }
        None => {
            draft.write_json(buf, None);
            scratch.clear();
            let _ = write!(
                scratch,
                "00-{}-{}-00",
                draft.trace_hex().as_str(),
                draft.span_hex().as_str()
            );
            scratch.as_str()
        }
    }
}

/// Several instances: a batch also needs permits from the shared budget (one round trip). False
/// when cancelled while waiting for them.
async fn take_budget(engine: &Engine, n: u64, cancel: &CancellationToken) -> bool {
    let Some(budget) = &engine.budget else {
        return true;
    };
    match budget.acquire(n as u32, cancel).await {
        Some(0) => true,
        Some(limited) => {
            engine
                .counters
                .rate_limited
                .fetch_add(limited, Ordering::Relaxed);
            telemetry::events_rate_limited(limited);
            true
        }
        None => false,
    }
}

/// A batch's `kafka.publish` span, a trace of its own; the first batch of a worker is a child of
/// the start request.
fn publish_span(
    topic: &str,
    n: u64,
    parent: Option<logpipe_common::telemetry::TraceContext>,
) -> tracing::Span {
    let span = logpipe_common::telemetry::publish_span(topic, n, None);
    if let Some(p) = parent {
        logpipe_common::telemetry::set_parent_context(&span, p);
    }
    span
}

fn count_generated(engine: &Engine, n: u64) {
    engine.counters.generated.fetch_add(n, Ordering::Relaxed);
    telemetry::events_generated(n);
}

/// What handing one record to the producer came to: it waits (not spinning, not growing memory)
/// while the producer's local queue is full.
enum SendOutcome {
    /// Queued, or refused outright (counted as failed).
    Handled,
    /// Not queued because the breaker is open.
    Skipped,
    Cancelled,
}

/// Sends one batch's records. It takes the engine's producer once per batch, not per record (the
/// handle's clone and drop, under the engine's lock, showed in the generator's profile), and takes
/// the replacement when its own producer failed fatally.
struct Sender<'a> {
    engine: &'a Engine,
    producer: PolledProducer<DeliveryCounter>,
    topic: &'a str,
    cancel: &'a CancellationToken,
}

impl<'a> Sender<'a> {
    fn new(engine: &'a Engine, topic: &'a str, cancel: &'a CancellationToken) -> Self {
        Self {
            producer: engine.producer(),
            engine,
            topic,
            cancel,
        }
    }

    /// One record, without a key: librdkafka's sticky partitioner fills one partition's batch
    /// at a time and moves on, so load still spreads over every partition, in larger batches
    /// (ARCHITECTURE.md, "Generated records carry no key").
    async fn send(
        &mut self,
        payload: &[u8],
        traceparent: Option<&str>,
        probe: &mut Option<ProbeSlot<'_>>,
    ) -> SendOutcome {
        let engine = self.engine;
        loop {
            let headers = logpipe_common::kafka::event_headers("application/json", traceparent);
            let record = BaseRecord::<(), [u8], usize>::with_opaque_to(
                self.topic,
                if probe.is_some() { PROBE } else { 0 },
            )
            .payload(payload)
            .headers(headers);
            match self.producer.send(record) {
                Ok(()) => {
                    engine.breaker.queued();
                    if let Some(slot) = probe.take() {
                        slot.handed_over();
                    }
                    return SendOutcome::Handled;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if engine.breaker.state() == breaker::OPEN {
                        return SendOutcome::Skipped;
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => return SendOutcome::Cancelled,
                        _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                    }
                }
                Err((e, _)) => {
                    if matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)) {
                        engine.replace_producer(false);
                        self.producer = engine.producer();
                    }
                    // Not queued at all: no delivery report will come, so count it here.
                    engine.counters.failed.fetch_add(1, Ordering::Relaxed);
                    telemetry::send_errors(1);
                    tracing::warn!(error = %e, "produce refused");
                    engine.breaker.failed_now();
                    return SendOutcome::Handled;
                }
            }
        }
    }
}

/// See `Engine::replace_producer`.
const STUCK_PRODUCER: Duration = Duration::from_secs(15);

/// The generator's idempotent producer, reporting deliveries to the counters and the breaker.
fn new_producer(
    config: &GeneratorConfig,
    counters: &Arc<Counters>,
    breaker: &Arc<ProduceBreaker>,
    generation: u64,
) -> Result<PolledProducer<DeliveryCounter>, EngineError> {
    let p = &config.producer;
    let mut client = config.kafka.client_config(&config.instance_id);
    client
        .set("enable.idempotence", "true")
        .set("acks", &p.acks)
        .set("linger.ms", p.linger_ms.to_string())
        .set("compression.type", &p.compression)
        .set("message.timeout.ms", p.delivery_timeout_ms.to_string())
        .set(
            "queue.buffering.max.messages",
            p.queue_max_messages.to_string(),
        )
        .set("batch.num.messages", "10000");
    PolledProducer::new(
        &client,
        DeliveryCounter {
            counters: counters.clone(),
            breaker: breaker.clone(),
            generation,
        },
    )
    .map_err(EngineError::Producer)
}

#[cfg(test)]
mod tests;
