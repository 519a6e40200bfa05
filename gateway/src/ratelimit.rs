//! Per-client rate limits: an exact sliding-window log in Redis, with a local fallback.
//!
//! Each (route class, client) pair has a sorted set in Redis whose members are the requests (or, for
//! ingest, the events) accepted inside the window. Each check is one Lua script that trims what left
//! the window, counts, and adds, atomically and with Redis's own clock (`TIME`), so any number of
//! gateway instances share one exact limit and their clocks do not matter. Classes counted in
//! requests use a five-command script (the set's size is the count); ingest, counted in events, keeps
//! a running sum beside the set.
//!
//! When Redis does not answer within `redis_timeout_ms`, decisions move to a local `governor` limiter
//! with the same limit per window (approximate, per instance), `gateway_rate_limit_backend` says
//! `local`, and Redis is tried again a second later.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

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

/// For classes where every request costs one (control, query, auth failures): KEYS[1] is the window
/// log, one member per accepted request scored by time in microseconds, and its size is the count.
/// ARGV: limit, window_ms, member. Returns {allowed, remaining, reset_ms}. Five commands when
/// allowed: the per-request price of the exact limit on the hottest routes.
const UNIT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  -- Room comes back when the oldest member past the limit leaves the window.
  local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return {0, 0, math.ceil((tonumber(oldest[2]) + window - now) / 1000)}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local reset = tonumber(ARGV[2])
if count > 0 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  reset = math.ceil((tonumber(first[2]) + window - now) / 1000)
end
return {1, limit - count - 1, reset}
"#;

/// For ingest, where a request costs one unit per event: KEYS[1] is the window log (one member per
/// accepted request, `<unique>:<cost>`, scored by time in microseconds); KEYS[2] the sum of the
/// costs in the log, so a 1,000-event batch is one member, not a thousand. ARGV: limit, window_ms,
/// cost, member. Returns {allowed, remaining, reset_ms}.
const COST_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
local cost = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #expired > 0 then
  local gone = 0
  for _, m in ipairs(expired) do gone = gone + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('DECRBY', KEYS[2], gone)
end
local count = tonumber(redis.call('GET', KEYS[2]) or '0')
if count + cost > limit then
  -- Room for `cost` comes back when enough of the oldest members have left the window.
  local need = count + cost - limit
  local reset = tonumber(ARGV[2])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 999, 'WITHSCORES')
  for i = 1, #oldest, 2 do
    need = need - tonumber(string.match(oldest[i], ':(%d+)$'))
    if need <= 0 then
      reset = math.ceil((tonumber(oldest[i + 1]) + window - now) / 1000)
      break
    end
  end
  return {0, limit - count, reset}
end
redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. cost)
redis.call('INCRBY', KEYS[2], cost)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = math.ceil((tonumber(first[2]) + window - now) / 1000)
return {1, limit - count - cost, reset}
"#;

pub struct RateLimiterService {
    settings: RateLimitSettings,
    unit_script: redis::Script,
    cost_script: redis::Script,
    /// The multiplexed connection; calls run on clones of it, so concurrent checks pipeline over
    /// one socket instead of waiting for each other's round trips.
    conn: Mutex<Option<ConnectionManager>>,
    /// Held while (re)connecting, so a burst opens one connection, not one per request.
    connecting: tokio::sync::Mutex<()>,
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

impl RateLimiterService {
    pub fn new(settings: RateLimitSettings) -> RateLimiterService {
        telemetry::rate_limit_backend(false);
        let local = [
            local_limiter(settings.control),
            local_limiter(settings.ingest),
            local_limiter(settings.query),
            local_limiter(settings.auth_failures),
        ];
        RateLimiterService {
            unit_script: redis::Script::new(UNIT_SCRIPT),
            cost_script: redis::Script::new(COST_SCRIPT),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
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
            let mut conn = self.connection().await?;
            // Load the scripts once up front, so a first burst does not all hit NOSCRIPT.
            self.unit_script
                .prepare_invoke()
                .load_async(&mut conn)
                .await?;
            self.cost_script
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

    async fn open(&self) -> redis::RedisResult<ConnectionManager> {
        let c = redis::Client::open(self.settings.redis_url.as_str())?;
        let t = Duration::from_millis(self.settings.redis_timeout_ms.max(1));
        // No response timeout inside the manager: the deadline is applied per check instead.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(t)
            .set_number_of_retries(1);
        ConnectionManager::new_with_config(c, config).await
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
        let timeout = Duration::from_millis(self.settings.redis_timeout_ms);
        match tokio::time::timeout(timeout, self.invoke(class, client, limit, cost)).await {
            Ok(Ok((allowed, remaining, reset_ms))) => {
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
            Ok(Err(e)) => self.fall_back(&e.to_string()),
            Err(_) => self.fall_back("timed out"),
        }
    }

    async fn invoke(
        &self,
        class: RouteClass,
        client: u64,
        limit: Limit,
        cost: u32,
    ) -> redis::RedisResult<(i64, i64, i64)> {
        // One hash tag for both keys, so a Redis Cluster keeps them on one shard.
        let key = format!(
            "{}:{{{}:{:016x}}}",
            self.settings.key_prefix,
            class.as_str(),
            client
        );
        let member = format!(
            "{:016x}-{}",
            self.instance_nonce,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self.connection().await?;
        if class == RouteClass::Ingest {
            self.cost_script
                .key(format!("{key}:log"))
                .key(format!("{key}:sum"))
                .arg(limit.limit)
                .arg(limit.window_ms)
                .arg(cost)
                .arg(member)
                .invoke_async(&mut conn)
                .await
        } else {
            self.unit_script
                .key(format!("{key}:log"))
                .arg(limit.limit)
                .arg(limit.window_ms)
                .arg(member)
                .invoke_async(&mut conn)
                .await
        }
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

/// Client identities (API keys, addresses) never go to Redis or logs as they are.
fn hash(client: &str) -> u64 {
    let mut h = DefaultHasher::new();
    client.hash(&mut h);
    h.finish()
}
