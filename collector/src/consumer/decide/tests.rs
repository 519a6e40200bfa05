//! `decide`'s unit tests (a file of their own: the module reads alone).

use super::*;

#[test]
fn a_window_closes_once_event_time_passes_its_end_plus_lateness() {
    let t = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
    // 08:00:25 minus 10 s lateness = 08:00:15: the window [08:00:00, 08:00:10) is closed.
    let w = closed_window(t("2026-11-23T08:00:25Z"), 10, 10).unwrap();
    assert_eq!(w, "2026-11-23T08:00:00Z".parse::<DateTime<Utc>>().unwrap());
    assert_eq!(
        closed_upto(t("2026-11-23T08:00:29Z"), 10, 10),
        closed_upto(t("2026-11-23T08:00:20Z"), 10, 10)
    );
    assert!(
        closed_upto(t("2026-11-23T08:00:30Z"), 10, 10)
            > closed_upto(t("2026-11-23T08:00:29Z"), 10, 10)
    );
    assert_eq!(closed_window(None, 10, 10), None);
}

#[test]
fn a_stored_offset_fits_from_the_log_start_up_to_its_end() {
    assert_eq!(offset_misfit(0, 0, 0), None);
    assert_eq!(offset_misfit(5, 0, 5), None);
    assert_eq!(offset_misfit(3, 3, 10), None);
    // The in-memory broker came back empty: stored 213,980, log end 38,800.
    assert_eq!(offset_misfit(213_980, 0, 38_800), Some("past_log_end"));
    assert_eq!(offset_misfit(1, 0, 0), Some("past_log_end"));
    // Retention removed records never stored.
    assert_eq!(offset_misfit(2, 5, 10), Some("before_log_start"));
}

#[test]
fn a_resume_fetch_looks_back_but_never_before_the_log_start() {
    assert_eq!(fetch_start(100, 10, 0), 90);
    assert_eq!(fetch_start(5, 10, 0), 0);
    assert_eq!(fetch_start(100, 10, 95), 95);
    // The record before the offset is always re-read (the replaced-log check).
    assert_eq!(fetch_start(100, 0, 0), 99);
    assert_eq!(fetch_start(0, 0, 0), 0);
    // A log start past the offset (a misfit being handled) never moves the fetch forward.
    assert_eq!(fetch_start(3, 10, 8), 3);
}

#[test]
fn a_misfit_counts_only_when_the_next_snapshot_confirms_it() {
    // First sight: suspected, not acted on.
    let (act, suspect) = confirmed_misfit(None, 200, 0, 100);
    assert_eq!(act, None);
    assert_eq!(suspect, Some(("past_log_end", 200)));
    // A later snapshot caught up with the records already consumed: no misfit at all.
    assert_eq!(confirmed_misfit(suspect, 250, 0, 260), (None, None));
    // The next snapshot shows it again (even with more stored since): act.
    let (act, suspect) = confirmed_misfit(Some(("past_log_end", 200)), 200, 0, 40);
    assert_eq!((act, suspect), (Some("past_log_end"), None));
    // A snapshot whose end passed the earlier offset, with the new one still past it: the
    // earlier sighting was a stale snapshot; start over.
    let (act, suspect) = confirmed_misfit(Some(("past_log_end", 200)), 300, 0, 250);
    assert_eq!((act, suspect), (None, Some(("past_log_end", 300))));
}

#[test]
fn a_partition_with_records_and_a_stored_offset_that_does_not_move_is_unstored() {
    let t0 = Instant::now();
    let after = Duration::from_secs(60);
    let mut w = OrphanWatch::default();
    let none: Vec<i32> = Vec::new();
    // p0 behind, p1 caught up.
    assert_eq!(w.observe(t0, &[(0, 10, 50), (1, 7, 7)], after), none);
    let t1 = t0 + Duration::from_secs(30);
    assert_eq!(w.observe(t1, &[(0, 10, 60), (1, 7, 7)], after), none);
    let t2 = t0 + Duration::from_secs(60);
    assert_eq!(w.observe(t2, &[(0, 10, 60), (1, 7, 9)], after), vec![0]);
    // p1 just fell behind: its clock starts now. p0's owner stores again: its clock restarts.
    let t3 = t0 + Duration::from_secs(100);
    assert_eq!(w.observe(t3, &[(0, 40, 60), (1, 7, 9)], after), none);
    let t4 = t0 + Duration::from_secs(125);
    assert_eq!(w.observe(t4, &[(0, 40, 60), (1, 7, 9)], after), vec![1]);
    // Caught up, or owned by this consumer again (not observed): no longer unstored.
    assert_eq!(w.observe(t4, &[(1, 9, 9)], after), none);
    assert!(w.waiting.is_empty());
}

