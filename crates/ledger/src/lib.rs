//! The Redis ledger: the per-delivery dedupe state machine of
//! `herald_core::dedupe`, run atomically as Lua scripts and pipelined per batch.
//!
//! Each delivery is one hash `{prefix}d:{delivery_id}` with `state` (inflight,
//! released, or a settled state), `owner`, `epoch`, `lease_until` and
//! `takeovers`. Lease times come from the Redis server's clock, so workers with
//! skewed clocks still agree on when a lease has expired.

mod rate_limit;

pub use rate_limit::{Grant, RateDecision, RateLimiter};

use herald_core::dedupe::Claim;
use herald_core::DeliveryId;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError, Script, ServerErrorKind};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected ledger answer: {0}")]
    Protocol(String),
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

const CLAIM: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local e = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'lease_until', 'takeovers')
if not e[1] then
  redis.call('HSET', KEYS[1], 'state', 'inflight', 'owner', ARGV[1], 'epoch', 1,
             'lease_until', now + lease, 'takeovers', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed', 1, 0, ''}
end
if e[1] == 'released' then
  local epoch = tonumber(e[2]) + 1
  redis.call('HSET', KEYS[1], 'state', 'inflight', 'owner', ARGV[1], 'epoch', epoch,
             'lease_until', now + lease)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed', epoch, 0, ''}
end
if e[1] ~= 'inflight' then
  return {'settled', 0, 0, e[1]}
end
local lease_until = tonumber(e[3])
if lease_until > now then
  return {'busy', lease_until - now, 0, ''}
end
local epoch = tonumber(e[2]) + 1
local takeovers = tonumber(e[4]) + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'lease_until', now + lease,
           'takeovers', takeovers)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'takeover', epoch, takeovers, ''}
"#;

// A missing key means Redis lost the claim (it restarted empty) and nobody
// claimed the delivery since: the caller did send it, so its settle is
// recorded, not dropped; dropping it would let a later copy send it again.
const COMPLETE: &str = r#"
local e = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if e[1] and (e[1] ~= 'inflight' or tonumber(e[2]) ~= tonumber(ARGV[1])) then
  return 0
end
if not e[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_until', 'owner')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

const RELEASE: &str = r#"
local e = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if e[1] and (e[1] ~= 'inflight' or tonumber(e[2]) ~= tonumber(ARGV[1])) then
  return 0
end
if not e[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'takeovers', 0)
end
redis.call('HSET', KEYS[1], 'state', 'released')
redis.call('HDEL', KEYS[1], 'lease_until', 'owner')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Writes a settled state copied from PostgreSQL, unless the key exists (a
/// claim made since the loss is newer than the copy).
const SEED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'epoch', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Claims for a batch, and whether the ledger still holds what it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimBatch {
    pub claims: Vec<Claim>,
    /// False when the marker is gone: Redis restarted without persistence or
    /// failed over to a replica that missed writes, so a `Claimed` answer may
    /// be about a delivery that was settled before the loss.
    pub ledger_intact: bool,
}

/// One settle step for [`Ledger::complete_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Final state (`delivered`, `rejected`, `unknown`, `expired`, `failed`).
    Complete { state: String },
    /// Known not sent: free the claim for a retry.
    Release,
}

#[derive(Clone)]
pub struct Ledger {
    conn: ConnectionManager,
    prefix: String,
    owner: String,
    lease: Duration,
    horizon: Duration,
    claim: Script,
    complete: Script,
    release: Script,
    seed: Script,
}

/// A Redis client for `url`; for `rediss://` URLs, `ca_cert_pem` is the CA
/// that signed the server's certificate (None: the system's CAs).
pub fn client(url: &str, ca_cert_pem: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
    match ca_cert_pem {
        Some(root_cert) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        ),
        None => redis::Client::open(url),
    }
}

