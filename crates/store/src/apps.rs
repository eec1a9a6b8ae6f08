use crate::{Result, Store, StoreError};
use herald_core::AppId;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A server key can do everything for its app; an SDK key, which ships inside
/// the app, can only register installations and post events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyKind {
    Server,
    Sdk,
}

impl ApiKeyKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiKeyKind::Server => "server",
            ApiKeyKind::Sdk => "sdk",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "server" => Ok(ApiKeyKind::Server),
            "sdk" => Ok(ApiKeyKind::Sdk),
            other => Err(StoreError::Corrupt(format!("api key kind `{other}`"))),
        }
    }
}

/// A freshly created key: the only time its secret exists outside the caller.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: Uuid,
    pub kind: ApiKeyKind,
    pub secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedKey {
    pub key_id: Uuid,
    pub app_id: AppId,
    pub kind: ApiKeyKind,
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub kind: ApiKeyKind,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An app's provider credentials, as uploaded (JSON objects).
#[derive(Debug, Clone, Default)]
pub struct AppCredentials {
    pub apns: Option<Value>,
    pub fcm: Option<Value>,
}

/// Associated data: a sealed value opens only for its own app and provider.
fn seal_context(app: AppId, provider: &str) -> String {
    format!("{app}:{provider}")
}

/// What is stored of a key's secret, and what key caches index by.
pub fn api_key_digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl Store {
    pub async fn create_app(&self, name: &str) -> Result<AppId> {
        let id = AppId::new_random();
        sqlx::query("INSERT INTO apps (id, name) VALUES ($1, $2)")
            .bind(id.as_uuid())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    pub async fn app_exists(&self, app: AppId) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM apps WHERE id = $1)")
                .bind(app.as_uuid())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn create_api_key(&self, app: AppId, kind: ApiKeyKind) -> Result<NewApiKey> {
        let id = Uuid::now_v7();
        let secret = format!(
            "hk_{}_{}",
            kind.as_str(),
            Alphanumeric.sample_string(&mut rand::rng(), 40)
        );
        sqlx::query(
            "INSERT INTO api_keys (id, app_id, kind, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(app.as_uuid())
        .bind(kind.as_str())
        .bind(api_key_digest(&secret))
        .bind(&secret[..secret.len().min(14)])
        .execute(&self.pool)
        .await?;
        Ok(NewApiKey { id, kind, secret })
    }

    /// Registers a key whose secret the caller chose (the fixed key of
    /// `herald dev`'s demo app). Idempotent.
    pub async fn ensure_api_key(&self, app: AppId, kind: ApiKeyKind, secret: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, app_id, kind, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(app.as_uuid())
        .bind(kind.as_str())
        .bind(api_key_digest(secret))
        .bind(&secret[..secret.len().min(14)])
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The oldest app with this name.
    pub async fn app_by_name(&self, name: &str) -> Result<Option<AppId>> {
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM apps WHERE name = $1 ORDER BY created_at LIMIT 1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(id.map(AppId))
    }

    /// Looks a secret up by its hash: the comparison happens on a digest, so
    /// response timing says nothing about the secret.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<AuthenticatedKey>> {
        self.authenticate_digest(&api_key_digest(secret)).await
    }

    /// As [`Store::authenticate`], given the secret's [`api_key_digest`].
    pub async fn authenticate_digest(&self, digest: &[u8]) -> Result<Option<AuthenticatedKey>> {
        let row: Option<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT id, app_id, kind FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(key_id, app, kind)| {
            Ok(AuthenticatedKey {
                key_id,
                app_id: AppId(app),
                kind: ApiKeyKind::parse(&kind)?,
            })
        })
        .transpose()
    }

    pub async fn api_keys(&self, app: AppId) -> Result<Vec<ApiKeyInfo>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            kind: String,
            key_prefix: String,
            created_at: chrono::DateTime<chrono::Utc>,
            revoked_at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, kind, key_prefix, created_at, revoked_at FROM api_keys
             WHERE app_id = $1 ORDER BY created_at",
        )
        .bind(app.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ApiKeyInfo {
                    id: r.id,
                    kind: ApiKeyKind::parse(&r.kind)?,
                    prefix: r.key_prefix,
                    created_at: r.created_at,
                    revoked_at: r.revoked_at,
                })
            })
            .collect()
    }

    /// Revokes a key of this app; false if there is no such live key.
    pub async fn revoke_api_key(&self, app: AppId, key: Uuid) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now()
             WHERE app_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(app.as_uuid())
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a provider's credentials sealed; the plaintext never reaches
    /// the database.
    pub async fn put_credentials(&self, app: AppId, provider: &str, config: &Value) -> Result<()> {
        let sealer = self.sealer.as_ref().ok_or(crate::SealError::NoKey)?;
        let plaintext =
            serde_json::to_vec(config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sealed = sealer.seal(&plaintext, &seal_context(app, provider))?;
        sqlx::query(
            "INSERT INTO provider_credentials (app_id, provider, config, sealed) VALUES ($1, $2, NULL, $3)
             ON CONFLICT (app_id, provider) DO UPDATE SET config = NULL, sealed = EXCLUDED.sealed, updated_at = now()",
        )
        .bind(app.as_uuid())
        .bind(provider)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// True if the app had credentials for this provider.
    pub async fn delete_credentials(&self, app: AppId, provider: &str) -> Result<bool> {
        let done =
            sqlx::query("DELETE FROM provider_credentials WHERE app_id = $1 AND provider = $2")
                .bind(app.as_uuid())
                .bind(provider)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn credentials(&self, app: AppId) -> Result<AppCredentials> {
        let rows: Vec<(String, Option<Value>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT provider, config, sealed FROM provider_credentials WHERE app_id = $1",
        )
        .bind(app.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        let mut creds = AppCredentials::default();
        for (provider, config, sealed) in rows {
            let value = match (sealed, config) {
                (Some(sealed), _) => {
                    let sealer = self.sealer.as_ref().ok_or(crate::SealError::NoKey)?;
                    let plain = sealer.open(&sealed, &seal_context(app, &provider))?;
                    serde_json::from_slice(&plain)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?
                }
                // Written before sealing existed.
                (None, Some(config)) => config,
                (None, None) => continue,
            };
            match provider.as_str() {
                "apns" => creds.apns = Some(value),
                "fcm" => creds.fcm = Some(value),
                other => return Err(StoreError::Corrupt(format!("provider `{other}`"))),
            }
        }
        Ok(creds)
    }
}
