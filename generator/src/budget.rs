//! The global rate budget shared by every generator instance through Redis.
//!
//! One Lua script, run atomically in Redis with Redis's own clock (`TIME`), hands out permits from a
//! per-second bucket (`<prefix>:budget:<unix second>`) up to `global_rate_per_second`, and records the
//! calling instance in `<prefix>:instances` (a sorted set of recent callers). A worker asks once per
//! batch, so Redis sees one round trip per batch, never one per event. When the bucket is spent the
//! worker sleeps until the next second.
//!
//! When Redis does not answer within `request_timeout_ms`, the instance falls back to its local share
//! (`global / instances seen last`) paced by a governor limiter, marks the backend `local`, and tries
//! Redis again a second later; once Redis answers it rejoins the global budget.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::telemetry;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    pub redis_url: String,
    /// The sum of all instances' rates; 0 turns the global budget off.
    pub global_rate_per_second: u32,
    /// Namespace of the budget keys; instances sharing a budget share the prefix.
    pub key_prefix: String,
    /// A Redis call slower than this counts as Redis being down.
    pub request_timeout_ms: u64,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            global_rate_per_second: 0,
            key_prefix: "logpipe".into(),
            request_timeout_ms: 100,
        }
    }
}

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local sec = tonumber(t[1])
local usec = tonumber(t[2])
local key = KEYS[1] .. ':budget:' .. sec
local used = tonumber(redis.call('GET', key) or '0')
local grant = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used)
if grant < 0 then grant = 0 end
if grant > 0 then
  redis.call('INCRBY', key, grant)
  redis.call('EXPIRE', key, 60)
end
local members = KEYS[1] .. ':instances'
local now_ms = sec * 1000 + math.floor(usec / 1000)
redis.call('ZADD', members, now_ms, ARGV[3])
redis.call('ZREMRANGEBYSCORE', members, '-inf', now_ms - 5000)
redis.call('PEXPIRE', members, 10000)
return {grant, 1000 - math.floor(usec / 1000), redis.call('ZCARD', members)}
"#;

pub struct GlobalBudget {
    settings: BudgetSettings,
    instance_id: String,
    script: redis::Script,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    local_backend: AtomicBool,
    instances: AtomicU32,
    /// After a Redis failure, stay local until then.
    retry_redis_at: Mutex<Option<Instant>>,
    /// The fallback limiter and the share it was built for.
    local: Mutex<Option<(u32, std::sync::Arc<DefaultDirectRateLimiter>)>>,
}

impl GlobalBudget {
    /// `None` when the global budget is off.
    pub fn new(settings: BudgetSettings, instance_id: String) -> Option<GlobalBudget> {
        if settings.global_rate_per_second == 0 {
            return None;
        }
        telemetry::budget_backend(false);
        Some(GlobalBudget {
            settings,
            instance_id,
            script: redis::Script::new(SCRIPT),
            conn: tokio::sync::Mutex::new(None),
            local_backend: AtomicBool::new(false),
            instances: AtomicU32::new(1),
            retry_redis_at: Mutex::new(None),
            local: Mutex::new(None),
        })
    }

    pub fn global_rate(&self) -> u32 {
        self.settings.global_rate_per_second
    }

