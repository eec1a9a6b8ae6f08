//! The outbox relay: publishes committed messages to Kafka and marks their rows
//! published. A row that could not be published (Kafka down) stays and is
//! retried every interval, so the API keeps accepting while the broker is gone.

use herald_bus::Publisher;
use herald_core::trigger::EventRecord;
use herald_store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const ROWS_PER_ROUND: i64 = 200;

/// How long a freshly written row is left to its writer (a push request or
/// the trigger engine, which publish their own rows at once) before the relay
/// takes it over. Without it both publish the same row when they race, and
/// every such job reaches the senders twice.
pub const WRITER_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct OutboxRelay {
    pub store: Store,
    pub publisher: Publisher,
    pub wakeup: Arc<Notify>,
    pub interval: Duration,
    /// Set when a publish failed or timed out, cleared by the next success:
    /// requests then skip waiting on a broker that is known to be away.
    pub broker_down: Arc<AtomicBool>,
}

type RelayError = Box<dyn std::error::Error + Send + Sync>;

impl OutboxRelay {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.drain().await {
                Ok(_) => self.broker_down.store(false, Ordering::SeqCst),
                Err(e) => {
                    self.broker_down.store(true, Ordering::SeqCst);
                    tracing::warn!(error = %e, "outbox relay: publishing failed; will retry");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Publishes committed messages' jobs at once, as their requests commit,
    /// and marks their rows published.
    pub async fn publish_now(
        &self,
        outbox_ids: &[i64],
        jobs: &[herald_core::DeliveryJob],
    ) -> Result<(), RelayError> {
        self.publisher.publish_jobs(jobs).await?;
        self.store.mark_published(outbox_ids).await?;
        metrics::counter!("herald_outbox_published_jobs_total").increment(jobs.len() as u64);
        Ok(())
    }

    /// Publishes events as their request commits.
    pub async fn publish_events_now(
        &self,
        app: herald_core::AppId,
        events: Vec<herald_core::trigger::EventInput>,
    ) -> Result<(), RelayError> {
        let keys: Vec<(herald_core::AppId, String)> =
            events.iter().map(|e| (app, e.event_id.clone())).collect();
        let records: Vec<EventRecord> = events
            .into_iter()
            .map(|event| EventRecord { app_id: app, event })
            .collect();
        self.publisher.publish_events(&records).await?;
        self.store.mark_events_published(&keys).await?;
        Ok(())
    }

    /// Publishes every stored event not yet acknowledged, oldest first.
    async fn drain_events(&self) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let rows = self
                .store
                .unpublished_events(ROWS_PER_ROUND * 5, WRITER_GRACE)
                .await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let keys: Vec<_> = rows
                .iter()
                .map(|r| (r.app_id, r.event_id.clone()))
                .collect();
            let records: Vec<EventRecord> = rows
                .into_iter()
                .map(|r| EventRecord {
                    app_id: r.app_id,
                    event: r.event,
                })
                .collect();
            self.publisher.publish_events(&records).await?;
            self.store.mark_events_published(&keys).await?;
            published += records.len();
        }
    }

    /// Publishes every unpublished row and event, oldest first.
    pub async fn drain(&self) -> Result<usize, RelayError> {
        let events = self.drain_events().await?;
        Ok(events + self.drain_messages().await?)
    }

    async fn drain_messages(&self) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let rows = self
                .store
                .unpublished_outbox(ROWS_PER_ROUND, WRITER_GRACE)
                .await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let messages: Vec<_> = rows.iter().map(|(_, m)| *m).collect();
            let jobs = self.store.pending_jobs_for(&messages).await?;
            match self.publisher.publish_jobs(&jobs).await {
                Ok(()) => {
                    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
                    self.store.mark_published(&ids).await?;
                    published += jobs.len();
                    metrics::counter!("herald_outbox_published_jobs_total")
                        .increment(jobs.len() as u64);
                    tracing::debug!(rows = ids.len(), jobs = jobs.len(), "outbox published");
                }
                // One row Kafka can never take must not hold back every row
                // after it (every app's): the page goes row by row, and what
                // is refused is settled failed and dead-lettered.
                Err(e) if e.is_record_refused() => {
                    published += self.isolate_refused(&rows, jobs).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Publishes a page of rows one at a time; a row whose jobs Kafka
    /// refuses is failed with the reason, dead-lettered and alerted on.
    async fn isolate_refused(
        &self,
        rows: &[(i64, herald_core::MessageId)],
        jobs: Vec<herald_core::DeliveryJob>,
    ) -> Result<usize, RelayError> {
        let mut published = 0;
        for (outbox_id, message) in rows {
            let own: Vec<_> = jobs
                .iter()
                .filter(|j| j.message_id == *message)
                .cloned()
                .collect();
            match self.publisher.publish_jobs(&own).await {
                Ok(()) => {
                    self.store.mark_published(&[*outbox_id]).await?;
                    published += own.len();
                    metrics::counter!("herald_outbox_published_jobs_total")
                        .increment(own.len() as u64);
                }
                Err(e) if e.is_record_refused() => {
                    let reason = format!("Kafka refuses this message's delivery jobs: {e}");
                    let failed = self
                        .store
                        .fail_unpublishable(*outbox_id, *message, &reason)
                        .await?;
                    tracing::error!(message_id = %message, deliveries = failed, %reason, "an accepted push can never be published; its deliveries are settled failed and it is dead-lettered");
                    metrics::counter!("herald_outbox_unpublishable_total").increment(1);
                    let letter = herald_core::DeadLetter {
                        reason,
                        job: None,
                        raw: Some(format!("message {message}")),
                        source_topic: "outbox".into(),
                        at: chrono::Utc::now(),
                    };
                    if let Err(e) = self.publisher.publish_dead_letters(&[letter]).await {
                        tracing::warn!(message_id = %message, error = %e, "dead-lettering the unpublishable push failed; its deliveries say why");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(published)
    }
}
