//! The outcome log's partitions: one per UTC day, created ahead of time and
//! dropped whole when they pass the retention, with the messages they
//! described. Partition names carry their range, which is what retention reads:
//! `delivery_outcomes_pYYYYMMDD` holds that day, and
//! `delivery_outcomes_before_YYYYMMDD` everything recorded before that day.

use crate::{Result, Store, StoreError};
use chrono::{DateTime, Days, NaiveDate, Utc};

/// DDL on the log's parent table from several processes at once would trip
/// over itself; they take turns on this lock.
const PARTITION_LOCK: i64 = 0x6865_7261_6c64_6f6c; // "heraldol"

/// What one round of upkeep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeLogUpkeep {
    pub partitions_created: Vec<String>,
    pub partitions_dropped: Vec<String>,
    pub messages_deleted: u64,
}

/// The day range a partition's name says it covers: (first day or none for
/// "everything before", the day after its last).
fn partition_range(name: &str) -> Option<(Option<NaiveDate>, NaiveDate)> {
    // chrono would read "2026123" as a day too; a name has all eight digits.
    let day = |s: &str| {
        (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| NaiveDate::parse_from_str(s, "%Y%m%d").ok())
            .flatten()
    };
    if let Some(d) = name.strip_prefix("delivery_outcomes_p") {
        let first = day(d)?;
        Some((Some(first), first.checked_add_days(Days::new(1))?))
    } else {
        name.strip_prefix("delivery_outcomes_before_")
            .and_then(day)
            .map(|end| (None, end))
    }
}

fn day_partition(day: NaiveDate) -> String {
    format!("delivery_outcomes_p{}", day.format("%Y%m%d"))
}

fn midnight(day: NaiveDate) -> String {
    format!("{} 00:00:00+00", day.format("%Y-%m-%d"))
}

impl Store {
    /// Creates the day partitions from `today` to `days_ahead` days after it
    /// that do not exist yet.
    pub async fn ensure_outcome_partitions(
        &self,
        today: NaiveDate,
        days_ahead: u32,
    ) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        let existing = outcome_partitions(&mut tx).await?;
        let mut created = Vec::new();
        for ahead in 0..=u64::from(days_ahead) {
            let Some(day) = today.checked_add_days(Days::new(ahead)) else {
                break;
            };
            let covered = existing.iter().any(|(_, range)| match range {
                (Some(first), end) => *first <= day && day < *end,
                (None, end) => day < *end,
            });
            if covered {
                continue;
            }
            let name = day_partition(day);
            let next = day
                .checked_add_days(Days::new(1))
                .ok_or_else(|| StoreError::Corrupt(format!("no day after {day}")))?;
            // Names and bounds are built from dates, never from input.
            sqlx::query(&format!(
                "CREATE TABLE {name} PARTITION OF delivery_outcomes FOR VALUES FROM ('{}') TO ('{}')",
                midnight(day),
                midnight(next)
            ))
            .execute(&mut *tx)
            .await?;
            created.push(name);
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Drops the partitions whose every outcome was recorded before
    /// `cutoff`'s day.
    pub async fn drop_outcome_partitions_before(&self, cutoff: NaiveDate) -> Result<Vec<String>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITION_LOCK)
            .execute(&mut *tx)
            .await?;
        let mut dropped = Vec::new();
        for (name, (_, end)) in outcome_partitions(&mut tx).await? {
            if end <= cutoff {
                sqlx::query(&format!("DROP TABLE {name}"))
                    .execute(&mut *tx)
                    .await?;
                dropped.push(name);
            }
        }
        tx.commit().await?;
        Ok(dropped)
    }

    /// Deletes up to `batch` messages that named their devices, were accepted
    /// before `cutoff` and have nothing left to publish: their outcomes are
    /// past retention, and without them every device would read `pending`.
    pub async fn delete_messages_before(&self, cutoff: DateTime<Utc>, batch: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM messages WHERE id IN (
                SELECT m.id FROM messages m
                WHERE m.recipients IS NOT NULL AND m.created_at < $1
                  AND NOT EXISTS (SELECT 1 FROM outbox x
                                  WHERE x.message_id = m.id AND x.published_at IS NULL)
                ORDER BY m.created_at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(batch)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Keeps `days_ahead` days of partitions ready and lets go of what was
    /// recorded more than `retention_days` days before `now`.
    pub async fn keep_outcome_log(
        &self,
        now: DateTime<Utc>,
        days_ahead: u32,
        retention_days: u32,
    ) -> Result<OutcomeLogUpkeep> {
        const DELETE_BATCH: i64 = 5_000;
        let today = now.date_naive();
        let partitions_created = self.ensure_outcome_partitions(today, days_ahead).await?;
        let cutoff = today
            .checked_sub_days(Days::new(u64::from(retention_days)))
            .ok_or_else(|| StoreError::Corrupt(format!("retention of {retention_days} days")))?;
        let cutoff_at = cutoff
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .ok_or_else(|| StoreError::Corrupt(format!("no midnight on {cutoff}")))?;
        // Messages first: were the partitions dropped first and this stopped
        // half way, their devices would read `pending` until the next round.
        let mut messages_deleted = 0;
        loop {
            let n = self.delete_messages_before(cutoff_at, DELETE_BATCH).await?;
            messages_deleted += n;
            if n < DELETE_BATCH as u64 {
                break;
            }
        }
        let partitions_dropped = self.drop_outcome_partitions_before(cutoff).await?;
        Ok(OutcomeLogUpkeep {
            partitions_created,
            partitions_dropped,
            messages_deleted,
        })
    }

    /// The log's partitions, with the day range each holds.
    pub async fn outcome_partitions(
        &self,
    ) -> Result<Vec<(String, (Option<NaiveDate>, NaiveDate))>> {
        let mut conn = self.pool.acquire().await?;
        outcome_partitions(&mut conn).await
    }
}

async fn outcome_partitions(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<(String, (Option<NaiveDate>, NaiveDate))>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.relname = 'delivery_outcomes' AND p.relnamespace = current_schema()::text::regnamespace
         ORDER BY c.relname",
    )
    .fetch_all(&mut *conn)
    .await?;
    // A partition someone added by hand under another name is left alone.
    Ok(names
        .into_iter()
        .filter_map(|n| partition_range(&n).map(|r| (n, r)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_partition_name_says_its_days() {
        assert_eq!(
            partition_range("delivery_outcomes_p20261231"),
            Some((Some(day("2026-12-31")), day("2027-01-01")))
        );
        assert_eq!(
            partition_range("delivery_outcomes_before_20261203"),
            Some((None, day("2026-12-03")))
        );
        assert_eq!(partition_range("delivery_outcomes_p2026123"), None);
        assert_eq!(partition_range("delivery_outcomes_extra"), None);
        assert_eq!(
            day_partition(day("2027-01-05")),
            "delivery_outcomes_p20270105"
        );
        assert_eq!(midnight(day("2027-01-05")), "2027-01-05 00:00:00+00");
    }
}
