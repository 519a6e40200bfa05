//! The circuit breaker around produce: `failsafe`'s state machine, plus the two things it lacks.
//!
//! - **A timeout.** Produce is asynchronous: a record is queued, and its delivery report comes later
//!   (after `message.timeout.ms`, 30 s, when the broker is gone). So a watchdog counts a failure each
//!   tick while records are in flight and no report has arrived for `call_timeout_ms`: a slow or dead
//!   broker opens the breaker within seconds instead of half a minute.
//! - **A cap on half-open probes.** failsafe lets every call through while half-open; here at most
//!   `half_open_max_probes` probe records are in flight at once, and everything else waits.
//!
//! Delivery reports feed the state machine (`on_success`/`on_error`); the state is mirrored into an
//! atomic for status and the `circuit_breaker_state` gauge (0 closed, 1 open, 2 half-open).
//!
//! The breaker judges one producer at a time. When the engine replaces a failed producer it
//! [`ProduceBreaker::renew`]s the breaker: closed, its backoff restarted, and the old producer's
//! late reports (its purged queue) no longer move the state. Otherwise the fresh producer waited
//! out the old one's backoff (16 s after a broker restart) and was judged stuck before it sent.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use failsafe::backoff::{self, Exponential};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Config, Instrument, StateMachine};
use serde::{Deserialize, Serialize};

use crate::telemetry;

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures (failed deliveries or timed-out ticks) that open the breaker.
    pub failure_threshold: u32,
    /// First open period; doubles on each failed probe up to `max_open_ms`. At least 1,000 (failsafe's
    /// exponential backoff counts in whole seconds).
    pub open_ms: u64,
    pub max_open_ms: u64,
    /// No delivery report for this long while records are in flight counts as a failure.
    pub call_timeout_ms: u64,
    /// Probe records allowed in flight while half-open.
    pub half_open_max_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 2_000,
            max_open_ms: 30_000,
            call_timeout_ms: 2_000,
            half_open_max_probes: 1,
        }
    }
}

/// Mirrors failsafe's transitions into an atomic and the gauge.
struct StateMirror(Arc<AtomicU8>);

impl StateMirror {
    fn set(&self, state: u8) {
        let before = self.0.swap(state, Ordering::Relaxed);
        if before != state {
            telemetry::circuit_breaker_state(state);
            tracing::warn!(state = state_name(state), "circuit breaker changed state");
        }
    }
}

impl Instrument for StateMirror {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.set(OPEN);
    }
    fn on_half_open(&self) {
        self.set(HALF_OPEN);
    }
    fn on_closed(&self) {
        self.set(CLOSED);
    }
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        OPEN => "open",
        HALF_OPEN => "half-open",
        _ => "closed",
    }
}

/// What the breaker allows for the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// Half-open: this record is a probe; its delivery report frees the probe slot.
    Probe,
    Rejected,
}

/// The slot of a half-open probe that [`ProduceBreaker::permit`] granted. Dropped before
/// [`ProbeSlot::handed_over`] (the run stopped, the count ran out, the record was refused), it
/// frees the slot, so no exit path of a worker leaves the breaker waiting for a probe that never
/// went out.
#[must_use]
pub struct ProbeSlot<'a> {
    breaker: &'a ProduceBreaker,
    armed: bool,
}

impl ProbeSlot<'_> {
    /// The probe record was queued: its delivery report frees the slot.
    pub fn handed_over(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.probe_abandoned();
        }
    }
}

pub struct ProduceBreaker {
    machine: StateMachine<ConsecutiveFailures<Exponential>, StateMirror>,
    state: Arc<AtomicU8>,
    settings: BreakerSettings,
    probes_in_flight: AtomicU32,
    queued: AtomicU64,
    reported: AtomicU64,
    /// Milliseconds since `epoch` of the last delivery report.
    last_report_ms: AtomicU64,
    epoch: Instant,
    /// Which producer the state machine judges (see `renew`).
    generation: AtomicU64,
}

