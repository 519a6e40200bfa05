//! The consume loop's timers as data: when it last owned a partition, last looked for orphaned
//! partitions and last moved idle partitions' event time. `due(now)` says which are due; it reads
//! no clock (the loop passes `Instant::now()`, the tests any instant), so it is tested directly.

use std::time::{Duration, Instant};

/// A member that has owned nothing this long joins its group again (the "orphaned assignment"
/// workaround, see `ConsumerLoop::rejoin`). The first time after it last owned a partition (or
/// started) it waits just past the session timeout (10 s), the time a SIGKILLed member it
/// replaces takes to expire; after that once a minute.
pub(super) const UNASSIGNED_REJOIN_FIRST: Duration = Duration::from_secs(15);
pub(super) const UNASSIGNED_REJOIN: Duration = Duration::from_secs(60);

/// How often the partitions this member does not own are checked for one nobody stores.
pub(super) const ORPHAN_CHECK_EVERY: Duration = Duration::from_secs(10);

/// How often idle partitions' event time is moved to the wall clock (so their windows close).
pub(super) const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What is due at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Due {
    /// Owning nothing for `rejoin_after`: join the group again.
    pub(super) rejoin: bool,
    /// Look for partitions nobody stores.
    pub(super) orphan_check: bool,
    /// Move idle partitions' event time.
    pub(super) idle_check: bool,
}

#[derive(Debug, Clone)]
pub(super) struct LoopTimers {
    last_owned: Instant,
    rejoin_after: Duration,
    last_orphan_check: Instant,
    last_idle_check: Instant,
}

impl LoopTimers {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            last_owned: now,
            rejoin_after: UNASSIGNED_REJOIN_FIRST,
            last_orphan_check: now,
            last_idle_check: now,
        }
    }

    /// Which timers are due at `now`; `owns_any` is whether this member owns a partition now
    /// (owning one is what keeps the rejoin away).
    pub(super) fn due(&self, now: Instant, owns_any: bool) -> Due {
        let since = |t: Instant| now.saturating_duration_since(t);
        Due {
            rejoin: !owns_any && since(self.last_owned) >= self.rejoin_after,
            orphan_check: since(self.last_orphan_check) >= ORPHAN_CHECK_EVERY,
            idle_check: since(self.last_idle_check) >= IDLE_CHECK_EVERY,
        }
    }

    /// The member owns a partition at `now`: the next rejoin waits the short first delay again.
    pub(super) fn owned(&mut self, now: Instant) {
        self.last_owned = now;
        self.rejoin_after = UNASSIGNED_REJOIN_FIRST;
    }

    /// The member joined again at `now`: the next rejoin waits the long delay.
    pub(super) fn rejoined(&mut self, now: Instant) {
        self.last_owned = now;
        self.rejoin_after = UNASSIGNED_REJOIN;
    }

    /// The wait before the next rejoin (for the log line).
    pub(super) fn rejoin_after(&self) -> Duration {
        self.rejoin_after
    }

    pub(super) fn orphans_checked(&mut self, now: Instant) {
        self.last_orphan_check = now;
    }

    pub(super) fn idle_checked(&mut self, now: Instant) {
        self.last_idle_check = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn nothing_is_due_at_start() {
        let t0 = Instant::now();
        assert_eq!(LoopTimers::new(t0).due(t0, false), Due::default());
    }

    #[test]
    fn a_member_owning_nothing_rejoins_after_15_s_then_once_a_minute() {
        let t0 = Instant::now();
        let mut t = LoopTimers::new(t0);
        assert!(!t.due(t0 + S(14), false).rejoin);
        assert!(t.due(t0 + S(15), false).rejoin);
        t.rejoined(t0 + S(15));
        assert!(!t.due(t0 + S(74), false).rejoin);
        assert!(t.due(t0 + S(75), false).rejoin);
    }

    #[test]
    fn owning_a_partition_keeps_the_rejoin_away_and_resets_its_delay() {
        let t0 = Instant::now();
        let mut t = LoopTimers::new(t0);
        t.rejoined(t0);
        assert!(!t.due(t0 + S(600), true).rejoin, "an owner never rejoins");
        t.owned(t0 + S(600));
        assert!(!t.due(t0 + S(614), false).rejoin);
        assert!(
            t.due(t0 + S(615), false).rejoin,
            "back to the short first delay"
        );
    }

    #[test]
    fn orphan_and_idle_checks_fall_due_on_their_own_periods() {
        let t0 = Instant::now();
        let mut t = LoopTimers::new(t0);
        let d = t.due(t0 + S(1), true);
        assert!(d.idle_check && !d.orphan_check);
        t.idle_checked(t0 + S(1));
        assert!(!t.due(t0 + S(1), true).idle_check);
        let d = t.due(t0 + S(10), true);
        assert!(d.orphan_check && d.idle_check);
        t.orphans_checked(t0 + S(10));
        assert!(!t.due(t0 + S(19), true).orphan_check);
    }

    #[test]
    fn an_instant_before_the_last_event_is_never_due() {
        let t0 = Instant::now() + S(100);
        let t = LoopTimers::new(t0);
        assert_eq!(t.due(t0 - S(50), false), Due::default());
    }
}
