use crate::{Result, Store, StoreError};
use chrono::{DateTime, Utc};
use herald_core::{
    AppId, DeliveryId, DeliveryJob, DeliveryOutcome, DeliveryPolicy, DeliveryStatus, MessageId,
    Notification, Platform,
};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub app_id: AppId,
    pub kind: &'static str,
    pub notification: Notification,
    pub policy: DeliveryPolicy,
    pub expires_at: Option<DateTime<Utc>>,
    /// Not published before this time.
    pub send_at: Option<DateTime<Utc>>,
    pub deliveries: Vec<NewDelivery>,
}

impl NewMessage {
    /// The message's delivery jobs, as the outbox relay publishes them from
    /// the stored rows.
    pub fn jobs(&self, trace_parent: Option<&str>) -> Vec<DeliveryJob> {
        self.deliveries
            .iter()
            .map(|d| DeliveryJob {
                delivery_id: d.id,
                message_id: self.id,
                app_id: self.app_id,
                platform: d.platform,
                token: d.token.clone(),
                install_id: d.install_id.clone(),
                notification: self.notification.clone(),
                policy: self.policy,
                expires_at: self.expires_at,
                locale: d.locale.clone(),
                apns_sandbox: d.apns_sandbox,
                attempt: 0,
                not_before: None,
                campaign: None,
                trace_parent: trace_parent.map(str::to_owned),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub platform: Platform,
    pub token: String,
    pub install_id: Option<String>,
    pub locale: Option<String>,
    pub apns_sandbox: bool,
}

/// The Idempotency-Key of a request, with the response to store beside it.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub key: String,
    pub fingerprint: Vec<u8>,
    pub response_status: u16,
    pub response_body: Value,
    pub retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub message_id: MessageId,
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AcceptOutcome {
    /// Written; the outbox row is waiting to be published.
    Accepted { outbox_id: Option<i64> },
    /// The key was used before for the same request: answer with what was stored.
    Replay(StoredResponse),
    /// Another request with the same key is being processed right now.
    KeyInProgress,
    /// The key was used before for a different request.
    KeyMismatch,
    /// The key's retention ran out, and the message id given belongs to an
    /// earlier life of the key: ask [`Store::message_id_for_key`] for this
    /// life's id and try again. Nothing was written.
    KeyOutlived,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: DeliveryId,
    pub message_id: MessageId,
    pub platform: Platform,
    pub token: String,
    pub install_id: Option<String>,
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub provider_id: Option<String>,
    pub attempts: i32,
    pub settled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub platform: Platform,
    pub status: DeliveryStatus,
    pub count: i64,
}

#[derive(Debug, Clone)]
pub struct MessageView {
    pub id: MessageId,
    pub kind: String,
    pub policy: DeliveryPolicy,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub send_at: Option<DateTime<Utc>>,
    pub counts: Vec<StatusCount>,
    pub deliveries: Vec<DeliveryRow>,
}

/// Two requests with one key serialise on this lock; the message id is already
/// a hash of (app, key), so its first 8 bytes make a well-spread lock id.
/// The advisory lock of an Idempotency-Key (by its first message id), shared
/// by every request that names the key.
pub(crate) fn lock_id(message: MessageId) -> i64 {
    let b = message.as_uuid().into_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn corrupt<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    message_id: Uuid,
    app_id: Uuid,
    platform: String,
    token: String,
    install_id: Option<String>,
    notification: Value,
    policy: String,
    expires_at: Option<DateTime<Utc>>,
    locale: Option<String>,
    apns_sandbox: bool,
}

#[derive(sqlx::FromRow)]
struct PendingJobRow {
    created_at: DateTime<Utc>,
    #[sqlx(flatten)]
    job: JobRow,
}

fn job_from_row(row: JobRow) -> Result<DeliveryJob> {
    Ok(DeliveryJob {
        delivery_id: DeliveryId(row.id),
        message_id: MessageId(row.message_id),
        app_id: AppId(row.app_id),
        platform: Platform::from_str(&row.platform).map_err(corrupt)?,
        token: row.token,
        install_id: row.install_id,
        notification: serde_json::from_value(row.notification).map_err(corrupt)?,
        policy: DeliveryPolicy::from_str(&row.policy).map_err(corrupt)?,
        expires_at: row.expires_at,
        locale: row.locale,
        apns_sandbox: row.apns_sandbox,
        attempt: 0,
        not_before: None,
        campaign: None,
        trace_parent: None,
    })
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    kind: String,
    policy: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    send_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryDbRow {
    id: Uuid,
    message_id: Uuid,
    platform: String,
    token: String,
    install_id: Option<String>,
    status: String,
    reason: Option<String>,
    provider_id: Option<String>,
    attempts: i32,
    settled_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "d.id, m.id AS message_id, m.app_id, d.platform, d.token, d.install_id, \
                           m.notification, m.policy, m.expires_at, d.locale, d.apns_sandbox";

/// The log's partitions an outcome (`o`) of message `m` can be in: it was
/// recorded after the message was accepted, and not after tomorrow. With a
/// subquery PostgreSQL keeps as one (`OFFSET 0`), the partitions outside are
/// skipped as each message comes, not probed for every outcome.
macro_rules! outcome_of_m {
    () => {
        "o.message_id = m.id AND o.recorded_at >= m.created_at \
         AND o.recorded_at < now() + interval '1 day'"
    };
}
pub(crate) use outcome_of_m;

/// The named recipients (`d`) of messages (`m`) that have no outcome yet; a
/// query adds its own conditions after it.
const PENDING_RECIPIENTS: &str = concat!(
    "FROM messages m
     CROSS JOIN LATERAL jsonb_to_recordset(m.recipients)
          AS d(id uuid, platform text, token text, install_id text, locale text, apns_sandbox bool)
     WHERE m.recipients IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM delivery_outcomes o
                       WHERE ",
    outcome_of_m!(),
    " AND o.delivery_id = d.id OFFSET 0)"
);

/// The columns of [`DeliveryDbRow`] from the `delivery_status` view.
pub(crate) const DELIVERY_COLUMNS: &str =
    "id, message_id, platform, token, install_id, status, reason, provider_id, attempts, settled_at";

impl Store {
    /// The stored answer for an Idempotency-Key, if it is still retained.
    pub async fn idempotent_response(
        &self,
        app: AppId,
        key: &str,
    ) -> Result<Option<(Vec<u8>, StoredResponse)>> {
        let row: Option<(Vec<u8>, Uuid, i32, Value)> = sqlx::query_as(
            "SELECT fingerprint, message_id, response_status, response_body FROM idempotency_keys
             WHERE app_id = $1 AND key = $2 AND expires_at > now()",
        )
        .bind(app.as_uuid())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(fp, message, status, body)| {
            (
                fp,
                StoredResponse {
                    message_id: MessageId(message),
                    status: u16::try_from(status).unwrap_or(500),
                    body,
                },
            )
        }))
    }

    /// Writes the key, the message, its deliveries and its outbox row in one
    /// transaction: after commit, nothing accepted can be lost, whatever Kafka does.
    pub async fn accept_message(
        &self,
        message: &NewMessage,
        key: Option<&IdempotencyRecord>,
    ) -> Result<AcceptOutcome> {
        let mut outcomes = self.accept_messages(&[(message, key)]).await?;
        outcomes
            .pop()
            .ok_or_else(|| corrupt("no outcome for the request"))
    }

    /// [`Store::accept_message`] for many requests in one transaction, in a
    /// fixed number of statements whatever their number: the gateway's group
    /// commit. Outcomes come in the requests' order. A key named twice in the
    /// batch is in progress for the second request, as it would be for a
    /// request arriving while the first one's transaction is open.
    pub async fn accept_messages(
        &self,
        requests: &[(&NewMessage, Option<&IdempotencyRecord>)],
    ) -> Result<Vec<AcceptOutcome>> {
        let mut tx = self.pool.begin().await?;
        let (outcomes, outbox) = match write_accepts(&mut tx, requests).await {
            Ok(written) => written,
            Err(e) => {
                // Rolled back here, not on drop: a dropped transaction's
                // rollback waits for its connection's next use, and until then
                // it holds the batch's key locks, so the same requests written
                // again one at a time would each find their own key "in
                // progress" and be answered 409.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await?;
        Ok(requests
            .iter()
            .zip(outcomes)
            .map(|((message, _), outcome)| {
                outcome.unwrap_or(AcceptOutcome::Accepted {
                    outbox_id: outbox.get(&message.id).copied(),
                })
            })
            .collect())
    }

    /// The message id for a request under `key` now: the first life of the
    /// key whose message does not exist yet. (A live key's message is its
    /// stored response's; this is for a key whose retention ran out.)
    pub async fn message_id_for_key(&self, app: AppId, key: &str) -> Result<MessageId> {
        const LIVES_PER_QUERY: u32 = 16;
        let mut first = 1u32;
        loop {
            let lives: Vec<MessageId> = (first..first.saturating_add(LIVES_PER_QUERY))
                .map(|life| MessageId::for_idempotency_key_life(app, key, life))
                .collect();
            let ids: Vec<Uuid> = lives.iter().map(MessageId::as_uuid).collect();
            let taken: std::collections::HashSet<Uuid> =
                sqlx::query_scalar("SELECT id FROM messages WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .collect();
            if let Some(id) = lives.into_iter().find(|id| !taken.contains(&id.as_uuid())) {
                return Ok(id);
            }
            first = first.saturating_add(LIVES_PER_QUERY);
        }
    }

    /// Deletes Idempotency-Keys past their retention, a batch at a time;
    /// returns how many went.
    pub async fn purge_expired_idempotency_keys(&self, batch: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE ctid IN
                (SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
        )
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Outbox rows due and not yet acknowledged by Kafka, oldest first.
    /// Unscheduled rows younger than `grace` are left to the writer that is
    /// publishing them at this moment, so they do not go to Kafka twice.
    pub async fn unpublished_outbox(
        &self,
        limit: i64,
        grace: std::time::Duration,
    ) -> Result<Vec<(i64, MessageId)>> {
        let rows: Vec<(i64, Uuid)> = sqlx::query_as(
            "SELECT id, message_id FROM outbox
             WHERE published_at IS NULL
               AND (publish_at <= now()
                    OR (publish_at IS NULL AND created_at <= now() - make_interval(secs => $2)))
             ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .bind(grace.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, m)| (id, MessageId(m))).collect())
    }

    pub async fn mark_published(&self, outbox_ids: &[i64]) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
        )
        .bind(outbox_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A message whose jobs Kafka refuses (too large for any broker): its
    /// outbox row is done with, and its unsettled deliveries are settled
    /// `failed` with `reason`, so that the message's status says what became
    /// of it and nothing retries it (the relay, recovery).
    pub async fn fail_unpublishable(
        &self,
        outbox_id: i64,
        message: MessageId,
        reason: &str,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = $1")
            .bind(outbox_id)
            .execute(&mut *tx)
            .await?;
        let failed = sqlx::query(&format!(
            "INSERT INTO delivery_outcomes (message_id, delivery_id, app_id, platform, token,
                                            install_id, status, reason, attempts, settled_at)
             SELECT m.id, d.id, m.app_id, d.platform, d.token, d.install_id, 'failed', $2, 0, now()
             {PENDING_RECIPIENTS} AND m.id = $1"
        ))
        .bind(message.as_uuid())
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(failed)
    }

    /// The unsettled deliveries of some messages, as jobs to publish.
    pub async fn pending_jobs_for(&self, messages: &[MessageId]) -> Result<Vec<DeliveryJob>> {
        let ids: Vec<Uuid> = messages.iter().map(|m| m.as_uuid()).collect();
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} {PENDING_RECIPIENTS} AND m.id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(job_from_row).collect()
    }

    /// Every unsettled delivery that is due, a page at a time by keyset
    /// (the message's created_at, the delivery's id): what recovery
    /// republishes. A push for later stays out: its outbox row is published
    /// at its `send_at`, not before.
    pub async fn pending_jobs_page(
        &self,
        since: Option<DateTime<Utc>>,
        after: Option<(DateTime<Utc>, DeliveryId)>,
        limit: i64,
    ) -> Result<Vec<(DateTime<Utc>, DeliveryJob)>> {
        let (after_at, after_id) = match after {
            Some((at, id)) => (Some(at), Some(id.as_uuid())),
            None => (since, Some(Uuid::nil())),
        };
        let rows: Vec<PendingJobRow> = sqlx::query_as(&format!(
            "SELECT m.created_at, {JOB_COLUMNS} {PENDING_RECIPIENTS}
                   AND (m.send_at IS NULL OR m.send_at <= now())
                   AND ($1::timestamptz IS NULL OR m.created_at >= $1)
                   AND ($1::timestamptz IS NULL OR (m.created_at, d.id) > ($1, $2))
                 ORDER BY m.created_at, d.id LIMIT $3"
        ))
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.created_at, job_from_row(r.job)?)))
            .collect()
    }

    /// Appends a batch of outcomes to the log, in key order. The first outcome
    /// of a delivery wins, so a replayed outcome event is not appended again;
    /// the one exception is `failed`, which a replayed dead letter may follow
    /// with a real outcome. Invalid tokens are pruned.
    pub async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let marks = highest_marks(outcomes);
        let outcomes = &one_per_delivery(outcomes);
        let mut tx = self.pool.begin().await?;
        if !marks.is_empty() {
            let (scopes, seqs): (Vec<&str>, Vec<i64>) = marks
                .iter()
                .map(|(scope, seq)| (*scope, i64::try_from(*seq).unwrap_or(i64::MAX)))
                .unzip();
            sqlx::query(
                "INSERT INTO ledger_watermarks (scope, seq)
                 SELECT * FROM UNNEST($1::text[], $2::int8[])
                 ON CONFLICT (scope) DO UPDATE
                 SET seq = GREATEST(ledger_watermarks.seq, EXCLUDED.seq), updated_at = now()
                 WHERE EXCLUDED.seq > ledger_watermarks.seq",
            )
            .bind(&scopes)
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        }
        let ids: Vec<Uuid> = outcomes.iter().map(|o| o.delivery_id.as_uuid()).collect();
        let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = outcomes.iter().map(|o| o.reason.as_deref()).collect();
        let provider_ids: Vec<Option<&str>> =
            outcomes.iter().map(|o| o.provider_id.as_deref()).collect();
        let attempts: Vec<i32> = outcomes
            .iter()
            .map(|o| i32::try_from(o.attempts).unwrap_or(i32::MAX))
            .collect();
        let ats: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.at).collect();
        let message_ids: Vec<Uuid> = outcomes.iter().map(|o| o.message_id.as_uuid()).collect();
        let app_ids: Vec<Uuid> = outcomes.iter().map(|o| o.app_id.as_uuid()).collect();
        let platforms: Vec<&str> = outcomes.iter().map(|o| o.platform.as_str()).collect();
        let tokens: Vec<&str> = outcomes.iter().map(|o| o.token.as_str()).collect();
        let installs: Vec<Option<&str>> =
            outcomes.iter().map(|o| o.install_id.as_deref()).collect();
        // Only outcomes recorded now (not replays) go to the apps' webhooks,
        // one event per app and batch.
        sqlx::query(concat!(
            "WITH u AS (
                SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[],
                                     $6::timestamptz[], $7::uuid[], $8::uuid[], $9::text[],
                                     $10::text[], $11::text[])
                     AS u(id, status, reason, provider_id, attempts, at,
                          message_id, app_id, platform, token, install_id)
             ), recorded AS (
                INSERT INTO delivery_outcomes (message_id, delivery_id, app_id, platform, token,
                                               install_id, status, reason, provider_id, attempts,
                                               settled_at)
                SELECT u.message_id, u.id, u.app_id, u.platform, u.token, u.install_id,
                       u.status, u.reason, u.provider_id, u.attempts, u.at
                -- The message may be gone (its app deleted): nothing to record.
                FROM u JOIN messages m ON m.id = u.message_id
                WHERE NOT EXISTS (SELECT 1 FROM delivery_outcomes o
                                  WHERE ",
            outcome_of_m!(),
            " AND o.delivery_id = u.id
                                    AND (o.status <> 'failed' OR u.status = 'failed') OFFSET 0)
                ORDER BY u.message_id, u.id
                RETURNING *
             )
             INSERT INTO webhook_events (app_id, payload)
             SELECT r.app_id, jsonb_build_object('type', 'deliveries.settled', 'deliveries',
                        jsonb_agg(jsonb_build_object(
                            'delivery_id', r.delivery_id, 'message_id', r.message_id,
                            'platform', r.platform, 'token', r.token, 'install_id', r.install_id,
                            'status', r.status, 'reason', r.reason, 'provider_id', r.provider_id,
                            'attempts', r.attempts, 'settled_at', r.settled_at)
                        ORDER BY r.delivery_id))
             FROM recorded r JOIN apps a ON a.id = r.app_id
             WHERE a.webhook_url IS NOT NULL
             GROUP BY r.app_id"
        ))
        .bind(&ids)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&provider_ids)
        .bind(&attempts)
        .bind(&ats)
        .bind(&message_ids)
        .bind(&app_ids)
        .bind(&platforms)
        .bind(&tokens)
        .bind(&installs)
        .execute(&mut *tx)
        .await?;
        let invalid: Vec<&DeliveryOutcome> = outcomes
            .iter()
            .copied()
            .filter(|o| o.invalid_token)
            .collect();
        if !invalid.is_empty() {
            let apps: Vec<Uuid> = invalid.iter().map(|o| o.app_id.as_uuid()).collect();
            let platforms: Vec<&str> = invalid.iter().map(|o| o.platform.as_str()).collect();
            let tokens: Vec<&str> = invalid.iter().map(|o| o.token.as_str()).collect();
            let since: Vec<Option<DateTime<Utc>>> =
                invalid.iter().map(|o| o.invalid_since).collect();
            // APNs's rule: a token invalid since T stays in use by an
            // installation that registered again after T.
            sqlx::query(
                "UPDATE installations i SET invalidated_at = now()
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
                      AS u(app_id, platform, token, since)
                 WHERE i.app_id = u.app_id AND i.platform = u.platform AND i.token = u.token
                   AND i.invalidated_at IS NULL
                   AND (u.since IS NULL OR i.updated_at <= u.since)",
            )
            .bind(&apps)
            .bind(&platforms)
            .bind(&tokens)
            .bind(&since)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The settled deliveries among `deliveries` (each with its message):
    /// the dedupe fallback while the Redis ledger is being rebuilt.
    pub async fn settled_statuses(
        &self,
        deliveries: &[(MessageId, DeliveryId)],
    ) -> Result<Vec<(DeliveryId, DeliveryStatus)>> {
        let messages: Vec<Uuid> = deliveries.iter().map(|(m, _)| m.as_uuid()).collect();
        let ids: Vec<Uuid> = deliveries.iter().map(|(_, d)| d.as_uuid()).collect();
        let rows: Vec<(Uuid, String)> = sqlx::query_as(concat!(
            "SELECT u.id, s.status
                 FROM UNNEST($1::uuid[], $2::uuid[]) AS u(message_id, id)
                 JOIN messages m ON m.id = u.message_id
                 CROSS JOIN LATERAL (
                     SELECT o.status FROM delivery_outcomes o
                     WHERE ",
            outcome_of_m!(),
            " AND o.delivery_id = u.id
                     ORDER BY (o.status = 'failed'), o.recorded_at LIMIT 1) s"
        ))
        .bind(&messages)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, s)| Ok((DeliveryId(id), parse_status(&s)?)))
            .collect()
    }

    /// The deliveries among `deliveries` (each with its message) that have an
    /// outcome, each with when its first outcome was recorded: a campaign's
    /// walk skips them, and counts those settled before its generation began.
    pub async fn first_outcomes(
        &self,
        deliveries: &[(MessageId, DeliveryId)],
    ) -> Result<Vec<(DeliveryId, DateTime<Utc>)>> {
        let messages: Vec<Uuid> = deliveries.iter().map(|(m, _)| m.as_uuid()).collect();
        let ids: Vec<Uuid> = deliveries.iter().map(|(_, d)| d.as_uuid()).collect();
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(concat!(
            "SELECT u.id, s.first
                 FROM UNNEST($1::uuid[], $2::uuid[]) AS u(message_id, id)
                 JOIN messages m ON m.id = u.message_id
                 CROSS JOIN LATERAL (
                     SELECT min(o.recorded_at) AS first FROM delivery_outcomes o
                     WHERE ",
            outcome_of_m!(),
            " AND o.delivery_id = u.id) s
                 WHERE s.first IS NOT NULL"
        ))
        .bind(&messages)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, at)| (DeliveryId(id), at))
            .collect())
    }

    /// Deliveries whose outcome was recorded since `since`, a page at a time
    /// by (message, delivery): what rebuilding the Redis ledger copies.
    /// Paging by the record's key, not by the sender's `settled_at`, misses
    /// no outcome recorded late with an earlier time.
    pub async fn settled_page(
        &self,
        since: DateTime<Utc>,
        after: Option<(MessageId, DeliveryId)>,
        limit: i64,
    ) -> Result<Vec<(MessageId, DeliveryId, DeliveryStatus)>> {
        let (after_message, after_id) = after.map_or((Uuid::nil(), Uuid::nil()), |(m, d)| {
            (m.as_uuid(), d.as_uuid())
        });
        let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (message_id, delivery_id) message_id, delivery_id, status
             FROM delivery_outcomes
             WHERE recorded_at >= $1 AND (message_id, delivery_id) > ($2, $3)
             ORDER BY message_id, delivery_id, (status = 'failed'), recorded_at
             LIMIT $4",
        )
        .bind(since)
        .bind(after_message)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(m, id, s)| Ok((MessageId(m), DeliveryId(id), parse_status(&s)?)))
            .collect()
    }

    /// The highest ledger write sequence recorded per scope.
    pub async fn ledger_watermarks(&self) -> Result<std::collections::HashMap<String, u64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT scope, seq FROM ledger_watermarks")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(scope, seq)| (scope, u64::try_from(seq).unwrap_or(0)))
            .collect())
    }

    /// Whether the app has this message (one index lookup).
    pub async fn message_exists(&self, app: AppId, id: MessageId) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 AND app_id = $2)",
        )
        .bind(id.as_uuid())
        .bind(app.as_uuid())
        .fetch_one(&self.pool)
        .await?)
    }

    /// One page of a message's deliveries, by delivery id, optionally of one
    /// status.
    pub async fn deliveries_page(
        &self,
        message: MessageId,
        after: Option<DeliveryId>,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows: Vec<DeliveryDbRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM delivery_status
             WHERE message_id = $1 AND ($2::uuid IS NULL OR id > $2) AND ($3::text IS NULL OR status = $3)
             ORDER BY id LIMIT $4"
        ))
        .bind(message.as_uuid())
        .bind(after.map(|a| a.as_uuid()))
        .bind(status.map(|s| s.as_str()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(delivery_from_row).collect()
    }

    pub async fn message(
        &self,
        app: AppId,
        id: MessageId,
        delivery_limit: i64,
    ) -> Result<Option<MessageView>> {
        let row: Option<MessageRow> = sqlx::query_as(
            "SELECT kind, policy, created_at, expires_at, send_at FROM messages WHERE id = $1 AND app_id = $2",
        )
        .bind(id.as_uuid())
        .bind(app.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        let Some(m) = row else {
            return Ok(None);
        };
        let counts: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT platform, status, count(*) FROM delivery_status WHERE message_id = $1
             GROUP BY platform, status ORDER BY platform, status",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        let deliveries: Vec<DeliveryDbRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM delivery_status WHERE message_id = $1 ORDER BY id LIMIT $2"
        ))
            .bind(id.as_uuid())
            .bind(delivery_limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(Some(MessageView {
            id,
            kind: m.kind,
            policy: DeliveryPolicy::from_str(&m.policy).map_err(corrupt)?,
            created_at: m.created_at,
            expires_at: m.expires_at,
            send_at: m.send_at,
            counts: counts
                .into_iter()
                .map(|(p, s, count)| {
                    Ok(StatusCount {
                        platform: Platform::from_str(&p).map_err(corrupt)?,
                        status: parse_status(&s)?,
                        count,
                    })
                })
                .collect::<Result<_>>()?,
            deliveries: deliveries
                .into_iter()
                .map(delivery_from_row)
                .collect::<Result<_>>()?,
        }))
    }
}

