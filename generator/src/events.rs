//! Realistic log events: a small fleet of services, each with its own components, message
//! templates and level mix, and the attributes a real HTTP service logs.
//!
//! Everything random comes from one seeded RNG, so a run with a `seed` is reproducible event for
//! event (except the wall-clock timestamp and the time part of the id).
//!
//! A [`Profile`] shapes the traffic over a repeating 60-second cycle measured from the run's start:
//! `error-spike` and `security-attack` hold their episode from second 15 to 45 of each cycle, `burst`
//! multiplies the rate by 10 from second 20 to 30, `mixed-formats` carries Apache combined and syslog
//! lines in a fifth of the messages, and `steady` is the background alone.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use logpipe_common::{Level, LogEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod draft;
pub use draft::{Draft, Hex, IdText};

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

/// Traffic shapes selectable per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    Steady,
    ErrorSpike,
    SecurityAttack,
    Burst,
    MixedFormats,
}

pub const CYCLE_SECS: u64 = 60;
const EPISODE: std::ops::Range<u64> = 15..45;
const BURST: std::ops::Range<u64> = 20..30;
pub const BURST_MULTIPLIER: u32 = 10;
/// The service whose errors spike in `error-spike`.
pub const SPIKE_SERVICE: &str = "payments";
/// Where the brute-force logins of `security-attack` come from (documentation address range).
pub const ATTACKER_IPS: [&str; 3] = ["203.0.113.7", "203.0.113.23", "203.0.113.99"];
const ATTACKED_USERS: [&str; 3] = ["admin", "root", "u-1"];
const SQLI_PATHS: [&str; 4] = [
    "/search?q=1' OR '1'='1",
    "/items?id=1 UNION SELECT password FROM users--",
    "/cart?id=1; DROP TABLE orders--",
    "/search?q=admin'--",
];

impl Profile {
    /// The names the control contract documents.
    pub const NAMES: [&'static str; 5] = logpipe_common::control::PROFILES;

    pub fn name(self) -> &'static str {
        match self {
            Profile::Steady => "steady",
            Profile::ErrorSpike => "error-spike",
            Profile::SecurityAttack => "security-attack",
            Profile::Burst => "burst",
            Profile::MixedFormats => "mixed-formats",
        }
    }

    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "steady" => Some(Profile::Steady),
            "error-spike" => Some(Profile::ErrorSpike),
            "security-attack" => Some(Profile::SecurityAttack),
            "burst" => Some(Profile::Burst),
            "mixed-formats" => Some(Profile::MixedFormats),
            _ => None,
        }
    }

    /// True while this profile's episode (spike, attack) is on, `elapsed` into the run.
    pub fn in_episode(self, elapsed: Duration) -> bool {
        let s = elapsed.as_secs() % CYCLE_SECS;
        match self {
            Profile::ErrorSpike | Profile::SecurityAttack => EPISODE.contains(&s),
            Profile::Burst => BURST.contains(&s),
            Profile::Steady | Profile::MixedFormats => false,
        }
    }

    /// How many times the base rate to generate at, `elapsed` into the run.
    pub fn rate_multiplier(self, elapsed: Duration) -> u32 {
        if self == Profile::Burst && self.in_episode(elapsed) {
            BURST_MULTIPLIER
        } else {
            1
        }
    }
}

const METHODS: [(&str, u32); 4] = [("GET", 60), ("POST", 30), ("PUT", 6), ("DELETE", 4)];

/// Makes events; one per worker thread, each with its own seeded RNG.
pub struct EventFactory {
    rng: SmallRng,
    host: String,
    profile: Profile,
    service_total: u32,
    /// Reused for each draw's made strings, so a draw allocates nothing once they have grown.
    message: String,
    user: String,
    client_ip: String,
}

