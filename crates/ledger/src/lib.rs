//! The Redis ledger: the per-delivery dedupe state machine of
//! `herald_core::dedupe`, run atomically as Lua scripts: a batch's claims,
//! or its settles, in one script call (one per bucket on a cluster).
//!
//! Each delivery is one string `{prefix}d:{delivery_id}`: its state
//! (inflight, released, or a settled state), epoch and takeovers, and for a
//! claim in flight its lease's end and owner (see `entry_reader!`). Lease
//! times come from the Redis server's clock, so workers with skewed clocks
//! still agree on when a lease has expired.
//!
//! On a Redis Cluster every key a script touches must be in one hash slot,
//! and each shard can lose its data on its own. There the delivery keys carry
//! a hash tag naming one of 256 buckets (`{prefix}d:{b3f}:{delivery_id}`), and
//! each bucket has its own marker in its slot, checked by the claims that land
//! there: a shard that restarted empty is noticed by the claims it serves.
//!
//! A marker only notices a Redis that lost everything. A Redis that lost some
//! writes (an AOF `everysec` crash, a failover to a replica that missed
//! writes) keeps it. So every settle also counts a write sequence in its
//! scope (the ledger, or its bucket), the outcome carries it to PostgreSQL,
//! and a Redis showing a lower sequence than one already recorded, or than
//! one a sender already saw, has gone back in time: the ledger is declared
//! lost and rebuilt as after a restart.

mod connection;
mod rate_limit;

pub use connection::{RedisConnection, RedisEndpoint, RedisTarget};
pub use rate_limit::{Grant, RateDecision, RateLimiter};

use herald_core::dedupe::Claim;
use herald_core::{DeliveryId, LedgerMark};
use redis::{ErrorKind, RedisError, Script, ScriptInvocation, ServerErrorKind};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected ledger answer: {0}")]
    Protocol(String),
    /// A replica that is online did not acknowledge the writes in time: a
    /// failover to it now would lose them, so nothing may be sent on them.
    #[error("Redis replicas acknowledged the ledger's writes {acked} of {needed} within the wait")]
    NotReplicated { acked: u64, needed: u64 },
    /// Redis turned the claims down before writing any of them (connection
    /// refused, writes refused): none of the batch is claimed.
    #[error("Redis refused the claims, none written: {0}")]
    ClaimsRefused(RedisError),
}

