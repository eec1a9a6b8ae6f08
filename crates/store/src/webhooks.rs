use crate::{Result, Store};
use herald_core::AppId;
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use uuid::Uuid;

/// An app's outcome webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

/// An event due for posting.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookEvent {
    pub id: i64,
    pub app_id: Uuid,
    pub payload: Value,
    pub attempts: i32,
    pub url: String,
    pub secret: String,
}

impl Store {
    /// Sets the app's webhook URL; a new signing secret is made each time.
    pub async fn set_webhook(&self, app: AppId, url: &str) -> Result<Webhook> {
        let secret = format!("whsec_{}", Alphanumeric.sample_string(&mut rand::rng(), 40));
        sqlx::query("UPDATE apps SET webhook_url = $2, webhook_secret = $3 WHERE id = $1")
            .bind(app.as_uuid())
            .bind(url)
            .bind(&secret)
            .execute(&self.pool)
            .await?;
        Ok(Webhook {
            url: url.to_string(),
            secret,
        })
    }

    pub async fn webhook(&self, app: AppId) -> Result<Option<Webhook>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT webhook_url, webhook_secret FROM apps WHERE id = $1")
                .bind(app.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some((Some(url), Some(secret))) => Some(Webhook { url, secret }),
            _ => None,
        })
    }

    pub async fn delete_webhook(&self, app: AppId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE apps SET webhook_url = NULL, webhook_secret = NULL
             WHERE id = $1 AND webhook_url IS NOT NULL",
        )
        .bind(app.as_uuid())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims up to `limit` due events for `lease_secs` (other dispatchers
    /// skip them meanwhile) and returns them with their app's webhook.
    pub async fn claim_webhook_events(
        &self,
        limit: i64,
        lease_secs: f64,
    ) -> Result<Vec<WebhookEvent>> {
        Ok(sqlx::query_as(
            "UPDATE webhook_events e SET next_attempt_at = now() + make_interval(secs => $2)
             FROM apps a
             WHERE e.id IN (SELECT id FROM webhook_events
                            WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               AND a.id = e.app_id AND a.webhook_url IS NOT NULL
             RETURNING e.id, e.app_id, e.payload, e.attempts, a.webhook_url AS url, a.webhook_secret AS secret",
        )
        .bind(limit)
        .bind(lease_secs)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn webhook_delivered(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE webhook_events SET delivered_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed attempt: retried after `retry_in_secs`, or given up.
    pub async fn webhook_failed(
        &self,
        id: i64,
        error: &str,
        retry_in_secs: Option<f64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_events SET attempts = attempts + 1, last_error = $2,
                next_attempt_at = CASE WHEN $3::float8 IS NULL THEN next_attempt_at
                                       ELSE now() + make_interval(secs => $3) END,
                failed_at = CASE WHEN $3::float8 IS NULL THEN now() END
             WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(retry_in_secs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
