//! `ahead`'s unit tests: a plan made ahead is adopted only when it is the plan the writer would
//! make itself at commit time.

use std::collections::HashMap;

use chrono::DateTime;
use logpipe_common::Level;
use proptest::prelude::*;

use super::super::decide::tests::{event, owned, pending, PlanFixture};
use super::*;

/// As many services as the fixture's cap admits a window: past it, which service counts under the
/// overflow key depends on a hash map's order, which two planners need not share.
const SERVICES: [&str; 3] = ["api", "web", "db"];
const LEVELS: [Level; 4] = [Level::Debug, Level::Info, Level::Error, Level::Fatal];

/// A record of a generated batch: partition (3 is not owned), event time (seconds after the
/// tests' epoch), level, service, and whether it is poison.
type Rec = (i32, i64, usize, usize, bool);

fn rec() -> impl Strategy<Value = Rec> {
    (
        0..4i32,
        -60..400i64,
        0..4usize,
        0..3usize,
        prop::bool::weighted(0.05),
    )
}

/// The batch of `recs`, each partition's offsets going on from `next`.
fn batch_of(recs: &[Rec], next: &mut HashMap<i32, i64>) -> Vec<Pending> {
    recs.iter()
        .map(|&(p, secs, level, service, poison)| {
            let at = next.entry(p).or_insert(0);
            let offset = *at;
            *at += 1;
            let item = if poison {
                Item::Poison {
                    key: None,
                    payload: b"{".to_vec(),
                    kind: "invalid_json",
                    message: "eof".into(),
                    headers: Vec::new(),
                }
            } else {
                Item::Event(Box::new(event(secs, LEVELS[level], SERVICES[service])))
            };
            pending(p, offset, item)
        })
        .collect()
}

/// Everything a plan says, to compare two plans.
fn said(plan: &Plan<'_>) -> String {
    format!(
        "{:?}",
        (
            &plan.write,
            &plan.rows,
            &plan.services,
            (
                plan.filtered,
                plan.late,
                plan.future,
                plan.clamped_latencies
            ),
            &plan.overflow,
        )
    )
}

/// A batch's commit, as the writer does it (`commit`, then the services).
fn commit(own: &mut HashMap<i32, Owned>, plan: &Plan<'_>) {
    move_on(own, &plan.write.moves);
    note_services(own, &plan.services, 10, 10);
}

/// What became of the batch before, once the writer is done with it.
#[derive(Debug, Clone, Copy)]
enum Before {
    /// Committed; the planner's view was taken before it, half-way (offsets moved, services not
    /// yet), or after it.
    Committed(u8),
    /// Not written (a failed write being retried; a fence).
    Failed,
    /// Partition 0 revoked and assigned again.
    Reassigned,
    /// Partition 1 made an idle move to the collector's clock.
    IdleMove,
}

fn before() -> impl Strategy<Value = Before> {
    prop_oneof![
        (0..3u8).prop_map(Before::Committed),
        Just(Before::Failed),
        Just(Before::Reassigned),
        Just(Before::IdleMove),
    ]
}

/// Partitions 0 to 2, from generated stored offsets, event times and services.
fn standing() -> impl Strategy<Value = HashMap<i32, Owned>> {
    prop::collection::vec(
        (
            0..1_000i64,
            prop::option::of(0..300i64),
            prop::collection::vec((0..3usize, 0..300i64), 0..3),
        ),
        3,
    )
    .prop_map(|parts| {
        parts
            .into_iter()
            .enumerate()
            .map(|(p, (next, max, services))| {
                let mut o = owned(next);
                o.max_ts = max.and_then(|s| DateTime::from_timestamp(1_800_000_000 + s, 0));
                for (s, secs) in services {
                    o.services.insert(SERVICES[s].into(), 1_800_000_000 + secs);
                }
                (p as i32, o)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_plan_made_ahead_is_adopted_only_when_it_is_the_plan_the_writer_would_make(
        start in standing(),
        first in prop::collection::vec(rec(), 0..40),
        second in prop::collection::vec(rec(), 1..40),
        before in before(),
    ) {
        let mut next: HashMap<i32, i64> = start.iter().map(|(p, o)| (*p, o.expected)).collect();
        let batch_k = batch_of(&first, &mut next);
        let batch_next = batch_of(&second, &mut next);
        // Two collectors' worth of caps, mutated in the same order (k, then the next batch).
        let mut ahead_side = PlanFixture::new(Level::Info);
        let mut fresh_side = PlanFixture::new(Level::Info);

        // The planner: batch k against the live standing, the next one against k's projection.
        let mut live = start.clone();
        let plan_k = ahead_side.planner().plan(&batch_k, &live);
        let effect = Effect {
            moves: plan_k.write.moves.clone(),
            services: plan_k.services.clone(),
        };
        let _ = fresh_side.planner().plan(&batch_k, &live);
        let mut view = live.clone();
        match before {
            Before::Committed(1) => move_on(&mut view, &plan_k.write.moves),
            Before::Committed(2) => commit(&mut view, &plan_k),
            _ => {}
        }
        effect.project(&mut view, 10, 10);
        let ahead = Ahead::new(ahead_side.planner().plan(&batch_next, &view), &batch_next, &view);

        // The writer, meanwhile, with batch k.
        match before {
            Before::Committed(_) => commit(&mut live, &plan_k),
            Before::Failed => {}
            Before::Reassigned => {
                let o = live.get_mut(&0).expect("partition 0");
                o.epoch += 1;
            }
            Before::IdleMove => {
                let o = live.get_mut(&1).expect("partition 1");
                o.max_ts = Some(fresh_side.now);
            }
        }
        let fresh = fresh_side.planner().plan(&batch_next, &live);
        let adopted = ahead.adopt(&batch_next, &live);
        if let Before::Committed(_) = before {
            prop_assert!(adopted.is_some(), "k committed as planned: the plan stands");
        }
        if let Some(adopted) = adopted {
            prop_assert_eq!(said(&adopted), said(&fresh));
        }
    }
}

#[test]
fn a_plan_made_ahead_is_not_adopted_for_a_batch_that_lost_records() {
    let mut fx = PlanFixture::new(Level::Info);
    let own: HashMap<i32, Owned> = [(0, owned(0)), (1, owned(0))].into_iter().collect();
    let mut batch = vec![
        pending(0, 0, Item::Event(Box::new(event(1, Level::Info, "api")))),
        pending(1, 0, Item::Event(Box::new(event(2, Level::Info, "web")))),
    ];
    let ahead = Ahead::new(fx.planner().plan(&batch, &own), &batch, &own);
    // The writer dropped a revoked partition's records.
    batch.pop();
    assert!(ahead.adopt(&batch, &own).is_none());
}

#[test]
fn a_plan_made_ahead_is_not_adopted_once_a_stored_row_became_poison() {
    let mut fx = PlanFixture::new(Level::Info);
    let own: HashMap<i32, Owned> = [(0, owned(0))].into_iter().collect();
    let mut batch = vec![pending(
        0,
        0,
        Item::Event(Box::new(event(1, Level::Info, "api"))),
    )];
    let ahead = Ahead::new(fx.planner().plan(&batch, &own), &batch, &own);
    batch[0].item = Item::Poison {
        key: None,
        payload: Vec::new(),
        kind: "refused_by_database",
        message: String::new(),
        headers: Vec::new(),
    };
    assert!(ahead.adopt(&batch, &own).is_none());
}