/// Whether Redis refused a call before it ran, or at its first write (the
/// conditions behind these refusals hold for a whole script): a call that
/// failed so wrote nothing.
fn refused_before_writing(e: &RedisError) -> bool {
    if e.is_connection_refusal() {
        return true;
    }
    // A script's error in a pipeline comes wrapped, its code inside.
    e.clone().into_server_errors().is_some_and(|errors| {
        !errors.is_empty()
            && errors.iter().all(|(_, error)| {
                matches!(
                    error.code(),
                    "NOREPLICAS" | "READONLY" | "LOADING" | "MASTERDOWN" | "MISCONF"
                )
            })
    })
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

// Every script that reads a delivery's entry starts with this. An entry is
// one string: "inflight <epoch> <takeovers> <lease_until_ms> <owner>" for a
// claim in flight (the owner last: it may hold spaces), "released <epoch>
// <takeovers>", or "<settled state> <epoch>" (a settled delivery is never
// claimed again, so its doubts are not kept). A fresh claim is one SET NX
// and a settle of one's own claim one SET … GET, instead of a hash's HMGET,
// HSET, PEXPIRE, HDEL and INCR: half of Redis's time per delivery
// (docs/benchmarks.md, eighth sitting).
//
// `entry(key)` answers state, epoch, takeovers, lease_until and owner as
// strings (nil state: no entry), and whether the entry is a hash written by
// Herald before entries were strings: such an entry is read field by field
// and rewritten as a string by the next step that changes it, so an upgrade
// keeps every claim and settle (earlier senders cannot read strings: they
// are stopped first, docs/deployment.md). An entry that is neither fails
// the call: the ledger does not guess. `clock()` is Redis's time in ms.
macro_rules! entry_reader {
    () => {
        r#"
local function parse(v)
  local state, epoch, takeovers, lease_until, owner =
    string.match(v, '^(%S+) (%d+) ?(%d*) ?(%d*) ?(.*)$')
  if not state or (state == 'inflight' and lease_until == '') then
    return nil
  end
  if takeovers == '' then
    takeovers = '0'
  end
  return state, epoch, takeovers, lease_until, owner
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Whether a pcall's reply is WRONGTYPE (a hash an earlier release wrote);
-- any other error is raised.
local function is_hash(reply)
  if type(reply) ~= 'table' then
    return false
  end
  if reply.err and string.find(reply.err, 'WRONGTYPE', 1, true) then
    return true
  end
  error(reply)
end
local function entry(key)
  local v = redis.pcall('GET', key)
  if is_hash(v) then
    local e = redis.call('HMGET', key, 'state', 'epoch', 'takeovers', 'lease_until', 'owner')
    return e[1], e[2] or '0', e[3] or '0', e[4] or '', e[5] or '', true
  end
  if not v then
    return nil
  end
  local state, epoch, takeovers, lease_until, owner = parse(v)
  if not state then
    error('herald ledger: unreadable entry at ' .. key)
  end
  return state, epoch, takeovers, lease_until, owner, false
end
"#
    };
}

// Claims a batch's deliveries in one scope (the whole ledger on one Redis,
// one bucket on a cluster) in one call: KEYS[1] the scope's marker, KEYS[2]
// its write sequence, then one delivery key per claim; ARGV the owner, the
// lease, and the claim's time to live (the lease plus the horizon, so that a
// settle within the lease keeps it: see SETTLE). One call per batch, not one
// per delivery, is a third less of Redis's time (the script's set-up, the
// marker, sequence and clock read once); the lease's end is formatted once
// per call, not per claim (Lua formats numbers as floating point).
//
// An owner is one sender round: a round that runs its claims again (the
// first answer was lost, or Redis's replicas did not hold them in time) gets
// its own claims back, keeping their epoch and doubt, even once their lease
// ran out: a round claims again only before it has sent anything, so its
// own expired claim is no takeover. A released delivery with doubts
// (`takeovers`) is claimed as a takeover: an earlier attempt may have
// reached the device.
//
// Answers, one string per claim: "claimed <epoch>", "takeover <epoch>
// <takeovers>", "busy <ms until the lease ends>" or "settled <state>".
const CLAIM: &str = concat!(
    entry_reader!(),
    r#"
local intact = redis.call('EXISTS', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local now = clock()
local owner = ARGV[1]
local tail = ' ' .. string.format('%d', now + tonumber(ARGV[2])) .. ' ' .. owner
local ttl = ARGV[3]
local fresh = 'inflight 1 0' .. tail
local function claimed(key, epoch, takeovers)
  redis.call('SET', key, 'inflight ' .. epoch .. ' ' .. takeovers .. tail, 'PX', ttl)
  if takeovers == '0' then
    return 'claimed ' .. epoch
  end
  return 'takeover ' .. epoch .. ' ' .. takeovers
end
local function claim(key)
  if redis.call('SET', key, fresh, 'PX', ttl, 'NX') then
    return 'claimed 1'
  end
  -- The key exists (SET NX refused), so there is an entry.
  local state, epoch, takeovers, lease_until, holder = entry(key)
  if state == 'released' then
    return claimed(key, string.format('%d', epoch + 1), takeovers)
  end
  if state ~= 'inflight' then
    return 'settled ' .. state
  end
  if holder == owner then
    return claimed(key, epoch, takeovers)
  end
  local left = tonumber(lease_until) - now
  if left > 0 then
    return 'busy ' .. string.format('%d', left)
  end
  return claimed(key, string.format('%d', epoch + 1), string.format('%d', takeovers + 1))
end
local answers = {}
for i = 3, #KEYS do
  answers[i - 2] = claim(KEYS[i])
end
return {intact, seq, answers}
"#
);

// Settles a batch's deliveries in one scope in one call: KEYS[1] the
// scope's write sequence, then one delivery key per settle; ARGV[1] the
// horizon, then per settle its epoch and its state ('' releases). An answer
// per settle, in order.
//
// A settle within the claim's lease keeps the entry's time to live (the
// lease's end plus the horizon, at least a horizon from now); any other
// gets a horizon from now.
//
// Completing: a missing key means Redis lost the claim (it restarted empty)
// and nobody claimed the delivery since: the caller did send it, so its
// settle is recorded, not dropped; dropping it would let a later copy send
// it again. Settling again in the same words (the first answer was lost) is
// the same settle. Answers: 0 not ours; -1 ours, already settled; else ours,
// and the scope's write sequence after it (one INCRBY per call, each
// complete numbered in order within it).
//
// Releasing (the doubts, `takeovers`, stay: a later claim is a takeover):
// 1 ours (or released already), 0 not ours.
const SETTLE: &str = concat!(
    entry_reader!(),
    r#"
local horizon = ARGV[1]
local now = clock()
local function settle(key, epoch, state)
  local current, e, takeovers, lease_until, _, legacy = entry(key)
  if current == state and e == epoch then
    return false
  end
  if current and (current ~= 'inflight' or e ~= epoch) then
    return 0
  end
  local value = state .. ' ' .. epoch
  if state == 'released' then
    value = value .. ' ' .. (takeovers or '0')
  end
  if current and not legacy and tonumber(lease_until) > now then
    redis.call('SET', key, value, 'KEEPTTL')
  else
    redis.call('SET', key, value, 'PX', horizon)
  end
  return true
end
-- A complete writes first and reads what it replaced (one call where a
-- settle of one's own claim is the rule), and puts that back when the
-- claim was not its own.
local function complete(key, epoch, state)
  local value = state .. ' ' .. epoch
  local old = redis.pcall('SET', key, value, 'KEEPTTL', 'GET')
  if is_hash(old) then
    return settle(key, epoch, state)
  end
  if not old then
    redis.call('PEXPIRE', key, horizon)
    return true
  end
  local s, e, _, lease_until = parse(old)
  if s == 'inflight' and e == epoch then
    if not (tonumber(lease_until) > now) then
      redis.call('PEXPIRE', key, horizon)
    end
    return true
  end
  redis.call('SET', key, old, 'KEEPTTL')
  if not s then
    error('herald ledger: unreadable entry at ' .. key)
  end
  if s == state and e == epoch then
    return false
  end
  return 0
end
-- A settle that fails (an entry the ledger cannot read) does not stop the
-- others, and the call fails only once every write it made is counted in
-- the sequence.
local answers = {}
local completed = {}
local failure
for i = 2, #KEYS do
  local epoch = string.format('%d', ARGV[2 * i - 2])
  local state = ARGV[2 * i - 1]
  if state == '' then
    local ok, done = pcall(settle, KEYS[i], epoch, 'released')
    if not ok then
      failure = failure or done
    end
    answers[i - 1] = done == 0 and 0 or 1
  else
    local ok, done = pcall(complete, KEYS[i], epoch, state)
    if not ok then
      failure = failure or done
    elseif done == true then
      completed[#completed + 1] = i - 1
    end
    answers[i - 1] = done == 0 and 0 or -1
  end
end
if #completed > 0 then
  local last = redis.call('INCRBY', KEYS[1], #completed)
  for j, at in ipairs(completed) do
    answers[at] = last - #completed + j
  end
end
if failure then
  error(failure)
end
return answers
"#
);

/// Raises a scope's write sequence to at least ARGV[1] (a rebuilt ledger
/// starts where PostgreSQL's record of it ended).
const RAISE: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"#;

// Before an owner resends after an unknown outcome: whoever claims the
// delivery after it gets a takeover, and no resend of its own. ARGV the
// owner, the epoch and the horizon (the entry keeps a horizon past its
// lease).
const DOUBT: &str = concat!(
    entry_reader!(),
    r#"
local state, epoch, takeovers, lease_until, owner = entry(KEYS[1])
if state ~= 'inflight' or owner ~= ARGV[1] or tonumber(epoch) ~= tonumber(ARGV[2]) then
  return 0
end
local now = clock()
local until_ms = tonumber(lease_until) or now
redis.call('SET', KEYS[1], 'inflight ' .. epoch .. ' ' .. string.format('%d', takeovers + 1)
  .. ' ' .. string.format('%d', until_ms) .. ' ' .. owner,
  'PX', string.format('%d', math.max(until_ms - now, 0) + tonumber(ARGV[3])))
return 1
"#
);

// Gives up a claim made while the ledger is lost and not yet trusted: the
// key goes, so that the claim of a send in flight at the loss can be written
// back by its owner's renewal.
const ABANDON: &str = concat!(
    entry_reader!(),
    r#"
local state, epoch, _, _, owner = entry(KEYS[1])
if state == 'inflight' and owner == ARGV[1] and tonumber(epoch) == tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#
);

// Extends the lease of a send still outstanding (ARGV the owner, the epoch,
// the lease and the claim's time to live, the lease plus the horizon). A
// claim Redis forgot is written back: the send may yet reach the device.
const RENEW: &str = concat!(
    entry_reader!(),
    r#"
local state, epoch, takeovers, _, owner = entry(KEYS[1])
if state and (state ~= 'inflight' or owner ~= ARGV[1] or tonumber(epoch) ~= tonumber(ARGV[2])) then
  return 0
end
local now = clock()
redis.call('SET', KEYS[1], 'inflight ' .. ARGV[2] .. ' ' .. (takeovers or '0') .. ' '
  .. string.format('%d', now + tonumber(ARGV[3])) .. ' ' .. ARGV[1], 'PX', ARGV[4])
return 1
"#
);

/// Writes a settled state copied from PostgreSQL, unless the key exists (a
/// claim made since the loss is newer than the copy).
const SEED: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1] .. ' 0', 'PX', ARGV[2], 'NX') then
  return 1
end
return 0
"#;

/// Claims for a batch, and whether the ledger still holds what it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimBatch {
    pub claims: Vec<Claim>,
    /// False when the marker is gone: Redis restarted without persistence or
    /// failed over to a replica that missed writes, so a `Claimed` answer may
    /// be about a delivery that was settled before the loss.
    pub ledger_intact: bool,
    /// The lowest write sequence each scope showed to this batch's claims.
    pub seqs: HashMap<String, u64>,
}

/// The ledger's answer to one settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// False: a newer owner took over, and its outcome stands.
    pub ours: bool,
    /// The write this settle made, for its outcome to carry (None: not
    /// ours, or settled already by an earlier try, or a release).
    pub mark: Option<LedgerMark>,
}

/// What Redis says of its eviction: a ledger key evicted is a claim
/// forgotten, with nothing to tell it from one never made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// `maxmemory` in bytes (0: no limit, so nothing is ever evicted).
    pub maxmemory: u64,
    pub policy: String,
    pub evicted_keys: u64,
}

