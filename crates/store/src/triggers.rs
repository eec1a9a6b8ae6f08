//! Trigger campaigns: posted events (their own outbox), rules, and durable
//! timers, fired in transactions that hold a per-user lock.

use crate::messages::{write_messages, NewMessage};
use crate::request_keys::{claim_key, record_key, KeyState};
use crate::{Keyed, RequestKey, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use herald_core::trigger::{EventInput, QuietHours, TimerStatus, TriggerInput, UserKey};
use herald_core::{AppId, Platform};
use serde_json::{Map, Value};
use sqlx::{Postgres, Transaction};
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

fn corrupt<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub id: Uuid,
    pub app_id: AppId,
    pub input: TriggerInput,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An event waiting to be published, as it goes on the events topic.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub app_id: AppId,
    pub event_id: String,
    pub event: EventInput,
}

/// (app, event id, body, occurred at, received at)
type UnappliedEventRow = (Uuid, String, Value, DateTime<Utc>, DateTime<Utc>);

/// A timer to create: one per (rule, entry event).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTimer {
    pub trigger_id: Uuid,
    pub event_id: String,
    pub app_id: AppId,
    pub user_key: String,
    pub occurred_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub attributes: Map<String, Value>,
}

/// A due timer, locked by the transaction that will settle it.
#[derive(Debug, Clone, PartialEq)]
pub struct DueTimer {
    pub trigger_id: Uuid,
    pub event_id: String,
    pub app_id: AppId,
    pub user_key: String,
    pub occurred_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub attributes: Map<String, Value>,
}

/// One reachable installation of a user, with what templates and quiet
/// hours read.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDevice {
    pub install_id: String,
    pub platform: Platform,
    pub token: String,
    pub locale: Option<String>,
    pub apns_sandbox: bool,
    pub time_zone: Option<String>,
    pub attributes: Map<String, Value>,
}

