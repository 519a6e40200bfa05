//! `stream`'s unit tests (a file of their own: the module reads alone).

use super::*;

fn pos(s: &str) -> Position {
    Position::parse(s).unwrap()
}

fn plain(p: i32, from: i64, to: i64) -> Range {
    Range::plain(p, from, to)
}

#[test]
fn a_position_round_trips_through_its_text() {
    let p = pos("0:12,1:0,5:999;r7");
    assert_eq!(p.to_string(), "0:12,1:0,5:999;r7");
    assert_eq!(pos("0:1").reset, 0);
    assert_eq!(Position::parse("").unwrap(), Position::default());
    for bad in ["0", "a:1", "0:-1", "0:1,0:2", "0:1;1:2", "0:1;rx"] {
        assert!(Position::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn advance_reads_what_was_stored_since_and_moves_to_it() {
    let stored = pos("0:20,1:5,2:7").offsets;
    let a = pos("0:10,1:5,2:3;r2").advance(&stored, &BTreeMap::new(), 1000);
    assert_eq!(a.ranges, vec![plain(0, 10, 20), plain(2, 3, 7)]);
    assert_eq!(a.next, pos("0:20,1:5,2:7;r2"));
    assert_eq!(a.skipped, 0);
    assert!(a.resets.is_empty());
}

#[test]
fn a_reset_partition_reads_the_rest_of_its_old_log_then_its_new_log_from_the_start() {
    let at = Utc::now();
    // The stream was at 680; the old log was stored up to 1125; the new log is stored up to
    // 900, past the old position, which alone would hide the new log's first 680 offsets.
    let stored = pos("0:900,1:50").offsets;
    let resets = BTreeMap::from([(
        0,
        Reset {
            id: 9,
            old: 1125,
            new: 0,
            at,
            previous_at: None,
        },
    )]);
    let a = pos("0:680,1:40;r3").advance(&stored, &resets, 10_000);
    assert_eq!(
        a.ranges,
        vec![
            Range {
                stored_before: Some(at),
                ..plain(0, 680, 1125)
            },
            Range {
                stored_after: Some(at),
                ..plain(0, 0, 900)
            },
            plain(1, 40, 50),
        ]
    );
    assert_eq!(a.resets, vec![(0, 680, 0)]);
    assert_eq!(a.next, pos("0:900,1:50;r9"));
}

#[test]
fn after_a_reset_it_knows_a_partition_reads_only_rows_of_its_current_log() {
    let at = Utc::now();
    let stored = pos("0:510").offsets;
    let resets = BTreeMap::from([(
        0,
        Reset {
            id: 30,
            old: 1082,
            new: 0,
            at,
            previous_at: None,
        },
    )]);
    let a = pos("0:455;r30").advance(&stored, &resets, 1000);
    assert_eq!(
        a.ranges,
        vec![Range {
            stored_after: Some(at),
            ..plain(0, 455, 510)
        }]
    );
    assert!(a.resets.is_empty());
    assert_eq!(a.next, pos("0:510;r30"));
}

#[test]
fn a_partition_claimed_after_the_position_was_taken_is_read_from_its_start() {
    // Opened before the collector's first assignment: no partition yet.
    let a = pos("").advance(&pos("0:120,1:80").offsets, &BTreeMap::new(), 1000);
    assert_eq!(a.ranges, vec![plain(0, 0, 120), plain(1, 0, 80)]);
}

#[test]
fn a_partition_that_went_back_with_no_reset_recorded_is_announced() {
    let stored = pos("0:4,1:9").offsets;
    let a = pos("0:100").advance(&stored, &BTreeMap::new(), 1000);
    assert_eq!(
        a.ranges,
        vec![plain(1, 0, 9)],
        "partition 1 is new to the position"
    );
    assert_eq!(a.next, pos("0:4,1:9"));
    assert_eq!(a.resets, vec![(0, 100, 4)]);
}

#[test]
fn a_resume_point_is_refused_unless_this_collector_could_have_sent_it() {
    let stored = pos("0:100,1:50").offsets;
    let old_ends = BTreeMap::from([(1, 400)]);
    for ok in ["0:100,1:50;r2", "0:0", "", "1:400;r1"] {
        assert!(pos(ok).check_within(&stored, &old_ends, 2).is_ok(), "{ok}");
    }
    for (forged, says) in [
        ("0:101", "past what was stored"),
        ("1:401", "past what was stored"),
        ("7:0", "partition 7"),
        ("0:1;r3", "r3"),
    ] {
        let err = pos(forged).check_within(&stored, &old_ends, 2).unwrap_err();
        assert!(err.contains(says), "{forged}: {err}");
    }
}

proptest::proptest! {
    /// Whatever position a client sends, a position the check accepts reads at most what
    /// was stored since it, within the scan cap.
    #[test]
    fn an_accepted_position_never_reads_past_the_stored_offsets(
        offsets in proptest::collection::btree_map(0i32..4, 0i64..1_000, 0..4),
        stored in proptest::collection::btree_map(0i32..4, 0i64..1_000, 0..4),
    ) {
        let p = Position { offsets, reset: 0 };
        if p.check_within(&stored, &BTreeMap::new(), 0).is_ok() {
            let a = p.advance(&stored, &BTreeMap::new(), 500);
            for r in &a.ranges {
                proptest::prop_assert!(r.to <= stored[&r.partition]);
                proptest::prop_assert!(r.from >= *p.offsets.get(&r.partition).unwrap_or(&0));
            }
            let read: i64 = a.ranges.iter().map(|r| r.to - r.from).sum();
            proptest::prop_assert!(read <= 500 + a.ranges.len() as i64);
        }
    }
}

#[test]
fn a_resume_point_too_far_behind_keeps_the_newest_records_and_counts_the_rest() {
    let stored = pos("0:1000,1:1000").offsets;
    let a = pos("0:0,1:900").advance(&stored, &BTreeMap::new(), 200);
    assert_eq!(a.ranges, vec![plain(0, 900, 1000), plain(1, 900, 1000)]);
    assert_eq!(a.skipped, 900);
}
