//! The scheduler role: sends campaigns.
//!
//! For each campaign with a wave due it takes the campaign's lock (one
//! scheduler per campaign, whatever the number of processes), pages through
//! the wave's audience by install id, filters each page with the core's rules,
//! produces the page's delivery jobs at the allowed rate, and moves the
//! wave's checkpoint only once Kafka acknowledged them all. A crash resumes
//! from the last checkpoint: the page in flight is produced again, and its
//! delivery ids, derived from (campaign, installation), are deduped by senders.

use herald_bus::Publisher;
use herald_config::{Clock, SchedulerConfig};
use herald_core::campaign::{rate_slice, CampaignRef, CampaignStatus, WaveZone};
use herald_core::ids::DeliveryTarget;
use herald_core::{DeliveryId, DeliveryJob, MessageId};
use herald_ledger::RateLimiter;
use herald_store::{AudienceList, AudienceScope, Campaign, Store, Wave, WavePage};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] herald_store::StoreError),
    #[error(transparent)]
    Bus(#[from] herald_bus::BusError),
}

pub struct Scheduler {
    pub store: Store,
    pub publisher: Publisher,
    pub limiter: RateLimiter,
    pub config: SchedulerConfig,
    pub clock: Clock,
    /// None: no flow control (`scheduler.max_backlog = 0`).
    pub backlog: Option<Backlog>,
    /// Producing campaign jobs, as `/readyz` sees it.
    pub health: Arc<herald_telemetry::health::LoopHealth>,
}

/// The senders' lag on the campaigns topic, which production waits on.
pub struct Backlog {
    /// One per Kafka cluster: the senders' lag is the sum.
    pub probes: Vec<Arc<herald_bus::LagProbe>>,
    pub topic: String,
    pub max: i64,
}

/// Why a campaign's run ended before its waves did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Paused, cancelled, relaunched or deleted: the new state rules.
    Superseded,
    /// This process is shutting down.
    Shutdown,
}

