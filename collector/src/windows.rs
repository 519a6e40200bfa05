//! Event-time windows: which windows an event falls in, the per-batch partial aggregates, and the
//! latency histogram that lets partial aggregates add up in Postgres.
//!
//! Window rows are upserts of additive deltas (counts, sums, max, histogram buckets), written in the
//! same transaction as the partition offsets, so a window row is exact however batches, crashes and
//! rebalances cut the stream. p50/p95 come from the histogram (log buckets, ±9 %).
//!
//! Totality: every value taken from an event is bounded before it is added ([`MAX_LATENCY_MS`]),
//! so no row can overflow its columns or the upsert's arithmetic however events are chosen (see
//! [`MAX_EVENTS_PER_ROW`] for the worst sum, and `upsert_in_sql` in the tests, which mirrors the
//! upsert's PostgreSQL arithmetic).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use logpipe_common::{Level, RawEvent};
use serde::{Deserialize, Serialize};

use crate::cardinality::{Admission, KeyCap, OVERFLOW_KEY};

/// What the services cap did to one batch's partials.
#[derive(Debug, Default)]
pub struct CappedServices {
    /// Events counted under the overflow key.
    pub events: u64,
    /// Window-epoch starts (epoch seconds) whose first overflow this batch met: one WARN each.
    pub first_epochs: Vec<i64>,
    /// (service, epoch) pairs past the cap.
    over: HashSet<(String, i64)>,
}

impl CappedServices {
    /// Services of a partition as counted: an overflowed one under the overflow key.
    pub fn rename(
        &self,
        services: BTreeMap<String, i64>,
        epoch_secs: i64,
    ) -> BTreeMap<String, i64> {
        if self.over.is_empty() {
            return services;
        }
        let mut out = BTreeMap::new();
        for (service, last) in services {
            let key = if self
                .over
                .contains(&(service.clone(), last.div_euclid(epoch_secs)))
            {
                OVERFLOW_KEY.to_owned()
            } else {
                service
            };
            let e = out.entry(key).or_insert(last);
            *e = (*e).max(last);
        }
        out
    }
}

/// Histogram buckets: bucket `i` holds latencies up to 2^(i/4) ms; the last one also takes anything
/// larger (2^20 ms is about 17 minutes).
pub const HIST_BUCKETS: usize = 81;

/// The largest latency an event adds to a window: one day. A larger value (a client's
/// `latency_ms: 1.7e308`, or `"1e308"` as a string) counts as one day, in the last histogram bucket,
/// and is counted in `collector_values_clamped_total{field="latency_ms"}`. Without a bound two such
/// events overflowed `latency_sum_ms` in PostgreSQL (`value out of range: overflow`) and every later
/// batch touching that window row was refused.
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;

/// The design bound on events any one window row can receive: ten million events a second (ten
/// times the generator's maximum, more than the broker takes here) for a hundred years. A row only
/// takes on-time events, so its real lifetime is its width plus the allowed lateness; the bound
/// holds even for a partition whose event time stays inside one window for good.
pub const MAX_EVENTS_PER_ROW: i64 = 10_000_000 * 86_400 * 36_525;

// The worst row fits its columns: counts (BIGINT) and the latency sum (DOUBLE PRECISION, exact
// enough and far from overflow: 2.7e24 against 1.8e308).
const _: () = assert!(MAX_EVENTS_PER_ROW < i64::MAX / 2);
const _: () = assert!((MAX_EVENTS_PER_ROW as f64) * MAX_LATENCY_MS < 1e30);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WindowSettings {
    /// Tumbling window sizes.
    pub tumbling_secs: Vec<u32>,
    /// Hopping windows: each event counts in `size_secs / slide_secs` overlapping windows.
    pub hopping: Vec<Hopping>,
    /// How far behind its partition's newest event time an event may arrive and still update its
    /// windows; older ones are counted in `collector_late_events_total` and only stored raw.
    pub allowed_lateness_secs: u32,
    /// A partition without records for this long (wall clock) moves its event time to now, so its
    /// last windows close instead of staying open until traffic returns.
    pub idle_timeout_secs: u32,
    /// Attributes read as a latency in milliseconds, first match wins.
    pub latency_attributes: Vec<String>,
    /// Most distinct services one window counts under their own names (per collector; see
    /// `cardinality`); the events of further services are counted under `~other`.
    pub max_services_per_window: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hopping {
    pub size_secs: u32,
    pub slide_secs: u32,
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self {
            tumbling_secs: vec![10, 60],
            hopping: vec![Hopping {
                size_secs: 60,
                slide_secs: 30,
            }],
            allowed_lateness_secs: 10,
            idle_timeout_secs: 30,
            latency_attributes: vec![
                "latency_ms".into(),
                "duration_ms".into(),
                "http.duration_ms".into(),
            ],
            max_services_per_window: 1_000,
        }
    }
}