impl ProduceBreaker {
    pub fn new(settings: BreakerSettings) -> Arc<ProduceBreaker> {
        let state = Arc::new(AtomicU8::new(CLOSED));
        let open_ms = settings.open_ms.max(1_000);
        let policy = failure_policy::consecutive_failures(
            settings.failure_threshold.max(1),
            backoff::exponential(
                Duration::from_millis(open_ms),
                Duration::from_millis(settings.max_open_ms.max(open_ms)),
            ),
        );
        let machine = Config::new()
            .failure_policy(policy)
            .instrument(StateMirror(state.clone()))
            .build();
        Arc::new(ProduceBreaker {
            machine,
            state,
            settings,
            probes_in_flight: AtomicU32::new(0),
            queued: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            last_report_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    pub fn permit(&self) -> Permit {
        if !self.machine.is_call_permitted() {
            return Permit::Rejected;
        }
        if self.state() != HALF_OPEN {
            return Permit::Allowed;
        }
        let max = self.settings.half_open_max_probes.max(1);
        let taken = self
            .probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_ok() {
            Permit::Probe
        } else {
            Permit::Rejected
        }
    }

    /// The guard of the probe slot `permit()` just granted (`Permit::Probe`).
    pub fn probe_slot(&self) -> ProbeSlot<'_> {
        ProbeSlot {
            breaker: self,
            armed: true,
        }
    }

    /// A record was handed to the producer (its report will come).
    pub fn queued(&self) {
        if self.queued.fetch_add(1, Ordering::Relaxed) == self.reported.load(Ordering::Relaxed) {
            // First record in flight after a quiet period: the timeout starts now, not at the last report.
            self.touch();
        }
    }

    /// A probe could not even be queued: free its slot.
    fn probe_abandoned(&self) {
        self.free_probe_slot();
    }

    /// Saturating: `renew` zeroes the slots while a probe of the old producer may still hold one.
    fn free_probe_slot(&self) {
        let _ = self
            .probes_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// The producer generation the state machine judges now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A new producer replaces the one this breaker judged: start closed with the backoff reset,
    /// free the probe slots, and ignore the old producer's reports from now on (they still count
    /// as reported, so the timeout does not wait for them).
    pub fn renew(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.probes_in_flight.store(0, Ordering::Release);
        self.touch();
        self.machine.reset();
    }

    /// A delivery report of the producer of `generation`: judged only if that is the current one.
    pub fn report_from(&self, generation: u64, ok: bool, probe: bool) {
        if generation == self.generation() {
            self.report(ok, probe);
        } else {
            self.reported.fetch_add(1, Ordering::Relaxed);
            self.touch();
        }
    }

    /// A delivery report arrived (called from the producer's delivery callback).
    pub fn report(&self, ok: bool, probe: bool) {
        self.reported.fetch_add(1, Ordering::Relaxed);
        self.touch();
        if probe {
            self.free_probe_slot();
        }
        if ok {
            self.machine.on_success();
        } else {
            self.machine.on_error();
        }
    }

    /// A produce call failed synchronously (not queued at all).
    pub fn failed_now(&self) {
        self.machine.on_error();
    }

    fn touch(&self) {
        self.last_report_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// One watchdog tick: records in flight with no report for `call_timeout_ms` count as a failure.
    pub fn check_timeout(&self) {
        let in_flight = self
            .queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.reported.load(Ordering::Relaxed));
        let silent_ms = (self.epoch.elapsed().as_millis() as u64)
            .saturating_sub(self.last_report_ms.load(Ordering::Relaxed));
        if in_flight > 0 && silent_ms >= self.settings.call_timeout_ms {
            self.machine.on_error();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> BreakerSettings {
        BreakerSettings {
            failure_threshold: 3,
            open_ms: 1_000,
            max_open_ms: 1_000,
            call_timeout_ms: 20,
            half_open_max_probes: 1,
        }
    }

    #[test]
    fn opens_after_the_threshold_of_failed_deliveries_and_rejects_calls() {
        let b = ProduceBreaker::new(fast());
        for _ in 0..2 {
            b.report(false, false);
        }
        assert_eq!(b.state(), CLOSED);
        b.report(false, false);
        assert_eq!(b.state(), OPEN);
        assert_eq!(b.permit(), Permit::Rejected);
    }

    #[test]
    fn a_silent_broker_with_records_in_flight_counts_as_failing() {
        let b = ProduceBreaker::new(fast());
        b.queued();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(25));
            b.check_timeout();
        }
        assert_eq!(b.state(), OPEN);
    }

    #[test]
    fn nothing_in_flight_is_not_a_timeout() {
        let b = ProduceBreaker::new(fast());
        std::thread::sleep(Duration::from_millis(30));
        for _ in 0..5 {
            b.check_timeout();
        }
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn half_open_allows_only_the_configured_probes_then_closes_on_success() {
        let b = ProduceBreaker::new(fast());
        for _ in 0..3 {
            b.report(false, false);
        }
        std::thread::sleep(Duration::from_millis(1_050));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.state(), HALF_OPEN);
        assert_eq!(b.permit(), Permit::Rejected, "second probe refused");
        b.report(true, true);
        assert_eq!(b.state(), CLOSED);
        assert_eq!(b.permit(), Permit::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_again() {
        let b = ProduceBreaker::new(fast());
        for _ in 0..3 {
            b.report(false, false);
        }
        std::thread::sleep(Duration::from_millis(1_050));
        assert_eq!(b.permit(), Permit::Probe);
        b.report(false, true);
        assert_eq!(b.state(), OPEN);
    }

    #[test]
    fn a_probe_slot_dropped_before_its_record_is_queued_frees_the_slot() {
        let b = ProduceBreaker::new(fast());
        for _ in 0..3 {
            b.report(false, false);
        }
        std::thread::sleep(Duration::from_millis(1_050));
        assert_eq!(b.permit(), Permit::Probe);
        drop(b.probe_slot());
        assert_eq!(
            b.permit(),
            Permit::Probe,
            "the abandoned probe's slot is free again"
        );
        b.probe_slot().handed_over();
        assert_eq!(
            b.permit(),
            Permit::Rejected,
            "a queued probe keeps its slot"
        );
        b.report(true, true);
        assert_eq!(b.state(), CLOSED);
    }

    #[test]
    fn a_renewed_breaker_is_closed_and_ignores_the_old_producers_reports() {
        let b = ProduceBreaker::new(fast());
        let old = b.generation();
        for _ in 0..3 {
            b.report_from(old, false, false);
        }
        std::thread::sleep(Duration::from_millis(1_050));
        assert_eq!(b.permit(), Permit::Probe);
        b.probe_slot().handed_over();
        assert_eq!(b.state(), HALF_OPEN);

        b.renew();
        assert_eq!(b.state(), CLOSED);
        assert_eq!(b.permit(), Permit::Allowed);
        // The old producer's queue is purged: its failures, and its probe's, judge nothing now.
        for _ in 0..5 {
            b.report_from(old, false, false);
        }
        b.report_from(old, false, true);
        assert_eq!(b.state(), CLOSED);
        // The new producer is judged as before, from a fresh count.
        let new = b.generation();
        assert_ne!(new, old);
        b.report_from(new, false, false);
        b.report_from(new, false, false);
        assert_eq!(b.state(), CLOSED);
        b.report_from(new, false, false);
        assert_eq!(b.state(), OPEN);
    }
}
