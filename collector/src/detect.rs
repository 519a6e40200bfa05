//! Per-event alert detectors and their settings: FATAL events, SQL-injection signatures, failed
//! logins (counted per IP and per user for brute force). Error-rate spikes are judged on closed
//! windows instead (see `alerts`).
//!
//! Detectors only collect what a batch saw; turning that into alerts (once per episode) happens in
//! the batch's transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use logpipe_common::{Level, RawEvent};
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// Tumbling window (one of `windows.tumbling_secs`) on which error rates are judged.
    pub error_rate_window_secs: u32,
    /// A window needs at least this many errors to alert: one error never does.
    pub error_rate_min_errors: i64,
    /// ...and an error rate at least `factor` × the service's baseline...
    pub error_rate_factor: f64,
    /// ...and at least this much above it (absolute, 0..1).
    pub error_rate_min_increase: f64,
    /// Baseline before a service has history.
    pub error_rate_default_baseline: f64,
    /// Weight of each normal window in the moving baseline (exponential average).
    pub error_rate_baseline_alpha: f64,
    /// Failed logins from one IP, or for one user, within `brute_force_window_secs` that alert.
    pub brute_force_threshold: i64,
    pub brute_force_window_secs: u32,
    /// Messages that are failed logins.
    pub failed_login_pattern: String,
    /// SQL-injection signatures, looked for in the message and in `http.path`/`url`.
    pub sql_injection_patterns: Vec<String>,
    /// Event-time quiet gap that ends an episode of a per-event alert: a detection after a longer
    /// quiet period is a new alert, a detection within it extends the open one.
    pub episode_gap_secs: u32,
    /// Most distinct failed-login subjects (`ip:…`, `user:…`) one brute-force window counts on
    /// their own (per collector); further ones count under `ip:~other` / `user:~other`.
    pub max_login_subjects_per_window: usize,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            error_rate_window_secs: 10,
            error_rate_min_errors: 20,
            error_rate_factor: 3.0,
            error_rate_min_increase: 0.10,
            error_rate_default_baseline: 0.05,
            error_rate_baseline_alpha: 0.2,
            brute_force_threshold: 20,
            brute_force_window_secs: 60,
            failed_login_pattern:
                r"(?i)(login failed|failed login|authentication failed|invalid password)".into(),
            sql_injection_patterns: vec![
                r"(?i)\bunion\b(\s|\+|%20)+(all(\s|\+|%20)+)?select\b".into(),
                r"(?i)'\s*or\s+'?\w+'?\s*=\s*'?\w+".into(),
                r"(?i);\s*(drop|delete|truncate|alter|shutdown)\s+\w+".into(),
                r"(?i)'\s*(--|#|/\*)".into(),
                r"(?i)\b(sleep|benchmark|pg_sleep)\s*\(\s*\d+".into(),
                r"(?i)\b(xp_cmdshell|information_schema)\b".into(),
            ],
            episode_gap_secs: 20,
            max_login_subjects_per_window: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    ErrorRateSpike,
    SqlInjection,
    BruteForce,
    FatalEvent,
}

impl AlertKind {
    pub const ALL: [AlertKind; 4] = [
        AlertKind::ErrorRateSpike,
        AlertKind::SqlInjection,
        AlertKind::BruteForce,
        AlertKind::FatalEvent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ErrorRateSpike => "error_rate_spike",
            AlertKind::SqlInjection => "sql_injection",
            AlertKind::BruteForce => "brute_force",
            AlertKind::FatalEvent => "fatal_event",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::FatalEvent | AlertKind::SqlInjection | AlertKind::BruteForce => "critical",
            AlertKind::ErrorRateSpike => "warning",
        }
    }
}

/// What a batch saw of one (kind, subject): how often, when, and one example.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub kind: AlertKind,
    pub subject: String,
    pub service: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub count: i64,
    pub example: String,
}

/// Failed logins of one subject in one brute-force window.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedLogins {
    pub subject: String,
    pub service: String,
    pub window_start: DateTime<Utc>,
    pub hits: i64,
    /// The first and last failed login of this window in this batch: the detection's range.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Detector {
    sqli: RegexSet,
    failed_login: Regex,
    brute_window_secs: i64,
    episode_gap: chrono::Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid alert pattern in {field}: {source}")]
pub struct PatternError {
    field: &'static str,
    #[source]
    source: regex::Error,
}

/// Most separate episodes one batch reports per (kind, subject).
pub const MAX_RUNS_PER_SUBJECT: usize = 16;

