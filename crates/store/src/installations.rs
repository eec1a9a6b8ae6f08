use crate::{Result, Store};
use herald_core::{AppId, Platform};
use std::str::FromStr;

/// A device registered by an app (the full installations API grows in issue 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub install_id: String,
    pub platform: Platform,
    pub token: Option<String>,
    pub custom_id: Option<String>,
}

/// An install id turned into something a sender can push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub install_id: String,
    pub platform: Platform,
    pub token: String,
}

impl Store {
    pub async fn upsert_installation(&self, app: AppId, inst: &Installation) -> Result<()> {
        // A new token clears an earlier invalidation: the device registered again.
        sqlx::query(
            "INSERT INTO installations (app_id, install_id, platform, token, custom_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (app_id, install_id) DO UPDATE SET
                platform = EXCLUDED.platform,
                token = EXCLUDED.token,
                custom_id = EXCLUDED.custom_id,
                invalidated_at = CASE WHEN installations.token IS DISTINCT FROM EXCLUDED.token
                                      THEN NULL ELSE installations.invalidated_at END,
                updated_at = now()",
        )
        .bind(app.as_uuid())
        .bind(&inst.install_id)
        .bind(inst.platform.as_str())
        .bind(&inst.token)
        .bind(&inst.custom_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The installations among `ids` that can receive a push now: known, with a
    /// token, opted in and not invalidated. The others are simply absent.
    pub async fn resolve_install_ids(
        &self,
        app: AppId,
        ids: &[String],
    ) -> Result<Vec<ResolvedTarget>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT install_id, platform, token FROM installations
             WHERE app_id = $1 AND install_id = ANY($2)
               AND token IS NOT NULL AND opted_in AND invalidated_at IS NULL",
        )
        .bind(app.as_uuid())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(install_id, platform, token)| {
                let platform = Platform::from_str(&platform).map_err(crate::StoreError::Corrupt)?;
                Ok(ResolvedTarget {
                    install_id,
                    platform,
                    token,
                })
            })
            .collect()
    }

    pub async fn installation(
        &self,
        app: AppId,
        install_id: &str,
    ) -> Result<Option<(Installation, bool)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            install_id: String,
            platform: String,
            token: Option<String>,
            custom_id: Option<String>,
            invalid: bool,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT install_id, platform, token, custom_id, invalidated_at IS NOT NULL AS invalid
             FROM installations WHERE app_id = $1 AND install_id = $2",
        )
        .bind(app.as_uuid())
        .bind(install_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let platform = Platform::from_str(&r.platform).map_err(crate::StoreError::Corrupt)?;
            Ok((
                Installation {
                    install_id: r.install_id,
                    platform,
                    token: r.token,
                    custom_id: r.custom_id,
                },
                r.invalid,
            ))
        })
        .transpose()
    }
}
