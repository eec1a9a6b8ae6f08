//! Dashboard operators and their sessions. Passwords arrive already hashed
//! (argon2, by the dashboard); session secrets arrive as their SHA-256.

use crate::{Result, Store};
use chrono::{DateTime, Utc};
use herald_core::AppId;
use uuid::Uuid;

/// An operator as the login form needs it.
#[derive(Debug, Clone)]
pub struct OperatorLogin {
    pub id: Uuid,
    pub password_hash: String,
}

/// A live session: who, and the token every form must echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSession {
    pub operator_id: Uuid,
    pub email: String,
    pub csrf_token: String,
}

/// An app as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSummary {
    pub id: AppId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Creates the operator, or sets a new password for an existing one
    /// (ending that operator's sessions). True if the operator is new.
    pub async fn upsert_operator(&self, email: &str, password_hash: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM operators WHERE email = $1 FOR UPDATE")
                .bind(email)
                .fetch_optional(&mut *tx)
                .await?;
        match existing {
            Some(id) => {
                sqlx::query("UPDATE operators SET password_hash = $2 WHERE id = $1")
                    .bind(id)
                    .bind(password_hash)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM operator_sessions WHERE operator_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query("INSERT INTO operators (id, email, password_hash) VALUES ($1, $2, $3)")
                    .bind(Uuid::now_v7())
                    .bind(email)
                    .bind(password_hash)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(existing.is_none())
    }

    pub async fn operator_exists(&self, email: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM operators WHERE email = $1)")
                .bind(email)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn operator_login(&self, email: &str) -> Result<Option<OperatorLogin>> {
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, password_hash FROM operators WHERE email = $1")
                .bind(email)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, password_hash)| OperatorLogin { id, password_hash }))
    }

    pub async fn create_operator_session(
        &self,
        operator: Uuid,
        token_hash: &[u8],
        csrf_token: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO operator_sessions (token_hash, operator_id, csrf_token, expires_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(operator)
        .bind(csrf_token)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The session behind a cookie, unless it expired.
    pub async fn operator_session(&self, token_hash: &[u8]) -> Result<Option<OperatorSession>> {
        let row: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT s.operator_id, o.email, s.csrf_token
             FROM operator_sessions s JOIN operators o ON o.id = s.operator_id
             WHERE s.token_hash = $1 AND s.expires_at > now()",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(operator_id, email, csrf_token)| OperatorSession {
            operator_id,
            email,
            csrf_token,
        }))
    }

    pub async fn delete_operator_session(&self, token_hash: &[u8]) -> Result<()> {
        sqlx::query("DELETE FROM operator_sessions WHERE token_hash = $1 OR expires_at < now()")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn apps(&self) -> Result<Vec<AppSummary>> {
        let rows: Vec<(Uuid, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT id, name, created_at FROM apps ORDER BY name, created_at")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, created_at)| AppSummary {
                id: AppId(id),
                name,
                created_at,
            })
            .collect())
    }

    pub async fn app(&self, app: AppId) -> Result<Option<AppSummary>> {
        let row: Option<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT name, created_at FROM apps WHERE id = $1")
                .bind(app.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(name, created_at)| AppSummary {
            id: app,
            name,
            created_at,
        }))
    }
}
