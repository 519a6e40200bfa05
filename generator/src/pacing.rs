//! A generator worker's pacing: its local rate limit (`governor`), and ten times that while a
//! `burst` profile's burst is on.

use std::num::NonZeroU32;

use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::events::BURST_MULTIPLIER;

/// A worker's pacing. A batch is paced as a unit, so the limiter is consulted once per batch, not
/// once per event. Capacity is two batches, one of them drained at start: a timer that wakes late
/// (tokio sleeps in whole milliseconds, a large share of a 5 ms batch period) leaves credit for the
/// next batch instead of losing it, so the long-run rate holds the target.
pub struct Pacer {
    limiter: governor::DefaultDirectRateLimiter,
    /// `burst` profile: a second limiter at ten times the rate, used while the burst is on.
    burst: governor::DefaultDirectRateLimiter,
}

impl Pacer {
    pub fn new(rate: NonZeroU32, batch: u32) -> Self {
        let one_batch = NonZeroU32::new(batch).expect("batch >= 1");
        let capacity = NonZeroU32::new(batch.saturating_mul(2)).expect("non-zero");
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(capacity));
        let _ = limiter.check_n(one_batch);
        let burst_rate = rate.saturating_mul(NonZeroU32::new(BURST_MULTIPLIER).expect("non-zero"));
        let burst = RateLimiter::direct(Quota::per_second(burst_rate).allow_burst(capacity));
        let _ = burst.check_n(one_batch);
        Self { limiter, burst }
    }

    /// Wait until `n` events may go (at the burst rate while `burst`); false when the run is
    /// cancelled or its deadline passes first.
    pub async fn ready(
        &self,
        n: u64,
        burst: bool,
        deadline: Option<tokio::time::Instant>,
        cancel: &CancellationToken,
    ) -> bool {
        let permits = NonZeroU32::new(n as u32).expect("n >= 1");
        let wait = if burst {
            self.burst.until_n_ready(permits)
        } else {
            self.limiter.until_n_ready(permits)
        };
        match deadline {
            Some(d) => tokio::select! {
                _ = cancel.cancelled() => false,
                _ = tokio::time::sleep_until(d) => false,
                r = wait => r.is_ok(),
            },
            None => tokio::select! {
                _ = cancel.cancelled() => false,
                r = wait => r.is_ok(),
            },
        }
    }
}
