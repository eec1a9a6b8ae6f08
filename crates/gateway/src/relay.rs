//! The outbox relay: publishes committed messages to Kafka and marks their rows
//! published. A row that could not be published (Kafka down) stays and is
//! retried every interval, so the API keeps accepting while the broker is gone.

use herald_bus::Publisher;
use herald_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const ROWS_PER_ROUND: i64 = 200;

pub struct OutboxRelay {
    pub store: Store,
    pub publisher: Publisher,
    pub wakeup: Arc<Notify>,
    pub interval: Duration,
}

impl OutboxRelay {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.drain().await {
                tracing::warn!(error = %e, "outbox relay: publishing failed; will retry");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Publishes every unpublished row, oldest first.
    pub async fn drain(&self) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let mut published = 0;
        loop {
            let rows = self.store.unpublished_outbox(ROWS_PER_ROUND).await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let messages: Vec<_> = rows.iter().map(|(_, m)| *m).collect();
            let jobs = self.store.pending_jobs_for(&messages).await?;
            self.publisher.publish_jobs(&jobs).await?;
            let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
            self.store.mark_published(&ids).await?;
            published += jobs.len();
            metrics::counter!("herald_outbox_published_jobs_total").increment(jobs.len() as u64);
            tracing::debug!(rows = ids.len(), jobs = jobs.len(), "outbox published");
        }
    }
}
