//! Per-client rate limits: an exact sliding-window log in Redis, with a local fallback.
//!
//! Each (route class, client) pair has a sorted set in Redis whose members are the requests (or, for
//! ingest, the events) accepted inside the window. One Lua script trims what left the window, counts,
//! and adds, atomically and with Redis's own clock (`TIME`), so any number of gateway instances share
//! one exact limit and their clocks do not matter. Classes counted in requests take five commands
//! (the set's size is the count); ingest, counted in events, keeps a running sum beside the set.
//! Checks that arrive while a script call is in flight share the next call (`redis_batch_max`).
//!
//! When Redis does not answer within `redis_timeout_ms`, decisions move to a local `governor` limiter
//! with the same limit per window (approximate, per instance), `gateway_rate_limit_backend` says
//! `local`, and Redis is tried again a second later.
//!
//! The helpers the guard and ingest share live here too: whose limit a request spends
//! ([`limit_identity`]), the `RateLimit-*` headers, and the 429 ([`refused`]).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::telemetry;

/// Which limit a route falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Control,
    Ingest,
    Query,
    /// Failed authentications per client address: repeated bad keys are themselves limited.
    AuthFailure,
}

impl RouteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Control => "control",
            RouteClass::Ingest => "ingest",
            RouteClass::Query => "query",
            RouteClass::AuthFailure => "auth_failure",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests (ingest: events) accepted per window.
    pub limit: u32,
    pub window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub redis_url: String,
    /// Namespace of the limiter keys; tests use their own.
    pub key_prefix: String,
    /// A Redis call slower than this switches to the local limiter.
    pub redis_timeout_ms: u64,
    /// Most checks sent to Redis in one script call while another call is on its way (1: every
    /// check on its own, for a Redis Cluster, where one call must stay on one shard).
    pub redis_batch_max: usize,
    pub control: Limit,
    pub ingest: Limit,
    pub query: Limit,
    pub auth_failures: Limit,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            redis_url: "redis://127.0.0.1:6379".into(),
            key_prefix: "logpipe:rl".into(),
            redis_timeout_ms: 50,
            redis_batch_max: 64,
            control: Limit {
                limit: 60,
                window_ms: 60_000,
            },
            ingest: Limit {
                limit: 6_000_000,
                window_ms: 60_000,
            },
            query: Limit {
                limit: 6_000,
                window_ms: 60_000,
            },
            auth_failures: Limit {
                limit: 20,
                window_ms: 60_000,
            },
        }
    }
}

impl RateLimitSettings {
    pub fn limit_for(&self, class: RouteClass) -> Limit {
        match class {
            RouteClass::Control => self.control,
            RouteClass::Ingest => self.ingest,
            RouteClass::Query => self.query,
            RouteClass::AuthFailure => self.auth_failures,
        }
    }
}

/// The outcome of one check, enough for the `RateLimit-*` headers and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window has room again.
    pub reset_secs: u64,
}

/// Any number of checks in one call (see [`Batcher`]), each atomic and all of them together.
/// Per check: KEYS `log` and `sum`; ARGV `mode`, `limit`, `window_ms`, `cost`, `member`. Returns
/// {allowed, remaining, reset_ms} per check, in order. Redis's clock is read once per call.
///
/// `u` (control, query, auth failures: every request costs one): the log holds one member per
/// accepted request scored by time in microseconds, and its size is the count; five commands when
/// allowed. `c` (ingest: a request costs one unit per event): members are `<unique>:<cost>` and
/// `sum` holds the sum of the costs in the log, so a 1,000-event batch is one member, not a thousand.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function unit(log, limit, window_ms, member)
  local window = window_ms * 1000
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  local count = redis.call('ZCARD', log)
  if count >= limit then
    -- Room comes back when the oldest member past the limit leaves the window.
    local oldest = redis.call('ZRANGE', log, count - limit, count - limit, 'WITHSCORES')
    return 0, 0, math.ceil((tonumber(oldest[2]) + window - now) / 1000)
  end
  redis.call('ZADD', log, now, member)
  redis.call('PEXPIRE', log, window_ms)
  local reset = window_ms
  if count > 0 then
    local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    reset = math.ceil((tonumber(first[2]) + window - now) / 1000)
  end
  return 1, limit - count - 1, reset
end