/// One window family: `width` seconds long, starting every `slide` seconds (equal for tumbling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    pub width: i64,
    pub slide: i64,
}

impl Spec {
    /// Window starts (epoch seconds) of every window of this family that contains `ts_secs`.
    pub fn starts(self, ts_secs: i64) -> impl Iterator<Item = i64> {
        let last = ts_secs.div_euclid(self.slide) * self.slide;
        (0..)
            .map(move |k| last - k * self.slide)
            .take_while(move |s| *s > ts_secs - self.width)
    }
}

impl WindowSettings {
    pub fn specs(&self) -> Vec<Spec> {
        let mut v: Vec<Spec> = self
            .tumbling_secs
            .iter()
            .map(|&w| Spec {
                width: i64::from(w),
                slide: i64::from(w),
            })
            .chain(self.hopping.iter().map(|h| Spec {
                width: i64::from(h.size_secs),
                slide: i64::from(h.slide_secs),
            }))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.tumbling_secs.is_empty() {
            return Err("windows.tumbling_secs needs at least one size".into());
        }
        if self.tumbling_secs.contains(&0) {
            return Err("windows.tumbling_secs: sizes must be at least 1".into());
        }
        for h in &self.hopping {
            if h.slide_secs == 0 || h.size_secs < h.slide_secs || h.size_secs % h.slide_secs != 0 {
                return Err(format!(
                    "windows.hopping {{size_secs={}, slide_secs={}}}: slide must be at least 1 and divide size",
                    h.size_secs, h.slide_secs
                ));
            }
        }
        Ok(())
    }

    /// The latency of an event in ms, from the first configured attribute that holds a number,
    /// bounded to `0..=MAX_LATENCY_MS` (see [`Latency`]).
    pub fn latency_ms(&self, e: &RawEvent) -> Option<Latency> {
        self.latency_attributes.iter().find_map(|k| {
            let v = e.attribute(k)?;
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .and_then(Latency::bounded)
        })
    }
}

/// A latency taken from an event: finite, at least 0, at most [`MAX_LATENCY_MS`].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Latency {
    ms: f64,
    /// The event's value was larger and was cut to the bound.
    pub clamped: bool,
}

impl Latency {
    /// `None` for what is not a latency (NaN, infinities, negatives); larger values are cut.
    pub fn bounded(ms: f64) -> Option<Latency> {
        if !ms.is_finite() || ms < 0.0 {
            return None;
        }
        Some(Latency {
            ms: ms.min(MAX_LATENCY_MS),
            clamped: ms > MAX_LATENCY_MS,
        })
    }

    pub fn ms(self) -> f64 {
        self.ms
    }
}

/// Additive statistics of one window row (or a part of one).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub count: i64,
    pub latency_count: i64,
    pub latency_sum_ms: f64,
    pub latency_max_ms: Option<f64>,
    pub hist: Vec<i64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            count: 0,
            latency_count: 0,
            latency_sum_ms: 0.0,
            latency_max_ms: None,
            hist: Vec::new(),
        }
    }
}

pub fn bucket(latency_ms: f64) -> usize {
    if latency_ms <= 1.0 {
        return 0;
    }
    ((latency_ms.log2() * 4.0).ceil() as usize).min(HIST_BUCKETS - 1)
}

pub fn bucket_upper_ms(i: usize) -> f64 {
    2f64.powf(i as f64 / 4.0)
}

