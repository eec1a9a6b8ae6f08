//! Read-only views over one app's deliveries and installations, for the
//! stats and lookup endpoints.

use crate::installations::InstallationRow;
use crate::messages::{delivery_from_row, DeliveryDbRow};
use crate::{Installation, Result, Store};
use chrono::{DateTime, Utc};
use herald_core::{AppId, DeliveryStatus};

/// Deliveries of one status settled within one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyCount {
    pub hour: DateTime<Utc>,
    pub status: DeliveryStatus,
    pub count: i64,
}

/// [`crate::messages::DELIVERY_COLUMNS`] from the log itself.
const OUTCOME_COLUMNS: &str =
    "o.delivery_id AS id, o.message_id, o.platform, o.token, o.install_id, \
     o.status, o.reason, o.provider_id, o.attempts, o.settled_at";

/// An outcome that is not the delivery's status: a `failed` one that a real
/// outcome followed.
const SUPERSEDED: &str = "(o.status = 'failed' AND EXISTS (
        SELECT 1 FROM delivery_outcomes x
        WHERE x.message_id = o.message_id AND x.delivery_id = o.delivery_id
          AND x.status <> 'failed'))";

impl Store {
    /// Settled deliveries per hour and status since `since`, oldest first.
    pub async fn hourly_delivery_counts(
        &self,
        app: AppId,
        since: DateTime<Utc>,
    ) -> Result<Vec<HourlyCount>> {
        let rows: Vec<(DateTime<Utc>, String, i64)> = sqlx::query_as(
            "SELECT date_trunc('hour', settled_at) AS hour, status, count(*)
             FROM (SELECT DISTINCT ON (message_id, delivery_id) settled_at, status
                   FROM delivery_outcomes WHERE app_id = $1 AND recorded_at >= $2
                   ORDER BY message_id, delivery_id, (status = 'failed'), recorded_at) s
             WHERE settled_at >= $2
             GROUP BY hour, status ORDER BY hour, status",
        )
        .bind(app.as_uuid())
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(hour, status, count)| {
                Ok(HourlyCount {
                    hour,
                    status: DeliveryStatus::parse(&status)
                        .ok_or_else(|| crate::StoreError::Corrupt(format!("status `{status}`")))?,
                    count,
                })
            })
            .collect()
    }

    /// Deliveries of the messages accepted since `since` still waiting for
    /// an outcome.
    pub async fn pending_delivery_count(&self, app: AppId, since: DateTime<Utc>) -> Result<i64> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT count(*) FROM messages m
             CROSS JOIN LATERAL jsonb_to_recordset(m.recipients) AS d(id uuid)
             WHERE m.app_id = $1 AND m.created_at >= $2 AND m.recipients IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM delivery_outcomes o WHERE ",
            crate::messages::outcome_of_m!(),
            " AND o.delivery_id = d.id OFFSET 0)"
        ))
        .bind(app.as_uuid())
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The latest deliveries that ended other than delivered, newest first.
    pub async fn recent_failures(
        &self,
        app: AppId,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<crate::DeliveryRow>> {
        let rows: Vec<DeliveryDbRow> = sqlx::query_as(&format!(
            "SELECT {OUTCOME_COLUMNS} FROM delivery_outcomes o
             WHERE o.app_id = $1 AND o.recorded_at >= $2 AND o.settled_at >= $2
               AND o.status <> 'delivered' AND NOT {SUPERSEDED}
             ORDER BY o.settled_at DESC LIMIT $3"
        ))
        .bind(app.as_uuid())
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(delivery_from_row).collect()
    }

    /// An installation's latest outcomes, newest first.
    pub async fn installation_deliveries(
        &self,
        app: AppId,
        install_id: &str,
        limit: i64,
    ) -> Result<Vec<crate::DeliveryRow>> {
        let rows: Vec<DeliveryDbRow> = sqlx::query_as(&format!(
            "SELECT {OUTCOME_COLUMNS} FROM delivery_outcomes o
             WHERE o.app_id = $1 AND o.install_id = $2 AND NOT {SUPERSEDED}
             ORDER BY o.recorded_at DESC LIMIT $3"
        ))
        .bind(app.as_uuid())
        .bind(install_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(delivery_from_row).collect()
    }

    /// Every installation of a user (at most `limit`).
    pub async fn installations_of_custom_id(
        &self,
        app: AppId,
        custom_id: &str,
        limit: i64,
    ) -> Result<Vec<Installation>> {
        let rows: Vec<InstallationRow> = sqlx::query_as(
            "SELECT * FROM installations WHERE app_id = $1 AND custom_id = $2
             ORDER BY install_id LIMIT $3",
        )
        .bind(app.as_uuid())
        .bind(custom_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// The installation holding a push token (a token lives in one
    /// installation of an app per platform).
    pub async fn installations_with_token(
        &self,
        app: AppId,
        token: &str,
    ) -> Result<Vec<Installation>> {
        let rows: Vec<InstallationRow> = sqlx::query_as(
            "SELECT * FROM installations WHERE app_id = $1 AND platform IN ('ios', 'android')
             AND token = $2 ORDER BY install_id",
        )
        .bind(app.as_uuid())
        .bind(token)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }
}

/// Work accepted and not yet handed on, over every app: what the backlog
/// gauges report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backlogs {
    /// Outbox rows not yet published to Kafka (due ones and `send_at` ones).
    pub outbox_unpublished: i64,
    /// Age of the oldest due, unpublished outbox row.
    pub outbox_oldest_due_seconds: f64,
    /// App events stored and not yet published.
    pub events_unpublished: i64,
    /// Trigger timers waiting, and those of them already due.
    pub timers_pending: i64,
    pub timers_due: i64,
    /// Campaigns per status.
    pub campaigns: Vec<(String, i64)>,
}

impl Store {
    pub async fn backlogs(&self) -> Result<Backlogs> {
        let (outbox_unpublished, oldest): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*),
                    extract(epoch FROM now() - min(created_at) FILTER (WHERE publish_at <= now()))::float8
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let events_unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let (timers_pending, timers_due): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE due_at <= now())
             FROM trigger_timers WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        let campaigns: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM campaigns GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Backlogs {
            outbox_unpublished,
            outbox_oldest_due_seconds: oldest.unwrap_or(0.0).max(0.0),
            events_unpublished,
            timers_pending,
            timers_due,
            campaigns,
        })
    }
}
