use herald_core::{CampaignStatus, DeliveryJob};
use herald_store::{CampaignState, Store, StoreError};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Keeps a paused or cancelled campaign's queued jobs, and those of a
/// generation a newer one superseded, from being sent.
///
/// States are read from PostgreSQL at most every `ttl` per campaign, so a
/// pause or cancel takes effect within that time. A job from a generation
/// newer than the cached state (the campaign was resumed or relaunched since)
/// makes the gate look again at once, so a resumed campaign's jobs are never
/// dropped on a stale "paused".
pub struct CampaignGate {
    store: Store,
    ttl: Duration,
    cache: Mutex<Cache>,
}

impl CampaignGate {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The jobs that may be sent; the others are dropped, never claimed, so
    /// a resume or relaunch can produce them again.
    pub async fn admit(&self, jobs: &[DeliveryJob]) -> Result<Vec<DeliveryJob>, StoreError> {
        if jobs.iter().all(|j| j.campaign.is_none()) {
            return Ok(jobs.to_vec());
        }
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache, jobs).await?;
        let mut admitted = Vec::with_capacity(jobs.len());
        for job in jobs {
            match held(&cache, job) {
                Some(why) => {
                    metrics::counter!("herald_campaign_jobs_dropped_total", "reason" => why)
                        .increment(1);
                    tracing::debug!(delivery_id = %job.delivery_id, why, "campaign job dropped");
                }
                None => admitted.push(job.clone()),
            }
        }
        Ok(admitted)
    }

    /// Whether a job admitted earlier is now held (its campaign was paused,
    /// cancelled, deleted or given a new generation since): looked at again just before its request
    /// leaves, so a batch already in a sender's hands stops too.
    pub async fn now_held(&self, job: &DeliveryJob) -> Result<bool, StoreError> {
        if job.campaign.is_none() {
            return Ok(false);
        }
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache, std::slice::from_ref(job)).await?;
        Ok(held(&cache, job).is_some())
    }

    /// Reads again the states of the jobs' campaigns that are not cached, are
    /// older than `ttl`, or are of an older generation than a job.
    async fn refresh(&self, cache: &mut Cache, jobs: &[DeliveryJob]) -> Result<(), StoreError> {
        let mut stale: Vec<Uuid> = jobs
            .iter()
            .filter_map(|j| j.campaign)
            .filter(|c| match cache.get(&c.id) {
                None => true,
                Some((state, at)) => {
                    at.elapsed() >= self.ttl || state.is_some_and(|s| s.generation < c.generation)
                }
            })
            .map(|c| c.id)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        stale.sort_unstable();
        stale.dedup();
        let found: HashMap<Uuid, CampaignState> = self
            .store
            .campaign_states(&stale)
            .await?
            .into_iter()
            .collect();
        let now = Instant::now();
        for id in stale {
            cache.insert(id, (found.get(&id).copied(), now));
        }
        Ok(())
    }
}

type Cache = HashMap<Uuid, (Option<CampaignState>, Instant)>;

/// Why a job of a campaign is held back, or None if it may be sent.
fn held(cache: &Cache, job: &DeliveryJob) -> Option<&'static str> {
    let c = job.campaign?;
    let state = cache.get(&c.id).and_then(|(s, _)| *s);
    match state {
        // Deleted: nothing to send it for.
        None => Some("deleted"),
        // Resumed, relaunched or replayed by recovery since: the new
        // generation walks the audience again and hands out its own job to
        // every device still without an outcome. Sending this one too would
        // race that job for the device, and its outcome would fall outside
        // the new generation's progress.
        Some(s) if c.generation < s.generation => Some("superseded"),
        Some(s) if s.status.holds_jobs() && c.generation <= s.generation => Some(match s.status {
            CampaignStatus::Paused => "paused",
            _ => "cancelled",
        }),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::campaign::CampaignRef;

    fn job(id: Uuid, generation: i64) -> DeliveryJob {
        let mut job: DeliveryJob = serde_json::from_value(serde_json::json!({
            "delivery_id": Uuid::nil(), "message_id": Uuid::nil(), "app_id": Uuid::nil(),
            "platform": "android", "token": "t", "notification": {"title": "t"},
            "policy": "at_most_once",
        }))
        .expect("a job");
        job.campaign = Some(CampaignRef { id, generation });
        job
    }

    fn cache(id: Uuid, status: CampaignStatus, generation: i64) -> Cache {
        HashMap::from([(
            id,
            (Some(CampaignState { status, generation }), Instant::now()),
        )])
    }

    #[test]
    fn a_job_is_sent_only_for_its_campaigns_current_generation_while_it_runs() {
        let id = Uuid::now_v7();
        let running = cache(id, CampaignStatus::Running, 2);
        assert_eq!(held(&running, &job(id, 2)), None);
        assert_eq!(held(&running, &job(id, 1)), Some("superseded"));
        // A job newer than what the cache knows is never dropped on it
        // (the gate reads the state again first).
        assert_eq!(held(&running, &job(id, 3)), None);
        let paused = cache(id, CampaignStatus::Paused, 2);
        assert_eq!(held(&paused, &job(id, 2)), Some("paused"));
        let cancelled = cache(id, CampaignStatus::Cancelled, 2);
        assert_eq!(held(&cancelled, &job(id, 2)), Some("cancelled"));
        assert_eq!(held(&HashMap::new(), &job(id, 2)), Some("deleted"));
    }
}