#[derive(sqlx::FromRow)]
struct TriggerRow {
    id: Uuid,
    app_id: Uuid,
    spec: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TriggerRow> for Trigger {
    type Error = StoreError;
    fn try_from(r: TriggerRow) -> Result<Self> {
        Ok(Trigger {
            id: r.id,
            app_id: AppId(r.app_id),
            input: serde_json::from_value(r.spec).map_err(corrupt)?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    app_id: Uuid,
    user_key: String,
    install_id: String,
    platform: String,
    token: String,
    locale: Option<String>,
    apns_environment: String,
    time_zone: Option<String>,
    attributes: Value,
}

#[derive(sqlx::FromRow)]
struct TimerRow {
    trigger_id: Uuid,
    event_id: String,
    app_id: Uuid,
    user_key: String,
    occurred_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    attributes: Value,
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Timers of one (rule, user) serialise on this lock while one of them fires,
/// so that a frequency cap holds however many engines fire at once.
fn user_lock_id(trigger: Uuid, user_key: &str) -> i64 {
    let id = Uuid::new_v5(&trigger, user_key.as_bytes()).into_bytes();
    i64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
}

const TRIGGER_COLUMNS: &str = "id, app_id, spec, created_at, updated_at";

impl Store {
    /// Stores events (their `occurred_at` filled in); an event id already
    /// stored for the app is ignored. Returns the ids that were new.
    pub async fn accept_events(
        &self,
        app: AppId,
        events: &[EventInput],
    ) -> Result<std::collections::HashSet<String>> {
        match self.accept_events_keyed(app, events, None).await? {
            Keyed::Created(new) => Ok(new),
            _ => Err(corrupt("events without a key were answered from one")),
        }
    }

    /// [`Store::accept_events`] under an Idempotency-Key when given one. The
    /// key's row names no single thing: an earlier request that did not live
    /// to store its answer is `Earlier(nil)`.
    pub async fn accept_events_keyed(
        &self,
        app: AppId,
        events: &[EventInput],
        key: Option<&RequestKey>,
    ) -> Result<Keyed<std::collections::HashSet<String>>> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = key {
            match claim_key(&mut tx, app, key).await? {
                KeyState::Free => record_key(&mut tx, app, key, Uuid::nil()).await?,
                KeyState::Decided(decision) => return Ok(decision.into()),
            }
        }
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        let users: Vec<String> = events.iter().map(|e| e.user().encode()).collect();
        let bodies: Vec<Value> = events
            .iter()
            .map(|e| serde_json::to_value(e).map_err(corrupt))
            .collect::<Result<_>>()?;
        let occurred: Vec<DateTime<Utc>> = events
            .iter()
            .map(|e| e.occurred_at.unwrap_or_else(Utc::now))
            .collect();
        let new: Vec<String> = sqlx::query_scalar(
            "INSERT INTO events (app_id, event_id, name, user_key, body, occurred_at)
             SELECT $1, u.id, u.name, u.user_key, u.body, u.occurred_at
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::timestamptz[])
                  AS u(id, name, user_key, body, occurred_at)
             ON CONFLICT (app_id, event_id) DO NOTHING
             RETURNING event_id",
        )
        .bind(app.as_uuid())
        .bind(&ids)
        .bind(&names)
        .bind(&users)
        .bind(&bodies)
        .bind(&occurred)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Keyed::Created(new.into_iter().collect()))
    }

    /// Events not yet acknowledged by Kafka, oldest first; those younger
    /// than `grace` are left to the request that is publishing them.
    pub async fn unpublished_events(
        &self,
        limit: i64,
        grace: std::time::Duration,
    ) -> Result<Vec<StoredEvent>> {
        let rows: Vec<(Uuid, String, Value, DateTime<Utc>)> = sqlx::query_as(
            "SELECT app_id, event_id, body, occurred_at FROM events
             WHERE published_at IS NULL AND received_at <= now() - make_interval(secs => $2)
             ORDER BY received_at LIMIT $1",
        )
        .bind(limit)
        .bind(grace.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(app, event_id, body, occurred_at)| {
                let mut event: EventInput = serde_json::from_value(body).map_err(corrupt)?;
                event.occurred_at = Some(occurred_at);
                Ok(StoredEvent {
                    app_id: AppId(app),
                    event_id,
                    event,
                })
            })
            .collect()
    }

    pub async fn mark_events_published(&self, events: &[(AppId, String)]) -> Result<()> {
        let apps: Vec<Uuid> = events.iter().map(|(a, _)| a.as_uuid()).collect();
        let ids: Vec<&str> = events.iter().map(|(_, e)| e.as_str()).collect();
        sqlx::query(
            "UPDATE events e SET published_at = now()
             FROM UNNEST($1::uuid[], $2::text[]) AS u(app_id, event_id)
             WHERE e.app_id = u.app_id AND e.event_id = u.event_id AND e.published_at IS NULL",
        )
        .bind(&apps)
        .bind(&ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that the trigger engine applied these events (their timers
    /// are written), so recovery need not publish them again.
    pub async fn mark_events_applied(&self, events: &[(AppId, &str)]) -> Result<()> {
        let apps: Vec<Uuid> = events.iter().map(|(a, _)| a.as_uuid()).collect();
        let ids: Vec<&str> = events.iter().map(|(_, e)| *e).collect();
        sqlx::query(
            "UPDATE events e SET applied_at = now()
             FROM UNNEST($1::uuid[], $2::text[]) AS u(app_id, event_id)
             WHERE e.app_id = u.app_id AND e.event_id = u.event_id AND e.applied_at IS NULL",
        )
        .bind(&apps)
        .bind(&ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Events received since `since` that the trigger engine has not
    /// applied, a page at a time after `after` (received_at, app, event id).
    pub async fn unapplied_events_page(
        &self,
        since: Option<DateTime<Utc>>,
        after: Option<(DateTime<Utc>, AppId, String)>,
        limit: i64,
    ) -> Result<Vec<(DateTime<Utc>, StoredEvent)>> {
        let (at, app, id) = match after {
            Some((at, app, id)) => (Some(at), app.as_uuid(), id),
            None => (since, Uuid::nil(), String::new()),
        };
        let rows: Vec<UnappliedEventRow> = sqlx::query_as(
            "SELECT app_id, event_id, body, occurred_at, received_at FROM events
             WHERE applied_at IS NULL
               AND ($1::timestamptz IS NULL OR (received_at, app_id, event_id) > ($1, $2, $3))
             ORDER BY received_at, app_id, event_id LIMIT $4",
        )
        .bind(at)
        .bind(app)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(app, event_id, body, occurred_at, received_at)| {
                let mut event: EventInput = serde_json::from_value(body).map_err(corrupt)?;
                event.occurred_at = Some(occurred_at);
                Ok((
                    received_at,
                    StoredEvent {
                        app_id: AppId(app),
                        event_id,
                        event,
                    },
                ))
            })
            .collect()
    }

    pub async fn create_trigger(
        &self,
        app: AppId,
        id: Uuid,
        input: &TriggerInput,
    ) -> Result<Trigger> {
        match self.create_trigger_keyed(app, id, input, None).await? {
            Keyed::Created(trigger) => Ok(trigger),
            _ => Err(corrupt("a create without a key was answered from one")),
        }
    }

    /// Creates a trigger, under an Idempotency-Key when given one.
    pub async fn create_trigger_keyed(
        &self,
        app: AppId,
        id: Uuid,
        input: &TriggerInput,
        key: Option<&RequestKey>,
    ) -> Result<Keyed<Trigger>> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = key {
            match claim_key(&mut tx, app, key).await? {
                KeyState::Free => record_key(&mut tx, app, key, id).await?,
                KeyState::Decided(decision) => return Ok(decision.into()),
            }
        }
        sqlx::query(
            "INSERT INTO triggers (id, app_id, name, entry_event, spec) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(app.as_uuid())
        .bind(&input.name)
        .bind(&input.entry_event)
        .bind(serde_json::to_value(input).map_err(corrupt)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.trigger(app, id)
            .await?
            .map(Keyed::Created)
            .ok_or_else(|| corrupt("a trigger vanished right after it was created"))
    }

    pub async fn update_trigger(
        &self,
        app: AppId,
        id: Uuid,
        input: &TriggerInput,
    ) -> Result<Option<Trigger>> {
        let done = sqlx::query(
            "UPDATE triggers SET name = $3, entry_event = $4, spec = $5, updated_at = now()
             WHERE id = $1 AND app_id = $2",
        )
        .bind(id)
        .bind(app.as_uuid())
        .bind(&input.name)
        .bind(&input.entry_event)
        .bind(serde_json::to_value(input).map_err(corrupt)?)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.trigger(app, id).await
    }

    /// Deletes a rule and its timers (pending pushes with it).
    pub async fn delete_trigger(&self, app: AppId, id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM triggers WHERE id = $1 AND app_id = $2")
            .bind(id)
            .bind(app.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn trigger(&self, app: AppId, id: Uuid) -> Result<Option<Trigger>> {
        let row: Option<TriggerRow> = sqlx::query_as(&format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = $1 AND app_id = $2"
        ))
        .bind(id)
        .bind(app.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Trigger::try_from).transpose()
    }

    /// Every rule of the app, oldest first.
    pub async fn triggers(&self, app: AppId) -> Result<Vec<Trigger>> {
        let rows: Vec<TriggerRow> = sqlx::query_as(&format!(
            "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE app_id = $1 ORDER BY created_at, id"
        ))
        .bind(app.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Trigger::try_from).collect()
    }

    /// Changes whenever the app's rules or quiet hours change: caches of them
    /// compare it instead of reading everything again.
    pub async fn rules_version(&self, app: AppId) -> Result<String> {
        Ok(sqlx::query_scalar(
            "SELECT concat(count(*), '/', max(updated_at), '/',
                           (SELECT quiet_hours::text FROM apps WHERE id = $1))
             FROM triggers WHERE app_id = $1",
        )
        .bind(app.as_uuid())
        .fetch_one(&self.pool)
        .await?)
    }

    /// How a rule's timers stand, per status.
    pub async fn timer_counts(&self, trigger: Uuid) -> Result<Vec<(TimerStatus, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM trigger_timers WHERE trigger_id = $1 GROUP BY status",
        )
        .bind(trigger)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(s, n)| {
                TimerStatus::ALL
                    .into_iter()
                    .find(|t| t.as_str() == s)
                    .map(|t| (t, n))
                    .ok_or_else(|| corrupt(format!("timer status `{s}`")))
            })
            .collect()
    }

    pub async fn app_quiet_hours(&self, app: AppId) -> Result<Option<QuietHours>> {
        let v: Option<Option<Value>> =
            sqlx::query_scalar("SELECT quiet_hours FROM apps WHERE id = $1")
                .bind(app.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        v.flatten()
            .map(|v| serde_json::from_value(v).map_err(corrupt))
            .transpose()
    }

    pub async fn set_app_quiet_hours(&self, app: AppId, quiet: Option<&QuietHours>) -> Result<()> {
        sqlx::query("UPDATE apps SET quiet_hours = $2 WHERE id = $1")
            .bind(app.as_uuid())
            .bind(
                quiet
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(corrupt)?,
            )
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates timers; one that exists already (a replayed event) is left as it is.
    pub async fn create_timers(&self, timers: &[NewTimer]) -> Result<u64> {
        if timers.is_empty() {
            return Ok(0);
        }
        let triggers: Vec<Uuid> = timers.iter().map(|t| t.trigger_id).collect();
        let events: Vec<&str> = timers.iter().map(|t| t.event_id.as_str()).collect();
        let apps: Vec<Uuid> = timers.iter().map(|t| t.app_id.as_uuid()).collect();
        let users: Vec<&str> = timers.iter().map(|t| t.user_key.as_str()).collect();
        let occurred: Vec<DateTime<Utc>> = timers.iter().map(|t| t.occurred_at).collect();
        let due: Vec<DateTime<Utc>> = timers.iter().map(|t| t.due_at).collect();
        let attrs: Vec<Value> = timers
            .iter()
            .map(|t| Value::Object(t.attributes.clone()))
            .collect();
        // A cancel already applied for the rule and user, at or after the
        // entry's time, leaves the timer cancelled from the start. The
        // (rule, user) locks keep a cancel applied at the same moment by
        // another ingest loop (another cluster's backlog) from missing the
        // timer this inserts, and this insert from missing its cancel.
        let mut tx = self.pool.begin().await?;
        lock_rule_users(&mut tx, &triggers, &users).await?;
        let done = sqlx::query(
            "INSERT INTO trigger_timers (trigger_id, event_id, app_id, user_key, occurred_at, due_at,
                                         attributes, status, settled_at)
             SELECT t.trigger_id, t.event_id, t.app_id, t.user_key, t.occurred_at, t.due_at, t.attributes,
                    CASE WHEN c.cancelled_until >= t.occurred_at THEN 'cancelled' ELSE 'pending' END,
                    CASE WHEN c.cancelled_until >= t.occurred_at THEN now() END
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::jsonb[])
                  AS t(trigger_id, event_id, app_id, user_key, occurred_at, due_at, attributes)
             LEFT JOIN trigger_cancels c ON c.trigger_id = t.trigger_id AND c.user_key = t.user_key
             ON CONFLICT (trigger_id, event_id) DO NOTHING",
        )
        .bind(&triggers)
        .bind(&events)
        .bind(&apps)
        .bind(&users)
        .bind(&occurred)
        .bind(&due)
        .bind(&attrs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// A cancel event: the user's pending timers of the rule, started by an
    /// event no later than it, will not fire; and an entry event no later
    /// than it that is applied after it starts no timer (see
    /// [`Self::create_timers`]).
    pub async fn cancel_timers(
        &self,
        trigger: Uuid,
        user_key: &str,
        until: DateTime<Utc>,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        lock_rule_users(&mut tx, &[trigger], &[user_key]).await?;
        // What is remembered is never later than now: a cancel dated in the
        // future (a client's clock ahead) cancels what is pending, but does
        // not keep the user out of the rule until that date.
        let done = sqlx::query(
            "WITH mark AS (
                 INSERT INTO trigger_cancels (trigger_id, user_key, cancelled_until)
                 VALUES ($1, $2, LEAST($3, now()))
                 ON CONFLICT (trigger_id, user_key) DO UPDATE
                 SET cancelled_until = GREATEST(trigger_cancels.cancelled_until, EXCLUDED.cancelled_until)
             )
             UPDATE trigger_timers SET status = 'cancelled', settled_at = now()
             WHERE trigger_id = $1 AND user_key = $2 AND status = 'pending' AND occurred_at <= $3",
        )
        .bind(trigger)
        .bind(user_key)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Locks up to `limit` timers due at `now`, earliest first, that no other
    /// engine holds; they are settled through the returned batch.
    pub async fn due_timers(&self, now: DateTime<Utc>, limit: i64) -> Result<DueTimers> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<TimerRow> = sqlx::query_as(
            "SELECT trigger_id, event_id, app_id, user_key, occurred_at, due_at, attributes
             FROM trigger_timers WHERE status = 'pending' AND due_at <= $1
             ORDER BY due_at, trigger_id, event_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        Ok(DueTimers {
            tx,
            timers: rows
                .into_iter()
                .map(|r| DueTimer {
                    trigger_id: r.trigger_id,
                    event_id: r.event_id,
                    app_id: AppId(r.app_id),
                    user_key: r.user_key,
                    occurred_at: r.occurred_at,
                    due_at: r.due_at,
                    attributes: object(r.attributes),
                })
                .collect(),
        })
    }
}

/// Due timers and the transaction that settles them.
pub struct DueTimers {
    tx: Transaction<'static, Postgres>,
    pub timers: Vec<DueTimer>,
}

impl DueTimers {
    /// Waits for, then holds until commit, the lock of the timer's (rule, user).
    pub async fn lock_user(&mut self, timer: &DueTimer) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(user_lock_id(timer.trigger_id, &timer.user_key))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The rule's pushes to this user settled since `since`.
    pub async fn fired_since(&mut self, timer: &DueTimer, since: DateTime<Utc>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM trigger_timers
             WHERE trigger_id = $1 AND user_key = $2 AND status = 'fired' AND settled_at > $3",
        )
        .bind(timer.trigger_id)
        .bind(&timer.user_key)
        .bind(since)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    /// The reachable installations of every timer's user, in two queries
    /// (users named by custom id, and by install id).
    pub async fn devices(
        &mut self,
        timers: &[DueTimer],
    ) -> Result<HashMap<(AppId, String), Vec<UserDevice>>> {
        let mut by_custom: (Vec<Uuid>, Vec<String>, Vec<String>) = Default::default();
        let mut by_install: (Vec<Uuid>, Vec<String>, Vec<String>) = Default::default();
        for t in timers {
            let (list, value) = match UserKey::decode(&t.user_key) {
                Some(UserKey::CustomId(c)) => (&mut by_custom, c),
                Some(UserKey::InstallId(i)) => (&mut by_install, i),
                None => continue,
            };
            list.0.push(t.app_id.as_uuid());
            list.1.push(t.user_key.clone());
            list.2.push(value);
        }
        let mut out: HashMap<(AppId, String), Vec<UserDevice>> = HashMap::new();
        for (column, (apps, keys, values)) in [("custom_id", by_custom), ("install_id", by_install)]
        {
            if apps.is_empty() {
                continue;
            }
            let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
                "SELECT DISTINCT ON (u.app_id, u.user_key, i.install_id)
                        u.app_id, u.user_key, i.install_id, i.platform, i.token, i.locale,
                        i.apns_environment, i.time_zone, i.attributes
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(app_id, user_key, value)
                 JOIN installations i ON i.app_id = u.app_id AND i.{column} = u.value
                 WHERE i.token IS NOT NULL AND i.opted_in AND i.invalidated_at IS NULL
                 ORDER BY u.app_id, u.user_key, i.install_id"
            ))
            .bind(&apps)
            .bind(&keys)
            .bind(&values)
            .fetch_all(&mut *self.tx)
            .await?;
            for r in rows {
                out.entry((AppId(r.app_id), r.user_key.clone()))
                    .or_default()
                    .push(UserDevice {
                        install_id: r.install_id,
                        platform: Platform::from_str(&r.platform).map_err(corrupt)?,
                        token: r.token,
                        locale: r.locale,
                        apns_sandbox: r.apns_environment == "sandbox",
                        time_zone: r.time_zone,
                        attributes: object(r.attributes),
                    });
            }
        }
        Ok(out)
    }

    /// Settles timers that did not fire, in one statement.
    pub async fn settle(
        &mut self,
        settled: &[(&DueTimer, TimerStatus)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        if settled.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE trigger_timers t SET status = u.status, settled_at = $4
             FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(trigger_id, event_id, status)
             WHERE t.trigger_id = u.trigger_id AND t.event_id = u.event_id",
        )
        .bind(
            settled
                .iter()
                .map(|(t, _)| t.trigger_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            settled
                .iter()
                .map(|(t, _)| t.event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(settled.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>())
        .bind(at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Moves timers (out of quiet hours) to later, in one statement.
    pub async fn postpone(&mut self, postponed: &[(&DueTimer, DateTime<Utc>)]) -> Result<()> {
        if postponed.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE trigger_timers t SET due_at = u.due_at
             FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(trigger_id, event_id, due_at)
             WHERE t.trigger_id = u.trigger_id AND t.event_id = u.event_id",
        )
        .bind(postponed.iter().map(|(t, _)| t.trigger_id).collect::<Vec<_>>())
        .bind(
            postponed
                .iter()
                .map(|(t, _)| t.event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(postponed.iter().map(|(_, until)| *until).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Writes the pushes (messages, deliveries, outbox rows) and marks their
    /// timers fired, in this transaction. Returns the outbox rows to publish.
    pub async fn fire(
        &mut self,
        fired: &[(&DueTimer, NewMessage)],
        at: DateTime<Utc>,
    ) -> Result<Vec<(i64, herald_core::MessageId)>> {
        if fired.is_empty() {
            return Ok(Vec::new());
        }
        let messages: Vec<(&NewMessage, Option<&str>)> =
            fired.iter().map(|(_, m)| (m, None)).collect();
        let outbox = write_messages(&mut self.tx, &messages).await?;
        sqlx::query(
            "UPDATE trigger_timers t SET status = 'fired', settled_at = $4, message_id = u.message_id
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) AS u(trigger_id, event_id, message_id)
             WHERE t.trigger_id = u.trigger_id AND t.event_id = u.event_id",
        )
        .bind(fired.iter().map(|(t, _)| t.trigger_id).collect::<Vec<_>>())
        .bind(fired.iter().map(|(t, _)| t.event_id.as_str()).collect::<Vec<_>>())
        .bind(fired.iter().map(|(_, m)| m.id.as_uuid()).collect::<Vec<_>>())
        .bind(at)
        .execute(&mut *self.tx)
        .await?;
        Ok(outbox)
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Transaction-scoped locks on (rule, user) pairs, taken in one order so
/// that two transactions locking overlapping sets cannot deadlock. The
/// two-key form keeps them apart from Herald's single-key advisory locks.
async fn lock_rule_users(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    triggers: &[Uuid],
    users: &[&str],
) -> Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('herald:trigger-user'), k)
         FROM (SELECT DISTINCT hashtext(t::text || '/' || u) AS k
               FROM UNNEST($1::uuid[], $2::text[]) AS x(t, u) ORDER BY k) keys",
    )
    .bind(triggers)
    .bind(users)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