local function costed(log, sum, limit, window_ms, cost, member)
  local window = window_ms * 1000
  local expired = redis.call('ZRANGEBYSCORE', log, '-inf', now - window)
  if #expired > 0 then
    local gone = 0
    for _, m in ipairs(expired) do gone = gone + tonumber(string.match(m, ':(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
    redis.call('DECRBY', sum, gone)
  end
  local count = tonumber(redis.call('GET', sum) or '0')
  if count + cost > limit then
    -- Room for `cost` comes back when enough of the oldest members have left the window.
    local need = count + cost - limit
    local reset = window_ms
    local oldest = redis.call('ZRANGE', log, 0, 999, 'WITHSCORES')
    for i = 1, #oldest, 2 do
      need = need - tonumber(string.match(oldest[i], ':(%d+)$'))
      if need <= 0 then
        reset = math.ceil((tonumber(oldest[i + 1]) + window - now) / 1000)
        break
      end
    end
    return 0, limit - count, reset
  end
  redis.call('ZADD', log, now, member .. ':' .. cost)
  redis.call('INCRBY', sum, cost)
  redis.call('PEXPIRE', log, window_ms)
  redis.call('PEXPIRE', sum, window_ms)
  local first = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  return 1, limit - count - cost, math.ceil((tonumber(first[2]) + window - now) / 1000)
end

local out = {}
for i = 0, #KEYS / 2 - 1 do
  local log, sum = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local a = 5 * i
  local limit, window_ms = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local allowed, remaining, reset
  if ARGV[a + 1] == 'u' then
    allowed, remaining, reset = unit(log, limit, window_ms, ARGV[a + 5])
  else
    allowed, remaining, reset = costed(log, sum, limit, window_ms, tonumber(ARGV[a + 4]), ARGV[a + 5])
  end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
return out
"#;

pub struct RateLimiterService {
    settings: RateLimitSettings,
    redis: Arc<Redis>,
    /// Checks on their way to the [`Batcher`].
    batches: mpsc::UnboundedSender<Pending>,
    local_backend: AtomicBool,
    retry_redis_at: Mutex<Option<Instant>>,
    /// Makes every Redis member unique across requests and gateway instances.
    instance_nonce: u64,
    sequence: AtomicU64,
    /// Indexed by `RouteClass as usize`.
    local: [DefaultKeyedRateLimiter<u64>; 4],
}

fn local_limiter(limit: Limit) -> DefaultKeyedRateLimiter<u64> {
    let n = NonZeroU32::new(limit.limit.max(1)).expect("non-zero");
    let period = Duration::from_millis(limit.window_ms.max(1)) / n.get();
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(n);
    RateLimiter::keyed(quota)
}

/// The connection to Redis and the script.
struct Redis {
    url: String,
    timeout: Duration,
    script: redis::Script,
    /// The multiplexed connection, opened on first use and reopened by the manager.
    conn: Mutex<Option<ConnectionManager>>,
    /// Held while (re)connecting, so a burst opens one connection, not one per request.
    connecting: tokio::sync::Mutex<()>,
}

impl Redis {
    async fn open(&self) -> redis::RedisResult<ConnectionManager> {
        let c = redis::Client::open(self.url.as_str())?;
        // No response timeout inside the manager: the deadline is applied per check instead.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_number_of_retries(1);
        ConnectionManager::new_with_config(c, config).await
    }

    /// A handle on the shared connection, opening it first if there is none.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.conn.lock().expect("lock").as_ref() {
            return Ok(c.clone());
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.conn.lock().expect("lock").as_ref() {
            return Ok(c.clone());
        }
        let c = self.open().await?;
        *self.conn.lock().expect("lock") = Some(c.clone());
        Ok(c)
    }

    /// One script call for every check in `batch`; three numbers per check.
    async fn run(&self, batch: &[Pending]) -> redis::RedisResult<Vec<i64>> {
        let mut call = self.script.prepare_invoke();
        for p in batch {
            call.key(&p.log_key).key(&p.sum_key);
            call.arg(if p.class == RouteClass::Ingest {
                "c"
            } else {
                "u"
            })
            .arg(p.limit.limit)
            .arg(p.limit.window_ms)
            .arg(p.cost)
            .arg(&p.member);
        }
        let mut conn = self.connection().await?;
        call.invoke_async(&mut conn).await
    }
}

/// One check waiting for its batch.
struct Pending {
    class: RouteClass,
    log_key: String,
    sum_key: String,
    limit: Limit,
    cost: u32,
    member: String,
    reply: oneshot::Sender<Result<(i64, i64, i64), String>>,
}

/// Checks that arrive while a script call is on its way to Redis wait and go together in the next
/// call (up to `redis_batch_max`), like Nagle's algorithm with no timer: an idle gateway sends each
/// check at once, a busy one pays one round trip, one script call and one reply for many. Each
/// check is still atomic and exact; the script runs them in arrival order.
struct Batcher {
    redis: Arc<Redis>,
    queue: mpsc::UnboundedReceiver<Pending>,
    max: usize,
}

impl Batcher {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max);
        // A call stuck on a hung Redis must not hold every later check: they time out and go
        // local on their own, and the batcher moves on after this.
        let bound = (self.redis.timeout * 10).max(Duration::from_millis(500));
        while self.queue.recv_many(&mut batch, self.max).await > 0 {
            // A check that stopped waiting (timed out, decided locally) must not be counted in
            // Redis after the fact.
            batch.retain(|p| !p.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let result = match tokio::time::timeout(bound, self.redis.run(&batch)).await {
                Ok(Ok(v)) if v.len() == 3 * batch.len() => Ok(v),
                Ok(Ok(v)) => Err(format!("script returned {} values", v.len())),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
            for (i, p) in batch.drain(..).enumerate() {
                let r = match &result {
                    Ok(v) => Ok((v[3 * i], v[3 * i + 1], v[3 * i + 2])),
                    Err(e) => Err(e.clone()),
                };
                // The check may have given up waiting; nothing to tell it then.
                let _ = p.reply.send(r);
            }
        }
    }
}

impl RateLimiterService {
    /// Starts the batcher task, so it must be called inside a Tokio runtime.
    pub fn new(settings: RateLimitSettings) -> RateLimiterService {
        telemetry::rate_limit_backend(false);
        let local = [
            local_limiter(settings.control),
            local_limiter(settings.ingest),
            local_limiter(settings.query),
            local_limiter(settings.auth_failures),
        ];
        let redis = Arc::new(Redis {
            url: settings.redis_url.clone(),
            timeout: Duration::from_millis(settings.redis_timeout_ms.max(1)),
            script: redis::Script::new(SCRIPT),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        let (batches, queue) = mpsc::unbounded_channel();
        if settings.enabled {
            // Ends when the service (the only sender) is dropped.
            tokio::spawn(
                Batcher {
                    redis: redis.clone(),
                    queue,
                    max: settings.redis_batch_max.max(1),
                }
                .run(),
            );
        }
        RateLimiterService {
            redis,
            batches,
            local_backend: AtomicBool::new(false),
            retry_redis_at: Mutex::new(None),
            instance_nonce: rand::random(),
            sequence: AtomicU64::new(0),
            local,
            settings,
        }
    }

    /// Connect now rather than on the first request; failing is fine (the limiter starts local).
    pub async fn connect(&self) {
        if !self.settings.enabled {
            return;
        }
        let timeout = Duration::from_millis(self.settings.redis_timeout_ms.max(1) * 10);
        let result = tokio::time::timeout(timeout, async {
            let mut conn = self.redis.connection().await?;
            // Load the script once up front, so a first burst does not all hit NOSCRIPT.
            self.redis
                .script
                .prepare_invoke()
                .load_async(&mut conn)
                .await?;
            Ok::<(), redis::RedisError>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.fall_back(&e.to_string());
            }
            Err(_) => {
                self.fall_back("connect timed out");
            }
        }
    }

    pub fn limit(&self, class: RouteClass) -> Limit {
        self.settings.limit_for(class)
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    pub fn backend(&self) -> &'static str {
        if self.local_backend.load(Ordering::Relaxed) {
            "local"
        } else {
            "redis"
        }
    }

    /// Check and, when allowed, record `cost` units for `client` under `class`.
    pub async fn check(&self, class: RouteClass, client: &str, cost: u32) -> Decision {
        let limit = self.settings.limit_for(class);
        let client_hash = hash(client);
        if let Some(d) = self.check_redis(class, client_hash, limit, cost).await {
            return d;
        }
        self.check_local(class, client_hash, limit, cost)
    }

    async fn check_redis(
        &self,
        class: RouteClass,
        client: u64,
        limit: Limit,
        cost: u32,
    ) -> Option<Decision> {
        if let Some(at) = *self.retry_redis_at.lock().expect("lock") {
            if Instant::now() < at {
                return None;
            }
        }
        // One hash tag for both keys, so a Redis Cluster keeps them on one shard.
        let key = format!(
            "{}:{{{}:{:016x}}}",
            self.settings.key_prefix,
            class.as_str(),
            client
        );
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            class,
            log_key: format!("{key}:log"),
            sum_key: format!("{key}:sum"),
            limit,
            cost,
            member: format!(
                "{:016x}-{}",
                self.instance_nonce,
                self.sequence.fetch_add(1, Ordering::Relaxed)
            ),
            reply,
        };
        if self.batches.send(pending).is_err() {
            return self.fall_back("limiter batcher stopped");
        }
        let timeout = Duration::from_millis(self.settings.redis_timeout_ms);
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok((allowed, remaining, reset_ms)))) => {
                if self.local_backend.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis is back: rate limits are exact and shared again");
                    telemetry::rate_limit_backend(false);
                }
                Some(Decision {
                    allowed: allowed == 1,
                    limit: limit.limit,
                    remaining: remaining.max(0) as u32,
                    reset_secs: (reset_ms.max(0) as u64).div_ceil(1000),
                })
            }
            Ok(Ok(Err(e))) => self.fall_back(&e),
            Ok(Err(_)) => self.fall_back("limiter batcher stopped"),
            Err(_) => self.fall_back("timed out"),
        }
    }

    fn fall_back(&self, why: &str) -> Option<Decision> {
        if !self.local_backend.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = why, "Redis unavailable: rate limiting locally");
            telemetry::rate_limit_backend(true);
        }
        *self.retry_redis_at.lock().expect("lock") = Some(Instant::now() + Duration::from_secs(1));
        None
    }

    fn check_local(&self, class: RouteClass, client: u64, limit: Limit, cost: u32) -> Decision {
        let limiter = &self.local[class as usize];
        // Bounded memory: a flood of distinct clients while Redis is down must not grow the map
        // without end; clients whose state has fully replenished are forgotten.
        if limiter.len() >= LOCAL_CLIENTS_MAX {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let n = NonZeroU32::new(cost.max(1)).expect("non-zero");
        let allowed = matches!(limiter.check_key_n(&client, n), Ok(Ok(())));
        Decision {
            allowed,
            limit: limit.limit,
            // The local limiter does not expose a count; report what is certain.
            remaining: if allowed {
                limit.limit.saturating_sub(cost)
            } else {
                0
            },
            reset_secs: if allowed {
                limit.window_ms.div_ceil(1000)
            } else {
                1
            },
        }
    }
}

