//! Bounded per-key state: how many distinct services a window, or subjects a brute-force window,
//! may hold before further ones are counted together under one overflow key.
//!
//! Every key a client chooses (a service name, a `client.ip`, a `user`) becomes rows and in-memory
//! state: window rows, error-rate state, alert episodes, failed-login counters. Without a cap one
//! client sending a million service names makes a million of each, and everyone's batches carry
//! them. Past the cap events are still stored raw with their own names; only the aggregates count
//! them under [`OVERFLOW_KEY`], with a metric and one WARN line per window (the Envoy and Vector
//! habit for unbounded tag values).
//!
//! The cap is per collector process and per epoch it remembers (the last `max_epochs` epochs it
//! met; an epoch is the widest window, so a narrower window meets at most two epochs). A restart, or
//! a second collector of the group, counts afresh: a window may then hold the cap once per
//! collector that wrote to it. Memory stays within `cap × max_epochs` keys.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

use crate::detect::Findings;

/// The key an over-the-cap service or subject is counted under. Not a valid name a client could
/// tell apart from its own (a client naming its service `~other` is counted there too).
pub const OVERFLOW_KEY: &str = "~other";

/// The distinct keys admitted per epoch, up to `cap`.
#[derive(Debug)]
pub struct KeyCap {
    cap: usize,
    max_epochs: usize,
    epochs: BTreeMap<i64, Epoch>,
    /// Counts admissions: an epoch's last use, for forgetting the least recently used one.
    tick: u64,
}

#[derive(Debug, Default)]
struct Epoch {
    keys: HashSet<String>,
    warned: bool,
    last_used: u64,
}

/// What a key gets in an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted under its own name.
    Own,
    /// Counted under [`OVERFLOW_KEY`]; `first` is true once per epoch (the WARN line's turn).
    Overflow { first: bool },
}