impl Eviction {
    /// Why this Redis may drop ledger keys, if it may.
    pub fn risk(&self) -> Option<String> {
        if self.maxmemory > 0 && self.policy != "noeviction" {
            return Some(format!(
                "Redis evicts keys when full (maxmemory {} bytes, maxmemory-policy {}): the ledger needs maxmemory-policy noeviction",
                self.maxmemory, self.policy
            ));
        }
        if self.evicted_keys > 0 {
            return Some(format!(
                "Redis has evicted {} keys since it started: ledger claims may be gone",
                self.evicted_keys
            ));
        }
        None
    }
}

/// One settle step for [`Ledger::complete_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Final state (`delivered`, `rejected`, `unknown`, `expired`, `failed`).
    Complete { state: String },
    /// Known not sent: free the claim for a retry.
    Release,
}

/// How many replicas must hold a claim or a settle before the sender acts
/// on it (Redis `WAIT`). A Sentinel failover promotes a replica and loses
/// what it had not received: a claim lost while its send is at the provider
/// lets a copy of the job claim the delivery afresh and send it again.
///
/// The count is a floor, not "as many as are online": a primary whose
/// replica went away may be the one that is cut off while Sentinel promotes
/// that replica, and whatever it takes then is lost when it is demoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// 0: never wait.
    pub acks: u64,
    /// How long one batch of writes waits for them.
    pub timeout: Duration,
}