/// Local-limiter entries per class before the idle ones are dropped.
const LOCAL_CLIENTS_MAX: usize = 100_000;

/// Client identities (key names, addresses) never go to Redis or logs as they are. SHA-256, not
/// `DefaultHasher`: its output may change between Rust releases, and gateways built with different
/// toolchains must still share one client's window.
fn hash(client: &str) -> u64 {
    let digest = crate::auth::sha256(client.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Who a limit applies to: the key's name when authenticated by key, else the peer address.
pub fn limit_identity(principal: &Principal, ip: IpAddr) -> String {
    match &principal.key_name {
        Some(name) => format!("key:{name}"),
        None => format!("ip:{ip}"),
    }
}

pub fn rate_limit_headers(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// The refusal for a spent limit: 429 with `Retry-After` and the `RateLimit-*` headers.
pub fn refused(route: &str, class: RouteClass, d: &Decision) -> Response {
    telemetry::rate_limited(route);
    let mut resp = ApiError::RateLimited {
        class: class.as_str(),
        retry_after_secs: d.reset_secs.max(1),
    }
    .into_response();
    rate_limit_headers(&mut resp, d);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_keys_are_the_same_on_every_build() {
        // The first 8 bytes of `printf %s key:ops | sha256sum`: fixed, whatever the toolchain.
        assert_eq!(hash("key:ops"), 0xcd0c_5af0_c5b7_0bfc);
    }

    #[test]
    fn the_local_limiter_forgets_idle_clients_past_its_bound() {
        let one_ms = Limit {
            limit: 1,
            window_ms: 1,
        };
        let settings = RateLimitSettings {
            enabled: false,
            query: one_ms,
            ..RateLimitSettings::default()
        };
        let limiter = RateLimiterService::new(settings);
        let clients = LOCAL_CLIENTS_MAX + LOCAL_CLIENTS_MAX / 10;
        for client in 0..clients as u64 {
            assert!(
                limiter
                    .check_local(RouteClass::Query, client, one_ms, 1)
                    .allowed
            );
        }
        let kept = limiter.local[RouteClass::Query as usize].len();
        assert!(
            kept <= LOCAL_CLIENTS_MAX,
            "{kept} clients kept of {clients}"
        );
    }
}
