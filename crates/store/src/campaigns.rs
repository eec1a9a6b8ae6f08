//! Campaigns: their definition and life cycle, the waves and checkpoints the
//! scheduler keeps, uploaded audience lists, and progress.

use crate::messages::outcome_of_m;
use crate::request_keys::{claim_key, record_key, KeyState};
use crate::{Keyed, RequestKey, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use herald_core::audience::{AudienceKind, InstallationFacts};
use herald_core::campaign::{
    plan_waves, transition, CampaignAction, CampaignInput, CampaignStatus, WaveZone,
};
use herald_core::{AppId, DeliveryStatus, MessageId, Platform};
use serde_json::Value;
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use std::str::FromStr;
use uuid::Uuid;

/// A campaign as stored. `input.audience.ids` is never filled: list members
/// live in their own table (`audience_list_size` says how many).
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub id: Uuid,
    pub app_id: AppId,
    pub message_id: MessageId,
    pub status: CampaignStatus,
    pub generation: i64,
    pub input: CampaignInput,
    pub audience_list_size: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub launched_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the current generation began, on PostgreSQL's clock: outcomes
    /// recorded since are this generation's (None: a campaign from before
    /// this was kept; every outcome counts).
    pub generation_started_at: Option<DateTime<Utc>>,
}

/// Why an action on a campaign did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignRefusal {
    NotFound,
    /// The action is not allowed in the campaign's current status.
    WrongStatus(CampaignStatus),
}

/// One reachable installation on a campaign's audience page.
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceCandidate {
    pub install_id: String,
    pub platform: Platform,
    pub token: String,
    pub apns_sandbox: bool,
    pub facts: InstallationFacts,
}

/// Which installations a page reads, besides being reachable.
#[derive(Debug, Clone, Copy)]
pub struct AudienceScope<'a> {
    pub app: AppId,
    pub kind: AudienceKind,
    /// The list audience's ids: a stored campaign's list, or ids given inline.
    pub list: AudienceList<'a>,
    /// A wave replayed by recovery reads only what it could have produced.
    pub replay: Option<&'a Replay>,
}

/// What a wave had produced when recovery rewound it: the jobs a lost
/// cluster held are put back, and nobody who joined the audience since
/// gets an old campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The install id the wave's checkpoint had reached (None: none yet).
    pub until: Option<String>,
    /// When the wave last moved its checkpoint: installations created
    /// later were never read by it, behind its checkpoint.
    pub before: DateTime<Utc>,
    /// The wave had finished: nothing beyond its checkpoint is produced.
    pub was_done: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum AudienceList<'a> {
    Stored(Uuid),
    Inline(&'a [String]),
}

/// A wave of a campaign's current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub zone: WaveZone,
    pub due_at: DateTime<Utc>,
    pub cursor: Option<String>,
    pub produced: i64,
    pub done: bool,
    pub replay: Option<Replay>,
}

/// What the scheduler needs of a campaign on each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignState {
    pub status: CampaignStatus,
    pub generation: i64,
}

/// One page of a wave's walk, as its checkpoint records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavePage<'a> {
    /// The page's last install id (None: the wave ended, the cursor stays).
    pub cursor: Option<&'a str>,
    /// Devices walked: jobs handed to Kafka, and devices already settled.
    pub produced: i64,
    /// Of those, the devices whose delivery had an outcome from before the
    /// generation began.
    pub settled_before: i64,
    /// The wave has no more pages.
    pub done: bool,
}

/// Live progress: jobs handed to Kafka in this generation, and how the
/// deliveries of the campaign's message ended, per platform.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignProgress {
    /// Devices the generation's walk reached (handed out, or settled before).
    pub produced: i64,
    /// Of those, the ones with an outcome: settled before the generation
    /// began, or since. Outcomes of devices the walk no longer reaches (a
    /// rejected token, an opted-out installation) are not among them.
    pub settled_in_generation: i64,
    pub waves_total: i64,
    pub waves_done: i64,
    pub next_wave_at: Option<DateTime<Utc>>,
    pub counts: Vec<(Platform, DeliveryStatus, i64)>,
}