impl Replication {
    pub const NONE: Replication = Replication {
        acks: 0,
        timeout: Duration::ZERO,
    };
}

#[derive(Clone)]
pub struct Ledger {
    conn: RedisConnection,
    /// Claims and settles that wait for replicas go on a connection of
    /// their own: `WAIT` blocks its connection until the replicas answer,
    /// and renewals queued behind it on the same connection could let
    /// leases run out while a replica is slow.
    waited: RedisConnection,
    layout: KeyLayout,
    replication: Replication,
    owner: String,
    lease: Duration,
    horizon: Duration,
    claim: Script,
    settle: Script,
    renew: Script,
    doubt: Script,
    seed: Script,
    raise: Script,
    abandon: Script,
}

/// How the ledger names its keys; see the crate's documentation.
#[derive(Debug, Clone)]
struct KeyLayout {
    prefix: String,
    /// Hash-tagged buckets, each with its own marker (Redis Cluster).
    bucketed: bool,
}

impl KeyLayout {
    /// One of 256 buckets: enough to spread the keys over any realistic
    /// number of shards. The last byte of a UUIDv5 is hash output, so the
    /// buckets fill evenly.
    fn bucket(id: DeliveryId) -> u8 {
        id.0.as_bytes()[15]
    }

    fn delivery(&self, id: DeliveryId) -> String {
        if self.bucketed {
            format!("{}d:{{b{:02x}}}:{id}", self.prefix, Self::bucket(id))
        } else {
            format!("{}d:{id}", self.prefix)
        }
    }

    fn markers(&self) -> Vec<String> {
        self.scopes().iter().map(|s| self.scope_marker(s)).collect()
    }

    /// The scope a delivery's key is in: "" for the whole ledger on one
    /// Redis, its bucket ("b3f") on a cluster.
    fn scope_of(&self, id: DeliveryId) -> String {
        if self.bucketed {
            format!("b{:02x}", Self::bucket(id))
        } else {
            String::new()
        }
    }

    /// The positions of `ids` per scope, in the order given within each:
    /// what one script call may touch (every key of a scope is in one slot).
    fn group_by_scope(&self, ids: &[DeliveryId]) -> Vec<(String, Vec<usize>)> {
        let mut scopes: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, id) in ids.iter().enumerate() {
            scopes.entry(self.scope_of(*id)).or_default().push(i);
        }
        scopes.into_iter().collect()
    }

    fn scopes(&self) -> Vec<String> {
        if self.bucketed {
            (0..=u8::MAX).map(|b| format!("b{b:02x}")).collect()
        } else {
            vec![String::new()]
        }
    }

    fn scope_marker(&self, scope: &str) -> String {
        if scope.is_empty() {
            format!("{}ledger-marker", self.prefix)
        } else {
            format!("{}ledger-marker:{{{scope}}}", self.prefix)
        }
    }

    fn seq(&self, scope: &str) -> String {
        if scope.is_empty() {
            format!("{}ledger-seq", self.prefix)
        } else {
            format!("{}ledger-seq:{{{scope}}}", self.prefix)
        }
    }
}

impl Ledger {
    pub async fn connect(
        endpoint: &RedisEndpoint,
        prefix: &str,
        owner: &str,
        lease: Duration,
        horizon: Duration,
    ) -> Result<Self> {
        let conn = RedisConnection::connect(endpoint).await?;
        let waited = RedisConnection::connect(endpoint).await?;
        Ok(Self {
            layout: KeyLayout {
                prefix: prefix.to_string(),
                bucketed: conn.is_cluster(),
            },
            conn,
            waited,
            replication: Replication::NONE,
            owner: owner.to_string(),
            lease,
            horizon,
            claim: Script::new(CLAIM),
            settle: Script::new(SETTLE),
            renew: Script::new(RENEW),
            doubt: Script::new(DOUBT),
            seed: Script::new(SEED),
            raise: Script::new(RAISE),
            abandon: Script::new(ABANDON),
        })
    }

