//! The broker and the group watched: fetching held while the broker is gone (`BrokerHold`),
//! partitions nobody in the group stores (`OrphanWatch`), and pausing or resuming what this
//! member owns.

use super::decide::*;
use super::*;

impl ConsumerLoop {
    /// See `BrokerHold`: pause on a connection failure; while held, probe the broker every 500 ms
    /// and resume once it has the topic (creating it again if it came back without it).
    pub(super) fn watch_broker(&self, writer_behind: bool) {
        let ctx = self.consumer.context();
        if ctx.broker_lost.swap(false, Ordering::Relaxed) && !self.held() {
            tracing::warn!("a broker connection failed; fetching paused until the broker answers with the topic");
            self.pause_all();
            *self.hold.lock().expect("hold lock") = BrokerHold {
                held: true,
                next_probe: Some(Instant::now() + Duration::from_millis(500)),
            };
            return;
        }
        let due = {
            let h = self.hold.lock().expect("hold lock");
            h.held && h.next_probe.is_none_or(|t| Instant::now() >= t)
        };
        if !due {
            return;
        }
        self.hold.lock().expect("hold lock").next_probe =
            Some(Instant::now() + Duration::from_millis(500));
        let topic = &self.config.kafka.raw_topic;
        let present = match self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(1))
        {
            Ok(md) => md
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
            Err(e) => {
                tracing::debug!(error = %e, "broker not answering yet");
                return;
            }
        };
        if !present {
            tracing::warn!(
                topic,
                "the broker answers without the topic (did it lose its data?); creating it"
            );
            let topics = self.config.kafka.topics();
            if let Err(e) = self.rt.block_on(logpipe_common::kafka::ensure_topics(
                &self.config.kafka,
                &topics,
            )) {
                tracing::error!(error = %e, "cannot create the topics again; retrying");
            }
            return;
        }
        tracing::warn!("the broker answers with the topic; fetching resumes");
        *self.hold.lock().expect("hold lock") = BrokerHold::default();
        // Anything swallowed while held is looked at again now.
        ctx.broker_lost.store(false, Ordering::Relaxed);
        if !writer_behind {
            self.resume_all();
        }
        self.pause_refused();
        self.check_offsets_now.store(true, Ordering::Relaxed);
    }

    /// No silent stall across the group: partitions this consumer does not own are looked at
    /// (stored offset in Postgres, log end from the broker), and one with records waiting whose
    /// stored offset does not move is reported (ERROR, `/ready` 503, a gauge) until it moves.
    pub(super) fn check_orphans(&self, watch: &mut OrphanWatch) {
        let topic = &self.config.kafka.raw_topic;
        let timeout = Duration::from_secs(5);
        let all: Vec<i32> = match self.consumer.fetch_metadata(Some(topic), timeout) {
            Ok(md) => md
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "orphan check: no metadata");
                return;
            }
        };
        let owned: BTreeSet<i32> = self.owned_partitions().into_iter().collect();
        let unowned: Vec<i32> = all.into_iter().filter(|p| !owned.contains(p)).collect();
        let mut observed = Vec::with_capacity(unowned.len());
        if !unowned.is_empty() {
            let stored = match self.rt.block_on(
                self.db
                    .stored_offsets(&self.config.consumer.group_id, topic),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "orphan check: stored offsets unreadable");
                    return;
                }
            };
            for p in unowned {
                // On Tansu's in-memory engine this log end can be short of the true one by the
                // rest of the newest batch (the "short ListOffsets"): it may find an orphan late,
                // never one that is not.
                if let Ok((_, end)) = self.consumer.fetch_watermarks(topic, p, timeout) {
                    observed.push((p, stored.get(&p).copied().unwrap_or(0), end));
                }
            }
        }
        let after = Duration::from_secs(self.config.consumer.orphan_after_secs);
        let unstored = watch.observe(Instant::now(), &observed, after);
        let before = self
            .health
            .unstored_partitions
            .swap(unstored.len() as u64, Ordering::Relaxed);
        telemetry::partitions_unstored(unstored.len());
        if !unstored.is_empty() {
            tracing::error!(
                partitions = ?unstored,
                owned = ?owned,
                secs = after.as_secs(),
                "partitions with records waiting that no collector of the group has stored for \
                 this long: not ready (a rebalance left them unassigned, or their owner cannot \
                 write)"
            );
        } else if before > 0 {
            tracing::info!("every partition is stored again");
        }
    }

    pub(super) fn assignment(&self) -> Option<TopicPartitionList> {
        self.consumer
            .assignment()
            .ok()
            .filter(|tpl| tpl.count() > 0)
    }

    pub(super) fn pause_all(&self) {
        if let Some(tpl) = self.assignment() {
            if let Err(e) = self.consumer.pause(&tpl) {
                tracing::error!(error = %e, "pause failed");
            }
        }
    }

    /// Resume every partition this consumer owns and does not refuse (by its own record, which a
    /// rebalance in progress cannot hide the way an empty `assignment()` can).
    pub(super) fn resume_all(&self) {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.ownership.lock().expect("ownership lock").partitions {
            if o.refused.is_none() {
                tpl.add_partition(&self.config.kafka.raw_topic, *p);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::error!(error = %e, "resume failed");
            }
        }
    }

    pub(super) fn held(&self) -> bool {
        self.hold.lock().expect("hold lock").held
    }

    pub(super) fn owned_partitions(&self) -> Vec<i32> {
        let own = self.ownership.lock().expect("ownership lock");
        own.partitions.keys().copied().collect()
    }

    pub(super) fn partition_list(&self, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.kafka.raw_topic, p);
        tpl
    }
}
