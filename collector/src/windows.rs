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
    /// The tumbling family among `specs` that holds this hopping family's windows starting on a
    /// multiple of its width: a window of the same span counts the same events, since lateness
    /// and the services cap decide per event and per epoch, not per family. With the defaults
    /// (60 s tumbling, 60/30 hopping) every other hopping window was written twice, a quarter
    /// of the rows each batch upserts (BENCHMARKS.md); it is written once, as the tumbling row,
    /// so the hopping family reads as its own rows and those (ARCHITECTURE.md, "Storage").
    pub fn held_by(self, specs: &[Spec]) -> Option<Spec> {
        let tumbling = Spec {
            width: self.width,
            slide: self.width,
        };
        (self.slide != self.width && specs.contains(&tumbling)).then_some(tumbling)
    }

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

    /// The deltas to upsert, one per window row touched. A hopping window that is also a
    /// window of a tumbling family in `specs` (same width, starting on a multiple of it) gets no
    /// row of its own: the tumbling row holds the same events (see [`Spec::held_by`]).
    pub fn into_deltas(self, specs: &[Spec]) -> Vec<(WindowKey, Stats)> {
        let held: Vec<Option<Spec>> = specs.iter().map(|s| s.held_by(specs)).collect();
        // Merged in key order, not the hash map's: a sum of floats depends on its order, so a
        // batch retried, or a family aggregated alone, gives the same bits.
        let mut seconds: Vec<_> = self.seconds.into_iter().collect();
        seconds.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut rows: HashMap<WindowKey, Stats> = HashMap::new();
        for ((service, level, sec), stats) in seconds {
            for (&spec, held) in specs.iter().zip(&held) {
                for start_secs in spec.starts(sec) {
                    if held.is_some_and(|t| start_secs.rem_euclid(t.width) == 0) {
                        continue;
                    }
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
mod tests;