    /// Claims and settles wait for `replication` (on one Redis; a cluster's
    /// shards are not waited for).
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// The Redis key of a delivery's state.
    pub fn key(&self, id: DeliveryId) -> String {
        self.layout.delivery(id)
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Who holds the claims of one sender round.
    fn round_owner(&self, round: &str) -> String {
        format!("{}/{round}", self.owner)
    }

    /// Claims every delivery of a batch in one round trip: one script call
    /// on a single server, one per bucket on a cluster, all at once; each
    /// claim also checks its scope's marker. `round` names the sender's
    /// round: claiming again in the same round returns its claims.
    pub async fn claim_batch(&self, ids: &[DeliveryId], round: &str) -> Result<ClaimBatch> {
        let owner = self.round_owner(round);
        let lease_ms = millis(self.lease);
        let ttl_ms = lease_ms.saturating_add(millis(self.horizon));
        let scopes = self.layout.group_by_scope(ids);
        let invocations: Vec<_> = scopes
            .iter()
            .map(|(scope, members)| {
                let mut invocation = self.claim.key(self.layout.scope_marker(scope));
                invocation.key(self.layout.seq(scope));
                for &i in members {
                    invocation.key(self.key(ids[i]));
                }
                invocation.arg(&owner).arg(lease_ms).arg(ttl_ms);
                invocation
            })
            .collect();
        type ScopeClaims = (i64, i64, Vec<String>);
        let answers: Vec<ScopeClaims> = match self.run_replicated(&invocations).await {
            Ok(answers) => answers,
            // With one scope there is one call: refused, it claimed nothing
            // (with several, another scope's call may have been written).
            Err(LedgerError::Redis(e)) if invocations.len() == 1 && refused_before_writing(&e) => {
                return Err(LedgerError::ClaimsRefused(e))
            }
            Err(e) => return Err(e),
        };
        let mut claims: Vec<Option<Claim>> = vec![None; ids.len()];
        let mut ledger_intact = true;
        let mut seqs = HashMap::new();
        for ((scope, members), (intact, seq, scope_claims)) in scopes.into_iter().zip(answers) {
            if scope_claims.len() != members.len() {
                return Err(LedgerError::Protocol(format!(
                    "{} claims answered for {}",
                    scope_claims.len(),
                    members.len()
                )));
            }
            ledger_intact &= intact == 1;
            seqs.insert(scope, u64::try_from(seq).unwrap_or(0));
            for (i, answer) in members.into_iter().zip(scope_claims) {
                claims[i] = Some(parse_claim(&answer)?);
            }
        }
        Ok(ClaimBatch {
            claims: claims
                .into_iter()
                .map(|c| c.ok_or_else(|| LedgerError::Protocol("a claim went unanswered".into())))
                .collect::<Result<_>>()?,
            ledger_intact,
            seqs,
        })
    }

    /// Declares the ledger complete: written once it holds every settled
    /// delivery of the dedupe horizon (after a rebuild, or on a first start
    /// against an empty history). Each scope's write sequence is raised to
    /// the highest PostgreSQL recorded (`floors`), so that the rebuilt
    /// ledger is not taken for one that went back in time.
    pub async fn mark_intact(&self, floors: &HashMap<String, u64>) -> Result<()> {
        self.mark_intact_unless_lost_since(floors, None)
            .await
            .map(|_| ())
    }

    /// [`Self::mark_intact`], unless the loss count is no longer `losses`
    /// (a loss was declared since the rebuild read it): then nothing is
    /// marked, and false. On one Redis the check and the marker are one
    /// script; on a cluster (markers in every slot) the check comes just
    /// before.
    pub async fn mark_intact_unless_lost_since(
        &self,
        floors: &HashMap<String, u64>,
        losses: Option<u64>,
    ) -> Result<bool> {
        let raises: Vec<_> = self
            .layout
            .scopes()
            .into_iter()
            .filter_map(|scope| {
                let floor = *floors.get(&scope)?;
                let mut invocation = self.raise.key(self.layout.seq(&scope));
                invocation.arg(floor);
                Some(invocation)
            })
            .collect();
        let _: Vec<i64> = self.run(&raises).await?;
        let markers = self.layout.markers();
        if self.conn.is_cluster() {
            if let Some(expected) = losses {
                if self.losses().await? != expected {
                    return Ok(false);
                }
            }
            futures::future::try_join_all(markers.iter().map(|m| {
                let mut conn = self.conn.clone();
                let mut set = redis::cmd("SET");
                set.arg(m).arg(&self.owner);
                async move { set.query_async::<()>(&mut conn).await }
            }))
            .await?;
            return Ok(true);
        }
        let mut conn = self.conn.clone();
        let marked: i64 = redis::Script::new(
            "if ARGV[1] ~= '' and tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then
               return 0
             end
             for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[2]) end
             return 1",
        )
        .key(self.losses_key())
        .key(markers)
        .arg(losses.map(|l| l.to_string()).unwrap_or_default())
        .arg(&self.owner)
        .invoke_async(&mut conn)
        .await?;
        Ok(marked == 1)
    }

