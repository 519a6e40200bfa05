//! Offset checks and repositioning: stored offsets compared with the broker's log (on assignment,
//! on a refused fetch, against the watermarks), a log replaced under a stored offset, the
//! `consumer.offset_out_of_range` policy, and the seek to the stored offsets after a fence.

use super::decide::*;
use super::*;

impl ConsumerLoop {
    /// Each partition's log bounds from the latest statistics snapshot (see `Bounds`).
    pub(super) fn bounds(&self) -> HashMap<i32, (i64, i64)> {
        self.consumer
            .context()
            .bounds
            .lock()
            .expect("bounds lock")
            .partitions
            .clone()
    }

    /// On each statistics snapshot, per owned partition: lag (the log's end, as the latest fetch
    /// response told it, minus the next offset stored in Postgres; negative when the stored
    /// offset is past the log's end) and whether the stored offset fits the log. One that does
    /// not, confirmed by the next snapshot, is handled by the policy, never skipped.
    pub(super) fn check_offsets(&self, batch: &mut Vec<Pending>) {
        let bounds = self.bounds();
        let mut misfits = Vec::new();
        {
            let mut own = self.ownership.lock().expect("ownership lock");
            for (p, o) in own.partitions.iter_mut() {
                let Some(&(low, high)) = bounds.get(p) else {
                    continue;
                };
                if high < 0 {
                    continue;
                }
                let low = low.max(0);
                o.log_start = low;
                let (misfit, suspect) = confirmed_misfit(o.suspect, o.expected, low, high);
                o.suspect = suspect;
                // An unconfirmed misfit may be a stale snapshot: no alarm for it yet.
                let lag = if suspect.is_some() {
                    0
                } else {
                    high - o.expected
                };
                telemetry::consumer_lag(*p, lag);
                if let Some(reason) = misfit {
                    misfits.push((*p, low, high, reason));
                } else if let Some(reason) = o.refused.filter(|_| {
                    suspect.is_none()
                        && self.config.consumer.offset_out_of_range == OffsetPolicy::ResetToStart
                }) {
                    // An earlier reset could not be recorded and the offset fits again (the new
                    // log grew past it): the log is still not the one the offset was stored
                    // against, so reset it now rather than skip.
                    misfits.push((*p, low, high, reason));
                }
            }
        }
        for (p, low, high, reason) in misfits {
            self.handle_misfit(batch, p, low, high, reason);
        }
        self.pause_refused();
    }

    /// After the broker refused a fetch position (Kafka's OFFSET_OUT_OF_RANGE; the error does not
    /// name the partition): ask the broker for each partition's bounds. The answer is trusted only
    /// where the fetch responses do not contradict it (see `Bounds` for why).
    pub(super) fn check_offsets_by_query(&self, batch: &mut Vec<Pending>) {
        let owned: Vec<(i32, i64)> = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .iter()
            .map(|(p, o)| (*p, o.expected))
            .collect();
        let bounds = self.bounds();
        for (p, expected) in owned {
            let Ok((low, high)) = self.consumer.fetch_watermarks(
                &self.config.kafka.raw_topic,
                p,
                Duration::from_secs(2),
            ) else {
                continue;
            };
            let low = low.max(0);
            let Some(reason) = offset_misfit(expected, low, high) else {
                continue;
            };
            let fetched = bounds.get(&p).copied().filter(|b| b.1 >= 0);
            if fetched.is_none_or(|(l, h)| offset_misfit(expected, l.max(0), h).is_some()) {
                telemetry::consumer_lag(p, high - expected);
                self.handle_misfit(batch, p, low, high, reason);
            }
        }
        self.pause_refused();
    }

    /// The record before partition `p`'s stored offset is not the one stored with it: the log
    /// was replaced (an in-memory broker restarted, the topic recreated) and already reaches past
    /// the stored offset, so its bounds alone look fine. Handled like an offset outside the log:
    /// the policy resets to the log start (or refuses), recorded as `log_replaced`.
    pub(super) fn handle_replaced(&self, batch: &mut Vec<Pending>, p: i32, at: i64) {
        const REASON: &str = "log_replaced";
        let known = self.bounds().get(&p).copied().filter(|b| b.1 >= 0);
        let bounds = known.or_else(|| {
            self.consumer
                .fetch_watermarks(&self.config.kafka.raw_topic, p, Duration::from_secs(2))
                .ok()
        });
        tracing::error!(
            partition = p,
            offset = at,
            "the record before the stored offset is not the one stored: the broker's log was \
             replaced"
        );
        match bounds {
            Some((low, high)) => self.handle_misfit(batch, p, low.max(0), high, REASON),
            None => {
                // Not known yet: hold the partition; the next statistics snapshot applies the
                // policy (see `check_offsets`).
                self.mark_refused(p, REASON);
                self.pause_refused();
            }
        }
    }