impl Scheduler {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), SchedulerError> {
        let mut running: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        loop {
            running.retain(|_, task| !task.is_finished());
            metrics::gauge!("herald_scheduler_campaigns_running").set(running.len() as f64);
            let free = self
                .config
                .max_concurrent_campaigns
                .max(1)
                .saturating_sub(running.len());
            if free > 0 {
                match self.pick_up(&running, free, &shutdown).await {
                    Ok(started) => running.extend(started),
                    Err(e) => tracing::warn!(error = %e, "looking for due campaigns"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        // Each run stops at its next page boundary, checkpointed.
        for (_, task) in running {
            let _ = task.await;
        }
        Ok(())
    }

    async fn pick_up(
        self: &Arc<Self>,
        running: &HashMap<Uuid, JoinHandle<()>>,
        free: usize,
        shutdown: &CancellationToken,
    ) -> Result<Vec<(Uuid, JoinHandle<()>)>, SchedulerError> {
        let due = self
            .store
            .due_campaigns(self.clock.now(), (free * 4) as i64)
            .await?;
        let mut started = Vec::new();
        for id in due {
            if started.len() >= free || running.contains_key(&id) {
                continue;
            }
            // Another scheduler has it: leave it to that one.
            let Some(lock) = self.store.try_lock_campaign(id).await? else {
                continue;
            };
            let this = self.clone();
            let stop = shutdown.clone();
            started.push((
                id,
                tokio::spawn(async move {
                    match this.send_campaign(id, &stop).await {
                        Ok(outcome) => tracing::debug!(campaign_id = %id, ?outcome, "campaign run ended"),
                        Err(e) => tracing::warn!(campaign_id = %id, error = %e, "campaign run failed; it will be picked up again from its checkpoint"),
                    }
                    lock.release().await;
                }),
            ));
        }
        Ok(started)
    }

    /// Sends every due wave of the campaign; returns when none is due, or
    /// the campaign stops being sendable.
    async fn send_campaign(
        &self,
        id: Uuid,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, SchedulerError> {
        let Some(campaign) = self.store.campaign_by_id(id).await? else {
            return Ok(Some(Stop::Superseded));
        };
        if !matches!(
            campaign.status,
            CampaignStatus::Scheduled | CampaignStatus::Running
        ) {
            return Ok(Some(Stop::Superseded));
        }
        loop {
            let waves = self.store.waves(id, campaign.generation).await?;
            let now = self.clock.now();
            let due: Vec<Wave> = waves
                .iter()
                .filter(|w| !w.done && w.due_at <= now)
                .cloned()
                .collect();
            if due.is_empty() {
                if waves.iter().all(|w| w.done)
                    && self.store.finish_campaign(id, campaign.generation).await?
                {
                    tracing::info!(campaign_id = %id, generation = campaign.generation, "campaign completed: every job handed to Kafka");
                }
                return Ok(None);
            }
            self.store
                .mark_campaign_running(id, campaign.generation)
                .await?;
            for wave in due {
                if let Some(stop) = self.send_wave(&campaign, wave, shutdown).await? {
                    return Ok(Some(stop));
                }
            }
        }
    }

    async fn send_wave(
        &self,
        campaign: &Campaign,
        wave: Wave,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, SchedulerError> {
        tracing::info!(campaign_id = %campaign.id, zone = wave.zone.key(), produced = wave.produced, "sending wave");
        let audience = &campaign.input.audience;
        let scope = AudienceScope {
            app: campaign.app_id,
            kind: audience.kind,
            list: AudienceList::Stored(campaign.id),
            replay: wave.replay.as_ref(),
        };
        let mut cursor = wave.cursor.clone();
        let mut watch = StatusWatch::new(campaign, self.config.status_check_ms);
        let mut pacer = Pacer::new(campaign.input.rate_limit_per_second);
        loop {
            let page = self
                .store
                .audience_page(
                    scope,
                    &wave.zone,
                    cursor.as_deref(),
                    self.config.page_size.max(1),
                )
                .await?;
            let Some(last) = page.last().map(|c| c.install_id.clone()) else {
                let end = WavePage {
                    cursor: None,
                    produced: 0,
                    settled_before: 0,
                    done: true,
                };
                return Ok(if self.checkpoint(campaign, &wave.zone, end).await? {
                    None
                } else {
                    Some(Stop::Superseded)
                });
            };
            let matching: Vec<_> = page
                .into_iter()
                .filter(|c| audience.filter.as_ref().is_none_or(|f| f.matches(&c.facts)))
                .collect();
            // A device whose delivery is settled (a resume, a relaunch, a
            // recovery) is counted as produced but not handed out again;
            // settled before this generation began, it is counted apart too,
            // as the outcomes since then are counted for the progress.
            let produced = matching.len() as i64;
            let ids: Vec<(MessageId, DeliveryId)> = matching
                .iter()
                .map(|c| {
                    (
                        campaign.message_id,
                        DeliveryId::derive(
                            campaign.message_id,
                            DeliveryTarget::Installation(&c.install_id),
                        ),
                    )
                })
                .collect();
            let first_outcomes = self.store.first_outcomes(&ids).await?;
            let settled_before = first_outcomes
                .iter()
                .filter(|(_, first)| {
                    campaign
                        .generation_started_at
                        .is_some_and(|start| *first < start)
                })
                .count() as i64;
            let settled: HashSet<DeliveryId> =
                first_outcomes.into_iter().map(|(id, _)| id).collect();
            let jobs: Vec<DeliveryJob> = matching
                .into_iter()
                .zip(ids)
                .filter(|(_, (_, id))| !settled.contains(id))
                .map(|(c, (_, delivery_id))| DeliveryJob {
                    delivery_id,
                    message_id: campaign.message_id,
                    app_id: campaign.app_id,
                    platform: c.platform,
                    token: c.token,
                    install_id: Some(c.install_id),
                    notification: campaign.input.notification.clone(),
                    policy: campaign.input.delivery_policy,
                    expires_at: campaign.input.expires_at,
                    locale: c.facts.locale,
                    apns_sandbox: c.apns_sandbox,
                    attempt: 0,
                    not_before: None,
                    campaign: Some(CampaignRef {
                        id: campaign.id,
                        generation: campaign.generation,
                    }),
                    trace_parent: None,
                })
                .collect();
            if let Some(stop) = self.wait_for_room(&mut watch, shutdown).await? {
                return Ok(Some(stop));
            }
            if let Some(stop) = self
                .produce(campaign, jobs, &mut pacer, &mut watch, shutdown)
                .await?
            {
                return Ok(Some(stop));
            }
            metrics::counter!("herald_campaign_jobs_produced_total").increment(produced as u64);
            if !self
                .checkpoint(
                    campaign,
                    &wave.zone,
                    WavePage {
                        cursor: Some(&last),
                        produced,
                        settled_before,
                        done: false,
                    },
                )
                .await?
            {
                return Ok(Some(Stop::Superseded));
            }
            if shutdown.is_cancelled() {
                return Ok(Some(Stop::Shutdown));
            }
            cursor = Some(last);
        }
    }

    /// Waits while the senders are more than `max_backlog` jobs behind.
    async fn wait_for_room(
        &self,
        watch: &mut StatusWatch,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, SchedulerError> {
        let Some(backlog) = &self.backlog else {
            return Ok(None);
        };
        loop {
            let probes = backlog.probes.clone();
            let topic = backlog.topic.clone();
            let lag = tokio::task::spawn_blocking(move || total_lag(&probes, &topic))
                .await
                .ok();
            match lag {
                Some(Ok(lag)) if lag > backlog.max => {
                    metrics::counter!("herald_scheduler_backlog_waits_total").increment(1);
                }
                Some(Ok(_)) => return Ok(None),
                // Flow control is a courtesy: without an answer, go on.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the senders' lag; producing anyway");
                    return Ok(None);
                }
                None => return Ok(None),
            }
            if let Some(stop) = watch.check(&self.store, shutdown).await? {
                return Ok(Some(stop));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn checkpoint(
        &self,
        campaign: &Campaign,
        zone: &WaveZone,
        page: WavePage<'_>,
    ) -> Result<bool, SchedulerError> {
        Ok(self
            .store
            .checkpoint_wave(campaign.id, campaign.generation, zone, page)
            .await?)
    }

    /// Hands a page's jobs to Kafka within the campaign's and the app's
    /// rates, looking at the campaign's status as it goes.
    /// One page of a campaign's jobs; a trace each, so that a million-device
    /// campaign is many traces of a page, not one of a million sends.
    #[tracing::instrument(
        name = "campaign page",
        skip_all,
        fields(campaign_id = %campaign.id, generation = campaign.generation, jobs = jobs.len())
    )]
    async fn produce(
        &self,
        campaign: &Campaign,
        mut jobs: Vec<DeliveryJob>,
        pacer: &mut Pacer,
        watch: &mut StatusWatch,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, SchedulerError> {
        let app_limit = self.store.app_campaign_rate_limit(campaign.app_id).await?;
        let campaign_key = format!("campaign:{}", campaign.id);
        let app_key = format!("campaign-app:{}", campaign.app_id);
        let mut limits: Vec<(&str, u64)> = Vec::new();
        if let Some(l) = campaign.input.rate_limit_per_second {
            limits.push((&campaign_key, u64::from(l)));
        }
        if let Some(l) = app_limit {
            limits.push((&app_key, u64::from(l)));
        }
        let slice = limits
            .iter()
            .map(|(_, l)| rate_slice(u32::try_from(*l).unwrap_or(u32::MAX)) as usize)
            .min()
            .unwrap_or(jobs.len().max(1));
        while !jobs.is_empty() {
            if let Some(stop) = watch.check(&self.store, shutdown).await? {
                return Ok(Some(stop));
            }
            let mut n = slice.min(jobs.len());
            if !limits.is_empty() {
                pacer.wait_turn().await;
                match self
                    .limiter
                    .take(&campaign.app_id.to_string(), &limits, n as u64)
                    .await
                {
                    Ok(grant) if grant.granted == 0 => {
                        tokio::time::sleep(grant.window_left).await;
                        continue;
                    }
                    Ok(grant) => n = n.min(grant.granted as usize),
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limiter unreachable; waiting for Redis");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let batch: Vec<DeliveryJob> = jobs.drain(..n).collect();
            let retrying = self.health.retrying();
            while let Err(e) = self.publisher.publish_campaign_jobs(&batch).await {
                retrying.failed(&e);
                tracing::warn!(campaign_id = %campaign.id, error = %e, "producing campaign jobs failed; retrying");
                if let Some(stop) = watch.check(&self.store, shutdown).await? {
                    return Ok(Some(stop));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            drop(retrying);
            pacer.sent(batch.len());
        }
        Ok(None)
    }
}

/// The lag over every cluster that answers; an error only if none does (a
/// lost cluster must not stop production on the others).
fn total_lag(
    probes: &[Arc<herald_bus::LagProbe>],
    topic: &str,
) -> Result<i64, herald_bus::BusError> {
    let mut total = None;
    let mut last_error = None;
    for probe in probes {
        match probe.lag(topic, Duration::from_secs(2)) {
            Ok(lag) => total = Some(total.unwrap_or(0) + lag),
            Err(e) => last_error = Some(e),
        }
    }
    match (total, last_error) {
        (Some(t), _) => Ok(t),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(0),
    }
}

/// Looks at the campaign's status at most every `every`, so that a pause or
/// cancel stops production within that time.
struct StatusWatch {
    id: Uuid,
    generation: i64,
    every: Duration,
    last: Instant,
}

impl StatusWatch {
    fn new(campaign: &Campaign, every_ms: u64) -> Self {
        Self {
            id: campaign.id,
            generation: campaign.generation,
            every: Duration::from_millis(every_ms.max(10)),
            last: Instant::now(),
        }
    }

    async fn check(
        &mut self,
        store: &Store,
        shutdown: &CancellationToken,
    ) -> Result<Option<Stop>, SchedulerError> {
        if shutdown.is_cancelled() {
            return Ok(Some(Stop::Shutdown));
        }
        if self.last.elapsed() < self.every {
            return Ok(None);
        }
        self.last = Instant::now();
        let sendable = store.campaign_state(self.id).await?.is_some_and(|s| {
            s.generation == self.generation
                && matches!(
                    s.status,
                    CampaignStatus::Scheduled | CampaignStatus::Running
                )
        });
        Ok(if sendable {
            None
        } else {
            tracing::info!(campaign_id = %self.id, "campaign paused, cancelled or relaunched: production stopped");
            Some(Stop::Superseded)
        })
    }
}

/// Spreads a campaign's own rate evenly over each second; Redis enforces the
/// limits across every scheduler process.
struct Pacer {
    per_second: Option<u32>,
    started: Instant,
    sent: u64,
}

impl Pacer {
    fn new(per_second: Option<u32>) -> Self {
        Self {
            per_second,
            started: Instant::now(),
            sent: 0,
        }
    }

    async fn wait_turn(&self) {
        let Some(rate) = self.per_second else { return };
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / f64::from(rate.max(1)));
        tokio::time::sleep_until(due.into()).await;
    }

    fn sent(&mut self, n: usize) {
        self.sent += n as u64;
    }
}
