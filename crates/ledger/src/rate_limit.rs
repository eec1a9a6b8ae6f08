//! Per-key request rate limits: a fixed one-second window per key in Redis.

use redis::aio::ConnectionManager;
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

#[derive(Clone)]
pub struct RateLimiter {
    conn: ConnectionManager,
    prefix: String,
    hit: Script,
}

/// Whether a request may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Over the limit: retry after this long.
    Limited(Duration),
}

impl RateLimiter {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let conn = ConnectionManager::new(redis::Client::open(url)?).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            hit: Script::new(HIT),
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
            .key(format!("{}rl:{subject}", self.prefix))
            .invoke_async(&mut conn)
            .await?;
        Ok(if count > per_second {
            RateDecision::Limited(Duration::from_millis(left_ms.max(1)))
        } else {
            RateDecision::Allow
        })
    }
}