/// The scheduler's exclusive hold on one campaign: a session advisory lock on
/// a connection of its own, so that a scheduler that dies (even by SIGKILL)
/// lets go as soon as PostgreSQL sees the connection close.
pub struct CampaignLock {
    conn: PgConnection,
}

impl CampaignLock {
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    id: Uuid,
    app_id: Uuid,
    message_id: Uuid,
    status: String,
    generation: i64,
    spec: Value,
    list_size: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    launched_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    generation_started_at: Option<DateTime<Utc>>,
}

const CAMPAIGN_COLUMNS: &str = "c.id, c.app_id, c.message_id, c.status, c.generation, c.spec, \
     (SELECT count(*) FROM campaign_audience_ids a WHERE a.campaign_id = c.id) AS list_size, \
     c.created_at, c.updated_at, c.launched_at, c.completed_at, \
     CASE WHEN c.generation_started_for = c.generation THEN c.generation_started_at END \
         AS generation_started_at";

fn corrupt<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn status(s: &str) -> Result<CampaignStatus> {
    CampaignStatus::from_str(s).map_err(corrupt)
}

impl TryFrom<CampaignRow> for Campaign {
    type Error = StoreError;
    fn try_from(r: CampaignRow) -> Result<Self> {
        Ok(Campaign {
            id: r.id,
            app_id: AppId(r.app_id),
            message_id: MessageId(r.message_id),
            status: status(&r.status)?,
            generation: r.generation,
            input: serde_json::from_value(r.spec).map_err(corrupt)?,
            audience_list_size: r.list_size,
            created_at: r.created_at,
            updated_at: r.updated_at,
            launched_at: r.launched_at,
            completed_at: r.completed_at,
            generation_started_at: r.generation_started_at,
        })
    }
}

/// The stored form of a campaign's definition: everything but the list ids.
fn spec(input: &CampaignInput) -> Result<Value> {
    let mut stored = input.clone();
    stored.audience.ids = None;
    serde_json::to_value(&stored).map_err(corrupt)
}

