//! The alert decisions, pure: no SQL, no clock, no broker. The store layer (`alerts/mod.rs`) reads
//! what these functions need, calls them, and writes what they decide, inside the batch's
//! transaction.
//!
//! - Per-event kinds (fatal_event, sql_injection, brute_force): [`extends_episode`] decides whether a
//!   detection extends the latest alert of its (kind, subject) or opens a new one;
//!   [`brute_force_detections`] turns failed-login totals into detections.
//! - error_rate_spike: [`judge_windows`] walks closed windows in order against the service's
//!   [`RateState`] and returns the episode steps (open, extend, end) and the learned baseline.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use logpipe_common::formats::derived_id;

use crate::detect::{AlertKind, AlertSettings, Detection, FailedLogins};

/// The event-time span of an alert already stored for a (kind, subject).
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeSpan {
    pub alert_id: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// True when `d` falls within `gap_secs` of `latest` (on either side, as a backlog can be read
/// out of order across partitions), so it extends that episode instead of opening a new alert.
/// `latest` is the stored alert of the same (kind, subject) with the greatest `last_seen` among
/// those starting no later than `d.last_seen + gap`: if that one is too old, every other is too.
pub fn extends_episode(latest: Option<&EpisodeSpan>, d: &Detection, gap_secs: u32) -> bool {
    let gap = Duration::seconds(i64::from(gap_secs));
    latest.is_some_and(|a| a.last_seen >= d.first_seen - gap && a.first_seen <= d.last_seen + gap)
}

/// The id of the alert a detection opens: derived from what raised it, so a batch replayed after
/// a crash raises the same id (and `ON CONFLICT DO NOTHING` keeps it once).
pub fn detection_alert_id(d: &Detection) -> String {
    derived_id(
        d.first_seen,
        format!(
            "{}/{}/{}",
            d.kind.as_str(),
            d.subject,
            d.first_seen.timestamp_micros()
        )
        .as_bytes(),
    )
}

/// The one-line summary of an alert a detection opens.
pub fn detection_summary(d: &Detection) -> String {
    match d.kind {
        AlertKind::FatalEvent => format!("FATAL event in {}: {}", d.service, d.example),
        AlertKind::SqlInjection => format!(
            "SQL-injection signature in requests to {}: {}",
            d.service, d.example
        ),
        AlertKind::BruteForce => format!("brute-force login attempts: {}", d.example),
        AlertKind::ErrorRateSpike => d.example.clone(),
    }
}

/// Brute-force detections from the failed-login totals after this batch was added
/// (`(subject, window_start, total)` as the store returns them): one per window whose total
/// reached the threshold, spanning what this batch saw of it.
pub fn brute_force_detections(
    totals: &[(String, DateTime<Utc>, i64)],
    seen: &BTreeMap<(String, i64), FailedLogins>,
    s: &AlertSettings,
) -> Vec<Detection> {
    totals
        .iter()
        .filter(|(_, _, total)| *total >= s.brute_force_threshold)
        .filter_map(|(subject, start, total)| {
            let f = seen.get(&(subject.clone(), start.timestamp()))?;
            Some(Detection {
                kind: AlertKind::BruteForce,
                subject: subject.clone(),
                service: f.service.clone(),
                first_seen: f.first_seen,
                last_seen: f.last_seen,
                count: f.hits,
                example: format!(
                    "{total} failed logins for {subject} in the {}-second window from {}",
                    s.brute_force_window_secs,
                    start.format("%H:%M:%S")
                ),
            })
        })
        .collect()
}

/// A service's error-rate state between judgements.
#[derive(Debug, Clone, PartialEq)]
pub struct RateState {
    /// Start of the last window judged (closed, with or without events).
    pub last_judged: Option<DateTime<Utc>>,
    /// Exponential average of the error rate of the service's normal windows.
    pub baseline: f64,
    /// How many windows the baseline learned from.
    pub baseline_windows: i64,
    /// The alert of the episode in progress, if any.
    pub open_alert_id: Option<String>,
}

/// One closed error-rate window of a service: its start, events and errors (ERROR and FATAL).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowCount {
    pub start: DateTime<Utc>,
    pub total: i64,
    pub errors: i64,
}