    pub fn backend(&self) -> &'static str {
        if self.local_backend.load(Ordering::Relaxed) {
            "local"
        } else {
            "redis"
        }
    }

    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Wait until `n` permits are granted. Returns how many of them had to wait for a later second
    /// (rate-limited), or `None` when cancelled.
    pub async fn acquire(&self, n: u32, cancel: &CancellationToken) -> Option<u64> {
        let mut need = n;
        let mut limited = 0u64;
        while need > 0 {
            match self.ask(need).await {
                Some((grant, ms_left)) => {
                    let (left, wait) = after_grant(need, grant, ms_left);
                    need = left;
                    if let Some(wait) = wait {
                        if limited == 0 {
                            limited = u64::from(need);
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => return None,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
                None => {
                    let limiter = self.local_limiter();
                    let permits = NonZeroU32::new(need).expect("need > 0");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        r = limiter.until_n_ready(permits) => {
                            if r.is_err() {
                                // More than the local share's burst: take it in single permits.
                                for _ in 0..need {
                                    limiter.until_ready().await;
                                }
                            }
                        }
                    }
                    need = 0;
                }
            }
        }
        Some(limited)
    }

    /// One round trip: `(granted, ms until the next second)`, or `None` when Redis is unavailable.
    async fn ask(&self, want: u32) -> Option<(u32, u64)> {
        if let Some(at) = *self.retry_redis_at.lock().expect("lock") {
            if Instant::now() < at {
                return None;
            }
        }
        let timeout = Duration::from_millis(self.settings.request_timeout_ms);
        let result = tokio::time::timeout(timeout, self.invoke(want)).await;
        match result {
            Ok(Ok((grant, ms_left, instances))) => {
                self.instances.store(instances.max(1), Ordering::Relaxed);
                if self.local_backend.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis is back: rejoining the global budget");
                    telemetry::budget_backend(false);
                }
                *self.retry_redis_at.lock().expect("lock") = None;
                Some((grant, ms_left))
            }
            Ok(Err(e)) => self.fall_back(&e.to_string()),
            Err(_) => self.fall_back("timed out"),
        }
    }

    async fn invoke(&self, want: u32) -> redis::RedisResult<(u32, u64, u32)> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let client = redis::Client::open(self.settings.redis_url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_millis(self.settings.request_timeout_ms))
                .set_response_timeout(Duration::from_millis(self.settings.request_timeout_ms))
                .set_number_of_retries(1);
            *guard = Some(ConnectionManager::new_with_config(client, config).await?);
        }
        let conn = guard.as_mut().expect("connected above");
        self.script
            .key(&self.settings.key_prefix)
            .arg(self.settings.global_rate_per_second)
            .arg(want)
            .arg(&self.instance_id)
            .invoke_async(conn)
            .await
    }

    fn fall_back(&self, why: &str) -> Option<(u32, u64)> {
        if !self.local_backend.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                share = self.local_share(),
                "Redis unavailable: using the local share of the budget"
            );
            telemetry::budget_backend(true);
        }
        *self.retry_redis_at.lock().expect("lock") = Some(Instant::now() + Duration::from_secs(1));
        None
    }

    fn local_share(&self) -> u32 {
        local_share(self.settings.global_rate_per_second, self.instances())
    }

    fn local_limiter(&self) -> std::sync::Arc<DefaultDirectRateLimiter> {
        let share = self.local_share();
        let mut guard = self.local.lock().expect("lock");
        match &*guard {
            Some((s, l)) if *s == share => l.clone(),
            _ => {
                let rate = NonZeroU32::new(share).expect("share >= 1");
                let limiter = std::sync::Arc::new(RateLimiter::direct(Quota::per_second(rate)));
                *guard = Some((share, limiter.clone()));
                limiter
            }
        }
    }
}

/// After the shared budget granted `grant` of `need` with `ms_left` until its next second: what is
/// still needed, and how long to wait before asking again (none when all was granted).
fn after_grant(need: u32, grant: u32, ms_left: u64) -> (u32, Option<Duration>) {
    let left = need - grant.min(need);
    let wait = (left > 0).then(|| Duration::from_millis(ms_left.clamp(1, 1000)));
    (left, wait)
}

/// Without Redis, each of `instances` generators keeps to an equal share of the global rate (at
/// least one event a second, so none stalls).
fn local_share(global_rate: u32, instances: u32) -> u32 {
    (global_rate / instances.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_grant_waits_for_the_budgets_next_second_and_a_full_one_does_not() {
        assert_eq!(after_grant(500, 500, 300), (0, None));
        assert_eq!(after_grant(500, 800, 300), (0, None));
        assert_eq!(
            after_grant(500, 200, 300),
            (300, Some(Duration::from_millis(300)))
        );
        // A zero or odd wait from the script is bounded to 1 ms .. 1 s.
        assert_eq!(after_grant(5, 0, 0).1, Some(Duration::from_millis(1)));
        assert_eq!(
            after_grant(5, 0, 5_000).1,
            Some(Duration::from_millis(1000))
        );
    }

    #[test]
    fn the_local_share_splits_the_global_rate_and_never_reaches_zero() {
        assert_eq!(local_share(50_000, 2), 25_000);
        assert_eq!(local_share(50_000, 0), 50_000);
        assert_eq!(local_share(3, 10), 1);
    }
}