pub(in crate::consumer) fn owned(next: i64) -> Owned {
    Owned::new(
        1,
        Stored {
            next_offset: next,
            max_event_ts: None,
            last_record_hash: None,
        },
        Instant::now(),
    )
}

#[test]
fn records_in_order_are_taken_and_earlier_ones_skipped() {
    let now = Instant::now();
    let mut o = owned(100);
    assert_eq!(
        o.arrive(98, || 0, now, 5),
        Arrival::Skip,
        "the resume lookback"
    );
    assert_eq!(o.arrive(100, || 0, now, 5), Arrival::Take(1));
    assert_eq!(o.arrive(101, || 0, now, 5), Arrival::Take(1));
    assert_eq!(o.next_fetch, 102);
    assert_eq!(
        o.arrive(101, || 0, now, 5),
        Arrival::Skip,
        "a record read twice"
    );
}

#[test]
fn a_gap_is_refetched_then_waited_for_then_accepted_after_the_retries() {
    let t0 = Instant::now();
    let mut o = owned(10);
    o.log_start = 4;
    // 10..14 missing: fetch again from 10.
    assert_eq!(
        o.arrive(15, || 0, t0, 2),
        Arrival::Repair {
            from: 10,
            log_start: 4
        }
    );
    // Records fetched before the repair are still arriving: skipped, no new re-fetch.
    assert_eq!(
        o.arrive(16, || 0, t0 + Duration::from_millis(500), 2),
        Arrival::Skip
    );
    // Still missing after the wait: a second re-fetch.
    let t1 = t0 + GAP_REPAIR_WAIT;
    assert!(matches!(
        o.arrive(16, || 0, t1, 2),
        Arrival::Repair { from: 10, .. }
    ));
    // After `retries` re-fetches the gap is real: taken, and the partition moves on.
    let t2 = t1 + GAP_REPAIR_WAIT;
    assert_eq!(
        o.arrive(17, || 0, t2, 2),
        Arrival::TakeOverGap {
            epoch: 1,
            missing_from: 10,
            refetches: 2
        }
    );
    assert_eq!(o.next_fetch, 18);
    assert_eq!(o.gap, None);
}

#[test]
fn a_repaired_gap_takes_the_missing_record_when_it_comes() {
    let t0 = Instant::now();
    let mut o = owned(10);
    assert!(matches!(o.arrive(12, || 0, t0, 5), Arrival::Repair { .. }));
    assert_eq!(o.arrive(10, || 0, t0, 5), Arrival::Take(1));
    assert_eq!(o.gap, None);
    assert_eq!(o.arrive(11, || 0, t0, 5), Arrival::Take(1));
}

#[test]
fn with_no_retries_a_gap_is_accepted_at_once_and_a_refused_partition_takes_nothing() {
    let now = Instant::now();
    let mut o = owned(10);
    assert_eq!(o.arrive(20, || 0, now, 0), Arrival::Take(1));
    let mut refused = owned(10);
    refused.refused = Some("past_log_end");
    assert_eq!(refused.arrive(10, || 0, now, 5), Arrival::Skip);
    assert_eq!(refused.next_fetch, 10);
}

#[test]
fn a_resumed_partition_whose_record_before_the_offset_differs_was_replaced() {
    let now = Instant::now();
    let stored = |hash| Stored {
        next_offset: 100,
        max_event_ts: None,
        last_record_hash: Some(hash),
    };
    // The same log: the record at 99 is the one stored last; then records are taken.
    let mut same = Owned::new(1, stored(42), Instant::now());
    assert_eq!(same.verify, Some((99, 42)));
    assert_eq!(same.arrive(90, || 7, now, 5), Arrival::Skip, "the lookback");
    assert_eq!(same.arrive(99, || 42, now, 5), Arrival::Skip);
    assert_eq!(same.verify, None);
    assert_eq!(same.arrive(100, || 8, now, 5), Arrival::Take(1));
    // Another log that already reaches past the offset: nothing of it is taken.
    let mut replaced = Owned::new(1, stored(42), Instant::now());
    assert_eq!(
        replaced.arrive(99, || 43, now, 5),
        Arrival::Replaced { at: 99 }
    );
    assert_eq!(replaced.next_fetch, 100);
    // The record is not served (deleted by retention, say): nothing to compare, go on.
    let mut gone = Owned::new(1, stored(42), Instant::now());
    assert_eq!(gone.arrive(100, || 8, now, 5), Arrival::Take(1));
    // No fingerprint stored (an offset reset, a row from before fingerprints): no check.
    let none = Owned::new(
        1,
        Stored {
            last_record_hash: None,
            ..stored(0)
        },
        Instant::now(),
    );
    assert_eq!(none.verify, None);
}