/// The rate a window must reach to be anomalous: `factor` × baseline, and at least
/// `min_increase` above it (so a near-zero baseline does not make 1% an alarm).
pub fn spike_threshold(s: &AlertSettings, baseline: f64) -> f64 {
    (baseline * s.error_rate_factor).max(baseline + s.error_rate_min_increase)
}

/// A window is a spike with enough errors (one error never is) at or above the threshold.
pub fn is_spike(s: &AlertSettings, baseline: f64, w: &WindowCount) -> bool {
    w.errors >= s.error_rate_min_errors && error_rate(w) >= spike_threshold(s, baseline)
}

fn error_rate(w: &WindowCount) -> f64 {
    w.errors as f64 / w.total.max(1) as f64
}

/// The baseline after a normal window: learned only from windows with enough events to say
/// something, and never from a spike (so a spike does not teach that spikes are normal).
pub fn learn_baseline(s: &AlertSettings, baseline: f64, w: &WindowCount) -> Option<f64> {
    (w.total >= s.error_rate_min_errors).then(|| {
        s.error_rate_baseline_alpha * error_rate(w) + (1.0 - s.error_rate_baseline_alpha) * baseline
    })
}

/// What judging windows asks the store to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum EpisodeStep {
    /// A spike with no episode in progress: a new alert.
    Open {
        alert_id: String,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        summary: String,
        rate: f64,
        errors: i64,
        total: i64,
        baseline: f64,
    },
    /// Another spike window of the episode in progress.
    Extend {
        alert_id: String,
        end: DateTime<Utc>,
        rate: f64,
    },
    /// The episode in progress ended at `at` (a normal window, or a window with no events).
    End { alert_id: String, at: DateTime<Utc> },
}

