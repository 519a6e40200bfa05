//! Realistic log events: a small fleet of services, each with its own components, message
//! templates and level mix, and the attributes a real HTTP service logs.
//!
//! Everything random comes from one seeded RNG, so a run with a `seed` is reproducible event for
//! event (except the wall-clock timestamp and the time part of the id).

use chrono::{DateTime, Utc};
use logpipe_common::{Level, LogEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

struct Service {
    name: &'static str,
    components: &'static [&'static str],
    paths: &'static [&'static str],
    /// Relative weight of this service in the traffic mix.
    weight: u32,
}

const SERVICES: &[Service] = &[
    Service {
        name: "payments",
        components: &["api", "ledger", "fraud-check"],
        paths: &["/v1/charges", "/v1/refunds", "/v1/payouts"],
        weight: 20,
    },
    Service {
        name: "checkout",
        components: &["api", "cart", "pricing"],
        paths: &["/cart", "/cart/items", "/checkout/confirm"],
        weight: 25,
    },
    Service {
        name: "auth",
        components: &["login", "token", "session"],
        paths: &["/login", "/oauth/token", "/logout"],
        weight: 15,
    },
    Service {
        name: "inventory",
        components: &["stock", "warehouse-sync"],
        paths: &["/items", "/items/reserve", "/stock/levels"],
        weight: 15,
    },
    Service {
        name: "search",
        components: &["query", "indexer"],
        paths: &["/search", "/suggest"],
        weight: 20,
    },
    Service {
        name: "notifications",
        components: &["email", "push"],
        paths: &["/notify", "/templates"],
        weight: 5,
    },
];

/// Level weights in per-mille for the steady profile: mostly INFO, a little noise, rare errors, and no
/// FATAL (a FATAL is an incident, not background).
const LEVEL_WEIGHTS: [(Level, u32); 6] = [
    (Level::Trace, 20),
    (Level::Debug, 150),
    (Level::Info, 700),
    (Level::Warn, 90),
    (Level::Error, 40),
    (Level::Fatal, 0),
];

const METHODS: [(&str, u32); 4] = [("GET", 60), ("POST", 30), ("PUT", 6), ("DELETE", 4)];

/// Makes events; one per worker thread, each with its own seeded RNG.
pub struct EventFactory {
    rng: SmallRng,
    host: String,
    service_total: u32,
}

impl EventFactory {
    pub fn new(seed: u64, host: impl Into<String>) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            host: host.into(),
            service_total: SERVICES.iter().map(|s| s.weight).sum(),
        }
    }

    pub fn next_event(&mut self, now: DateTime<Utc>) -> LogEvent {
        let service = self.pick_service();
        let component = service.components[self.rng.random_range(0..service.components.len())];
        let level = self.pick_level();
        let method = pick_weighted(&mut self.rng, &METHODS);
        let path = service.paths[self.rng.random_range(0..service.paths.len())];
        let status = status_for(level, &mut self.rng);
        let latency_ms = latency_for(level, &mut self.rng);
        let user = format!("u-{}", self.rng.random_range(1..5_000u32));
        let client_ip = format!(
            "10.{}.{}.{}",
            self.rng.random_range(0..4u8),
            self.rng.random_range(0..=255u8),
            self.rng.random_range(1..=254u8)
        );
        let message = message_for(
            service.name,
            component,
            level,
            method,
            path,
            status,
            latency_ms,
        );

        let mut attributes = Map::with_capacity(6);
        attributes.insert("http.method".into(), Value::from(*method));
        attributes.insert("http.path".into(), Value::from(path));
        attributes.insert("http.status".into(), Value::from(status));
        attributes.insert("latency_ms".into(), Value::from(latency_ms));
        attributes.insert("user".into(), Value::from(user));
        attributes.insert("client.ip".into(), Value::from(client_ip));

        let id_entropy: u128 = self.rng.random();
        let event_id =
            ulid::Ulid::from_parts(now.timestamp_millis().max(0) as u64, id_entropy).to_string();
        LogEvent {
            event_id,
            timestamp: now,
            level,
            service: service.name.into(),
            component: component.into(),
            host: self.host.clone(),
            message,
            trace_id: Some(format!("{:032x}", self.rng.random::<u128>())),
            span_id: Some(format!("{:016x}", self.rng.random::<u64>())),
            attributes,
        }
    }

    fn pick_service(&mut self) -> &'static Service {
        let mut x = self.rng.random_range(0..self.service_total);
        for s in SERVICES {
            if x < s.weight {
                return s;
            }
            x -= s.weight;
        }
        &SERVICES[0]
    }

    fn pick_level(&mut self) -> Level {
        *pick_weighted(&mut self.rng, &LEVEL_WEIGHTS)
    }
}

