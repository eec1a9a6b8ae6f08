use herald_core::{CampaignStatus, DeliveryJob};
use herald_store::{CampaignState, Store, StoreError};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Keeps a paused or cancelled campaign's queued jobs from being sent.
///
/// States are read from PostgreSQL at most every `ttl` per campaign, so a
/// pause or cancel takes effect within that time. A job from a generation
/// newer than the cached state (the campaign was resumed or relaunched since)
/// makes the gate look again at once, so a resumed campaign's jobs are never
/// dropped on a stale "paused".
pub struct CampaignGate {
    store: Store,
    ttl: Duration,
    cache: Mutex<HashMap<Uuid, (Option<CampaignState>, Instant)>>,
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
        let stale: Vec<Uuid> = jobs
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
        if !stale.is_empty() {
            let mut ids = stale;
            ids.sort_unstable();
            ids.dedup();
            let found: HashMap<Uuid, CampaignState> = self
                .store
                .campaign_states(&ids)
                .await?
                .into_iter()
                .collect();
            let now = Instant::now();
            for id in ids {
                cache.insert(id, (found.get(&id).copied(), now));
            }
        }
        let mut admitted = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some(c) = job.campaign else {
                admitted.push(job.clone());
                continue;
            };
            let state = cache.get(&c.id).and_then(|(s, _)| *s);
            let held = match state {
                // Deleted: nothing to send it for.
                None => true,
                Some(s) => s.status.holds_jobs() && c.generation <= s.generation,
            };
            if held {
                let why = match state.map(|s| s.status) {
                    Some(CampaignStatus::Paused) => "paused",
                    Some(_) => "cancelled",
                    None => "deleted",
                };
                metrics::counter!("herald_campaign_jobs_dropped_total", "reason" => why)
                    .increment(1);
                tracing::debug!(delivery_id = %job.delivery_id, campaign_id = %c.id, why, "campaign job dropped");
            } else {
                admitted.push(job.clone());
            }
        }
        Ok(admitted)
    }
}