/// Everything the detectors found in one batch, keyed for a stable write order.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Per (kind, subject), runs of detections no further apart in event time than the episode
    /// gap: a batch that holds the end of one episode and the start of the next (a backlog read
    /// in large batches) reports them apart, as smaller batches would.
    pub detections: BTreeMap<(AlertKind, String), Vec<Detection>>,
    pub failed_logins: BTreeMap<(String, i64), FailedLogins>,
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.detections.is_empty() && self.failed_logins.is_empty()
    }

    fn detect(
        &mut self,
        kind: AlertKind,
        subject: &str,
        e: &RawEvent,
        example: &str,
        gap: chrono::Duration,
    ) {
        let runs = self
            .detections
            .entry((kind, subject.to_owned()))
            .or_default();
        let t = e.timestamp();
        let mut run = runs
            .iter_mut()
            .position(|d| t >= d.first_seen - gap && t <= d.last_seen + gap);
        if run.is_none() && runs.len() >= MAX_RUNS_PER_SUBJECT {
            // Bounded: events spread over many distant times (any client can date them so) would
            // otherwise make one episode, and a few statements in the batch's transaction, each.
            // Past the bound a detection joins the nearest run, which then spans the gap.
            run = runs
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| (d.first_seen - t).abs().min((d.last_seen - t).abs()))
                .map(|(i, _)| i);
        }
        match run.map(|i| &mut runs[i]) {
            Some(d) => {
                d.count += 1;
                d.first_seen = d.first_seen.min(t);
                d.last_seen = d.last_seen.max(t);
            }
            None => runs.push(Detection {
                kind,
                subject: subject.to_owned(),
                service: e.service().to_owned(),
                first_seen: t,
                last_seen: t,
                count: 1,
                example: example.chars().take(300).collect(),
            }),
        }
    }
}

impl Detector {
    pub fn new(s: &AlertSettings) -> Result<Detector, PatternError> {
        Ok(Detector {
            sqli: RegexSet::new(&s.sql_injection_patterns).map_err(|source| PatternError {
                field: "alerts.sql_injection_patterns",
                source,
            })?,
            failed_login: Regex::new(&s.failed_login_pattern).map_err(|source| PatternError {
                field: "alerts.failed_login_pattern",
                source,
            })?,
            brute_window_secs: i64::from(s.brute_force_window_secs.max(1)),
            episode_gap: chrono::Duration::seconds(i64::from(s.episode_gap_secs)),
        })
    }

    pub fn inspect(&self, e: &RawEvent, out: &mut Findings) {
        if e.level() == Level::Fatal {
            out.detect(
                AlertKind::FatalEvent,
                e.service(),
                e,
                e.message(),
                self.episode_gap,
            );
        }
        let path = e
            .attribute("http.path")
            .or_else(|| e.attribute("url"))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let path = path.as_ref();
        // Cheap gate: every signature needs a quote, a semicolon or a parenthesis, or the word union.
        let suspicious =
            |s: &str| s.contains(['\'', ';', '(']) || s.contains("union") || s.contains("UNION");
        if (suspicious(path) && self.sqli.is_match(path))
            || (suspicious(e.message()) && self.sqli.is_match(e.message()))
        {
            let example = if path.is_empty() { e.message() } else { path };
            out.detect(
                AlertKind::SqlInjection,
                e.service(),
                e,
                example,
                self.episode_gap,
            );
        }
        if self.failed_login.is_match(e.message()) {
            let t = e.timestamp();
            let ts = t.timestamp();
            let start = ts.div_euclid(self.brute_window_secs) * self.brute_window_secs;
            let window_start = DateTime::from_timestamp(start, 0).unwrap_or(t);
            let subjects = [
                e.attribute("client.ip")
                    .and_then(|v| v.as_str())
                    .map(|ip| bounded_subject("ip", &ip)),
                e.attribute("user")
                    .and_then(|v| v.as_str())
                    .map(|u| bounded_subject("user", &u)),
            ];
            for subject in subjects.into_iter().flatten() {
                let f = out
                    .failed_logins
                    .entry((subject.clone(), start))
                    .or_insert_with(|| FailedLogins {
                        subject,
                        service: e.service().to_owned(),
                        window_start,
                        hits: 0,
                        first_seen: t,
                        last_seen: t,
                    });
                f.hits += 1;
                f.first_seen = f.first_seen.min(t);
                f.last_seen = f.last_seen.max(t);
            }
        }
    }
}

/// Longest subject value kept whole. A subject is a key of `failed_logins` and of alert episodes
/// (B-tree indexes refuse a row over 2,704 bytes, and attributes may hold 16 KiB): a longer value
/// keeps its first bytes and a hash of the whole, so distinct values stay distinct.
pub const MAX_SUBJECT_VALUE_BYTES: usize = 128;

