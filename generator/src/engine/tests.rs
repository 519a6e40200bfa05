//! `engine`'s unit tests (a file of their own: the module reads alone).

use super::*;
use crate::events::Profile;
use crate::params::RunDefaults;

fn defaults() -> RunDefaults {
    RunDefaults::default()
}

#[test]
fn empty_start_request_uses_the_configured_defaults() {
    let p = RunParams::from_request(&StartRequest::default(), &defaults()).unwrap();
    assert_eq!(p.rate_per_second, 1_000);
    assert_eq!(p.threads, 1);
    assert_eq!(p.profile, Profile::Steady);
}

#[test]
fn rate_outside_1_to_1_000_000_is_refused_naming_the_field() {
    for bad in [0, 1_000_001] {
        let req = StartRequest {
            rate_per_second: Some(bad),
            ..Default::default()
        };
        let err = RunParams::from_request(&req, &defaults()).unwrap_err();
        assert_eq!(err.field, "rate_per_second");
        assert!(err.to_string().contains("between 1 and 1000000"), "{err}");
    }
}

#[test]
fn threads_above_64_are_refused() {
    let req = StartRequest {
        threads: Some(65),
        ..Default::default()
    };
    assert_eq!(
        RunParams::from_request(&req, &defaults())
            .unwrap_err()
            .field,
        "threads"
    );
}

#[test]
fn unknown_profile_is_refused_listing_the_allowed_ones() {
    let req = StartRequest {
        profile: Some("chaos".into()),
        ..Default::default()
    };
    let err = RunParams::from_request(&req, &defaults()).unwrap_err();
    assert_eq!(err.field, "profile");
    assert!(err.to_string().contains("steady"));
}

#[test]
fn countdown_never_hands_out_more_than_the_count() {
    let remaining = AtomicU64::new(250);
    let mut total = 0;
    loop {
        let n = take(&remaining, 100);
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 250);
}

#[test]
fn an_open_breaker_skips_a_batch_without_touching_the_count() {
    let remaining = AtomicU64::new(10);
    assert_eq!(
        plan_turn(Permit::Rejected, 500, &remaining),
        Turn::Skip(500)
    );
    assert_eq!(remaining.load(Ordering::Relaxed), 10);
}

#[test]
fn a_probe_is_one_record_and_an_allowed_turn_a_batch_capped_by_the_count() {
    let remaining = AtomicU64::new(10);
    assert_eq!(plan_turn(Permit::Probe, 500, &remaining), Turn::Generate(1));
    assert_eq!(plan_turn(Permit::Allowed, 4, &remaining), Turn::Generate(4));
    assert_eq!(
        plan_turn(Permit::Allowed, 500, &remaining),
        Turn::Generate(5)
    );
    assert_eq!(plan_turn(Permit::Allowed, 500, &remaining), Turn::Done);
    assert_eq!(plan_turn(Permit::Probe, 500, &remaining), Turn::Done);
}

#[test]
fn worker_shares_add_up_exactly_to_the_rate() {
    for (rate, threads) in [(1, 4), (7, 3), (100_000, 7), (1_000_000, 64)] {
        let shares: Vec<u32> = (0..threads)
            .map(|w| worker_share(rate, threads, w))
            .collect();
        assert_eq!(shares.iter().sum::<u32>(), rate, "{rate}/{threads}");
        let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
        assert!(hi - lo <= 1, "{shares:?}");
    }
}