impl EventFactory {
    pub fn new(seed: u64, host: impl Into<String>, profile: Profile) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            host: host.into(),
            profile,
            service_total: SERVICES.iter().map(|s| s.weight).sum(),
            message: String::new(),
            user: String::new(),
            client_ip: String::new(),
        }
    }

    /// The next event at wall-clock `now`, `elapsed` into the run (which drives the profile).
    pub fn next_event(&mut self, now: DateTime<Utc>, elapsed: Duration) -> LogEvent {
        self.draw(now, elapsed).to_event()
    }

    /// The next event as a [`Draft`] borrowing this factory: what [`Self::next_event`] returns,
    /// before any of it is copied into a `LogEvent`.
    pub fn draw(&mut self, now: DateTime<Utc>, elapsed: Duration) -> Draft<'_> {
        let episode = self.profile.in_episode(elapsed);
        let service = self.pick_service();
        let mut req = Request {
            service,
            component: service.components[self.rng.random_range(0..service.components.len())],
            level: self.pick_level(),
            method: pick_weighted(&mut self.rng, &METHODS),
            path: service.paths[self.rng.random_range(0..service.paths.len())],
        };
        let (user, client_ip, message) = (&mut self.user, &mut self.client_ip, &mut self.message);
        user.clear();
        client_ip.clear();
        message.clear();
        let _ = write!(user, "u-{}", self.rng.random_range(1..5_000u32));
        let _ = write!(
            client_ip,
            "10.{}.{}.{}",
            self.rng.random_range(0..4u8),
            self.rng.random_range(0..=255u8),
            self.rng.random_range(1..=254u8)
        );
        let failed_login = match self.profile {
            // The spiking service's requests fail three times in five during the episode.
            Profile::ErrorSpike
                if episode && service.name == SPIKE_SERVICE && self.rng.random_ratio(3, 5) =>
            {
                req.level = Level::Error;
                false
            }
            Profile::SecurityAttack if episode => {
                attack(&mut self.rng, &mut req, user, client_ip, message)
            }
            _ => false,
        };
        let Request {
            service,
            component,
            level,
            method,
            path,
        } = req;
        let status = if failed_login {
            401
        } else {
            status_for(level, &mut self.rng)
        };
        let latency_ms = latency_for(level, &mut self.rng);
        if failed_login {
            // Its message was written with it.
        } else if self.profile == Profile::MixedFormats && self.rng.random_ratio(1, 5) {
            let line = Line {
                now,
                host: &self.host,
                service: service.name,
                client_ip,
                user,
                method,
                path,
                status,
                level,
            };
            line.render(&mut self.rng, message);
        } else {
            message_for(
                message,
                service.name,
                component,
                level,
                method,
                path,
                status,
                latency_ms,
            );
        }

        let id_entropy: u128 = self.rng.random();
        let trace = self.rng.random::<u128>();
        let span = self.rng.random::<u64>();
        Draft {
            id: ulid::Ulid::from_parts(now.timestamp_millis().max(0) as u64, id_entropy),
            timestamp: now,
            level,
            service: service.name,
            component,
            host: &self.host,
            message,
            method,
            path,
            status,
            latency_ms,
            user,
            client_ip,
            trace,
            span,
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
        pick_weighted(&mut self.rng, &LEVEL_WEIGHTS)
    }
}

/// The names of one request, which a profile's episode may change.
#[derive(Clone, Copy)]
struct Request {
    service: &'static Service,
    component: &'static str,
    level: Level,
    method: &'static str,
    path: &'static str,
}

/// `security-attack`'s episode: one request in 12.5 a failed login from an attacker (true, with
/// its message written), one in 50 an injection probe, the rest left alone.
fn attack(
    rng: &mut SmallRng,
    req: &mut Request,
    user: &mut String,
    client_ip: &mut String,
    message: &mut String,
) -> bool {
    let roll = rng.random_range(0..100u32);
    if roll < 8 {
        // Brute force: failed logins from a few IPs against a few accounts.
        *req = Request {
            service: service_named("auth"),
            component: "login",
            level: Level::Warn,
            method: "POST",
            path: "/login",
        };
        client_ip.clear();
        client_ip.push_str(ATTACKER_IPS[rng.random_range(0..ATTACKER_IPS.len())]);
        user.clear();
        user.push_str(ATTACKED_USERS[rng.random_range(0..ATTACKED_USERS.len())]);
        let _ = write!(
            message,
            "login failed: invalid password for user {user} from {client_ip}"
        );
        true
    } else {
        if roll < 10 {
            *req = Request {
                service: service_named("search"),
                component: "query",
                level: Level::Warn,
                method: "GET",
                path: SQLI_PATHS[rng.random_range(0..SQLI_PATHS.len())],
            };
        }
        false
    }
}