/// A batch may hold the same delivery twice (an outcome said again after a
/// rebalance); one statement can write a row only once. Keep the outcome the
/// table would keep: the first, unless it is `failed` and a later one is not.
/// The highest ledger write sequence per scope among `outcomes`.
fn highest_marks(outcomes: &[DeliveryOutcome]) -> std::collections::BTreeMap<&str, u64> {
    let mut marks = std::collections::BTreeMap::new();
    for mark in outcomes.iter().filter_map(|o| o.ledger_mark.as_ref()) {
        let seq = marks.entry(mark.scope.as_str()).or_insert(0);
        *seq = (*seq).max(mark.seq);
    }
    marks
}

fn one_per_delivery(outcomes: &[DeliveryOutcome]) -> Vec<&DeliveryOutcome> {
    let mut index: std::collections::HashMap<DeliveryId, usize> = Default::default();
    let mut kept: Vec<&DeliveryOutcome> = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        match index.get(&o.delivery_id) {
            None => {
                index.insert(o.delivery_id, kept.len());
                kept.push(o);
            }
            Some(&i) => {
                if kept[i].status == DeliveryStatus::Failed && o.status != DeliveryStatus::Failed {
                    kept[i] = o;
                }
            }
        }
    }
    kept
}

fn parse_status(s: &str) -> Result<DeliveryStatus> {
    DeliveryStatus::parse(s).ok_or_else(|| corrupt(format!("status `{s}`")))
}

