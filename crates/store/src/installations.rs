use crate::{Result, Store, StoreError};
use chrono::{DateTime, Utc};
use herald_core::installation::{ApnsEnvironment, InstallationInput};
use herald_core::{AppId, Platform};
use serde_json::Value;
use std::str::FromStr;

/// An installation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Installation {
    pub install_id: String,
    pub input: InstallationInput,
    pub invalidated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An install id or custom id turned into something a sender can push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub install_id: String,
    pub custom_id: Option<String>,
    pub platform: Platform,
    pub token: String,
    pub locale: Option<String>,
    pub apns_sandbox: bool,
}

#[derive(sqlx::FromRow)]
pub(crate) struct InstallationRow {
    install_id: String,
    platform: String,
    token: Option<String>,
    custom_id: Option<String>,
    apns_environment: String,
    app_version: Option<String>,
    locale: Option<String>,
    time_zone: Option<String>,
    tags: Vec<String>,
    attributes: Value,
    opted_in: bool,
    invalidated_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct TargetRow {
    install_id: String,
    custom_id: Option<String>,
    platform: String,
    token: String,
    locale: Option<String>,
    apns_environment: String,
}

fn corrupt(e: String) -> StoreError {
    StoreError::Corrupt(e)
}

impl TryFrom<TargetRow> for ResolvedTarget {
    type Error = StoreError;
    fn try_from(r: TargetRow) -> Result<Self> {
        Ok(ResolvedTarget {
            install_id: r.install_id,
            custom_id: r.custom_id,
            platform: Platform::from_str(&r.platform).map_err(corrupt)?,
            token: r.token,
            locale: r.locale,
            apns_sandbox: r.apns_environment == "sandbox",
        })
    }
}

/// Installations that can receive a push now: a token, opted in, not invalidated.
const TARGETABLE: &str = "token IS NOT NULL AND opted_in AND invalidated_at IS NULL";
const TARGET_COLUMNS: &str = "install_id, custom_id, platform, token, locale, apns_environment";

impl Store {
    /// Creates or replaces an installation. A token already held by another
    /// installation of the app moves here: the device was reinstalled or
    /// changed hands, and must not get two copies of each push.
    pub async fn upsert_installation(
        &self,
        app: AppId,
        install_id: &str,
        i: &InstallationInput,
    ) -> Result<Installation> {
        let mut tx = self.pool.begin().await?;
        if let Some(token) = &i.token {
            sqlx::query(
                "UPDATE installations SET token = NULL, updated_at = now()
                 WHERE app_id = $1 AND platform = $2 AND token = $3 AND install_id <> $4",
            )
            .bind(app.as_uuid())
            .bind(i.platform.as_str())
            .bind(token)
            .bind(install_id)
            .execute(&mut *tx)
            .await?;
        }
        // A new token clears an earlier invalidation: the device registered again.
        let row: InstallationRow = sqlx::query_as(
            "INSERT INTO installations (app_id, install_id, platform, token, custom_id, apns_environment,
                                        app_version, locale, time_zone, tags, attributes, opted_in)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (app_id, install_id) DO UPDATE SET
                platform = EXCLUDED.platform, token = EXCLUDED.token, custom_id = EXCLUDED.custom_id,
                apns_environment = EXCLUDED.apns_environment, app_version = EXCLUDED.app_version,
                locale = EXCLUDED.locale, time_zone = EXCLUDED.time_zone, tags = EXCLUDED.tags,
                attributes = EXCLUDED.attributes, opted_in = EXCLUDED.opted_in,
                invalidated_at = CASE WHEN installations.token IS DISTINCT FROM EXCLUDED.token
                                      THEN NULL ELSE installations.invalidated_at END,
                updated_at = now()
             RETURNING *",
        )
        .bind(app.as_uuid())
        .bind(install_id)
        .bind(i.platform.as_str())
        .bind(&i.token)
        .bind(&i.custom_id)
        .bind(i.apns_environment.as_str())
        .bind(&i.app_version)
        .bind(&i.locale)
        .bind(&i.time_zone)
        .bind(&i.tags)
        .bind(Value::Object(i.attributes.clone()))
        .bind(i.opted_in)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.try_into()
    }

    pub async fn installation(&self, app: AppId, install_id: &str) -> Result<Option<Installation>> {
        let row: Option<InstallationRow> =
            sqlx::query_as("SELECT * FROM installations WHERE app_id = $1 AND install_id = $2")
                .bind(app.as_uuid())
                .bind(install_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(TryInto::try_into).transpose()
    }

    /// True if it existed.
    pub async fn delete_installation(&self, app: AppId, install_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM installations WHERE app_id = $1 AND install_id = $2")
            .bind(app.as_uuid())
            .bind(install_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The installations among `ids` that can receive a push now.
    pub async fn resolve_install_ids(
        &self,
        app: AppId,
        ids: &[String],
    ) -> Result<Vec<ResolvedTarget>> {
        self.resolve("install_id", app, ids).await
    }

    /// Every installation of these users that can receive a push now.
    pub async fn resolve_custom_ids(
        &self,
        app: AppId,
        ids: &[String],
    ) -> Result<Vec<ResolvedTarget>> {
        self.resolve("custom_id", app, ids).await
    }

    async fn resolve(
        &self,
        column: &'static str,
        app: AppId,
        ids: &[String],
    ) -> Result<Vec<ResolvedTarget>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<TargetRow> = sqlx::query_as(&format!(
            "SELECT {TARGET_COLUMNS} FROM installations
             WHERE app_id = $1 AND {column} = ANY($2) AND {TARGETABLE}
             ORDER BY install_id"
        ))
        .bind(app.as_uuid())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }
}

impl TryFrom<InstallationRow> for Installation {
    type Error = StoreError;
    fn try_from(r: InstallationRow) -> Result<Self> {
        let attributes = match r.attributes {
            Value::Object(m) => m,
            other => return Err(corrupt(format!("attributes {other}"))),
        };
        Ok(Installation {
            install_id: r.install_id,
            input: InstallationInput {
                platform: Platform::from_str(&r.platform).map_err(corrupt)?,
                token: r.token,
                custom_id: r.custom_id,
                apns_environment: ApnsEnvironment::from_str(&r.apns_environment)
                    .map_err(corrupt)?,
                app_version: r.app_version,
                locale: r.locale,
                time_zone: r.time_zone,
                tags: r.tags,
                attributes,
                opted_in: r.opted_in,
            },
            invalidated_at: r.invalidated_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}