/// Two sessions never plan the same campaign's lock id differently.
fn lock_id(campaign: Uuid) -> i64 {
    let b = campaign.into_bytes();
    i64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

impl Store {
    pub async fn create_campaign(
        &self,
        app: AppId,
        id: Uuid,
        input: &CampaignInput,
    ) -> Result<Campaign> {
        match self.create_campaign_keyed(app, id, input, None).await? {
            Keyed::Created(campaign) => Ok(campaign),
            _ => Err(corrupt("a create without a key was answered from one")),
        }
    }

    /// Creates a draft campaign, under an Idempotency-Key when given one.
    pub async fn create_campaign_keyed(
        &self,
        app: AppId,
        id: Uuid,
        input: &CampaignInput,
        key: Option<&RequestKey>,
    ) -> Result<Keyed<Campaign>> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = key {
            match claim_key(&mut tx, app, key).await? {
                KeyState::Free => record_key(&mut tx, app, key, id).await?,
                KeyState::Decided(decision) => return Ok(decision.into()),
            }
        }
        sqlx::query(
            "INSERT INTO campaigns (id, app_id, message_id, name, spec, audience_kind, rate_limit_per_second)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(app.as_uuid())
        .bind(MessageId::for_campaign(id).as_uuid())
        .bind(&input.name)
        .bind(spec(input)?)
        .bind(input.audience.kind.as_str())
        .bind(input.rate_limit_per_second.map(|r| r as i32))
        .execute(&mut *tx)
        .await?;
        if let Some(ids) = &input.audience.ids {
            insert_ids(&mut tx, id, ids).await?;
        }
        tx.commit().await?;
        self.campaign(app, id)
            .await?
            .map(Keyed::Created)
            .ok_or_else(|| corrupt("a campaign vanished right after it was created"))
    }

    pub async fn campaign(&self, app: AppId, id: Uuid) -> Result<Option<Campaign>> {
        let row: Option<CampaignRow> = sqlx::query_as(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns c WHERE c.id = $1 AND c.app_id = $2"
        ))
        .bind(id)
        .bind(app.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Campaign::try_from).transpose()
    }

    /// Any app's campaign, for operator commands (`herald campaign watch`).
    pub async fn campaign_by_id(&self, id: Uuid) -> Result<Option<Campaign>> {
        let row: Option<CampaignRow> = sqlx::query_as(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns c WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Campaign::try_from).transpose()
    }

    /// Newest first, a page at a time (keyset on creation time and id).
    /// The app's campaigns, newest first: campaign ids are UUIDv7, ordered
    /// by when they were made, so a page ends at an id and the next starts
    /// below it (an id deleted since, or any other, still works as a cursor).
    pub async fn campaigns_page(
        &self,
        app: AppId,
        before: Option<Uuid>,
        status_filter: Option<CampaignStatus>,
        limit: i64,
    ) -> Result<Vec<Campaign>> {
        let rows: Vec<CampaignRow> = sqlx::query_as(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns c
             WHERE c.app_id = $1
               AND ($2::uuid IS NULL OR c.id < $2)
               AND ($3::text IS NULL OR c.status = $3)
             ORDER BY c.id DESC LIMIT $4"
        ))
        .bind(app.as_uuid())
        .bind(before)
        .bind(status_filter.map(|s| s.as_str()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Campaign::try_from).collect()
    }

    /// Replaces the definition of a draft or scheduled campaign. Inline ids,
    /// when given, replace the list.
    pub async fn update_campaign(
        &self,
        app: AppId,
        id: Uuid,
        input: &CampaignInput,
    ) -> Result<Result<Campaign, CampaignRefusal>> {
        let mut tx = self.pool.begin().await?;
        let current = match lock_for(&mut tx, app, id, CampaignAction::Update).await? {
            Ok(c) => c,
            Err(refusal) => return Ok(Err(refusal)),
        };
        sqlx::query(
            "UPDATE campaigns SET name = $2, spec = $3, audience_kind = $4,
                    rate_limit_per_second = $5, updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .bind(&input.name)
        .bind(spec(input)?)
        .bind(input.audience.kind.as_str())
        .bind(input.rate_limit_per_second.map(|r| r as i32))
        .execute(&mut *tx)
        .await?;
        if let Some(ids) = &input.audience.ids {
            sqlx::query("DELETE FROM campaign_audience_ids WHERE campaign_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            insert_ids(&mut tx, id, ids).await?;
        }
        if current == CampaignStatus::Scheduled {
            // A scheduled campaign's waves follow its (possibly new) schedule.
            plan(&mut tx, id, app, input, None).await?;
        }
        tx.commit().await?;
        Ok(Ok(self
            .campaign(app, id)
            .await?
            .ok_or_else(|| corrupt("campaign vanished"))?))
    }

    pub async fn delete_campaign(
        &self,
        app: AppId,
        id: Uuid,
    ) -> Result<Result<(), CampaignRefusal>> {
        let mut tx = self.pool.begin().await?;
        if let Err(refusal) = lock_for(&mut tx, app, id, CampaignAction::Delete).await? {
            return Ok(Err(refusal));
        }
        sqlx::query("DELETE FROM campaigns WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Launch, pause, resume or cancel, atomically with what each implies: a
    /// launch writes the campaign's message and plans its waves; launch and
    /// resume start a new generation.
    pub async fn campaign_action(
        &self,
        app: AppId,
        id: Uuid,
        action: CampaignAction,
        now: DateTime<Utc>,
    ) -> Result<Result<Campaign, CampaignRefusal>> {
        let mut tx = self.pool.begin().await?;
        let from = match lock_for(&mut tx, app, id, action).await? {
            Ok(s) => s,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let Some(step) = transition(from, action) else {
            return Ok(Err(CampaignRefusal::WrongStatus(from)));
        };
        let (spec_value,): (Value,) = sqlx::query_as("SELECT spec FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let input: CampaignInput = serde_json::from_value(spec_value).map_err(corrupt)?;
        sqlx::query(
            "UPDATE campaigns SET status = $2, generation = generation + $3::int, updated_at = now(),
                    launched_at = CASE WHEN $4 THEN $5 ELSE launched_at END,
                    completed_at = CASE WHEN $3::int = 1 THEN NULL ELSE completed_at END
             WHERE id = $1",
        )
        .bind(id)
        .bind(step.to.as_str())
        .bind(i32::from(step.new_generation))
        .bind(action == CampaignAction::Launch)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if action == CampaignAction::Launch {
            write_message(&mut tx, app, id, &input).await?;
        }
        if step.new_generation {
            plan(&mut tx, id, app, &input, Some(now)).await?;
            start_generation(&mut tx, &[id]).await?;
        }
        tx.commit().await?;
        Ok(Ok(self
            .campaign(app, id)
            .await?
            .ok_or_else(|| corrupt("campaign vanished"))?))
    }

    /// Adds ids to (or, with `replace`, replaces) a campaign's audience list,
    /// in one transaction.
    pub async fn upload_audience_ids(
        &self,
        app: AppId,
        id: Uuid,
        ids: &[String],
        replace: bool,
    ) -> Result<Result<i64, CampaignRefusal>> {
        let mut tx = self.pool.begin().await?;
        if let Err(refusal) = lock_for(&mut tx, app, id, CampaignAction::UploadIds).await? {
            return Ok(Err(refusal));
        }
        if replace {
            sqlx::query("DELETE FROM campaign_audience_ids WHERE campaign_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for chunk in ids.chunks(10_000) {
            insert_ids(&mut tx, id, chunk).await?;
        }
        let size: i64 =
            sqlx::query_scalar("SELECT count(*) FROM campaign_audience_ids WHERE campaign_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Ok(size))
    }

    pub async fn app_campaign_rate_limit(&self, app: AppId) -> Result<Option<u32>> {
        let limit: Option<Option<i32>> =
            sqlx::query_scalar("SELECT campaign_rate_limit_per_second FROM apps WHERE id = $1")
                .bind(app.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        Ok(limit.flatten().and_then(|l| u32::try_from(l).ok()))
    }

    pub async fn set_app_campaign_rate_limit(&self, app: AppId, limit: Option<u32>) -> Result<()> {
        sqlx::query("UPDATE apps SET campaign_rate_limit_per_second = $2 WHERE id = $1")
            .bind(app.as_uuid())
            .bind(limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Campaigns with a wave due at `now` that is not done.
    pub async fn due_campaigns(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT c.id FROM campaigns c
             WHERE c.status IN ('scheduled', 'running')
               AND EXISTS (SELECT 1 FROM campaign_waves w
                           WHERE w.campaign_id = c.id AND w.generation = c.generation
                             AND NOT w.done AND w.due_at <= $1)
             ORDER BY c.launched_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The campaign's lock, unless another scheduler holds it.
    pub async fn try_lock_campaign(&self, id: Uuid) -> Result<Option<CampaignLock>> {
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_id(id))
            .fetch_one(&mut conn)
            .await?;
        if locked {
            Ok(Some(CampaignLock { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    pub async fn campaign_state(&self, id: Uuid) -> Result<Option<CampaignState>> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT status, generation FROM campaigns WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(s, generation)| {
            Ok(CampaignState {
                status: status(&s)?,
                generation,
            })
        })
        .transpose()
    }

    /// The states of several campaigns at once (what senders check).
    pub async fn campaign_states(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, CampaignState)>> {
        let rows: Vec<(Uuid, String, i64)> =
            sqlx::query_as("SELECT id, status, generation FROM campaigns WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(id, s, generation)| {
                Ok((
                    id,
                    CampaignState {
                        status: status(&s)?,
                        generation,
                    },
                ))
            })
            .collect()
    }

    pub async fn waves(&self, id: Uuid, generation: i64) -> Result<Vec<Wave>> {
        let rows: Vec<WaveRow> = sqlx::query_as(
            "SELECT zone, due_at, cursor, produced, done, replay_until, replay_before,
                    replay_was_done
             FROM campaign_waves
             WHERE campaign_id = $1 AND generation = $2 ORDER BY due_at, zone",
        )
        .bind(id)
        .bind(generation)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Wave {
                zone: WaveZone::from_key(&r.zone),
                due_at: r.due_at,
                cursor: r.cursor,
                produced: r.produced,
                done: r.done,
                replay: r.replay_before.map(|before| Replay {
                    until: r.replay_until,
                    before,
                    was_done: r.replay_was_done,
                }),
            })
            .collect())
    }

    /// A scheduled campaign whose first wave is due becomes running.
    pub async fn mark_campaign_running(&self, id: Uuid, generation: i64) -> Result<()> {
        sqlx::query(
            "UPDATE campaigns SET status = 'running', updated_at = now()
             WHERE id = $1 AND generation = $2 AND status = 'scheduled'",
        )
        .bind(id)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a page as handed to Kafka. False: the campaign was paused,
    /// cancelled or relaunched meanwhile, and the caller must stop.
    pub async fn checkpoint_wave(
        &self,
        id: Uuid,
        generation: i64,
        zone: &WaveZone,
        page: WavePage<'_>,
    ) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE campaign_waves w SET cursor = COALESCE($4, w.cursor),
                    produced = w.produced + $5, settled_before = w.settled_before + $7,
                    done = $6, checkpointed_at = now()
             FROM campaigns c
             WHERE w.campaign_id = $1 AND w.generation = $2 AND w.zone = $3
               AND c.id = w.campaign_id AND c.generation = $2
               AND c.status IN ('scheduled', 'running')",
        )
        .bind(id)
        .bind(generation)
        .bind(zone.key())
        .bind(page.cursor)
        .bind(page.produced)
        .bind(page.done)
        .bind(page.settled_before)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Running → completed once every wave of the generation is done.
    pub async fn finish_campaign(&self, id: Uuid, generation: i64) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE campaigns c SET status = 'completed', completed_at = now(), updated_at = now()
             WHERE c.id = $1 AND c.generation = $2 AND c.status IN ('scheduled', 'running')
               AND NOT EXISTS (SELECT 1 FROM campaign_waves w
                               WHERE w.campaign_id = c.id AND w.generation = $2 AND NOT w.done)",
        )
        .bind(id)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// One page of reachable installations in `scope` and `zone`, after the
    /// install id `after`, in install id order (keyset paging).
    pub async fn audience_page(
        &self,
        scope: AudienceScope<'_>,
        zone: &WaveZone,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AudienceCandidate>> {
        let (stored, inline): (Option<Uuid>, Option<&[String]>) = match scope.list {
            AudienceList::Stored(id) => (Some(id), None),
            AudienceList::Inline(ids) => (None, Some(ids)),
        };
        // A zone wave covers its zone; the "unset" wave every installation
        // without a zone or in a zone without a wave of its own (unknown to
        // the time zone database, or first seen after the launch).
        let (zone_mode, zone_name) = match zone {
            WaveZone::All => ("all", ""),
            WaveZone::Unset => ("unset", ""),
            WaveZone::Zone(z) => ("zone", z.as_str()),
        };
        let rows: Vec<CandidateRow> = sqlx::query_as(
            "SELECT i.install_id, i.platform, i.token, i.custom_id, i.locale, i.time_zone,
                    i.app_version, i.tags, i.attributes, i.apns_environment
             FROM installations i
             WHERE i.app_id = $1 AND i.token IS NOT NULL AND i.opted_in AND i.invalidated_at IS NULL
               AND ($2::text IS NULL OR i.install_id > $2)
               AND ($3 = 'all' OR ($3 = 'zone' AND i.time_zone = $4)
                    OR ($3 = 'unset' AND (i.time_zone IS NULL OR NOT EXISTS (
                        SELECT 1 FROM campaign_waves w WHERE w.campaign_id = $6 AND w.zone = i.time_zone))))
               AND ($5 = 'all'
                    OR ($5 = 'install_ids' AND (
                        ($6::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM campaign_audience_ids a
                                 WHERE a.campaign_id = $6 AND a.value = i.install_id))
                        OR i.install_id = ANY($7)))
                    OR ($5 = 'custom_ids' AND i.custom_id IS NOT NULL AND (
                        ($6::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM campaign_audience_ids a
                                 WHERE a.campaign_id = $6 AND a.value = i.custom_id))
                        OR i.custom_id = ANY($7))))
               AND ($9::timestamptz IS NULL OR i.created_at <= $9
                    OR (NOT $11 AND ($10::text IS NULL OR i.install_id > $10)))
             ORDER BY i.install_id LIMIT $8",
        )
        .bind(scope.app.as_uuid())
        .bind(after)
        .bind(zone_mode)
        .bind(zone_name)
        .bind(scope.kind.as_str())
        .bind(stored)
        .bind(inline.unwrap_or(&[]))
        .bind(limit)
        .bind(scope.replay.map(|r| r.before))
        .bind(scope.replay.and_then(|r| r.until.as_deref()))
        .bind(scope.replay.is_some_and(|r| r.was_done))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AudienceCandidate::try_from).collect()
    }

    /// The distinct time zones of an app's installations.
    pub async fn time_zones_in_use(&self, app: AppId) -> Result<Vec<String>> {
        zones_in_use(&self.pool, app).await
    }

    pub async fn campaign_progress(&self, campaign: &Campaign) -> Result<CampaignProgress> {
        // The first generation began with the message: every outcome is its
        // own, and the counts below say how many there are. A later one
        // counts the outcomes recorded since it began, in the statement that
        // reads its walk (one snapshot: the two agree with each other). Each
        // is a pass over the message's outcomes, so it is made only when
        // needed (a million-device campaign's progress is asked every second).
        let since = campaign
            .generation_started_at
            .filter(|_| campaign.generation > 1);
        let row: ProgressRow = sqlx::query_as(concat!(
            "SELECT sum(w.produced)::int8 AS produced, sum(w.settled_before)::int8 AS settled_before,
                    count(*) AS waves_total, count(*) FILTER (WHERE w.done) AS waves_done,
                    min(w.due_at) FILTER (WHERE NOT w.done) AS next_wave_at,
                    CASE WHEN $4::timestamptz IS NOT NULL THEN (SELECT count(*) FROM (
                         SELECT o.delivery_id FROM messages m JOIN delivery_outcomes o
                         ON ",
            outcome_of_m!(),
            " WHERE m.id = $3
                         GROUP BY o.delivery_id
                         HAVING min(o.recorded_at) >= $4) s
                    ) END AS settled_since
             FROM campaign_waves w WHERE w.campaign_id = $1 AND w.generation = $2"
        ))
        .bind(campaign.id)
        .bind(campaign.generation)
        .bind(campaign.message_id.as_uuid())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let counts: Vec<(Platform, DeliveryStatus, i64)> =
            sqlx::query_as::<_, (String, String, i64)>(
                "SELECT platform, status, count(*) FROM delivery_status WHERE message_id = $1
             GROUP BY platform, status ORDER BY platform, status",
            )
            .bind(campaign.message_id.as_uuid())
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(p, s, n)| {
                Ok((
                    Platform::from_str(&p).map_err(corrupt)?,
                    DeliveryStatus::parse(&s).ok_or_else(|| corrupt(format!("status `{s}`")))?,
                    n,
                ))
            })
            .collect::<Result<_>>()?;
        let settled_since = row.settled_since.unwrap_or_else(|| {
            counts
                .iter()
                .filter(|(_, s, _)| *s != DeliveryStatus::Pending)
                .map(|(_, _, n)| n)
                .sum()
        });
        Ok(CampaignProgress {
            produced: row.produced.unwrap_or(0),
            settled_in_generation: row.settled_before.unwrap_or(0) + settled_since,
            waves_total: row.waves_total,
            waves_done: row.waves_done,
            next_wave_at: row.next_wave_at,
            counts,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ProgressRow {
    produced: Option<i64>,
    settled_before: Option<i64>,
    waves_total: i64,
    waves_done: i64,
    next_wave_at: Option<DateTime<Utc>>,
    /// None: not counted (the first generation, or a campaign from before
    /// generations were timed).
    settled_since: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct WaveRow {
    zone: String,
    due_at: DateTime<Utc>,
    cursor: Option<String>,
    produced: i64,
    done: bool,
    replay_until: Option<String>,
    replay_before: Option<DateTime<Utc>>,
    replay_was_done: bool,
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    install_id: String,
    platform: String,
    token: String,
    custom_id: Option<String>,
    locale: Option<String>,
    time_zone: Option<String>,
    app_version: Option<String>,
    tags: Vec<String>,
    attributes: Value,
    apns_environment: String,
}

impl TryFrom<CandidateRow> for AudienceCandidate {
    type Error = StoreError;
    fn try_from(r: CandidateRow) -> Result<Self> {
        let platform = Platform::from_str(&r.platform).map_err(corrupt)?;
        Ok(AudienceCandidate {
            install_id: r.install_id,
            platform,
            token: r.token,
            apns_sandbox: r.apns_environment == "sandbox",
            facts: InstallationFacts {
                platform: Some(platform),
                custom_id: r.custom_id,
                locale: r.locale,
                time_zone: r.time_zone,
                app_version: r.app_version,
                tags: r.tags,
                attributes: match r.attributes {
                    Value::Object(m) => m,
                    _ => Default::default(),
                },
            },
        })
    }
}

async fn zones_in_use<'e, E: sqlx::PgExecutor<'e>>(e: E, app: AppId) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT time_zone FROM installations
         WHERE app_id = $1 AND time_zone IS NOT NULL ORDER BY 1",
    )
    .bind(app.as_uuid())
    .fetch_all(e)
    .await?)
}

/// Locks the campaign row and checks that `action` is allowed from its status.
async fn lock_for(
    tx: &mut Transaction<'_, Postgres>,
    app: AppId,
    id: Uuid,
    action: CampaignAction,
) -> Result<Result<CampaignStatus, CampaignRefusal>> {
    let row: Option<String> =
        sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1 AND app_id = $2 FOR UPDATE")
            .bind(id)
            .bind(app.as_uuid())
            .fetch_optional(&mut **tx)
            .await?;
    let Some(s) = row else {
        return Ok(Err(CampaignRefusal::NotFound));
    };
    let from = status(&s)?;
    Ok(match transition(from, action) {
        Some(_) => Ok(from),
        None => Err(CampaignRefusal::WrongStatus(from)),
    })
}

async fn insert_ids(tx: &mut Transaction<'_, Postgres>, id: Uuid, ids: &[String]) -> Result<()> {
    sqlx::query(
        "INSERT INTO campaign_audience_ids (campaign_id, value)
         SELECT $1, v FROM UNNEST($2::text[]) AS v ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The campaign's message: one per campaign, whatever the number of launches.
/// A relaunch sends the campaign's current content.
async fn write_message(
    tx: &mut Transaction<'_, Postgres>,
    app: AppId,
    id: Uuid,
    input: &CampaignInput,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO messages (id, app_id, kind, notification, policy, expires_at)
         VALUES ($1, $2, 'campaign', $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET notification = EXCLUDED.notification,
             policy = EXCLUDED.policy, expires_at = EXCLUDED.expires_at",
    )
    .bind(MessageId::for_campaign(id).as_uuid())
    .bind(app.as_uuid())
    .bind(serde_json::to_value(&input.notification).map_err(corrupt)?)
    .bind(input.delivery_policy.as_str())
    .bind(input.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces the campaign's waves with those of its schedule. `launched_at`
/// None keeps the recorded launch time (an edit of a scheduled campaign).
async fn plan(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    app: AppId,
    input: &CampaignInput,
    launched_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let (generation, recorded): (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT generation, launched_at FROM campaigns WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    let launched_at = launched_at.or(recorded).unwrap_or_else(Utc::now);
    let zones = zones_in_use(&mut **tx, app).await?;
    let waves = plan_waves(&input.schedule, launched_at, &zones);
    sqlx::query("DELETE FROM campaign_waves WHERE campaign_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let keys: Vec<&str> = waves.iter().map(|w| w.zone.key()).collect();
    let due: Vec<DateTime<Utc>> = waves.iter().map(|w| w.due_at).collect();
    sqlx::query(
        "INSERT INTO campaign_waves (campaign_id, generation, zone, due_at)
         SELECT $1, $2, z, d FROM UNNEST($3::text[], $4::timestamptz[]) AS u(z, d)",
    )
    .bind(id)
    .bind(generation)
    .bind(&keys)
    .bind(&due)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Replays the production of every running campaign, and of every
    /// campaign completed since `since`, in a new generation, keeping each
    /// wave's time: what recovery does when the jobs a lost cluster held are
    /// gone. A wave replays what it had produced (installations it could have
    /// read: behind its checkpoint and created before the checkpoint last
    /// moved), then goes on as before if it had not finished. The scheduler
    /// skips devices whose delivery is settled, and the ledger drops the rest
    /// that were sent. Rewinding again keeps the first bounds, unless the
    /// wave went on past them since (then they move to where it got).
    pub async fn rewind_campaigns(&self, since: DateTime<Utc>) -> Result<Vec<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE campaigns SET generation = generation + 1, status = 'running',
                    completed_at = NULL, updated_at = now()
             WHERE status = 'running' OR (status = 'completed' AND completed_at >= $1)
             RETURNING id",
        )
        .bind(since)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE campaign_waves w SET generation = c.generation, cursor = NULL,
                    produced = 0, settled_before = 0, done = false,
                    replay_until = greatest(w.replay_until, w.cursor),
                    replay_before = CASE
                        WHEN w.replay_before IS NULL THEN w.checkpointed_at
                        WHEN NOT w.replay_was_done AND w.cursor > w.replay_until
                            THEN w.checkpointed_at
                        ELSE w.replay_before END,
                    replay_was_done = w.replay_was_done OR w.done
             FROM campaigns c WHERE c.id = w.campaign_id AND c.id = ANY($1)",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        start_generation(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(ids)
    }
}

/// Marks when the campaigns' new generation began, for its progress: the
/// outcomes recorded from then on are the generation's, those before it are
/// counted as the walk meets their devices (`settled_before`).
///
/// The share lock waits for every transaction writing outcomes to end, and
/// holds new ones until this one commits; outcomes are stamped when written
/// (`clock_timestamp()`). So an outcome stamped before the start is committed
/// before the generation is, and the scheduler's walk sees it; one stamped
/// after is committed after. Without the lock, an outcome whose transaction
/// began before the start but committed after the walk passed its device
/// would be counted by neither, and `pending` would never reach 0.
async fn start_generation(tx: &mut Transaction<'_, Postgres>, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("LOCK TABLE delivery_outcomes IN SHARE MODE")
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE campaigns SET generation_started_at = clock_timestamp(),
                generation_started_for = generation
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