/// Judge `windows` (closed, in start order, each after the last judged one) of `service` with
/// width `width_secs`, up to window start `upto`; updates `state` and returns the steps. Windows
/// with no events do not appear in `windows`; a gap between two windows, also across two
/// judgements, ends the episode in progress.
pub fn judge_windows(
    state: &mut RateState,
    s: &AlertSettings,
    service: &str,
    width_secs: i64,
    windows: &[WindowCount],
    upto: DateTime<Utc>,
) -> Vec<EpisodeStep> {
    let step = Duration::seconds(width_secs);
    let mut steps = Vec::new();
    if state.last_judged.is_some_and(|last| upto <= last) {
        return steps;
    }
    let mut prev_end: Option<DateTime<Utc>> = state.last_judged.map(|last| last + step);
    for w in windows {
        // A window without events between two judged ones ends an open episode.
        if let Some(end) = prev_end.filter(|end| w.start > *end) {
            if let Some(alert_id) = state.open_alert_id.take() {
                steps.push(EpisodeStep::End { alert_id, at: end });
            }
        }
        let end = w.start + step;
        let rate = error_rate(w);
        if is_spike(s, state.baseline, w) {
            match &state.open_alert_id {
                Some(id) => steps.push(EpisodeStep::Extend {
                    alert_id: id.clone(),
                    end,
                    rate,
                }),
                None => {
                    let alert_id = derived_id(
                        w.start,
                        format!("error_rate_spike/{service}/{}", w.start.timestamp()).as_bytes(),
                    );
                    let summary = format!(
                        "error rate of {service} at {:.0}% ({} of {}) in the {width_secs}-second window from {}; baseline {:.1}%",
                        rate * 100.0,
                        w.errors,
                        w.total,
                        w.start.format("%H:%M:%S"),
                        state.baseline * 100.0
                    );
                    state.open_alert_id = Some(alert_id.clone());
                    steps.push(EpisodeStep::Open {
                        alert_id,
                        start: w.start,
                        end,
                        summary,
                        rate,
                        errors: w.errors,
                        total: w.total,
                        baseline: state.baseline,
                    });
                }
            }
        } else {
            if let Some(alert_id) = state.open_alert_id.take() {
                steps.push(EpisodeStep::End {
                    alert_id,
                    at: w.start,
                });
            }
            if let Some(b) = learn_baseline(s, state.baseline, w) {
                state.baseline = b;
                state.baseline_windows += 1;
            }
        }
        prev_end = Some(end);
    }
    // Trailing windows without events end the episode too.
    if let Some(end) = prev_end.filter(|end| upto >= *end) {
        if let Some(alert_id) = state.open_alert_id.take() {
            steps.push(EpisodeStep::End { alert_id, at: end });
        }
    }
    state.last_judged = Some(upto);
    steps
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn detection(kind: AlertKind, first: i64, last: i64) -> Detection {
        Detection {
            kind,
            subject: "payments".into(),
            service: "payments".into(),
            first_seen: at(first),
            last_seen: at(last),
            count: 1,
            example: "disk full".into(),
        }
    }

    fn span(first: i64, last: i64) -> EpisodeSpan {
        EpisodeSpan {
            alert_id: "a1".into(),
            first_seen: at(first),
            last_seen: at(last),
        }
    }

    fn fresh() -> RateState {
        RateState {
            last_judged: None,
            baseline: 0.05,
            baseline_windows: 0,
            open_alert_id: None,
        }
    }

    fn window(start: i64, total: i64, errors: i64) -> WindowCount {
        WindowCount {
            start: at(start),
            total,
            errors,
        }
    }

    #[test]
    fn a_detection_within_the_gap_of_an_episode_extends_it_for_every_per_event_kind() {
        for kind in [
            AlertKind::FatalEvent,
            AlertKind::SqlInjection,
            AlertKind::BruteForce,
        ] {
            // 20 s gap: 19 s after the episode's last event extends, 21 s opens a new alert.
            assert!(extends_episode(
                Some(&span(0, 10)),
                &detection(kind, 29, 30),
                20
            ));
            assert!(!extends_episode(
                Some(&span(0, 10)),
                &detection(kind, 31, 35),
                20
            ));
            // Read out of order: a detection just before the episode extends it too.
            assert!(extends_episode(
                Some(&span(100, 110)),
                &detection(kind, 70, 85),
                20
            ));
            assert!(!extends_episode(
                Some(&span(100, 110)),
                &detection(kind, 60, 79),
                20
            ));
            assert!(!extends_episode(None, &detection(kind, 0, 0), 20));
        }
    }

    #[test]
    fn a_replayed_detection_derives_the_same_alert_id_and_another_start_does_not() {
        let d = detection(AlertKind::FatalEvent, 5, 6);
        assert_eq!(detection_alert_id(&d), detection_alert_id(&d.clone()));
        let mut other = d.clone();
        other.first_seen = at(7);
        assert_ne!(detection_alert_id(&d), detection_alert_id(&other));
        let mut other_kind = d.clone();
        other_kind.kind = AlertKind::SqlInjection;
        assert_ne!(detection_alert_id(&d), detection_alert_id(&other_kind));
        assert_eq!(detection_summary(&d), "FATAL event in payments: disk full");
    }

    #[test]
    fn brute_force_alerts_only_windows_whose_total_reached_the_threshold() {
        let s = AlertSettings::default(); // threshold 20
        let mut seen = BTreeMap::new();
        for (subject, start) in [("ip:10.0.0.1", 0), ("user:bob", 60)] {
            seen.insert(
                (subject.to_owned(), at(start).timestamp()),
                FailedLogins {
                    subject: subject.into(),
                    service: "auth".into(),
                    window_start: at(start),
                    hits: 5,
                    first_seen: at(start + 1),
                    last_seen: at(start + 9),
                },
            );
        }
        let totals = vec![
            ("ip:10.0.0.1".to_owned(), at(0), 20),
            ("user:bob".to_owned(), at(60), 19),
            // A total the batch did not see (another collector's window): nothing to span.
            ("user:eve".to_owned(), at(0), 50),
        ];
        let d = brute_force_detections(&totals, &seen, &s);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].subject, "ip:10.0.0.1");
        assert_eq!(
            (d[0].first_seen, d[0].last_seen, d[0].count),
            (at(1), at(9), 5)
        );
        assert!(d[0].example.starts_with("20 failed logins for ip:10.0.0.1"));
    }

    #[test]
    fn the_threshold_is_a_factor_of_the_baseline_and_at_least_the_minimum_increase_above_it() {
        let s = AlertSettings::default(); // factor 3, min increase 0.10
        assert!((spike_threshold(&s, 0.01) - 0.11).abs() < 1e-9);
        assert!((spike_threshold(&s, 0.20) - 0.60).abs() < 1e-9);
        // 19 errors of 20 is no spike: too few errors to say anything.
        assert!(!is_spike(&s, 0.05, &window(0, 20, 19)));
        assert!(is_spike(&s, 0.05, &window(0, 100, 20)));
        assert!(!is_spike(&s, 0.05, &window(0, 1000, 100)));
    }

    #[test]
    fn the_baseline_learns_from_normal_windows_with_enough_events_only() {
        let s = AlertSettings::default(); // alpha 0.2, min errors 20
        let b = learn_baseline(&s, 0.05, &window(0, 100, 10)).unwrap();
        assert!((b - (0.2 * 0.10 + 0.8 * 0.05)).abs() < 1e-9);
        assert_eq!(learn_baseline(&s, 0.05, &window(0, 19, 0)), None);
        // Spikes never teach the baseline.
        let mut st = fresh();
        judge_windows(&mut st, &s, "api", 10, &[window(0, 100, 90)], at(0));
        assert_eq!((st.baseline, st.baseline_windows), (0.05, 0));
    }

    #[test]
    fn consecutive_spikes_are_one_episode_that_a_normal_window_ends() {
        let s = AlertSettings::default();
        let mut st = fresh();
        let ws = [
            window(0, 100, 5),
            window(10, 100, 50),
            window(20, 100, 60),
            window(30, 100, 5),
        ];
        let steps = judge_windows(&mut st, &s, "api", 10, &ws, at(30));
        assert_eq!(steps.len(), 3, "{steps:?}");
        let EpisodeStep::Open {
            alert_id,
            start,
            end,
            errors,
            ..
        } = &steps[0]
        else {
            panic!("first step opens: {steps:?}")
        };
        assert_eq!((*start, *end, *errors), (at(10), at(20), 50));
        assert_eq!(
            steps[1],
            EpisodeStep::Extend {
                alert_id: alert_id.clone(),
                end: at(30),
                rate: 0.6
            }
        );
        assert_eq!(
            steps[2],
            EpisodeStep::End {
                alert_id: alert_id.clone(),
                at: at(30)
            }
        );
        assert_eq!(st.open_alert_id, None);
        assert_eq!(st.baseline_windows, 2);
    }

    #[test]
    fn an_episode_stays_open_across_judgements_and_a_gap_without_events_ends_it() {
        let s = AlertSettings::default();
        let mut st = fresh();
        let steps = judge_windows(&mut st, &s, "api", 10, &[window(0, 100, 50)], at(0));
        assert!(matches!(steps[..], [EpisodeStep::Open { .. }]));
        let id = st.open_alert_id.clone().expect("episode open");
        // Next judgement: a spike after an empty window (10..20 had no events).
        // (This case once extended the episode across the empty window: the gap was only seen
        // within one judgement.)
        let steps = judge_windows(&mut st, &s, "api", 10, &[window(20, 100, 50)], at(20));
        assert_eq!(
            steps[0],
            EpisodeStep::End {
                alert_id: id.clone(),
                at: at(10)
            }
        );
        assert!(matches!(&steps[1], EpisodeStep::Open { alert_id, .. } if *alert_id != id));
        // Judging up to an already judged window does nothing.
        assert_eq!(
            judge_windows(&mut st, &s, "api", 10, &[window(20, 100, 50)], at(10)),
            vec![]
        );
    }

    #[test]
    fn trailing_windows_without_events_end_the_episode_once_closed() {
        let s = AlertSettings::default();
        let mut st = fresh();
        // Judged up to the spike's own start: the episode stays open.
        let steps = judge_windows(&mut st, &s, "api", 10, &[window(0, 100, 50)], at(0));
        assert_eq!(steps.len(), 1);
        assert!(st.open_alert_id.is_some());
        // Judged up to a later window with no events: ends at the spike's end.
        let mut st2 = fresh();
        let steps = judge_windows(&mut st2, &s, "api", 10, &[window(0, 100, 50)], at(10));
        assert!(matches!(steps[1], EpisodeStep::End { at: t, .. } if t == at(10)));
        assert_eq!(st2.open_alert_id, None);
    }

    #[test]
    fn the_same_spike_judged_twice_derives_the_same_alert_id() {
        let s = AlertSettings::default();
        let open_id = |service: &str| {
            let steps = judge_windows(&mut fresh(), &s, service, 10, &[window(0, 100, 50)], at(0));
            match &steps[0] {
                EpisodeStep::Open { alert_id, .. } => alert_id.clone(),
                other => panic!("{other:?}"),
            }
        };
        let (a, b, c) = (open_id("api"), open_id("api"), open_id("web"));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
