//! Connecting to the engines, with errors that say which one failed, where
//! Herald looked, and how to start one.

use anyhow::{anyhow, Result};
use herald_config::Config;
use herald_store::Store;

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
            .then(|| std::time::Duration::from_millis(config.postgres.statement_timeout_ms)),
        acquire_timeout: std::time::Duration::from_millis(
            config.postgres.acquire_timeout_ms.max(1),
        ),
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

/// A client for `redis.url`, trusting `redis.tls_ca_cert_path` when set.
pub fn redis_client(config: &Config) -> Result<redis::Client> {
    let ca = match config.redis.tls_ca_cert_path.trim() {
        "" => None,
        path => {
            Some(std::fs::read(path).map_err(|e| anyhow!("redis.tls_ca_cert_path {path}: {e}"))?)
        }
    };
    herald_ledger::client(&config.redis.url, ca)
        .map_err(|e| anyhow!("redis.url {}: {e}", redact(&config.redis.url)))
}

pub async fn redis(config: &Config) -> Result<()> {
    let url = &config.redis.url;
    let hint = format!(
        "Redis is not reachable at {}.\n  Start it (`redis-server --daemonize yes`) or point Herald at one: HERALD_REDIS__URL=redis://HOST:6379",
        redact(url)
    );
    let client = redis_client(config).map_err(|e| anyhow!("{hint}\n  cause: {e}"))?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow!("{hint}\n  cause: timed out after 5 s"))?
    .map_err(|e| anyhow!("{hint}\n  cause: {e}"))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| anyhow!("{hint}\n  cause: {e}"))?;
    Ok(())
}

pub fn kafka_configured(config: &Config) -> Result<()> {
    if config.kafka.clusters().is_empty() {
        return Err(anyhow!(
            "no Kafka cluster configured.\n  Set kafka.bootstrap_servers in the config file or HERALD_KAFKA__BOOTSTRAP_SERVERS=HOST:9092\n  (more clusters: [kafka.clusters.NAME] bootstrap_servers; `herald dev` runs an embedded broker instead)"
        ));
    }
    Ok(())
}