#[test]
fn a_fingerprint_depends_on_key_payload_and_timestamp_and_is_stable() {
    let f = fingerprint(Some(b"ab"), b"c", Some(1));
    assert_eq!(f, fingerprint(Some(b"ab"), b"c", Some(1)));
    assert_ne!(f, fingerprint(Some(b"a"), b"bc", Some(1)));
    assert_ne!(f, fingerprint(Some(b"ab"), b"c", Some(2)));
    assert_ne!(f, fingerprint(None, b"abc", Some(1)));
    // Stored in Postgres: the value must not change between builds or versions.
    assert_eq!(fingerprint(None, b"", None), 0x1f1e_1550_48d8_f9f5_i64);
}

#[test]
fn only_the_last_record_of_each_partition_in_a_batch_gets_its_fingerprint() {
    let poison = || Item::Poison {
        key: None,
        payload: Vec::new(),
        kind: "test",
        message: String::new(),
        headers: Vec::new(),
    };
    let mut last = LastRecords::default();
    let mut batch = Vec::new();
    for (partition, offset, payload) in [(0, 10, "a"), (1, 5, "b"), (0, 11, "c"), (1, 6, "d")] {
        let mut p = pending(partition, offset, poison());
        p.fingerprint = None;
        last.note(partition, offset, Some(b"k"), payload.as_bytes(), Some(7));
        batch.push(p);
    }
    // A partition noted, then revoked: its records left the batch.
    last.note(2, 40, None, b"gone", None);
    last.stamp(&mut batch);
    let fps: Vec<Option<i64>> = batch.iter().map(|p| p.fingerprint).collect();
    assert_eq!(
        fps,
        vec![
            None,
            None,
            Some(fingerprint(Some(b"k"), b"c", Some(7))),
            Some(fingerprint(Some(b"k"), b"d", Some(7))),
        ]
    );
    // The batch grew while the writer was busy: the new last records are stamped too, and a
    // key that went away is not remembered.
    let mut p = pending(0, 12, poison());
    p.fingerprint = None;
    last.note(0, 12, None, b"e", Some(8));
    batch.push(p);
    last.stamp(&mut batch);
    assert_eq!(batch[4].fingerprint, Some(fingerprint(None, b"e", Some(8))));
    assert_eq!(
        batch[2].fingerprint,
        Some(fingerprint(Some(b"k"), b"c", Some(7)))
    );
}

pub(in crate::consumer) fn event(
    secs: i64,
    level: logpipe_common::Level,
    service: &str,
) -> RawEvent {
    let event = logpipe_common::LogEvent {
        event_id: format!("e{secs}{service}"),
        timestamp: DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
        level,
        service: service.into(),
        component: String::new(),
        host: String::new(),
        message: "m".into(),
        trace_id: None,
        span_id: None,
        attributes: serde_json::Map::new(),
    };
    RawEvent::from_event(&event).unwrap()
}

pub(in crate::consumer) fn pending(partition: i32, offset: i64, item: Item) -> Pending {
    Pending {
        partition,
        offset,
        epoch: 1,
        record_ts: None,
        fingerprint: Some(offset),
        item,
        dlq_done: false,
        trace: None,
    }
}

/// What a `Planner` borrows, owned by the test.
pub(in crate::consumer) struct PlanFixture {
    filter: Filter,
    detector: Detector,
    windows: WindowSettings,
    specs: Vec<Spec>,
    caps: Caps,
    /// The collector's clock: 300 s after the tests' epoch.
    pub(in crate::consumer) now: DateTime<Utc>,
}

impl PlanFixture {
    pub(in crate::consumer) fn new(min_level: logpipe_common::Level) -> Self {
        let windows = WindowSettings::default(); // lateness 10 s
        PlanFixture {
            filter: Filter::new(crate::filter::FilterRules {
                min_level,
                ..Default::default()
            })
            .unwrap(),
            detector: Detector::new(&crate::detect::AlertSettings::default()).unwrap(),
            specs: windows.specs(),
            caps: Caps::new(3, 60, 2),
            now: DateTime::from_timestamp(1_800_000_300, 0).unwrap(),
            windows,
        }
    }

