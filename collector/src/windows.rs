//! Event-time windows: which windows an event falls in, the per-batch partial aggregates, and the
//! latency histogram that lets partial aggregates add up in Postgres.
//!
//! Window rows are upserts of additive deltas (counts, sums, max, histogram buckets), written in the
//! same transaction as the partition offsets, so a window row is exact however batches, crashes and
//! rebalances cut the stream. p50/p95 come from the histogram (log buckets, ±9 %).

use std::collections::HashMap;

use logpipe_common::{Level, LogEvent};
use serde::{Deserialize, Serialize};

/// Histogram buckets: bucket `i` holds latencies up to 2^(i/4) ms; the last one also takes anything
/// larger (2^20 ms is about 17 minutes).
pub const HIST_BUCKETS: usize = 81;

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

    /// The latency of an event in ms, from the first configured attribute that holds a number.
    pub fn latency_ms(&self, e: &LogEvent) -> Option<f64> {
        self.latency_attributes.iter().find_map(|k| {
            let v = e.attributes.get(k)?;
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
        })
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
    pub fn add_event(&mut self, latency_ms: Option<f64>) {
        self.count += 1;
        if let Some(l) = latency_ms {
            self.latency_count += 1;
            self.latency_sum_ms += l;
            self.latency_max_ms = Some(self.latency_max_ms.map_or(l, |m| m.max(l)));
            let b = bucket(l);
            if self.hist.len() <= b {
                self.hist.resize(b + 1, 0);
            }
            self.hist[b] += 1;
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.count += o.count;
        self.latency_count += o.latency_count;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency_max_ms = match (self.latency_max_ms, o.latency_max_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.hist.len() < o.hist.len() {
            self.hist.resize(o.hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            *a += b;
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
    pub fn add(&mut self, e: &LogEvent, latency_ms: Option<f64>) {
        let key = (e.service.clone(), e.level, e.timestamp.timestamp());
        self.seconds.entry(key).or_default().add_event(latency_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

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
            st.add_event(Some(f64::from(l)));
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
            whole.add_event(Some(l));
            if l < 50.0 {
                a.add_event(Some(l));
            } else {
                b.add_event(Some(l));
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
}
