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
    /// Who made the choice that stands (history rows: always automatic).
    pub chosen_by: Chooser,
}

/// Who chose a cluster, and for how long an operator's choice holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chooser {
    /// A process's failover controller, by the configured rules.
    Automatic,
    /// `herald cluster failover`: automatic failback leaves it alone until
    /// `until` (None: until an operator changes it).
    Operator { until: Option<DateTime<Utc>> },
}

impl ClusterSwitch {
    /// Whether an operator's choice holds at `now`.
    pub fn held(&self, now: DateTime<Utc>) -> bool {
        match self.chosen_by {
            Chooser::Automatic => false,
            Chooser::Operator { until } => until.is_none_or(|t| now < t),
        }
    }
}

/// name, reason, changed_at, chosen_by, held_until.
type ActiveRow = (String, String, DateTime<Utc>, String, Option<DateTime<Utc>>);

impl Store {
    /// The cluster chosen by the last switch, if any was ever made.
    pub async fn active_kafka_cluster(&self) -> Result<Option<ClusterSwitch>> {
        let row: Option<ActiveRow> = sqlx::query_as(
            "SELECT name, reason, changed_at, chosen_by, held_until FROM kafka_active_cluster",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(to, reason, at, chosen_by, until)| ClusterSwitch {
            from: None,
            to,
            reason,
            at,
            chosen_by: chooser(&chosen_by, until),
        }))
    }

    /// Switches to `to` if the active cluster is still `from` (None: whatever
    /// it is). False: another process switched first; follow its choice.
    /// An automatic switch ends an operator's hold; an operator's sets one
    /// (also when `to` is already active: that pins it).
    pub async fn switch_kafka_cluster(
        &self,
        from: Option<&str>,
        from_default: &str,
        to: &str,
        reason: &str,
        chooser: Chooser,
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
        let (chosen_by, until) = match chooser {
            Chooser::Automatic => ("automatic", None),
            Chooser::Operator { until } => ("operator", until),
        };
        sqlx::query(
            "INSERT INTO kafka_active_cluster (singleton, name, reason, chosen_by, held_until)
             VALUES (true, $1, $2, $3, $4)
             ON CONFLICT (singleton) DO UPDATE
               SET name = $1, reason = $2, chosen_by = $3, held_until = $4, changed_at = now()",
        )
        .bind(to)
        .bind(reason)
        .bind(chosen_by)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO kafka_failovers (from_cluster, to_cluster, reason, chosen_by, held_until)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&current)
        .bind(to)
        .bind(reason)
        .bind(chosen_by)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that the cluster configured as `name` reports `cluster_id`.
    /// True for exactly one caller, the first to see a new id under a name
    /// that had another before: the cluster was replaced at the same address,
    /// and the id now waits for recovery (`claim_cluster_recovery`). The
    /// first id ever seen under a name needs none.
    pub async fn record_kafka_cluster_id(&self, name: &str, cluster_id: &str) -> Result<bool> {
        let (known, inserted): (i64, i64) = sqlx::query_as(
            "WITH known AS (SELECT count(*) AS n FROM kafka_cluster_ids WHERE name = $1),
                  added AS (INSERT INTO kafka_cluster_ids (name, cluster_id, recovered_at)
                            SELECT $1, $2, CASE WHEN n = 0 THEN now() END FROM known
                            ON CONFLICT DO NOTHING RETURNING 1)
             SELECT (SELECT n FROM known), (SELECT count(*) FROM added)",
        )
        .bind(name)
        .bind(cluster_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(known > 0 && inserted > 0)
    }

    /// Takes, for `lease`, the oldest replaced cluster first seen at least
    /// `settle` ago and not yet recovered: (name, cluster id). A lease that
    /// ran out (its process died) can be taken again.
    pub async fn claim_cluster_recovery(
        &self,
        settle: std::time::Duration,
        lease: std::time::Duration,
    ) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as(
            "UPDATE kafka_cluster_ids SET claimed_until = now() + make_interval(secs => $2)
             WHERE (name, cluster_id) = (
                 SELECT name, cluster_id FROM kafka_cluster_ids
                 WHERE recovered_at IS NULL
                   AND first_seen <= now() - make_interval(secs => $1)
                   AND (claimed_until IS NULL OR claimed_until < now())
                 ORDER BY first_seen LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING name, cluster_id",
        )
        .bind(settle.as_secs_f64())
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The replaced cluster's recovery is done.
    pub async fn finish_cluster_recovery(&self, name: &str, cluster_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE kafka_cluster_ids SET recovered_at = now() WHERE name = $1 AND cluster_id = $2",
        )
        .bind(name)
        .bind(cluster_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The latest switches, newest first.
    pub async fn kafka_failovers(&self, limit: i64) -> Result<Vec<ClusterSwitch>> {
        type Row = (
            Option<String>,
            String,
            String,
            DateTime<Utc>,
            String,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT from_cluster, to_cluster, reason, at, chosen_by, held_until FROM kafka_failovers
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(from, to, reason, at, chosen_by, until)| ClusterSwitch {
                from,
                to,
                reason,
                at,
                chosen_by: chooser(&chosen_by, until),
            })
            .collect())
    }
}

fn chooser(chosen_by: &str, until: Option<DateTime<Utc>>) -> Chooser {
    if chosen_by == "operator" {
        Chooser::Operator { until }
    } else {
        Chooser::Automatic
    }
}