    pub(in crate::consumer) fn planner(&mut self) -> Planner<'_> {
        Planner {
            filter: &self.filter,
            detector: &self.detector,
            windows: &self.windows,
            specs: &self.specs,
            error_rate_window_secs: 10,
            now: self.now,
            caps: &mut self.caps,
        }
    }
}

/// Events counted in the 10 s tumbling windows of a plan.
fn windowed(plan: &Plan<'_>) -> i64 {
    plan.write
        .windows
        .iter()
        .filter(|(k, _)| k.spec.width == 10 && k.spec.slide == 10)
        .map(|(_, s)| s.count)
        .sum()
}

#[test]
fn an_event_dated_ahead_of_its_record_moves_event_time_only_to_the_record_time() {
    use logpipe_common::Level;
    let mut fixture = PlanFixture::new(Level::Trace);
    let mut own = HashMap::new();
    own.insert(0, owned(0));
    let at = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
    let mut future = pending(0, 0, Item::Event(Box::new(event(290, Level::Info, "api"))));
    future.record_ts = Some(at(0));
    // Produced a second later, dated 2 s before: on time, not late.
    let mut on_time = pending(0, 1, Item::Event(Box::new(event(-1, Level::Info, "web"))));
    on_time.record_ts = Some(at(1));
    let batch = vec![future, on_time];
    let plan = fixture.planner().plan(&batch, &own);
    assert_eq!(plan.late, 0, "the future-dated event pushed nothing");
    assert_eq!(plan.write.moves[0].max_event_ts, Some(at(0)));
    assert_eq!(windowed(&plan), 2, "both are windowed under their own time");
}

#[test]
fn a_plan_moves_each_offset_past_its_last_record_and_keeps_late_events_out_of_windows() {
    use logpipe_common::Level;
    let mut fixture = PlanFixture::new(Level::Info);
    let mut own = HashMap::new();
    own.insert(0, owned(100));
    let mut p1 = owned(7);
    p1.max_ts = Some(DateTime::from_timestamp(1_800_000_100, 0).unwrap());
    p1.services.insert("billing".into(), 1_800_000_095);
    own.insert(1, p1);
    let batch = vec![
        pending(0, 100, Item::Event(Box::new(event(0, Level::Info, "api")))),
        pending(0, 101, Item::Event(Box::new(event(1, Level::Debug, "api")))),
        pending(
            0,
            102,
            Item::Poison {
                key: None,
                payload: b"{".to_vec(),
                kind: "invalid_json",
                message: "eof".into(),
                headers: Vec::new(),
            },
        ),
        // 20 s behind partition 1's event time: late (stored raw, not windowed).
        pending(1, 7, Item::Event(Box::new(event(80, Level::Error, "web")))),
        // Partition 1's event time moves to +125 s: windows up to [+100, +110) close.
        pending(1, 8, Item::Event(Box::new(event(125, Level::Info, "web")))),
        // A partition this consumer does not own: nothing of it is planned.
        pending(9, 0, Item::Event(Box::new(event(0, Level::Info, "api")))),
    ];
    let plan = fixture.planner().plan(&batch, &own);
    let moves: Vec<(i32, i64, i64)> = plan
        .write
        .moves
        .iter()
        .map(|m| (m.partition, m.expected, m.next))
        .collect();
    assert_eq!(
        moves,
        vec![(0, 100, 103), (1, 7, 9)],
        "a poison record's offset moves too"
    );
    assert_eq!(plan.late, 1);
    assert_eq!(plan.filtered, 1, "the DEBUG event is below min_level");
    let stored: Vec<i64> = plan.write.events.iter().map(|e| e.offset).collect();
    assert_eq!(stored, vec![100, 7, 8], "late events are still stored raw");
    assert_eq!(
        windowed(&plan),
        3,
        "every on-time event, filtered or not, but not the late one"
    );
    assert_eq!(
        plan.write.moves[1].max_event_ts,
        DateTime::from_timestamp(1_800_000_125, 0)
    );
    // Event time crossed window ends on both partitions (partition 0 had none before): the
    // error-rate windows of the services seen there close, up to the partition's own progress.
    let closed: Vec<(&str, i64)> = plan
        .write
        .closed
        .iter()
        .map(|(s, t)| (s.as_str(), t.timestamp() - 1_800_000_000))
        .collect();
    assert_eq!(closed, vec![("api", -20), ("billing", 100), ("web", 100)]);
}