impl Ledger {
    pub async fn connect(
        client: redis::Client,
        prefix: &str,
        owner: &str,
        lease: Duration,
        horizon: Duration,
    ) -> Result<Self> {
        let conn = ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            owner: owner.to_string(),
            lease,
            horizon,
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
            seed: Script::new(SEED),
        })
    }

    pub fn key(&self, id: DeliveryId) -> String {
        format!("{}d:{}", self.prefix, id)
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn marker_key(&self) -> String {
        format!("{}ledger-marker", self.prefix)
    }

    /// Claims every delivery of a batch in one round trip, and checks the
    /// marker in the same pipeline.
    pub async fn claim_batch(&self, ids: &[DeliveryId]) -> Result<ClaimBatch> {
        let lease_ms = millis(self.lease);
        let horizon_ms = millis(self.horizon);
        let mut pipe = redis::pipe();
        pipe.exists(self.marker_key());
        for id in ids {
            pipe.invoke_script(
                self.claim
                    .key(self.key(*id))
                    .arg(&self.owner)
                    .arg(lease_ms)
                    .arg(horizon_ms),
            );
        }
        let (intact, answers): (bool, Vec<(String, i64, i64, String)>) = {
            let mut values: Vec<redis::Value> = self.query(&pipe).await?;
            if values.is_empty() {
                return Err(LedgerError::Protocol("empty pipeline answer".into()));
            }
            let marker = values.remove(0);
            let parse_error = |e: redis::ParsingError| LedgerError::Protocol(e.to_string());
            (
                redis::from_redis_value::<bool>(marker).map_err(parse_error)?,
                values
                    .into_iter()
                    .map(redis::from_redis_value)
                    .collect::<Result<_, _>>()
                    .map_err(parse_error)?,
            )
        };
        Ok(ClaimBatch {
            claims: answers
                .into_iter()
                .map(parse_claim)
                .collect::<Result<_>>()?,
            ledger_intact: intact,
        })
    }

    /// Declares the ledger complete: written once it holds every settled
    /// delivery of the dedupe horizon (after a rebuild, or on a first start
    /// against an empty history).
    pub async fn mark_intact(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(self.marker_key())
            .arg(&self.owner)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// One rebuilder at a time: true if this process got the lock.
    pub async fn try_rebuild_lock(&self, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}ledger-rebuild-lock", self.prefix))
            .arg(&self.owner)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Copies settled states into the ledger where it has no entry.
    pub async fn seed_settled(&self, settled: &[(DeliveryId, &str)]) -> Result<usize> {
        if settled.is_empty() {
            return Ok(0);
        }
        let horizon_ms = millis(self.horizon);
        let mut pipe = redis::pipe();
        for (id, state) in settled {
            pipe.invoke_script(self.seed.key(self.key(*id)).arg(*state).arg(horizon_ms));
        }
        let written: Vec<i64> = self.query(&pipe).await?;
        Ok(written.into_iter().filter(|w| *w == 1).count())
    }

    /// Settles claimed deliveries; each answer says whether our epoch was
    /// still current (false: a newer owner took over, and its outcome stands).
    pub async fn complete_batch(&self, items: &[(DeliveryId, u64, Settle)]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let horizon_ms = millis(self.horizon);
        let mut pipe = redis::pipe();
        for (id, epoch, settle) in items {
            match settle {
                Settle::Complete { state } => pipe.invoke_script(
                    self.complete
                        .key(self.key(*id))
                        .arg(*epoch)
                        .arg(state)
                        .arg(horizon_ms),
                ),
                Settle::Release => {
                    pipe.invoke_script(self.release.key(self.key(*id)).arg(*epoch).arg(horizon_ms))
                }
            };
        }
        let answers: Vec<i64> = self.query(&pipe).await?;
        Ok(answers.into_iter().map(|a| a == 1).collect())
    }

    /// Runs a pipeline of EVALSHAs, loading the scripts once if Redis does not
    /// know them (first use, or after a restart emptied its script cache). A
    /// NOSCRIPT fails every call of the pipeline alike, so the retry is safe.
    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let mut conn = self.conn.clone();
        match pipe.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                for script in [&self.claim, &self.complete, &self.release, &self.seed] {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                Ok(pipe.query_async(&mut conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_claim((kind, a, b, state): (String, i64, i64, String)) -> Result<Claim> {
    let as_u64 = |v: i64| u64::try_from(v).map_err(|_| LedgerError::Protocol(format!("{v}")));
    Ok(match kind.as_str() {
        "claimed" => Claim::Claimed { epoch: as_u64(a)? },
        "takeover" => Claim::TakenOver {
            epoch: as_u64(a)?,
            takeovers: u32::try_from(b).map_err(|_| LedgerError::Protocol(format!("{b}")))?,
        },
        "busy" => Claim::Busy { retry_in_ms: a },
        "settled" => Claim::Settled { state },
        other => return Err(LedgerError::Protocol(other.to_string())),
    })
}
