//! Idempotency-Keys on the requests that create one thing (a campaign, a
//! trigger): the key's row and the thing are written in one transaction,
//! under the key's lock, so a retry or a twin of the request finds either
//! nothing or both. `POST /v1/push` has its own batched path (messages.rs);
//! both share the `idempotency_keys` table, one key space per app, and the
//! key's lock.
//!
//! The answer is stored once the thing is created and shown (the view is
//! read after commit). Until then the row holds status 0 and the created
//! thing's id: a request retried after a crash in between is answered from
//! the thing itself.

use crate::messages::lock_id;
use crate::{Result, StoreError};
use herald_core::{AppId, MessageId};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

/// What a create request says of its key.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub key: String,
    /// Method, path and canonical body (see the gateway's fingerprint).
    pub fingerprint: Vec<u8>,
    pub retention: Duration,
}

/// What became of a create under a key.
#[derive(Debug)]
pub enum Keyed<T> {
    /// Created by this request.
    Created(T),
    /// Created by an earlier request with the same key and body, whose answer
    /// was stored: replay it.
    Replay { status: u16, body: Value },
    /// Created by an earlier request with the same key and body that did not
    /// live to store its answer: answer from what it created.
    Earlier(Uuid),
    /// The key was used for a different request.
    Mismatch,
    /// Another request with the key was still being written after the wait.
    InProgress,
}

/// How long a request waits for the key's lock (another request with the
/// key being written) before it is answered "in progress".
const KEY_LOCK_WAIT: &str = "5s";

/// What the key holds, read under its lock (taken for the rest of `tx`).
pub(crate) enum KeyState {
    Free,
    Decided(Decision),
}

/// The answer a key gives before anything is created.
pub(crate) enum Decision {
    Replay { status: u16, body: Value },
    Earlier(Uuid),
    Mismatch,
    InProgress,
}

impl<T> From<Decision> for Keyed<T> {
    fn from(decision: Decision) -> Self {
        match decision {
            Decision::Replay { status, body } => Keyed::Replay { status, body },
            Decision::Earlier(id) => Keyed::Earlier(id),
            Decision::Mismatch => Keyed::Mismatch,
            Decision::InProgress => Keyed::InProgress,
        }
    }
}

/// Takes the key's lock, waiting for a request holding it, and says whether
/// the key is free. An expired row is removed: the key starts a new life.
pub(crate) async fn claim_key(
    tx: &mut Transaction<'_, Postgres>,
    app: AppId,
    key: &RequestKey,
) -> Result<KeyState> {
    sqlx::query(&format!("SET LOCAL lock_timeout = '{KEY_LOCK_WAIT}'"))
        .execute(&mut **tx)
        .await?;
    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id(MessageId::for_idempotency_key(app, &key.key)))
        .execute(&mut **tx)
        .await;
    match locked {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            return Ok(KeyState::Decided(Decision::InProgress));
        }
        Err(e) => return Err(e.into()),
    }
    sqlx::query("SET LOCAL lock_timeout = 0")
        .execute(&mut **tx)
        .await?;
    let row: Option<(Vec<u8>, Uuid, i32, Value, bool)> = sqlx::query_as(
        "SELECT fingerprint, message_id, response_status, response_body, expires_at <= now()
         FROM idempotency_keys WHERE app_id = $1 AND key = $2",
    )
    .bind(app.as_uuid())
    .bind(&key.key)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        None => KeyState::Free,
        Some((.., true)) => {
            sqlx::query("DELETE FROM idempotency_keys WHERE app_id = $1 AND key = $2")
                .bind(app.as_uuid())
                .bind(&key.key)
                .execute(&mut **tx)
                .await?;
            KeyState::Free
        }
        Some((fingerprint, ..)) if fingerprint != key.fingerprint => {
            KeyState::Decided(Decision::Mismatch)
        }
        Some((_, created, 0, ..)) => KeyState::Decided(Decision::Earlier(created)),
        Some((_, _, status, body, _)) => KeyState::Decided(Decision::Replay {
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("stored status {status}")))?,
            body,
        }),
    })
}

/// Records the key as having created `created`; its answer follows with
/// [`crate::Store::store_key_answer`].
pub(crate) async fn record_key(
    tx: &mut Transaction<'_, Postgres>,
    app: AppId,
    key: &RequestKey,
    created: Uuid,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys
            (app_id, key, fingerprint, message_id, response_status, response_body, expires_at)
         VALUES ($1, $2, $3, $4, 0, 'null'::jsonb, now() + make_interval(secs => $5))",
    )
    .bind(app.as_uuid())
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(created)
    .bind(key.retention.as_secs_f64())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl crate::Store {
    /// Stores the answer a keyed create gave, for its retries to replay.
    pub async fn store_key_answer(
        &self,
        app: AppId,
        key: &str,
        status: u16,
        body: &Value,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4
             WHERE app_id = $1 AND key = $2 AND response_status = 0",
        )
        .bind(app.as_uuid())
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