    /// Deletes the markers of `scopes`: every claim there now sees the
    /// ledger as lost (it went back in time), falls back to PostgreSQL, and
    /// a rebuild starts. Each scope's write sequence is then raised to the
    /// highest the caller had seen there: sequences stay monotonic across
    /// a loss, so that the ledger losing writes *again* (a second failover
    /// before the rebuild) shows as going back once more. The loss count
    /// goes up, and a rebuild that began before it does not mark the ledger
    /// intact ([`Self::losses`]).
    pub async fn declare_lost(&self, scopes: &[(String, u64)]) -> Result<()> {
        // Counted first: a rebuild that reads the count after this cannot
        // have read PostgreSQL before the loss, and one that read it before
        // finds it changed when it would mark.
        let mut conn = self.conn.clone();
        redis::cmd("INCR")
            .arg(self.losses_key())
            .query_async::<()>(&mut conn)
            .await?;
        futures::future::try_join_all(scopes.iter().map(|(scope, _)| {
            let mut conn = self.conn.clone();
            let marker = self.layout.scope_marker(scope);
            async move {
                redis::cmd("DEL")
                    .arg(marker)
                    .query_async::<()>(&mut conn)
                    .await
            }
        }))
        .await?;
        let raises: Vec<_> = scopes
            .iter()
            .map(|(scope, seen)| {
                let mut invocation = self.raise.key(self.layout.seq(scope));
                invocation.arg(*seen);
                invocation
            })
            .collect();
        let _: Vec<i64> = self.run(&raises).await?;
        Ok(())
    }

    /// Whether every scope has its marker (the ledger is complete).
    pub async fn intact(&self) -> Result<bool> {
        let present =
            futures::future::try_join_all(self.layout.markers().into_iter().map(|marker| {
                let mut conn = self.conn.clone();
                async move {
                    redis::cmd("EXISTS")
                        .arg(marker)
                        .query_async::<i64>(&mut conn)
                        .await
                }
            }))
            .await?;
        Ok(present.iter().all(|&n| n == 1))
    }

    /// How many losses were declared (as Redis remembers it).
    pub async fn losses(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("GET")
            .arg(self.losses_key())
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }

    fn losses_key(&self) -> String {
        format!("{}ledger-losses", self.layout.prefix)
    }