    /// Hold partition `p` for `reason` (paused by `pause_refused`).
    pub(super) fn mark_refused(&self, p: i32, reason: &'static str) {
        if let Some(o) = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .get_mut(&p)
        {
            o.refused = Some(reason);
        }
    }

    /// A stored offset outside the broker's log `[low, high]`: apply the policy.
    pub(super) fn handle_misfit(
        &self,
        batch: &mut Vec<Pending>,
        p: i32,
        low: i64,
        high: i64,
        reason: &'static str,
    ) {
        let ctx = self.consumer.context();
        if self.config.consumer.offset_out_of_range == OffsetPolicy::Refuse {
            let expected = {
                let mut own = self.ownership.lock().expect("ownership lock");
                match own.partitions.get_mut(&p) {
                    Some(o) if o.refused.is_none() => {
                        o.refused = Some(reason);
                        o.expected
                    }
                    _ => return,
                }
            };
            let _ = ctx.apply_policy(p, expected, low, high, reason);
            return;
        }
        // Records buffered from the lost log were acknowledged by it: store them first.
        if batch.iter().any(|r| r.partition == p) && self.flush(batch, None).is_err() {
            return;
        }
        let Some(expected) = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .get(&p)
            .map(|o| o.expected)
        else {
            return;
        };
        match ctx.apply_policy(p, expected, low, high, reason) {
            Ok(new) => {
                let mut own = self.ownership.lock().expect("ownership lock");
                own.epoch += 1;
                let epoch = own.epoch;
                if let Some(o) = own.partitions.get_mut(&p) {
                    o.epoch = epoch;
                    o.expected = new;
                    o.next_fetch = new;
                    o.gap = None;
                    o.log_start = low;
                    o.refused = None;
                    o.suspect = None;
                    o.verify = None;
                }
                drop(own);
                if let Err(e) = self.consumer.seek(
                    &self.config.kafka.raw_topic,
                    p,
                    Offset::Offset(new),
                    Duration::from_secs(5),
                ) {
                    tracing::error!(partition = p, error = %e, "seek after an offset reset failed");
                }
                if let Err(e) = self.consumer.resume(&self.partition_list(p)) {
                    tracing::error!(partition = p, error = %e, "resume failed");
                }
            }
            Err(()) => self.mark_refused(p, reason),
        }
    }

    /// After a fence: take the stored offsets as truth and seek every owned partition there.
    pub(super) fn reposition(&self) {
        let partitions = self.owned_partitions();
        let stored = match self.rt.block_on(self.db.claim_offsets(
            &self.config.consumer.group_id,
            &self.config.kafka.raw_topic,
            &partitions,
        )) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot re-read offsets");
                return;
            }
        };
        let mut own = self.ownership.lock().expect("ownership lock");
        own.epoch += 1;
        let epoch = own.epoch;
        for (p, st) in stored {
            let mut o = Owned::new(epoch, st, Instant::now());
            if let Some(old) = own.partitions.get(&p) {
                o.services.clone_from(&old.services);
                o.log_start = old.log_start;
                o.refused = old.refused;
            }
            let log_start = o.log_start;
            own.partitions.insert(p, o);
            if let Err(e) = self.consumer.seek(
                &self.config.kafka.raw_topic,
                p,
                Offset::Offset(fetch_start(
                    st.next_offset,
                    self.config.consumer.resume_lookback_records,
                    log_start,
                )),
                Duration::from_secs(5),
            ) {
                tracing::error!(partition = p, error = %e, "seek failed");
            }
        }
    }

    /// Hold the partitions whose stored offset does not fit the log (see `check_offsets`).
    pub(super) fn pause_refused(&self) {
        let refused: Vec<i32> = self
            .ownership
            .lock()
            .expect("ownership lock")
            .partitions
            .iter()
            .filter(|(_, o)| o.refused.is_some())
            .map(|(p, _)| *p)
            .collect();
        for p in &refused {
            if let Err(e) = self.consumer.pause(&self.partition_list(*p)) {
                tracing::error!(partition = p, error = %e, "pause failed");
            }
        }
        self.health
            .refused_partitions
            .store(refused.len() as u64, Ordering::Relaxed);
        telemetry::partitions_refused(refused.len());
    }
}
