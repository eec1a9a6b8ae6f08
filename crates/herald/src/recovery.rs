//! Putting back into Kafka, from PostgreSQL, what a lost or replaced
//! cluster may have held: `herald recover`, and the same done by itself when
//! a process sees a cluster replaced at the same address.

use anyhow::{Context, Result};
use herald_bus::Publisher;
use herald_core::trigger::EventRecord;
use herald_store::Store;
use std::time::Duration;

/// How long one publish of recovery may keep failing. A cluster that was
/// just replaced can make a producer fail fatally (its id is handed out
/// again, from 0, to another client); the publisher builds a new one, and
/// the publish is tried again through it.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

async fn patiently<F, Fut>(publish: F) -> Result<(), herald_bus::BusError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), herald_bus::BusError>>,
{
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    loop {
        match publish().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "recovery: publishing failed; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// What `recover` put back into Kafka.
#[derive(Debug, Default)]
pub struct Recovered {
    pub deliveries: usize,
    pub events: usize,
    pub campaigns: usize,
}

/// Puts back into Kafka, from PostgreSQL, everything accepted since `since`
/// and not yet settled: unsettled deliveries (transactional pushes and fired
/// trigger timers), events the trigger engine has not applied, and the
/// production of running and recently completed campaigns (from their
/// start; devices already settled are skipped). Any number of runs deliver
/// nothing twice: every job keeps its delivery id and goes through dedupe.
pub async fn recover_into(
    publisher: &Publisher,
    store: &Store,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Recovered> {
    let mut recovered = Recovered::default();
    let mut after = None;
    loop {
        let page = store.pending_jobs_page(Some(since), after, 1000).await?;
        let Some((at, last)) = page.last().map(|(at, j)| (*at, j.delivery_id)) else {
            break;
        };
        let jobs: Vec<_> = page.into_iter().map(|(_, j)| j).collect();
        patiently(|| publisher.publish_jobs(&jobs))
            .await
            .context("publishing unsettled deliveries")?;
        recovered.deliveries += jobs.len();
        after = Some((at, last));
    }
    let mut after = None;
    loop {
        let page = store
            .unapplied_events_page(Some(since), after, 1000)
            .await?;
        let Some(last) = page
            .last()
            .map(|(at, e)| (*at, e.app_id, e.event_id.clone()))
        else {
            break;
        };
        let records: Vec<EventRecord> = page
            .into_iter()
            .map(|(_, e)| EventRecord {
                app_id: e.app_id,
                event: e.event,
            })
            .collect();
        patiently(|| publisher.publish_events(&records))
            .await
            .context("publishing unapplied events")?;
        recovered.events += records.len();
        after = Some(last);
    }
    recovered.campaigns = store.rewind_campaigns(since).await?.len();
    Ok(recovered)
}
