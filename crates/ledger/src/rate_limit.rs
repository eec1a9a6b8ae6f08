//! Per-key request rate limits: a fixed one-second window per key in Redis.
//!
//! Each script derives its window keys from the keys it is given, so every
//! key carries a hash tag: on a Redis Cluster they all live in one slot.

use crate::{RedisConnection, RedisEndpoint};
use redis::Script;
use std::time::Duration;

/// Counts a request in the current second's window; returns the count and the
/// milliseconds left in the window.
const HIT: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[2]) / 1000
local key = KEYS[1] .. ':' .. t[1]
local n = redis.call('INCR', key)
if n == 1 then
  redis.call('PEXPIRE', key, 2000)
end
return {n, math.floor(1000 - ms)}
"#;

/// Takes up to ARGV[1] permits from every limit in KEYS (one hash slot) at once, each with
/// its own per-second rate (ARGV[2..]); grants what the tightest allows.
/// Windows are 100 ms, each allowed a tenth of the rate (the remainder spread
/// over the second), so that a rate is steady within the second, not a burst
/// at its start.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = math.floor(now_ms / 100)
local slot = window % 10
local grant = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  local rate = tonumber(ARGV[i + 1])
  local allowed = math.floor((slot + 1) * rate / 10) - math.floor(slot * rate / 10)
  local used = tonumber(redis.call('GET', k .. ':w' .. window) or '0')
  local left = allowed - used
  if left < grant then grant = left end
end
if grant < 0 then grant = 0 end
if grant > 0 then
  for _, k in ipairs(KEYS) do
    local key = k .. ':w' .. window
    redis.call('INCRBY', key, grant)
    redis.call('PEXPIRE', key, 1000)
  end
end
return {grant, 100 - (now_ms % 100)}
"#;

#[derive(Clone)]
pub struct RateLimiter {
    conn: RedisConnection,
    prefix: String,
    hit: Script,
    take: Script,
}

/// Permits granted by [`RateLimiter::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// Until the current 100 ms window ends.
    pub window_left: Duration,
}

/// Whether a request may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Over the limit: retry after this long.
    Limited(Duration),
}

impl RateLimiter {
    pub async fn connect(
        endpoint: &RedisEndpoint,
        prefix: &str,
    ) -> Result<Self, redis::RedisError> {
        let conn = RedisConnection::connect(endpoint).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            hit: Script::new(HIT),
            take: Script::new(TAKE),
        })
    }

    /// Counts one request for `subject` against `per_second`.
    pub async fn hit(
        &self,
        subject: &str,
        per_second: u64,
    ) -> Result<RateDecision, redis::RedisError> {
        let mut conn = self.conn.clone();
        let (count, left_ms): (u64, u64) = self
            .hit
            .key(format!("{}rl:{{{subject}}}", self.prefix))
            .invoke_async(&mut conn)
            .await?;
        Ok(if count > per_second {
            RateDecision::Limited(Duration::from_millis(left_ms.max(1)))
        } else {
            RateDecision::Allow
        })
    }

    /// Takes up to `wanted` permits from several limits of one `group` at
    /// once (a campaign's and its app's, grouped by app): the grant is what
    /// the tightest allows in the current 100 ms window.
    pub async fn take(
        &self,
        group: &str,
        limits: &[(&str, u64)],
        wanted: u64,
    ) -> Result<Grant, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.take.prepare_invoke();
        invocation.arg(wanted);
        for (subject, per_second) in limits {
            invocation
                .key(format!("{}rl:{{{group}}}:{subject}", self.prefix))
                .arg(*per_second);
        }
        let (granted, left_ms): (u64, u64) = invocation.invoke_async(&mut conn).await?;
        Ok(Grant {
            granted,
            window_left: Duration::from_millis(left_ms.max(1)),
        })
    }
}