fn service_named(name: &str) -> &'static Service {
    SERVICES
        .iter()
        .find(|s| s.name == name)
        .unwrap_or(&SERVICES[0])
}

/// The pieces of one request, rendered as the raw log lines other systems write.
struct Line<'a> {
    now: DateTime<Utc>,
    host: &'a str,
    service: &'a str,
    client_ip: &'a str,
    user: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    level: Level,
}

impl Line<'_> {
    /// A `mixed_formats` event's message: the request as an Apache combined or a syslog line.
    fn render(&self, rng: &mut SmallRng, out: &mut String) {
        if rng.random_bool(0.5) {
            self.apache_combined(rng.random_range(200..20_000u32), out)
        } else {
            self.syslog(rng.random_bool(0.5), rng.random_range(100..40_000u32), out)
        }
    }

    fn apache_combined(&self, bytes: u32, out: &mut String) {
        let _ = write!(
            out,
            "{} - {} [{}] \"{} {} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"",
            self.client_ip,
            self.user,
            self.now.format("%d/%b/%Y:%H:%M:%S %z"),
            self.method,
            self.path,
            self.status,
            bytes
        );
    }

    /// RFC 5424 when `modern`, else RFC 3164 (BSD), facility local0.
    fn syslog(&self, modern: bool, pid: u32, out: &mut String) {
        let severity = match self.level {
            Level::Fatal => 2,
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        let pri = 16 * 8 + severity;
        if modern {
            let _ = write!(
                out,
                "<{pri}>1 {} {} {} {pid} - - {} {} -> {}",
                self.now.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                self.host,
                self.service,
                self.method,
                self.path,
                self.status
            );
        } else {
            let _ = write!(
                out,
                "<{pri}>{} {} {}[{pid}]: {} {} -> {}",
                self.now.format("%b %e %H:%M:%S"),
                self.host,
                self.service,
                self.method,
                self.path,
                self.status
            );
        }
    }
}