/// `prefix:value`, with the value bounded (see [`MAX_SUBJECT_VALUE_BYTES`]).
pub fn bounded_subject(prefix: &str, value: &str) -> String {
    if value.len() <= MAX_SUBJECT_VALUE_BYTES {
        return format!("{prefix}:{value}");
    }
    let mut cut = MAX_SUBJECT_VALUE_BYTES - 24;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    // FNV-1a: stable across builds, so one long value is one subject after a restart too.
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{prefix}:{}…#{hash:016x}", &value[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use logpipe_common::LogEvent;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_subject_of_any_value_is_bounded_and_distinct_values_stay_distinct(
            a in "\\PC{0,400}", b in "\\PC{0,400}",
        ) {
            let (sa, sb) = (bounded_subject("ip", &a), bounded_subject("ip", &b));
            prop_assert!(sa.len() <= MAX_SUBJECT_VALUE_BYTES + 3 + 3);
            prop_assert_eq!(sa == sb, a == b);
        }
    }

    fn event(level: Level, service: &str, message: &str, path: &str) -> LogEvent {
        logpipe_common::LogEvent {
            event_id: "1".into(),
            timestamp: "2026-11-23T08:00:05Z".parse().unwrap(),
            level,
            service: service.into(),
            component: String::new(),
            host: String::new(),
            message: message.into(),
            trace_id: None,
            span_id: None,
            attributes:
                serde_json::json!({"http.path": path, "client.ip": "203.0.113.7", "user": "admin"})
                    .as_object()
                    .unwrap()
                    .clone(),
        }
    }

    fn findings(events: &[LogEvent]) -> Findings {
        let d = Detector::new(&AlertSettings::default()).unwrap();
        let mut f = Findings::default();
        for e in events {
            d.inspect(&RawEvent::from_event(e).unwrap(), &mut f);
        }
        f
    }

    #[test]
    fn sql_injection_signatures_in_paths_are_detected_per_service() {
        let f = findings(&[
            event(Level::Warn, "search", "GET", "/search?q=1' OR '1'='1"),
            event(
                Level::Warn,
                "search",
                "GET",
                "/items?id=1 UNION SELECT password FROM users--",
            ),
            event(
                Level::Warn,
                "search",
                "GET",
                "/cart?id=1; DROP TABLE orders--",
            ),
            event(Level::Warn, "search", "GET", "/search?q=admin'--"),
        ]);
        let d = &f.detections[&(AlertKind::SqlInjection, "search".to_string())];
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].count, 4);
    }

    #[test]
    fn ordinary_requests_raise_nothing() {
        let f = findings(&[
            event(
                Level::Info,
                "search",
                "GET /search -> 200 in 12 ms",
                "/search",
            ),
            event(
                Level::Error,
                "payments",
                "charge declined (status 502)",
                "/v1/charges",
            ),
            event(
                Level::Info,
                "checkout",
                "user's cart (2 items) updated",
                "/cart/items",
            ),
        ]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn failed_logins_count_per_ip_and_per_user_in_their_window() {
        let e = event(
            Level::Warn,
            "auth",
            "login failed: invalid password for user admin",
            "/login",
        );
        let f = findings(&[e.clone(), e]);
        assert_eq!(f.failed_logins.len(), 2);
        assert!(f.failed_logins.values().all(|c| c.hits == 2));
        let c = f.failed_logins.values().next().unwrap();
        assert_eq!(c.window_start.timestamp() % 60, 0);
    }

    #[test]
    fn detections_further_apart_than_the_episode_gap_stay_apart_within_one_batch() {
        let at = |secs: i64, path: &str| {
            let mut e = event(Level::Warn, "search", "GET", path);
            e.timestamp += chrono::Duration::seconds(secs);
            e
        };
        // Gap 20 s: 0, 10 and 25 s are one run (each within 20 s of it); 60 and 70 s another.
        let f = findings(&[
            at(0, "/q?a=1'--"),
            at(60, "/q?a=2'--"),
            at(10, "/q?a=3'--"),
            at(25, "/q?a=4'--"),
            at(70, "/q?a=5'--"),
        ]);
        let runs = &f.detections[&(AlertKind::SqlInjection, "search".to_string())];
        let spans: Vec<(i64, i64, i64)> = runs
            .iter()
            .map(|d| {
                let base = runs[0].first_seen.timestamp();
                (
                    d.first_seen.timestamp() - base,
                    d.last_seen.timestamp() - base,
                    d.count,
                )
            })
            .collect();
        assert_eq!(spans, vec![(0, 25, 3), (60, 70, 2)]);
    }

    #[test]
    fn detections_spread_over_distant_times_make_a_bounded_number_of_runs() {
        let events: Vec<LogEvent> = (0..500)
            .map(|i| {
                let mut e = event(Level::Fatal, "payments", "down", "/");
                e.timestamp += chrono::Duration::days(i);
                e
            })
            .collect();
        let f = findings(&events);
        let runs = &f.detections[&(AlertKind::FatalEvent, "payments".to_string())];
        assert_eq!(runs.len(), MAX_RUNS_PER_SUBJECT);
        assert_eq!(runs.iter().map(|d| d.count).sum::<i64>(), 500);
    }

    #[test]
    fn a_fatal_event_is_a_detection_of_its_service() {
        let f = findings(&[event(Level::Fatal, "payments", "ledger corrupted", "/")]);
        assert!(f
            .detections
            .contains_key(&(AlertKind::FatalEvent, "payments".to_string())));
    }
}
