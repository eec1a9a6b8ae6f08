//! Connecting to the engines, with errors that say which one failed, where
//! Herald looked, and how to start one.

use anyhow::{anyhow, Result};
use herald_config::{Config, RedisMode};
use herald_ledger::{RedisConnection, RedisEndpoint, RedisTarget};
use herald_store::Store;
use std::time::Duration;

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Creates the database if needed, connects, and applies migrations.
pub async fn postgres(config: &Config) -> Result<Store> {
    let url = &config.postgres.url;
    let hint = || {
        format!(
            "PostgreSQL is not reachable at {}.\n  Start it (Debian: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)\n  or point Herald at one: HERALD_POSTGRES__URL=postgres://USER@HOST:5432/herald",
            redact(url)
        )
    };
    Store::ensure_database(url)
        .await
        .map_err(|e| anyhow!("{}\n  cause: {e}", hint()))?;
    let settings = herald_store::PoolSettings {
        max_connections: config.postgres.max_connections,
        statement_timeout: (config.postgres.statement_timeout_ms > 0)
            .then(|| Duration::from_millis(config.postgres.statement_timeout_ms)),
        acquire_timeout: Duration::from_millis(config.postgres.acquire_timeout_ms.max(1)),
    };
    let store = Store::connect_with(url, &settings)
        .await
        .map_err(|e| anyhow!("{}\n  cause: {e}", hint()))?;
    store
        .migrate()
        .await
        .map_err(|e| anyhow!("applying migrations to {}: {e}", redact(url)))?;
    let sealer = match config.credentials.key.trim() {
        "" => None,
        key => Some(
            herald_store::Sealer::from_base64(key).map_err(|e| anyhow!("credentials.key: {e}"))?,
        ),
    };
    Ok(store.with_sealer(sealer))
}

/// Where Redis is (`redis.mode`), trusting `redis.tls_ca_cert_path` when set.
pub fn redis_endpoint(config: &Config) -> Result<RedisEndpoint> {
    let redis = &config.redis;
    let ca_cert_pem = match redis.tls_ca_cert_path.trim() {
        "" => None,
        path => {
            Some(std::fs::read(path).map_err(|e| anyhow!("redis.tls_ca_cert_path {path}: {e}"))?)
        }
    };
    if redis.prefix.contains(['{', '}']) {
        return Err(anyhow!(
            "redis.prefix `{}` has a brace: Herald's keys put hash tags after it",
            redis.prefix
        ));
    }
    let target = match redis.mode {
        RedisMode::Standalone => RedisTarget::Standalone {
            url: redis.url.clone(),
        },
        RedisMode::Sentinel => {
            if redis.sentinel.nodes.is_empty() {
                return Err(anyhow!(
                    "redis.mode is sentinel but redis.sentinel.nodes is empty: list the sentinels (redis://HOST:26379)"
                ));
            }
            RedisTarget::Sentinel {
                sentinels: redis.sentinel.nodes.clone(),
                master_name: redis.sentinel.master_name.clone(),
                url: redis.url.clone(),
            }
        }
        RedisMode::Cluster => {
            if redis.cluster.nodes.is_empty() {
                return Err(anyhow!(
                    "redis.mode is cluster but redis.cluster.nodes is empty: list one or more nodes (redis://HOST:6379)"
                ));
            }
            RedisTarget::Cluster {
                nodes: redis.cluster.nodes.clone(),
            }
        }
    };
    Ok(RedisEndpoint {
        target,
        ca_cert_pem,
    })
}