#[test]
fn a_record_dated_past_the_collectors_clock_is_stored_and_counted_but_moves_no_event_time() {
    use logpipe_common::Level;
    let mut fixture = PlanFixture::new(Level::Trace);
    let mut own = HashMap::new();
    own.insert(0, owned(0));
    let at = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
    // A raw producer sets both the event's time and the record's broker timestamp ahead.
    let mut far = pending(
        0,
        0,
        Item::Event(Box::new(event(86_400 * 365, Level::Info, "api"))),
    );
    far.record_ts = Some(at(86_400 * 365));
    let mut on_time = pending(0, 1, Item::Event(Box::new(event(295, Level::Info, "web"))));
    on_time.record_ts = Some(at(295));
    let batch = [far, on_time];
    let plan = fixture.planner().plan(&batch, &own);
    assert_eq!(plan.future, 1);
    assert_eq!(plan.late, 0, "the event after it is on time");
    assert_eq!(plan.write.events.len(), 2, "both are stored");
    assert_eq!(plan.write.moves[0].max_event_ts, Some(at(295)));
    assert_eq!(windowed(&plan), 1, "only the on-time one opens window rows");
}

#[test]
fn services_past_the_cap_are_windowed_under_the_overflow_key_and_say_so_once() {
    use logpipe_common::Level;
    let mut fixture = PlanFixture::new(Level::Trace); // 3 services per 60 s window
    let mut own = HashMap::new();
    own.insert(0, owned(0));
    let names = ["a", "b", "c", "d", "e"];
    let batch: Vec<Pending> = names
        .iter()
        .enumerate()
        .map(|(i, s)| pending(0, i as i64, Item::Event(Box::new(event(1, Level::Info, s)))))
        .collect();
    let plan = fixture.planner().plan(&batch, &own);
    let mut services: Vec<&str> = plan
        .write
        .windows
        .iter()
        .filter(|(k, _)| k.spec.width == 10)
        .map(|(k, _)| k.service.as_str())
        .collect();
    services.dedup();
    assert_eq!(
        services.len(),
        4,
        "three own names and the overflow key: {services:?}"
    );
    assert!(services.contains(&crate::cardinality::OVERFLOW_KEY));
    assert_eq!(windowed(&plan), 5, "every event still counts");
    assert_eq!(
        plan.write.events.len(),
        5,
        "and is stored under its own name"
    );
    assert_eq!(
        plan.overflow,
        vec![("service", 2, vec![1_800_000_000])] // a window start: 60 divides it
    );
    // The next batch in the same window: the overflow is counted, not announced again.
    let again = vec![pending(
        0,
        5,
        Item::Event(Box::new(event(2, Level::Info, "f"))),
    )];
    let mut own2 = HashMap::new();
    own2.insert(0, owned(5));
    let plan = fixture.planner().plan(&again, &own2);
    assert_eq!(plan.overflow, vec![("service", 1, vec![])]);
}

#[test]
fn login_subjects_past_the_cap_count_together_and_can_still_raise_brute_force() {
    use logpipe_common::Level;
    let mut fixture = PlanFixture::new(Level::Trace); // 2 subjects per brute-force window
    let mut own = HashMap::new();
    own.insert(0, owned(0));
    let batch: Vec<Pending> = (0..5)
        .map(|i| {
            let mut e = event(1, Level::Warn, "auth").to_event();
            e.message = "login failed".into();
            e.attributes
                .insert("client.ip".into(), format!("198.51.100.{i}").into());
            let e = RawEvent::from_event(&e).unwrap();
            pending(0, i, Item::Event(Box::new(e)))
        })
        .collect();
    let plan = fixture.planner().plan(&batch, &own);
    let subjects: Vec<(&str, i64)> = plan
        .write
        .findings
        .failed_logins
        .values()
        .map(|f| (f.subject.as_str(), f.hits))
        .collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert!(subjects.contains(&("ip:~other", 3)), "{subjects:?}");
}

#[test]
fn a_partition_forgets_services_long_after_their_last_window_closed() {
    let mut services = BTreeMap::new();
    services.insert("old".to_string(), 0);
    services.insert("recent".to_string(), 3_590);
    let now = DateTime::from_timestamp(3_620, 0);
    forget_services(&mut services, now, 10, 10);
    assert_eq!(services.keys().collect::<Vec<_>>(), vec!["recent"]);
    forget_services(&mut services, None, 10, 10);
    assert_eq!(
        services.len(),
        1,
        "no event time: nothing closed, nothing forgotten"
    );
}