    /// Every scope's write sequence as Redis has it now.
    pub async fn read_seqs(&self) -> Result<HashMap<String, u64>> {
        let scopes = self.layout.scopes();
        let seqs = futures::future::try_join_all(scopes.iter().map(|scope| {
            let mut conn = self.conn.clone();
            let key = self.layout.seq(scope);
            async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            }
        }))
        .await?;
        Ok(scopes
            .into_iter()
            .zip(seqs)
            .map(|(scope, seq)| (scope, seq.unwrap_or(0)))
            .collect())
    }

    /// Reads `maxmemory`, `maxmemory-policy` and `evicted_keys` from INFO
    /// (allowed where CONFIG is not, as on most managed Redis). On a
    /// cluster, the worst of its nodes.
    pub async fn eviction(&self) -> Result<Eviction> {
        let mut worst: Option<Eviction> = None;
        for text in self.info(&["memory", "stats"]).await? {
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            };
            let Some(policy) = field("maxmemory_policy") else {
                continue;
            };
            let node = Eviction {
                maxmemory: field("maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0),
                policy,
                evicted_keys: field("evicted_keys")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            };
            if worst
                .as_ref()
                .is_none_or(|w| w.risk().is_none() && node.risk().is_some())
            {
                worst = Some(node);
            }
        }
        worst.ok_or_else(|| LedgerError::Protocol("INFO has no maxmemory_policy".into()))
    }

    /// The oldest Redis version among the servers (major, minor). The
    /// scripts need 6.2 (`SET … GET`).
    pub async fn server_version(&self) -> Result<(u32, u32)> {
        let mut oldest: Option<(u32, u32)> = None;
        for text in self.info(&["server"]).await? {
            let Some(version) = text.lines().find_map(|l| l.strip_prefix("redis_version:")) else {
                continue;
            };
            let mut parts = version.trim().split('.').map(|p| p.parse::<u32>());
            let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
                return Err(LedgerError::Protocol(format!("redis_version {version}")));
            };
            oldest = Some(oldest.map_or((major, minor), |o| o.min((major, minor))));
        }
        oldest.ok_or_else(|| LedgerError::Protocol("INFO has no redis_version".into()))
    }

    /// INFO's sections, one text per server (one, or each node of a
    /// cluster).
    async fn info(&self, sections: &[&str]) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let info: redis::Value = redis::cmd("INFO")
            .arg(sections)
            .query_async(&mut conn)
            .await?;
        let mut texts = Vec::new();
        collect_texts(&info, &mut texts);
        Ok(texts)
    }

    /// One rebuilder at a time: true if this process got the lock.
    /// The lock is short and extended as the rebuild goes (see
    /// [`Self::extend_rebuild_lock`]): a rebuilder that dies leaves it to
    /// another within `ttl`.
    pub async fn try_rebuild_lock(&self, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        // Ours already: an earlier attempt whose answer was lost (a timeout
        // after Redis took the SET) must not lock this process out.
        let taken: i64 = redis::Script::new(
            "local holder = redis.call('GET', KEYS[1])
             if holder == ARGV[1] or not holder then
               redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
               return 1
             end
             return 0",
        )
        .key(self.rebuild_lock_key())
        .arg(&self.owner)
        .arg(millis(ttl))
        .invoke_async(&mut conn)
        .await?;
        Ok(taken == 1)
    }

    /// Gives the rebuild lock up if this process holds it (a rebuild that
    /// failed), so that the next attempt, here or elsewhere, need not wait
    /// for it to run out.
    pub async fn release_rebuild_lock(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then
               return redis.call('DEL', KEYS[1])
             end
             return 0",
        )
        .key(self.rebuild_lock_key())
        .arg(&self.owner)
        .invoke_async(&mut conn)
        .await?;
        Ok(())
    }

    fn rebuild_lock_key(&self) -> String {
        format!("{}ledger-rebuild-lock", self.layout.prefix)
    }

    /// Keeps the rebuild lock this process holds for another `ttl`. False:
    /// it is no longer ours (it ran out and another process took it).
    pub async fn extend_rebuild_lock(&self, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.clone();
        let extended: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then
               return redis.call('PEXPIRE', KEYS[1], ARGV[2])
             end
             return 0",
        )
        .key(self.rebuild_lock_key())
        .arg(&self.owner)
        .arg(millis(ttl))
        .invoke_async(&mut conn)
        .await?;
        Ok(extended == 1)
    }

    /// Copies settled states into the ledger where it has no entry.
    pub async fn seed_settled(&self, settled: &[(DeliveryId, &str)]) -> Result<usize> {
        if settled.is_empty() {
            return Ok(0);
        }
        let horizon_ms = millis(self.horizon);
        let invocations: Vec<_> = settled
            .iter()
            .map(|(id, state)| {
                let mut invocation = self.seed.key(self.key(*id));
                invocation.arg(*state).arg(horizon_ms);
                invocation
            })
            .collect();
        let written: Vec<i64> = self.run(&invocations).await?;
        Ok(written.into_iter().filter(|w| *w == 1).count())
    }

    /// Settles claimed deliveries in one round trip (one script call per
    /// scope, as claims); each answer says whether our epoch was still
    /// current (false: a newer owner took over, and its outcome stands), and
    /// the write it made.
    pub async fn complete_batch(
        &self,
        items: &[(DeliveryId, u64, Settle)],
    ) -> Result<Vec<Settled>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // The script reads an empty state as a release.
        if items
            .iter()
            .any(|(_, _, s)| matches!(s, Settle::Complete { state } if state.is_empty()))
        {
            return Err(LedgerError::Protocol("a settle without a state".into()));
        }
        let ids: Vec<DeliveryId> = items.iter().map(|(id, _, _)| *id).collect();
        let scopes = self.layout.group_by_scope(&ids);
        let horizon_ms = millis(self.horizon);
        let invocations: Vec<_> = scopes
            .iter()
            .map(|(scope, members)| {
                let mut invocation = self.settle.key(self.layout.seq(scope));
                invocation.arg(horizon_ms);
                for &i in members {
                    let (id, epoch, settle) = &items[i];
                    let state = match settle {
                        Settle::Complete { state } => state.as_str(),
                        Settle::Release => "",
                    };
                    invocation.key(self.key(*id)).arg(*epoch).arg(state);
                }
                invocation
            })
            .collect();
        let answers: Vec<Vec<i64>> = self.run_replicated(&invocations).await?;
        let mut settled: Vec<Option<Settled>> = vec![None; items.len()];
        for ((scope, members), scope_answers) in scopes.into_iter().zip(answers) {
            if scope_answers.len() != members.len() {
                return Err(LedgerError::Protocol(format!(
                    "{} settles answered for {}",
                    scope_answers.len(),
                    members.len()
                )));
            }
            for (i, answer) in members.into_iter().zip(scope_answers) {
                settled[i] = Some(match items[i].2 {
                    Settle::Release => Settled {
                        ours: answer == 1,
                        mark: None,
                    },
                    Settle::Complete { .. } => Settled {
                        ours: answer != 0,
                        mark: u64::try_from(answer)
                            .ok()
                            .filter(|s| *s > 0)
                            .map(|seq| LedgerMark {
                                scope: scope.clone(),
                                seq,
                            }),
                    },
                });
            }
        }
        settled
            .into_iter()
            .map(|s| s.ok_or_else(|| LedgerError::Protocol("a settle went unanswered".into())))
            .collect()
    }

    /// Records that a send of the round's claim had an unknown outcome and is
    /// about to be resent: the delivery's one resend is spent. False: the
    /// claim is no longer the round's, and it must not resend.
    pub async fn mark_doubt(&self, id: DeliveryId, epoch: u64, round: &str) -> Result<bool> {
        let owner = self.round_owner(round);
        let mut invocation = self.doubt.key(self.key(id));
        invocation.arg(&owner).arg(epoch).arg(millis(self.horizon));
        // Held by a replica before the resend leaves: a doubt a failover
        // lost would let the next owner resend once more.
        let answers: Vec<i64> = self.run_replicated(&[invocation]).await?;
        Ok(answers.first() == Some(&1))
    }

    /// Gives up the round's claims of `held` (see ABANDON).
    pub async fn abandon_batch(&self, held: &[(DeliveryId, u64)], round: &str) -> Result<()> {
        let owner = self.round_owner(round);
        let invocations: Vec<_> = held
            .iter()
            .map(|(id, epoch)| {
                let mut invocation = self.abandon.key(self.key(*id));
                invocation.arg(&owner).arg(*epoch);
                invocation
            })
            .collect();
        let _: Vec<i64> = self.run(&invocations).await?;
        Ok(())
    }

    /// Extends the leases of a round's sends still outstanding; each answer
    /// says whether the claim is still the round's.
    pub async fn renew_batch(&self, held: &[(DeliveryId, u64)], round: &str) -> Result<Vec<bool>> {
        let owner = self.round_owner(round);
        let lease_ms = millis(self.lease);
        let ttl_ms = lease_ms.saturating_add(millis(self.horizon));
        let invocations: Vec<_> = held
            .iter()
            .map(|(id, epoch)| {
                let mut invocation = self.renew.key(self.key(*id));
                invocation.arg(&owner).arg(*epoch).arg(lease_ms).arg(ttl_ms);
                invocation
            })
            .collect();
        let answers: Vec<i64> = self.run(&invocations).await?;
        Ok(answers.into_iter().map(|a| a == 1).collect())
    }

    /// Runs script invocations, answers in their order: one pipeline on a
    /// single server; on a cluster, whose pipelines may not cross slots,
    /// each on its own, all at once (the connection to each shard pipelines
    /// them).
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocations: &[ScriptInvocation<'_>],
    ) -> Result<Vec<T>> {
        if invocations.is_empty() {
            return Ok(Vec::new());
        }
        if self.conn.is_cluster() {
            // invoke_async loads a script the shard does not know yet.
            return Ok(
                futures::future::try_join_all(invocations.iter().map(|invocation| {
                    let mut conn = self.conn.clone();
                    async move { invocation.invoke_async(&mut conn).await }
                }))
                .await?,
            );
        }
        let mut pipe = redis::pipe();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        self.query(&pipe).await
    }

    /// [`Self::run`], then `WAIT` on the same connection until
    /// `replication.acks` replicas hold these writes (and every earlier one
    /// of this connection). Short of them, the answers are not given: the
    /// writes may be lost by a failover, and the caller must not act on them
    /// (it runs them again, which each script answers the same).
    async fn run_replicated<T: redis::FromRedisValue>(
        &self,
        invocations: &[ScriptInvocation<'_>],
    ) -> Result<Vec<T>> {
        let needed = self.replication.acks;
        if needed == 0 || self.conn.is_cluster() || invocations.is_empty() {
            return self.run(invocations).await;
        }
        let mut pipe = redis::pipe();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        pipe.cmd("WAIT")
            .arg(needed)
            .arg(millis(self.replication.timeout).max(1));
        let mut values: Vec<redis::Value> = self.query_on(&self.waited, &pipe).await?;
        let acked: u64 = match values.pop() {
            Some(v) => redis::from_redis_value(v).map_err(RedisError::from)?,
            None => return Err(LedgerError::Protocol("no answer to WAIT".into())),
        };
        if acked < needed {
            metrics::counter!("herald_ledger_writes_not_replicated_total").increment(1);
            return Err(LedgerError::NotReplicated { acked, needed });
        }
        Ok(values
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<std::result::Result<Vec<T>, _>>()
            .map_err(RedisError::from)?)
    }

    /// Runs a pipeline of EVALSHAs, loading the scripts once if Redis does not
    /// know them (first use, or after a restart emptied its script cache). A
    /// NOSCRIPT fails every call of the pipeline alike, so the retry is safe.
    async fn query<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        self.query_on(&self.conn, pipe).await
    }

    async fn query_on<T: redis::FromRedisValue>(
        &self,
        conn: &RedisConnection,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        let mut conn = conn.clone();
        match pipe.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                for script in [
                    &self.claim,
                    &self.settle,
                    &self.renew,
                    &self.doubt,
                    &self.seed,
                    &self.raise,
                    &self.abandon,
                ] {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                Ok(pipe.query_async(&mut conn).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The texts of an INFO answer: one string from one server, or one per node
/// from a cluster.
fn collect_texts(value: &redis::Value, out: &mut Vec<String>) {
    match value {
        redis::Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => {
            out.push(s.clone())
        }
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|v| collect_texts(v, out))
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads one of CLAIM's answers.
fn parse_claim(answer: &str) -> Result<Claim> {
    let bad = || LedgerError::Protocol(format!("claim answer {answer:?}"));
    fn number<T: std::str::FromStr>(part: Option<&str>) -> Option<T> {
        part?.parse().ok()
    }
    let mut parts = answer.splitn(3, ' ');
    Ok(match parts.next() {
        Some("claimed") => Claim::Claimed {
            epoch: number(parts.next()).ok_or_else(bad)?,
        },
        Some("takeover") => Claim::TakenOver {
            epoch: number(parts.next()).ok_or_else(bad)?,
            takeovers: number(parts.next()).ok_or_else(bad)?,
        },
        Some("busy") => Claim::Busy {
            retry_in_ms: number(parts.next()).ok_or_else(bad)?,
        },
        Some("settled") => Claim::Settled {
            state: parts
                .next()
                .filter(|s| !s.is_empty())
                .ok_or_else(bad)?
                .to_string(),
        },
        _ => return Err(bad()),
    })
}