pub(crate) fn delivery_from_row(d: DeliveryDbRow) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: DeliveryId(d.id),
        message_id: MessageId(d.message_id),
        platform: Platform::from_str(&d.platform).map_err(corrupt)?,
        token: d.token,
        install_id: d.install_id,
        status: parse_status(&d.status)?,
        reason: d.reason,
        provider_id: d.provider_id,
        attempts: d.attempts,
        settled_at: d.settled_at,
    })
}

struct ExistingKey {
    fingerprint: Vec<u8>,
    response: StoredResponse,
    expired: bool,
}

/// The body of [`Store::accept_messages`], inside its transaction: what each
/// request comes to (None: written), and the outbox row of each written message.
#[allow(clippy::type_complexity)]
async fn write_accepts(
    tx: &mut Transaction<'_, Postgres>,
    requests: &[(&NewMessage, Option<&IdempotencyRecord>)],
) -> Result<(
    Vec<Option<AcceptOutcome>>,
    std::collections::HashMap<MessageId, i64>,
)> {
    let mut outcomes: Vec<Option<AcceptOutcome>> = vec![None; requests.len()];
    // Requests with a key, the first of each key only.
    let mut seen = std::collections::HashSet::new();
    let mut keyed: Vec<(usize, &IdempotencyRecord)> = Vec::new();
    for (i, (message, key)) in requests.iter().enumerate() {
        if let Some(key) = key {
            if seen.insert((message.app_id, key.key.as_str())) {
                keyed.push((i, key));
            } else {
                outcomes[i] = Some(AcceptOutcome::KeyInProgress);
            }
        }
    }
    if !keyed.is_empty() {
        // One lock per key, whatever life of it a request names.
        let lock_ids: Vec<i64> = keyed
            .iter()
            .map(|&(i, key)| {
                lock_id(MessageId::for_idempotency_key(
                    requests[i].0.app_id,
                    &key.key,
                ))
            })
            .collect();
        let locked: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(u.id)
             FROM UNNEST($1::int8[]) WITH ORDINALITY AS u(id, n) ORDER BY u.n",
        )
        .bind(&lock_ids)
        .fetch_all(&mut **tx)
        .await?;
        if locked.len() != keyed.len() {
            return Err(corrupt("advisory locks: one answer per key expected"));
        }
        for (&(i, _), locked) in keyed.iter().zip(&locked) {
            if !locked {
                outcomes[i] = Some(AcceptOutcome::KeyInProgress);
            }
        }
        keyed.retain(|&(i, _)| outcomes[i].is_none());
        let existing = existing_keys(tx, requests, &keyed).await?;
        let mut expired: Vec<(usize, &IdempotencyRecord)> = Vec::new();
        for &(i, key) in &keyed {
            match existing.get(&i) {
                None => {}
                Some(stored) if stored.expired => expired.push((i, key)),
                Some(stored) if stored.fingerprint != key.fingerprint => {
                    outcomes[i] = Some(AcceptOutcome::KeyMismatch)
                }
                Some(stored) => outcomes[i] = Some(AcceptOutcome::Replay(stored.response.clone())),
            }
        }
        // A new key (or a new life of an expired one) must name a new
        // message: were its message there already, the write would keep
        // the old one and the request would be answered 202 for nothing.
        let fresh: Vec<Uuid> = keyed
            .iter()
            .filter(|&&(i, _)| outcomes[i].is_none())
            .map(|&(i, _)| requests[i].0.id.as_uuid())
            .collect();
        if !fresh.is_empty() {
            let taken: std::collections::HashSet<Uuid> =
                sqlx::query_scalar("SELECT id FROM messages WHERE id = ANY($1)")
                    .bind(&fresh)
                    .fetch_all(&mut **tx)
                    .await?
                    .into_iter()
                    .collect();
            for &(i, _) in &keyed {
                if outcomes[i].is_none() && taken.contains(&requests[i].0.id.as_uuid()) {
                    outcomes[i] = Some(AcceptOutcome::KeyOutlived);
                }
            }
            expired.retain(|&(i, _)| outcomes[i].is_none());
        }
        if !expired.is_empty() {
            sqlx::query(
                "DELETE FROM idempotency_keys k USING UNNEST($1::uuid[], $2::text[]) AS u(app_id, key)
                 WHERE k.app_id = u.app_id AND k.key = u.key",
            )
            .bind(expired.iter().map(|&(i, _)| requests[i].0.app_id.as_uuid()).collect::<Vec<_>>())
            .bind(expired.iter().map(|(_, k)| k.key.as_str()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        }
        let new_keys: Vec<(&NewMessage, &IdempotencyRecord)> = keyed
            .iter()
            .filter(|&&(i, _)| outcomes[i].is_none())
            .map(|&(i, key)| (requests[i].0, key))
            .collect();
        insert_keys(tx, &new_keys).await?;
    }
    let to_write: Vec<(&NewMessage, Option<&str>)> = requests
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| outcome.is_none())
        .map(|((message, key), _)| (*message, key.map(|k| k.key.as_str())))
        .collect();
    let outbox: std::collections::HashMap<MessageId, i64> = write_messages(tx, &to_write)
        .await?
        .into_iter()
        .map(|(outbox_id, message)| (message, outbox_id))
        .collect();
    Ok((outcomes, outbox))
}

