//! PostgreSQL, Herald's system of record: apps and keys, installations,
//! messages with the devices they name, the log of delivery outcomes,
//! idempotency keys and the outbox.
//!
//! Queries are built at run time (no compile-time database needed); the schema
//! lives in `migrations/` and is applied by [`Store::migrate`].

mod apps;
mod campaigns;
mod failover;
mod health;
mod installations;
mod key_changes;
mod messages;
mod operators;
mod outcome_log;
mod request_keys;
mod sealing;
mod stats;
mod triggers;
mod webhooks;

pub use apps::{
    api_key_digest, ApiKeyInfo, ApiKeyKind, AppCredentials, AuthenticatedKey, NewApiKey,
};
pub use campaigns::{
    AudienceCandidate, AudienceList, AudienceScope, Campaign, CampaignLock, CampaignProgress,
    CampaignRefusal, CampaignState, Wave, WavePage,
};
pub use failover::{Chooser, ClusterSwitch};
pub use health::ProcessHealth;
pub use installations::{Installation, ResolvedTarget};
pub use key_changes::{ApiKeyChange, ApiKeyListener, ApiKeyPinger};
pub use messages::{
    AcceptOutcome, DeliveryRow, IdempotencyRecord, MessageView, NewDelivery, NewMessage,
    StatusCount, StoredResponse,
};
pub use operators::{AppSummary, OperatorLogin, OperatorSession};
pub use outcome_log::OutcomeLogUpkeep;
pub use request_keys::{Keyed, RequestKey};
pub use sealing::{SealError, Sealer};
pub use stats::{Backlogs, HourlyCount};
pub use triggers::{DueTimer, DueTimers, NewTimer, StoredEvent, Trigger, UserDevice};
pub use webhooks::{Webhook, WebhookEvent};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not what Herald wrote: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Seal(#[from] SealError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How the pool connects.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Statements running longer are cancelled by the server; None: no limit.
    pub statement_timeout: Option<Duration>,
    pub acquire_timeout: Duration,
}

impl PoolSettings {
    pub fn new(max_connections: u32) -> Self {
        Self {
            max_connections,
            statement_timeout: None,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    sealer: Option<Sealer>,
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, &PoolSettings::new(max_connections)).await
    }

    pub async fn connect_with(url: &str, settings: &PoolSettings) -> Result<Self> {
        // Herald's hot statements take arrays whose length varies batch by
        // batch. A prepared statement's generic plan is made for "some
        // array" against the table's size when it was first planned: one
        // planned while a table was young kept seq-scanning it as it grew
        // (idempotency_keys and messages, once per gateway batch, were half
        // of PostgreSQL's CPU in the single-recipient benchmark), until an
        // ANALYZE happened to invalidate it. A plan for each execution's
        // values costs a little planning and never goes stale that way.
        // Nor JIT: planned afresh, a large batch's statement was compiled
        // afresh each time (LLVM was 6 % of the machine in the campaign
        // benchmark), and Herald's statements are short index work that JIT
        // does not speed up. And the cost of a random page read of an SSD
        // with the tables cached, not of a spinning disk: at the default
        // (4), the trigger engine's update of a thousand fired timers read
        // and hashed the whole timers table instead of looking each one up
        // in its primary key.
        let mut options = PgConnectOptions::from_str(url)?
            .disable_statement_logging()
            .options([
                ("plan_cache_mode", "force_custom_plan"),
                ("jit", "off"),
                ("random_page_cost", "1.1"),
            ]);
        if let Some(limit) = settings.statement_timeout {
            options = options.options([("statement_timeout", limit.as_millis().to_string())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool, sealer: None })
    }

    /// The key that seals provider credentials; without one they can be
    /// neither stored nor read.
    pub fn with_sealer(mut self, sealer: Option<Sealer>) -> Self {
        self.sealer = sealer;
        self
    }

    /// Whether provider credentials can be stored (a key seals them).
    pub fn can_seal_credentials(&self) -> bool {
        self.sealer.is_some()
    }

    /// Creates the database named in `url` when it does not exist, by way of
    /// the server's `postgres` database.
    pub async fn ensure_database(url: &str) -> Result<()> {
        let options = PgConnectOptions::from_str(url)?;
        let name = options.get_database().unwrap_or("herald").to_string();
        let admin = options.database("postgres").disable_statement_logging();
        let mut conn = admin.connect().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            let quoted = name.replace('"', "\"\"");
            match conn
                .execute(format!("CREATE DATABASE \"{quoted}\"").as_str())
                .await
            {
                Ok(_) => {}
                // Another process created it between our check and our CREATE.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Applies the migrations, without the statement timeout: an index
    /// built on a large table may take minutes.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        conn.execute("SET statement_timeout = 0").await?;
        let applied = sqlx::migrate!("./migrations").run(&mut *conn).await;
        conn.execute("RESET statement_timeout").await?;
        applied?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