impl Stats {
    pub fn add_event(&mut self, latency: Option<Latency>) {
        self.count = self.count.saturating_add(1);
        if let Some(l) = latency {
            let l = l.ms();
            self.latency_count = self.latency_count.saturating_add(1);
            self.latency_sum_ms += l;
            self.latency_max_ms = Some(self.latency_max_ms.map_or(l, |m| m.max(l)));
            let b = bucket(l);
            if self.hist.len() <= b {
                self.hist.resize(b + 1, 0);
            }
            self.hist[b] = self.hist[b].saturating_add(1);
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.count = self.count.saturating_add(o.count);
        self.latency_count = self.latency_count.saturating_add(o.latency_count);
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency_max_ms = match (self.latency_max_ms, o.latency_max_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.hist.len() < o.hist.len() {
            self.hist.resize(o.hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            *a = a.saturating_add(*b);
        }
    }

    /// The `q` quantile (0..=1) of the latencies, as its bucket's upper bound capped by the max.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: i64 = self.hist.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as i64).max(1);
        let mut seen = 0;
        for (i, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = bucket_upper_ms(i);
                return Some(self.latency_max_ms.map_or(upper, |m| upper.min(m)));
            }
        }
        self.latency_max_ms
    }

    /// Postgres array literal of the histogram, e.g. `{0,3,1}`.
    pub fn hist_literal(&self) -> String {
        let mut s = String::with_capacity(2 + self.hist.len() * 3);
        s.push('{');
        for (i, n) in self.hist.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&n.to_string());
        }
        s.push('}');
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowKey {
    pub spec: Spec,
    pub start_secs: i64,
    pub service: String,
    pub level: Level,
}

/// Per-batch partial aggregates. Events are first grouped by (service, level, second), which is
/// cheap per event; the groups are spread over the window families once per batch.
#[derive(Debug, Default)]
pub struct Aggregator {
    seconds: HashMap<(String, Level, i64), Stats>,
}

impl Aggregator {
    /// Add an event under `service`: its own, or the overflow key when its window holds too many
    /// services already (see `cardinality`).
    pub fn add(&mut self, service: &str, e: &RawEvent, latency: Option<Latency>) {
        let key = (service.to_owned(), e.level(), e.timestamp().timestamp());
        self.seconds.entry(key).or_default().add_event(latency);
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// Apply the services cap: each (service, epoch) of the batch is admitted once; the partials
    /// of a service past the cap move to the overflow key.
    pub fn cap_services(&mut self, cap: &mut KeyCap, epoch_secs: i64) -> CappedServices {
        let mut out = CappedServices::default();
        let mut decided: HashMap<(&str, i64), bool> = HashMap::new();
        for (service, _, sec) in self.seconds.keys() {
            let epoch = sec.div_euclid(epoch_secs);
            decided
                .entry((service, epoch))
                .or_insert_with(|| match cap.admit(epoch, service) {
                    Admission::Own => true,
                    Admission::Overflow { first } => {
                        if first {
                            out.first_epochs.push(epoch * epoch_secs);
                        }
                        false
                    }
                });
        }
        let over: HashSet<(String, i64)> = decided
            .into_iter()
            .filter(|(_, own)| !own)
            .map(|((s, e), _)| (s.to_owned(), e))
            .collect();
        if over.is_empty() {
            return out;
        }
        let seconds = std::mem::take(&mut self.seconds);
        for ((service, level, sec), stats) in seconds {
            let key = if over.contains(&(service.clone(), sec.div_euclid(epoch_secs))) {
                out.events = out.events.saturating_add(stats.count as u64);
                (OVERFLOW_KEY.to_owned(), level, sec)
            } else {
                (service, level, sec)
            };
            self.seconds.entry(key).or_default().merge(&stats);
        }
        out.over = over;
        out
    }

    /// The deltas to upsert, one per window row touched.
    pub fn into_deltas(self, specs: &[Spec]) -> Vec<(WindowKey, Stats)> {
        let mut rows: HashMap<WindowKey, Stats> = HashMap::new();
        for ((service, level, sec), stats) in self.seconds {
            for &spec in specs {
                for start_secs in spec.starts(sec) {
                    rows.entry(WindowKey {
                        spec,
                        start_secs,
                        service: service.clone(),
                        level,
                    })
                    .or_default()
                    .merge(&stats);
                }
            }
        }
        let mut v: Vec<_> = rows.into_iter().collect();
        // A fixed order keeps concurrent upserts of the same rows from deadlocking.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Index of the last closed error-rate window (window start / width) for an event-time progress:
/// windows end at or before `max_ts - lateness`.
pub fn closed_upto(max_ts: Option<DateTime<Utc>>, lateness_secs: i64, width: i64) -> i64 {
    match max_ts {
        None => i64::MIN,
        Some(t) => (t.timestamp() - lateness_secs).div_euclid(width) - 1,
    }
}

/// Start of the last closed error-rate window.
pub fn closed_window(
    max_ts: Option<DateTime<Utc>>,
    lateness_secs: i64,
    width: i64,
) -> Option<DateTime<Utc>> {
    let idx = closed_upto(max_ts, lateness_secs, width);
    if idx == i64::MIN {
        return None;
    }
    DateTime::from_timestamp(idx * width, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumbling_window_holds_each_second_exactly_once() {
        let s = Spec {
            width: 10,
            slide: 10,
        };
        assert_eq!(s.starts(25).collect::<Vec<_>>(), vec![20]);
        assert_eq!(s.starts(20).collect::<Vec<_>>(), vec![20]);
        assert_eq!(s.starts(-1).collect::<Vec<_>>(), vec![-10]);
    }

    #[test]
    fn hopping_window_puts_an_event_in_size_over_slide_windows() {
        let s = Spec {
            width: 60,
            slide: 20,
        };
        assert_eq!(s.starts(65).collect::<Vec<_>>(), vec![60, 40, 20]);
    }

    #[test]
    fn quantiles_come_from_the_histogram_within_bucket_precision() {
        let mut st = Stats::default();
        for l in 1..=100 {
            st.add_event(Latency::bounded(f64::from(l)));
        }
        let p50 = st.quantile_ms(0.5).unwrap();
        let p95 = st.quantile_ms(0.95).unwrap();
        assert!((50.0..=50.0 * 1.19).contains(&p50), "{p50}");
        assert!((95.0..=100.0).contains(&p95), "{p95}");
        assert_eq!(st.quantile_ms(1.0), Some(100.0));
        assert_eq!(st.latency_max_ms, Some(100.0));
    }

    #[test]
    fn merged_partials_equal_the_whole() {
        let mut whole = Stats::default();
        let mut a = Stats::default();
        let mut b = Stats::default();
        for l in [3.0, 700.0, 12.5, 0.2, 90_000.0] {
            whole.add_event(Latency::bounded(l));
            if l < 50.0 {
                a.add_event(Latency::bounded(l));
            } else {
                b.add_event(Latency::bounded(l));
            }
        }
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(
            whole.hist_literal().matches(',').count() + 1,
            whole.hist.len()
        );
    }

    #[test]
    fn hopping_slide_must_divide_the_size() {
        let w = WindowSettings {
            hopping: vec![Hopping {
                size_secs: 50,
                slide_secs: 20,
            }],
            ..Default::default()
        };
        assert!(w.validate().is_err());
    }

    /// PostgreSQL's arithmetic in the window upsert (`db::upsert_windows`), mirrored: BIGINT
    /// addition fails on overflow, DOUBLE PRECISION addition fails when finite inputs give an
    /// infinity ("value out of range: overflow"), GREATEST and `hist_add` as written there.
    fn upsert_in_sql(row: &Stats, delta: &Stats) -> Result<Stats, &'static str> {
        fn add_f8(a: f64, b: f64) -> Result<f64, &'static str> {
            let r = a + b;
            if r.is_infinite() && a.is_finite() && b.is_finite() {
                return Err("value out of range: overflow");
            }
            Ok(r)
        }
        let add_i8 = |a: i64, b: i64| a.checked_add(b).ok_or("bigint out of range");
        let n = row.hist.len().max(delta.hist.len());
        let mut hist = Vec::with_capacity(n);
        for i in 0..n {
            hist.push(add_i8(
                row.hist.get(i).copied().unwrap_or(0),
                delta.hist.get(i).copied().unwrap_or(0),
            )?);
        }
        Ok(Stats {
            count: add_i8(row.count, delta.count)?,
            latency_count: add_i8(row.latency_count, delta.latency_count)?,
            latency_sum_ms: add_f8(row.latency_sum_ms, delta.latency_sum_ms)?,
            latency_max_ms: match (row.latency_max_ms, delta.latency_max_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            hist,
        })
    }

    /// Any JSON number or string an event may carry as a latency, the type edges weighted in.
    fn any_latency_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<f64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                f64::MAX,
                f64::MIN_POSITIVE,
                1e308,
                -1e308,
                MAX_LATENCY_MS,
                MAX_LATENCY_MS * 2.0,
                0.0,
                -0.0,
                9.007_199_254_740_993e15,
            ])
            .prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                "1e308",
                "-1e308",
                "1e999",
                "NaN",
                "inf",
                "-inf",
                "Infinity",
                " 5 ",
                "0x10",
                "18446744073709551616",
                "",
            ])
            .prop_map(serde_json::Value::from),
            "[0-9eE.+-]{0,24}".prop_map(serde_json::Value::from),
        ]
    }

    fn event_with_latency(v: serde_json::Value) -> RawEvent {
        let mut e: logpipe_common::LogEvent = serde_json::from_str(
            r#"{"event_id":"x","timestamp":"2026-11-23T08:00:00Z","level":"INFO","service":"s","message":"m"}"#,
        )
        .unwrap();
        e.attributes.insert("latency_ms".into(), v);
        RawEvent::from_event(&e).unwrap()
    }

    proptest! {
        #[test]
        fn a_latency_from_any_value_is_finite_and_within_its_bound(v in any_latency_value()) {
            let w = WindowSettings::default();
            if let Some(l) = w.latency_ms(&event_with_latency(v)) {
                prop_assert!(l.ms().is_finite());
                prop_assert!((0.0..=MAX_LATENCY_MS).contains(&l.ms()));
            }
        }

        /// Rows built from any values, merged in any grouping, and upserted into a stored row
        /// that already holds the most events a row can take, never overflow.
        #[test]
        fn window_rows_of_any_values_never_overflow_the_upsert(
            values in prop::collection::vec(any_latency_value(), 1..60),
            split in 0usize..60,
        ) {
            let w = WindowSettings::default();
            let lats: Vec<_> = values.into_iter().map(|v| w.latency_ms(&event_with_latency(v))).collect();
            let mut whole = Stats::default();
            let (mut a, mut b) = (Stats::default(), Stats::default());
            for (i, l) in lats.iter().enumerate() {
                whole.add_event(*l);
                if i < split { a.add_event(*l) } else { b.add_event(*l) }
            }
            a.merge(&b);
            prop_assert_eq!(a.count, whole.count);
            prop_assert_eq!(&a.hist, &whole.hist);
            prop_assert!((a.latency_sum_ms - whole.latency_sum_ms).abs() <= 1e-6 * whole.latency_sum_ms.max(1.0));
            prop_assert!(whole.latency_sum_ms <= whole.latency_count as f64 * MAX_LATENCY_MS);
            // The worst stored row: MAX_EVENTS_PER_ROW events, each at the bound.
            let mut worst = Stats {
                count: MAX_EVENTS_PER_ROW,
                latency_count: MAX_EVENTS_PER_ROW,
                latency_sum_ms: MAX_EVENTS_PER_ROW as f64 * MAX_LATENCY_MS,
                latency_max_ms: Some(MAX_LATENCY_MS),
                hist: vec![0; HIST_BUCKETS],
            };
            worst.hist[HIST_BUCKETS - 1] = MAX_EVENTS_PER_ROW;
            let upserted = upsert_in_sql(&worst, &whole);
            prop_assert!(upserted.is_ok(), "{:?}", upserted);
            let again = upsert_in_sql(&upserted.unwrap(), &whole);
            prop_assert!(again.is_ok());
        }
    }

    #[test]
    fn the_value_that_overflowed_postgres_is_now_one_day() {
        // Found by a new user: two requests with latency_ms 1.7e308 overflowed the upsert.
        let w = WindowSettings::default();
        let l = w
            .latency_ms(&event_with_latency(serde_json::json!(1.7e308)))
            .unwrap();
        assert!(l.clamped);
        assert_eq!(l.ms(), MAX_LATENCY_MS);
        let mut row = Stats::default();
        row.add_event(Some(l));
        let mut delta = Stats::default();
        delta.add_event(Some(l));
        assert!(upsert_in_sql(&row, &delta).is_ok());
        // And the unbounded value does overflow the mirrored arithmetic (the mirror is faithful).
        let raw = Stats {
            latency_sum_ms: 1.7e308,
            ..Stats::default()
        };
        assert!(upsert_in_sql(&raw, &raw).is_err());
    }
}