/// What `redis.*` points at, passwords hidden, for messages.
fn redis_shown(config: &Config) -> String {
    let redis = &config.redis;
    match redis.mode {
        RedisMode::Standalone => redact(&redis.url),
        RedisMode::Sentinel => format!(
            "the primary `{}` of the sentinels {}",
            redis.sentinel.master_name,
            redis
                .sentinel
                .nodes
                .iter()
                .map(|n| redact(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RedisMode::Cluster => format!(
            "the cluster of {}",
            redis
                .cluster
                .nodes
                .iter()
                .map(|n| redact(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Connects to Redis the way the roles do, and asks it for a PING.
pub async fn redis_ping(endpoint: &RedisEndpoint) -> Result<(), String> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), RedisConnection::connect(endpoint))
        .await
        .map_err(|_| "timed out after 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub async fn redis(config: &Config) -> Result<()> {
    let hint = format!(
        "Redis is not reachable at {}.\n  Start it (`redis-server --daemonize yes`) or point Herald at one: HERALD_REDIS__URL=redis://HOST:6379",
        redis_shown(config)
    );
    let endpoint = redis_endpoint(config).map_err(|e| anyhow!("{hint}\n  cause: {e}"))?;
    redis_ping(&endpoint)
        .await
        .map_err(|e| anyhow!("{hint}\n  cause: {e}"))
}

pub fn kafka_configured(config: &Config) -> Result<()> {
    if config.kafka.clusters().is_empty() {
        return Err(anyhow!(
            "no Kafka cluster configured.\n  Set kafka.bootstrap_servers in the config file or HERALD_KAFKA__BOOTSTRAP_SERVERS=HOST:9092\n  (more clusters: [kafka.clusters.NAME] bootstrap_servers; `herald dev` runs an embedded broker instead)"
        ));
    }
    Ok(())
}

/// The sender's timings must let it finish what it started. On SIGTERM it
/// waits for the requests already at the provider, and a send whose outcome
/// was unknown may have its resend in flight: both must end inside the
/// shutdown deadline, or the process exits with outcomes unrecorded (sent
/// again under at_least_once, `unknown` under at_most_once). Each send may
/// take its timeout and, after a stop of the process, a grace to read what
/// came (`longest_send`). An FCM access token fetched at that moment (about
/// once an hour per service account) has its own timeout on top. Leases are
/// renewed a third of the way through, so a lease only needs to outlast a
/// few Redis round trips.
pub fn sender_timing(config: &Config) -> Result<()> {
    let sender = &config.sender;
    let send = herald_providers::longest_send(Duration::from_millis(sender.request_timeout_ms));
    let needed = u64::try_from(send.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(2_000);
    if config.shutdown.deadline_ms < needed {
        return Err(anyhow!(
            "shutdown.deadline_ms ({}) is too short for sender.request_timeout_ms ({}).\n  On SIGTERM a sender waits for requests already at the provider (and the resend of one whose outcome was unknown): the deadline must be at least twice the longest send (the request timeout, plus up to 1 s to read answers that came while the process was stopped) plus 2 s ({needed} ms).\n  Raise HERALD_SHUTDOWN__DEADLINE_MS or lower HERALD_SENDER__REQUEST_TIMEOUT_MS (keep Kubernetes' terminationGracePeriodSeconds above the deadline).",
            config.shutdown.deadline_ms,
            sender.request_timeout_ms,
        ));
    }
    if sender.lease_ms < 1_000 {
        return Err(anyhow!(
            "sender.lease_ms ({}) is under 1000: leases are renewed every third of a lease, and a shorter one can run out during a Redis round trip",
            sender.lease_ms
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_deadline_covers_two_sends_and_a_grace_for_each() {
        let mut config = Config::default();
        sender_timing(&config).expect("the defaults fit");
        // Two sends of 10 s, each with a second's grace, and 2 s to settle.
        config.sender.request_timeout_ms = 10_000;
        config.shutdown.deadline_ms = 24_000;
        sender_timing(&config).expect("exactly enough");
        config.shutdown.deadline_ms = 23_999;
        let e = sender_timing(&config).expect_err("too short");
        assert!(e.to_string().contains("24000 ms"), "{e}");
        // A short timeout's grace is the timeout itself.
        config.sender.request_timeout_ms = 500;
        config.shutdown.deadline_ms = 4_000;
        sender_timing(&config).expect("2 × (0.5 + 0.5) + 2 s");
    }
}