fn pick_weighted<T: Copy>(rng: &mut SmallRng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for &(item, w) in items {
        if x < w {
            return item;
        }
        x -= w;
    }
    items[0].0
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

#[allow(clippy::too_many_arguments)] // the pieces of one request, each used by some template
fn message_for(
    out: &mut String,
    service: &str,
    component: &str,
    level: Level,
    method: &str,
    path: &str,
    status: u16,
    latency_ms: u32,
) {
    let _ = match (service, level) {
        ("payments", Level::Error | Level::Fatal) => {
            write!(
                out,
                "charge declined by upstream processor after {latency_ms} ms (status {status})"
            )
        }
        ("auth", Level::Warn) => write!(out, "login failed: invalid credentials on {path}"),
        ("auth", Level::Error | Level::Fatal) => {
            write!(
                out,
                "token signing key unavailable; {method} {path} -> {status}"
            )
        }
        ("inventory", Level::Warn) => write!(out, "stock level below threshold in {component}"),
        ("search", Level::Warn) => write!(out, "slow query: {latency_ms} ms on {path}"),
        (_, Level::Error | Level::Fatal) => {
            write!(
                out,
                "{method} {path} failed with {status}: upstream timeout in {component}"
            )
        }
        (_, Level::Warn) => {
            write!(
                out,
                "{method} {path} -> {status} (client error) in {latency_ms} ms"
            )
        }
        (_, Level::Debug | Level::Trace) => {
            write!(
                out,
                "{component}: cache lookup for {path} took {latency_ms} ms"
            )
        }
        _ => write!(out, "{method} {path} -> {status} in {latency_ms} ms"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_makes_the_same_events() {
        let now = Utc::now();
        for profile in Profile::NAMES.map(|n| Profile::parse(n).unwrap()) {
            assert_eq!(Profile::parse(profile.name()), Some(profile));
            let mut a = EventFactory::new(42, "gen-a", profile);
            let mut b = EventFactory::new(42, "gen-a", profile);
            for i in 0..500 {
                let t = Duration::from_millis(i * 100);
                assert_eq!(a.next_event(now, t), b.next_event(now, t));
            }
        }
    }

    #[test]
    fn events_are_valid_and_carry_http_attributes() {
        let mut f = EventFactory::new(7, "gen-a", Profile::MixedFormats);
        for _ in 0..1_000 {
            let e = f.next_event(Utc::now(), Duration::ZERO);
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
        let mut f = EventFactory::new(1, "gen-a", Profile::Steady);
        let n = 20_000;
        let mut info = 0;
        let mut errors = 0;
        let mut fatal = 0;
        let mut services = std::collections::HashSet::new();
        for _ in 0..n {
            let e = f.next_event(Utc::now(), Duration::from_secs(30));
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
        let mut f = EventFactory::new(3, "gen-a", Profile::Steady);
        let now = Utc::now();
        let ids: std::collections::HashSet<_> = (0..10_000)
            .map(|_| f.next_event(now, Duration::ZERO).event_id)
            .collect();
        assert_eq!(ids.len(), 10_000);
    }

    fn error_rate(f: &mut EventFactory, service: &str, at: Duration) -> f64 {
        let events: Vec<_> = (0..20_000)
            .map(|_| f.next_event(Utc::now(), at))
            .filter(|e| e.service == service)
            .collect();
        events.iter().filter(|e| e.level >= Level::Error).count() as f64 / events.len() as f64
    }

    #[test]
    fn error_spike_raises_one_services_error_rate_only_during_the_episode() {
        let mut f = EventFactory::new(5, "gen-a", Profile::ErrorSpike);
        let before = error_rate(&mut f, SPIKE_SERVICE, Duration::from_secs(5));
        let during = error_rate(&mut f, SPIKE_SERVICE, Duration::from_secs(20));
        let other = error_rate(&mut f, "checkout", Duration::from_secs(20));
        assert!(before < 0.08, "before {before}");
        assert!(during > 0.5, "during {during}");
        assert!(other < 0.08, "other service {other}");
    }

    #[test]
    fn security_attack_brings_failed_logins_from_few_ips_and_sql_injection_paths() {
        let mut f = EventFactory::new(9, "gen-a", Profile::SecurityAttack);
        let during: Vec<_> = (0..10_000)
            .map(|_| f.next_event(Utc::now(), Duration::from_secs(30)))
            .collect();
        let logins: Vec<_> = during
            .iter()
            .filter(|e| e.message.starts_with("login failed: invalid password"))
            .collect();
        assert!(logins.len() > 500, "{} failed logins", logins.len());
        assert!(logins
            .iter()
            .all(|e| ATTACKER_IPS.contains(&e.attributes["client.ip"].as_str().unwrap())));
        let sqli = during
            .iter()
            .filter(|e| SQLI_PATHS.contains(&e.attributes["http.path"].as_str().unwrap()))
            .count();
        assert!(sqli > 100, "{sqli} injection paths");
        let quiet = (0..10_000)
            .map(|_| f.next_event(Utc::now(), Duration::from_secs(50)))
            .filter(|e| {
                e.attributes["client.ip"]
                    .as_str()
                    .unwrap()
                    .starts_with("203.0.113.")
            })
            .count();
        assert_eq!(quiet, 0, "no attack outside the episode");
    }

    #[test]
    fn burst_multiplies_the_rate_by_ten_for_ten_seconds_a_minute() {
        let on: Vec<u64> = (0..60)
            .filter(|s| Profile::Burst.rate_multiplier(Duration::from_secs(*s)) == BURST_MULTIPLIER)
            .collect();
        assert_eq!(on, (20..30).collect::<Vec<_>>());
        assert_eq!(Profile::Steady.rate_multiplier(Duration::from_secs(25)), 1);
    }

    #[test]
    fn mixed_formats_carries_apache_and_both_syslog_flavours_in_messages() {
        let mut f = EventFactory::new(11, "gen-a", Profile::MixedFormats);
        let msgs: Vec<String> = (0..5_000)
            .map(|_| f.next_event(Utc::now(), Duration::ZERO).message)
            .collect();
        let apache = msgs
            .iter()
            .filter(|m| m.contains("\" 200 ") || m.contains(" HTTP/1.1\" "))
            .count();
        let rfc5424 = msgs
            .iter()
            .filter(|m| m.starts_with('<') && m.contains(">1 "))
            .count();
        let rfc3164 = msgs
            .iter()
            .filter(|m| m.starts_with('<') && !m.contains(">1 "))
            .count();
        assert!(
            apache > 200 && rfc5424 > 100 && rfc3164 > 100,
            "{apache} {rfc5424} {rfc3164}"
        );
    }
}