impl KeyCap {
    pub fn new(cap: usize, max_epochs: usize) -> KeyCap {
        KeyCap {
            cap,
            max_epochs: max_epochs.max(1),
            epochs: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Admit `key` in `epoch`: already known, or room left, is [`Admission::Own`].
    pub fn admit(&mut self, epoch: i64, key: &str) -> Admission {
        if !self.epochs.contains_key(&epoch) && self.epochs.len() >= self.max_epochs {
            // Forget the least recently used epoch: state stays bounded whatever times events
            // carry, and events spread over many odd times do not push out the current window.
            if let Some(lru) = self
                .epochs
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            {
                self.epochs.remove(&lru);
            }
        }
        self.tick += 1;
        let e = self.epochs.entry(epoch).or_default();
        e.last_used = self.tick;
        if e.keys.contains(key) {
            return Admission::Own;
        }
        if e.keys.len() < self.cap {
            e.keys.insert(key.to_owned());
            return Admission::Own;
        }
        let first = !std::mem::replace(&mut e.warned, true);
        Admission::Overflow { first }
    }

    /// Keys remembered in all (for tests and the bound's proof).
    pub fn remembered(&self) -> usize {
        self.epochs.values().map(|e| e.keys.len()).sum()
    }
}

/// The caps the planner applies, per collector process.
#[derive(Debug)]
pub struct Caps {
    /// Services per window (epoch = the widest window family).
    pub services: KeyCap,
    /// The widest window's width: one epoch of `services`.
    pub service_epoch_secs: i64,
    /// Failed-login subjects (`ip:…`, `user:…`) per brute-force window.
    pub login_subjects: KeyCap,
}

/// How many epochs each cap remembers: enough for a backlog read from several partitions at
/// different event times, small enough that `cap × MAX_EPOCHS` keys is a few megabytes.
pub const MAX_EPOCHS: usize = 16;

impl Caps {
    pub fn new(max_services: usize, service_epoch_secs: i64, max_login_subjects: usize) -> Caps {
        Caps {
            services: KeyCap::new(max_services, MAX_EPOCHS),
            service_epoch_secs: service_epoch_secs.max(1),
            login_subjects: KeyCap::new(max_login_subjects, MAX_EPOCHS),
        }
    }
}

/// Detections and failed-login counters under the caps: a fatal or SQL-injection detection of a
/// service past the services cap counts under the overflow service; a failed-login subject
/// (`ip:…`, `user:…`) past the subjects cap counts under `ip:~other` / `user:~other`, which can
/// itself raise a brute-force alert (an attack from many addresses is still one).
pub fn cap_findings(
    f: &mut Findings,
    caps: &mut Caps,
    now: DateTime<Utc>,
) -> Vec<(&'static str, u64, Vec<i64>)> {
    let mut out = Vec::new();
    let epoch_secs = caps.service_epoch_secs;
    let (mut n, mut first) = (0u64, Vec::new());
    let keys: Vec<_> = f.detections.keys().cloned().collect();
    for key in keys {
        // A detection dated ahead counts in the current window: odd times open no new room.
        let Some(at) = f.detections[&key]
            .first()
            .map(|d| d.first_seen.min(now).timestamp())
        else {
            continue;
        };
        let epoch = at.div_euclid(epoch_secs);
        let Admission::Overflow { first: is_first } = caps.services.admit(epoch, &key.1) else {
            continue;
        };
        if is_first {
            first.push(epoch * epoch_secs);
        }
        let runs = f.detections.remove(&key).unwrap_or_default();
        n += runs.len() as u64;
        let into = f
            .detections
            .entry((key.0, OVERFLOW_KEY.to_owned()))
            .or_default();
        into.extend(runs.into_iter().map(|mut d| {
            d.subject = OVERFLOW_KEY.to_owned();
            d.service = OVERFLOW_KEY.to_owned();
            d
        }));
    }
    if n > 0 {
        out.push(("service", n, first));
    }
    let (mut n, mut first) = (0u64, Vec::new());
    let keys: Vec<_> = f.failed_logins.keys().cloned().collect();
    for key in keys {
        let (subject, start) = &key;
        let epoch = (*start).min(now.timestamp());
        let Admission::Overflow { first: is_first } = caps.login_subjects.admit(epoch, subject)
        else {
            continue;
        };
        if is_first {
            first.push(*start);
        }
        let Some(c) = f.failed_logins.remove(&key) else {
            continue;
        };
        n += c.hits as u64;
        let prefix = subject.split_once(':').map_or("", |(p, _)| p);
        let over = format!("{prefix}:{OVERFLOW_KEY}");
        match f.failed_logins.get_mut(&(over.clone(), *start)) {
            Some(o) => {
                o.hits = o.hits.saturating_add(c.hits);
                o.first_seen = o.first_seen.min(c.first_seen);
                o.last_seen = o.last_seen.max(c.last_seen);
            }
            None => {
                let mut c = c;
                c.subject.clone_from(&over);
                f.failed_logins.insert((over, *start), c);
            }
        }
    }
    if n > 0 {
        out.push(("login_subject", n, first));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_past_the_cap_overflow_and_the_first_overflow_of_an_epoch_says_so() {
        let mut c = KeyCap::new(2, 4);
        assert_eq!(c.admit(0, "a"), Admission::Own);
        assert_eq!(c.admit(0, "b"), Admission::Own);
        assert_eq!(c.admit(0, "c"), Admission::Overflow { first: true });
        assert_eq!(c.admit(0, "d"), Admission::Overflow { first: false });
        // Known keys stay their own; another epoch has its own room.
        assert_eq!(c.admit(0, "a"), Admission::Own);
        assert_eq!(c.admit(1, "c"), Admission::Own);
    }

    #[test]
    fn events_spread_over_odd_times_do_not_push_out_the_window_in_use() {
        let mut c = KeyCap::new(1, 3);
        assert_eq!(c.admit(100, "mine"), Admission::Own);
        for far in [9_000, 9_001] {
            c.admit(far, "x");
            // The current window is used between them, as a stream's own events keep it.
            assert_eq!(
                c.admit(100, "other"),
                Admission::Overflow {
                    first: far == 9_000
                }
            );
        }
        c.admit(9_002, "x");
        assert_eq!(
            c.admit(100, "another"),
            Admission::Overflow { first: false }
        );
    }

    proptest! {
        /// Whatever keys and epochs arrive, memory holds at most cap × max_epochs keys, and no
        /// epoch admits more than the cap.
        #[test]
        fn memory_stays_within_cap_times_epochs(
            keys in prop::collection::vec((any::<i64>(), "[a-z]{1,3}"), 0..2000),
        ) {
            let mut c = KeyCap::new(5, 3);
            let mut own: std::collections::HashMap<i64, HashSet<String>> = Default::default();
            for (epoch, key) in &keys {
                let epoch = epoch % 7;
                if c.admit(epoch, key) == Admission::Own {
                    own.entry(epoch).or_default().insert(key.clone());
                }
                prop_assert!(c.remembered() <= 5 * 3);
            }
            // An epoch forgotten and met again starts afresh (documented); the cap holds within
            // each time it is remembered, so per epoch the total is bounded by cap × visits.
            prop_assert!(own.values().all(|s| s.len() <= 5 * keys.len().max(1)));
        }
    }
}