fn pick_weighted<'a, T>(rng: &mut SmallRng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    &items[0].0
}

fn status_for(level: Level, rng: &mut SmallRng) -> u16 {
    match level {
        Level::Error | Level::Fatal => [500, 502, 503, 504][rng.random_range(0..4)],
        Level::Warn => [400, 401, 404, 409, 429][rng.random_range(0..5)],
        _ => [200, 200, 200, 201, 204][rng.random_range(0..5)],
    }
}

fn latency_for(level: Level, rng: &mut SmallRng) -> u32 {
    // Long-tailed: most requests fast, some slow, errors slower (timeouts).
    let base = rng.random_range(2..60u32);
    let tail = if rng.random_ratio(1, 20) {
        rng.random_range(100..1_500u32)
    } else {
        0
    };
    let error_penalty = if level >= Level::Error {
        rng.random_range(200..5_000u32)
    } else {
        0
    };
    base + tail + error_penalty
}

fn message_for(
    service: &str,
    component: &str,
    level: Level,
    method: &str,
    path: &str,
    status: u16,
    latency_ms: u32,
) -> String {
    match (service, level) {
        ("payments", Level::Error | Level::Fatal) => {
            format!("charge declined by upstream processor after {latency_ms} ms (status {status})")
        }
        ("auth", Level::Warn) => format!("login failed: invalid credentials on {path}"),
        ("auth", Level::Error | Level::Fatal) => {
            format!("token signing key unavailable; {method} {path} -> {status}")
        }
        ("inventory", Level::Warn) => format!("stock level below threshold in {component}"),
        ("search", Level::Warn) => format!("slow query: {latency_ms} ms on {path}"),
        (_, Level::Error | Level::Fatal) => {
            format!("{method} {path} failed with {status}: upstream timeout in {component}")
        }
        (_, Level::Warn) => {
            format!("{method} {path} -> {status} (client error) in {latency_ms} ms")
        }
        (_, Level::Debug | Level::Trace) => {
            format!("{component}: cache lookup for {path} took {latency_ms} ms")
        }
        _ => format!("{method} {path} -> {status} in {latency_ms} ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_makes_the_same_events() {
        let now = Utc::now();
        let mut a = EventFactory::new(42, "gen-a");
        let mut b = EventFactory::new(42, "gen-a");
        for _ in 0..100 {
            assert_eq!(a.next_event(now), b.next_event(now));
        }
    }

    #[test]
    fn events_are_valid_and_carry_http_attributes() {
        let mut f = EventFactory::new(7, "gen-a");
        for _ in 0..1_000 {
            let e = f.next_event(Utc::now());
            e.validate().unwrap();
            for key in [
                "http.method",
                "http.path",
                "http.status",
                "latency_ms",
                "user",
                "client.ip",
            ] {
                assert!(e.attributes.contains_key(key), "missing {key}");
            }
            assert_eq!(e.trace_id.as_ref().unwrap().len(), 32);
        }
    }

    #[test]
    fn steady_mix_is_mostly_info_with_a_few_errors_and_no_fatal() {
        let mut f = EventFactory::new(1, "gen-a");
        let n = 20_000;
        let mut info = 0;
        let mut errors = 0;
        let mut fatal = 0;
        let mut services = std::collections::HashSet::new();
        for _ in 0..n {
            let e = f.next_event(Utc::now());
            services.insert(e.service.clone());
            match e.level {
                Level::Info => info += 1,
                Level::Error => errors += 1,
                Level::Fatal => fatal += 1,
                _ => {}
            }
        }
        assert!((0.65..0.75).contains(&(info as f64 / n as f64)));
        assert!((0.02..0.06).contains(&(errors as f64 / n as f64)));
        assert_eq!(fatal, 0);
        assert_eq!(services.len(), SERVICES.len());
    }

    #[test]
    fn event_ids_are_unique() {
        let mut f = EventFactory::new(3, "gen-a");
        let now = Utc::now();
        let ids: std::collections::HashSet<_> =
            (0..10_000).map(|_| f.next_event(now).event_id).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
