//! Each process's own readiness, as it last reported it.

use crate::{Result, Store};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessHealth {
    /// `HOST-PID`.
    pub process: String,
    /// The `herald` subcommand it runs (`sender`, `gateway`, `dev`, ...).
    pub command: String,
    pub ready: bool,
    /// `/readyz`'s checks: name → "ok" or what failed.
    pub checks: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// Records what this process's `/readyz` says now; forgets processes
    /// silent for a day.
    pub async fn report_process_health(
        &self,
        process: &str,
        command: &str,
        ready: bool,
        checks: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO process_health (process, command, ready, checks) VALUES ($1, $2, $3, $4)
             ON CONFLICT (process) DO UPDATE
               SET command = $2, ready = $3, checks = $4, updated_at = now()",
        )
        .bind(process)
        .bind(command)
        .bind(ready)
        .bind(checks)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM process_health WHERE updated_at < now() - interval '1 day'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every process heard from in the last `within`, by command.
    pub async fn process_health(&self, within: chrono::Duration) -> Result<Vec<ProcessHealth>> {
        type Row = (String, String, bool, serde_json::Value, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT process, command, ready, checks, updated_at FROM process_health
             WHERE updated_at > now() - make_interval(secs => $1) ORDER BY command, process",
        )
        .bind(within.num_milliseconds() as f64 / 1000.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(process, command, ready, checks, updated_at)| ProcessHealth {
                    process,
                    command,
                    ready,
                    checks,
                    updated_at,
                },
            )
            .collect())
    }
}
