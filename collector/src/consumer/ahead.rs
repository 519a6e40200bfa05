//! Planning a batch while the one before it commits, pure. The planner thread (`mod.rs`,
//! `plan_loop`) plans each batch against the partitions' standing as it will be once the batch
//! handed over before it has committed ([`Effect::project`]); the writer adopts that plan only if
//! the standing it read is still the live one ([`Ahead::adopt`]) and plans again otherwise. So a
//! plan made ahead is always one the writer could have made itself: a failed, split, fenced or
//! revoked batch before it only costs the planning again.
//!
//! What a commit does to the standing ([`move_on`], [`note_services`]) is the same function for
//! the live state and for the projection, so the two cannot drift apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::batch::{BatchWrite, OffsetMove, StoredEvent};

use super::decide::{forget_services, Item, Owned, Pending, Plan};

/// A committed batch's offsets and event times, on the partitions still owned.
pub(super) fn move_on(own: &mut HashMap<i32, Owned>, moves: &[OffsetMove]) {
    for m in moves {
        if let Some(o) = own.get_mut(&m.partition) {
            o.expected = m.next;
            o.max_ts = m.max_event_ts;
        }
    }
}

/// A committed batch's services (each with its newest event time) added to its partitions', and
/// the ones long quiet forgotten (see `forget_services`).
pub(super) fn note_services(
    own: &mut HashMap<i32, Owned>,
    services: &BTreeMap<i32, BTreeMap<String, i64>>,
    lateness_secs: i64,
    width: i64,
) {
    for (p, seen) in services {
        if let Some(o) = own.get_mut(p) {
            for (s, last) in seen {
                let e = o.services.entry(s.clone()).or_insert(*last);
                *e = (*e).max(*last);
            }
            forget_services(&mut o.services, o.max_ts, lateness_secs, width);
        }
    }
}

/// What a plan reads of one partition: it stands while this is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Standing {
    epoch: u64,
    expected: i64,
    max_ts: Option<DateTime<Utc>>,
    services: BTreeMap<String, i64>,
}

impl Standing {
    fn of(o: &Owned) -> Standing {
        Standing {
            epoch: o.epoch,
            expected: o.expected,
            max_ts: o.max_ts,
            services: o.services.clone(),
        }
    }
}

/// What committing a planned batch does to the standing of its partitions.
#[derive(Debug, Clone, Default)]
pub(super) struct Effect {
    moves: Vec<OffsetMove>,
    services: BTreeMap<i32, BTreeMap<String, i64>>,
}

impl Effect {
    /// `own` as it will be once the batch has committed. A partition whose stored offset is no
    /// longer the one the batch expects is left as it is: the batch committed already (a view
    /// taken after it, or half-way through its bookkeeping) or something else moved it (then the
    /// plan made from this view will not stand). Services merge by maximum, so merging them twice
    /// changes nothing.
    pub(super) fn project(&self, own: &mut HashMap<i32, Owned>, lateness_secs: i64, width: i64) {
        for m in &self.moves {
            if let Some(o) = own.get_mut(&m.partition) {
                if o.expected == m.expected {
                    o.expected = m.next;
                    o.max_ts = m.max_event_ts;
                }
            }
        }
        note_services(own, &self.services, lateness_secs, width);
    }
}

/// A batch on its way to the writer, with the plan made ahead of it.
pub(super) struct Planned {
    pub(super) batch: Vec<Pending>,
    pub(super) ahead: Option<Ahead>,
}

/// A plan made ahead of its batch's commit, kept apart from the batch (its rows by their place),
/// with the standing it read of each partition the batch holds.
pub(super) struct Ahead {
    plan: Plan<'static>,
    read: Vec<(i32, Option<Standing>)>,
    records: usize,
}

impl Ahead {
    /// `plan` was made from `batch` against `own`.
    pub(super) fn new(plan: Plan<'_>, batch: &[Pending], own: &HashMap<i32, Owned>) -> Ahead {
        let partitions: BTreeSet<i32> = batch.iter().map(|p| p.partition).collect();
        let read = partitions
            .into_iter()
            .map(|p| (p, own.get(&p).map(Standing::of)))
            .collect();
        Ahead {
            plan: with_events(plan, Vec::new()),
            read,
            records: batch.len(),
        }
    }

    /// What committing the plan does.
    pub(super) fn effect(&self) -> Effect {
        Effect {
            moves: self.plan.write.moves.clone(),
            services: self.plan.services.clone(),
        }
    }

    /// The plan for `batch`, if `batch` is the one it was made from and every partition it read
    /// stands in `own` as it did; `None`: plan again.
    pub(super) fn adopt<'a>(
        self,
        batch: &'a [Pending],
        own: &HashMap<i32, Owned>,
    ) -> Option<Plan<'a>> {
        if batch.len() != self.records
            || self
                .read
                .iter()
                .any(|(p, read)| own.get(p).map(Standing::of) != *read)
        {
            return None;
        }
        attach(self.plan, batch)
    }
}

/// The plan with `events` for its rows: none to keep it apart from its batch, the batch's again
/// to write it.
fn with_events<'a>(plan: Plan<'_>, events: Vec<StoredEvent<'a>>) -> Plan<'a> {
    let w = plan.write;
    Plan {
        write: BatchWrite {
            events,
            windows: w.windows,
            findings: w.findings,
            moves: w.moves,
            closed: w.closed,
        },
        rows: plan.rows,
        services: plan.services,
        filtered: plan.filtered,
        late: plan.late,
        future: plan.future,
        clamped_latencies: plan.clamped_latencies,
        overflow: plan.overflow,
    }
}

/// The plan with its rows borrowed from `batch` again; `None` if a row is not an event there.
fn attach<'a>(plan: Plan<'static>, batch: &'a [Pending]) -> Option<Plan<'a>> {
    let events = plan
        .rows
        .iter()
        .map(|&i| {
            let p = batch.get(i)?;
            match &p.item {
                Item::Event(e) => Some(StoredEvent {
                    event: e,
                    partition: p.partition,
                    offset: p.offset,
                }),
                Item::Poison { .. } => None,
            }
        })
        .collect::<Option<Vec<_>>>()?;
    Some(with_events(plan, events))
}

#[cfg(test)]
mod tests;
