//! The Kafka cluster every producer should write to, agreed through
//! PostgreSQL so that one process's failover moves all of them.

use crate::{Result, Store};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSwitch {
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Store {
    /// The cluster chosen by the last switch, if any was ever made.
    pub async fn active_kafka_cluster(&self) -> Result<Option<ClusterSwitch>> {
        let row: Option<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT name, reason, changed_at FROM kafka_active_cluster")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(to, reason, at)| ClusterSwitch {
            from: None,
            to,
            reason,
            at,
        }))
    }

    /// Switches to `to` if the active cluster is still `from` (None: whatever
    /// it is). False: another process switched first; follow its choice.
    pub async fn switch_kafka_cluster(
        &self,
        from: Option<&str>,
        from_default: &str,
        to: &str,
        reason: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let current: Option<String> =
            sqlx::query_scalar("SELECT name FROM kafka_active_cluster FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.unwrap_or_else(|| from_default.to_string());
        if from.is_some_and(|f| f != current) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO kafka_active_cluster (singleton, name, reason) VALUES (true, $1, $2)
             ON CONFLICT (singleton) DO UPDATE SET name = $1, reason = $2, changed_at = now()",
        )
        .bind(to)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO kafka_failovers (from_cluster, to_cluster, reason) VALUES ($1, $2, $3)",
        )
        .bind(&current)
        .bind(to)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The latest switches, newest first.
    pub async fn kafka_failovers(&self, limit: i64) -> Result<Vec<ClusterSwitch>> {
        let rows: Vec<(Option<String>, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT from_cluster, to_cluster, reason, at FROM kafka_failovers
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(from, to, reason, at)| ClusterSwitch {
                from,
                to,
                reason,
                at,
            })
            .collect())
    }
}