/// The stored keys of the keyed requests, by the request's index.
async fn existing_keys(
    tx: &mut Transaction<'_, Postgres>,
    requests: &[(&NewMessage, Option<&IdempotencyRecord>)],
    keyed: &[(usize, &IdempotencyRecord)],
) -> Result<std::collections::HashMap<usize, ExistingKey>> {
    let rows: Vec<(i64, Vec<u8>, Uuid, i32, Value, bool)> = sqlx::query_as(
        "SELECT u.n, k.fingerprint, k.message_id, k.response_status, k.response_body,
                k.expires_at <= now()
         FROM UNNEST($1::uuid[], $2::text[]) WITH ORDINALITY AS u(app_id, key, n)
         JOIN idempotency_keys k ON k.app_id = u.app_id AND k.key = u.key",
    )
    .bind(
        keyed
            .iter()
            .map(|&(i, _)| requests[i].0.app_id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(
        keyed
            .iter()
            .map(|(_, k)| k.key.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|(n, fingerprint, message, status, body, expired)| {
            // ORDINALITY counts from 1.
            let &(i, _) = usize::try_from(n - 1)
                .ok()
                .and_then(|n| keyed.get(n))
                .ok_or_else(|| corrupt(format!("key ordinal {n}")))?;
            let response = StoredResponse {
                message_id: MessageId(message),
                status: u16::try_from(status).unwrap_or(500),
                body,
            };
            Ok((
                i,
                ExistingKey {
                    fingerprint,
                    response,
                    expired,
                },
            ))
        })
        .collect()
}

async fn insert_keys(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[(&NewMessage, &IdempotencyRecord)],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO idempotency_keys
            (app_id, key, fingerprint, message_id, response_status, response_body, expires_at)
         SELECT u.app_id, u.key, u.fingerprint, u.message_id, u.status, u.body,
                now() + make_interval(secs => u.retention)
         FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::uuid[], $5::int4[], $6::jsonb[], $7::float8[])
              AS u(app_id, key, fingerprint, message_id, status, body, retention)",
    )
    .bind(keys.iter().map(|(m, _)| m.app_id.as_uuid()).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, k)| k.key.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, k)| k.fingerprint.as_slice()).collect::<Vec<_>>())
    .bind(keys.iter().map(|(m, _)| m.id.as_uuid()).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, k)| i32::from(k.response_status)).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, k)| &k.response_body).collect::<Vec<_>>())
    .bind(keys.iter().map(|(_, k)| k.retention.as_secs_f64()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes messages (each with the Idempotency-Key it was accepted under and
/// the devices it names) and their outbox rows in two statements, skipping a
/// message that exists already (its key expired and was purged, or a
/// trigger's timer fired before): its deliveries are settled or on their way.
/// Returns the new outbox rows with their messages.
pub(crate) async fn write_messages(
    tx: &mut Transaction<'_, Postgres>,
    messages: &[(&NewMessage, Option<&str>)],
) -> Result<Vec<(i64, MessageId)>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let notifications: Vec<Value> = messages
        .iter()
        .map(|(m, _)| serde_json::to_value(&m.notification).map_err(corrupt))
        .collect::<Result<_>>()?;
    let recipients: Vec<Value> = messages
        .iter()
        .map(|(m, _)| recipients_json(&m.deliveries))
        .collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO messages (id, app_id, kind, notification, policy, expires_at, idempotency_key,
                               send_at, recipients)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[],
                              $6::timestamptz[], $7::text[], $8::timestamptz[], $9::jsonb[])
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(
        messages
            .iter()
            .map(|(m, _)| m.id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|(m, _)| m.app_id.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(messages.iter().map(|(m, _)| m.kind).collect::<Vec<_>>())
    .bind(&notifications)
    .bind(
        messages
            .iter()
            .map(|(m, _)| m.policy.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|(m, _)| m.expires_at)
            .collect::<Vec<_>>(),
    )
    .bind(messages.iter().map(|(_, key)| *key).collect::<Vec<_>>())
    .bind(messages.iter().map(|(m, _)| m.send_at).collect::<Vec<_>>())
    .bind(&recipients)
    .fetch_all(&mut **tx)
    .await?;
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    let new: Vec<&NewMessage> = messages
        .iter()
        .map(|(m, _)| *m)
        .filter(|m| inserted.contains(&m.id.as_uuid()))
        .collect();
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO outbox (message_id, publish_at)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) RETURNING id, message_id",
    )
    .bind(new.iter().map(|m| m.id.as_uuid()).collect::<Vec<_>>())
    .bind(new.iter().map(|m| m.send_at).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(o, m)| (o, MessageId(m))).collect())
}

/// A message's devices as `messages.recipients` holds them: the accepted
/// request, and what recovery republishes while a device has no outcome.
fn recipients_json(deliveries: &[NewDelivery]) -> Value {
    Value::Array(
        deliveries
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id.as_uuid(),
                    "platform": d.platform.as_str(),
                    "token": d.token,
                    "install_id": d.install_id,
                    "locale": d.locale,
                    "apns_sandbox": d.apns_sandbox,
                })
            })
            .collect(),
    )
}
